"""The daemon as a container sidecar runs it: `fusefs mount --foreground` stopped by signals,
`fusefs health` for probes, dead mountpoints cleaned at the next mount, configuration from
the environment (issue 15, "Done when" 2).

Daemons started here in the foreground are always taken down (`Foreground.close`: SIGKILL,
then a lazy unmount), whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    FUSEFS,
    MiB,
    Mounter,
    assert_ok,
    fusermount_lazy,
    is_mounted,
    pid_alive,
    rand_bytes,
    read_pid_file,
    run_fusefs,
    scrub_json,
    wait_until,
)

from fusefs.lifecycle import DEAD

pytestmark = pytest.mark.timeout(120)


class Foreground:
    """`fusefs mount VOLUME MOUNTPOINT --foreground ...` as a child process (PID 1 of a
    sidecar container runs the same), its stderr in a file."""

    def __init__(self, tmp_path: Path, *args: object, env: dict[str, str] | None = None,
                 mnt: Path | None = None) -> None:
        self.mnt = mnt
        self.log = tmp_path / f"foreground-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [*FUSEFS, "mount", *map(str, args), "--foreground"], stdin=subprocess.DEVNULL,
                stdout=err, stderr=err, cwd="/", env={**os.environ, **(env or {})})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_live(self, timeout: float = 30) -> None:
        """Until `fusefs health` says the mount answers (the way a probe waits)."""
        assert self.mnt is not None
        deadline = time.monotonic() + timeout
        while run_fusefs("health", self.mnt).returncode != 0:
            assert self.proc.poll() is None, f"the daemon exited: {self.output()}"
            assert time.monotonic() < deadline, f"no live mount after {timeout} s"
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not exit within {timeout} s; "
                                 f"its output:\n{self.output()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.mnt is not None and is_mounted(self.mnt):
            fusermount_lazy(self.mnt)


@contextlib.contextmanager
def foreground(tmp_path: Path, vol, mnt: Path, *extra: object, env=None):
    mnt.mkdir(exist_ok=True)
    fg = Foreground(tmp_path, vol.path, mnt, "--key-file", vol.key, *extra, env=env, mnt=mnt)
    try:
        yield fg
    finally:
        fg.close()


def dead(mnt: Path) -> bool:
    """A mount whose daemon is gone (statfs always asks the daemon; a stat may be answered
    from the kernel's attribute cache). A killed daemon's threads exit one by one, so its
    pid can look gone while the device is still open: callers wait for this."""
    try:
        os.statvfs(mnt)
    except OSError as e:
        return e.errno in DEAD
    return False


# -- health ---------------------------------------------------------------------------------
def test_health_is_0_only_while_the_mount_answers(tmp_path: Path, volume, mounted):
    vol = volume()
    plain = tmp_path / "plain"
    plain.mkdir()
    res = run_fusefs("health", plain)
    assert res.returncode == 1 and "not a mounted fusefs volume" in res.stderr, res.describe()
    assert run_fusefs("health").returncode == 2  # no MOUNTPOINT, no FUSEFS_MOUNTPOINT
    mnt = mounted(vol)
    assert_ok(run_fusefs("health", mnt))
    pid = read_pid_file(vol.path)
    os.kill(pid, signal.SIGSTOP)  # a hung daemon: health must not hang with it
    try:
        t0 = time.monotonic()
        res = run_fusefs("health", mnt, "--timeout", "1")
        assert res.returncode == 1 and "does not answer" in res.stderr, res.describe()
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_ok(run_fusefs("health", mnt))


# -- signals --------------------------------------------------------------------------------
def test_sigterm_flushes_unmounts_and_exits_0(tmp_path: Path, volume, mounter: Mounter):
    vol = volume()
    mnt = tmp_path / "mnt"
    data = rand_bytes(5 * MiB + 123, "sigterm")
    with foreground(tmp_path, vol, mnt) as fg:
        fg.wait_live()
        fd = os.open(mnt / "open-at-sigterm.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)  # still open, not flushed: SIGTERM must store it
        fg.proc.send_signal(signal.SIGTERM)
        assert fg.wait_exit() == 0, fg.output()
        with contextlib.suppress(OSError):
            os.close(fd)
        assert not is_mounted(mnt), "the daemon exited and left its mount behind"
        assert "signal 15: unmounting" in fg.output()
    mounter.mount(vol, mnt)
    assert (mnt / "open-at-sigterm.bin").read_bytes() == data
    mounter.umount(mnt)


def test_sigterm_during_a_large_write(tmp_path: Path, volume, mounter: Mounter):
    """A writer that writes NAME.part and renames it when done: after SIGTERM the file is
    complete or absent, the part written is a prefix of the right bytes, the volume scrubs
    clean and the next mount needs no manual cleanup."""
    vol = volume()
    mnt = tmp_path / "mnt"
    total = 64 * MiB
    written = [0]
    error: list[BaseException] = []
    before = rand_bytes(3 * MiB, "before")

    def writer() -> None:
        piece = 1 * MiB
        try:
            fd = os.open(mnt / "big.part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while written[0] < total:
                    n = os.write(fd, rand_bytes(piece, f"big:{written[0]}"))
                    written[0] += n
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(mnt / "big.part", mnt / "big")
        except OSError as e:
            error.append(e)

    with foreground(tmp_path, vol, mnt) as fg:
        fg.wait_live()
        (mnt / "before.bin").write_bytes(before)  # complete before the signal
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        assert wait_until(lambda: written[0] >= 12 * MiB or not t.is_alive(), 60)
        fg.proc.send_signal(signal.SIGTERM)
        assert fg.wait_exit() == 0, fg.output()
        t.join(60)
        assert not t.is_alive(), "the writer is stuck after the daemon exited"
        assert not is_mounted(mnt) and not dead(mnt), "a mount was left behind"
    assert error or written[0] == total, "the writer neither finished nor saw an error"
    # The next mount needs nothing done by hand.
    mounter.mount(vol, mnt)
    assert (mnt / "before.bin").read_bytes() == before
    if (mnt / "big").exists():
        assert (mnt / "big").stat().st_size == total
    if (mnt / "big.part").exists():
        got = (mnt / "big.part").read_bytes()
        expected = b"".join(rand_bytes(MiB, f"big:{off}") for off in range(0, len(got), MiB))
        assert got == expected[: len(got)], "big.part holds bytes that were never written"
    mounter.umount(mnt)
    _, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert report["healthy"] and not report["damaged_files"], report


def test_a_second_signal_forces_a_lazy_unmount(tmp_path: Path):
    """Shutdown stuck (the S3 stores stop answering while dirty data is flushed): a second
    SIGTERM detaches the mount and the daemon exits 1 at once."""
    from s3server import S3Server, use_test_credentials

    pytest.importorskip("moto.server")
    use_test_credentials()
    server = S3Server().start()
    stopped = False
    try:
        stores = [tmp_path / f"s{i}" for i in range(3)]
        for s in stores:
            s.mkdir()
        urls = [str(s) for s in stores]
        for b in ("hang1", "hang2"):
            server.create_bucket(b)
            urls.append(f"s3://{b}/p?endpoint={server.endpoint}")
        vol_path, key = tmp_path / "vol", tmp_path / "vol.key"
        assert_ok(run_fusefs("init", vol_path, *sum((["--store", u] for u in urls), []),
                             "--data-shares", 3, "--parity-shares", 2, "--key-file", key))
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        fg = Foreground(tmp_path, vol_path, mnt, "--key-file", key, mnt=mnt)
        try:
            fg.wait_live()
            fd = os.open(mnt / "dirty.bin", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, rand_bytes(2 * MiB, "dirty"))  # buffered in the daemon
            os.kill(server.proc.pid, signal.SIGSTOP)  # S3 puts now hang
            stopped = True
            fg.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: "signal 15: unmounting" in fg.output(), 30)
            assert fg.proc.poll() is None, "shutdown did not wait for the stores"
            fg.proc.send_signal(signal.SIGTERM)
            assert fg.wait_exit(30) == 1, fg.output()
            assert "again" in fg.output() and "lazy unmount" in fg.output(), fg.output()
            assert not is_mounted(mnt), "the forced exit left the mount behind"
            with contextlib.suppress(OSError):
                os.close(fd)
        finally:
            fg.close()
    finally:
        if stopped:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


# -- dead mountpoints -----------------------------------------------------------------------
def test_a_mount_after_kill9_cleans_the_dead_mountpoint(tmp_path: Path, volume,
                                                        mounter: Mounter):
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    data = rand_bytes(2 * MiB, "kill9")
    (mnt / "f.bin").write_bytes(data)
    pid = read_pid_file(vol.path)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 10)
    assert is_mounted(mnt) and wait_until(lambda: dead(mnt), 10), (
        "expected a dead mount after kill -9")
    res = run_fusefs("health", mnt)
    assert res.returncode == 1 and "dead mount" in res.stderr, res.describe()
    mounter.forget(mnt)
    # Background mount: cleans, says so on stderr and in the volume's log, mounts.
    res = mounter.try_mount(vol, mnt)
    assert_ok(res)
    assert "dead fusefs mount" in res.stderr and "unmounted it" in res.stderr, res.describe()
    assert "dead fusefs mount" in (vol.path / "fusefs.log").read_text()
    assert (mnt / "f.bin").read_bytes() == data
    # Foreground mount (a restarted sidecar container): the same, in its log.
    pid = read_pid_file(vol.path)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 10)
    mounter.forget(mnt)
    assert wait_until(lambda: dead(mnt), 10)
    with foreground(tmp_path, vol, mnt) as fg:
        fg.wait_live()
        assert "dead fusefs mount" in fg.output(), fg.output()
        assert (mnt / "f.bin").read_bytes() == data
        fg.proc.send_signal(signal.SIGINT)
        assert fg.wait_exit() == 0, fg.output()
    assert not is_mounted(mnt)


# -- configuration from the environment ------------------------------------------------------
def test_init_and_mount_from_the_environment(tmp_path: Path, mounter: Mounter):
    """The sidecar's way: no command line but `mount --foreground --init`; stores from a
    mounted file, K/M, key, volume and mountpoint from variables."""
    stores = [tmp_path / "stores" / f"s{i}" for i in range(4)]
    for s in stores:
        s.mkdir(parents=True)
    stores_file = tmp_path / "stores.txt"
    stores_file.write_text("# the stores\n" + "".join(f"{s}\n" for s in stores) + "\n")
    key = tmp_path / "secret" / "volume.key"
    key.parent.mkdir()
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o400)
    vol_path = tmp_path / "vol"
    mnt = tmp_path / "shared" / "data"  # missing: --init creates it
    env = {"FUSEFS_VOLUME": str(vol_path), "FUSEFS_MOUNTPOINT": str(mnt),
           "FUSEFS_KEY_FILE": str(key), "FUSEFS_STORES_FILE": str(stores_file),
           "FUSEFS_DATA_SHARES": "2", "FUSEFS_PARITY_SHARES": "2"}
    fg = Foreground(tmp_path, "--init", env=env, mnt=mnt)
    try:
        fg.wait_live()
        (mnt / "x").write_bytes(b"hello")
        fg.proc.send_signal(signal.SIGTERM)
        assert fg.wait_exit() == 0, fg.output()
    finally:
        fg.close()
    status = run_fusefs("status", vol_path, "--json", "--key-file", key)
    assert_ok(status)
    assert '"data_shares": 2' in status.stdout and '"parity_shares": 2' in status.stdout
    # A second start finds the volume (--init does nothing) and the data.
    fg = Foreground(tmp_path, "--init", env=env, mnt=mnt)
    try:
        fg.wait_live()
        assert (mnt / "x").read_bytes() == b"hello"
        fg.proc.send_signal(signal.SIGTERM)
        assert fg.wait_exit() == 0, fg.output()
    finally:
        fg.close()


def test_init_reads_stores_from_the_environment(tmp_path: Path):
    stores = [tmp_path / f"s{i}" for i in range(3)]
    for s in stores:
        s.mkdir()
    env = {**os.environ, "FUSEFS_STORES": ",".join(map(str, stores)),
           "FUSEFS_VOLUME": str(tmp_path / "vol")}
    res = subprocess.run([*FUSEFS, "init"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "2 data + 1 parity shares over 3 stores" in res.stdout
    res = subprocess.run([*FUSEFS, "init", "--if-missing"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and not res.stdout, res.stdout + res.stderr
    res = subprocess.run([*FUSEFS, "init"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "already holds" in res.stderr
    bad = {**env, "FUSEFS_DATA_SHARES": "three"}
    res = subprocess.run([*FUSEFS, "init", str(tmp_path / "v2")], env=bad,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "FUSEFS_DATA_SHARES" in res.stderr


def test_environment_yields_to_the_command_line():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fusefs.cli import _parser, apply_environment

    p = _parser()
    args = p.parse_args(["mount", "/v", "/m", "--metrics", "127.0.0.1:1"])
    apply_environment(p, args, {"FUSEFS_VOLUME": "/other", "FUSEFS_METRICS": ":2",
                                "FUSEFS_READ_ONLY": "yes", "FUSEFS_KEY_FILE": "/k"})
    assert (args.volume, args.mountpoint, args.metrics) == ("/v", "/m", "127.0.0.1:1")
    assert args.read_only is True and args.key_file == "/k"
