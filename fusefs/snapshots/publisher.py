"""The writer publishes its metadata into the stores: incremental snapshots, rotation,
fencing.

A snapshot is taken at one instant of the metadata (SQLite's backup API from a read
transaction: writers go on meanwhile), cut into blocks; only blocks the stores do not hold
yet are uploaded, then the superblock, then the heads (stores synced in between, so a head
never names objects that are not durable). Files open for writing at that instant are
published as the previous snapshot showed them, so a follower never sees a half-written
file. Once a snapshot no longer names some replaced data, that data may be deleted after
the grace period (`VolumeConfig.grace`): followers poll every interval and have moved on.

Fencing: every snapshot carries the writer's epoch. A host that recovers the volume as its
writer publishes a higher epoch; a writer that sees one stops writing and never deletes
anything again (`fenced`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path

import trio

from fusefs.chunkread import ChunkReader
from fusefs.chunkwrite import ChunkWriter
from fusefs.codec.keys import VolumeKeys
from fusefs.durability import delete_batches
from fusefs.errors import FusefsError, StoreError
from fusefs.events import EventLog
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import MetaRepo
from fusefs.snapshots.fetch import fetch_superblock
from fusefs.snapshots.index import SnapshotIndex
from fusefs.snapshots.objects import (
    BLOCK_SIZE,
    KIND_BLOCK,
    KIND_SUPER,
    SNAPSHOT_FORMAT,
    Head,
    Ref,
    SnapshotError,
    block_oid,
    encode_superblock,
    newest,
    put_object,
    read_heads,
    seal_head,
    superblock_oid,
)
from fusefs.stores.base import HEAD

log = logging.getLogger(__name__)

KEEP_RECENT = 4  # the newest snapshots, always kept
KEEP_HOURLY = 24  # then the newest of each of the last 24 hours
KEEP_DAILY = 7  # then the newest of each of the last 7 days
UPLOADS = 8  # blocks uploaded at once
FENCE_CHECK_INTERVAL = 5.0  # seconds between reads of the heads before deleting


class Fenced(FusefsError):
    """Another host is the volume's writer now."""


def keep(snapshots: list[tuple[int, int, int]], now_ns: int) -> set[tuple[int, int]]:
    """Which (epoch, seq) to keep of (epoch, seq, time_ns), newest last."""
    kept = {(e, s) for e, s, _ in snapshots[-KEEP_RECENT:]}
    for width, count in ((3600, KEEP_HOURLY), (86400, KEEP_DAILY)):
        seen: set[int] = set()
        for e, s, t in reversed(snapshots):
            bucket = (now_ns - t) // (width * 10**9)
            if bucket < count and bucket not in seen:
                seen.add(bucket)
                kept.add((e, s))
    return kept


