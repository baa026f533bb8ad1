"""The workloads: the same code for every system, and the table rows they produce.

Data are written and read with os.write/os.preadv on fixed, preallocated buffers (1 MiB
sequential, 128 KiB random) to keep the benchmark's own overhead low; every 128 KiB block (a
small file: its start) carries a STAMP (tag, block index) that is checked on every read, so
wrong data fail the run. Each function returns the seconds it took.
"""

from __future__ import annotations

import os
import random
import time

from .config import (
    RAND_BLOCK,
    SEQ_BLOCK,
    SMALL_SIZE,
    STAMP,
    WORKERS,
    BenchError,
    Sizes,
)
from .sysutil import syncfs

# (key, label, unit); every figure is an amount per second, except the RSS.
WORKLOADS = [
    ("write", "1 sequential write + fsync", "MB/s"),
    ("read", "2 sequential cold read", "MB/s"),
    ("random", "3 random 128 KiB cold reads", "MB/s"),
    ("small_write", "4 small files: write + syncfs", "files/s"),
    ("small_read", f"4 small files: cold read, {WORKERS} procs", "files/s"),
    ("walk_cold", "5 metadata walk (os.walk+stat), cold", "entries/s"),
    ("walk_warm", "5 metadata walk again, warm", "entries/s"),
    ("degraded", "6 sequential cold read, 1 store empty", "MB/s"),
    ("rss", "7 daemon peak RSS (VmHWM)", "MiB"),
]


def _write_all(fd: int, buf: memoryview) -> None:
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _pool() -> bytearray:
    return bytearray(os.urandom(SEQ_BLOCK))


def write_big(path: str, size: int, tag: int) -> float:
    """Sequential write of SIZE bytes in 1 MiB writes, then fsync; seconds, open to close."""
    buf = _pool()
    view = memoryview(buf)
    per = SEQ_BLOCK // RAND_BLOCK
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for blk in range(size // SEQ_BLOCK):
            for j in range(per):
                STAMP.pack_into(buf, j * RAND_BLOCK, tag, blk * per + j)
            _write_all(fd, view)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _check_stamps(buf: bytearray, start: int, n: int, tag: int, what: str) -> None:
    """Check every stamp that lies wholly within BUF[:N], which holds the bytes at START."""
    first = -(-start // RAND_BLOCK) * RAND_BLOCK
    for off in range(first, start + n - STAMP.size + 1, RAND_BLOCK):
        got = STAMP.unpack_from(buf, off - start)
        if got != (tag, off // RAND_BLOCK):
            raise BenchError(f"WRONG DATA read from {what} at offset {off}: stamp {got}, "
                             f"expected {(tag, off // RAND_BLOCK)}")


def read_seq(path: str, size: int, tag: int) -> float:
    """Sequential read of the whole file in 1 MiB preadv calls; seconds, open to close."""
    buf = bytearray(SEQ_BLOCK)
    bufs = [buf]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while True:
            n = os.preadv(fd, bufs, pos)
            if n == 0:
                break
            _check_stamps(buf, pos, n, tag, path)
            pos += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    if pos != size:
        raise BenchError(f"read {pos} bytes from {path}, expected {size}")
    return elapsed


def read_random(path: str, offsets: list[int], tag: int) -> float:
    """One 128 KiB preadv at each offset (queue depth 1); seconds, open to close."""
    buf = bytearray(RAND_BLOCK)
    bufs = [buf]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            n = os.preadv(fd, bufs, off)
            if n != RAND_BLOCK:
                raise BenchError(f"short read from {path} at {off}: {n} bytes")
            _check_stamps(buf, off, n, tag, path)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def write_small(root: str, sizes: Sizes, tag: int) -> float:
    """mkdir the directories, write every file (open, write, close), syncfs; seconds."""
    buf = bytearray(_pool()[:SMALL_SIZE])
    view = memoryview(buf)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    paths = sizes.small_paths(root)
    t0 = time.perf_counter()
    os.mkdir(root)
    for d in range(sizes.n_dirs):
        os.mkdir(os.path.join(root, f"d{d:02d}"))
    for i, path in enumerate(paths):
        STAMP.pack_into(buf, 0, tag, i)
        fd = os.open(path, flags, 0o644)
        try:
            _write_all(fd, view)
        finally:
            os.close(fd)
    syncfs(root)
    return time.perf_counter() - t0


def _read_files(job: tuple[list[tuple[str, int]], int]) -> int:
    """Worker process: read each file to its end (open, preadv until 0, close); bytes read."""
    files, tag = job
    buf = bytearray(SEQ_BLOCK)
    bufs = [buf]
    total = 0
    for path, index in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            pos = 0
            while True:
                n = os.preadv(fd, bufs, pos)
                if n == 0:
                    break
                if pos == 0 and (n < STAMP.size or STAMP.unpack_from(buf) != (tag, index)):
                    raise BenchError(f"WRONG DATA at the start of {path}")
                pos += n
        finally:
            os.close(fd)
        if pos != SMALL_SIZE:
            raise BenchError(f"read {pos} bytes from {path}, expected {SMALL_SIZE}")
        total += pos
    return total


def noop(_: object) -> None:
    """A task that does nothing: mapped once over the worker pool to start its processes."""
    return None


def read_small(pool, root: str, sizes: Sizes, tag: int, seed: int) -> float:
    """All files, shuffled, dealt round-robin to the 4 worker processes; seconds."""
    files = list(zip(sizes.small_paths(root), range(sizes.n_files), strict=True))
    random.Random(seed).shuffle(files)
    jobs = [(files[w::WORKERS], tag) for w in range(WORKERS)]
    t0 = time.perf_counter()
    total = sum(pool.map(_read_files, jobs, chunksize=1))
    elapsed = time.perf_counter() - t0
    if total != sizes.n_files * SMALL_SIZE:
        raise BenchError(f"read {total} bytes of small files, expected "
                         f"{sizes.n_files * SMALL_SIZE}")
    return elapsed


def walk(root: str, expected: int) -> float:
    """os.walk the tree and stat every entry below ROOT; seconds."""
    t0 = time.perf_counter()
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.stat(os.path.join(dirpath, name))
        for name in filenames:
            os.stat(os.path.join(dirpath, name))
        n += len(dirnames) + len(filenames)
    elapsed = time.perf_counter() - t0
    if n != expected:
        raise BenchError(f"walked {n} entries under {root}, expected {expected}")
    return elapsed
