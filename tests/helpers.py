
"""Helpers for the real-mount tests: running the CLI, mounting and always unmounting, file trees.

Everything here talks to fusefs through its command-line contract (`python -m fusefs ...`)
and through the mounted filesystem. From the package it takes only the mount-table reader and
where a local store keeps an object (to damage shares as an attacker with a disk would).

Unmounting is defensive because a hung FUSE daemon blocks every process touching the mount
(and every `sync()` on the machine): a mount is taken down with `fusefs umount`, then
`fusermount3 -uz`, then by aborting its FUSE connection and killing the daemon. Whether a path
is mounted is read from /proc/self/mountinfo, which never blocks on a hung daemon.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fusefs.mounts import mounted_at, mountinfo
from fusefs.stores.local import object_relpath

FUSEFS = [sys.executable, "-m", "fusefs"]
# Mountpoints outside tmp_path (reachable by other users) start with this: this process's
# own, so that the end of a test run forces down its leftovers and not those of another run
# going on at the same time on the machine.
ALLOW_OTHER_PREFIX = f"fusefs-allow-other-{os.getpid()}-"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

CLI_TIMEOUT = 90  # seconds for one CLI call (init, mount, umount, status)
MOUNT_READY_TIMEOUT = 15  # seconds to wait for the mount to appear after `fusefs mount`
DAEMON_EXIT_TIMEOUT = 10  # seconds to wait for the daemon to go away
FUSECTL = Path("/sys/fs/fuse/connections")

# The file sizes of the reference tree (issue 2, "Done when" 1).
TREE_SIZES = [
    0, 1, 4095, 4096, 4097, MiB - 1, MiB, MiB + 1, 3 * MiB + 17, 11 * MiB,
]


def fuse_unavailable_reason() -> str | None:
    """Why real-mount tests cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    return None


