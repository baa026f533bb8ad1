#!/usr/bin/env python3
"""A large array file on the mount used through numpy.memmap: random mini-batches of rows,
the kernel paging in only what is touched (each page fault a read from the mount, which
fetches and verifies only the 64 KiB segments it needs).

    python examples/numpy_memmap.py write /mnt/ds/features.npy --rows 1000000 --cols 256
    python examples/numpy_memmap.py read /mnt/ds/features.npy --batches 100

`write` makes a float32 .npy file block by block (memory stays small whatever its size);
its contents depend only on --seed and the shape. `read` maps it read-only, reads
--batches random batches of rows, then the whole array front to back; `--digests FILE`
writes the rows of each batch with the sha256 of its bytes, and the sha256 of the whole
array, for checking against the source (the tests do).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np

BLOCK_ROWS = 4096


def write(path: str, rows: int, cols: int, seed: int = 0) -> None:
    """A .npy file written sequentially (a plain file write: no writable mapping)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
              "fortran_order": False, "shape": (rows, cols)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, rows, BLOCK_ROWS):
            n = min(BLOCK_ROWS, rows - start)
            rng = np.random.default_rng([seed, start])
            f.write(rng.standard_normal((n, cols), dtype=np.float32).tobytes())


def read(path: str, batches: int, batch_size: int, seed: int = 0) -> dict:
    arr = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    out: dict = {"shape": list(arr.shape), "dtype": str(arr.dtype), "batches": []}
    t0 = time.perf_counter()
    for _ in range(batches):
        rows = np.sort(rng.choice(arr.shape[0], size=min(batch_size, arr.shape[0]),
                                  replace=False))
        batch = np.ascontiguousarray(arr[rows])  # the page faults happen here
        out["batches"].append([rows.tolist(), hashlib.sha256(batch.tobytes()).hexdigest()])
    took = time.perf_counter() - t0
    print(f"{batches} random batches of {batch_size} rows in {took:.2f} s")
    t0 = time.perf_counter()
    whole = hashlib.sha256()
    for start in range(0, arr.shape[0], BLOCK_ROWS):
        whole.update(np.ascontiguousarray(arr[start : start + BLOCK_ROWS]).tobytes())
    took = time.perf_counter() - t0
    print(f"whole array ({arr.nbytes / 2**20:.0f} MiB) in {took:.2f} s, "
          f"{arr.nbytes / 2**20 / took:.0f} MiB/s")
    out["sha256"] = whole.hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="make a float32 .npy file")
    w.add_argument("path")
    w.add_argument("--rows", type=int, default=100_000)
    w.add_argument("--cols", type=int, default=256)
    w.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("read", help="random batches of rows, then all of it")
    r.add_argument("path")
    r.add_argument("--batches", type=int, default=100)
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--digests", help="write the batches' rows and sha256 here")
    args = p.parse_args(argv)
    if args.command == "write":
        write(args.path, args.rows, args.cols, args.seed)
        print(f"wrote {args.path}: {args.rows} x {args.cols} float32")
        return 0
    result = read(args.path, args.batches, args.batch_size, args.seed)
    if args.digests:
        with open(args.digests, "w") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
