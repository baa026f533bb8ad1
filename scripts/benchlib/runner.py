"""The run: which systems take part, the rounds of workloads on each, and the samples.

`Bench` sets the systems up, runs --repeat rounds of workloads 1-5 (each workload on every
system in turn, a cold phase preceded by a fresh mount, syncfs and a page-cache drop), then
the degraded read (6), the S3-backed volume's line unless --no-s3, and collects each FUSE
daemon's peak RSS (7) at the unmount. Figures go to `samples[workload key][system name]`.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import shutil

from .config import DEGRADED_STORE, MB, RAND_BLOCK, WORKERS, MiB, N, Sizes, log, warn
from .systems import Fusefs, FusefsS3, FuseSystem, Gocryptfs, Passthrough, Securefs, System, set_up
from .sysutil import Cache, syncfs
from .workloads import (
    WORKLOADS,
    noop,
    read_random,
    read_seq,
    read_small,
    walk,
    write_big,
    write_small,
)


class Bench:
    """One benchmark run in the temp dir WORK; `run()`, then `close()` whatever happened."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, work: str) -> None:
        self.args = args
        self.sizes = sizes
        self.work = work
        self.cache = Cache(not args.no_drop_caches)
        self.systems: list[System] = []
        self.fusefs: Fusefs | None = None
        self.samples: dict[str, dict[str, list[float]]] = {w[0]: {} for w in WORKLOADS}
        self.tag = random.getrandbits(63)
        self.pool = None
        self.notes: dict[str, object] = {}
        self.s3_figures: dict[str, float] | None = None  # MB/s of the S3-backed volume

    # -- helpers

    def cold(self, system: System) -> None:
        """Before a cold phase: fresh mount (unless --no-remount), sync, drop the page cache."""
        if system.fuse and not self.args.no_remount:
            system.fresh()
        self.settle(system)
        self.cache.drop()

    def settle(self, system: System) -> None:
        if system.fuse:
            syncfs(system.root)
        syncfs(self.work)

    def add(self, key: str, system: System, amount: float, seconds: float) -> float:
        figure = amount / seconds
        self.samples[key].setdefault(system.name, []).append(figure)
        return figure

    def big_path(self, system: System) -> str:
        return os.path.join(system.root, "big.bin")

    def tree_path(self, system: System) -> str:
        return os.path.join(system.root, "tree")

    # -- phases

    def repeat(self, r: int) -> None:
        s = self.sizes
        if r > 0:  # remove the previous round's data; a fresh mount lets deletions finish
            for sy in self.systems:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.big_path(sy))
                shutil.rmtree(self.tree_path(sy), ignore_errors=True)
                if sy.fuse and not self.args.no_remount:
                    sy.fresh()
                self.settle(sy)
        mb = s.big / MB
        for sy in self.systems:
            self.settle(sy)
            f = self.add("write", sy, mb, write_big(self.big_path(sy), s.big, self.tag))
            log(f"  {sy.name:9s} sequential write      {f:10.1f} MB/s")
        for sy in self.systems:
            self.cold(sy)
            f = self.add("read", sy, mb, read_seq(self.big_path(sy), s.big, self.tag))
            log(f"  {sy.name:9s} sequential cold read  {f:10.1f} MB/s")
        blocks = s.big // RAND_BLOCK
        offsets = [b * RAND_BLOCK for b in random.Random(r).sample(range(blocks), s.rand_count)]
        for sy in self.systems:
            self.cold(sy)
            secs = read_random(self.big_path(sy), offsets, self.tag)
            f = self.add("random", sy, s.rand_count * RAND_BLOCK / MB, secs)
            log(f"  {sy.name:9s} random 128 KiB reads  {f:10.1f} MB/s")
        for sy in self.systems:
            self.settle(sy)
            secs = write_small(self.tree_path(sy), s, self.tag)
            f = self.add("small_write", sy, s.n_files, secs)
            log(f"  {sy.name:9s} small files write     {f:10.1f} files/s")
        for sy in self.systems:
            self.cold(sy)
            secs = read_small(self.pool, self.tree_path(sy), s, self.tag, seed=r)
            f = self.add("small_read", sy, s.n_files, secs)
            log(f"  {sy.name:9s} small files cold read {f:10.1f} files/s")
        entries = s.n_files + s.n_dirs
        for sy in self.systems:
            self.cold(sy)
            f = self.add("walk_cold", sy, entries, walk(self.tree_path(sy), entries))
            log(f"  {sy.name:9s} metadata walk, cold   {f:10.1f} entries/s")
            f = self.add("walk_warm", sy, entries, walk(self.tree_path(sy), entries))
            log(f"  {sy.name:9s} metadata walk, warm   {f:10.1f} entries/s")

    def degraded(self) -> None:
        fs = self.fusefs
        assert fs is not None
        mb = self.sizes.big / MB
        deleted = []
        for r in range(self.args.repeat):
            fs.umount()
            deleted.append(fs.empty_store(DEGRADED_STORE))
            fs.mount()
            self.settle(fs)
            self.cache.drop()
            f = self.add("degraded", fs, mb, read_seq(self.big_path(fs), self.sizes.big,
                                                      self.tag))
            log(f"  fusefs    degraded cold read (store s{DEGRADED_STORE} emptied, "
                f"{deleted[-1]} objects deleted; round {r + 1}) {f:10.1f} MB/s")
        self.notes["degraded_objects_deleted"] = deleted

    def s3_phase(self) -> None:
        """Sequential write and cold read on a volume with 3 of 5 stores in S3 buckets over
        loopback, at a size a Python S3 server handles (at most 128 MiB)."""
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
        except ImportError as exc:
            warn(f"S3 line skipped: {exc} (pip install 'moto[server]' boto3)")
            return
        size = min(self.sizes.big, 128 * MiB)
        s3 = FusefsS3(self.work, self.args.fusefs_cmd)
        self.systems.append(s3)
        log(f"S3-backed volume: {FusefsS3.S3_STORES} of {N} stores on a moto server, "
            f"{size // MiB} MiB")
        s3.setup()
        path = self.big_path(s3)
        secs = write_big(path, size, self.tag)
        self.s3_figures = {"write": size / MB / secs}
        self.cold(s3)
        self.s3_figures["read"] = size / MB / read_seq(path, size, self.tag)
        log(f"  fusefs-s3 write {self.s3_figures['write']:.1f} MB/s, cold read "
            f"{self.s3_figures['read']:.1f} MB/s")
        self.notes["s3"] = {"size": size, **self.s3_figures}  # run() unmounts it with the rest

    def start_workers(self) -> None:
        """Fork the worker processes first, before anything is mounted or any signal handled."""
        self.pool = multiprocessing.get_context("fork").Pool(WORKERS)
        self.pool.map(noop, range(WORKERS))

    def run(self) -> None:
        a = self.args
        self.systems.append(System(self.work))
        self.fusefs = Fusefs(self.work, a.fusefs_cmd)
        self.systems.append(self.fusefs)
        if not a.no_peers:
            self.systems.append(Passthrough(self.work))  # next to fusefs in the table
            if shutil.which("gocryptfs"):
                self.systems.append(Gocryptfs(self.work))
            if shutil.which("securefs"):
                self.systems.append(Securefs(self.work))
        set_up(self.systems)
        for r in range(a.repeat):
            log(f"round {r + 1}/{a.repeat}")
            self.repeat(r)
        log("degraded read: unmount, empty a store, mount, read")
        self.degraded()
        if not a.no_s3:
            self.s3_phase()
        self.fusefs.record_rss()
        for sy in self.systems:
            if sy.fuse:
                sy.umount()
        for sy in self.systems:
            if isinstance(sy, FuseSystem) and sy.peak_rss:
                self.samples["rss"][sy.name] = [max(sy.peak_rss)]
                self.notes[f"{sy.name}_vmhwm_mib_per_daemon"] = sy.peak_rss

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        for sy in reversed(self.systems):
            sy.cleanup()