# --------------------------------------------------------------------------------------------
# Running the command line
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    """The outcome of one `fusefs` command."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"`fusefs {' '.join(self.args)}` exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


def run_fusefs(*args: object, timeout: float = CLI_TIMEOUT) -> Result:
    """Run `python -m fusefs ARGS` and return its exit status and output.

    Output goes to temporary files, not pipes: a daemon that forgot to close an inherited
    pipe would otherwise make this call wait forever.
    """
    argv = [str(a) for a in args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(
                [*FUSEFS, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=timeout,
                cwd="/",
            )
        except subprocess.TimeoutExpired as exc:
            cmd = " ".join(argv)
            raise AssertionError(f"`fusefs {cmd}` did not finish in {timeout} s") from exc
        out.seek(0)
        err.seek(0)
        return Result(
            argv,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def assert_ok(res: Result) -> Result:
    assert res.returncode == 0, res.describe()
    assert "Traceback" not in res.stderr + res.stdout, res.describe()
    return res


def assert_fails(res: Result, code: int = 1, *, contains: Iterable[str] = ()) -> str:
    """Assert the failure contract and return the error line.

    Exit 1: exactly one non-empty line on stderr. Exit 2 (usage): argparse-style output is
    allowed to span lines, but must say something. Never a traceback.
    """
    assert res.returncode == code, f"expected exit {code}; " + res.describe()
    assert "Traceback" not in res.stderr + res.stdout, res.describe()
    text = res.stderr.rstrip("\n")
    assert text.strip(), "no error message on stderr; " + res.describe()
    lines = text.split("\n")
    if code == 1:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}; " + res.describe()
    message = lines[-1]
    for needle in contains:
        assert needle.lower() in text.lower(), f"{needle!r} not in the message; " + res.describe()
    return message


def status_json(target: Path | str) -> dict:
    res = assert_ok(run_fusefs("status", target, "--json"))
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError("status --json printed no JSON object; " + res.describe()) from exc


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


@dataclass
class Volume:
    path: Path
    stores: list[Path]
    key: Path
    k: int
    m: int

    def store_url(self, i: int) -> str:
        return "file://" + str(self.stores[i])

    def objects(self, i: int) -> list[Path]:
        """The share objects of store i (regular files under STORE/objects/)."""
        root = self.stores[i] / "objects"
        if not root.is_dir():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def create_volume(
    base: Path,
    name: str = "vol",
    *,
    n_stores: int = 5,
    k: int = 3,
    m: int = 2,
    chunk_size: int | None = None,
    gc_grace: float | None = 0,
    snapshot_interval: float | None = None,
    segment_size: int | None = None,
    key: Path | None = None,
    pack_below: str | None = None,
    pack_size: str | None = None,
) -> Volume:
    """`fusefs init` a volume BASE/NAME over N fresh store directories BASE/NAME-stores/sI."""
    base.mkdir(parents=True, exist_ok=True)
    stores = [base / f"{name}-stores" / f"s{i}" for i in range(n_stores)]
    for s in stores:
        s.mkdir(parents=True)
    key = key if key is not None else base / f"{name}.key"
    vol = Volume(base / name, stores, key, k, m)
    args: list[object] = ["init", vol.path]
    for i in range(n_stores):
        args += ["--store", vol.store_url(i)]
    args += ["--data-shares", k, "--parity-shares", m, "--key-file", key]
    if chunk_size is not None:
        args += ["--chunk-size", chunk_size]
    if gc_grace is not None:  # tests check what the stores hold after an unmount: no grace
        args += ["--gc-grace", gc_grace]  # for followers (tests that want one ask for it)
    if snapshot_interval is not None:
        args += ["--snapshot-interval", snapshot_interval]
    if segment_size is not None:
        args += ["--segment-size", segment_size]
    if pack_below is not None:
        args += ["--pack-below", pack_below]
    if pack_size is not None:
        args += ["--pack-size", pack_size]
    assert_ok(run_fusefs(*args))
    assert key.is_file(), f"init did not write the key file {key}"
    return vol


def mixed_volume(tmp_path: Path, server, k: int, m: int, n_local: int, *init: object
                 ) -> tuple[Volume, list[str], list[str]]:
    """A volume of `n_local` local stores followed by k + m - n_local buckets of the S3 test
    server `server` (`init`: more init options); returns it, the bucket names and every
    store URL."""
    local = [tmp_path / f"local{i}" for i in range(n_local)]
    for d in local:
        d.mkdir()
    buckets = [server.create_bucket(f"{tmp_path.name.lower()[:40]}-{i}".replace("_", "-"))
               for i in range(k + m - n_local)]
    urls = [f"file://{d}" for d in local] + [
        f"s3://{b}/vol?endpoint={server.endpoint}" for b in buckets]
    key = tmp_path / "key"
    args: list[object] = ["init", tmp_path / "vol"]
    for u in urls:
        args += ["--store", u]
    assert_ok(run_fusefs(*args, "--data-shares", k, "--parity-shares", m, "--key-file", key,
                         *init))
    return Volume(tmp_path / "vol", local, key, k, m), buckets, urls


# --------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------


def mount_entry(mnt: Path | str) -> tuple[int, str] | None:
    """(device minor, fstype) of the topmost mount at MNT, from mountinfo (never blocks)."""
    m = mounted_at(mnt)
    return None if m is None else (int(m.device.split(":")[1]), m.fstype)


def is_mounted(mnt: Path | str) -> bool:
    return mount_entry(mnt) is not None


def fuse_mounts() -> list[str]:
    return [m.mountpoint for m in mountinfo() if re.fullmatch(r"fuse(\.\w+)?", m.fstype)]


def pid_alive(pid: int) -> bool:
    """True while PID exists and is not a zombie (a reparented daemon may stay a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll PREDICATE until it is true or TIMEOUT seconds passed (the only waiting we do)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def read_pid_file(vol_path: Path) -> int | None:
    try:
        text = (vol_path / "fusefs.pid").read_text()
    except OSError:
        return None
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def abort_connection(minor: int) -> bool:
    """Abort the FUSE connection with id MINOR (makes every blocked request fail ENOTCONN)."""
    if os.geteuid() == 0 and FUSECTL.is_dir() and not any(FUSECTL.iterdir()):
        # fusectl is not mounted here yet; mounting it is harmless and makes abort possible.
        subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", str(FUSECTL)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False,
        )
    abort = FUSECTL / str(minor) / "abort"
    try:
        abort.write_text("1")
        return True
    except OSError:
        return False


