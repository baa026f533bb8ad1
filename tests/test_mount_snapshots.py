"""The volume lives in its stores (issue 13): metadata snapshots, `fusefs recover` on a new
host, read-only followers, rollback detection and fencing.

Two volume directories on one machine stand for two hosts: they share the same stores.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest
from helpers import (
    MiB,
    Mounter,
    Volume,
    assert_fails,
    assert_ok,
    assert_tree,
    rand_bytes,
    read_uncached,
    run_fusefs,
    scrub_json,
    tree_layout,
    wait_until,
    write_tree,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]


def recover(vol: Volume, dest: Path, *extra: object, stores: list[Path] | None = None):
    args: list[object] = ["recover", dest]
    for s in stores if stores is not None else vol.stores:
        args += ["--store", f"file://{s}"]
    return run_fusefs(*args, "--key-file", vol.key, *extra)


def as_host(vol: Volume, path: Path) -> Volume:
    """The same volume (stores, key) seen from another volume directory."""
    return Volume(path, vol.stores, vol.key, vol.k, vol.m)


def test_recover_on_a_new_host_reads_every_file(volume, mounter: Mounter,
                                                tmp_path: Path) -> None:
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    expected = write_tree(mnt, tree_layout([0, 1, 4097, MiB + 3, 3 * MiB]), seed="rec")
    os.symlink("a/target", mnt / "link")
    mounter.umount(mnt)  # publishes the final snapshot
    shutil.rmtree(vol.path)  # the host is gone

    res = assert_ok(recover(vol, tmp_path / "new"))
    assert "changes made on the old host after" in res.stdout, res.stdout
    new = as_host(vol, tmp_path / "new")
    mnt = mounter.mount(new, tmp_path / "mnt")
    assert_tree(mnt, expected, exact=False)
    assert os.readlink(mnt / "link") == "a/target"
    (mnt / "after-recovery").write_bytes(b"the new host writes")
    mounter.umount(mnt)


def test_recover_with_two_stores_damaged_or_down(volume, mounter: Mounter,
                                                 tmp_path: Path) -> None:
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    expected = write_tree(mnt, tree_layout([5, 70_000, 2 * MiB]), seed="rec2")
    mounter.umount(mnt)
    shutil.rmtree(vol.path)
    os.rename(vol.stores[1], vol.stores[1].with_name("gone"))  # down
    for p in vol.stores[3].rglob("*"):  # damaged: every object and the head flipped
        if p.is_file() and p.name != "fusefs-store":
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0xFF
            p.write_bytes(bytes(data))

    res = assert_ok(recover(vol, tmp_path / "new", stores=[vol.stores[i] for i in (0, 2, 3, 4)]))
    assert "no usable head" in res.stdout, res.stdout  # the damaged store's head is reported
    new = as_host(vol, tmp_path / "new")
    mnt = mounter.mount(new, tmp_path / "mnt")
    assert_tree(mnt, expected, exact=False)
    mounter.umount(mnt)


def test_a_small_change_uploads_a_small_part_of_a_big_database(volume, tmp_path: Path) -> None:
    """Metadata of a large volume (generated rows: 1,000,000 directory entries) is published
    in full once; after one more file only the blocks that changed go to the stores."""
    import sqlite3

    vol = volume()
    db = sqlite3.connect(vol.path / "meta.db")
    n = 1_000_000
    with db:
        series = "WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c" \
                 " WHERE value < ?) "
        db.execute(series + "INSERT INTO inodes (id, file_id, mode, uid, gid, nlink, size,"
                   " rdev, atime_ns, mtime_ns, ctime_ns) SELECT 1 + value, randomblob(16),"
                   " 33188, 0, 0, 1, 0, 0, 0, 0, 0 FROM c", (n,))
        db.execute(series + "INSERT INTO dentries (parent, name, inode) SELECT 1,"
                   " CAST('f' || value AS BLOB), 1 + value FROM c", (n,))
    db.close()
    size = (vol.path / "meta.db").stat().st_size
    first = assert_ok(run_fusefs("snapshot", vol.path, "--key-file", vol.key, timeout=300))
    full = int(first.stdout.split(":")[1].split()[0])
    assert full >= size * 0.9, (full, size)

    db = sqlite3.connect(vol.path / "meta.db")
    with db:
        db.execute("UPDATE inodes SET mtime_ns = 1 WHERE id = 500000")
    db.close()
    second = assert_ok(run_fusefs("snapshot", vol.path, "--key-file", vol.key, timeout=300))
    small = int(second.stdout.split(":")[1].split()[0])
    print(f"database {size} bytes; first snapshot uploaded {full}, the next {small}")
    assert small <= 4 * 64 * 1024 and small < size / 100, (small, size)


def test_a_follower_sees_what_the_writer_closes(volume, mounter: Mounter,
                                                tmp_path: Path) -> None:
    vol = volume(snapshot_interval=1, gc_grace=30)
    wmnt = mounter.mount(vol, tmp_path / "writer")
    first = rand_bytes(300_000, "first")
    (wmnt / "first.bin").write_bytes(first)
    assert_ok(run_fusefs("snapshot", wmnt))
    assert_ok(recover(vol, tmp_path / "follower", "--follower"))
    fol = as_host(vol, tmp_path / "follower")
    assert_fails(mounter.try_mount(fol, tmp_path / "rw"))  # a follower is read-only
    rmnt = mounter.mount(fol, tmp_path / "reader", "--read-only", "--follow")
    assert read_uncached(rmnt / "first.bin") == first

    # a file the reader holds open keeps reading what it opened after the writer deletes it
    held = open(rmnt / "first.bin", "rb")  # noqa: SIM115 - closed below
    try:
        (wmnt / "first.bin").unlink()
        second = rand_bytes(200_000, "second")
        (wmnt / "second.bin").write_bytes(second)
        assert wait_until(lambda: (rmnt / "second.bin").exists(), 10), \
            "a file closed on the writer did not appear within two snapshot intervals (+)"
        assert (rmnt / "second.bin").read_bytes() == second
        assert wait_until(lambda: not (rmnt / "first.bin").exists(), 10)
        held.seek(0)
        assert held.read() == first, "an open file stopped reading what it opened"
    finally:
        held.close()

    # the reader never sees a half-written file: while the writer writes one in pieces, the
    # reader sees no file or the whole file
    whole = rand_bytes(12 * MiB, "growing")
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(os.stat(rmnt / "growing.bin").st_size)
            except FileNotFoundError:
                seen.append(-1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with open(wmnt / "growing.bin", "wb") as f:
            for at in range(0, len(whole), MiB):
                f.write(whole[at : at + MiB])
                f.flush()
                stop.wait(0.25)  # a slow writer (pacing, not waiting): snapshots happen meanwhile
        assert wait_until(lambda: (rmnt / "growing.bin").exists(), 10)
    finally:
        stop.set()
        watcher.join(10)
    assert set(seen) <= {-1, len(whole)}, f"the reader saw partial sizes: {sorted(set(seen))}"
    assert hashlib.sha256(read_uncached(rmnt / "growing.bin")).digest() == \
        hashlib.sha256(whole).digest()
    mounter.umount(rmnt)
    mounter.umount(wmnt)


def test_a_file_closed_after_a_snapshot_with_nothing_left_to_commit_reaches_followers(
        volume, mounter: Mounter, tmp_path: Path) -> None:
    """A snapshot taken while a file is open shows it as before; its close may commit
    nothing new (fsync committed it all), and the next snapshot must still show it."""
    vol = volume(snapshot_interval=1, gc_grace=30)
    wmnt = mounter.mount(vol, tmp_path / "writer")
    assert_ok(run_fusefs("snapshot", wmnt))
    assert_ok(recover(vol, tmp_path / "follower", "--follower"))
    rmnt = mounter.mount(as_host(vol, tmp_path / "follower"), tmp_path / "reader",
                         "--read-only", "--follow")
    data = rand_bytes(100_000, "fsynced")
    with open(wmnt / "fsynced.bin", "wb") as f:
        f.write(data)
        os.fsync(f.fileno())  # size, times and chunks committed: the close has nothing left
        assert_ok(run_fusefs("snapshot", wmnt))  # shows the open file as before: absent
    assert wait_until(lambda: (rmnt / "fsynced.bin").exists(), 10), \
        "a file closed after a snapshot never reached the follower"
    assert read_uncached(rmnt / "fsynced.bin") == data
    mounter.umount(rmnt)
    mounter.umount(wmnt)


def test_old_snapshots_put_back_are_refused(volume, mounter: Mounter, tmp_path: Path) -> None:
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "a").write_bytes(b"version 1")
    mounter.umount(mnt)
    saved = tmp_path / "saved"
    for i, s in enumerate(vol.stores):  # what an attacker keeps to put back later
        shutil.copytree(s, saved / f"s{i}")
    assert_ok(recover(vol, tmp_path / "follower", "--follower"))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "b").write_bytes(b"version 2")
    mounter.umount(mnt)
    fol = as_host(vol, tmp_path / "follower")
    rmnt = mounter.mount(fol, tmp_path / "reader", "--read-only", "--follow")
    assert (rmnt / "b").read_bytes() == b"version 2"  # the follower has seen the newer one
    mounter.umount(rmnt)

    newer = [(s / "fusefs-head").read_bytes() for s in vol.stores]
    for i, s in enumerate(vol.stores):  # old heads put back in every store (the superblocks
        shutil.copy2(saved / f"s{i}" / "fusefs-head", s / "fusefs-head")  # they name remain)
    msg = assert_fails(mounter.try_mount(fol, tmp_path / "reader", "--read-only", "--follow"))
    assert "older than one this host has seen" in msg, msg

    # stores that disagree are reported by recover, which takes the newest
    (vol.stores[0] / "fusefs-head").write_bytes(newer[0])
    res = assert_ok(recover(vol, tmp_path / "fresh", "--follower"))
    for s in vol.stores[1:]:
        assert f"store file://{s} names an older snapshot" in res.stdout, res.stdout
    fresh = as_host(vol, tmp_path / "fresh")
    mnt = mounter.mount(fresh, tmp_path / "fresh-mnt", "--read-only")
    assert (mnt / "b").read_bytes() == b"version 2"
    mounter.umount(mnt)


def test_a_second_writer_fences_the_first(volume, mounter: Mounter, tmp_path: Path) -> None:
    vol = volume(snapshot_interval=1, gc_grace=5)
    old = mounter.mount(vol, tmp_path / "old")
    before = {f"f{i}": rand_bytes(100_000 + i, f"h{i}") for i in range(4)}
    for name, data in before.items():
        (old / name).write_bytes(data)
    (old / "replaced").write_bytes(b"v1")
    assert_ok(run_fusefs("snapshot", old))

    assert_ok(recover(vol, tmp_path / "new"))  # the hand-over
    new_vol = as_host(vol, tmp_path / "new")
    at_handover = {p for s in vol.stores for p in (s / "objects").rglob("*") if p.is_file()}

    def refused() -> bool:
        try:
            (old / "late").write_bytes(b"x" * 1000)
        except OSError as e:
            return e.errno in (errno.EROFS, errno.EIO)
        return False

    assert wait_until(refused, 20), "the old writer kept writing after the hand-over"
    log = (vol.path / "fusefs.log").read_text()
    assert "no longer writes" in log and "took over" in log, log[-2000:]
    assert_ok(run_fusefs("umount", old))  # the fenced writer leaves: it deletes nothing
    mounter.forget(old)
    now = {p for s in vol.stores for p in (s / "objects").rglob("*") if p.is_file()}
    assert at_handover <= now, f"the fenced writer deleted {sorted(at_handover - now)[:3]}"

    new = mounter.mount(new_vol, tmp_path / "new-mnt")
    for name, data in before.items():
        assert read_uncached(new / name) == data, name
    assert (new / "replaced").read_bytes() == b"v1"
    (new / "replaced").write_bytes(b"v2")  # the new writer writes
    res, report = scrub_json(new)
    assert report["healthy"], res.describe()
    mounter.umount(new)
    new = mounter.mount(new_vol, tmp_path / "new-mnt")
    assert (new / "replaced").read_bytes() == b"v2"
    mounter.umount(new)


def test_an_offline_scrub_keeps_the_snapshots_and_respects_roles(volume, mounter: Mounter,
                                                                tmp_path: Path) -> None:
    """`fusefs scrub VOLUME` of an unmounted volume: the metadata snapshot objects are the
    writer's (verified, never orphans: a scrub that removed them left `recover` nothing);
    a follower's directory changes nothing in the stores; a fenced writer's is refused."""
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    expected = write_tree(mnt, tree_layout([1, 4097, MiB + 3]), seed="offline")
    mounter.umount(mnt)  # publishes the final snapshot

    def listing() -> list[list[Path]]:
        return [vol.objects(i) for i in range(len(vol.stores))]

    before = listing()
    _, report = scrub_json(vol.path, "--key-file", vol.key)
    assert report["healthy"] and report["snapshot_objects"] > 0, report
    assert all(s["orphans"] == 0 for s in report["stores"]), report
    assert listing() == before

    assert_ok(recover(vol, tmp_path / "follower", "--follower"))
    shutil.rmtree(vol.stores[1] / "objects")  # damage only the writer may repair
    damaged = listing()
    _, report = scrub_json(tmp_path / "follower", "--key-file", vol.key)
    assert listing() == damaged and not report["healthy"], report

    assert_ok(recover(vol, tmp_path / "new"))  # a new writer: the old one is fenced
    recovered = listing()
    res = run_fusefs("scrub", vol.path, "--key-file", vol.key)
    assert res.returncode == 1 and "no longer the writer" in res.stderr, res.describe()
    assert listing() == recovered
    new = as_host(vol, tmp_path / "new")
    _, report = scrub_json(new.path, "--key-file", vol.key)
    assert report["healthy"] and all(s["orphans"] == 0 for s in report["stores"]), report

    shutil.rmtree(new.path)  # that host is gone too: the stores still hold everything
    assert_ok(recover(vol, tmp_path / "third"))
    mnt = mounter.mount(as_host(vol, tmp_path / "third"), tmp_path / "mnt")
    assert_tree(mnt, expected, exact=False)
    mounter.umount(mnt)
