"""Scrub: verify every share of every chunk on every store, repair, and find orphans.

Works the same inside the mount daemon (asked over the control socket, while training reads
go on) and on an unmounted volume. Chunks are visited with a cursor in (inode, index) order,
so files may change meanwhile; a heal re-checks that its chunk version is still current.
Orphans are objects no chunk version refers to (left by a crash between storing shares and
the commit, or planted); objects of writes in progress are never counted as orphans.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from fusefs.errors import ChunkUnrecoverable, NoSuchObject, StoreError
from fusefs.events import EventLog
from fusefs.heal import Healer
from fusefs.health import StoreHealth
from fusefs.layout import Layout, PackCache
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.snapshots.objects import META_FILE_ID, Ref
from fusefs.storecheck import CLAIMED, OK, UNREACHABLE, StoreWatch, check_store
from fusefs.stores.base import FIXED_NAMES

log = logging.getLogger(__name__)

_BATCH = 64
_WHOLE_PACK_MAX = 64 << 20  # bigger packs (--pack-size) are not read whole: members one by
#                             one (memory stays bounded: a pack per store is held at a time)
SNAPSHOTS = "<metadata snapshots>"  # how the report names damage to snapshot objects
TEMPORARY_AGE = 60.0  # seconds: a temporary older than this is not a write of another
#                       process in progress (the store's own puts are always recognised)


@dataclass
class StoreReport:
    url: str
    state: str = "ok"
    shares_checked: int = 0
    missing: int = 0
    checksum_mismatch: int = 0
    authentication_failure: int = 0
    store_unreachable: int = 0
    repaired: int = 0
    queued: int = 0
    orphans: int = 0
    orphans_removed: int = 0


@dataclass
class ScrubReport:
    chunks: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    stores: list[StoreReport] = field(default_factory=list)
    damaged_files: dict[str, list[str]] = field(default_factory=dict)  # path -> problems
    unrecoverable_files: list[str] = field(default_factory=list)
    queued_repairs: int = 0
    snapshot_objects: int = 0  # metadata snapshot objects verified (all their shares)

    @property
    def healthy(self) -> bool:
        """True when nothing is left to fix (after repair, if repairing)."""
        return (not self.unrecoverable_files and not self.queued_repairs
                and all(s.state == "ok" for s in self.stores)
                and not any(_unfixed(s) for s in self.stores))

    def as_dict(self) -> dict:
        return {"healthy": self.healthy, "chunks": self.chunks, "bytes_read": self.bytes_read,
                "seconds": round(self.seconds, 3),
                "stores": [vars(s) for s in self.stores],
                "damaged_files": self.damaged_files,
                "unrecoverable_files": self.unrecoverable_files,
                "queued_repairs": self.queued_repairs,
                "snapshot_objects": self.snapshot_objects}


def _unfixed(s: StoreReport) -> int:
    """Damage to the volume's data that is still there. Orphans are not counted: they are
    reported (and removed when repairing), but every file reads the same with or without
    them."""
    found = s.missing + s.checksum_mismatch + s.authentication_failure + s.store_unreachable
    return found - s.repaired


Progress = Callable[[int, int, int], None]  # (chunks done, chunks total, bytes read)


class Scrubber:
    def __init__(self, lay: Layout, health: StoreHealth, watch: StoreWatch, meta: MetaRepo,
                 events: EventLog, healer: Healer, writing: set[bytes], *, repair: bool,
                 rate: float | None = None, progress: Progress | None = None,
                 orphans: bool = True,
                 also_referenced: Callable[[], Iterable[tuple[bytes, bytes]]] = list,
                 snapshots: Callable[[], list[tuple[int, int, Ref]]] = list) -> None:
        self.lay = lay
        self.health = health
        self.watch = watch
        self.meta = meta
        self.events = events
        self.healer = healer
        self.writing = writing  # oids being written: their objects are not orphans
        self.repair = repair
        self.rate = rate  # bytes per second read from the stores; None: unlimited
        self.progress = progress or (lambda done, total, nbytes: None)
        self.report = ScrubReport(stores=[StoreReport(s.url) for s in lay.stores])
        # A host that is not the volume's writer (a follower, a read-only mount) cannot
        # know every object the writer keeps (its snapshots): it does not look for orphans.
        self.orphans = orphans
        self.also_referenced = also_referenced  # (oid, placement) of snapshot objects
        self.snapshots = snapshots  # (kind, version, ref) of the snapshot objects to verify

    async def run(self) -> ScrubReport:
        start = time.monotonic()
        await self._check_stores()
        referenced = self._referenced()
        listings = await self._list_objects() if self.orphans else []
        if self.repair:
            await self.healer.process_queue()
        cfg = self.lay.config
        if cfg.packs and cfg.pack_size <= _WHOLE_PACK_MAX and self.lay.pack_cache is None:
            # One pack per store held at a time: packs are filled in inode order, which
            # is the order chunks are visited in.
            self.lay.set_pack_cache(PackCache(len(self.lay.stores) * cfg.pack_size))
        try:
            await self._verify_chunks(start)
            await self._verify_version_chunks(start)
        finally:
            self.lay.set_pack_cache(None)
        await self._verify_snapshots(start)
        await self._orphans(listings, referenced)
        self.report.queued_repairs = self.meta.repair_count()
        self.report.seconds = time.monotonic() - start
        return self.report

    async def _check_stores(self) -> None:
        """Check each store's identity (claim one that is ours but lost its marker, when
        repairing); the mounted volume acts on what is found (`StoreWatch.apply`)."""
        for si, store in enumerate(self.lay.stores):
            state = await check_store(store, si, self.lay.config, self.lay.keys, self.meta,
                                      also=list(self.also_referenced()),
                                      writable=self.repair, claim=self.repair)
            self.watch.apply(si, state)
            rep = self.report.stores[si]
            if self.repair and state.writable and self.health.may_delete(si):
                try:
                    await store.remove_stale_temporaries(older_than=TEMPORARY_AGE)
                except StoreError as e:
                    log.warning("cannot remove stale temporaries from %s: %s", store.url, e)
            if state.kind == UNREACHABLE:
                rep.state = f"unavailable: {state.detail}"
            elif state.kind not in (OK, CLAIMED):
                rep.state = state.describe()

    async def _list_objects(self) -> list[set[str] | None]:
        out: list[set[str] | None] = []
        for si, store in enumerate(self.lay.stores):
            try:
                out.append(set(await store.list()) if self.report.stores[si].state == "ok"
                           else None)
            except StoreError:
                out.append(None)
        return out

    async def _verify_chunks(self, start: float) -> None:
        total = self.meta.chunk_count()
        cursor = (0, -1)
        done = 0
        paths: dict[int, str] = {}
        while True:
            batch = self.meta.chunks_after(*cursor, _BATCH)
            if not batch:
                break
            await self._read_packs([row for _, _, row in batch])
            for ino, file_id, row in batch:
                cursor = (ino, row.idx)
                if self.meta.chunk_by_oid(ino, row.idx, row.oid) is None:
                    continue  # rewritten since the batch was read
                await self._verify_one(ino, file_id, row, paths)
                done += 1
                self.report.chunks = done
                self.report.bytes_read += row.length * self.lay.n // self.lay.k
                self.progress(done, max(total, done), self.report.bytes_read)
                await self._throttle(start)

    async def _verify_version_chunks(self, start: float) -> None:
        """Chunk versions only named versions hold (replaced or deleted in the live tree):
        verified and healed like the live tree's, since a version must stay readable."""
        paths: dict[int, str] = {}
        rows = self.meta.version_only_chunks()
        for at, (ino, file_id, row) in enumerate(rows):
            if at % _BATCH == 0:
                await self._read_packs([r for _, _, r in rows[at : at + _BATCH]])
            if self.meta.chunk_by_oid(ino, row.idx, row.oid) is None:
                continue  # its last version was deleted meanwhile
            if ino not in paths:
                paths[ino] = self.events.resolve_path(ino) or f"<inode {ino}, in a version>"
            await self._verify_one(ino, file_id, row, paths)
            self.report.chunks += 1
            self.report.bytes_read += row.length * self.lay.n // self.lay.k
            await self._throttle(start)

    async def _read_packs(self, rows: list[ChunkRow]) -> None:
        """Read whole, once, the packs holding these chunks' packed shares (scrub verifies
        packs as units): their members are then checked from memory, by the same read
        algorithm. A pack that cannot be read is left out: its members are then fetched
        one by one, which finds and reports what is wrong with each."""
        cache = self.lay.pack_cache
        if cache is None:
            return
        wanted = {(row.placement[i], loc.pid) for row in rows for i, loc in
                  enumerate(row.locs or ()) if loc is not None}
        wanted = {w for w in wanted if w not in cache and not self.health.down(w[0])}

        async def read(si: int, pid: bytes) -> None:
            with contextlib.suppress(NoSuchObject, StoreError):
                cache.put(si, pid, await self.lay.stores[si].get(self.lay.pack_name(pid)))

        async with trio.open_nursery() as nursery:
            for si, pid in sorted(wanted):
                nursery.start_soon(read, si, pid)

    async def _verify_snapshots(self, start: float) -> None:
        """The metadata snapshots in the stores are verified and healed like file data:
        a new host can only recover the volume from them. (Their shares are counted in
        `snapshot_objects`, not in the stores' `shares_checked`, which are the files'.)"""
        objects = self.snapshots()
        names = {ref.oid for _, _, ref in objects}
        for kind, version, ref in objects:
            await self._verify_one(0, META_FILE_ID, ref.row(kind, version), {0: SNAPSHOTS},
                                   lambda oid=ref.oid: oid in names, count=False)
            self.report.snapshot_objects += 1
            self.report.bytes_read += ref.length * self.lay.n // self.lay.k
            await self._throttle(start)

    async def _verify_one(self, ino: int, file_id: bytes, row: ChunkRow,
                          paths: dict[int, str],
                          still_needed: Callable[[], bool] | None = None,
                          count: bool = True) -> None:
        path = paths.get(ino)
        if path is None:
            path = paths[ino] = self.events.resolve_path(ino) or f"<inode {ino}>"
        try:
            bad, actions = await self.healer.verify(ino, file_id, row, self.repair,
                                                    still_needed)
        except ChunkUnrecoverable as e:
            if path not in self.report.unrecoverable_files:
                self.report.unrecoverable_files.append(path)
            self.report.damaged_files.setdefault(path, []).append(str(e))
            return
        for i, why in bad.items():
            rep = self.report.stores[row.placement[i]]
            setattr(rep, why, getattr(rep, why) + 1)
            action = actions.get(i, "reported")
            if action in ("healed", "obsolete"):
                rep.repaired += 1
            elif action == "queued":
                rep.queued += 1
            if action != "healed":
                self.report.damaged_files.setdefault(path, []).append(
                    f"chunk {row.idx} share {i} on {rep.url}: {why} ({action})")
        for i in range(self.lay.n if count else 0):
            self.report.stores[row.placement[i]].shares_checked += 1

    async def _throttle(self, start: float) -> None:
        if not self.rate:
            await trio.sleep(0)  # let readers in between chunks
            return
        ahead = self.report.bytes_read / self.rate - (time.monotonic() - start)
        await trio.sleep(max(0.0, ahead))

    def _referenced(self, into: list[set[str]] | None = None) -> list[set[str]]:
        """Per store, the object names some chunk version (current, garbage, being written)
        refers to right now."""
        referenced = into if into is not None else [set() for _ in self.lay.stores]
        for oid, where in [*self.meta.all_versions(), *self.also_referenced()]:
            for i, si in enumerate(where):
                referenced[si].add(self.lay.name(oid, i))
        for pack in self.meta.all_packs():  # live, sealed, open and dead (until deleted)
            if pack.store < len(referenced):
                referenced[pack.store].add(self.lay.pack_name(pack.pid))
        for oid in self.writing:
            for i in range(self.lay.n):
                name = self.lay.name(oid, i)
                for ref in referenced:
                    ref.add(name)
        return referenced

    async def _orphans(self, listings: list[set[str] | None],
                       referenced: list[set[str]]) -> None:
        """Objects no chunk version referred to, neither before the walk nor after it, and
        that still exist after it. Files change during a mounted scrub: an object listed as
        garbage may be collected meanwhile, and a version may be written and replaced."""
        if not self.orphans:
            return
        self._referenced(referenced)
        after = await self._list_objects()
        for si, names in enumerate(listings):
            if names is None or after[si] is None:
                continue
            rep = self.report.stores[si]
            for name in sorted((names & after[si]) - referenced[si] - FIXED_NAMES):
                rep.orphans += 1
                action = "reported"
                if self.repair:
                    try:
                        await self.lay.stores[si].delete(name)
                        rep.orphans_removed += 1
                        action = "removed"
                    except (StoreError, NoSuchObject) as e:
                        log.warning("cannot remove orphan %s: %s", name, e)
                self.events.record("unexpected_object", action=action,
                                   store=self.lay.stores[si].url, obj=name)