def fusermount_lazy(mnt: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["fusermount3", "-uz", str(mnt)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, check=False,
    )


def kill_daemon(vol_path: Path, mnt: Path, mounter: Mounter,
                before_unmount: Callable[[], None] = lambda: None) -> None:
    """SIGKILL the daemon of the volume mounted on `mnt`, clear the dead mount and tell the
    mounter. `before_unmount` runs while the dead mount still covers `mnt`: a writer thread
    stopped there fails on it; after the unmount it would write into the directory
    underneath (and a test would count that as acknowledged)."""
    pid = read_pid_file(vol_path)
    assert pid is not None, f"no pid in {vol_path / 'fusefs.pid'} while mounted"
    assert pid_alive(pid), f"the pid in fusefs.pid ({pid}) is not running"
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 10), "daemon survived SIGKILL"
    before_unmount()
    if is_mounted(mnt):  # (unless an auto_unmount helper already took it down)
        res = fusermount_lazy(mnt)
        assert res.returncode == 0 or not is_mounted(mnt), res.stderr
    assert not is_mounted(mnt)
    mounter.forget(mnt)


@dataclass
class MountRecord:
    mnt: Path
    volume: Path
    pid: int | None = None
    minor: int | None = None


_REGISTRY_LOCK = threading.Lock()
_ALL_MOUNTERS: list[Mounter] = []


@dataclass
class Mounter:
    """Mounts volumes and guarantees they are gone at cleanup(), whatever state they are in."""

    records: list[MountRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        with _REGISTRY_LOCK:
            _ALL_MOUNTERS.append(self)

    def try_mount(self, vol: Volume, mnt: Path, *extra: object, key: Path | None = None) -> Result:
        """Run `fusefs mount` without judging the outcome; a mount that appears is tracked."""
        rec = MountRecord(Path(os.path.abspath(mnt)), vol.path)
        was_mounted = is_mounted(rec.mnt)
        self.records.append(rec)
        res = run_fusefs(
            "mount", vol.path, mnt, "--key-file", key if key is not None else vol.key, *extra
        )
        if res.returncode == 0:
            wait_until(lambda: is_mounted(rec.mnt), MOUNT_READY_TIMEOUT)
        entry = mount_entry(rec.mnt)
        if entry is None or (was_mounted and res.returncode != 0):
            # Nothing new to track (failed mount, or a mountpoint that was already in use).
            self.records.remove(rec)
            return res
        rec.minor = entry[0]
        rec.pid = read_pid_file(vol.path)
        return res

    def mount(self, vol: Volume, mnt: Path, *extra: object, key: Path | None = None) -> Path:
        """Mount VOL at MNT (created if missing); assert it is live; return MNT."""
        mnt = Path(mnt)
        mnt.mkdir(parents=True, exist_ok=True)
        res = self.try_mount(vol, mnt, *extra, key=key)
        assert_ok(res)
        deadline = time.monotonic() + MOUNT_READY_TIMEOUT
        while not os.path.ismount(mnt):
            assert time.monotonic() < deadline, f"{mnt} is not a mountpoint after `fusefs mount`"
            time.sleep(0.05)
        rec = self._record(mnt)
        if rec is not None and rec.pid is None:
            rec.pid = read_pid_file(vol.path)
        return mnt

    def _record(self, mnt: Path) -> MountRecord | None:
        target = Path(os.path.abspath(mnt))
        for rec in reversed(self.records):
            if rec.mnt == target:
                return rec
        return None

    def umount(self, mnt: Path) -> Result:
        """`fusefs umount MNT` and assert it did everything it promises."""
        rec = self._record(mnt)
        res = run_fusefs("umount", mnt)
        assert_ok(res)
        assert not is_mounted(mnt), f"{mnt} is still mounted after `fusefs umount`"
        if rec is not None:
            if rec.pid is not None:
                assert wait_until(lambda: not pid_alive(rec.pid), 3), (
                    f"daemon {rec.pid} still running after `fusefs umount` returned"
                )
            self.records.remove(rec)
        return res

    def adopt(self, vol: Volume, mnt: Path) -> None:
        """Track a mount that appeared without `mount()` (so cleanup takes it down)."""
        entry = mount_entry(mnt)
        rec = MountRecord(Path(os.path.abspath(mnt)), vol.path, read_pid_file(vol.path))
        rec.minor = entry[0] if entry else None
        self.records.append(rec)

    def forget(self, mnt: Path) -> None:
        """Stop tracking MNT (the test took it down some other way and checked that)."""
        rec = self._record(mnt)
        if rec is not None:
            self.records.remove(rec)

    def abort_all(self) -> None:
        """Abort every tracked connection and kill its daemon (hang watchdog; no waiting)."""
        for rec in list(self.records):
            entry = mount_entry(rec.mnt)
            minor = entry[0] if entry else rec.minor
            if minor is not None:
                abort_connection(minor)
            if rec.pid is not None and pid_alive(rec.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)

    def cleanup(self) -> list[str]:
        """Take down every tracked mount; return what went wrong on the clean path."""
        problems: list[str] = []
        for rec in reversed(list(self.records)):
            problems += _teardown(rec)
            self.records.remove(rec)
        with _REGISTRY_LOCK, contextlib.suppress(ValueError):
            _ALL_MOUNTERS.remove(self)
        return problems


def copy_in(vol: Volume, src: Path, mnt: Path) -> None:
    """Copy the tree `src` to `tree/` of the volume through a mount at `mnt`, then unmount."""
    m = Mounter()
    try:
        shutil.copytree(src, m.mount(vol, mnt) / "tree")
        m.umount(mnt)
    finally:
        problems = m.cleanup()
    assert not problems, problems


def _teardown(rec: MountRecord) -> list[str]:
    problems: list[str] = []
    entry = mount_entry(rec.mnt)
    if rec.pid is None and entry is not None:
        rec.pid = read_pid_file(rec.volume)
    if entry is not None:
        rec.minor = entry[0]
        try:
            res = run_fusefs("umount", rec.mnt, timeout=30)
            if res.returncode != 0 or "Traceback" in res.stderr:
                problems.append(f"teardown: {res.describe()}")
        except AssertionError as exc:
            problems.append(f"teardown: {exc}")
    if is_mounted(rec.mnt):
        fusermount_lazy(rec.mnt)
    if rec.pid is not None and not wait_until(lambda: not pid_alive(rec.pid), DAEMON_EXIT_TIMEOUT):
        problems.append(f"teardown: daemon {rec.pid} of {rec.mnt} did not exit; killed")
        if rec.minor is not None:
            abort_connection(rec.minor)
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(rec.pid), DAEMON_EXIT_TIMEOUT)
    if is_mounted(rec.mnt):
        if rec.minor is not None:
            abort_connection(rec.minor)
        fusermount_lazy(rec.mnt)
        if is_mounted(rec.mnt):
            subprocess.run(["umount", "-l", str(rec.mnt)], capture_output=True, check=False)
        problems.append(f"teardown: {rec.mnt} needed a forced unmount")
    return problems


