"""Share I/O for one chunk: the steps a read or write plan asks for, and the two ways of
carrying them out.

A plan (`chunkread`, `chunkwrite`) is a generator that does no I/O itself: it yields steps
(`Fetch` shares until enough are good, `FetchRanges` of data shares, `Put` shares,
`Compute` CPU work) and is sent each step's result. So each algorithm is written once, and
how it fetches is the driver's business:

- `BlockingRun`: local disks. Steps run one after the other through the stores' blocking
  calls, the whole plan in one call, which `IoPolicy` runs inline or in one worker thread.
  It touches no shared state: store failures are collected for the caller to report.
- `AsyncRun`: any store. Shares are fetched in parallel and hedged (a store that has not
  answered within HEDGE_DELAY does not set the latency), puts go out in parallel, CPU work
  goes through `run_cpu`, and failing stores are bypassed at once (`StoreHealth`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from fusefs.codec.buffers import uninitialized
from fusefs.codec.checksum import digest
from fusefs.codec.erasure import Buffer
from fusefs.errors import NoSuchObject, StoreError
from fusefs.health import UNREACHABLE, StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import ChunkRow, PackLoc
from fusefs.workers import run_cpu

if TYPE_CHECKING:
    from fusefs.packs import PackWriter

READ_TIMEOUT = 10.0  # a share fetch slower than this counts as a store failure
HEDGE_DELAY = 1.0  # a read waits this long for a share before asking another store too
WRITE_HEDGE = 2.0  # a write that has its quorum waits this long for the other stores; the
#                    puts still running then finish in the background (their shares are
#                    queued as repairs until they do). A 1.4 MB share PUT to S3 takes
#                    0.1-0.5 s; a store that needs longer is bypassed like a slow reader

# Problems a share can have; these strings are event kinds (see events.py).
MISSING, CHECKSUM, AUTH = "missing", "checksum_mismatch", "authentication_failure"


# -- steps -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fetch:
    """Fetch `shares` in this order until `need` more of them are good (into the set)."""

    shares: ShareSet
    order: list[int]
    need: int


@dataclass(frozen=True, slots=True)
class FetchRanges:
    """Read (share, offset, length) pieces of a chunk's shares; the result is the list of
    parts, or None when any piece failed or came back short."""

    row: ChunkRow
    pieces: list[tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class Put:
    """Store share i under `oid` on store `where[i]`; the result is a `PutResult`. With
    `packs`, shares for stores that take packs are appended to their open pack instead."""

    oid: bytes
    shares: list[Buffer]
    where: bytes
    packs: PackWriter | None = None


@dataclass(frozen=True, slots=True)
class PutResult:
    failed: dict[int, StoreError]  # shares that could not be stored, and why
    pending: list[int]  # shares still being stored in the background (hedged write)
    locs: dict[int, PackLoc]  # shares appended to packs, and where

    def row_locs(self, n: int) -> tuple[PackLoc | None, ...] | None:
        """The chunk row's `locs` (None when no share went into a pack)."""
        if not self.locs:
            return None
        return tuple(self.locs.get(i) for i in range(n))


LateCallback = Callable[[bytes, int, "StoreError | None"], None]


@dataclass(frozen=True, slots=True)
class Compute:
    """CPU work of about `size` bytes: `fn(*args)`."""

    size: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]


Step = Fetch | FetchRanges | Put | Compute
Plan = Generator[Step, Any, Any]


