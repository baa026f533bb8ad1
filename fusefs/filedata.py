"""The bytes of open files: dirty chunk buffers, background sealing, reads, truncation.

One `FileData` per open inode. Writes patch chunk-sized buffers in memory; a buffer that
fills up is sealed and stored in the background (bounded by `Flusher` slots, which is the
write-behind memory limit); `flush` seals the rest, waits, commits size/mtime and makes it
all durable, so close() and fsync() return only once the data is safe. Reads see dirty and
in-flight data first, then committed chunks through a bounded plaintext cache.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import trio

from fusefs import metrics
from fusefs.errors import ChunkUnrecoverable, FsError, StoreError, StoreFull
from fusefs.meta.repo import ChunkRow, InodeRow, MetaRepo
from fusefs.volume import Volume

log = logging.getLogger(__name__)

MAX_INFLIGHT_CHUNKS = 8  # chunks being sealed/stored at once; bounds write-behind memory
SEQUENTIAL_SLACK = 1 << 20  # bytes: the largest FUSE read request
READAHEAD_CHUNKS = 4  # chunks fetched ahead of a sequential reader (stores work in parallel)


class ChunkCache:
    """LRU of verified plaintext chunks keyed by (inode, index, oid): a new version has a new
    random oid, so a cached entry can never be stale."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[tuple[int, int, bytes], bytes] = OrderedDict()
        self.loading: dict[tuple[int, int, bytes], trio.Event] = {}  # fetches in progress

    def get(self, key: tuple[int, int, bytes]) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: tuple[int, int, bytes], data: bytes) -> None:
        if len(data) > self.max_bytes or key in self._items:
            return
        self._items[key] = data
        self.used += len(data)
        while self.used > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.used -= len(old)


def _zero_fill(piece: bytes | bytearray, n: int) -> bytes | bytearray:
    """piece, extended with zeros to n bytes (a chunk shorter than the file: a hole)."""
    return piece if len(piece) == n else piece + bytes(n - len(piece))


def fs_error(e: Exception) -> FsError:
    """Map a data-path failure to the errno a reader/writer should see."""
    if isinstance(e, StoreFull):
        return FsError(errno.ENOSPC, str(e))
    if isinstance(e, ChunkUnrecoverable | StoreError):
        return FsError(errno.EIO, str(e))
    return FsError(errno.EIO, repr(e))


class Flusher:
    """Shared by all files: the nursery for background sealing/readahead and its limits."""

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None
        self.slots = trio.Semaphore(MAX_INFLIGHT_CHUNKS)
        self.readahead = trio.Semaphore(2 * READAHEAD_CHUNKS)


@dataclass
class Handle:
    """An open file of the kernel's (a file handle): whose data, opened for writing?"""

    ino: int
    data: FileData
    writable: bool


