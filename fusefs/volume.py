"""The volume: chunks in, verified plaintext out, over K+M shares on N stores.

Responsible for placement, parallel share I/O, checksum verification, rebuild from any K good
shares, store health (a failing store is skipped for a while instead of awaited), the write
quorum, copy-on-write garbage collection and durability points. Healing lives in `heal.py`.
It knows chunk rows and stores; it knows nothing about names, directories or FUSE.

Concurrency: runs on the trio thread; CPU work goes through `workers.run_cpu`; local stores
are read and verified a whole chunk per worker-thread hop (`_read_healthy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import trio
from cryptography.exceptions import InvalidTag

from fusefs import placement
from fusefs.codec import chunk as chunkcodec
from fusefs.codec import erasure
from fusefs.codec.buffers import uninitialized
from fusefs.codec.checksum import digest
from fusefs.codec.keys import VolumeKeys
from fusefs.config import VolumeConfig
from fusefs.errors import ChunkUnrecoverable, NoSuchObject, StoreError, StoreFull
from fusefs.events import EventLog
from fusefs.heal import Healer
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.stores.base import Store
from fusefs.workers import run_cpu

log = logging.getLogger(__name__)
T = TypeVar("T")

_FAST_READ_LIMITER = trio.CapacityLimiter(8)  # whole-chunk reads from local stores
_FAST_WRITE_LIMITER = trio.CapacityLimiter(4)  # whole-chunk seal + writes to local stores
DURABILITY_INTERVAL = 5.0  # seconds: like ext4's commit interval, the power-loss window
STORE_RETRY_SECONDS = 15.0  # a failed store is skipped this long before it is tried again
READ_TIMEOUT = 10.0  # a share fetch slower than this counts as a store failure
HEDGE_DELAY = 1.0  # a read waits this long for a share before asking another store too
HINT_MIN_SHARE = 256 << 10  # shares this big are announced to the kernel right before a
#                             read (the disk works on them together); for small ones that only
#                             costs syscalls (a small file is announced at open: `announce`)
FAST_PATH_TIMEOUT = 2.0  # the one-hop local read gives up and the hedged path takes over
INLINE_MAX = 256 << 10  # local-disk I/O this small (a ranged read, a small chunk read or
#                         written) runs on the event loop: the two thread switches cost more
#                         (~40% of a cold 128 KiB random read on a 2-core machine, measured)
INLINE_SLOW = 0.05  # seconds: inline I/O this slow (a sick disk) sends small I/O back to
#                     worker threads, whose reads can time out, for STORE_RETRY_SECONDS

# Problems a share can have; these strings are event kinds (see events.py).
MISSING, CHECKSUM, AUTH, UNREACHABLE = (
    "missing", "checksum_mismatch", "authentication_failure", "store_unreachable")


class _NotHealthy(Exception):
    """The one-hop fast path met anything unusual; the general path takes over."""


class Volume:
    def __init__(self, config: VolumeConfig, keys: VolumeKeys, stores: list[Store],
                 meta: MetaRepo, events: EventLog) -> None:
        self.config = config
        self.keys = keys
        self.stores = stores
        self.meta = meta
        self.events = events
        self.k = config.data_shares
        self.m = config.parity_shares
        self.seg = config.segment_size
        self.n = config.n_shares
        self.quorum = config.quorum
        self.volume_id = config.volume_id_bytes
        self._fast_reads = all(s.get_blocking is not None for s in stores)
        self._fast_ranges = all(s.get_range_blocking is not None for s in stores)
        self._inline_ok = self._fast_reads and self._fast_ranges and all(
            s.inline_io for s in stores)
        self._inline_off = 0.0  # time.monotonic() until which inline I/O is off
        self._fast_writes = all(s.put_blocking is not None for s in stores)
        self._down_until: dict[int, float] = {}  # store index -> monotonic retry time
        self._full_until: dict[int, float] = {}  # stores that refused a write for space
        self.writing: set[bytes] = set()  # oids whose shares are stored but not committed
        self._durable_changes = -1  # meta.total_changes at the last durable point
        self.nursery: trio.Nursery | None = None  # background garbage deletion; None: inline
        self._collection: trio.Event | None = None  # set when the background pass ends
        events.resolve_path = meta.path_of
        self.healer = Healer(self)

    # -- store health --------------------------------------------------------------------
    def store_down(self, si: int) -> bool:
        until = self._down_until.get(si)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._down_until[si]  # try it again; a new failure marks it down again
            log.info("retrying store %s", self.stores[si].url)
            return False
        return True

    def store_full(self, si: int) -> bool:
        """A full store still serves reads and deletes; writes skip it for a while."""
        until = self._full_until.get(si)
        if until is not None and time.monotonic() >= until:
            del self._full_until[si]
            return False
        return until is not None

    def mark_down(self, si: int, error: Exception) -> None:
        if isinstance(error, StoreFull):
            if si not in self._full_until:
                self.events.record("store_full", action="bypassed",
                                   store=self.stores[si].url, detail=str(error))
            self._full_until[si] = time.monotonic() + STORE_RETRY_SECONDS
            return
        if si not in self._down_until:
            self.events.record(UNREACHABLE, action="bypassed", store=self.stores[si].url,
                               detail=str(error))
        self._down_until[si] = time.monotonic() + STORE_RETRY_SECONDS

    def mark_up(self, si: int) -> None:
        self._full_until.pop(si, None)
        if self._down_until.pop(si, None) is not None:
            log.info("store %s is reachable again", self.stores[si].url)

    # -- write ---------------------------------------------------------------------------
    async def write_chunk(self, ino: int, file_id: bytes, idx: int, plain: bytes,
                          prev_version: int) -> tuple[ChunkRow, dict[int, str]]:
        """Seal `plain` as a new version of chunk `idx` and store its shares.

        Returns the row to commit and the shares that could not be stored (at most
        n - quorum; they go to the repair queue with the commit). Raises StoreError when
        fewer than `quorum` stores took a share; nothing is committed then. The caller
        commits with `commit_chunk`: the replaced version becomes garbage in that commit.
        """
        oid = os.urandom(16)
        version = prev_version + 1
        cid = chunkcodec.ChunkId(self.volume_id, file_id, idx, version)
        where = placement.place(oid, self.n, len(self.stores))
        self.writing.add(oid)
        if self._fast_writes and not any(self._down_until.get(si) or self._full_until.get(si)
                                         for si in where):
            try:
                if self._inline_now(len(plain)):  # a small file: cheaper than a thread hop
                    digests, failed = self._inline(len(plain), self._seal_and_put, cid, oid,
                                                   plain, where)
                else:
                    digests, failed = await trio.to_thread.run_sync(
                        self._seal_and_put, cid, oid, plain, where,
                        limiter=_FAST_WRITE_LIMITER)
            except BaseException:
                self.writing.discard(oid)
                raise
            for i, e in failed.items():
                self.mark_down(where[i], e)
        else:
            digests, failed = await self._seal_and_put_async(self.keys.file_aead(file_id), cid,
                                                             oid, plain, where)
        if self.n - len(failed) < self.quorum:
            self.writing.discard(oid)
            await self.delete_shares(oid, where, skip=failed)
            first = next((e for e in failed.values() if isinstance(e, StoreFull)),
                         next(iter(failed.values())))  # "no space" tells the user most
            raise type(first)(f"only {self.n - len(failed)} of {self.n} stores took a share "
                              f"(write quorum {self.quorum}): {first}")
        missing = {i: "store_full" if isinstance(e, StoreFull) else UNREACHABLE
                   for i, e in sorted(failed.items())}
        return ChunkRow(idx, version, oid, len(plain), where, b"".join(digests)), missing

    def _seal_and_put(self, cid: chunkcodec.ChunkId, oid: bytes, plain: bytes,
                      where: bytes) -> tuple[list[bytes], dict[int, StoreError]]:
        """Local stores: seal a chunk and write its shares in one call (a worker thread, or
        inline when small; the file key too: deriving a new file's key is HKDF work the trio
        thread need not do for big chunks)."""
        aead = self.keys.file_aead(cid.file_id)
        shares, digests = chunkcodec.seal(aead, cid, oid, plain, self.k, self.m, self.seg)
        failed: dict[int, StoreError] = {}
        for i, share in enumerate(shares):
            try:
                self.stores[where[i]].put_blocking(  # type: ignore[misc]
                    self.keys.object_name(oid, i), share)
            except StoreError as e:
                failed[i] = e
        return digests, failed

    async def _seal_and_put_async(self, aead, cid: chunkcodec.ChunkId, oid: bytes,
                                  plain: bytes, where: bytes
                                  ) -> tuple[list[bytes], dict[int, StoreError]]:
        """Seal, then store the shares in parallel, skipping stores known to be down."""
        try:
            shares, digests = await run_cpu(len(plain), chunkcodec.seal, aead, cid, oid,
                                            plain, self.k, self.m, self.seg)
        except BaseException:
            self.writing.discard(oid)
            raise
        failed: dict[int, StoreError] = {}

        async def put(i: int) -> None:
            si = where[i]
            if self.store_full(si):
                failed[i] = StoreFull(f"store {self.stores[si].url} is full")
                return
            if self.store_down(si):
                failed[i] = StoreError(f"store {self.stores[si].url} is unavailable")
                return
            try:
                await self.stores[si].put(self.keys.object_name(oid, i), shares[i])
            except StoreError as e:
                failed[i] = e
                self.mark_down(si, e)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(self.n):
                    nursery.start_soon(put, i)
        except BaseException:
            self.writing.discard(oid)
            raise
        return digests, failed

    def commit_chunk(self, ino: int, row: ChunkRow, missing: dict[int, str],
                     size: int | None = None) -> None:
        """Commit a written chunk version with its pending share repairs, atomically, and
        record each share that could not be stored (share -> event kind)."""
        with self.meta.transaction():
            self.meta.put_chunk(ino, row, size=size)
            now = time.time_ns()
            for i, kind in missing.items():
                self.meta.queue_repair(row.oid, i, ino, row.idx, kind, now)
        self.writing.discard(row.oid)
        for i, kind in missing.items():
            self.events.record(kind, action="queued", store=self.stores[row.placement[i]].url,
                               obj=self.keys.object_name(row.oid, i), inode=ino,
                               chunk=row.idx)

    # -- read ----------------------------------------------------------------------------
    async def read_chunk(self, ino: int, file_id: bytes, row: ChunkRow) -> bytes:
        """Fetch, verify and decrypt one chunk; heal bad shares; never return wrong bytes.

        Raises ChunkUnrecoverable when fewer than k shares are good.
        """
        good: dict[int, bytes] = {}
        bad: dict[int, str] = {}
        plain = padded = None
        if self._fast_reads:
            down = frozenset(si for si in self._down_until if self.store_down(si))
            try:
                plain, padded, errors = await self._local(row.length, self._read_local,
                                                          file_id, row, down, good, bad)
            except _NotHealthy as e:
                errors = e.args[0]  # forged or too few shares: the careful path decides
            except trio.TooSlowError:
                errors = {}  # a hung disk: the hedged path asks around it
            for si, err in errors.items():
                self.mark_down(si, err)
        if plain is None:
            good, bad = {}, {}  # fresh: an abandoned worker thread may still fill the old ones
            plain, _ = await self.gather(ino, file_id, row, good, bad, want_all=False)
        # Shares of unreachable stores are not known to be bad: scrub checks them later.
        known_bad = {i: why for i, why in bad.items() if why != UNREACHABLE}
        if known_bad:
            await self.healer.heal_later(ino, row, good, known_bad, padded)
        return plain

    async def read_span(self, file_id: bytes, row: ChunkRow, start: int, end: int
                        ) -> bytes | None:
        """Plaintext [start, end) of a chunk from only the segments that hold it.

        The segments are read from the data shares (plain slices of the ciphertext) and each
        is authenticated (AES-GCM; the whole-share checksums cannot cover a part). Returns
        None when anything is off (a store down or slow, a short or missing share, a segment
        that does not authenticate): the caller then reads the whole chunk, which finds the
        bad share by its checksum, rebuilds, records and heals.
        """
        span = chunkcodec.segment_span(start, end, row.length, self.seg)
        size = erasure.share_size(chunkcodec.sealed_length(row.length, self.seg), self.k)
        pieces = span.pieces(size)
        if any(self.store_down(row.placement[i]) for i, _, _ in pieces):
            return None
        if self._fast_ranges:
            try:
                return await self._local(end - start, self._read_span_local, file_id, row,
                                         span, pieces, end - start)
            except trio.TooSlowError:
                return None
        parts: list[bytes] = [b""] * len(pieces)

        async def one(j: int, i: int, off: int, n: int) -> None:
            with contextlib.suppress(StoreError):  # left short: the whole read sorts it out
                parts[j] = await self.stores[row.placement[i]].get_range(
                    self.keys.object_name(row.oid, i), off, n)

        with trio.move_on_after(HEDGE_DELAY):  # a slow store: the hedged path asks others
            async with trio.open_nursery() as nursery:
                for j, (i, off, n) in enumerate(pieces):
                    nursery.start_soon(one, j, i, off, n)
            ct = b"".join(parts)
            return await run_cpu(len(ct), chunkcodec.open_span, self.keys.file_aead(file_id),
                                 self._cid(file_id, row), row.oid, ct, span, end - start,
                                 row.length, self.seg)
        return None

    async def _local(self, nbytes: int, fn: Callable[..., T], *args: object) -> T:
        """Run the local-store read `fn(*args)` of about `nbytes`: inline when `_inline_now`,
        else in a worker thread (TooSlowError after FAST_PATH_TIMEOUT: a hung disk)."""
        if self._inline_now(nbytes):
            return self._inline(nbytes, fn, *args)
        with trio.fail_after(FAST_PATH_TIMEOUT):
            return await trio.to_thread.run_sync(fn, *args, limiter=_FAST_READ_LIMITER,
                                                 abandon_on_cancel=True)

    def _inline_now(self, nbytes: int) -> bool:
        """Whether local-store I/O of `nbytes` runs on the event loop: small, every store on a
        local disk, and none of it slow lately."""
        return self._inline_ok and nbytes <= INLINE_MAX and time.monotonic() >= self._inline_off

    def _inline(self, nbytes: int, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on the event loop; when it was slow (a sick disk), inline I/O is off
        for STORE_RETRY_SECONDS."""
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            took = time.monotonic() - t0
            if took > INLINE_SLOW:
                self._inline_off = time.monotonic() + STORE_RETRY_SECONDS
                log.info("%d bytes of local I/O took %.0f ms: small I/O goes to worker "
                         "threads for %.0f s", nbytes, took * 1e3, STORE_RETRY_SECONDS)

    def _cid(self, file_id: bytes, row: ChunkRow) -> chunkcodec.ChunkId:
        return chunkcodec.ChunkId(self.volume_id, file_id, row.idx, row.version)

    def _read_span_local(self, file_id: bytes, row: ChunkRow, span: chunkcodec.Span,
                         pieces: list[tuple[int, int, int]], want: int) -> bytes | None:
        """Local stores: `read_span` in one call (a worker thread, or inline when small)."""
        parts = []
        for i, off, n in pieces:
            try:
                part = self.stores[row.placement[i]].get_range_blocking(  # type: ignore[misc]
                    self.keys.object_name(row.oid, i), off, n)
            except StoreError:
                return None
            if len(part) != n:
                return None
            parts.append(part)
        return chunkcodec.open_span(self.keys.file_aead(file_id), self._cid(file_id, row),
                                    row.oid, parts[0] if len(parts) == 1 else b"".join(parts),
                                    span, want, row.length, self.seg)

    async def _fetch_one(self, row: ChunkRow, i: int, good: dict[int, bytes],
                         bad: dict[int, str]) -> None:
        """Fetch share i and sort it into good (checksum ok) or bad (why)."""
        si = row.placement[i]
        if self.store_down(si):
            bad[i] = UNREACHABLE
            return
        try:
            with trio.fail_after(READ_TIMEOUT):
                data = await self.stores[si].get(self.keys.object_name(row.oid, i))
        except NoSuchObject:
            bad[i] = MISSING
            return
        except (StoreError, trio.TooSlowError) as e:
            bad[i] = UNREACHABLE
            self.mark_down(si, e if isinstance(e, StoreError) else StoreError(
                f"store {self.stores[si].url} did not answer within {READ_TIMEOUT} s"))
            return
        if digest(data) != row.share_digest(i):
            bad[i] = CHECKSUM
            return
        good[i] = data

    async def fetch(self, row: ChunkRow, shares: Iterable[int], good: dict[int, bytes],
                    bad: dict[int, str]) -> None:
        """Fetch all the given shares in parallel (scrub wants every one)."""
        async with trio.open_nursery() as nursery:
            for i in shares:
                nursery.start_soon(self._fetch_one, row, i, good, bad)

    async def fetch_hedged(self, row: ChunkRow, candidates: list[int], good: dict[int, bytes],
                           bad: dict[int, str], need: int) -> None:
        """Fetch until `need` more shares are good, trying `candidates` in order.

        Starts `need` fetches; a failure starts the next candidate at once, and so does a
        wait longer than HEDGE_DELAY, so one slow store does not set the read latency. Fetches
        still running when enough shares are in are abandoned, and a store that kept one
        waiting longer than HEDGE_DELAY is bypassed for a while.
        """
        pending = list(candidates)
        target = len(good) + need
        started: dict[int, float] = {}
        send, recv = trio.open_memory_channel[int](len(pending))

        async def one(i: int) -> None:
            try:
                await self._fetch_one(row, i, good, bad)
            finally:
                send.send_nowait(i)

        async with trio.open_nursery() as nursery:
            def launch() -> None:
                i = pending.pop(0)
                started[i] = trio.current_time()
                nursery.start_soon(one, i)

            for _ in range(min(need, len(pending))):
                launch()
            while len(good) < target and started:
                with trio.move_on_after(HEDGE_DELAY) as waited:
                    i = await recv.receive()
                    del started[i]
                    if i in bad and pending:
                        launch()
                if waited.cancelled_caught and pending:
                    launch()
            now = trio.current_time()
            for i, t0 in started.items():
                if now - t0 >= HEDGE_DELAY:
                    si = row.placement[i]
                    self.mark_down(si, StoreError(f"store {self.stores[si].url} is slow "
                                                  f"(no answer in {HEDGE_DELAY} s)"))
            nursery.cancel_scope.cancel()

    async def gather(self, ino: int, file_id: bytes, row: ChunkRow, good: dict[int, bytes],
                     bad: dict[int, str], want_all: bool) -> tuple[bytes, list[int]]:
        """Fetch shares until k good ones authenticate (or all n with want_all) and decrypt.

        Fills `good` and `bad`; shares proven forged move from good to bad. Raises
        ChunkUnrecoverable (after recording events) when no k good shares authenticate.
        """
        order = list(range(self.n))  # data shares first: a healthy read needs no decoding
        if want_all:
            await self.fetch(row, order, good, bad)
        else:
            await self.fetch_hedged(row, order, good, bad, self.k)
        cid = self._cid(file_id, row)
        aead = self.keys.file_aead(file_id)
        while True:
            if len(good) < self.k:
                self._unrecoverable(ino, row, bad)
            try:
                plain, forged = await run_cpu(row.length, chunkcodec.open_, aead, cid, row.oid,
                                              row.length, dict(good), self.k, self.m, self.seg)
            except chunkcodec.AuthenticationFailed:
                rest = [i for i in order if i not in good and i not in bad]
                if rest:  # more shares might outvote the forged ones
                    await self.fetch(row, rest, good, bad)
                    continue
                for i in good:
                    bad[i] = AUTH
                good.clear()
                self._unrecoverable(ino, row, bad)
            for i in forged:
                bad[i] = AUTH
                good.pop(i, None)
            return plain, forged

    def _read_local(self, file_id: bytes, row: ChunkRow, down: frozenset[int],
                    good: dict[int, bytes], bad: dict[int, str]
                    ) -> tuple[bytes, memoryview, dict[int, StoreError]]:
        """Local stores: read shares in order (data shares first) until k are good, verify,
        decode, decrypt: one call per chunk (`_local`: inline or one worker-thread hop),
        healthy or degraded.

        Fills good/bad; returns the plaintext, the authenticated padded ciphertext (what a
        heal slices or re-encodes lost shares from) and the stores that failed (the caller
        marks them down on the trio thread). Raises _NotHealthy(failed stores) when fewer
        than k shares are good or they do not authenticate; the careful async path takes
        over.
        """
        errors: dict[int, StoreError] = {}
        sealed = chunkcodec.sealed_length(row.length, self.seg)
        size = erasure.share_size(sealed, self.k)
        if size >= HINT_MIN_SHARE:
            self._will_need(row, down)
        # The data shares side by side, plus one byte: each share is read with one byte of
        # slack (into the next slot, read after it) to see an extended share without fstat.
        # A share's slot is used only once it is wholly read.
        buf = memoryview(uninitialized(self.k * size + 1))
        for i in range(self.n):
            if len(good) == self.k:
                break
            si = row.placement[i]
            if si in down:
                bad[i] = UNREACHABLE
                continue
            store = self.stores[si]
            name = self.keys.object_name(row.oid, i)
            data: bytes | memoryview
            in_slot = i < self.k and store.read_into_blocking is not None
            try:
                if in_slot:
                    if store.read_into_blocking(name, buf[i * size : (i + 1) * size + 1]) \
                            != size:
                        bad[i] = CHECKSUM  # truncated or extended
                        continue
                    data = buf[i * size : (i + 1) * size]
                else:
                    data = store.get_blocking(name)  # type: ignore[misc]
            except NoSuchObject:
                bad[i] = MISSING
                continue
            except StoreError as e:
                bad[i] = UNREACHABLE
                errors[si] = e
                continue
            if digest(data) != row.share_digest(i):
                bad[i] = CHECKSUM
                continue
            if i < self.k and not in_slot:  # a store without read_into
                buf[i * size : (i + 1) * size] = data
            good[i] = data
        if len(good) < self.k:
            raise _NotHealthy(errors)
        padded = buf[: self.k * size]  # the data shares in their slots: the ciphertext
        erasure.fill_missing(good, self.k, self.m, padded)  # degraded: decode lost ones
        try:
            plain = chunkcodec.decrypt_segments(self.keys.file_aead(file_id),
                                                self._cid(file_id, row), row.oid,
                                                padded[:sealed], 0, row.length, self.seg)
        except InvalidTag:
            raise _NotHealthy(errors) from None
        return plain, padded, errors

    def announce(self, row: ChunkRow) -> None:
        """Tell local disks that a read of this chunk's data shares is coming (a small file
        just opened): they start on it while the FUSE round trips go on."""
        if self._inline_now(row.length):
            self._will_need(row, frozenset(si for si in row.placement if self.store_down(si)))

    def _will_need(self, row: ChunkRow, down: frozenset[int]) -> None:
        """Announce the k data shares of a chunk to their stores (skipping stores down)."""
        for i in range(self.k):
            si = row.placement[i]
            hint = self.stores[si].will_need_blocking
            if hint is not None and si not in down:
                hint(self.keys.object_name(row.oid, i))

    def _unrecoverable(self, ino: int, row: ChunkRow, bad: dict[int, str]) -> None:
        for i, why in sorted(bad.items()):
            self.events.record(why, action="unrecoverable",
                               store=self.stores[row.placement[i]].url,
                               obj=self.keys.object_name(row.oid, i), inode=ino,
                               chunk=row.idx, version=row.oid)
        raise ChunkUnrecoverable(f"chunk {row.idx} of inode {ino}: fewer than {self.k} good "
                                 f"shares ({len(bad)} of {self.n} bad)")

    # -- garbage and durability ----------------------------------------------------------
    async def delete_shares(self, oid: bytes, where: bytes,
                            skip: Iterable[int] = ()) -> bool:
        """Delete every share of one chunk version; False if a store refused."""
        skipped = set(skip)
        names = {si: [self.keys.object_name(oid, i)] for i, si in enumerate(where)
                 if i not in skipped}
        return not await self._delete_batches(names)

    async def _delete_batches(self, names: dict[int, list[str]]) -> set[int]:
        """Delete objects, one batch per store (store index -> names), the stores in
        parallel; the stores that refused (down, or failing now: marked down)."""
        refused: set[int] = set()

        async def delete(si: int) -> None:
            if self.store_down(si):
                refused.add(si)
                return
            try:
                await self.stores[si].delete_many(names[si])
                self._full_until.pop(si, None)  # space was freed: try writing again
            except StoreError as e:
                log.warning("%s", e)
                self.mark_down(si, e)
                refused.add(si)

        async with trio.open_nursery() as nursery:
            for si in names:
                nursery.start_soon(delete, si)
        return refused

    async def make_durable(self, *, wait_for_garbage: bool = False) -> None:
        """Make every completed write durable, then delete the shares it replaced.

        Order: stores synced -> metadata WAL fsynced -> old shares deleted. Garbage is read
        before syncing so only rows whose replacement is already durable are deleted. A
        store that is down is skipped: its shares are not counted on (quorum, repairs).
        With a nursery the deletion runs in the background: an fsync or close that replaced
        a big file returns once the new data is durable, not after a thousand unlinks.
        """
        if wait_for_garbage and self._collection is not None:
            await self._collection.wait()  # unmount: let a background pass finish first
        changes = self.meta.total_changes()
        if changes == self._durable_changes:
            return  # nothing committed since the last durable point
        garbage = self.meta.garbage()
        failures: list[StoreError] = []

        async def sync(si: int) -> None:
            if self.store_down(si):
                return
            try:
                await self.stores[si].sync()
            except StoreError as e:
                self.mark_down(si, e)
                failures.append(e)

        async with trio.open_nursery() as nursery:
            for si in range(len(self.stores)):
                nursery.start_soon(sync, si)
        available = sum(not self.store_down(si) for si in range(len(self.stores)))
        if available < self.quorum:
            raise failures[0] if failures else StoreError("too few stores are available")
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
                names.setdefault(si, []).append(self.keys.object_name(oid, i))
        refused = await self._delete_batches(names)
        self.meta.garbage_done([gid for gid, _, where in garbage
                                if not refused.intersection(where)])
        if refused:
            self._durable_changes = -1

    async def run_durability(self) -> None:
        """Daemon task: make closed-but-not-fsynced writes durable every few seconds and
        delete the shares they replaced."""
        while True:
            await trio.sleep(DURABILITY_INTERVAL)
            try:
                await self.make_durable()
            except StoreError as e:
                log.warning("periodic sync failed: %s", e)
