"""Where CPU work runs: inline for small inputs, in worker threads for large ones.

zfec and AES-GCM (cryptography >= 50) release the GIL, so two threads use two cores; below
`CPU_THRESHOLD` the thread hop (tens of microseconds) costs more than the work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trio

CPU_THRESHOLD = 128 << 10
_CPU_LIMITER = trio.CapacityLimiter(max(2, os.cpu_count() or 2))


async def run_cpu(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run CPU-bound `fn(*args)` on `size` bytes where it is cheapest."""
    if size < CPU_THRESHOLD:
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args, limiter=_CPU_LIMITER)