class FileData:
    def __init__(self, ino: int, file_id: bytes, size: int, meta: MetaRepo, volume: Volume,
                 cache: ChunkCache, flusher: Flusher) -> None:
        self.ino = ino
        self.file_id = file_id
        self.size = size
        # times of a data change not yet committed (None: nothing pending); kept apart so an
        # explicit utimens after writing (cp -p) keeps its mtime while ctime stays current
        self.mtime_ns: int | None = None
        self.ctime_ns: int | None = None
        self.meta = meta
        self.volume = volume
        self.cs = volume.config.chunk_size
        self.cache = cache
        self.flusher = flusher
        self.opens = 0
        self.dirty: dict[int, bytearray] = {}
        self.inflight: dict[int, tuple[trio.Event, bytearray]] = {}
        self.error: Exception | None = None  # a background write failed: report at flush
        self._ahead = -1  # last chunk index readahead has considered in this sequential run
        self._next_off = 0  # where a sequential reader reads next (a read from the start
        #                     counts as sequential: whole chunks and readahead at once)
        self._near = True  # the last read started where the one before it ended
        self.committed_size = size  # the size the metadata holds
        self._lost_from = 1 << 62  # the start of the lowest chunk whose write failed
        # A follower pins the chunk map at open: a newer snapshot that drops or rewrites the
        # file must not change what an open file reads (its shares outlive it for a while).
        self.pinned: dict[int, ChunkRow] | None = None
        self.pinned_inode: InodeRow | None = None
        self._memo: dict[int, ChunkRow | None] | None = None  # rows read (dataset mode)

    def pin(self, inode: InodeRow) -> None:
        self.pinned = {row.idx: row for row in self.meta.chunks_of(self.ino)}
        self.pinned_inode = inode

    def memoise_rows(self) -> None:
        """Keep every chunk row read: only for a read-only mount's files (dataset mode),
        whose metadata does not change while this object lives."""
        self._memo = {}

    def row(self, idx: int) -> ChunkRow | None:
        """The committed row of chunk idx (None: a hole)."""
        if self.pinned is not None:
            return self.pinned.get(idx)
        if self._memo is None:
            return self.meta.get_chunk(self.ino, idx)
        if idx not in self._memo:
            self._memo[idx] = self.meta.get_chunk(self.ino, idx)
        return self._memo[idx]


    # -- reading -------------------------------------------------------------------------
    async def load(self, row: ChunkRow) -> bytes:
        """Verified plaintext of a committed chunk: from the cache, from a fetch already in
        progress (readahead), or fetched now."""
        key = (self.ino, row.idx, row.oid)
        while True:
            data = self.cache.get(key)
            if data is not None:
                metrics.cache_hit()
                return data
            pending = self.cache.loading.get(key)
            if pending is None:
                break
            await pending.wait()
        done = self.cache.loading[key] = trio.Event()
        metrics.cache_miss()
        try:
            data = await self.volume.read_chunk(self.ino, self.file_id, row)
            self.cache.put(key, data)
        finally:
            del self.cache.loading[key]
            done.set()
        return data

    def _readahead(self, off: int, end: int) -> bool:
        """On sequential access, fetch the next chunks in the background; True if it is.

        Sequential means starting within one FUSE request of where the last read ended (the
        kernel's readahead requests may overtake one another), twice in a row: a random
        reader lands next to its previous read now and then, and one such coincidence would
        otherwise fetch READAHEAD_CHUNKS whole chunks it does not want. By chunk index,
        random reads that hit the same chunk twice would do the same.
        """
        near = abs(off - self._next_off) <= SEQUENTIAL_SLACK
        sequential = near and (self._near or off == 0)
        self._near = near
        self._next_off = end
        last = (end - 1) // self.cs
        nursery = self.flusher.nursery
        if not sequential or nursery is None:
            self._ahead = -1
            return sequential
        # Chunks already considered in this run are skipped: several requests per chunk
        # would otherwise query the same rows again and again.
        start = max(last + 1, self._ahead + 1)
        end = min(last + 1 + READAHEAD_CHUNKS, -(-self.size // self.cs))
        self._ahead = max(self._ahead, end - 1)
        for idx in range(start, end):
            if idx in self.dirty or idx in self.inflight:
                continue
            row = self.row(idx)
            if row is None or (self.ino, idx, row.oid) in self.cache.loading:
                continue
            if self.cache.get((self.ino, idx, row.oid)) is not None:
                continue
            nursery.start_soon(self._prefetch, row)
        return True

    async def _prefetch(self, row: ChunkRow) -> None:
        async with self.flusher.readahead:
            try:
                await self.load(row)
            except Exception as e:  # noqa: BLE001 - the foreground read will report it
                log.debug("readahead of chunk %d of inode %d failed: %s", row.idx, self.ino, e)

    async def _piece(self, idx: int, a: int, b: int, random_access: bool
                     ) -> bytes | bytearray | memoryview:
        """Bytes [a, b) of chunk idx (zeros past its end). A small random read of a committed
        chunk that is not cached fetches only the segments it needs (`read_span`); anything
        else loads the whole chunk, which sequential readers and the cache want anyway."""
        buffered = self.dirty.get(idx)
        if buffered is None and idx in self.inflight:
            buffered = self.inflight[idx][1]
        if buffered is not None:
            return _zero_fill(buffered[a:b], b - a)  # copied: it may still change
        row = self.row(idx)
        if row is None or a >= row.length:
            return bytes(b - a)
        key = (self.ino, idx, row.oid)
        if random_access and 2 * (b - a) <= self.cs and self.cache.get(key) is None \
                and key not in self.cache.loading:
            got = await self.volume.read_span(self.file_id, row, a, min(b, row.length))
            if got is not None:
                metrics.cache_miss()
                return _zero_fill(got, b - a)
        data = await self.load(row)
        if b <= len(data):
            # Committed chunk data is never modified: hand out a view, no copy (pyfuse3
            # takes any buffer).
            return memoryview(data)[a:b]
        return _zero_fill(data[a:b], b - a)

    async def read(self, off: int, size: int) -> bytes | memoryview:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        parts = []
        first, last = off // self.cs, (end - 1) // self.cs
        random_access = not self._readahead(off, end)
        try:
            for idx in range(first, last + 1):
                start = idx * self.cs
                a, b = max(off, start) - start, min(end, start + self.cs) - start
                parts.append(await self._piece(idx, a, b, random_access))
        except (ChunkUnrecoverable, StoreError) as e:
            log.error("read of inode %d failed: %s", self.ino, e)
            raise fs_error(e) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- writing -------------------------------------------------------------------------
    async def _buffer(self, idx: int, whole: bool) -> bytearray:
        """The dirty buffer of chunk idx, loading committed data unless fully overwritten."""
        while True:
            if idx in self.dirty:
                return self.dirty[idx]
            if idx in self.inflight:
                await self.inflight[idx][0].wait()
                continue
            row = None if whole else self.meta.get_chunk(self.ino, idx)
            if row is None:
                buf = bytearray()
            else:
                buf = bytearray(await self.load(row))
                if idx in self.dirty or idx in self.inflight:
                    continue  # someone else got there during the await
            self.dirty[idx] = buf
            return buf

    async def write(self, off: int, data: bytes) -> int:
        pos = 0
        view = memoryview(data)  # slices of bytes would copy each piece once more
        try:
            while pos < len(data):
                idx, a = divmod(off + pos, self.cs)
                n = min(self.cs - a, len(data) - pos)
                buf = await self._buffer(idx, whole=(a == 0 and n == self.cs))
                if len(buf) < a:
                    buf.extend(bytes(a - len(buf)))
                buf[a : a + n] = view[pos : pos + n]
                pos += n
                self.size = max(self.size, idx * self.cs + a + n)
                self.mtime_ns = self.ctime_ns = time.time_ns()
                if len(buf) == self.cs:
                    await self._start_flush(idx)
        except (ChunkUnrecoverable, StoreError) as e:
            raise fs_error(e) from None
        return len(data)

    async def _start_flush(self, idx: int) -> None:
        buf = self.dirty.pop(idx)
        done = trio.Event()
        self.inflight[idx] = (done, buf)  # no longer in `dirty`: nothing writes to it again
        await self.flusher.slots.acquire()
        if self.flusher.nursery is None:
            await self._seal(idx, done)
        else:
            self.flusher.nursery.start_soon(self._seal, idx, done)

    async def _seal(self, idx: int, done: trio.Event) -> None:
        data = self.inflight[idx][1]
        try:
            prev = self.meta.chunk_version(self.ino, idx)
            row, missing = await self.volume.write_chunk(self.ino, self.file_id, idx, data,
                                                         prev)
            size = self._committable_size(idx)
            with self.meta.transaction():
                self.volume.commit_chunk(self.ino, row, missing, size=size)
                self._commit_times_with(idx, size)
            self.committed_size = size
            self.cache.put((self.ino, idx, row.oid), data)
        except Exception as e:  # noqa: BLE001 - reported to the writer at flush/fsync
            log.error("writing chunk %d of inode %d failed: %s", idx, self.ino, e)
            self.error = e
            self._lost_from = min(self._lost_from, idx * self.cs)
        finally:
            del self.inflight[idx]
            done.set()
            self.flusher.slots.release()

    def _commit_times_with(self, idx: int, size: int) -> None:
        """The last pending chunk commits the file's size and times with it (inside its
        transaction): the close of a small file is one commit, not two."""
        if self.mtime_ns is None or size != self.size or self.dirty \
                or any(i != idx for i in self.inflight):
            return
        self.meta.update_inode(self.ino, mtime_ns=self.mtime_ns,
                               ctime_ns=self.ctime_ns or self.mtime_ns)
        self.mtime_ns = self.ctime_ns = None

    def _committable_size(self, idx: int) -> int:
        """The file size to commit with chunk idx: never past a chunk that is not committed
        yet (buffered, being written, or lost), or a reader would get zeros where that data
        belongs; never less than what is committed already. Holes (never written) may lie
        below it: they read as zeros, as they should."""
        limit = self.size
        pending = [i for i in (*self.dirty, *self.inflight) if i != idx]
        if pending:
            limit = min(limit, min(pending) * self.cs)
        return max(self.committed_size, min(limit, self._lost_from))

    def _revert(self) -> None:
        """Writes could not be stored: the file is what was committed (as after a
        page-cache writeback error, the unwritable bytes are gone)."""
        self.size = self.committed_size
        self.mtime_ns = self.ctime_ns = None
        self._lost_from = 1 << 62

    def discard_dirty(self) -> None:
        """Forget buffered writes that cannot be stored; the committed size is kept."""
        self.dirty.clear()
        self.error = None
        row = self.meta.get_inode(self.ino)
        if row is not None:
            self.committed_size = row.size
        self._revert()

    async def wait_inflight(self) -> None:
        while self.inflight:
            await next(iter(self.inflight.values()))[0].wait()

    async def flush(self, durable: bool = True) -> None:
        """Seal every dirty chunk and commit it with size and mtime.

        After this, the data survives a crash of the daemon (kill -9) and the loss of up to
        M stores: every share is in its store and the metadata is committed. `durable` also
        syncs the stores and the metadata journal (power loss), as fsync(2) must; close(2)
        leaves that to the periodic durability pass (`durability.DURABILITY_INTERVAL`).
        """
        while self.dirty:  # re-read each time: a write meanwhile may have sealed a chunk
            await self._start_flush(min(self.dirty))
        await self.wait_inflight()
        if self.error is not None:
            e, self.error = self.error, None
            self._revert()
            raise fs_error(e)
        if self.mtime_ns is not None:
            self.meta.update_inode(self.ino, size=self.size, mtime_ns=self.mtime_ns,
                                   ctime_ns=self.ctime_ns or self.mtime_ns)
            self.committed_size = self.size
            self.mtime_ns = self.ctime_ns = None
        if durable:
            try:
                await self.volume.make_durable()
            except StoreError as e:
                raise fs_error(e) from None

    # -- truncation ----------------------------------------------------------------------
    async def truncate(self, size: int) -> None:
        """Set the file size; bytes past a shrink are dropped so a later grow reads zeros."""
        await self.wait_inflight()
        if size < self.size:
            last, keep = divmod(size, self.cs)
            first_drop = last + 1 if keep else last
            for idx in [i for i in self.dirty if i >= first_drop]:
                del self.dirty[idx]
            # The shorter size in the same commit as the chunks it drops: no committed
            # state (a crash, a direct reader beside the mount) has the old size over
            # deleted chunks, which reads as zeros; each one reads as the old file or a
            # prefix of it.
            with self.meta.transaction():  # garbage rows keep the size before: first
                self.meta.delete_chunks_from(self.ino, first_drop)
                self.meta.update_inode(self.ino, size=min(size, self.committed_size))
            if keep:
                if last in self.dirty:
                    del self.dirty[last][keep:]
                else:
                    row = self.meta.get_chunk(self.ino, last)
                    if row is not None and row.length > keep:
                        try:
                            data = (await self.load(row))[:keep]
                            new, missing = await self.volume.write_chunk(
                                self.ino, self.file_id, last, data, row.version)
                        except (ChunkUnrecoverable, StoreError) as e:
                            raise fs_error(e) from None
                        self.volume.commit_chunk(self.ino, new, missing)
                        self.cache.put((self.ino, last, new.oid), data)
        self.size = size
        now = time.time_ns()
        self.meta.update_inode(self.ino, size=size, mtime_ns=now, ctime_ns=now)
        self.committed_size = size
        self.mtime_ns = self.ctime_ns = None if not self.dirty else now
