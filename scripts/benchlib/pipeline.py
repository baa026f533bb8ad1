"""The pipeline benchmark (scripts/bench_pipeline): images/s of a DataLoader over JPEGs.

Columns: raw (a plain directory), "fusefs" (the volume mounted --read-only: dataset mode),
"fusefs-rw" (the same volume mounted writable: the default kernel cache, every OPEN, FLUSH and
RELEASE answered), the peers that are installed (gocryptfs; passthru, the pyfuse3 ceiling,
unless --no-peers), and "direct" (fusefs's direct read API in each worker; skipped while the
package has none, see `direct`). Rows: decode excluded / included x 1, 2, 4 workers x epoch 1
cold (page cache dropped, FUSE daemons fresh) / epoch 2 warm (right after, nothing dropped).

For each epoch it records images/s, the CPU seconds of the FUSE daemon (from /proc) and of
the loader's worker processes (their rusage), and, for fusefs, the FUSE requests by opcode
(the daemon's own metrics, served on a loopback port for the run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import direct, loader
from .config import WARNINGS, BenchError, log, warn
from .systems import Fusefs, FuseSystem, Gocryptfs, Passthrough, System, set_up
from .sysutil import Cache, syncfs

TARGETS = {  # (column, decode, workers, epoch) -> minimum column/raw ratio (issue 14)
    ("fusefs", False, 4, "cold"): 0.35,
    ("direct", False, 4, "cold"): 0.6,
    ("fusefs", False, 4, "warm"): 0.8,
}
OPS = ("lookup", "getattr", "open", "read", "flush", "release")
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (None: unknown or gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def pid_serving(mnt: str) -> int | None:
    """The process whose command line names MNT (a daemon that did not say its pid)."""
    want = os.fsencode(mnt)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if want in args:
                return int(entry)
    return None


class PipelineFusefs(Fusefs):
    """The benchmark's fusefs volume, mounted with `extra` options and metrics on loopback."""

    def __init__(self, work: str, cmd: list[str]) -> None:
        super().__init__(work, cmd)
        self.extra: list[str] = []
        self.env: dict[str, str] = {}  # for the daemon (A/B switches such as FUSEFS_NO_OPEN)

    def _mount(self) -> None:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            self.cli("mount", self.vol, self.mnt, "--key-file", self.key, *self.extra,
                     "--metrics", "127.0.0.1:0")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(Path(self.vol, "fusefs.pid").read_text().split()[0])

    def requests(self) -> dict[str, float]:
        """FUSE requests served so far by the running daemon, by opcode."""
        ports = re.findall(r"metrics on http://[^:]+:(\d+)/metrics",
                           Path(self.vol, "fusefs.log").read_text(errors="replace"))
        if not ports:
            return {}
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = dict.fromkeys(OPS, 0.0)
        for op, value in re.findall(
                r'^fusefs_fuse_requests_total\{op="(\w+)"\} ([0-9.e+]+)$', text, re.M):
            out[op] = out.get(op, 0.0) + float(value)
        return out


@dataclass
class Column:
    """One column of the table: a system and how it is mounted or read."""

    name: str
    system: System
    extra: list[str] = field(default_factory=list)  # fusefs mount options
    env: dict[str, str] = field(default_factory=dict)  # the fusefs daemon's A/B switches
    direct: bool = False


@dataclass
class Sample:
    images_s: float
    daemon_ms: float | None  # daemon CPU per image
    workers_ms: float  # worker processes' CPU per image
    main_ms: float
    requests: dict[str, float] | None  # FUSE requests per image, by opcode (fusefs)