class ShareSet:
    """What a read has learnt about one chunk's shares: the good ones (checksum matches;
    data shares sit in their slots of `buf`, side by side, which makes them the padded
    ciphertext without a join), the bad ones and why."""

    def __init__(self, lay: Layout, row: ChunkRow) -> None:
        self.lay, self.row = lay, row
        self.k = lay.k
        self.size = lay.share_size(row.length)
        # One byte more than k slots: a share read in place gets one byte of slack (into
        # the next slot, read after it) to see an extended share without an fstat. A slot
        # counts only once its share is wholly read.
        self.buf = memoryview(uninitialized(self.k * self.size + 1))
        self.good: dict[int, Buffer] = {}
        self.bad: dict[int, str] = {}

    @property
    def padded(self) -> memoryview:
        """The k data-share slots: the padded ciphertext once every one is filled."""
        return self.buf[: self.k * self.size]

    def slot(self, i: int, slack: int = 0) -> memoryview:
        return self.buf[i * self.size : (i + 1) * self.size + slack]

    def untried(self, order: list[int]) -> list[int]:
        return [i for i in order if i not in self.good and i not in self.bad]

    def take(self, i: int, data: Buffer) -> None:
        """Sort a fetched share: good when its checksum matches the record, else bad."""
        if digest(data) != self.row.share_digest(i):
            self.bad[i] = CHECKSUM
            return
        if i < self.k:
            slot = self.slot(i)
            if data is not slot:
                slot[:] = data
            data = slot
        self.good[i] = data

    def take_in_slot(self, i: int, nread: int) -> None:
        """Share i was read into its slot (with slack): `nread` bytes came."""
        if nread != self.size:
            self.bad[i] = CHECKSUM  # truncated or extended
        else:
            self.take(i, self.slot(i))

    def take_member(self, i: int, nread: int) -> None:
        """Share i was read from its pack into its slot (no slack: the next member follows
        it there): `nread` bytes came. Nothing at all: the pack ends before it (a truncated
        pack), so the share is missing."""
        if nread == 0:
            self.bad[i] = MISSING
        elif nread != self.size:
            self.bad[i] = CHECKSUM
        else:
            self.take(i, self.slot(i))

    def take_bytes(self, i: int, data: Buffer) -> None:
        """A fetched share, whole or (from a pack) possibly short."""
        if len(data) == 0 and self.row.loc(i) is not None:
            self.bad[i] = MISSING
        else:
            self.take(i, data)


def _range_of(lay: Layout, row: ChunkRow, share: int, offset: int) -> tuple[str, int]:
    """The object and offset of byte `offset` of a share (in its pack, when it is in one)."""
    name, loc = lay.where(row, share)
    return name, offset if loc is None else loc.offset + offset


# -- blocking driver ---------------------------------------------------------------------
class BlockingRun:
    """Carries out a plan with blocking store calls, one step after the other (local
    disks). Stores in `down` are not asked; stores that fail are collected in `failures`
    (store index -> error) for the caller to mark down on the event loop's thread."""

    def __init__(self, lay: Layout, down: frozenset[int]) -> None:
        self.lay = lay
        self.down = down
        self.failures: dict[int, StoreError] = {}

    def mark_failures(self, health: StoreHealth) -> None:
        """Mark the stores that failed during the run down (on the event loop's thread)."""
        for si, e in self.failures.items():
            health.mark_down(si, e)

    def drive(self, plan: Plan) -> Any:
        """Run `plan` to its end and return its result. A step's exception (a chunk that
        does not authenticate) is thrown into the plan, which may handle it."""
        step = next(plan)
        try:
            while True:
                try:
                    value = self._do(step)
                except Exception as e:  # noqa: BLE001 - the plan decides
                    step = plan.throw(e)
                else:
                    step = plan.send(value)
        except StopIteration as done:
            return done.value

    def _do(self, step: Step) -> Any:
        if isinstance(step, Fetch):
            target = len(step.shares.good) + step.need
            for i in step.order:
                if len(step.shares.good) >= target:
                    break
                self._fetch(step.shares, i)
            return None
        if isinstance(step, FetchRanges):
            return self._ranges(step)
        if isinstance(step, Put):
            return self._put(step)
        return step.fn(*step.args)

    def _fetch(self, st: ShareSet, i: int) -> None:
        si = st.row.placement[i]
        if si in self.down:
            st.bad[i] = UNREACHABLE
            return
        store = self.lay.stores[si]
        name, loc = self.lay.where(st.row, i)
        if loc is not None and (cached := self.lay.cached_member(si, loc)) is not None:
            st.take_bytes(i, cached)  # its pack was read whole (scrub)
            return
        try:
            if loc is not None:  # a member of a pack: a ranged read
                if i < st.k and store.read_into_blocking is not None and loc.length == st.size:
                    st.take_member(i, store.read_into_blocking(name, st.slot(i), loc.offset))
                else:
                    st.take_bytes(i, store.get_range_blocking(  # type: ignore[misc]
                        name, loc.offset, loc.length))
            elif i < st.k and store.read_into_blocking is not None:
                st.take_in_slot(i, store.read_into_blocking(name, st.slot(i, slack=1)))
            else:
                st.take(i, store.get_blocking(name))  # type: ignore[misc]
        except NoSuchObject:
            st.bad[i] = MISSING
        except StoreError as e:
            st.bad[i] = UNREACHABLE
            self.failures[si] = e

    def _ranges(self, step: FetchRanges) -> list[bytes] | None:
        parts = []
        for i, off, n in step.pieces:
            store = self.lay.store_of(step.row, i)
            name, at = _range_of(self.lay, step.row, i, off)
            try:
                part = store.get_range_blocking(name, at, n)  # type: ignore[misc]
            except StoreError:
                return None
            if len(part) != n:
                return None
            parts.append(part)
        return parts

    def _put(self, step: Put) -> PutResult:
        failed: dict[int, StoreError] = {}
        locs: dict[int, PackLoc] = {}
        for i, share in enumerate(step.shares):
            si = step.where[i]
            try:
                if step.packs is not None and step.packs.can_pack(si):
                    locs[i] = step.packs.append_blocking(si, share)
                else:
                    self.lay.stores[si].put_blocking(  # type: ignore[misc]
                        self.lay.name(step.oid, i), share)
            except StoreError as e:
                failed[i] = self.failures[si] = e
        return PutResult(failed, [], locs)


