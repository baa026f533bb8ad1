#!/usr/bin/env python3
"""What Prometheus metrics cost on the read path: a micro-benchmark (README "Metrics").

    python scripts/metrics_overhead.py [--n N]

Times, per call, with metrics off (the default: no-op hooks) and then on:
- one FUSE request through `fuse_ops.translate` (the op timer, its histogram and counter)
  around a handler that does nothing, and a read handler's byte count;
- one blocking store request (the store wrapper: timer and histogram) around a read that
  does nothing, against the bare call.
With `--mount ROUNDS` (root or a FUSE user; a temp dir under /tmp): also warm random
128 KiB reads through a real mount, metrics off and on in turn: the stores' files stay in the
page cache and the mount's cache is dropped before each read, so each read goes through
FUSE, the read path and two ranged store reads; reported as wall time and the daemon's CPU
time per read (medians over the rounds). `--tree DIR` mounts with another source tree's
fusefs for the "off" runs (e.g. an export of the commit before metrics).
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
    p.add_argument("--mount", type=int, default=0, metavar="ROUNDS")
    p.add_argument("--tree", metavar="DIR", help="fusefs source tree for the 'off' mounts")
    a = p.parse_args()
    if a.mount:
        return mounted(a.mount, a.tree)

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


def mounted(rounds: int, tree: str | None) -> int:
    import os
    import random
    import shutil
    import subprocess
    import tempfile

    here = str(Path(__file__).resolve().parent.parent)
    base = Path(tempfile.mkdtemp(prefix="fusefs-metrics-ab-", dir="/tmp"))
    mnt, vol, key = base / "mnt", base / "vol", base / "key"

    def fusefs(*args: object, env: dict[str, str] | None = None, src: str = here) -> None:
        res = subprocess.run([sys.executable, "-m", "fusefs", *map(str, args)],
                             env={**os.environ, "PYTHONPATH": src, **(env or {})},
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"fusefs {args[0]}: {res.stderr.strip()}")

    def cpu_of(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    stores = [base / f"s{i}" for i in range(5)]
    for s_ in stores:
        s_.mkdir()
    mnt.mkdir()
    size, block = 64 << 20, 128 << 10
    rng = random.Random(1)
    offsets = [rng.randrange(0, size - block) & ~4095 for _ in range(3000)]
    variants = {"off": ({}, tree or here), "on": ({"FUSEFS_METRICS": "127.0.0.1:0"}, here)}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    try:
        fusefs("init", vol, *sum((["--store", s_] for s_ in stores), []), "--data-shares", 3,
               "--parity-shares", 2, "--key-file", key)
        fusefs("mount", vol, mnt, "--key-file", key)
        (mnt / "f").write_bytes(os.urandom(size))
        fusefs("umount", mnt)
        for _ in range(rounds):
            for name, (env, src) in variants.items():
                fusefs("mount", vol, mnt, "--key-file", key, env=env, src=src)
                try:
                    fd = os.open(mnt / "f", os.O_RDONLY)
                    for off in offsets[:200]:  # warm up the stores' page cache
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.pread(fd, block, off)
                    pid = int((vol / "fusefs.pid").read_text())
                    c0, t0 = cpu_of(pid), time.perf_counter()
                    for off in offsets:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.pread(fd, block, off)
                    wall[name].append((time.perf_counter() - t0) / len(offsets))
                    cpu[name].append((cpu_of(pid) - c0) / len(offsets))
                    os.close(fd)
                finally:
                    fusefs("umount", mnt, src=src)
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    for name in variants:
        print(f"warm random 128 KiB reads, metrics {name}: wall "
              f"{statistics.median(wall[name]) * 1e6:.0f} us/read, daemon CPU "
              f"{statistics.median(cpu[name]) * 1e6:.0f} us/read ({rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
