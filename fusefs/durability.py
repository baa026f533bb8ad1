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
import time
from collections.abc import Awaitable, Callable, Iterable

import trio

from fusefs.chunkread import ChunkReader
from fusefs.errors import ChunkUnrecoverable, StoreError
from fusefs.events import EventLog
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import ChunkRow, MetaRepo

log = logging.getLogger(__name__)

DURABILITY_INTERVAL = 5.0  # seconds: like ext4's commit interval, the power-loss window
# What a durable point may delete: garbage rows (id, oid, placement) and dead packs
# (pack_garbage id, packs.id, pid, store).
Deletable = tuple[list[tuple[int, bytes, bytes]], list[tuple[int, int, bytes, int]]]


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
        self._watermark = meta.durable_garbage_id()
        # With metadata snapshots, shares are deleted only `grace` seconds after a snapshot
        # without them was published (followers may still read them), and only while
        # `may_delete` says this host is still the writer. None / no gate: no such limits.
        self.grace: float | None = None
        self.may_delete: Callable[[], Awaitable[bool]] | None = None
        self.deletes = True  # False: a host that must not delete anything (read-only)
        self._waiting = False  # garbage is waiting for its grace period to pass
        self._pressure_logged = False

    def _deletable(self) -> Deletable:
        """Garbage rows and dead packs whose objects may go once the next sync is done."""
        if self.grace is None or self._short_of_space():
            return self.meta.garbage(), self.meta.pack_garbage()
        before = time.time_ns() - int(self.grace * 1e9)
        return (self.meta.garbage(published_before_ns=before),
                self.meta.pack_garbage(published_before_ns=before))

    def _short_of_space(self) -> bool:
        """A store refused a write for space: replaced shares go now, without waiting for a
        published snapshot or the followers' grace period. Otherwise a full disk could never
        be freed (publishing a snapshot needs space too). The price, only until the next
        snapshot is published: a follower, or a `recover` from the last snapshot, finds
        those old versions unreadable (EIO, never wrong bytes)."""
        full = [si for si in range(len(self.lay.stores)) if self.health.full(si)]
        if full and not self._pressure_logged:
            self._pressure_logged = True
            log.warning("store %s is full: replaced shares are deleted without waiting for "
                        "a published snapshot or the grace period",
                        ", ".join(self.lay.stores[si].url for si in full))
        return bool(full)

    async def make_durable(self, *, wait_for_garbage: bool = False) -> None:
        """Make every completed write durable, then delete the shares it replaced.

        A store that is down is skipped: its shares are not counted on (quorum, repairs).
        `wait_for_garbage` (unmount) lets a background pass finish and deletes inline; so
        does a store out of space (the fsync returns once space was freed).
        """
        wait_for_garbage = wait_for_garbage or self._short_of_space()
        if wait_for_garbage and self._collection is not None:
            await self._collection.wait()
        dead = self.meta.max_pack_garbage_id()
        await self._durable_point(wait_for_garbage)
        if wait_for_garbage and self.meta.max_pack_garbage_id() > dead:
            # Deleting the garbage emptied packs: they may go once that is durable too
            # (unmount leaves nothing behind that a durable point could delete).
            await self._durable_point(wait_for_garbage)

    async def _durable_point(self, wait_for_garbage: bool) -> None:
        self.meta.commit_pending()  # what is pending becomes durable too
        changes = self.meta.total_changes()
        if changes == self._durable_changes:
            if self._waiting and self._collection is None:
                await self._delete(self._deletable(), wait_for_garbage)
            return  # nothing committed since the last durable point
        garbage = self._deletable()
        mark = self.meta.max_garbage_id()
        await self._sync_stores()
        wal_size = await trio.to_thread.run_sync(self.meta.fsync_wal)
        self.meta.checkpoint_if_large(wal_size)
        # Commits made while this pass awaited are not covered: compare with the count taken
        # before syncing (the garbage rows deleted next cost one more, cheap, pass).
        self._durable_changes = changes
        if mark > self._watermark:
            self._mark_durable(mark, changes)
        await self._delete(garbage, wait_for_garbage)

    async def _delete(self, garbage: Deletable, wait_for_garbage: bool) -> None:
        """Delete durable-replaced shares and dead packs (in the background when mounted)."""
        rows, packs = garbage
        self._waiting = self.grace is not None and (
            (self.meta.max_garbage_id() > 0
             and len(rows) < len(self.meta.garbage(limit=len(rows) + 1)))
            or len(packs) < len(self.meta.pack_garbage(limit=len(packs) + 1)))
        if not (rows or packs) or not self.deletes:
            return
        if self.may_delete is not None and not await self.may_delete():
            self._waiting = False  # another writer took over: never again
            return
        if self.nursery is None or wait_for_garbage:
            await self._collect(garbage)
        elif self._collection is not None:
            self._durable_changes = -1  # the running pass may miss these: come back
        else:
            self._collection = trio.Event()
            self.nursery.start_soon(self._collect_in_background, garbage)

    def _mark_durable(self, mark: int, changes: int) -> None:
        """Record that garbage rows up to `mark` were replaced by durable versions (what
        `recover_lost_writes` trusts after a power loss). Written after the fsync, so it is
        true whenever it reaches the disk; it becomes durable with the next durable point."""
        quiet = self.meta.total_changes() == changes  # nobody committed while we synced
        self.meta.set_durable_garbage_id(mark)
        self._watermark = mark
        if quiet:
            self._durable_changes = self.meta.total_changes()  # the mark needs no pass

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

    async def _collect_in_background(self, garbage: Deletable) -> None:
        try:
            await self._collect(garbage)
        except Exception:
            log.exception("deleting replaced shares failed")
            self._durable_changes = -1
        finally:
            if self._collection is not None:
                self._collection.set()
            self._collection = None

    async def _collect(self, garbage: Deletable) -> None:
        """Delete the shares of durable-replaced chunk versions, and dead packs: one batch
        per store. A row is done when every store took its deletes; the others stay for
        the next pass. Packed shares are not deleted one by one: forgetting them empties
        their packs, which go in a later pass (see `meta.garbage_done`)."""
        rows, packs = garbage
        locs = self.meta.packed_locs([oid for _, oid, _ in rows])
        names: dict[int, list[str]] = {}
        stores_of: dict[int, set[int]] = {}  # garbage id -> stores it needs deletes from
        for gid, oid, where in rows:
            packed = locs.get(oid)
            stores_of[gid] = set()
            for i, si in enumerate(where):
                if packed is None or packed[i] is None:
                    names.setdefault(si, []).append(self.lay.name(oid, i))
                    stores_of[gid].add(si)
        for _, _, pid, si in packs:
            names.setdefault(si, []).append(self.lay.pack_name(pid))
        refused = await delete_batches(self.lay, self.health, names)
        self.meta.garbage_done([gid for gid, _, _ in rows
                                if not refused.intersection(stores_of[gid])])
        self.meta.pack_garbage_done([(gid, pack) for gid, pack, _, si in packs
                                     if si not in refused])
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