def abort_all_mounts(why: str) -> None:
    """Watchdog entry point: unblock a test stuck in a FUSE request."""
    with _REGISTRY_LOCK:
        mounters = list(_ALL_MOUNTERS)
    if any(m.records for m in mounters):
        print(f"\n[watchdog] {why}: aborting FUSE connections", file=sys.stderr, flush=True)
    for m in mounters:
        m.abort_all()


# --------------------------------------------------------------------------------------------
# Data and trees
# --------------------------------------------------------------------------------------------


def rand_bytes(n: int, seed: object) -> bytes:
    return random.Random(str(seed)).randbytes(n)


def tree_layout(sizes: Iterable[int]) -> dict[str, int]:
    """Relative path -> size, spread over nested directories."""
    dirs = ["", "a", "a/b", "a/b/c", "d", "d/e f", "a/b/c/deep/er"]
    layout = {}
    for i, size in enumerate(sizes):
        d = dirs[i % len(dirs)]
        name = f"f{i:02d}-{size}.bin"
        layout[f"{d}/{name}" if d else name] = size
    return layout


def write_tree(root: Path, layout: dict[str, int], seed: object = 0) -> dict[str, bytes]:
    """Write the files of LAYOUT under ROOT (plus an empty directory); return their contents."""
    contents = {}
    for rel, size in layout.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rand_bytes(size, f"{seed}:{rel}")
        p.write_bytes(data)
        contents[rel] = data
    (root / "empty-dir").mkdir(parents=True, exist_ok=True)
    return contents


