"""Whose is a store, and what may be done with it: the checks made at mount, by the store
watcher of a mounted volume, by scrub, by status and by `fusefs store claim`.

Every store holds a marker: `{"fusefs": 2, "volume": ID, "store": INDEX, "mac": MAC}`, where
MAC = HMAC-SHA256 under a key derived from the master key over the volume id and the store's
index (`VolumeKeys.marker_mac`). So a marker proves which volume and which of its stores it
belongs to, and a damaged marker of ours is told apart from another volume's:

- ours: the MAC is right for this volume and this index (the other fields may be damaged:
  then the marker is rewritten), or an old unauthenticated marker (format 1) naming this
  volume (it is upgraded);
- ours, lost its marker: no marker, or one damaged beyond recognition, and every object in
  the store is one this volume placed there: it is claimed again (a fresh marker) and its
  damage is healed like any other;
- in doubt: a marker naming another volume, a marker of another store of this volume (the
  store URLs were swapped?), or objects this volume never placed there. A store in doubt is
  still read (every share is verified and authenticated) but never written to or deleted
  from: its objects may be someone else's. The operator decides (`fusefs store claim`).

A store that cannot be reached, or is read-only, is read (if it can be) and not written to.
A mount needs K stores it can read; the others are warned about and rechecked while mounted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from fusefs.codec.keys import VolumeKeys
from fusefs.config import VolumeConfig
from fusefs.errors import FusefsError, StoreError
from fusefs.events import EventLog
from fusefs.health import STORE_RETRY_SECONDS, StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import MetaRepo
from fusefs.stores.base import Store

log = logging.getLogger(__name__)

MARKER_FORMAT = 2
CHECK_TIMEOUT = 15.0  # seconds for one store's check: an unreachable server is not awaited
PROBE_TIMEOUT = 5.0  # seconds a write that lacks stores waits for a recheck of the others
PROBE_INTERVAL = 5.0  # at most one such recheck this often: a store that is really down
#                       must not cost every write PROBE_TIMEOUT

# What a check finds (StoreState.kind).
OK = "ok"
CLAIMED = "claimed"  # ours, had lost its marker: a fresh one was written
IN_DOUBT = "in_doubt"  # read, never written or deleted
READ_ONLY = "read_only"  # reachable, refuses writes
UNREACHABLE = "unreachable"
NOT_CLAIMED = "not_claimed"  # ours, lost its marker, but this check may not write one


@dataclass(frozen=True)
class StoreState:
    kind: str
    detail: str = ""  # why, for the user (one line)

    @property
    def readable(self) -> bool:
        return self.kind != UNREACHABLE

    @property
    def writable(self) -> bool:
        return self.kind in (OK, CLAIMED)

    def describe(self) -> str:
        return self.kind.replace("_", " ") + (f": {self.detail}" if self.detail else "")


def marker_bytes(keys: VolumeKeys, volume_id: str, index: int) -> bytes:
    """The marker of store `index` of a volume."""
    return json.dumps({"fusefs": MARKER_FORMAT, "volume": volume_id, "store": index,
                       "mac": keys.marker_mac(index)}).encode()


def identify(raw: bytes | None, keys: VolumeKeys, volume_id: str, index: int,
             n_stores: int) -> tuple[str, str]:
    """What a marker says, without looking at objects: (verdict, detail), the verdict one of
    "ours", "rewrite" (ours, damaged or old: write a fresh one), "lost" (missing or damaged
    beyond recognition: ours only if the objects are), "doubt"."""
    if raw is None:
        return "lost", "no marker"
    try:
        marker = json.loads(raw)
        if not isinstance(marker, dict):
            raise ValueError
    except ValueError:
        return "lost", "damaged marker"
    mac = marker.get("mac")
    if isinstance(mac, str):
        if mac == keys.marker_mac(index):
            return ("ours", "") if marker == json.loads(marker_bytes(keys, volume_id, index)) \
                else ("rewrite", "damaged marker")
        for j in range(n_stores):
            if j != index and mac == keys.marker_mac(j):
                return "doubt", f"holds the marker of store {j} of this volume (URLs swapped?)"
    named = marker.get("volume")
    if named == volume_id and marker.get("fusefs") == 1 and "mac" not in marker:
        return "rewrite", "old marker without authentication"
    if isinstance(named, str) and named != volume_id and _wellformed(marker):
        return "doubt", f"belongs to another volume ({named})"
    return "lost", "damaged marker"


def _wellformed(marker: dict) -> bool:
    """A complete marker (of some volume): what another volume's store would hold."""
    vid, mac = marker.get("volume", ""), marker.get("mac", "")
    if marker.get("fusefs") == 1:
        return _is_hex(vid, 32) and set(marker) == {"fusefs", "volume"}
    return (marker.get("fusefs") == MARKER_FORMAT and _is_hex(vid, 32) and _is_hex(mac, 64)
            and isinstance(marker.get("store"), int))


