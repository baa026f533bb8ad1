"""Reading chunks: fetch until K good shares, verify, rebuild, decrypt, report the damage.

The algorithm exists once, as two plans (see `shareio`): `_whole` for a whole chunk (healthy,
degraded or forged: the same steps) and `_span` for the few segments a small random read
needs. `ChunkReader` picks how to carry a plan out: in one blocking call when every store
is a local disk (inline or one worker-thread hop, `IoPolicy`), else, or when that call
hangs, with async fetches hedged across stores. Healing is not done here: a read returns
what it found (`ChunkRead`), and the volume hands the damage to the healer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from fusefs import metrics
from fusefs.codec import chunk as chunkcodec
from fusefs.codec.erasure import Buffer
from fusefs.errors import ChunkReplaced, ChunkUnrecoverable
from fusefs.events import EventLog
from fusefs.health import UNREACHABLE, StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.shareio import (
    AUTH,
    AsyncRun,
    BlockingRun,
    Compute,
    Fetch,
    FetchRanges,
    Plan,
    ShareSet,
)
from fusefs.workers import IoPolicy

_HUNG = object()  # a blocking read that did not return in time
HINT_MIN_SHARE = 256 << 10  # shares this big are announced to the kernel right before a
#                             read (the disk works on them together); for small ones that only
#                             costs syscalls (a small file is announced at open: `announce`)


@dataclass
class ChunkRead:
    """The outcome of reading one chunk: its plaintext and what was learnt on the way."""

    plain: bytes | bytearray
    good: dict[int, Buffer]  # share -> bytes whose checksum matched (and authenticated)
    bad: dict[int, str]  # share -> problem (an event kind)
    padded: memoryview | None  # the authenticated padded ciphertext, when at hand

    def damage(self) -> dict[int, str]:
        """Shares known to be bad. Shares of unreachable stores are not known to be bad:
        scrub checks them later."""
        return {i: why for i, why in self.bad.items() if why != UNREACHABLE}


def _whole(lay: Layout, file_id: bytes, st: ShareSet, every_share: bool) -> Plan:
    """Fetch until k good shares (all n with `every_share`), rebuild and decrypt; when the
    good shares do not authenticate, fetch the rest and let any k of them outvote the
    forged ones. Returns (plaintext, padded ciphertext or None), or None: unrecoverable."""
    row = st.row
    order = list(range(lay.n))  # data shares first: a healthy read needs no decoding
    yield Fetch(st, order, lay.n if every_share else lay.k)
    while len(st.good) >= lay.k:
        try:
            plain, padded, forged = yield Compute(row.length, _open_whole, (
                lay, file_id, row, dict(st.good), st.padded))
        except chunkcodec.AuthenticationFailed:
            rest = st.untried(order)
            if rest:  # more shares might outvote the forged ones
                yield Fetch(st, rest, len(rest))
                continue
            for i in st.good:
                st.bad[i] = AUTH
            st.good.clear()
            return None
        for i in forged:
            st.bad[i] = AUTH
            st.good.pop(i, None)
        return plain, padded
    return None


def _span(lay: Layout, file_id: bytes, row: ChunkRow, span: chunkcodec.Span,
          pieces: list[tuple[int, int, int]], want: int) -> Plan:
    """The segments of a span from the data shares, each authenticated; None on any doubt."""
    parts = yield FetchRanges(row, pieces)
    if parts is None:
        return None
    ct = parts[0] if len(parts) == 1 else b"".join(parts)
    return (yield Compute(len(ct), _open_span, (lay, file_id, row, ct, span, want)))


def _open_whole(lay: Layout, file_id: bytes, row: ChunkRow, good: dict[int, Buffer],
                padded: memoryview) -> tuple[bytearray, memoryview | None, list[int]]:
    aead, nonce_id = lay.cipher(file_id, row.oid)
    return chunkcodec.open_in_place(aead, lay.cid(file_id, row), nonce_id, row.length, good,
                                    padded, lay.k, lay.m, lay.seg)


def _open_span(lay: Layout, file_id: bytes, row: ChunkRow, ct: bytes, span: chunkcodec.Span,
               want: int) -> bytes | None:
    aead, nonce_id = lay.cipher(file_id, row.oid)  # here: a new chunk key is HKDF work
    return chunkcodec.open_span(aead, lay.cid(file_id, row), nonce_id, ct, span, want,
                                row.length, lay.seg)


class ChunkReader:
    def __init__(self, lay: Layout, health: StoreHealth, policy: IoPolicy,
                 events: EventLog, meta: MetaRepo | None = None,
                 current: Callable[[int, ChunkRow], bool] | None = None) -> None:
        """`current` (a reader beside a writing mount: the direct API) tells whether a chunk
        version is still the file's: before an unreadable chunk is reported, a version that
        a rewrite replaced (its shares deleted) raises ChunkReplaced instead, no event."""
        self.lay = lay
        self.health = health
        self.policy = policy
        self.events = events
        self.meta = meta  # where chunks found unrecoverable are noted (status: at risk)
        self.current = current
        self._unreadable = meta.unreadable_oids() if meta is not None else set()

    async def read(self, ino: int, file_id: bytes, row: ChunkRow, *,
                   every_share: bool = False, quiet: bool = False) -> ChunkRead:
        """Fetch, verify and decrypt one chunk; never return wrong bytes.

        `every_share` fetches and checks all n shares (scrub). Raises ChunkUnrecoverable,
        after recording an event per bad share (unless `quiet`: a check, not a read), when
        fewer than k shares are good.
        """
        st = ShareSet(self.lay, row)
        if self.policy.reads:
            result = await self._read_blocking(file_id, st, every_share)
            if result is _HUNG:
                st = ShareSet(self.lay, row)  # fresh: the abandoned thread may still fill it
                result = await self._read_async(file_id, st, every_share)
        else:
            result = await self._read_async(file_id, st, every_share)
        return self._outcome(ino, st, result, every_share, quiet)

    def read_now(self, ino: int, file_id: bytes, row: ChunkRow) -> ChunkRead:
        """`read`, carried out in the calling thread with the stores' blocking calls (every
        store must offer them: `policy.reads`). For a process that reads outside any event
        loop (the direct API in a loader worker), where starting one per chunk would cost
        more than reading a small file. No timeout: nothing else waits on this thread."""
        st = ShareSet(self.lay, row)
        run = self._blocking_run(st)
        try:
            result = run.drive(_whole(self.lay, file_id, st, False))
        finally:
            run.mark_failures(self.health)
        return self._outcome(ino, st, result, False, False)

    def _blocking_run(self, st: ShareSet) -> BlockingRun:
        """A blocking driver around the stores marked down, big shares announced first."""
        run = BlockingRun(self.lay, self.health.down_now())
        if st.size >= HINT_MIN_SHARE:
            self._will_need(st.row, run.down)
        return run


    def _outcome(self, ino: int, st: ShareSet, result: object, every_share: bool,
                 quiet: bool) -> ChunkRead:
        row = st.row
        if result is None:
            self._unrecoverable(ino, row, st.bad, quiet)
        if st.bad and not every_share:
            metrics.degraded_read()
        if row.oid in self._unreadable and self.meta is not None:
            self._unreadable.discard(row.oid)  # whole again, whatever made it so
            self.meta.clear_unreadable(row.oid)
        plain, padded = result  # type: ignore[misc]
        return ChunkRead(plain, st.good, st.bad, padded)

    async def _read_blocking(self, file_id: bytes, st: ShareSet, every_share: bool
                             ) -> object:
        """The whole-chunk plan in one blocking call; _HUNG when the disk did not answer."""
        run = self._blocking_run(st)
        try:
            return await self.policy.read(st.row.length, run.drive,
                                          _whole(self.lay, file_id, st, every_share))
        except trio.TooSlowError:
            return _HUNG  # a hung disk: the hedged path asks around it
        finally:
            run.mark_failures(self.health)

    async def _read_async(self, file_id: bytes, st: ShareSet, every_share: bool) -> object:
        return await AsyncRun(self.lay, self.health).drive(
            _whole(self.lay, file_id, st, every_share))

    async def read_span(self, file_id: bytes, row: ChunkRow, start: int, end: int
                        ) -> bytes | None:
        """Plaintext [start, end) of a chunk from only the segments that hold it.

        Each segment is authenticated (AES-GCM; the whole-share checksums cannot cover a
        part). Returns None when anything is off (a store down or slow, a short or missing
        share, a segment that does not authenticate): the caller then reads the whole chunk,
        which finds the bad share by its checksum, rebuilds, records and heals.
        """
        plan = self._span_plan(file_id, row, start, end)
        if plan is None:
            return None
        if self.policy.ranges:
            try:
                return await self.policy.read(end - start, BlockingRun(
                    self.lay, frozenset()).drive, plan)
            except trio.TooSlowError:
                return None
        return await AsyncRun(self.lay, self.health).drive(plan)

    def read_span_now(self, file_id: bytes, row: ChunkRow, start: int, end: int
                      ) -> bytes | None:
        """`read_span` in the calling thread (`read_now`'s counterpart; `policy.ranges`)."""
        plan = self._span_plan(file_id, row, start, end)
        return None if plan is None else BlockingRun(self.lay, frozenset()).drive(plan)

    def _span_plan(self, file_id: bytes, row: ChunkRow, start: int, end: int) -> Plan | None:
        """The plan of a ranged read, or None when a store it needs is bypassed."""
        span = chunkcodec.segment_span(start, end, row.length, self.lay.seg)
        pieces = span.pieces(self.lay.share_size(row.length))
        if any(self.health.down(row.placement[i]) for i, _, _ in pieces):
            return None
        return _span(self.lay, file_id, row, span, pieces, end - start)

    def announce(self, row: ChunkRow) -> None:
        """Tell local disks that a read of this chunk's data shares is coming (a small file
        just opened): they start on it while the FUSE round trips go on."""
        if self.policy.inline_now(row.length):
            self._will_need(row, self.health.down_now())

    def _will_need(self, row: ChunkRow, down: frozenset[int]) -> None:
        """Announce the k data shares of a chunk to their stores (skipping stores down)."""
        for i in range(self.lay.k):
            si = row.placement[i]
            hint = self.lay.stores[si].will_need_blocking
            if hint is not None and si not in down:
                name, loc = self.lay.where(row, i)
                if loc is None:
                    hint(name)
                else:
                    hint(name, loc.offset, loc.length)

    def _unrecoverable(self, ino: int, row: ChunkRow, bad: dict[int, str],
                       quiet: bool = False) -> None:
        if self.current is not None and not self.current(ino, row):
            raise ChunkReplaced(f"chunk {row.idx} of inode {ino} was rewritten while it was "
                                "read (its old shares are gone)")
        if not quiet:
            metrics.unrecoverable_chunk()
        if not quiet and self.meta is not None:
            self._unreadable.add(row.oid)
            self.meta.mark_unreadable(row.oid, ino, row.idx, time.time_ns())
        for i, why in sorted(bad.items()) if not quiet else ():
            self.events.record(why, action="unrecoverable", store=self.lay.url_of(row, i),
                               obj=self.lay.obj(row, i), inode=ino, chunk=row.idx,
                               version=row.oid)
        raise ChunkUnrecoverable(f"chunk {row.idx} of inode {ino}: fewer than {self.lay.k} "
                                 f"good shares ({len(bad)} of {self.lay.n} bad)")
