"""The "many small files" workload (issue 17): a dataset of N files of 1-4 KiB.

    scripts/bench --small-files [--files N] [--quick] [--repeat R] [--no-peers]

On raw disk, on fusefs (a K=3/M=2 volume over 5 store directories of the same disk) and on
the peers (passthru, gocryptfs when installed), in one run:

  ingest   N files written by one process (create, write, close each), in directories of
           1,000 like an image dataset, then a syncfs; files/s;
  find     `find ROOT` on a cold system (fresh mount, page cache dropped); entries/s;
  ls -lR   `ls -lR ROOT`, cold; entries/s;
  scrub    (fusefs only) `fusefs scrub MOUNTPOINT`, cold; chunks/s;
  mount    (fusefs only) seconds for `fusefs mount` of the filled volume to return, and the
           daemon's RSS right after it and its peak after `ls -lR`.

For fusefs, the mount serves Prometheus metrics on loopback, and the FUSE requests each
cold phase made the daemon answer are counted per operation (fusefs_fuse_request_duration_
seconds_count{op}): what the kernel sends for `find` and `ls -lR`. Every file starts with a
stamp (tag, index) that is checked on a sample after the ingest, and scrub checks the rest.

This module is separate from the main benchmark (workloads 1-7) on purpose: it has its own
systems' life cycle (one ingest, then cold phases on the filled tree) and its own report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from .config import STAMP, BenchError, KiB, log, warn
from .systems import Fusefs, FuseSystem, Gocryptfs, Passthrough, System
from .sysutil import Cache, syncfs, vm_hwm_mib

PER_DIR = 1000  # files per directory (ImageNet: ~1,300 per class)
MIN_SIZE, MAX_SIZE = 1 * KiB, 4 * KiB
FILES = 100_000  # the scale
QUICK_FILES = 300
CHECK_SAMPLE = 200  # files read back and checked after the ingest

ROWS = [  # (key, label, unit)
    ("ingest", "ingest (1 process, close each)", "files/s"),
    ("find", "find, cold", "entries/s"),
    ("ls", "ls -lR, cold", "entries/s"),
    ("scrub", "scrub, cold", "chunks/s"),
    ("mount", "mount of the filled volume", "s"),
    ("rss_mount", "daemon RSS after mount", "MiB"),
    ("rss_peak", "daemon peak RSS (after ls -lR)", "MiB"),
]
TARGETS = {"ingest": 0.3, "find": 0.3, "ls": 0.3}  # ratio to raw
ABSOLUTE = {"scrub": (">=", 5000.0), "mount": ("<", 5.0), "rss_peak": ("<", 400.0)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small-files", action="store_true",
                   help="run only the many-small-files workload (issue 17)")
    p.add_argument("--files", type=int, metavar="N",
                   help=f"small files (default {FILES:,}; --quick: {QUICK_FILES})")
    p.add_argument("--pack-below", metavar="SIZE",
                   help="init the fusefs volume with --pack-below SIZE (default: init's, "
                        "256K; 0: a share object per share, no packs)")


def sizes_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(n)]


def rel_path(i: int) -> str:
    return f"d{i // PER_DIR:04d}/f{i:07d}"


def ingest(root: str, sizes: list[int], tag: int) -> float:
    """Write every file (create, write, close), then syncfs; seconds."""
    pool = bytearray(os.urandom(MAX_SIZE))
    t0 = time.perf_counter()
    for d in range(-(-len(sizes) // PER_DIR)):
        os.mkdir(os.path.join(root, f"d{d:04d}"))
    for i, size in enumerate(sizes):
        STAMP.pack_into(pool, 0, tag, i)
        fd = os.open(os.path.join(root, rel_path(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o644)
        try:
            os.write(fd, memoryview(pool)[:size])
        finally:
            os.close(fd)
    syncfs(root)
    return time.perf_counter() - t0


def check_sample(root: str, sizes: list[int], tag: int) -> None:
    rng = random.Random(tag)
    for i in rng.sample(range(len(sizes)), min(CHECK_SAMPLE, len(sizes))):
        with open(os.path.join(root, rel_path(i)), "rb") as f:
            data = f.read()
        if len(data) != sizes[i] or STAMP.unpack_from(data) != (tag, i):
            raise BenchError(f"WRONG DATA in {rel_path(i)}: {len(data)} bytes, stamp "
                             f"{STAMP.unpack_from(data) if len(data) >= STAMP.size else None}")


def timed_lines(argv: list[str], expected: int) -> float:
    """Run a listing command; seconds. Its output lines are counted as a check."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                          timeout=3600)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace')[:300]}")
    lines = proc.stdout.count(b"\n")
    if lines < expected:
        raise BenchError(f"`{' '.join(argv)}` printed {lines} lines, expected >= {expected}")
    return took