def _is_hex(s: object, n: int) -> bool:
    return isinstance(s, str) and len(s) == n and all(c in "0123456789abcdef" for c in s)


Placed = Iterable[tuple[bytes, bytes]]  # (oid, placement) of objects kept elsewhere


def owned_names(meta: MetaRepo, keys: VolumeKeys, si: int, also: Placed = ()) -> set[str]:
    """Object names this volume places on store `si`: current and garbage chunk versions,
    its packs, and `also` (its metadata snapshots)."""
    return {keys.object_name(oid, i)
            for oid, where in [*meta.all_versions(), *also]
            for i, s in enumerate(where) if s == si} | {
        keys.pack_name(p.pid) for p in meta.all_packs() if p.store == si}


async def check_store(store: Store, si: int, cfg: VolumeConfig, keys: VolumeKeys,
                      meta: MetaRepo, *, writable: bool, claim: bool,
                      timeout: float = CHECK_TIMEOUT, also: Placed = ()) -> StoreState:
    """Reach the store and read its marker; with `writable`, check that it takes writes; with
    `claim`, write a fresh marker into a store that is ours but lost or damaged its marker.
    Never raises for a store problem: the state says it."""
    try:
        with trio.fail_after(timeout):
            return await _check(store, si, cfg, keys, meta, writable, claim, also)
    except trio.TooSlowError:
        return StoreState(UNREACHABLE, f"no answer within {timeout:.0f} s")
    except FusefsError as e:
        return StoreState(UNREACHABLE, str(e))


async def _check(store: Store, si: int, cfg: VolumeConfig, keys: VolumeKeys, meta: MetaRepo,
                 writable: bool, claim: bool, also: Placed) -> StoreState:
    await store.check(writable=False)
    verdict, detail = identify(await store.read_marker(), keys, cfg.volume_id, si,
                               len(cfg.stores))
    if verdict == "doubt":
        return StoreState(IN_DOUBT, detail)
    if verdict == "lost":
        names = set(await store.list())
        foreign = len(names - owned_names(meta, keys, si, also))
        if foreign:
            return StoreState(IN_DOUBT, f"{detail}, and {foreign} objects this volume never "
                                        "placed there")
    if writable:
        try:
            await store.check(writable=True)
        except StoreError as e:
            return StoreState(READ_ONLY, str(e))
    if verdict == "ours":
        return StoreState(OK)
    if not (writable and claim):
        return StoreState(NOT_CLAIMED, detail)
    await store.write_marker(marker_bytes(keys, cfg.volume_id, si))
    return StoreState(CLAIMED, detail)


async def check_all(stores: list[Store], cfg: VolumeConfig, keys: VolumeKeys, meta: MetaRepo,
                    *, writable: bool, claim: bool, indexes: list[int] | None = None,
                    timeout: float = CHECK_TIMEOUT, also: Placed = ()) -> list[StoreState]:
    """Check the stores at once (an unreachable one costs CHECK_TIMEOUT, not one each).
    `indexes` are the stores' places in the volume (default: 0, 1, ...)."""
    where = list(range(len(stores))) if indexes is None else indexes
    states: list[StoreState | None] = [None] * len(stores)
    also = list(also)

    async def one(j: int) -> None:
        states[j] = await check_store(stores[j], where[j], cfg, keys, meta,
                                      writable=writable, claim=claim, timeout=timeout,
                                      also=also)

    async with trio.open_nursery() as nursery:
        for j in range(len(stores)):
            nursery.start_soon(one, j)
    return states  # type: ignore[return-value]


def require_readable(stores: list[Store], states: list[StoreState], k: int) -> None:
    """Raise when fewer than k stores can be read: the volume cannot serve every chunk."""
    readable = sum(s.readable for s in states)
    if readable < k:
        bad = "; ".join(f"{st.url} ({s.describe()})" for st, s in zip(stores, states,
                                                                      strict=True)
                        if not s.readable)
        raise StoreError(f"only {readable} of {len(stores)} stores can be read and {k} are "
                         f"needed: {bad}")


# -- applying what a check found -----------------------------------------------------------
def _event_kind(state: StoreState) -> str | None:
    if state.kind in (CLAIMED, NOT_CLAIMED) and state.detail.startswith("old marker"):
        return None  # an upgrade of an old volume's marker, not damage
    return {CLAIMED: "store_replaced" if state.detail == "no marker" else "marker_damaged",
            NOT_CLAIMED: "store_replaced" if state.detail == "no marker" else "marker_damaged",
            IN_DOUBT: "store_in_doubt", READ_ONLY: "store_read_only"}.get(state.kind)