def assert_tree(root: Path, expected: dict[str, bytes], *, exact: bool = True) -> None:
    """Every file of EXPECTED under ROOT is bit-identical (and, if EXACT, nothing else exists)."""
    if exact:
        found = set()
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                found.add(os.path.relpath(os.path.join(dirpath, f), root))
        assert found == set(expected), (
            f"files differ: missing {sorted(set(expected) - found)}, "
            f"unexpected {sorted(found - set(expected))}"
        )
    for rel, data in expected.items():
        p = root / rel
        st = p.stat()
        assert st.st_size == len(data), f"{rel}: size {st.st_size}, expected {len(data)}"
        got = p.read_bytes()
        if got != data:
            first = next((i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b),
                         min(len(got), len(data)))
            raise AssertionError(f"{rel}: content differs from byte {first} on "
                                 f"(read {len(got)} bytes, expected {len(data)})")


def read_checked(path: Path, expected: bytes, block: int = 256 * KiB) -> str:
    """Read PATH; return "ok" or "eio". Any byte that IS returned must be the right byte."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return "eio"
        raise
    try:
        got = bytearray()
        while True:
            try:
                buf = os.read(fd, block)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    assert bytes(got) == expected[: len(got)], f"{path}: wrong bytes before EIO"
                    return "eio"
                raise
            if not buf:
                break
            got += buf
            assert bytes(got) == expected[: len(got)], (
                f"{path}: WRONG BYTES returned in [{len(got) - len(buf)}, {len(got)})"
            )
        assert len(got) == len(expected), f"{path}: read {len(got)} bytes, expected {len(expected)}"
        return "ok"
    finally:
        os.close(fd)


def drop_cache(path: Path | str) -> None:
    """Drop the kernel's clean cached pages of PATH so the next read asks the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_uncached(path: Path | str) -> bytes:
    drop_cache(path)
    with open(path, "rb") as f:
        return f.read()


def snapshot_files(root: Path, ignore: Iterable[str] = ()) -> dict[str, bytes]:
    """Relative path -> content of every regular file under ROOT, minus names matching IGNORE."""
    pats = [re.compile(p) for p in ignore]
    snap = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if any(p.search(rel) for p in pats):
                continue
            with contextlib.suppress(FileNotFoundError):
                snap[rel] = Path(dirpath, f).read_bytes()
    return snap


def copy_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


class Snapshot:
    """A copy of a volume directory and its stores, put back before each damage case."""

    def __init__(self, vol: Volume, where: Path) -> None:
        self.vol = vol
        self.where = where
        copy_dir(vol.path, where / "volume")
        for i, s in enumerate(vol.stores):
            copy_dir(s, where / f"s{i}")

    def restore(self) -> Volume:
        copy_dir(self.where / "volume", self.vol.path)
        for i, s in enumerate(self.vol.stores):
            copy_dir(self.where / f"s{i}", s)
        return self.vol


# --------------------------------------------------------------------------------------------
# Share objects, events and scrub reports (self-healing tests)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareLoc:
    """One share of the current version of one chunk, found through VOLUME/meta.db: an
    object of its own, or (format 4) a member of a pack: bytes [offset, offset + length) of
    the pack object FILE."""

    path: str  # the file's path in the volume, as events name it: "/dir/name"
    inode: int
    chunk: int  # chunk index in the file
    share: int  # share number: 0..K-1 data shares (what a healthy read fetches), then parity
    store: int  # index of the store holding it (placement byte)
    name: str  # name of the object holding it (the share's own, or its pack's)
    file: Path  # STORE/objects/<name[0]>/<name>
    digest: bytes  # the share's recorded xxh3-128
    offset: int = 0  # a member: where in the pack it starts
    length: int | None = None  # a member: its length; None: the share is the whole FILE

    @property
    def packed(self) -> bool:
        return self.length is not None

    @property
    def pack(self) -> Path | None:
        """The pack file holding it (None: an object of its own)."""
        return self.file if self.packed else None

    @property
    def event_object(self) -> str:
        return self.obj

    def overwrite(self, data: bytes) -> None:
        """Write DATA over the share in place (a pack member keeps its length)."""
        assert self.length in (None, len(data)), "a pack member is rewritten at its own length"
        self.write(data)

    @property
    def obj(self) -> str:
        """How events name the share: its object, or "PACK@OFFSET+LENGTH"."""
        return self.name if self.length is None else f"{self.name}@{self.offset}+{self.length}"

    def read(self) -> bytes | None:
        """The share's bytes as stored (a member of a truncated pack: what is left of it);
        None when its object (or pack) does not exist."""
        try:
            with open(self.file, "rb") as f:
                if self.length is None:
                    return f.read()
                f.seek(self.offset)
                return f.read(self.length)
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        """Replace the share's object with DATA; a member: overwrite the first len(DATA)
        bytes of its range in place (a pack's other members stay as they are)."""
        if self.length is None:
            self.file.write_bytes(data)
            return
        assert len(data) <= self.length, "writing past the end of a pack member"
        with open(self.file, "r+b") as f:
            f.seek(self.offset)
            f.write(data)