class Publisher:
    def __init__(self, lay: Layout, health: StoreHealth, meta: MetaRepo, writer: ChunkWriter,
                 events: EventLog, state_dir: Path, *,
                 open_for_writing: Callable[[], set[int]] = set) -> None:
        self.lay = lay
        self.health = health
        self.meta = meta
        self.writer = writer
        self.events = events
        self.state_dir = state_dir
        self.index = SnapshotIndex(state_dir / "snapshots.db")
        self.open_for_writing = open_for_writing  # files a snapshot shows as before
        self.epoch = int(meta.get_info("writer_epoch") or 1)
        self.writer_id = meta.get_info("writer_id") or os.urandom(8).hex()
        self.fenced: str | None = None  # why, once another writer took over
        self._published_changes = -1
        self._shown_as_before: set[int] = set()  # files the last snapshot showed as before
        self._fence_checked = -FENCE_CHECK_INTERVAL
        self._lock = trio.Lock()
        self._new: set[bytes] = set()  # blocks the last snapshot uploaded
        self._stores_newest = 0  # the newest sequence number seen in the heads
        self.uploaded_bytes = 0  # plaintext bytes of those blocks

    @property
    def last(self) -> Path:
        return self.state_dir / "snapshot.db"  # the copy the last snapshot was made of

    def close(self) -> None:
        self.index.close()

    # -- fencing ----------------------------------------------------------------------
    async def check_fence(self, *, now: bool = False) -> bool:
        """True while this host is still the writer (the heads name no higher epoch)."""
        if self.fenced is not None:
            return False
        t = trio.current_time()
        if not now and t - self._fence_checked < FENCE_CHECK_INTERVAL:
            return True
        self._fence_checked = t
        top = newest(await read_heads(self.lay))
        self._stores_newest = max(self._stores_newest, top.seq if top is not None else 0)
        if top is not None and top.epoch > self.epoch:
            self.fenced = (f"host {top.writer} took over as the writer (epoch {top.epoch} > "
                           f"{self.epoch})")
            log.error("this host no longer writes volume %s: %s", self.lay.config.volume_id,
                      self.fenced)
            self.events.record("writer_fenced", action="read_only", detail=self.fenced)
            return False
        return True

    async def check_at_mount(self) -> None:
        """Before a read-write mount: refuse when another host took over (Fenced); when the
        stores' newest snapshot is older than the last this host published (old objects
        put back?), say so and publish again."""
        if not await self.check_fence(now=True):
            raise Fenced(f"this volume directory is no longer the writer: {self.fenced}; "
                         "mount it --read-only, or recover it again")
        latest = self.index.latest()
        top = newest(await read_heads(self.lay))
        if latest is not None and (top is None or (top.epoch, top.seq) < latest[:2]):
            seen = f"{top.seq}" if top else "none"
            self.events.record("snapshot_rollback", action="reported",
                               detail=f"the stores' newest snapshot is {seen}, this host "
                                      f"published {latest[1]}")
            log.warning("the stores' newest metadata snapshot (%s) is older than the last "
                        "this host published (%d): publishing again", seen, latest[1])
            self._published_changes = -1

    # -- publishing -------------------------------------------------------------------
    async def publish(self, *, force: bool = False) -> int | None:
        """Publish a snapshot if anything changed since the last one (or `force`);
        return its sequence number. Raises Fenced, or StoreError when too few stores."""
        async with self._lock:
            if not force and self.meta.total_changes() == self._published_changes \
                    and not self._shown_as_before - self.open_for_writing():
                return None  # (a file closed since, its rows committed then, is news too)
            if not await self.check_fence(now=True):
                raise Fenced(self.fenced or "fenced")
            return await self._publish(force)

    async def _publish(self, force: bool) -> int | None:
        latest = self.index.latest()
        seq = max(latest[1] if latest else 0, self._stores_newest) + 1
        if self.meta.get_info("writer_epoch") is None:
            with self.meta.transaction():
                self.meta.set_info("writer_epoch", str(self.epoch))
                self.meta.set_info("writer_id", self.writer_id)
        excluded = self._shown_as_before = self.open_for_writing()
        mark = self.meta.max_garbage_id()
        dead_mark = self.meta.max_pack_garbage_id()
        self.meta.commit_pending()  # counted in `changes`: it must be in the snapshot too
        changes = self.meta.total_changes()
        source = self._pin_source()  # the instant this snapshot shows
        nxt = self.state_dir / "snapshot.next.db"
        size, oids = await trio.to_thread.run_sync(
            self._copy, self.lay.keys, source, nxt, excluded,
            self.last if self.last.exists() else None)
        if not force and latest is not None and oids == self.index.block_oids(*latest[:2]):
            nxt.unlink(missing_ok=True)  # the same metadata as the last snapshot: no new one
            self._published_changes = changes
            return None
        blocks = await self._upload_blocks(nxt, oids)
        now = time.time_ns()
        config = {k: v for k, v in asdict(self.lay.config).items() if k != "role"}
        sb = {"fusefs_snapshot": SNAPSHOT_FORMAT, "volume": self.lay.config.volume_id,
              "epoch": self.epoch, "seq": seq, "time_ns": now, "writer": self.writer_id,
              "config": config,
              "db": {"size": size, "block_size": BLOCK_SIZE,
                     "blocks": [b.as_list() for b in blocks]},
              "retained": [[e, s, t, r.as_list()] for e, s, t, r in self.index.snapshots()]}
        ref = await put_object(self.writer, KIND_SUPER, seq,
                               superblock_oid(self.lay.keys, self.epoch, seq),
                               encode_superblock(sb))
        self.writer.forget(ref.oid)
        await self._sync()
        await self._write_heads(Head(self.epoch, seq, now, self.writer_id, ref, config))
        self.index.add(self.epoch, seq, now, ref, blocks)
        os.replace(nxt, self.last)
        before = self.meta.total_changes()
        with self.meta.transaction():
            self.meta.mark_garbage_published(mark, now, excluded)
            self.meta.mark_pack_garbage_published(dead_mark, now)
        # Those marks need no snapshot of their own; other commits meanwhile do.
        self._published_changes = self.meta.total_changes() if before == changes else changes
        self.uploaded_bytes = sum(b.length for b in blocks if b.oid in self._new)
        log.info("published metadata snapshot %d (epoch %d): %d blocks, %d new (%d bytes)",
                 seq, self.epoch, len(blocks), len(self._new), self.uploaded_bytes)
        await self._rotate()
        return seq

    def _pin_source(self) -> sqlite3.Connection:
        """A read-only connection whose open read transaction pins this instant."""
        quoted = urllib.parse.quote(str(self.meta.path))
        src = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True, isolation_level=None,
                              check_same_thread=False)
        src.execute("BEGIN")
        src.execute("SELECT COUNT(*) FROM dbinfo").fetchone()
        return src

    @staticmethod
    def _copy(keys: VolumeKeys, src: sqlite3.Connection, dst_path: Path, excluded: set[int],
              previous: Path | None) -> tuple[int, list[bytes]]:
        """Copy the pinned instant to `dst_path` (one plain file), show the files in
        `excluded` as the previous snapshot did; return its size and the oid of each block.
        Runs in a worker thread; reads a block at a time (a big database is not held in
        memory)."""
        dst_path.unlink(missing_ok=True)
        dst = sqlite3.connect(dst_path, isolation_level=None)
        try:
            src.backup(dst)
            src.execute("COMMIT")
            src.close()
            dst.execute("PRAGMA journal_mode=DELETE")
            if excluded:
                _show_as_before(dst, excluded, previous)
        finally:
            dst.close()
        oids = []
        with open(dst_path, "rb") as f:
            while block := f.read(BLOCK_SIZE):
                oids.append(block_oid(keys, block))
        return dst_path.stat().st_size, oids

    async def _upload_blocks(self, path: Path, oids: list[bytes]) -> list[Ref]:
        refs: list[Ref | None] = [None] * len(oids)
        self._new = set()
        limit = trio.Semaphore(UPLOADS)
        fd = os.open(path, os.O_RDONLY)

        async def one(j: int) -> None:
            async with limit:
                data = os.pread(fd, BLOCK_SIZE, j * BLOCK_SIZE)  # page cache: just written
                ref = await put_object(self.writer, KIND_BLOCK, 0, oids[j], data)
                self.writer.forget(ref.oid)
                refs[j] = ref

        uploaded: dict[bytes, int] = {}
        try:
            async with _plain_errors(), trio.open_nursery() as nursery:
                for j, oid in enumerate(oids):
                    known = self.index.known_block(oid)
                    if known is not None:
                        refs[j] = known
                    elif oid in uploaded:
                        continue  # the same content twice (empty pages): one upload
                    else:
                        uploaded[oid] = j
                        self._new.add(oid)
                        nursery.start_soon(one, j)
        finally:
            os.close(fd)
        for j, oid in enumerate(oids):
            if refs[j] is None:
                refs[j] = refs[uploaded[oid]]
        return refs  # type: ignore[return-value]

    async def _sync(self) -> None:
        async def one(si: int) -> None:
            if self.health.write_refusal(si) is None:
                try:
                    await self.lay.stores[si].sync()
                except StoreError as e:
                    self.health.mark_down(si, e)

        async with trio.open_nursery() as nursery:
            for si in range(len(self.lay.stores)):
                nursery.start_soon(one, si)

    async def _write_heads(self, head: Head) -> None:
        """The head goes to every store that takes writes; the write quorum must."""
        raw = seal_head(self.lay.keys, self.lay.volume_id, head)
        done = 0

        async def one(si: int) -> None:
            nonlocal done
            if self.health.write_refusal(si) is not None:
                return
            try:
                await self.lay.stores[si].put(HEAD, raw)
                await self.lay.stores[si].sync()
                done += 1
            except StoreError as e:
                self.health.mark_down(si, e)

        async with trio.open_nursery() as nursery:
            for si in range(len(self.lay.stores)):
                nursery.start_soon(one, si)
        if done < self.lay.quorum:
            raise StoreError(f"the snapshot's head reached {done} stores, "
                             f"{self.lay.quorum} are needed")

    async def _rotate(self) -> None:
        """Delete snapshots no longer kept, and the blocks only they listed."""
        snaps = self.index.snapshots()
        kept = keep([(e, s, t) for e, s, t, _ in snaps], time.time_ns())
        names: dict[int, list[str]] = {}
        for e, s, _, sb in snaps:
            if (e, s) in kept:
                continue
            for ref in [sb, *self.index.forget(e, s)]:
                for i, si in enumerate(ref.placement):
                    names.setdefault(si, []).append(self.lay.name(ref.oid, i))
        if names:
            await delete_batches(self.lay, self.health, names)

    async def import_retained(self, reader: ChunkReader, head: Head, sb: dict) -> None:
        """A recovered writer takes over the snapshots its predecessor retained: their
        blocks are known (not uploaded again) and rotation deletes them in time."""
        self.index.add(head.epoch, head.seq, head.time_ns, head.superblock,
                       [Ref.from_list(b) for b in sb["db"]["blocks"]])
        for e, s, t, ref in sb.get("retained", []):
            old = Head(e, s, t, "", Ref.from_list(ref), {})
            try:
                older = await fetch_superblock(reader, self.lay.config.volume_id, old)
            except SnapshotError as err:
                log.warning("retained snapshot %d cannot be read (its objects stay): %s",
                            s, err)
                continue
            self.index.add(e, s, t, old.superblock,
                           [Ref.from_list(b) for b in older["db"]["blocks"]])

    async def run(self) -> None:
        """Daemon task: publish every snapshot_interval while the metadata changes."""
        interval = self.lay.config.snapshot_interval
        if interval <= 0:
            return
        while self.fenced is None:
            await trio.sleep(interval)
            try:
                await self.publish()
            except Fenced:
                return
            except FusefsError as e:
                log.warning("metadata snapshot not published: %s", e)
            except Exception:
                log.exception("metadata snapshot not published")