class StoreWatch:
    """A mounted volume's view of its stores: applies what checks find to `StoreHealth`
    (writes held, stores bypassed), records each change as an event, and rechecks the stores
    that are not fully usable every STORE_RETRY_SECONDS, so a store that comes back (or that
    the operator claimed) is used again without a remount."""

    def __init__(self, lay: Layout, health: StoreHealth, meta: MetaRepo, events: EventLog,
                 *, writable: bool) -> None:
        self.lay = lay
        self.health = health
        self.meta = meta
        self.events = events
        self.writable = writable
        self.states: list[StoreState] = [StoreState(OK)] * len(lay.stores)
        self._last_probe = -PROBE_INTERVAL
        self.also_owned: Callable[[], Placed] = list  # the writer's snapshot objects

    async def check(self, only: Iterable[int] | None = None,
                    timeout: float = CHECK_TIMEOUT) -> list[int]:
        """Check the stores (all, or `only`) and apply the results; return the stores that
        became fully usable again."""
        indexes = sorted(range(len(self.lay.stores)) if only is None else only)
        found = await check_all([self.lay.stores[si] for si in indexes], self.lay.config,
                                self.lay.keys, self.meta, writable=self.writable,
                                claim=self.writable, indexes=indexes, timeout=timeout,
                                also=self.also_owned())
        return [si for si, state in zip(indexes, found, strict=True) if self.apply(si, state)]

    async def remove_stale_temporaries(self) -> int:
        """Remove temporaries a killed writer left in the stores this volume may write
        (a mount and an offline repair hold the volume's lock, so no other fusefs process
        writes into them: any temporary not of this process is stale). Returns how many."""
        removed = 0
        for si, store in enumerate(self.lay.stores):
            if not self.health.may_delete(si) or not self.states[si].writable:
                continue
            try:
                removed += await store.remove_stale_temporaries(older_than=0.0)
            except StoreError as e:
                log.warning("cannot remove stale temporaries from %s: %s", store.url, e)
        if removed:
            log.info("removed %d temporaries left by an interrupted write", removed)
        return removed

    async def probe(self, stores: set[int]) -> None:
        """A write lacks stores: recheck these now (not waiting for the next pass), at most
        once per PROBE_INTERVAL, so one that came back is written to at once."""
        now = self.health.clock()
        if not stores or now - self._last_probe < PROBE_INTERVAL:
            return
        self._last_probe = now
        await self.check(stores, timeout=PROBE_TIMEOUT)

    def apply(self, si: int, state: StoreState) -> bool:
        """Act on one store's state; True when it became fully usable again."""
        before, self.states[si] = self.states[si], state
        url = self.lay.stores[si].url
        was_held = si in self.health.held()
        kind = _event_kind(state)
        if state.kind == UNREACHABLE:
            self.health.mark_down(si, StoreError(state.detail))  # records the event
            self.health.hold_writes(si, "unreachable when last checked")
            return False
        if state.kind in (OK, CLAIMED):
            self.health.release_writes(si)
            self.health.mark_up(si)
            if kind is not None:
                self.events.record(kind, action="claimed", store=url, detail=state.detail)
            elif state.kind == CLAIMED:
                log.info("store %s: marker upgraded to an authenticated one", url)
            return was_held
        self.health.hold_writes(si, state.describe())
        if kind is not None and state != before:
            action = {NOT_CLAIMED: "reported", IN_DOUBT: "read_only"}.get(state.kind,
                                                                         "bypassed")
            self.events.record(kind, action=action, store=url, detail=state.detail)
        return False

    async def run(self, on_back: Callable[[list[int]], Awaitable[None]]) -> None:
        """Daemon task: recheck the stores that are not fully usable, and call `on_back`
        with the ones that became usable (their queued repairs can go now)."""
        while True:
            await trio.sleep(STORE_RETRY_SECONDS)
            suspects = set(self.health.held()) | self.health.bypassed()
            if not suspects:
                continue
            back = await self.check(suspects)
            if back:
                await on_back(back)


def warning(url: str, state: StoreState, *, writable: bool, volume: str) -> str | None:
    """The one line a user is told at mount about a store that is not fully usable."""
    if state.kind == UNREACHABLE:
        return (f"store {url} is unreachable ({state.detail}): mounting without it; it is "
                f"tried again every {STORE_RETRY_SECONDS:.0f} s")
    if state.kind == IN_DOUBT:
        return (f"store {url} is in doubt ({state.detail}): it is read but never written to "
                f"or deleted from; once you have checked it: fusefs store claim {volume} {url}")
    if state.kind == READ_ONLY:
        return (f"store {url} refuses writes ({state.detail}): it is read, and the shares it "
                "misses are queued for repair")
    if state.kind == NOT_CLAIMED and not state.detail.startswith("old marker"):
        then = ("it holds only this volume's objects and is claimed again" if writable
                else "a read-write mount or scrub claims it again")
        return f"store {url} lost its marker ({state.detail}): {then}"
    return None


def marker_volume(raw: bytes) -> str | None:
    """The volume a marker names, when it can be read (for messages; proves nothing)."""
    try:
        named = json.loads(raw).get("volume")
    except (ValueError, AttributeError):
        return None
    return named if isinstance(named, str) else None
