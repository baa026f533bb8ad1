"""Store outages under a live mount (issue 3, "Done when" 3 and 4).

K=3/M=2 over 5 local stores, 64 KiB chunks, so the write quorum is K+1 = 4 stores:

- a store directory vanishes (renamed away) while a reader streams files in a loop: no read
  fails and every byte is right; new files and overwrites keep working and read back right;
  events and status show the store and the damage (queued repairs, files at risk); an EMPTY
  directory put back at the store path is claimed and refilled by `fusefs scrub MOUNTPOINT`,
  after which the volume is healthy, the store holds exactly its objects again, and after a
  remount everything reads right;
- 2 stores vanish (below the quorum): a new write fails with EIO/ENOSPC, existing files still
  read right, and once the stores are back nothing is damaged and nothing was left behind;
- a store turns read-only (read-only bind mount) or fills up (a small tmpfs): writes go on,
  the missing shares are queued and visible in status and events, and once the store is
  writable again scrub writes them and the volume is healthy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
from helpers import (
    KiB,
    MiB,
    Mounter,
    Streamer,
    Volume,
    assert_event_vocabulary,
    assert_tree,
    rand_bytes,
    read_checked,
    read_events,
    read_uncached,
    scrub_json,
    share_map,
    snapshot_shares,
    status_json,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

CHUNK = 64 * KiB


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def write_durably(path: Path, data: bytes) -> None:
    """open, write, fsync, close: every step may report the failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def overwrite_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