# -- async driver ------------------------------------------------------------------------
class AsyncRun:
    """Carries out a plan with the stores' async calls: fetches in parallel and hedged,
    puts in parallel, CPU work off the event loop when big. Stores that fail are bypassed
    at once (`health`), so concurrent requests stop waiting for them too."""

    def __init__(self, lay: Layout, health: StoreHealth, *,
                 background: trio.Nursery | None = None,
                 late: LateCallback | None = None) -> None:
        self.lay = lay
        self.health = health
        self.background = background  # where hedged puts finish; None: puts are awaited
        self.late = late  # told how a put that finished in the background ended
    async def drive(self, plan: Plan) -> Any:
        """As `BlockingRun.drive`, with the steps awaited."""
        step = next(plan)
        try:
            while True:
                try:
                    value = await self._do(step)
                except Exception as e:  # noqa: BLE001 - the plan decides
                    step = plan.throw(e)
                else:
                    step = plan.send(value)
        except StopIteration as done:
            return done.value

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Fetch):
            return await self._fetch_step(step)
        if isinstance(step, FetchRanges):
            return await self._ranges(step)
        if isinstance(step, Put):
            return await self._put(step)
        return await run_cpu(step.size, step.fn, *step.args)

    async def _fetch_step(self, step: Fetch) -> None:
        """Hedged when it needs fewer shares than it may try; else all at once (scrub)."""
        if step.need < len(step.order):
            await self._fetch_hedged(step.shares, step.order, step.need)
            return
        async with trio.open_nursery() as nursery:
            for i in step.order:
                nursery.start_soon(self._fetch, step.shares, i)

    async def _fetch(self, st: ShareSet, i: int) -> None:
        si = st.row.placement[i]
        if self.health.down(si):
            st.bad[i] = UNREACHABLE
            return
        name, loc = self.lay.where(st.row, i)
        if loc is not None and (cached := self.lay.cached_member(si, loc)) is not None:
            st.take_bytes(i, cached)  # its pack was read whole (scrub)
            return
        try:
            with trio.fail_after(READ_TIMEOUT):
                if loc is None:
                    data = await self.lay.stores[si].get(name)
                else:
                    data = await self.lay.stores[si].get_range(name, loc.offset, loc.length)
        except NoSuchObject:
            st.bad[i] = MISSING
            return
        except (StoreError, trio.TooSlowError) as e:
            st.bad[i] = UNREACHABLE
            self.health.mark_down(si, e if isinstance(e, StoreError) else StoreError(
                f"store {self.lay.stores[si].url} did not answer within {READ_TIMEOUT} s"))
            return
        st.take_bytes(i, data)

    async def _fetch_hedged(self, st: ShareSet, order: list[int], need: int) -> None:
        """Fetch until `need` more shares are good, trying `order` in turn.

        Starts `need` fetches; a failure starts the next candidate at once, and so does a
        wait longer than HEDGE_DELAY. Fetches still running when enough shares are in are
        abandoned, and a store that kept one waiting longer than HEDGE_DELAY is bypassed.
        """
        pending = list(order)
        target = len(st.good) + need
        started: dict[int, float] = {}
        send, recv = trio.open_memory_channel[int](len(pending))

        async def one(i: int) -> None:
            try:
                await self._fetch(st, i)
            finally:
                send.send_nowait(i)

        async with trio.open_nursery() as nursery:
            def launch() -> None:
                i = pending.pop(0)
                started[i] = trio.current_time()
                nursery.start_soon(one, i)

            for _ in range(min(need, len(pending))):
                launch()
            while len(st.good) < target and started:
                with trio.move_on_after(HEDGE_DELAY) as waited:
                    i = await recv.receive()
                    del started[i]
                    if i in st.bad and pending:
                        launch()
                if waited.cancelled_caught and pending:
                    launch()
            now = trio.current_time()
            for i, t0 in started.items():
                if now - t0 >= HEDGE_DELAY:
                    si = st.row.placement[i]
                    self.health.mark_down(si, StoreError(
                        f"store {self.lay.stores[si].url} is slow (no answer in "
                        f"{HEDGE_DELAY} s)"))
            nursery.cancel_scope.cancel()

    async def _ranges(self, step: FetchRanges) -> list[bytes] | None:
        parts: list[bytes | None] = [None] * len(step.pieces)

        async def one(j: int, i: int, off: int, n: int) -> None:
            name, at = _range_of(self.lay, step.row, i, off)
            with contextlib.suppress(StoreError):  # left out: the caller reads it whole
                parts[j] = await self.lay.store_of(step.row, i).get_range(name, at, n)

        with trio.move_on_after(HEDGE_DELAY):  # a slow store: the whole read asks others
            async with trio.open_nursery() as nursery:
                for j, (i, off, n) in enumerate(step.pieces):
                    nursery.start_soon(one, j, i, off, n)
            if all(p is not None and len(p) == n
                   for p, (_, _, n) in zip(parts, step.pieces, strict=True)):
                return parts  # type: ignore[return-value]
        return None

    async def _put_share(self, step: Put, i: int
                         ) -> tuple[PackLoc | None, StoreError | None]:
        """Store share i (appended to its store's pack, when packing): where in a pack it
        went (None: an object of its own), or why it could not be stored."""
        si = step.where[i]
        error = self.health.write_refusal(si)
        if error is not None:
            return None, error
        try:
            if step.packs is not None and step.packs.can_pack(si):
                return await step.packs.append(si, step.shares[i]), None
            await self.lay.stores[si].put(self.lay.name(step.oid, i), step.shares[i])
        except StoreError as e:
            self.health.mark_down(si, e)
            return None, e
        return None, None

    async def _put(self, step: Put) -> PutResult:
        """Put every share in parallel. Without a background nursery, wait for all. With
        one, return as soon as the write quorum has answered and either every put has or
        WRITE_HEDGE has passed: the puts still running go on in the background (`late`
        hears how they end) and their stores are bypassed for a while, as slow readers are.
        """
        n = len(step.shares)
        failed: dict[int, StoreError] = {}
        stored: set[int] = set()
        locs: dict[int, PackLoc] = {}
        send, recv = trio.open_memory_channel[tuple[int, StoreError | None]](n)
        returned = False

        async def put(i: int) -> None:
            loc, error = await self._put_share(step, i)
            if not returned:
                if loc is not None:
                    locs[i] = loc
                send.send_nowait((i, error))
            elif self.late is not None and (error is not None or loc is None):
                # A share appended to a pack after the row was made is not in it: its
                # queued repair stays (those bytes of the pack hold nothing).
                self.late(step.oid, i, error)

        def note(i: int, error: StoreError | None) -> None:
            if error is None:
                stored.add(i)
            else:
                failed[i] = error

        if self.background is None:
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(put, i)
        else:
            for i in range(n):
                self.background.start_soon(put, i)
        deadline = trio.current_time() + WRITE_HEDGE
        while len(stored) + len(failed) < n:
            if len(stored) >= self.lay.quorum and trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline if len(stored) >= self.lay.quorum else
                                 float("inf")):
                note(*await recv.receive())
        returned = True  # from here on, puts report to `late` (no await since the check)
        while True:
            try:
                note(*recv.receive_nowait())
            except trio.WouldBlock:
                break
        pending = [i for i in range(n) if i not in stored and i not in failed]
        for i in pending:
            si = step.where[i]
            self.health.mark_down(si, StoreError(
                f"store {self.lay.stores[si].url} is slow (a write waited {WRITE_HEDGE} s)"))
        for i in pending:
            locs.pop(i, None)
        return PutResult(failed, pending, locs)
