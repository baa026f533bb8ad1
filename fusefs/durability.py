"""Durable points and garbage: when acknowledged writes survive power loss, and when the
shares they replaced may go.

Order at a durable point: every store synced -> the metadata WAL fsynced -> the shares of
replaced versions deleted (copy-on-write: never before their replacement is durable). The
garbage list is read before syncing, so only rows whose replacement is already durable are
deleted. Mounted, the deletion runs in the background: an fsync or close that replaced a big
file returns once the new data is durable, not after a thousand unlinks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from fusefs.errors import StoreError
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import MetaRepo

log = logging.getLogger(__name__)

DURABILITY_INTERVAL = 5.0  # seconds: like ext4's commit interval, the power-loss window


async def delete_batches(lay: Layout, health: StoreHealth, names: dict[int, list[str]]
                         ) -> set[int]:
    """Delete objects, one batch per store (store index -> names), the stores in parallel;
    return the stores that refused (down, failing now: marked down, or never deleted from:
    a store whose identity is in doubt)."""
    refused: set[int] = set()

    async def delete(si: int) -> None:
        if not health.may_delete(si):
            refused.add(si)
            return
        try:
            await lay.stores[si].delete_many(names[si])
            health.freed_space(si)  # space was freed: try writing again
        except StoreError as e:
            log.warning("%s", e)
            health.mark_down(si, e)
            refused.add(si)

    async with trio.open_nursery() as nursery:
        for si in names:
            nursery.start_soon(delete, si)
    return refused


async def delete_shares(lay: Layout, health: StoreHealth, oid: bytes, where: bytes,
                        skip: Iterable[int] = ()) -> bool:
    """Delete every share of one chunk version (but `skip`); False if a store refused."""
    skipped = set(skip)
    names = {si: [lay.name(oid, i)] for i, si in enumerate(where) if i not in skipped}
    return not await delete_batches(lay, health, names)


class Durability:
    def __init__(self, lay: Layout, health: StoreHealth, meta: MetaRepo) -> None:
        self.lay = lay
        self.health = health
        self.meta = meta
        self.nursery: trio.Nursery | None = None  # background garbage deletion; None: inline
        self._durable_changes = -1  # meta.total_changes at the last durable point
        self._collection: trio.Event | None = None  # set when the background pass ends

    async def make_durable(self, *, wait_for_garbage: bool = False) -> None:
        """Make every completed write durable, then delete the shares it replaced.

        A store that is down is skipped: its shares are not counted on (quorum, repairs).
        `wait_for_garbage` (unmount) lets a background pass finish and deletes inline.
        """
        if wait_for_garbage and self._collection is not None:
            await self._collection.wait()
        changes = self.meta.total_changes()
        if changes == self._durable_changes:
            return  # nothing committed since the last durable point
        garbage = self.meta.garbage()
        await self._sync_stores()
        wal_size = await trio.to_thread.run_sync(self.meta.fsync_wal)
        self.meta.checkpoint_if_large(wal_size)
        # Commits made while this pass awaited are not covered: compare with the count taken
        # before syncing (the garbage rows deleted next cost one more, cheap, pass).
        self._durable_changes = changes
        if not garbage:
            return
        if self.nursery is None or wait_for_garbage:
            await self._collect(garbage)
        elif self._collection is not None:
            self._durable_changes = -1  # the running pass may miss these: come back
        else:
            self._collection = trio.Event()
            self.nursery.start_soon(self._collect_in_background, garbage)

    async def _sync_stores(self) -> None:
        """Sync every store that is up; raise when fewer than the write quorum are."""
        failures: list[StoreError] = []

        async def sync(si: int) -> None:
            if self.health.down(si):
                return
            try:
                await self.lay.stores[si].sync()
            except StoreError as e:
                self.health.mark_down(si, e)
                failures.append(e)

        async with trio.open_nursery() as nursery:
            for si in range(len(self.lay.stores)):
                nursery.start_soon(sync, si)
        available = sum(not self.health.down(si) for si in range(len(self.lay.stores)))
        if available < self.lay.quorum:
            raise failures[0] if failures else StoreError("too few stores are available")

    async def _collect_in_background(self, garbage: list[tuple[int, bytes, bytes]]) -> None:
        try:
            await self._collect(garbage)
        except Exception:
            log.exception("deleting replaced shares failed")
            self._durable_changes = -1
        finally:
            if self._collection is not None:
                self._collection.set()
            self._collection = None

    async def _collect(self, garbage: list[tuple[int, bytes, bytes]]) -> None:
        """Delete the shares of durable-replaced chunk versions: one batch per store. A row
        is done when every store took its deletes; the others stay for the next pass."""
        names: dict[int, list[str]] = {}
        for _, oid, where in garbage:
            for i, si in enumerate(where):
                names.setdefault(si, []).append(self.lay.name(oid, i))
        refused = await delete_batches(self.lay, self.health, names)
        self.meta.garbage_done([gid for gid, _, where in garbage
                                if not refused.intersection(where)])
        if refused - set(self.health.held()):
            self._durable_changes = -1  # a store that is only down now: try again soon

    async def run(self) -> None:
        """Daemon task: make closed-but-not-fsynced writes durable every few seconds and
        delete the shares they replaced."""
        while True:
            await trio.sleep(DURABILITY_INTERVAL)
            try:
                await self.make_durable()
            except StoreError as e:
                log.warning("periodic sync failed: %s", e)