def _volume_id(vol: Volume) -> str:
    import tomllib

    return tomllib.loads((vol.path / "fusefs.toml").read_text())["volume_id"]


def share_map(vol: Volume) -> dict[str, list[list[ShareLoc]]]:
    """File path -> its chunks in index order -> their shares in share order.

    The one helper that imports fusefs: object names are keyed (BLAKE2b with a key derived
    from the master key), so finding the objects of a file needs the key derivation. Reads
    meta.db read-only; safe while mounted, but a daemon's uncommitted changes are not seen.
    Packed shares (format 4) are members of their pack objects.
    """
    import sqlite3
    import struct

    keys = _keys(vol)
    db = sqlite3.connect(f"file:{vol.path / 'meta.db'}?mode=ro", uri=True)
    try:
        parents = {ino: (parent, os.fsdecode(name)) for parent, name, ino in
                   db.execute("SELECT parent, name, inode FROM dentries")}
        rows = db.execute("SELECT inode, idx, oid, placement, digests FROM chunks"
                          " ORDER BY inode, idx").fetchall()
        has_packs = db.execute("SELECT 1 FROM sqlite_master WHERE name='packed'").fetchone()
        packed = dict(db.execute("SELECT oid, locs FROM packed")) if has_packs else {}
        packs = ({id_: keys.pack_name(pid) for id_, pid in db.execute("SELECT id, pid FROM packs")}
                 if has_packs else {})
    finally:
        db.close()

    def path_of(ino: int) -> str:
        parts = []
        while ino != 1:
            ino, name = parents[ino]
            parts.append(name)
        return "/" + "/".join(reversed(parts))

    out: dict[str, list[list[ShareLoc]]] = {}
    for ino, idx, oid, placement, digests in rows:
        if ino not in parents:
            continue  # unlinked, not yet collected
        locs = list(struct.iter_unpack(">QII", packed[oid])) if oid in packed else []
        shares = []
        for i, si in enumerate(placement):
            name, offset, length = keys.object_name(oid, i), 0, None
            if locs and locs[i][0]:
                name, offset, length = packs[locs[i][0]], locs[i][1], locs[i][2]
            shares.append(ShareLoc(path_of(ino), ino, idx, i, si, name,
                                   vol.stores[si] / object_relpath(name),
                                   bytes(digests[16 * i : 16 * i + 16]), offset, length))
        out.setdefault(shares[0].path, []).append(shares)
    return out


@dataclass(frozen=True)
class PackObject:
    """A pack object (format 4) as meta.db records it."""

    id: int
    store: int
    file: Path  # STORE/objects/<name[0]>/<name>
    size: int
    live: int
    state: int  # 0 open, 1 sealed, 2 dead


def _keys(vol: Volume):
    from fusefs.codec.keys import VolumeKeys, load_key_file

    return VolumeKeys(load_key_file(vol.key), bytes.fromhex(_volume_id(vol)))


def pack_objects(vol: Volume) -> list[PackObject]:
    """Every pack meta.db names (read-only; a daemon's uncommitted changes are not seen)."""
    import sqlite3

    keys = _keys(vol)
    db = sqlite3.connect(f"file:{vol.path / 'meta.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, pid, store, size, live, state FROM packs ORDER BY id"
                          ).fetchall()
    finally:
        db.close()
    return [PackObject(pid_, si, vol.stores[si] / object_relpath(keys.pack_name(pid)), size,
                       live, state) for pid_, pid, si, size, live, state in rows]


