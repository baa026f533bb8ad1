"""The benchmark as a command: what scripts/bench calls with its parsed arguments.

Checks the machine (/dev/fuse, fusermount3, free space where the temp dir goes), runs the
benchmark in a temp dir under --dir that is removed on any exit (unless --keep, or something
is still mounted in it: then it is left alone and said so), reports, and returns the exit
status: 0 done, 1 error, 3 a target missed with --strict, 130 interrupted, 128+N on signal N.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time

from fusefs.mounts import containing_mount

from . import FUSEFS_IMPORTABLE
from .config import REPO, SMALL_SIZE, BenchError, GiB, K, KiB, N, Sizes, log, warn
from .report import report
from .runner import Bench
from .systems import FuseSystem


def main(a: argparse.Namespace) -> int:
    """Run the benchmark as the command line asks; the exit status."""
    started = time.monotonic()
    sizes = Sizes(a.scale)
    try:
        a.fusefs_cmd = shlex.split(a.fusefs) if a.fusefs else default_fusefs_cmd()
        base = os.path.abspath(a.dir)
        fstype, source = check_machine(base, sizes)
        if getattr(a, "small_files", False):
            from .smallfiles import run_small_files

            return run_small_files(a, base)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status, bench = run(a, sizes, base, fstype, source)
    if status:
        return status
    verdicts = report(bench, a, fstype, source, time.monotonic() - started)
    if a.strict and any(v["pass"] is False for v in verdicts.values()):
        return 3
    return 0


def default_fusefs_cmd() -> list[str]:
    if FUSEFS_IMPORTABLE:
        return [sys.executable, "-m", "fusefs"]
    for candidate in (REPO / ".venv" / "bin" / "fusefs", shutil.which("fusefs")):
        if candidate and os.access(candidate, os.X_OK):
            return [str(candidate)]
    raise BenchError(f"fusefs is not importable by {sys.executable} and no fusefs command was "
                     "found: run with the project's venv python, or pass --fusefs CMD")


def check_machine(base: str, sizes: Sizes) -> tuple[str, str]:
    """BenchError when the benchmark cannot run here; else (fstype, source) of BASE's mount."""
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing (in a container: --device /dev/fuse "
                         "--cap-add SYS_ADMIN)")
    if shutil.which("fusermount3") is None:
        raise BenchError("fusermount3 is not installed (apt-get install fuse3)")
    mount = containing_mount(base)
    fstype, source = (mount.fstype, mount.source) if mount else ("?", "?")
    if fstype in ("tmpfs", "ramfs"):
        warn(f"{base} is on {fstype}: the 'raw' figures measure memory, not a disk")
    amplification = 1 + N / K
    need = int((sizes.big + sizes.n_files * (SMALL_SIZE + 4 * KiB)) * amplification * 1.2)
    st = os.statvfs(base)
    if st.f_bavail * st.f_frsize < need:
        raise BenchError(f"{base} has {st.f_bavail * st.f_frsize / GiB:.1f} GiB free, the "
                         f"benchmark needs about {need / GiB:.1f} GiB")
    return fstype, source


def run(a: argparse.Namespace, sizes: Sizes, base: str, fstype: str,
        source: str) -> tuple[int, Bench]:
    """The benchmark in a temp dir under BASE, cleaned up whatever happens; (status, bench)."""
    work = tempfile.mkdtemp(prefix="fusefs-bench-", dir=base)
    bench = Bench(a, sizes, work)
    done = False

    def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        bench.close()
        left = [sy.mnt for sy in bench.systems if isinstance(sy, FuseSystem) and sy.mounted]
        if left:
            warn(f"still mounted, not deleting {work}: {', '.join(left)}")
        elif a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)

    def on_signal(signum, _frame):
        log(f"{signal.Signals(signum).name}: cleaning up")
        raise SystemExit(128 + signum)

    status = 0
    try:
        bench.start_workers()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)
        log(f"{sizes.describe()}; median of {a.repeat}; in {work} ({source}, {fstype})")
        log(f"fusefs command: {shlex.join(a.fusefs_cmd)}")
        bench.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except (BenchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if bench.fusefs is not None:
            tail = bench.fusefs.log_tail()
            if tail:
                print(f"--- last lines of {bench.fusefs.vol}/fusefs.log\n{tail}", file=sys.stderr)
        status = 1
    finally:
        cleanup()
    return status, bench