def assert_reads_uncached(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        got = read_uncached(root / rel)
        assert got == data, f"{rel}: read back {len(got)} bytes, not what was written"


def n_chunks(files: dict[str, bytes]) -> int:
    return sum(-(-len(data) // CHUNK) for data in files.values())


def objects_expected_on(vol: Volume, store: int) -> set[str]:
    """The objects STORE should hold: the shares of the files' chunks (their own objects or
    the packs holding them) and of the metadata snapshots."""
    chunks = {s.pack.name if s.pack else s.name for chunks in share_map(vol).values()
              for c in chunks for s in c if s.store == store}
    return chunks | {name for si, name in snapshot_shares(vol) if si == store}


def store_events(vol: Volume, store: int, kind: str) -> list[dict]:
    url = vol.store_url(store)
    return [e for e in read_events(vol) if e.get("store") == url and e.get("kind") == kind]


def test_store_removed_while_streaming(volume, mounter: Mounter, tmp_path: Path):
    vol = volume()  # 1 MiB chunks
    mnt = mounter.mount(vol, tmp_path / "mnt")
    # more than the daemon's 64 MiB plaintext cache, so every pass reads from the stores
    streamed = {f"train/shard{i}.bin": rand_bytes(8 * MiB + 1000 * i, f"shard{i}")
                for i in range(9)}
    before = {"ow-inplace.bin": rand_bytes(3 * MiB, "ow1"),
              "ow-trunc.bin": rand_bytes(3 * MiB + 5, "ow2")}
    write_files(mnt, {**streamed, **before})
    reader = Streamer({mnt / rel: data for rel, data in streamed.items()}, block=MiB).start()
    try:
        reader.wait_passes(1)
        victim = 2
        store = vol.stores[victim]
        os.rename(store, store.with_name(store.name + "-removed"))
        n = reader.passes
        reader.wait_passes(n + 2)  # whole passes with the store gone

        # writes continue: new files, an in-place overwrite, a truncating overwrite
        after = {"new/a.bin": rand_bytes(5 * MiB + 1, "a"), "new/b.bin": b"small",
                 "ow-inplace.bin": rand_bytes(3 * MiB, "ow1-v2"),
                 "ow-trunc.bin": rand_bytes(MiB + 7, "ow2-v2")}
        write_files(mnt, {k: v for k, v in after.items() if k.startswith("new/")})
        overwrite_in_place(mnt / "ow-inplace.bin", after["ow-inplace.bin"])
        (mnt / "ow-trunc.bin").write_bytes(after["ow-trunc.bin"])
        assert_reads_uncached(mnt, after)

        st = status_json(mnt)
        url = vol.store_url(victim)
        assert st["events"]["by_store"].get(url, {}).get("store_unreachable", 0) >= 1, (
            f"status does not show {url} unreachable: {st['events']}")
        assert st["repairs_queued"] > 0, "the shares missing from the writes are not queued"
        assert {"/new/a.bin", "/ow-inplace.bin"} <= set(st["files_at_risk"]), st
        bypassed = store_events(vol, victim, "store_unreachable")
        assert any(e["action"] == "bypassed" for e in bypassed), bypassed
        stores = {s["url"]: s for s in st["stores"]}
        assert stores[url]["state"] == "unavailable", stores[url]

        # an EMPTY directory comes back at the store path: scrub claims and refills it
        store.mkdir()
        res, report = scrub_json(mnt)
        assert res.returncode == 0 and report["healthy"], res.describe()
        rep = report["stores"][victim]
        assert rep["url"] == url and rep["state"] == "ok", rep
        assert rep["repaired"] > 0 and rep["queued"] == 0, rep
        assert report["queued_repairs"] == 0
        claimed = store_events(vol, victim, "store_replaced")
        assert [e["action"] for e in claimed] == ["claimed"], claimed
        assert (store / "fusefs-store").is_file(), "the store's marker was not rewritten"
        n = reader.passes
        reader.wait_passes(n + 1)
    finally:
        errors = reader.stop()
    assert not errors, f"streaming reads failed during the outage: {errors[:5]}"
    assert reader.passes >= 4

    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 0 and report["healthy"], res.describe()
    want = objects_expected_on(vol, victim)
    assert want and {p.name for p in vol.objects(victim)} == want, (
        "the refilled store does not hold exactly its share objects")
    st = status_json(mnt)
    assert st["repairs_queued"] == 0 and st["files_at_risk"] == [], st

    mounter.umount(mnt)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, {**streamed, **before, **after})
    mounter.umount(mnt)
    assert_event_vocabulary(read_events(vol))


def test_below_write_quorum(volume, mounter: Mounter, tmp_path: Path):
    vol = volume(chunk_size="64K")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = {f"f{i}.bin": rand_bytes(3 * CHUNK + i, f"q{i}") for i in range(3)}
    write_files(mnt, files)
    mounter.umount(mnt)
    mnt = mounter.mount(vol, tmp_path / "mnt")  # nothing cached: reads go to the stores
    gone = []
    for i in (1, 3):
        away = vol.stores[i].with_name(vol.stores[i].name + "-removed")
        os.rename(vol.stores[i], away)
        gone.append((away, vol.stores[i]))

    with pytest.raises(OSError) as info:
        write_durably(mnt / "new.bin", rand_bytes(4 * CHUNK, "new"))
    assert info.value.errno in (errno.EIO, errno.ENOSPC), (
        f"a write below the quorum failed with {info.value!r}, expected EIO or ENOSPC")
    assert_reads_uncached(mnt, files)  # 3 stores left: everything stored still reads

    for away, path in gone:
        os.rename(away, path)
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    for s in report["stores"]:
        assert s["orphans"] == 0, f"the failed write left objects behind: {s}"
    assert_reads_uncached(mnt, files)
    mounter.umount(mnt)
    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert res.returncode == 0, res.describe()
    assert_event_vocabulary(read_events(vol))


def test_shares_missing_from_writes_are_events(volume, mounter: Mounter, tmp_path: Path):
    """Each share a write could not store is on record: event (store, object, file, action
    "queued") and status (file at risk); once the store is back, scrub writes it ("healed")."""
    vol = volume(chunk_size="64K")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    victim = 4
    away = vol.stores[victim].with_name(vol.stores[victim].name + "-removed")
    os.rename(vol.stores[victim], away)
    files = {"w.bin": rand_bytes(3 * CHUNK + 1, "w"), "v.bin": rand_bytes(100, "v")}
    write_files(mnt, files)
    st = status_json(mnt)
    assert st["repairs_queued"] == n_chunks(files), st
    assert set(st["files_at_risk"]) == {"/w.bin", "/v.bin"}, st

    url = vol.store_url(victim)
    lost = [s for path, chunks in share_map(vol).items() for c in chunks for s in c
            if s.store == victim]
    assert len(lost) == n_chunks(files)
    events = read_events(vol)
    assert_event_vocabulary(events)
    unrecorded = [f"{s.path} chunk {s.chunk} ({s.name})" for s in lost
                  if not any(e.get("object") == s.name and e.get("file") == s.path
                             and e["store"] == url and e["action"] == "queued"
                             for e in events)]
    os.rename(away, vol.stores[victim])
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    events = read_events(vol)
    for s in lost:
        assert any(e.get("object") == s.name and e.get("file") == s.path and e["store"] == url
                   and e["action"] == "healed" for e in events), f"no 'healed' event for {s}"
    mounter.umount(mnt)
    assert not unrecorded, (
        "shares a write could not store (store gone) have no event naming store, object, "
        f"file and action 'queued': {unrecorded}")


# ------------------------------------------------------------------------------------------
# Read-only and full stores (kernel mounts over store directories: root only)
# ------------------------------------------------------------------------------------------


def _sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def store_mounts():
    """mount(args..., target): a kernel mount over a store directory, always unmounted at
    teardown (requested before `mounter`, so it outlives the fusefs mount)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (bind and tmpfs mounts over store directories)")
    done: list[Path] = []

    def mount(*args: str, target: Path) -> None:
        res = _sh("mount", *args, str(target))
        if res.returncode != 0:
            pytest.skip(f"cannot mount {' '.join(args)} on {target}: {res.stderr.strip()}")
        if target not in done:  # (a remount changes the mount already there)
            done.append(target)

    def umount(target: Path) -> None:
        res = _sh("umount", str(target))
        assert res.returncode == 0, f"umount {target}: {res.stderr}"
        done.remove(target)

    mount.umount = umount  # type: ignore[attr-defined]
    yield mount
    for target in reversed(done):
        if _sh("umount", str(target)).returncode != 0:
            _sh("umount", "-l", str(target))


def test_read_only_store(store_mounts, mounter: Mounter, volume, tmp_path: Path):
    # share objects: a read-only bind mount refuses the creates of new objects, but not
    # appends through a pack descriptor opened before it (same file: nothing is lost)
    vol = volume(chunk_size="64K", pack_below="0")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    old = {f"old{i}.bin": rand_bytes(2 * CHUNK + i, f"ro-old{i}") for i in range(3)}
    write_files(mnt, old)
    ro = 1
    store_mounts("--bind", str(vol.stores[ro]), target=vol.stores[ro])
    store_mounts("-o", "remount,bind,ro", target=vol.stores[ro])
    with pytest.raises(OSError):
        (vol.stores[ro] / "probe").write_bytes(b"x")

    new = {f"new{i}.bin": rand_bytes(3 * CHUNK + i, f"ro-new{i}") for i in range(3)}
    write_files(mnt, new)  # quorum: 4 of 5 stores take a share
    old["old0.bin"] = rand_bytes(2 * CHUNK, "ro-old0-v2")
    overwrite_in_place(mnt / "old0.bin", old["old0.bin"])
    assert_reads_uncached(mnt, {**old, **new})

    st = status_json(mnt)
    url = vol.store_url(ro)
    assert st["events"]["by_store"].get(url, {}).get("store_unreachable", 0) >= 1, st["events"]
    # one share of every chunk written since is missing
    assert st["repairs_queued"] == n_chunks(new) + n_chunks({"old0.bin": old["old0.bin"]}), st
    assert {f"/{rel}" for rel in new} | {"/old0.bin"} <= set(st["files_at_risk"]), st
    res, report = scrub_json(mnt)  # still read-only: nothing can be written there
    assert res.returncode == 1 and report["queued_repairs"] > 0, res.describe()
    assert report["stores"][ro]["state"] != "ok", report["stores"][ro]

    store_mounts.umount(vol.stores[ro])  # writable again
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert report["queued_repairs"] == 0
    st = status_json(mnt)
    assert st["repairs_queued"] == 0 and st["files_at_risk"] == [], st
    assert_reads_uncached(mnt, {**old, **new})
    mounter.umount(mnt)  # the replaced version of old0.bin is deleted at the durable point
    assert {p.name for p in vol.objects(ro)} == objects_expected_on(vol, ro)
    mnt = mounter.mount(vol, tmp_path / "mnt")  # nothing cached: what the stores hold
    assert_tree(mnt, {**old, **new})
    mounter.umount(mnt)
    assert_event_vocabulary(read_events(vol))


def test_full_store(store_mounts, mounter: Mounter, volume, tmp_path: Path):
    vol = volume(chunk_size="64K")
    full = 3
    store = vol.stores[full]
    marker = (store / "fusefs-store").read_bytes()  # init wrote it; move the store to tmpfs
    for p in sorted(store.rglob("*"), reverse=True):
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    store_mounts("-t", "tmpfs", "-o", "size=2m", "tmpfs", target=store)
    (store / "fusefs-store").write_bytes(marker)

    mnt = mounter.mount(vol, tmp_path / "mnt")
    old = {f"old{i}.bin": rand_bytes(2 * CHUNK + i, f"full-old{i}") for i in range(2)}
    write_files(mnt, old)
    fd = os.open(store / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * (64 * KiB)):
                pass
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        (store / "probe").write_bytes(b"\0" * 8192)
    assert info.value.errno == errno.ENOSPC

    new = {f"new{i}.bin": rand_bytes(4 * CHUNK + i, f"full-new{i}") for i in range(3)}
    write_files(mnt, new)  # quorum: 4 of 5 stores take a share
    assert_reads_uncached(mnt, {**old, **new})

    st = status_json(mnt)
    url = vol.store_url(full)
    kinds = st["events"]["by_store"].get(url, {})
    assert kinds.get("store_full", 0) + kinds.get("store_unreachable", 0) >= 1, st["events"]
    events = [e for e in read_events(vol) if e.get("store") == url]
    assert any(e["kind"] == "store_full" or "full" in (e.get("detail") or "")
               for e in events), f"no event says {url} is full: {events}"
    assert_event_vocabulary(events)
    assert st["repairs_queued"] == n_chunks(new), st  # one share of every new chunk
    assert {f"/{rel}" for rel in new} <= set(st["files_at_risk"]), st
    res, report = scrub_json(mnt)  # still full
    assert res.returncode == 1 and report["queued_repairs"] > 0, res.describe()

    (store / "filler").unlink()
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    st = status_json(mnt)
    assert st["repairs_queued"] == 0 and st["files_at_risk"] == [], st
    assert_reads_uncached(mnt, {**old, **new})
    mounter.umount(mnt)
    assert {p.name for p in vol.objects(full)} == objects_expected_on(vol, full)
    mnt = mounter.mount(vol, tmp_path / "mnt")  # nothing cached: what the stores hold
    assert_tree(mnt, {**old, **new})
    mounter.umount(mnt)
    assert_event_vocabulary(read_events(vol))


def test_files_at_risk_are_the_ones_still_unrecoverable(volume, mounter: Mounter,
                                                        tmp_path: Path):
    """A file whose chunk a read found unrecoverable stays "at risk" in status until the
    damage is gone: rewriting the file (same size, same chunk version number) or deleting
    it takes it off the list; the file left alone stays on it."""
    vol = volume(chunk_size="64K")
    files = {"keep.bin": rand_bytes(CHUNK, "keep"), "rewrite.bin": rand_bytes(CHUNK, "rw"),
             "delete.bin": rand_bytes(100, "del")}
    mnt = mounter.mount(vol, tmp_path / "mnt")
    write_files(mnt, files)
    mounter.umount(mnt)
    for i in (0, 1, 2):  # 3 of 5 shares of every chunk gone: fewer than K=3 remain
        for p in vol.objects(i):
            p.unlink()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    for rel in files:
        assert read_checked(mnt / rel, files[rel]) == "eio", rel
    assert set(status_json(mnt)["files_at_risk"]) == {"/keep.bin", "/rewrite.bin",
                                                      "/delete.bin"}
    (mnt / "rewrite.bin").write_bytes(rand_bytes(CHUNK, "rw2"))  # O_TRUNC: version 1 again
    (mnt / "delete.bin").unlink()
    st = status_json(mnt)
    assert st["files_at_risk"] == ["/keep.bin"], st
    assert st["events"]["by_action"]["unrecoverable"] >= 3  # the record itself stays
    assert (mnt / "rewrite.bin").read_bytes() == rand_bytes(CHUNK, "rw2")
    mounter.umount(mnt)


def test_files_are_no_longer_at_risk_once_the_stores_come_back(volume, mounter: Mounter,
                                                               tmp_path: Path):
    """Three of five stores go away: reads fail (EIO, "unrecoverable"). They come back by
    themselves (nothing is healed: the shares were never damaged); once scrub reports the
    volume healthy, status lists no file at risk. The events stay as history."""
    vol = volume(chunk_size="64K")
    files = {f"f{i}.bin": rand_bytes(CHUNK + 1000 * i, f"back{i}") for i in range(4)}
    mnt = mounter.mount(vol, tmp_path / "mnt")
    write_files(mnt, files)
    mounter.umount(mnt)
    mnt = mounter.mount(vol, tmp_path / "mnt")  # nothing cached
    gone = []
    for i in (0, 1, 2):
        away = vol.stores[i].with_name(vol.stores[i].name + "-away")
        os.rename(vol.stores[i], away)
        gone.append((away, vol.stores[i]))
    for rel, data in files.items():
        assert read_checked(mnt / rel, data) == "eio", rel
    assert set(status_json(mnt)["files_at_risk"]) == {f"/{rel}" for rel in files}
    for away, path in gone:
        os.rename(away, path)
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    st = status_json(mnt)
    assert st["files_at_risk"] == [], st
    assert st["events"]["by_action"]["unrecoverable"] >= len(files)
    assert_reads_uncached(mnt, files)
    mounter.umount(mnt)