def packed_members(vol: Volume) -> dict[str, list[tuple[int, Path, int, int]]]:
    """File path -> (store, pack file, offset, length) of each packed share of its chunk 0
    (files none of whose shares are packed are absent)."""
    import sqlite3
    import struct

    packs = {p.id: p for p in pack_objects(vol)}
    db = sqlite3.connect(f"file:{vol.path / 'meta.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT d.name, p.locs FROM dentries d JOIN chunks c ON"
                          " c.inode = d.inode AND c.idx = 0 JOIN packed p ON p.oid = c.oid"
                          " WHERE d.parent = 1").fetchall()
    finally:
        db.close()
    out: dict[str, list[tuple[int, Path, int, int]]] = {}
    for name, locs in rows:
        out["/" + os.fsdecode(name)] = [
            (packs[pack].store, packs[pack].file, off, n)
            for pack, off, n in struct.iter_unpack(">QII", locs) if pack]
    return out


def stored_shares(vol: Volume) -> int:
    """How many shares the stores hold for the volume: share objects (every object that is
    not a pack) plus the pack members meta.db names (read-only)."""
    import sqlite3
    import struct

    packs = {p.file.name for p in pack_objects(vol)}
    objects = sum(p.name not in packs for i in range(len(vol.stores)) for p in vol.objects(i))
    db = sqlite3.connect(f"file:{vol.path / 'meta.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT locs FROM packed").fetchall()
    finally:
        db.close()
    return objects + sum(pack != 0 for (locs,) in rows
                         for pack, _, _ in struct.iter_unpack(">QII", locs))


def snapshot_shares(vol: Volume) -> set[tuple[int, str]]:
    """(store index, object name) of every share of the volume's metadata snapshots (what a
    store holds beside the shares of file chunks)."""
    from fusefs.codec.keys import VolumeKeys, load_key_file
    from fusefs.snapshots.index import snapshot_objects

    keys = VolumeKeys(load_key_file(vol.key), bytes.fromhex(_volume_id(vol)))
    return {(si, keys.object_name(oid, i))
            for oid, placement in snapshot_objects(vol.path / "snapshots.db")
            for i, si in enumerate(placement)}


def forge_digest(vol: Volume, loc: ShareLoc, data: bytes) -> None:
    """Write DATA as LOC's object (a member: over its range, same length) AND record its
    xxh3-128 as the share's checksum in meta.db (a forged checksum). Only while the volume
    is NOT mounted."""
    import sqlite3

    import xxhash

    assert loc.length in (None, len(data)), "a forged member keeps its length"
    loc.write(data)
    db = sqlite3.connect(vol.path / "meta.db")
    try:
        with db:
            (digests,) = db.execute("SELECT digests FROM chunks WHERE inode=? AND idx=?",
                                    (loc.inode, loc.chunk)).fetchone()
            digests = bytearray(digests)
            digests[16 * loc.share : 16 * loc.share + 16] = xxhash.xxh3_128_digest(data)
            db.execute("UPDATE chunks SET digests=? WHERE inode=? AND idx=?",
                       (bytes(digests), loc.inode, loc.chunk))
    finally:
        db.close()


