#!/usr/bin/env python3
"""What Prometheus metrics cost on the read path: a micro-benchmark (README "Metrics").

    python scripts/metrics_overhead.py [--n N]

Times, per call, with metrics off (the default: no-op hooks) and then on:
- one FUSE request through `fuse_ops.translate` (the op timer, its histogram and counter)
  around a handler that does nothing, and a read handler's byte count;
- one blocking store request (the store wrapper: timer and histogram) around a read that
  does nothing, against the bare call.
The end-to-end figure comes from `scripts/bench` with and without FUSEFS_METRICS set.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusefs import metrics  # noqa: E402
from fusefs.fuse_ops import translate  # noqa: E402


def per_call(fn, n: int, rounds: int = 5) -> float:
    """Median over rounds of the seconds per call of fn() (n calls a round)."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def fuse_request(n: int) -> float:
    @translate
    async def read(fh, off, size):
        metrics.bytes_read(size)
        return b""

    def once() -> None:
        coro = read(1, 0, 131072)
        with contextlib.suppress(StopIteration):
            coro.send(None)

    return per_call(once, n)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    a = p.parse_args()

    def noop(_name: str) -> None:
        return None

    class Store:  # a store whose blocking read does nothing: the wrapper's cost alone
        url = "file:///nowhere"
        get_blocking = staticmethod(noop)

        async def get(self, name: str) -> None:
            return None

    store = Store()
    for attr in ("get_range", "put", "delete", "delete_many", "list", "sync"):
        setattr(store, attr, store.get)
    fuse_off = fuse_request(a.n)
    store_off = per_call(lambda: store.get_blocking("x"), a.n)
    metrics.enable()
    metrics.instrument_stores([store])
    fuse_on = fuse_request(a.n)
    store_on = per_call(lambda: store.get_blocking("x"), a.n)
    print(f"FUSE request (translate wrapper + byte count), per request: off "
          f"{fuse_off * 1e6:.2f} us, on {fuse_on * 1e6:.2f} us "
          f"(+{(fuse_on - fuse_off) * 1e6:.2f} us)")
    print(f"store request (wrapper around a no-op read), per request: off "
          f"{store_off * 1e6:.2f} us, on {store_on * 1e6:.2f} us "
          f"(+{(store_on - store_off) * 1e6:.2f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