class MetricsFusefs(Fusefs):
    """fusefs with its Prometheus endpoint on a free loopback port (per-opcode counts)."""

    def __init__(self, work: str, cmd: list[str]) -> None:
        super().__init__(work, cmd)
        self.vol = os.path.join(work, "volume-small")
        self.key = os.path.join(work, "volume-small.key")
        self.stores = [os.path.join(work, "stores-small", f"s{i}") for i in range(5)]
        self.root = self.mnt = os.path.join(work, "fusefs-small")
        self.port = 0
        self.mount_seconds: list[float] = []

    def _mount(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        t0 = time.perf_counter()
        self.cli("mount", self.vol, self.mnt, "--key-file", self.key,
                 "--metrics", f"127.0.0.1:{self.port}")
        self.mount_seconds.append(time.perf_counter() - t0)
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(Path(self.vol, "fusefs.pid").read_text().split()[0])

    def op_counts(self) -> dict[str, float]:
        """FUSE requests answered so far, by operation."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=10) as r:
                text = r.read().decode()
        except OSError as e:
            warn(f"cannot read the metrics: {e}")
            return {}
        out = {}
        for m in re.finditer(r'^fusefs_fuse_request_duration_seconds_count\{op="(\w+)"\} '
                             r"([0-9.e+]+)$", text, re.M):
            out[m.group(1)] = float(m.group(2))
        return out

    def rss_now(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, TypeError):
            return None
        return None


class SmallFiles:
    def __init__(self, a: argparse.Namespace, work: str) -> None:
        self.a = a
        self.work = work
        self.n = a.files or (QUICK_FILES if a.quick else FILES)
        self.cache = Cache(not a.no_drop_caches)
        self.samples: dict[str, dict[str, list[float]]] = {k: {} for k, _, _ in ROWS}
        self.ops: dict[str, dict[str, float]] = {}
        self.systems: list[System] = []

    def add(self, key: str, system: str, value: float | None) -> None:
        if value is not None:
            self.samples[key].setdefault(system, []).append(value)

    def make_systems(self) -> list[System]:
        fusefs = MetricsFusefs(self.work, self.a.fusefs_cmd)
        if getattr(self.a, "pack_below", None):
            fusefs.init_extra = ["--pack-below", self.a.pack_below]
        systems: list[System] = [System(self.work), fusefs]
        if not self.a.no_peers:
            systems.append(Passthrough(self.work))
            if shutil.which("gocryptfs"):
                systems.append(Gocryptfs(self.work))
        return systems

    def cold(self, system: System) -> None:
        if system.fuse:
            system.fresh()
            syncfs(system.root)
        self.cache.drop()

    def round(self, r: int) -> None:
        tag = random.getrandbits(63)
        sizes = sizes_of(self.n, tag)
        entries = self.n + -(-self.n // PER_DIR) + 1
        for system in self.make_systems():
            self.systems.append(system)
            try:
                self.one(system, sizes, tag, entries)
            finally:
                system.cleanup()
                if isinstance(system, FuseSystem):
                    shutil.rmtree(system.root, ignore_errors=True)
                for path in self.leftovers(system):
                    shutil.rmtree(path, ignore_errors=True)
                self.systems.remove(system)

    @staticmethod
    def leftovers(system: System) -> list[str]:
        out = [system.root]
        for attr in ("vol", "cipher", "source"):
            if hasattr(system, attr):
                out.append(getattr(system, attr))
        if isinstance(system, MetricsFusefs):
            out.append(os.path.dirname(system.stores[0]))
            out.append(system.key)
        return out

    def one(self, system: System, sizes: list[int], tag: int, entries: int) -> None:
        name = system.name
        log(f"small files on {name}: ingest of {len(sizes):,} files")
        system.setup()
        fusefs = system if isinstance(system, MetricsFusefs) else None
        before = fusefs.op_counts() if fusefs is not None else {}
        self.add("ingest", name, len(sizes) / ingest(system.root, sizes, tag))
        if fusefs is not None:
            self.ops["ingest"] = _delta(before, fusefs.op_counts())
        check_sample(system.root, sizes, tag)
        for key, argv in (("find", ["find", system.root]),
                          ("ls", ["ls", "-lR", system.root])):
            self.cold(system)
            if fusefs is not None:
                self.add("mount", name, fusefs.mount_seconds[-1])
                self.add("rss_mount", name, fusefs.rss_now())
            before = fusefs.op_counts() if fusefs is not None else {}
            took = timed_lines(argv, entries)
            self.add(key, name, entries / took)
            if fusefs is not None:
                self.ops[key] = _delta(before, fusefs.op_counts())
                if key == "ls":
                    self.add("rss_peak", name, vm_hwm_mib(fusefs.pid) if fusefs.pid else None)
            log(f"  {key}: {took:.2f} s")
        if fusefs is not None:
            self.cold(system)
            t0 = time.perf_counter()
            fusefs.cli("scrub", fusefs.mnt)
            took = time.perf_counter() - t0
            self.add("scrub", name, len(sizes) / took)
            log(f"  scrub: {took:.2f} s")

    def report(self) -> str:
        names = [n for n in ("raw", "fusefs", "passthru", "gocryptfs")
                 if any(n in per for per in self.samples.values())]
        med = {k: {s: statistics.median(v) for s, v in per.items()}
               for k, per in self.samples.items()}
        head = ["workload", "unit", *names, *(f"{n}/raw" for n in names if n != "raw"),
                "target"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for key, label, unit in ROWS:
            row = [label, unit]
            for n in names:
                v = med[key].get(n)
                row.append("-" if v is None else f"{v:,.2f}" if v < 100 else f"{v:,.0f}")
            raw = med[key].get("raw")
            for n in names:
                if n == "raw":
                    continue
                v = med[key].get(n)
                row.append(f"{v / raw:.2f}" if v is not None and raw else "-")
            if key in TARGETS:
                row.append(f">= {TARGETS[key]:.2f}x raw")
            elif key in ABSOLUTE:
                op, limit = ABSOLUTE[key]
                row.append(f"{op} {limit:,.0f}")
            else:
                row.append("-")
            lines.append("| " + " | ".join(row) + " |")
        for key, ops in self.ops.items():
            per = ", ".join(f"{op} {v / max(1, self.n):.2f}" for op, v in ops.items())
            lines.append(f"\nFUSE requests per file during cold {key} (fusefs): {per}")
        return "\n".join(lines)


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {op: after[op] - before.get(op, 0.0) for op in sorted(after)
            if after[op] - before.get(op, 0.0) > 0}


def run_small_files(a: argparse.Namespace, base: str) -> int:
    """The workload in a temp dir under BASE, removed afterwards; the exit status."""
    import tempfile

    work = tempfile.mkdtemp(prefix="fusefs-small-", dir=base)
    bench = SmallFiles(a, work)
    try:
        for r in range(a.repeat):
            log(f"small files: round {r + 1} of {a.repeat}, {bench.n:,} files")
            bench.round(r)
    except (BenchError, OSError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    finally:
        for system in bench.systems:
            system.cleanup()
        if not a.keep and not any(isinstance(s, FuseSystem) and s.mounted
                                  for s in bench.systems):
            shutil.rmtree(work, ignore_errors=True)
    print(f"many small files: {bench.n:,} files of {MIN_SIZE}-{MAX_SIZE} bytes, "
          f"median of {a.repeat}")
    print(bench.report())
    if a.json:
        import json

        with open(a.json, "w") as f:
            json.dump({"files": bench.n, "samples": bench.samples, "ops": bench.ops}, f,
                      indent=1)
    return 0