def read_events(vol: Volume) -> list[dict]:
    """Every event of VOLUME/events.jsonl (none when the log does not exist)."""
    try:
        text = (vol.path / "events.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


SCRUB_KEYS = {"healthy", "chunks", "bytes_read", "seconds", "stores", "damaged_files",
              "unrecoverable_files", "queued_repairs", "snapshot_objects"}
SCRUB_STORE_KEYS = {"url", "state", "shares_checked", "missing", "checksum_mismatch",
                    "authentication_failure", "store_unreachable", "repaired", "queued",
                    "orphans", "orphans_removed"}


def scrub_json(target: Path | str, *args: object, timeout: float = CLI_TIMEOUT
               ) -> tuple[Result, dict]:
    """`fusefs scrub TARGET --json ARGS`: the result and its parsed report (shape checked);
    the exit status must agree with the report's `healthy`."""
    res = run_fusefs("scrub", target, "--json", *args, timeout=timeout)
    assert res.returncode in (0, 1), res.describe()
    assert "Traceback" not in res.stderr + res.stdout, res.describe()
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError("scrub --json printed no JSON object; " + res.describe()) from exc
    assert set(report) == SCRUB_KEYS, f"scrub --json keys: {sorted(report)}"
    assert isinstance(report["healthy"], bool)
    assert isinstance(report["seconds"], int | float) and report["seconds"] >= 0
    for key in ("chunks", "bytes_read", "queued_repairs", "snapshot_objects"):
        assert isinstance(report[key], int) and report[key] >= 0, (key, report[key])
    assert isinstance(report["damaged_files"], dict)
    for path, problems in report["damaged_files"].items():
        # "<inode N>": unlinked meanwhile; "<metadata snapshots>": the volume's own objects
        assert path.startswith(("/", "<inode ", "<metadata snapshots>")), path
        assert isinstance(problems, list) and problems, (path, problems)
        assert all(isinstance(p, str) and p for p in problems), problems
    assert isinstance(report["unrecoverable_files"], list)
    assert all(p.startswith(("/", "<inode ", "<metadata snapshots>"))
               for p in report["unrecoverable_files"])
    assert isinstance(report["stores"], list) and report["stores"]
    for s in report["stores"]:
        assert set(s) == SCRUB_STORE_KEYS, f"scrub --json store keys: {sorted(s)}"
        assert isinstance(s["url"], str) and isinstance(s["state"], str)
        for key in SCRUB_STORE_KEYS - {"url", "state"}:
            assert isinstance(s[key], int) and s[key] >= 0, (key, s)
    assert res.returncode == (0 if report["healthy"] else 1), res.describe()
    return res, report


class Streamer:
    """A thread reading files in a loop, training-style (sequentially, past the page cache),
    checking every byte. Failures are collected, not raised: `stop()` returns them."""

    def __init__(self, files: dict[Path, bytes], block: int = 256 * KiB) -> None:
        self.files = dict(files)
        self.block = block
        self.passes = 0  # completed passes over all files
        self.bytes = 0  # bytes read and checked
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamer", daemon=True)

    def start(self) -> Streamer:
        self._thread.start()
        return self

    def _read_one(self, path: Path, data: bytes) -> None:
        drop_cache(path)
        pos = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                buf = f.read(self.block)
                if not buf:
                    break
                if buf != data[pos : pos + len(buf)]:
                    self.errors.append(f"{path}: WRONG BYTES in [{pos}, {pos + len(buf)})")
                    return
                pos += len(buf)
                self.bytes += len(buf)
        if pos != len(data):
            self.errors.append(f"{path}: read {pos} bytes, expected {len(data)}")

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.errors) < 20:
            for path, data in self.files.items():
                if self._stop.is_set():
                    return
                try:
                    self._read_one(path, data)
                except OSError as exc:
                    self.errors.append(f"{path}: {exc!r}")
            self.passes += 1

    def wait_passes(self, n: int, timeout: float = 60) -> None:
        """Wait until N passes are complete (asserts; stops early on a failed read)."""
        wait_until(lambda: self.passes >= n or self.errors or not self._thread.is_alive(),
                   timeout)
        assert not self.errors, f"streaming reads failed: {self.errors[:5]}"
        assert self.passes >= n, f"only {self.passes} of {n} passes done in {timeout} s"

    def stop(self, timeout: float = 60) -> list[str]:
        """Stop after the current file; return the failures seen."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the streaming reader is stuck ({timeout} s)"
        return self.errors


# The actions an event may name (a closed vocabulary: `status --json` counts them for scripts).
EVENT_ACTIONS = {"healed", "queued", "unrecoverable", "reported", "removed", "bypassed",
                 "claimed", "obsolete", "read_only", "restored"}


def assert_event_vocabulary(events: list[dict]) -> None:
    """Every event has the documented fields, a snake_case kind and a documented action."""
    for e in events:
        assert {"time", "kind", "store", "object", "action"} <= set(e), f"event fields: {e}"
        assert re.fullmatch(r"[a-z_]+", str(e["kind"])), f"event kind is not an identifier: {e}"
        assert e["action"] in EVENT_ACTIONS, (
            f"event action {e['action']!r} is not one of {sorted(EVENT_ACTIONS)}: {e}")
