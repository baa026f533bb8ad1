"""A crash of the daemon loses nothing acknowledged (issue 2, "Bad input and faults").

Files are written and fsync'd (or closed: close() is acknowledged too), the daemon is killed
with SIGKILL (pid from VOLUME/fusefs.pid), the dead mount is cleaned up with
`fusermount3 -uz`, and a new mount must show every acknowledged file intact with consistent
metadata (listing, sizes, links), accept new writes, and unmount cleanly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

import pytest
from helpers import (
    MiB,
    assert_ok,
    kill_daemon,
    rand_bytes,
    read_uncached,
    run_fusefs,
    scrub_json,
    status_json,
    wait_until,
)

pytestmark = pytest.mark.mount


def write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_kill9_after_fsync_loses_nothing(tmp_path: Path, volume, mounter):
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "dir" / "sub").mkdir(parents=True)
    cs = int(status_json(mnt)["chunk_size"])
    files = {
        "empty": b"",
        "one": b"1",
        "dir/small": rand_bytes(4097, "c1"),
        "dir/sub/multi-chunk": rand_bytes(2 * cs + 17, "c2"),
        "dir/sub/mib": rand_bytes(MiB, "c3"),
    }
    for rel, data in files.items():
        write_synced(mnt / rel, data)
    # closed without fsync: acknowledged as well
    (mnt / "dir" / "closed-only").write_bytes(rand_bytes(300_000, "c4"))
    files["dir/closed-only"] = (mnt / "dir" / "closed-only").read_bytes()
    # metadata changes, made durable by fsync of the file / directory
    os.rename(mnt / "dir" / "small", mnt / "dir" / "renamed")
    files["dir/renamed"] = files.pop("dir/small")
    os.link(mnt / "dir" / "renamed", mnt / "hardlink")
    files["hardlink"] = files["dir/renamed"]
    os.symlink("dir/renamed", mnt / "symlink")
    os.truncate(mnt / "dir" / "sub" / "mib", 1000)
    files["dir/sub/mib"] = files["dir/sub/mib"][:1000]
    with open(mnt / "one", "ab") as f:
        f.write(b"23")
        f.flush()
        os.fsync(f.fileno())
    files["one"] = b"123"
    fsync_dir(mnt / "dir")
    fsync_dir(mnt)
    kill_daemon(vol.path, mnt, mounter)

    mnt2 = mounter.mount(vol, tmp_path / "mnt2")
    for rel, data in files.items():
        p = mnt2 / rel
        assert os.stat(p).st_size == len(data), rel
        assert read_uncached(p) == data, f"{rel} differs after the crash"
    assert sorted(os.listdir(mnt2)) == ["dir", "empty", "hardlink", "one", "symlink"]
    assert sorted(os.listdir(mnt2 / "dir")) == ["closed-only", "renamed", "sub"]
    assert sorted(os.listdir(mnt2 / "dir" / "sub")) == ["mib", "multi-chunk"]
    assert os.stat(mnt2 / "hardlink").st_nlink == 2
    assert os.readlink(mnt2 / "symlink") == "dir/renamed"
    # the volume keeps working: write, then a clean unmount and another mount
    (mnt2 / "after-crash").write_bytes(b"new data")
    mounter.umount(mnt2)
    mnt3 = mounter.mount(vol, tmp_path / "mnt3")
    assert (mnt3 / "after-crash").read_bytes() == b"new data"
    assert (mnt3 / "dir" / "renamed").read_bytes() == files["dir/renamed"]
    mounter.umount(mnt3)
    assert_ok(run_fusefs("status", vol.path, "--json"))


def test_kill9_during_unsynced_write(tmp_path: Path, volume, mounter):
    """A file being written at the crash keeps its fsync'd prefix; nothing else is broken."""
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    keep = rand_bytes(2 * MiB + 5, "keep")
    write_synced(mnt / "keep", keep)
    data = rand_bytes(4 * MiB, "inflight")
    fd = os.open(mnt / "inflight", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data[:MiB])
        os.fsync(fd)
        os.write(fd, data[MiB:])  # not fsync'd, not closed
        kill_daemon(vol.path, mnt, mounter)
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO), exc
    mnt2 = mounter.mount(vol, tmp_path / "mnt2")
    assert sorted(os.listdir(mnt2)) == ["inflight", "keep"]
    assert read_uncached(mnt2 / "keep") == keep
    size = os.stat(mnt2 / "inflight").st_size
    assert MiB <= size <= len(data), size
    got = read_uncached(mnt2 / "inflight")  # must not fail: no dangling chunk references
    assert len(got) == size
    assert got[:MiB] == data[:MiB], "the fsync'd prefix was lost"
    for off in range(MiB, size, 4096):  # anything beyond it: the written bytes, or zeros
        piece = got[off:off + 4096]
        assert piece in (data[off:off + len(piece)], bytes(len(piece))), f"garbage at {off}"
    # the file can be rewritten and the mount unmounts cleanly
    (mnt2 / "inflight").write_bytes(b"rewritten")
    mounter.umount(mnt2)


def test_mount_after_crash_with_stale_pid_file(tmp_path: Path, volume, mounter):
    """A stale fusefs.pid left by a killed daemon must not block the next mount."""
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    write_synced(mnt / "f", b"data")
    kill_daemon(vol.path, mnt, mounter)
    mnt2 = mounter.mount(vol, tmp_path / "mnt")  # same mountpoint again
    assert (mnt2 / "f").read_bytes() == b"data"
    mounter.umount(mnt2)


def write_until_stopped(path: Path, stop: threading.Event) -> None:
    block = rand_bytes(MiB, "tmp")
    with contextlib.suppress(OSError), open(path, "wb") as f:
        while not stop.is_set():
            f.write(block)


def temporaries(vol) -> list[Path]:
    return [p for s in vol.stores for p in s.rglob(".tmp-*")]


def test_kill9_during_share_writes_leaves_no_temporary_behind(tmp_path: Path, volume,
                                                             mounter):
    """A daemon killed between creating a share's temporary file and renaming it leaves the
    temporary behind; the next mount removes it, and scrub finds none."""
    vol = volume(chunk_size="1M")
    mnt = tmp_path / "mnt"
    for _attempt in range(20):
        mounter.mount(vol, mnt)
        stop = threading.Event()
        writer = threading.Thread(target=write_until_stopped, args=(mnt / "big.bin", stop),
                                  daemon=True)
        writer.start()
        wait_until(lambda w=writer: temporaries(vol) or not w.is_alive(), 30,
                   interval=0.0005)
        kill_daemon(vol.path, mnt, mounter, lambda w=writer, s=stop: (s.set(), w.join(30)))
        if temporaries(vol):
            break
    left = temporaries(vol)
    assert left, "no kill ever caught a share write half-done: the test proves nothing"

    mounter.mount(vol, mnt)
    assert temporaries(vol) == [], "the mount left stale temporaries"
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert temporaries(vol) == []
    mounter.umount(mnt)
