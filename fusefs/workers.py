"""Where work runs: on the event loop when it is small, in worker threads when it is big.

Two decisions live here and nowhere else:
- CPU work (`run_cpu`): zfec/ISA-L and AES-GCM (cryptography >= 50) release the GIL, so two
  threads use two cores; below `CPU_THRESHOLD` the thread hop (tens of microseconds) costs
  more than the work.
- Blocking local-disk I/O (`IoPolicy`): a whole chunk read or written in one call, inline
  when small and every store sits on a local disk, else in one worker-thread hop that can be
  abandoned when the disk hangs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from fusefs.stores.base import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

CPU_THRESHOLD = 128 << 10
_CPU_LIMITER = trio.CapacityLimiter(max(2, os.cpu_count() or 2))

INLINE_MAX = 256 << 10  # local-disk I/O this small (a ranged read, a small chunk read or
#                         written) runs on the event loop: the two thread switches cost more
#                         (~40% of a cold 128 KiB random read on a 2-core machine, measured)
INLINE_SLOW = 0.05  # seconds: inline I/O this slow (a sick disk) sends small I/O back to
#                     worker threads, whose reads can time out, for INLINE_BACKOFF
INLINE_BACKOFF = 15.0  # seconds small I/O stays in worker threads after a slow inline call
FAST_PATH_TIMEOUT = 2.0  # a blocking local read gives up, and the async path takes over


async def run_cpu(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run CPU-bound `fn(*args)` on `size` bytes where it is cheapest."""
    if size < CPU_THRESHOLD:
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args, limiter=_CPU_LIMITER)


class IoPolicy:
    """Whether the stores offer blocking calls, and where those calls run.

    A store on a local disk offers plain blocking functions (`Store.get_blocking` & co.), so
    a whole chunk is read, verified and decrypted in one call instead of one await per share.
    That call runs inline on the event loop when it is at most INLINE_MAX bytes and every
    store is on a local disk (not NFS or FUSE, which can hang), else in a worker thread.
    """

    def __init__(self, stores: list[Store], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.clock = clock
        self.reads = all(s.get_blocking is not None for s in stores)
        self.ranges = all(s.get_range_blocking is not None for s in stores)
        self.writes = all(s.put_blocking is not None for s in stores)
        self._inline_ok = self.reads and self.ranges and all(s.inline_io for s in stores)
        self._inline_off = 0.0  # clock time until which inline I/O is off
        self._read_limiter = trio.CapacityLimiter(8)  # whole-chunk reads from local stores
        self._write_limiter = trio.CapacityLimiter(4)  # whole-chunk seal + local writes

    def inline_now(self, nbytes: int) -> bool:
        """Whether local-store I/O of `nbytes` runs on the event loop: small, every store on
        a local disk, and none of it slow lately."""
        return self._inline_ok and nbytes <= INLINE_MAX and self.clock() >= self._inline_off

    def inline(self, nbytes: int, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on the event loop; when it was slow (a sick disk), inline I/O is off
        for INLINE_BACKOFF."""
        t0 = self.clock()
        try:
            return fn(*args)
        finally:
            took = self.clock() - t0
            if took > INLINE_SLOW:
                self._inline_off = self.clock() + INLINE_BACKOFF
                log.info("%d bytes of local I/O took %.0f ms: small I/O goes to worker "
                         "threads for %.0f s", nbytes, took * 1e3, INLINE_BACKOFF)

    async def read(self, nbytes: int, fn: Callable[..., T], *args: object) -> T:
        """Run the blocking local read `fn(*args)` of about `nbytes`: inline when small,
        else in a worker thread that is abandoned after FAST_PATH_TIMEOUT (TooSlowError: a
        hung disk; reads have no side effects the caller depends on)."""
        if self.inline_now(nbytes):
            return self.inline(nbytes, fn, *args)
        with trio.fail_after(FAST_PATH_TIMEOUT):
            return await trio.to_thread.run_sync(fn, *args, limiter=self._read_limiter,
                                                 abandon_on_cancel=True)

    async def write(self, nbytes: int, fn: Callable[..., T], *args: object) -> T:
        """Run the blocking local write `fn(*args)`: inline when small, else in a worker
        thread that is waited for (a write must not be left half-done behind our back)."""
        if self.inline_now(nbytes):
            return self.inline(nbytes, fn, *args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._write_limiter)