# -- after a power loss ------------------------------------------------------------------
async def recover_lost_writes(lay: Layout, reader: ChunkReader, meta: MetaRepo,
                              events: EventLog) -> int:
    """Put back what a power loss took: files whose changes since the last durable point
    name shares that never reached the stores.

    SQLite may write a commit to disk before the stores have synced the shares it names
    (the kernel writes the WAL back when it likes). After a power loss the metadata then
    points at shares that are not there, while the versions they replaced wait in
    `garbage`, whose deletion must not happen now. So, before anything collects garbage:
    for every file changed since the last durable point (garbage rows past the watermark),
    if a chunk it changed cannot be read, the whole file goes back to its state at that
    point: each changed chunk to its oldest replaced version that is complete, chunks added
    since then removed, the size as it was. Returns the files put back (one event each
    chunk). Cheap when nothing happened: one query.
    """
    by_inode: dict[int, list[tuple[int, int, ChunkRow]]] = {}
    for gid, ino, size_before, row in meta.suspect_garbage():
        by_inode.setdefault(ino, []).append((gid, size_before, row))
    restored = 0
    for ino, changes in by_inode.items():
        inode = meta.get_inode(ino)
        if inode is None:
            continue  # deleted since: what the user asked for
        if await _roll_back(lay, reader, meta, events, ino, inode.file_id, changes):
            restored += 1
    return restored


async def _complete(reader: ChunkReader, ino: int, file_id: bytes, row: ChunkRow) -> bool:
    try:
        await reader.read(ino, file_id, row, quiet=True)
    except ChunkUnrecoverable:
        return False
    return True


async def _roll_back(lay: Layout, reader: ChunkReader, meta: MetaRepo, events: EventLog,
                     ino: int, file_id: bytes, changes: list[tuple[int, int, ChunkRow]]
                     ) -> bool:
    """Roll one file back to its state at the last durable point if a chunk it changed
    since is lost; True when it did."""
    size_then = changes[0][1]
    cs = lay.config.chunk_size
    first_new = -(-size_then // cs)  # chunks from here on did not exist then
    touched = {row.idx for _, _, row in changes}
    current = meta.chunks_of(ino)
    changed = [r for r in current if r.idx in touched or r.idx >= first_new]
    lost = [r for r in changed if not await _complete(reader, ino, file_id, r)]
    if not lost:
        return False
    with meta.transaction():
        meta.delete_chunks_from(ino, first_new)  # chunks that did not exist then
        meta.update_inode(ino, size=size_then)
    for idx in sorted(i for i in touched if i < first_new):
        for gid, _, old in (c for c in changes if c[2].idx == idx):  # oldest first
            if await _complete(reader, ino, file_id, old):
                meta.restore_chunk(ino, gid, old, size=None)
                events.record("write_lost", action="restored", inode=ino, chunk=idx,
                              version=old.oid, detail="a power loss took the shares of a "
                              "newer version; the version of the last durable point is back")
                break
    log.warning("inode %d: rolled back to its state at the last durable point (%d bytes): "
                "a power loss took the shares of %d of its chunks written after it", ino,
                size_then, len(lost))
    return True