@contextlib.asynccontextmanager
async def _plain_errors() -> AsyncIterator[None]:
    """A store error inside a nursery comes out as itself, not as an exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        match, _ = group.split(FusefsError)
        if match is None:
            raise
        first = match.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def _show_as_before(db: sqlite3.Connection, inodes: set[int], previous: Path | None) -> None:
    """In a snapshot copy, show these files as the previous snapshot did (absent if they
    were not in it): they were open for writing at the snapshot's instant."""
    if previous is not None:
        db.execute("ATTACH DATABASE ? AS prev", (str(previous),))
    db.execute("BEGIN")
    for ino in sorted(inodes):
        for table, col in (("chunks", "inode"), ("xattrs", "inode"), ("dentries", "inode"),
                           ("inodes", "id")):
            db.execute(f"DELETE FROM {table} WHERE {col}=?", (ino,))
            if previous is not None:
                cols = _common_columns(db, table)
                db.execute(f"INSERT OR IGNORE INTO {table} ({cols}) SELECT {cols} FROM"
                           f" prev.{table} WHERE {col}=?", (ino,))
    db.execute("COMMIT")


def _common_columns(db: sqlite3.Connection, table: str) -> str:
    """The columns `table` has both here and in the previous snapshot (made before a
    schema upgrade, it may lack some: those stay NULL)."""
    prev = {r[1] for r in db.execute(f"PRAGMA prev.table_info({table})")}
    return ", ".join(r[1] for r in db.execute(f"PRAGMA main.table_info({table})")
                     if r[1] in prev)
