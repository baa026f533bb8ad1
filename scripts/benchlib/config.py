"""The benchmark's fixed parameters and what every module of it shares.

Volume geometry (K, M), I/O and file sizes, timeouts, the checkout's root; `Sizes`, the
figures that scale with FUSEFS_BENCH_SCALE; `BenchError`, and `log` (progress) and `warn`
(progress now, repeated under the table at the end) on stderr.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1e6

K, M = 3, 2
N = K + M
SEQ_BLOCK = MiB  # sequential I/O size
RAND_BLOCK = 128 * KiB  # random read size, and the distance between two stamps
SMALL_SIZE = 110 * KiB
WORKERS = 4
DEGRADED_STORE = 0
STAMP = struct.Struct("<QQ")  # (tag, block index) at the start of every 128 KiB block

CLI_TIMEOUT = 600  # seconds for one fusefs command (umount flushes everything)
MOUNT_TIMEOUT = 30  # seconds for a mount to appear
DAEMON_EXIT_TIMEOUT = 15

REPO = Path(__file__).resolve().parents[2]  # scripts/benchlib/config.py -> the checkout


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


WARNINGS: list[str] = []


def warn(msg: str) -> None:
    WARNINGS.append(msg)
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Sizes:
    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.big = max(4 * MiB, round(GiB * scale / MiB) * MiB)
        self.rand_count = max(16, min(round(2048 * scale), self.big // RAND_BLOCK))
        self.n_files = max(20, round(5000 * scale))
        self.n_dirs = min(50, self.n_files)

    def describe(self) -> str:
        return (f"scale {self.scale:g}: {self.big // MiB} MiB file, {self.rand_count} random "
                f"reads, {self.n_files} files x {SMALL_SIZE // KiB} KiB in {self.n_dirs} dirs")

    def small_paths(self, root: str) -> list[str]:
        return [os.path.join(root, f"d{i % self.n_dirs:02d}", f"img{i:05d}.bin")
                for i in range(self.n_files)]

    def as_dict(self) -> dict:
        return {"scale": self.scale, "big_file_bytes": self.big, "random_reads": self.rand_count,
                "random_read_bytes": RAND_BLOCK, "small_files": self.n_files,
                "small_file_bytes": SMALL_SIZE, "small_dirs": self.n_dirs, "workers": WORKERS}
