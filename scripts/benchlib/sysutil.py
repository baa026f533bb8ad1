"""What the benchmark asks of the machine: whether a path is mounted (through fusefs.mounts,
the project's one mount-table reader), syncing one filesystem, dropping the page cache,
running a command quietly, and watching a daemon process (alive? peak RSS?)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import tempfile
import time

from fusefs.mounts import mounted_at

from .config import BenchError, warn


def is_mounted(path: str) -> bool:
    """Something is mounted exactly at PATH (never blocks on a FUSE daemon)."""
    return mounted_at(path) is not None


_LIBC = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str) -> None:
    """Flush the filesystem holding PATH (only that one; sync(2) if syncfs is unavailable)."""
    if _LIBC is None or not hasattr(_LIBC, "syncfs"):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Cache:
    """Drops the page cache (dentries and inodes too) when allowed; warns once otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            warn("the page cache is NOT dropped (--no-drop-caches): 'cold' figures are warm")
        elif os.geteuid() != 0:
            self.enabled = False
            warn("not root: the page cache cannot be dropped, so 'cold' figures are warm "
                 "(run as root for real cold reads)")

    def drop(self) -> bool:
        if not self.enabled:
            return False
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError as exc:
            self.enabled = False
            warn(f"cannot drop the page cache ({exc}): 'cold' figures are warm")
            return False


def run_quiet(argv: list[str], timeout: float, what: str) -> str:
    """Run ARGV with output in temp files (a daemon keeping an inherited pipe would hang us)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  timeout=timeout, cwd="/")
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`{what}` did not finish in {timeout} s") from exc
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise BenchError(f"`{what}` exited {proc.returncode}: {stderr or stdout.strip()}")
    return stdout


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def vm_hwm_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
