"""The systems the workloads run on: a raw directory, fusefs, and the peers.

`System` is a plain directory ("raw"); `FuseSystem` adds mount, unmount, a fresh daemon for
cold phases, the daemon's peak RSS and a cleanup that never leaves a mount behind. Its
subclasses mount fusefs (through its command line only), gocryptfs, securefs,
scripts/passthrough.py ("passthru") and a fusefs volume with 3 of its 5 stores in S3
buckets of a moto server on loopback ("fusefs-s3").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .config import (
    CLI_TIMEOUT,
    DAEMON_EXIT_TIMEOUT,
    MOUNT_TIMEOUT,
    REPO,
    BenchError,
    K,
    M,
    N,
    warn,
)
from .sysutil import is_mounted, pid_alive, run_quiet, vm_hwm_mib, wait_until


class System:
    """A place to run the workloads: a directory, possibly behind a FUSE mount."""

    name = "raw"
    fuse = False

    def __init__(self, work: str) -> None:
        self.work = work
        self.root = os.path.join(work, self.name)

    def setup(self) -> None:
        os.mkdir(self.root)

    def fresh(self) -> None:
        """Make sure no cache of the system's own survives (FUSE: a new daemon)."""

    def cleanup(self) -> None:
        pass


class FuseSystem(System):
    fuse = True

    def __init__(self, work: str) -> None:
        super().__init__(work)
        self.mnt = self.root
        self.mounted = False
        self.pid: int | None = None
        self.peak_rss: list[float] = []  # VmHWM of each daemon, read just before its unmount

    def _mount(self) -> None:
        raise NotImplementedError

    def _umount(self) -> None:
        run_quiet(["fusermount3", "-u", self.mnt], CLI_TIMEOUT, f"fusermount3 -u {self.mnt}")

    def mount(self) -> None:
        os.makedirs(self.mnt, exist_ok=True)
        self.mounted = True  # from here on, cleanup() checks
        self._mount()
        if not wait_until(lambda: is_mounted(self.mnt), MOUNT_TIMEOUT):
            raise BenchError(f"{self.name}: {self.mnt} is not mounted after the mount command")

    def record_rss(self) -> None:
        if self.pid is not None:
            hwm = vm_hwm_mib(self.pid)
            if hwm is not None:
                self.peak_rss.append(hwm)

    def umount(self) -> None:
        self.record_rss()
        self._umount()
        if is_mounted(self.mnt):
            raise BenchError(f"{self.name}: {self.mnt} is still mounted after unmounting")
        pid, self.pid = self.pid, None
        if pid is not None and not wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_TIMEOUT):
            raise BenchError(f"{self.name}: daemon {pid} still running after the unmount")
        self.mounted = False

    def fresh(self) -> None:
        self.umount()
        self.mount()

    def cleanup(self) -> None:
        """Take the mount down whatever its state; never raises."""
        if not self.mounted:
            return
        if is_mounted(self.mnt):
            try:
                self.umount()
            except Exception as exc:  # noqa: BLE001 - fall through to the forced unmount
                warn(f"{self.name}: clean unmount failed: {exc}")
        if is_mounted(self.mnt):
            with contextlib.suppress(Exception):
                subprocess.run(["fusermount3", "-uz", self.mnt], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=30, check=False)
        pid = self.pid
        if pid is not None and not wait_until(lambda: not pid_alive(pid), DAEMON_EXIT_TIMEOUT):
            warn(f"{self.name}: daemon {pid} did not exit; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if is_mounted(self.mnt):
            with contextlib.suppress(Exception):
                subprocess.run(["umount", "-l", self.mnt], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=30, check=False)
        self.mounted = is_mounted(self.mnt)


class Fusefs(FuseSystem):
    name = "fusefs"

    def __init__(self, work: str, cmd: list[str]) -> None:
        super().__init__(work)
        self.cmd = cmd
        self.vol = os.path.join(work, "volume")
        self.key = os.path.join(work, "volume.key")
        self.stores = [os.path.join(work, "stores", f"s{i}") for i in range(N)]

    def cli(self, *args: str) -> str:
        argv = [*self.cmd, *args]
        return run_quiet(argv, CLI_TIMEOUT, "fusefs " + " ".join(args))

    def setup(self) -> None:
        for s in self.stores:
            os.makedirs(s)
        args = ["init", self.vol]
        for url in self.store_urls():
            args += ["--store", url]
        chunk = os.environ.get("FUSEFS_BENCH_CHUNK")  # e.g. 256K: compare chunk sizes
        self.cli(*args, "--data-shares", str(K), "--parity-shares", str(M),
                 "--key-file", self.key, *(["--chunk-size", chunk] if chunk else []))
        self.mount()

    def _mount(self) -> None:
        self.cli("mount", self.vol, self.mnt, "--key-file", self.key)
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(Path(self.vol, "fusefs.pid").read_text().split()[0])

    def _umount(self) -> None:
        self.cli("umount", self.mnt)

    def store_urls(self) -> list[str]:
        return ["file://" + s for s in self.stores]

    def empty_store(self, i: int) -> int:
        """Delete every share object of store I (unmounted); the number of files deleted."""
        root = os.path.join(self.stores[i], "objects")
        count = sum(len(files) for _, _, files in os.walk(root))
        for child in os.listdir(root):
            p = os.path.join(root, child)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        return count

    def log_summary(self) -> dict:
        """Counts of WARNING/ERROR/CRITICAL lines and tracebacks in the daemon's log."""
        counts = {"WARNING": 0, "ERROR": 0, "CRITICAL": 0, "Traceback": 0}
        first_errors: list[str] = []
        with contextlib.suppress(OSError), open(os.path.join(self.vol, "fusefs.log"),
                                                errors="replace") as f:
            for line in f:
                for key in counts:
                    if f" {key} " in line or line.startswith(key):
                        counts[key] += 1
                        if key != "WARNING" and len(first_errors) < 5:
                            first_errors.append(line.rstrip())
        return {"counts": counts, "first_errors": first_errors}

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(os.path.join(self.vol, "fusefs.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


PASSWORD = "fusefs-bench-password"


class Gocryptfs(FuseSystem):
    name = "gocryptfs"

    def setup(self) -> None:
        self.cipher = os.path.join(self.work, "gocryptfs-cipher")
        self.passfile = os.path.join(self.work, "gocryptfs.pass")
        os.mkdir(self.cipher)
        Path(self.passfile).write_text(PASSWORD + "\n")
        run_quiet(["gocryptfs", "-init", "-q", "-passfile", self.passfile, self.cipher],
                  CLI_TIMEOUT, "gocryptfs -init")
        self.mount()

    def _mount(self) -> None:
        run_quiet(["gocryptfs", "-q", "-passfile", self.passfile, self.cipher, self.mnt],
                  CLI_TIMEOUT, "gocryptfs mount")


class Securefs(FuseSystem):
    name = "securefs"

    def setup(self) -> None:
        self.cipher = os.path.join(self.work, "securefs-cipher")
        os.mkdir(self.cipher)
        run_quiet(["securefs", "create", "--pass", PASSWORD, self.cipher], CLI_TIMEOUT,
                  "securefs create")
        self.mount()

    def _mount(self) -> None:
        # Foreground process; it lives until the unmount.
        self.proc = subprocess.Popen(["securefs", "mount", "--pass", PASSWORD, self.cipher,
                                      self.mnt], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def _umount(self) -> None:
        super()._umount()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(DAEMON_EXIT_TIMEOUT)


class Passthrough(FuseSystem):
    """scripts/passthrough.py, a minimal pyfuse3 + trio pass-through of a plain directory with
    this interpreter: the ceiling of a Python FUSE daemon here, with no crypto or erasure."""

    name = "passthru"

    def setup(self) -> None:
        self.source = os.path.join(self.work, "passthru-source")
        os.mkdir(self.source)
        self.mount()

    def _mount(self) -> None:
        # Foreground process; it lives until the unmount. Its stderr goes to passthru.log.
        with open(os.path.join(self.work, "passthru.log"), "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "passthrough.py"), self.source,
                 self.mnt], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        self.pid = self.proc.pid

    def _umount(self) -> None:
        super()._umount()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(DAEMON_EXIT_TIMEOUT)


class FusefsS3(Fusefs):
    """The same volume layout with 3 of the 5 stores in buckets of an S3-compatible server on
    loopback (moto, started here): the cost of the S3 path next to local stores."""

    name = "fusefs-s3"
    S3_STORES = 3

    def __init__(self, work: str, cmd: list[str]) -> None:
        super().__init__(work, cmd)
        self.vol = os.path.join(work, "volume-s3")
        self.key = os.path.join(work, "volume-s3.key")
        self.stores = [os.path.join(work, "stores-s3", f"s{i}")
                       for i in range(N - self.S3_STORES)]
        self.server: subprocess.Popen | None = None
        self.endpoint = ""

    def store_urls(self) -> list[str]:
        buckets = [f"s3://bench{i}/vol?endpoint={self.endpoint}" for i in range(self.S3_STORES)]
        return [*("file://" + s for s in self.stores), *buckets]

    def setup(self) -> None:
        import boto3  # the bench skips this system when boto3/moto are missing

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for var, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(var, value)
        client = boto3.client("s3", endpoint_url=self.endpoint)
        if not wait_until(lambda: _bucket_ok(client), 30):
            raise BenchError("the moto S3 server did not start")
        for i in range(self.S3_STORES):
            client.create_bucket(Bucket=f"bench{i}")
        super().setup()

    def cleanup(self) -> None:
        super().cleanup()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(10)


def _bucket_ok(client) -> bool:
    try:
        client.list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def set_up(systems: list[System]) -> None:
    """Set up every system; a peer that fails is dropped with a warning (raw and fusefs
    are what the benchmark is for: their failure stops it)."""
    for sy in list(systems):
        try:
            sy.setup()
        except (BenchError, OSError) as exc:
            if sy.name in ("raw", "fusefs"):
                raise
            warn(f"{sy.name}: setup failed, skipped: {exc}")
            sy.cleanup()
            systems.remove(sy)