class Pipeline:
    def __init__(self, a: argparse.Namespace, work: str) -> None:
        self.a = a
        self.work = work
        self.cache = Cache(not a.no_drop_caches)
        self.systems: list[System] = []
        self.columns: list[Column] = []
        self.samples: dict[str, dict[str, list[Sample]]] = {}
        self.use_torch = loader.torch_available() and not a.no_torch
        self.digests: list[int] = []
        self.fusefs: PipelineFusefs | None = None
        self.direct_skipped: str | None = None
        self.kib = 0.0

    # -- set-up

    def setup(self) -> None:
        a = self.a
        raw = System(self.work)
        self.fusefs = PipelineFusefs(self.work, a.fusefs_cmd)
        self.systems = [raw, self.fusefs]
        if not a.no_peers:
            self.systems.append(Passthrough(self.work))
            if shutil.which("gocryptfs"):
                self.systems.append(Gocryptfs(self.work))
            else:
                warn("gocryptfs is not installed: no gocryptfs column (apt-get install gocryptfs)")
        set_up(self.systems)
        for sy in self.systems:
            t0 = time.perf_counter()
            digests = loader.make_images(sy.root, a.files, a.classes)
            if self.digests and digests != self.digests:
                raise BenchError(f"{sy.name}: the images differ from raw's (Pillow not "
                                 "deterministic?)")
            self.digests = digests
            if sy.fuse:
                syncfs(sy.root)
            log(f"  {sy.name:9s} {a.files} images written in {time.perf_counter() - t0:.1f} s")
        syncfs(self.work)
        self.kib = loader.mean_size(raw.root, a.files, a.classes)
        for sy in self.systems:
            if sy is self.fusefs:
                self.columns.append(Column("fusefs", sy, ["--read-only"]))
                if not a.no_rw:
                    self.columns.append(Column("fusefs-rw", sy, []))
                for spec in a.variant:
                    self.columns.append(parse_variant(spec, sy))
            else:
                self.columns.append(Column(sy.name, sy))
        self.direct_skipped = direct.find()
        if self.direct_skipped is None:
            self.columns.append(Column("direct", self.fusefs, direct=True))
        else:
            warn(f"direct column skipped: {self.direct_skipped}")

    # -- running

    def configs(self) -> list[tuple[bool, int]]:
        return [(d, w) for d in self.a.decode for w in self.a.workers]

    def run(self) -> None:
        self.setup()
        for r in range(self.a.repeat):
            log(f"round {r + 1}/{self.a.repeat}")
            for col in self.columns:
                self.run_column(col, seed=r)

    def run_column(self, col: Column, seed: int) -> None:
        sy = col.system
        fs = self.fusefs
        if sy is fs and fs is not None:
            if col.direct:
                if fs.mounted:
                    fs.umount()
            else:
                fs.extra, fs.env = col.extra, col.env
        reader = direct.opener(fs.vol, fs.key, fs.mnt) if col.direct and fs else None
        ds = loader.ImageFiles(loader.image_paths(sy.root, self.a.files, self.a.classes),
                               self.digests, decode=False, open_reader=reader,
                               unbuffered=self.a.unbuffered)
        for decode, workers in self.configs():
            ds.decode = decode
            for which in ("cold", "warm"):
                if which == "cold":
                    if sy.fuse and not col.direct:
                        if sy.mounted:
                            sy.umount()
                        sy.mount()
                        syncfs(sy.root)
                    syncfs(self.work)
                    self.cache.drop()
                s = self.one_epoch(col, ds, workers, seed,
                                   scan=which == "cold" and not col.direct)
                key = f"{'decode' if decode else 'read'}/{workers}/{which}"
                self.samples.setdefault(key, {}).setdefault(col.name, []).append(s)
                cpu = f"daemon {s.daemon_ms:.3f} + " if s.daemon_ms is not None else ""
                log(f"  {col.name:9s} {key:14s} {s.images_s:8.0f} images/s  CPU ms/image: "
                    f"{cpu}workers {s.workers_ms:.3f}")

    def one_epoch(self, col: Column, ds: loader.ImageFiles, workers: int, seed: int,
                  scan: bool) -> Sample:
        """One epoch; with `scan`, the dataset is made first (the tree listed, timed with
        it), as a training run's first epoch does."""
        sy = col.system
        pid = None
        if isinstance(sy, FuseSystem) and not col.direct:
            pid = sy.pid if sy.pid is not None else pid_serving(sy.mnt)
        counting = isinstance(sy, PipelineFusefs) and not col.direct
        req0 = sy.requests() if counting else None
        cpu0 = process_cpu(pid)
        t0, main0 = time.perf_counter(), time.process_time()
        if scan:
            ds.paths, ds.digests = loader.scan(col.system.root, self.digests)
        listed, main_scan = time.perf_counter() - t0, time.process_time() - main0
        e = loader.epoch(ds, workers, seed, self.use_torch)
        cpu1 = process_cpu(pid)
        e.seconds += listed
        e.main_cpu += main_scan
        n = e.images
        reqs = None
        if counting and req0 is not None:
            req1 = sy.requests()
            reqs = {op: (req1.get(op, 0) - req0.get(op, 0)) / n for op in OPS}
        daemon = (cpu1 - cpu0) * 1e3 / n if cpu0 is not None and cpu1 is not None else None
        return Sample(n / e.seconds, daemon, e.worker_cpu * 1e3 / n, e.main_cpu * 1e3 / n,
                      reqs)

    def close(self) -> None:
        for sy in reversed(self.systems):
            sy.cleanup()

    # -- report

    def medians(self) -> dict[str, dict[str, dict]]:
        out: dict[str, dict[str, dict]] = {}
        for key, per in self.samples.items():
            for name, samples in per.items():
                med = {"images_s": statistics.median(s.images_s for s in samples),
                       "workers_ms": statistics.median(s.workers_ms for s in samples),
                       "main_ms": statistics.median(s.main_ms for s in samples)}
                daemons = [s.daemon_ms for s in samples if s.daemon_ms is not None]
                med["daemon_ms"] = statistics.median(daemons) if daemons else None
                reqs = [s.requests for s in samples if s.requests]
                med["requests"] = ({op: statistics.median(r[op] for r in reqs) for op in OPS}
                                   if reqs else None)
                out.setdefault(key, {})[name] = med
        return out

    def report(self, elapsed: float) -> list[dict]:
        a = self.a
        med = self.medians()
        names = [c.name for c in self.columns]
        how = ("torch " + _torch_version() + " DataLoader" if self.use_torch
               else "multiprocessing fork pool (torch not installed)")
        drop = "page cache dropped" if self.cache.enabled else "page cache NOT dropped"
        print(f"pipeline benchmark: {a.files} JPEGs ({self.kib:.0f} KiB mean, "
              f"{loader.IMAGE_SIZE[0]}x{loader.IMAGE_SIZE[1]}) in {a.classes} classes, "
              f"shuffled, batch {loader.BATCH}, every byte checked; {how}")
        print(f"median of {a.repeat}; epoch 1: {drop}, FUSE daemons fresh, the tree listed; "
              f"epoch 2 right after; files opened "
              f"{'with buffering=0' if a.unbuffered else 'as torchvision does (open rb)'}; "
              f"{os.cpu_count()} CPUs; {elapsed:.0f} s")
        print()
        print("images/s (ratio to raw)")
        rows = [["workload", *names]]
        for key in self.samples:
            per = med[key]
            raw = per.get("raw", {}).get("images_s")
            row = [_label(key)]
            for n in names:
                v = per.get(n, {}).get("images_s")
                row.append("-" if v is None else
                           f"{v:.0f}" + ("" if n == "raw" or not raw else f" ({v / raw:.2f})"))
            rows.append(row)
        print(_table(rows))
        print()
        print("CPU ms per image: FUSE daemon + loader workers")
        rows = [["workload", *names]]
        for key in self.samples:
            row = [_label(key)]
            for n in names:
                m = med[key].get(n)
                if m is None:
                    row.append("-")
                    continue
                d = "" if m["daemon_ms"] is None else f"{m['daemon_ms']:.2f} + "
                row.append(f"{d}{m['workers_ms']:.2f}")
            rows.append(row)
        print(_table(rows))
        fs_cols = [c.name for c in self.columns
                   if isinstance(c.system, PipelineFusefs) and not c.direct]
        print()
        print("FUSE requests per image (fusefs): " + " ".join(OPS))
        rows = [["workload", *fs_cols]]
        for key in self.samples:
            row = [_label(key)]
            for n in fs_cols:
                r = med[key].get(n, {}).get("requests")
                row.append("-" if not r else " ".join(f"{r[op]:.2f}" for op in OPS))
            rows.append(row)
        print(_table(rows))
        verdicts = []
        print()
        for (name, decode, workers, which), limit in TARGETS.items():
            key = f"{'decode' if decode else 'read'}/{workers}/{which}"
            per = med.get(key, {})
            raw, got = per.get("raw", {}).get("images_s"), per.get(name, {}).get("images_s")
            ratio = got / raw if raw and got else None
            ok = None if ratio is None else round(ratio, 2) >= limit
            verdicts.append({"column": name, "workload": key, "target": limit, "ratio": ratio,
                             "pass": ok})
            print(f"target {_label(key)}: {name}/raw >= {limit:.2f}: "
                  + ("-" if ratio is None else f"{ratio:.2f} {'ok' if ok else 'MISSED'}"))
        if self.direct_skipped:
            print(f"direct API column skipped: {self.direct_skipped}")
        for w in WARNINGS:
            print(f"warning: {w}")
        sys.stdout.flush()
        if a.json:
            doc = {"config": {"files": a.files, "classes": a.classes, "mean_kib": self.kib,
                              "workers": a.workers, "decode": a.decode, "repeat": a.repeat,
                              "torch": self.use_torch, "drop_caches": self.cache.enabled},
                   "environment": {"kernel": platform.release(), "cpus": os.cpu_count(),
                                   "python": platform.python_version()},
                   "columns": names, "medians": med,
                   "samples": {k: {n: [s.__dict__ for s in v] for n, v in per.items()}
                               for k, per in self.samples.items()},
                   "targets": verdicts, "warnings": WARNINGS, "elapsed_s": elapsed}
            Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
        return verdicts


def parse_variant(spec: str, sy: System) -> Column:
    """--variant NAME:MOUNT-OPTIONS[:VAR=VALUE,...], e.g.
    "stock:--read-only:FUSEFS_NO_OPEN=0" (options and variables separated by spaces)."""
    name, _, rest = spec.partition(":")
    opts, _, env = rest.partition(":")
    if not name or name in ("raw", "fusefs", "fusefs-rw", "direct"):
        raise BenchError(f"--variant {spec!r}: give it a name of its own")
    pairs = dict(kv.split("=", 1) for kv in env.split() if "=" in kv)
    return Column(name, sy, opts.split(), pairs)


def _torch_version() -> str:
    import torch

    return torch.__version__


def _label(key: str) -> str:
    what, workers, which = key.split("/")
    return (f"{'decode' if what == 'decode' else 'read'}, {workers} worker"
            f"{'s' if workers != '1' else ''}, epoch {'1 cold' if which == 'cold' else '2 warm'}")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
