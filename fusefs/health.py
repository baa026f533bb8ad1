"""Store health: the only place that decides a store is down, full or not to be written,
and for how long.

A store that fails (an error, a timeout, a hedged read it kept waiting) is bypassed for
STORE_RETRY_SECONDS instead of being awaited by every request; then it is tried again and a
new failure bypasses it again. A full store still serves reads and deletes; only writes skip
it. A store whose writes are held (its identity is in doubt or not yet checked, it is
read-only) is read but never written to or deleted from until a check releases it
(`storecheck`). Each transition into "bypassed" is one event; recovering is a log line.

The clock is injected so that tests can move time instead of waiting for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fusefs.errors import StoreError, StoreFull
from fusefs.events import EventLog
from fusefs.stores.base import Store

log = logging.getLogger(__name__)

STORE_RETRY_SECONDS = 15.0  # a failed store is skipped this long before it is tried again
UNREACHABLE = "store_unreachable"  # the event kind of a store that failed a request


class StoreHealth:
    def __init__(self, stores: list[Store], events: EventLog,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stores = stores
        self.events = events
        self.clock = clock
        self._down_until: dict[int, float] = {}  # store index -> clock time to retry at
        self._full_until: dict[int, float] = {}  # stores that refused a write for space
        self._held: dict[int, str] = {}  # store index -> why it is not written to
        self._outages = [0] * len(stores)  # times each store went down or was held

    def outages(self, si: int) -> int:
        """How many times store `si` was marked down or had its writes held: a pack opened
        before the latest outage is not appended to again (`packs.PackWriter`)."""
        return self._outages[si]

    def down(self, si: int) -> bool:
        """True while store `si` is bypassed; an expired bypass ends here (tried again)."""
        until = self._down_until.get(si)
        if until is None:
            return False
        if self.clock() >= until:
            del self._down_until[si]  # try it again; a new failure marks it down again
            log.info("retrying store %s", self.stores[si].url)
            return False
        return True

    def full(self, si: int) -> bool:
        """A full store still serves reads and deletes; writes skip it for a while."""
        until = self._full_until.get(si)
        if until is not None and self.clock() >= until:
            del self._full_until[si]
            return False
        return until is not None

    def bypassed(self) -> set[int]:
        """Stores bypassed now or until their next use tries them again."""
        return set(self._down_until)

    def down_now(self) -> frozenset[int]:
        """The stores bypassed right now (a blocking reader skips them without asking)."""
        return frozenset(si for si in list(self._down_until) if self.down(si))

    def write_refusal(self, si: int) -> StoreError | None:
        """Why a write must not try store `si` now, or None when it may."""
        held = self._held.get(si)
        if held is not None:
            return StoreError(f"store {self.stores[si].url} is not written to: {held}")
        if self.full(si):
            return StoreFull(f"store {self.stores[si].url} is full")
        if self.down(si):
            return StoreError(f"store {self.stores[si].url} is unavailable")
        return None

    def may_delete(self, si: int) -> bool:
        """Deletes go to stores that are up and not held (a held store's objects may be
        someone else's)."""
        return si not in self._held and not self.down(si)

    def hold_writes(self, si: int, why: str) -> None:
        """Never write to or delete from store `si` until `release_writes`."""
        if self._held.get(si) != why:
            log.warning("store %s is not written to: %s", self.stores[si].url, why)
        self._held[si] = why
        self._outages[si] += 1

    def release_writes(self, si: int) -> None:
        if self._held.pop(si, None) is not None:
            log.info("store %s is written to again", self.stores[si].url)

    def held(self) -> dict[int, str]:
        """Stores whose writes are held, and why."""
        return dict(self._held)

    def mark_down(self, si: int, error: Exception) -> None:
        """Store `si` failed with `error`: bypass it (writes only, when it is full)."""
        if isinstance(error, StoreFull):
            if si not in self._full_until:
                self.events.record("store_full", action="bypassed",
                                   store=self.stores[si].url, detail=str(error))
            self._full_until[si] = self.clock() + STORE_RETRY_SECONDS
            return
        if si not in self._down_until:
            self.events.record(UNREACHABLE, action="bypassed", store=self.stores[si].url,
                               detail=str(error))
        self._down_until[si] = self.clock() + STORE_RETRY_SECONDS
        self._outages[si] += 1

    def mark_up(self, si: int) -> None:
        """Store `si` answered (a scrub checked it): use it again at once."""
        self._full_until.pop(si, None)
        if self._down_until.pop(si, None) is not None:
            log.info("store %s is reachable again", self.stores[si].url)

    def freed_space(self, si: int) -> None:
        """Deletes succeeded on store `si`: writes may try it again."""
        self._full_until.pop(si, None)
