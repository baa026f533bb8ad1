"""The daemon's life as a container sidecar: signals, health, dead mountpoints, metrics.

- `fusefs mount --foreground` may run as PID 1, which the kernel sends no signal it has no
  handler for: `terminate_on_sigterm` installs one for SIGTERM until the serving loop's own
  receiver (`mount._stop_on_signal`) takes over. The first SIGTERM/SIGINT stops serving;
  the daemon then flushes, makes everything durable, unmounts and exits 0. A second one
  (`force_exit`) detaches the mount at once (lazy unmount) and exits 1 without waiting.
- `health`: whether a mountpoint is a fusefs mount whose daemon answers (a statfs goes to
  the daemon every time, the kernel caches no answer), within a timeout.
- `clean_dead_mount`: a fusefs mount whose daemon was killed (kill -9, OOM, a container
  killed) stays in the mount table, and every access fails with "Transport endpoint is not
  connected" until it is unmounted; the next `mount` on that mountpoint detaches it and
  says so.
- `start_metrics`: the Prometheus endpoint with the volume's gauges.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from fusefs import metrics
from fusefs.errors import FusefsError
from fusefs.mounts import FSTYPE, mounted_at
from fusefs.volumedir import VolumeDir

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 5.0  # seconds a mount has to answer a health check
MNT_DETACH = 2


# -- signals -----------------------------------------------------------------------------
def terminate_on_sigterm() -> None:
    """Until the serving loop listens for signals itself: SIGTERM stops the process as
    SIGINT does (PID 1 in a container would otherwise ignore it)."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def force_exit(mountpoint: Path, signum: int) -> None:
    """A second SIGTERM/SIGINT while shutting down: detach the mount now and exit 1."""
    log.warning("signal %d again: detaching %s (lazy unmount) and exiting without waiting "
                "for the flush; what was not yet durable is recovered at the next mount",
                signum, mountpoint)
    problem = lazy_unmount(mountpoint)
    if problem:
        log.error("lazy unmount of %s failed: %s", mountpoint, problem)
    logging.shutdown()
    os._exit(1)


def lazy_unmount(mountpoint: str | os.PathLike) -> str | None:
    """Detach a mount now (MNT_DETACH: processes using it keep their references); None on
    success, else why not. As root with umount2(2), which touches nothing under the
    mountpoint (a stat there could wait for a daemon that no longer serves), else with
    `fusermount3 -uz`."""
    path = os.fspath(mountpoint)
    if os.geteuid() == 0:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.umount2(os.fsencode(path), MNT_DETACH) == 0:
            return None
        err = ctypes.get_errno()
        if err != errno.EPERM:  # in a user namespace: fusermount3 may still do it
            return os.strerror(err)
    try:
        res = subprocess.run(["fusermount3", "-uz", path], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}")


# -- health ------------------------------------------------------------------------------
def _statfs_within(path: str, timeout: float) -> OSError | None | bool:
    """statvfs(path) in a thread: None when it answered, the OSError when it failed, False
    when it did not answer within `timeout` (the thread is left behind: a daemon thread,
    and a request to a FUSE daemon ends when the process does)."""
    outcome: list[OSError | None] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    t = threading.Thread(target=probe, name="statfs-probe", daemon=True)
    t.start()
    t.join(timeout)
    return outcome[0] if outcome else False


def health(mountpoint: str, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None when MOUNTPOINT is a fusefs mount that answers within `timeout`, else why not."""
    path = os.path.abspath(mountpoint)
    entry = mounted_at(path)
    if entry is None or entry.fstype != FSTYPE:
        return f"{path} is not a mounted fusefs volume"
    got = _statfs_within(path, timeout)
    if got is False:
        return f"{path} does not answer (no reply within {timeout:g} s)"
    if isinstance(got, OSError):
        if got.errno in DEAD:
            return f"{path} is a dead mount: its daemon is gone"
        return f"{path}: {got.strerror}"
    return None


# -- dead mountpoints --------------------------------------------------------------------
# What a request to a mount whose daemon is gone fails with: ENOTCONN once the connection
# is aborted, ECONNABORTED for one sent while it was being aborted (a killed daemon's
# threads exit one by one; the device closes with the last).
DEAD = (errno.ENOTCONN, errno.ECONNABORTED)

def clean_dead_mount(mountpoint: str, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """Detach a fusefs mount on MOUNTPOINT whose daemon is gone; return the line logged
    (None when there was nothing to clean). A mount whose daemon is alive, or that is not
    fusefs's, is left alone (`mount` then refuses the busy mountpoint)."""
    path = os.path.abspath(mountpoint)
    entry = mounted_at(path)
    if entry is None or entry.fstype != FSTYPE:
        return None
    got = _statfs_within(path, timeout)
    if not isinstance(got, OSError) or got.errno not in DEAD:
        return None
    problem = lazy_unmount(path)
    if problem:
        line = (f"mountpoint {path} holds a dead fusefs mount (volume {entry.source}, its "
                f"daemon is gone) and unmounting it failed: {problem}")
        log.error("%s", line)
        return line
    line = (f"mountpoint {path} held a dead fusefs mount (volume {entry.source}; its daemon "
            "was killed): unmounted it")
    log.warning("%s", line)
    return line


def note_in_volume_log(vd: VolumeDir, line: str) -> None:
    """Append a warning line to VOLUME/fusefs.log from a process that does not log there
    (the `mount` command before it starts the daemon)."""
    from fusefs.volumedir import create_private

    handler = logging.FileHandler(vd.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    try:
        os.close(create_private(vd.log))
        handler.emit(logging.LogRecord(log.name, logging.WARNING, __file__, 0, line, None,
                                       None))
    except OSError:
        pass
    finally:
        handler.close()


# -- metrics -----------------------------------------------------------------------------
@contextlib.contextmanager
def metrics_served(address: str | None, vd: VolumeDir,
                   ready: Callable[[str | None], None]) -> Iterator[None]:
    """Serve /metrics (when `address` is set) while the body runs; a wrong or taken
    address is reported through `ready` and raised as ConfigError."""
    try:
        exporter = start_metrics(address, vd)
    except FusefsError as e:
        ready(str(e))
        raise
    try:
        yield
    finally:
        if exporter is not None:
            exporter.stop()


def start_metrics(address: str | None, vd: VolumeDir) -> metrics.Exporter | None:
    """Serve /metrics on ADDR:PORT (None: metrics stay off) with the volume's gauges."""
    exporter = metrics.start(address)
    if exporter is None:
        return None

    def queued_repairs() -> int:
        # The scrape runs in the HTTP server's thread: its own read-only connection sees
        # what the daemon committed, and never waits for the event loop.
        from fusefs.meta.repo import MetaRepo

        meta = MetaRepo(vd.meta, read_only=True)
        try:
            return meta.repair_count()
        finally:
            meta.close()

    exporter.add_gauge("fusefs_queued_repairs", "Shares in the repair queue", queued_repairs)
    log.info("metrics on http://%s:%d/metrics", metrics.parse_address(address)[0],
             exporter.port)
    return exporter
