"""The volume: chunks in, verified plaintext out, over K+M shares on N stores.

Composition only: it builds the data-path pieces over one `Layout` and gives the file layer
(`filedata`, `vfs`) and the daemon (`mount`, `control`) one object to hold. Each idea lives in
its own module and nothing here decides anything:

- `health.StoreHealth`       which stores are down or full, and for how long;
- `workers.IoPolicy`         whether local-disk I/O runs inline or in a worker thread;
- `chunkread.ChunkReader`    fetch until K good, verify, rebuild, decrypt (whole or ranged);
- `chunkwrite.ChunkWriter`   seal, place, put with the write quorum, commit;
- `durability.Durability`    durable points and the deletion of replaced shares;
- `packs.PackWriter`, `compaction.Compactor`  pack objects (format 4): appends, compaction;
- `heal.Healer`, `scrub.Scrubber`  repairs, built on the pieces above;
- `storecheck.StoreWatch`    whose each store is, rechecked while it is not fully usable.

It knows chunk rows and stores; it knows nothing about names, directories or FUSE.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import trio

from fusefs.chunkread import ChunkReader
from fusefs.chunkwrite import ChunkWriter
from fusefs.codec.keys import VolumeKeys
from fusefs.compaction import Compactor, CompactReport
from fusefs.config import VolumeConfig
from fusefs.durability import Durability, recover_lost_writes
from fusefs.errors import StoreError
from fusefs.events import EventLog
from fusefs.heal import Healer
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.packs import PackWriter
from fusefs.scrub import Progress, Scrubber
from fusefs.snapshots.publisher import Publisher
from fusefs.storecheck import StoreWatch, require_readable
from fusefs.stores.base import Store
from fusefs.workers import IoPolicy


class Volume:
    def __init__(self, config: VolumeConfig, keys: VolumeKeys, stores: list[Store],
                 meta: MetaRepo, events: EventLog, *, writable: bool = True,
                 state_dir: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`writable` False: nothing is ever written to or deleted from the stores (a
        read-only mount: damage is reported, not healed). `state_dir` (the volume
        directory) turns on metadata snapshots for a writable volume."""
        self.layout = lay = Layout(config, keys, stores)
        self.config, self.keys, self.stores = config, keys, stores
        self.meta = meta
        self.events = events
        self.k = lay.k
        events.resolve_path = meta.path_of
        self.health = StoreHealth(stores, events, clock)
        self.policy = IoPolicy(stores, clock)
        self.reader = ChunkReader(lay, self.health, self.policy, events, meta)
        self.watch = StoreWatch(lay, self.health, meta, events, writable=writable)
        self.writer = ChunkWriter(lay, self.health, self.policy, meta, events,
                                  recheck=self.watch.probe)
        self.durability = Durability(lay, self.health, meta)
        self.durability.deletes = writable
        self.healer = Healer(lay, self.health, self.reader, meta, events, writes=writable)
        self.packs: PackWriter | None = None
        self.compactor: Compactor | None = None
        if writable and config.packs:
            self.packs = self.writer.packs = self.healer.packs = PackWriter(
                lay, meta, self.health)
            self.compactor = Compactor(lay, self.health, meta, self.packs)
        self.publisher: Publisher | None = None
        if state_dir is not None and writable and config.role == "writer":
            self.publisher = Publisher(lay, self.health, meta, self.writer, events, state_dir)
            self.watch.also_owned = self._snapshot_objects
            self.durability.may_delete = self.publisher.check_fence
            if config.grace > 0:
                self.durability.grace = config.grace

    @property
    def nursery(self) -> trio.Nursery | None:
        """Where replaced shares are deleted and hedged puts finish in the background
        (None: inline, awaited)."""
        return self.durability.nursery

    @nursery.setter
    def nursery(self, nursery: trio.Nursery | None) -> None:
        self.durability.nursery = nursery
        self.writer.nursery = nursery

    @property
    def fenced(self) -> str | None:
        """Why this host no longer writes the volume (another host took over), or None."""
        return self.publisher.fenced if self.publisher is not None else None

    # -- store health ----------------------------------------------------------------------
    def store_down(self, si: int) -> bool:
        return self.health.down(si)

    def mark_down(self, si: int, error: Exception) -> None:
        self.health.mark_down(si, error)

    def mark_up(self, si: int) -> None:
        self.health.mark_up(si)

    # -- chunks ----------------------------------------------------------------------------
    async def write_chunk(self, ino: int, file_id: bytes, idx: int, plain: bytes,
                          prev_version: int) -> tuple[ChunkRow, dict[int, str]]:
        """A new version of chunk `idx` stored (not committed): see `ChunkWriter.write`."""
        if self.fenced:
            raise StoreError(f"this host no longer writes the volume: {self.fenced}")
        return await self.writer.write(file_id, idx, plain, prev_version)

    def commit_chunk(self, ino: int, row: ChunkRow, missing: dict[int, str],
                     size: int | None = None) -> None:
        self.writer.commit(ino, row, missing, size)

    async def read_chunk(self, ino: int, file_id: bytes, row: ChunkRow) -> bytes:
        """Verified plaintext of one chunk; bad shares are healed in the background.
        Raises ChunkUnrecoverable when fewer than k shares are good."""
        got = await self.reader.read(ino, file_id, row)
        damage = got.damage()
        if damage:
            await self.healer.heal_later(ino, row, got.good, damage, got.padded)
        return got.plain

    async def read_span(self, file_id: bytes, row: ChunkRow, start: int, end: int
                        ) -> bytes | None:
        return await self.reader.read_span(file_id, row, start, end)

    def announce(self, row: ChunkRow) -> None:
        self.reader.announce(row)

    async def compact(self) -> CompactReport:
        """Compact the packs mostly dead (`compaction`); nothing on a volume without packs
        or one this host may not write."""
        if self.compactor is None or self.fenced:
            return CompactReport()
        return await self.compactor.run_once()

    async def run_compaction(self) -> None:
        if self.compactor is not None:
            await self.compactor.run()

    def close_packs(self) -> None:
        """Seal the open packs (unmount: nothing is appended to them again)."""
        if self.packs is not None:
            self.packs.close()

    # -- durability ------------------------------------------------------------------------
    async def space(self) -> tuple[int, int]:
        """(total, free) bytes a user can store: the tightest store times k."""
        spaces = [await s.space() for s in self.stores]
        known = [s for s in spaces if s is not None]
        if not known:
            return 0, 0
        return min(t for t, _ in known) * self.k, min(f for _, f in known) * self.k

    async def make_durable(self, *, wait_for_garbage: bool = False) -> None:
        await self.durability.make_durable(wait_for_garbage=wait_for_garbage)

    async def run_durability(self) -> None:
        await self.durability.run()

    async def recover_lost_writes(self) -> int:
        """After a power loss: put back files whose newest changes lost their shares (see
        `durability.recover_lost_writes`). Before anything collects garbage."""
        return await recover_lost_writes(self.layout, self.reader, self.meta, self.events)

    async def check_stores(self) -> None:
        """Check every store's identity and reachability (at mount); StoreError when fewer
        than K can be read. The others are read around, never written, and rechecked."""
        await self.watch.check()
        require_readable(self.stores, self.watch.states, self.k)

    async def run_store_watch(self) -> None:
        """Daemon task: recheck stores that are not fully usable; a store that is usable
        again gets its queued repairs at once."""
        async def back(_: list[int]) -> None:
            if self.meta.repair_count():
                await self.healer.process_queue()

        await self.watch.run(back)

    def scrubber(self, *, repair: bool, rate: float | None = None,
                 progress: Progress | None = None) -> Scrubber:
        return Scrubber(self.layout, self.health, self.watch, self.meta, self.events,
                        self.healer, self.writer.writing,
                        repair=repair and self.healer.writes and not self.fenced, rate=rate,
                        progress=progress, orphans=self.healer.writes,
                        also_referenced=self._snapshot_objects,
                        snapshots=self.publisher.index.objects if self.publisher else list)

    def _snapshot_objects(self) -> list[tuple[bytes, bytes]]:
        if self.publisher is None:
            return []
        return [(r.oid, r.placement) for r in self.publisher.index.all_refs()]
