"""Pack objects (format 4, issue 17): small chunks' shares appended to one object per store.

Through real mounts over real stores: a packed volume round-trips (the mount, the direct API
and the reference decoder read it); damage to a pack (a flipped byte, a truncated pack, packs
deleted on M stores) costs only the members it hits, which are rebuilt, healed into new
pack members (the damaged pack is never written) and recorded as events; a kill -9 during a
packed ingest loses no file whose close returned; compaction interrupted by kill -9 loses
nothing and leaves no orphan after the next scrub; a named version keeps packed files
readable after the live files are deleted, compaction and garbage collection ran.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from helpers import (
    CLI_TIMEOUT,
    FUSEFS,
    KiB,
    Mounter,
    Volume,
    assert_fails,
    assert_ok,
    kill_daemon,
    mixed_volume,
    pack_objects,
    packed_members,
    rand_bytes,
    read_events,
    read_uncached,
    run_fusefs,
    scrub_json,
    status_json,
    wait_until,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

DECODER = Path(__file__).parent / "refdecoder.py"


def small_files(n: int, seed: str) -> dict[str, bytes]:
    """N files of 1-4 KiB (the sizes vary with the index)."""
    return {f"f{i:05d}": rand_bytes(1024 + (i * 997) % (3 * 1024), (seed, i)) for i in range(n)}


def write_files(top: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (top / name).write_bytes(data)


def assert_files(top: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert read_uncached(top / name) == data, name


def packed_volume(volume, **kwargs) -> Volume:
    return volume(pack_below="256K", **kwargs)


def damage_events(vol: Volume) -> list[dict]:
    return [e for e in read_events(vol) if e["kind"] != "unexpected_object"]


def test_a_packed_volume_round_trips(volume, mounter: Mounter, tmp_path: Path) -> None:
    vol = packed_volume(volume, chunk_size="1M")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = small_files(300, "rt")
    files["big"] = rand_bytes(3 * 1024 * KiB + 5, "big")  # 4 chunks: 3 objects-sized, 1 packed
    write_files(mnt, files)
    mounter.umount(mnt)
    packs = pack_objects(vol)
    assert {p.store for p in packs} == set(range(5)) and all(p.state == 1 for p in packs)
    for si in range(5):  # the small files' 300 shares are in one pack; 3 big shares each
        assert len(vol.objects(si)) <= 10, vol.objects(si)
    assert all(p.file.stat().st_size >= p.size for p in packs)
    st = status_json(vol.path)  # status tells the packs from the other objects
    assert st["packs"] == {"pack_below": 256 * KiB, "count": len(packs),
                           "bytes": sum(p.size for p in packs),
                           "live_bytes": sum(p.live for p in packs)}
    assert [s["packs"] for s in st["stores"]] == [1] * 5
    text = assert_ok(run_fusefs("status", vol.path)).stdout
    assert f"packs      {len(packs)} (" in text and "objects (1 of them packs)" in text

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt, files)
    (mnt / "late").write_bytes(b"written after a remount")  # a new pack: the old stay sealed
    with fusefs_direct(vol) as direct:
        assert direct.read_bytes("/f00007") == files["f00007"]
        assert direct.read_bytes("/big") == files["big"]
    mounter.umount(mnt)
    assert len(pack_objects(vol)) == len(packs) + 5
    out = tmp_path / "decoded"
    res = subprocess.run([sys.executable, str(DECODER), "extract", vol.path, out,
                          "--key-file", vol.key], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stderr) == (0, "")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        **files, "late": b"written after a remount"}
    assert damage_events(vol) == []


def fusefs_direct(vol: Volume):
    import fusefs

    return fusefs.open_volume(vol.path, key_file=vol.key)


def flip(pack: Path, at: int) -> None:
    raw = bytearray(pack.read_bytes())
    raw[at] ^= 0x40
    pack.write_bytes(raw)


def test_a_flipped_pack_byte_damages_only_the_members_it_hits(volume, mounter: Mounter,
                                                            tmp_path: Path) -> None:
    vol = packed_volume(volume)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = small_files(60, "flip")
    write_files(mnt, files)
    mounter.umount(mnt)
    members = packed_members(vol)
    store, pack, offset, length = members["/f00021"][0]  # a data share: a read finds it
    pstore, ppack, poffset, plength = members["/f00042"][4]  # a parity share: scrub does
    flip(pack, offset + length // 2)
    flip(ppack, poffset)
    damaged = pack.read_bytes()

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt, files)  # reads the data shares: finds the first member only
    res, report = scrub_json(mnt)  # from whole packs: finds and heals the parity member
    assert report["healthy"] and report["chunks"] == 60, res.describe()
    assert sum(s["checksum_mismatch"] for s in report["stores"]) == 1, report
    mounter.umount(mnt)
    events = damage_events(vol)
    assert [(e["kind"], e["action"], e["file"], e["store"], e["object"]) for e in events] == [
        ("checksum_mismatch", "healed", "/f00021", vol.store_url(store),
         f"{pack.name}@{offset}+{length}"),
        ("checksum_mismatch", "healed", "/f00042", vol.store_url(pstore),
         f"{ppack.name}@{poffset}+{plength}")]
    assert pack.read_bytes() == damaged  # a pack is never written again: the copy is elsewhere
    moved = packed_members(vol)["/f00021"][0]
    assert moved[0] == store and moved[1:] != (pack, offset, length)
    assert all(packed_members(vol)[f] == m for f, m in members.items()
               if f not in ("/f00021", "/f00042"))


def test_truncated_and_deleted_packs_are_rebuilt_and_healed(volume, mounter: Mounter,
                                                           tmp_path: Path) -> None:
    vol = packed_volume(volume)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = small_files(80, "trunc")
    write_files(mnt, files)
    mounter.umount(mnt)
    packs = {p.store: p for p in pack_objects(vol)}
    os.truncate(packs[0].file, packs[0].size // 2)  # half the members cut off
    packs[1].file.unlink()  # M = 2 stores damaged: every chunk still has K good shares
    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)  # offline
    assert res.returncode == 1 and report["stores"][1]["missing"] == 80, res.describe()
    assert 0 < report["stores"][0]["missing"] + report["stores"][0]["checksum_mismatch"] < 80
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt, files)
    res, report = scrub_json(mnt)
    assert report["healthy"], res.describe()
    res, report = scrub_json(mnt)
    assert report["healthy"] and report["stores"][0]["missing"] == 0, res.describe()
    assert not any(s["checksum_mismatch"] or s["missing"] for s in report["stores"])
    mounter.umount(mnt)
    events = [e for e in damage_events(vol) if e["action"] != "reported"]  # (offline scrub)
    assert {e["store"] for e in events} == {vol.store_url(0), vol.store_url(1)}
    assert {e["action"] for e in events} == {"healed"}
    assert sum(e["store"] == vol.store_url(1) for e in events) == 80  # every member
    lost = [e for e in events if e["store"] == vol.store_url(0)]
    assert 0 < len(lost) < 80 and {e["kind"] for e in lost} <= {"missing", "checksum_mismatch"}
    # The members cut off were copied away; those still whole stay where they were.
    truncated = next(p for p in pack_objects(vol) if p.id == packs[0].id)
    assert 0 < truncated.live < truncated.size and packs[0].file.exists()
    assert packs[1].id not in {p.id for p in pack_objects(vol)}  # emptied, so forgotten
    # Both stores lost a store's worth of shares once more: the rest still reads.
    for p in pack_objects(vol):
        if p.store in (2, 3):
            p.file.unlink()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt, files)


def test_a_scrub_while_files_go_into_the_open_pack_finds_them_whole(
        volume, mounter: Mounter, tmp_path: Path) -> None:
    """A mounted scrub reads each pack whole, once, including the open pack the mount is
    appending to: files written after that read (later inodes: the scrub comes to them
    after) have members past the bytes it holds, which must be read from the store, not
    taken as missing (they were once reported missing on every store: unrecoverable)."""
    vol = packed_volume(volume)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = small_files(20, "before")
    write_files(mnt, files)
    # 20 chunks of ~7 KB of shares at 0.05 MB/s: ~3 s, so the writes below land while the
    # scrub is still in its first batch (the one whose packs it read)
    scrub = subprocess.Popen([sys.executable, "-m", "fusefs", "scrub", str(mnt), "--json",
                              "--no-repair", "--rate", "0.05"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd="/", env={**os.environ, "FUSEFS_PROGRESS_INTERVAL": "0"})
    try:
        assert scrub.stderr is not None
        first = scrub.stderr.readline()  # a chunk verified: its batch's packs were read
        assert first.startswith("scrub"), first
        later = {f"later-{n}": d for n, d in small_files(5, "later").items()}
        write_files(mnt, later)
        out, err = scrub.communicate(timeout=60)
    finally:
        if scrub.poll() is None:
            scrub.kill()
            scrub.wait(10)
    report = json.loads(out)
    assert report["chunks"] == 25, ("the scrub ended before the later files were written: "
                                    f"it proves nothing {report['chunks']}")
    assert report["healthy"] and scrub.returncode == 0, (out, err)
    assert damage_events(vol) == []
    assert_files(mnt, {**files, **later})


def test_packs_damaged_on_more_than_m_stores_give_eio_never_wrong_bytes(
        volume, mounter: Mounter, tmp_path: Path) -> None:
    vol = packed_volume(volume)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = small_files(20, "eio")
    write_files(mnt, files)
    mounter.umount(mnt)
    packs = {p.store: p for p in pack_objects(vol)}
    packs[0].file.unlink()
    os.truncate(packs[1].file, 0)
    raw = bytearray(packs[2].file.read_bytes())  # every byte flipped: every member bad
    packs[2].file.write_bytes(bytes(b ^ 0xFF for b in raw))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    for name in files:
        with pytest.raises(OSError) as info:
            read_uncached(mnt / name)
        assert info.value.errno == errno.EIO, name
    res, report = scrub_json(mnt)
    assert res.returncode == 1 and len(report["unrecoverable_files"]) == 20, res.describe()
    mounter.umount(mnt)
    assert packs[2].file.read_bytes() == bytes(b ^ 0xFF for b in raw)  # nothing rewritten
    unrecoverable = [e for e in read_events(vol) if e["action"] == "unrecoverable"]
    assert {e["file"] for e in unrecoverable} == {f"/{n}" for n in files}


def test_kill9_during_a_packed_ingest_keeps_every_closed_file(volume, mounter: Mounter,
                                                              tmp_path: Path) -> None:
    vol = packed_volume(volume, pack_size="64K")  # packs rotate during the ingest too
    mnt = mounter.mount(vol, tmp_path / "mnt")
    closed: dict[str, bytes] = {}
    stop = threading.Event()

    def ingest() -> None:
        for name, data in small_files(5000, "ingest").items():
            if stop.is_set():
                return
            try:
                (mnt / name).write_bytes(data)
            except OSError:
                return  # the daemon is gone
            closed[name] = data  # close() returned: acknowledged

    writer = threading.Thread(target=ingest, daemon=True)
    writer.start()
    assert wait_until(lambda: len(closed) >= 400 or not writer.is_alive(), 60)
    def stop_writing() -> None:
        stop.set()
        writer.join(30)
        assert not writer.is_alive()

    kill_daemon(vol.path, mnt, mounter, stop_writing)
    acknowledged = dict(closed)
    assert len(acknowledged) >= 400

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt, acknowledged)
    res, report = scrub_json(mnt)
    assert report["healthy"], res.describe()
    assert not any(s["orphans"] for s in report["stores"]), report
    (mnt / "after").write_bytes(b"after the crash")
    mounter.umount(mnt)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert read_uncached(mnt / "after") == b"after the crash"


def test_compaction_interrupted_by_kill9_loses_nothing(volume, mounter: Mounter,
                                                      tmp_path: Path) -> None:
    vol = packed_volume(volume, pack_size="64K")
    files = small_files(600, "compact")
    kept = {n: d for i, (n, d) in enumerate(files.items()) if i % 4 == 0}
    mnt = mounter.mount(vol, tmp_path / "mnt")
    write_files(mnt, files)
    for name in files.keys() - kept.keys():
        (mnt / name).unlink()
    mounter.umount(mnt)  # the deletes are durable: packs three quarters dead
    before = pack_objects(vol)
    assert len(before) >= 5 * 8 and all(p.live < p.size / 2 for p in before)

    interrupted = False
    for _attempt in range(5):
        mnt = mounter.mount(vol, tmp_path / "mnt")
        old = {p.id for p in pack_objects(vol)}
        compact = subprocess.Popen([sys.executable, "-m", "fusefs", "compact", str(mnt)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})

        def mid_compaction(old: set[int] = old) -> bool:  # an old pack emptied, not deleted
            return any(p.state == 2 and p.id in old for p in pack_objects(vol))

        wait_until(lambda c=compact: mid_compaction() or c.poll() is not None, 30,
                   interval=0.0005)
        interrupted = interrupted or compact.poll() is None
        kill_daemon(vol.path, mnt, mounter)
        compact.communicate(timeout=30)
        if interrupted:
            break
    assert interrupted, "no kill caught a compaction in progress: the test proves nothing"

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert sorted(os.listdir(mnt)) == sorted(kept)
    assert_files(mnt, kept)
    res, report = scrub_json(mnt)  # (repairs, and removes orphans if there were any)
    assert report["healthy"], res.describe()
    res, report = scrub_json(mnt)
    assert report["healthy"] and not any(s["orphans"] for s in report["stores"]), report
    res = assert_ok(run_fusefs("compact", mnt, "--json"))  # and compaction finishes
    assert json.loads(res.stdout)["packs"] >= 0
    mounter.umount(mnt)
    after = pack_objects(vol)
    assert sum(p.size for p in after) < sum(p.size for p in before) / 2
    assert all(p.file.exists() for p in after)
    named = {p.file.name for p in after}
    for si in range(5):  # every pack object in a store is one meta.db names
        assert {o.name for o in vol.objects(si) if o.stat().st_size != 0} >= {
            p.file.name for p in after if p.store == si}
    assert named
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt, kept)
    assert damage_events(vol) == []


def test_a_version_keeps_packed_files_after_deletes_compaction_and_gc(
        volume, mounter: Mounter, tmp_path: Path) -> None:
    vol = packed_volume(volume, pack_size="64K")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "ds").mkdir()
    files = small_files(200, "version")
    write_files(mnt / "ds", files)
    assert_ok(run_fusefs("version", "create", mnt, "v1", "ds"))
    for name in files:
        (mnt / "ds" / name).unlink()
    (mnt / "other").mkdir()  # more live files after the deletes: packs half dead, half not
    write_files(mnt / "other", small_files(100, "other"))
    assert_ok(run_fusefs("compact", mnt))
    mounter.umount(mnt)  # garbage is collected: only what the version holds stays
    with_version = sum(p.live for p in pack_objects(vol))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_ok(run_fusefs("compact", mnt))
    assert_files(mnt / ".fusefs" / "versions" / "v1", files)
    res, report = scrub_json(mnt)
    assert report["healthy"] and report["chunks"] >= 300, res.describe()
    assert_ok(run_fusefs("version", "delete", mnt, "v1"))
    mounter.umount(mnt)
    live = sum(p.live for p in pack_objects(vol))
    assert 0 < live < with_version / 2  # the version's 200 files went, the other 100 stay
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt / "other", small_files(100, "other"))
    assert damage_events(vol) == []


def test_s3_stores_keep_an_object_per_share_beside_packing_local_stores(
        tmp_path: Path, s3_server, mounter: Mounter) -> None:
    """S3 stores take no appends: their shares stay objects of their own (each PUT before
    the close returns), while the local stores of the same volume pack theirs; a packed
    local store lost is rebuilt from the buckets."""
    vol, buckets, _ = mixed_volume(tmp_path, s3_server, 3, 2, 3, "--pack-below", "256K")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = small_files(40, "s3")
    write_files(mnt, files)
    mounter.umount(mnt)
    client = s3_server.client()
    for bucket in buckets:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="vol/objects/")
        assert listed["KeyCount"] >= 40  # one per share (and the metadata snapshots')
    assert {p.store for p in pack_objects(vol)} == {0, 1, 2}
    for p in pack_objects(vol):
        if p.store in (0, 1):
            p.file.unlink()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_files(mnt, files)
    res, report = scrub_json(mnt)
    assert report["healthy"], res.describe()
    res, report = scrub_json(mnt, "--no-repair")
    assert report["healthy"] and not any(s["missing"] for s in report["stores"]), report


def test_a_new_host_recovers_a_packed_volume_and_packs_on(volume, mounter: Mounter,
                                                          tmp_path: Path) -> None:
    """The host dies while its packs are open: a volume directory recovered from the
    published snapshot reads the packed files, seals the packs the dead host left open
    (never appends to them) and writes new packs."""
    import shutil

    vol = packed_volume(volume)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = small_files(50, "host")
    write_files(mnt, files)
    assert_ok(run_fusefs("snapshot", mnt))
    kill_daemon(vol.path, mnt, mounter)
    shutil.rmtree(vol.path)  # the host is gone
    args: list[object] = ["recover", tmp_path / "new"]
    for s in vol.stores:
        args += ["--store", f"file://{s}"]
    assert_ok(run_fusefs(*args, "--key-file", vol.key))
    new = Volume(tmp_path / "new", vol.stores, vol.key, vol.k, vol.m)
    opened = {p.id for p in pack_objects(new) if p.state == 0}
    assert len(opened) == 5  # open when the snapshot was taken
    mnt = mounter.mount(new, tmp_path / "mnt")
    assert_files(mnt, files)
    more = small_files(10, "after")
    write_files(mnt, {f"new-{n}": d for n, d in more.items()})
    mounter.umount(mnt)
    packs = pack_objects(new)
    assert {p.state for p in packs if p.id in opened} == {1}  # sealed, not appended to
    assert len(packs) == 10
    mnt = mounter.mount(new, tmp_path / "mnt")
    assert_files(mnt, {**files, **{f"new-{n}": d for n, d in more.items()}})
    res, report = scrub_json(mnt)
    assert report["healthy"], res.describe()


def test_a_pack_deleted_under_the_mount_is_not_appended_to(volume, mounter: Mounter,
                                                          tmp_path: Path) -> None:
    """Someone deletes a store's open pack while mounted: what is written afterwards goes
    into a new pack of that store (appends through the old descriptor would be members of
    a file the store no longer holds), so only the members already written are missing."""
    vol = packed_volume(volume)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    before, after = small_files(4, "before"), {"late": rand_bytes(3000, "late")}
    write_files(mnt, before)
    store, pack, _, _ = packed_members(vol)["/f00000"][0]
    pack.unlink()
    write_files(mnt, after)
    assert_files(mnt, {**before, **after})
    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 1, res.describe()
    assert report["stores"][store]["missing"] == len(before), report["stores"][store]
    assert set(report["damaged_files"]) == {f"/{n}" for n in before}, report["damaged_files"]
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()


def test_packs_are_the_default_and_pack_below_0_turns_them_off(tmp_path: Path) -> None:
    """A new volume packs shares below 256K unless told otherwise; 0 (option or
    environment) is the way to a volume of share objects only."""
    def init(name: str, *extra: object, env: dict[str, str] | None = None) -> int:
        s = tmp_path / f"{name}-s"
        args = [*FUSEFS, "init", tmp_path / name, "--store", f"{s}0", "--store", f"{s}1",
                "--key-file", tmp_path / f"{name}.key", *extra]
        res = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                             timeout=CLI_TIMEOUT, env={**os.environ, **(env or {})})
        assert res.returncode == 0, res.stderr
        return tomllib.loads((tmp_path / name / "fusefs.toml").read_text())["pack_below"]

    assert init("default") == 256 * KiB
    assert init("off", "--pack-below", "0") == 0
    assert init("env-off", env={"FUSEFS_PACK_BELOW": "0"}) == 0
    assert init("option-wins", "--pack-below", "64K", env={"FUSEFS_PACK_BELOW": "0"}) == 64 * KiB


def test_compact_and_init_options_fail_in_one_line(volume, tmp_path: Path) -> None:
    plain = volume(pack_below="0")
    msg = assert_fails(run_fusefs("compact", plain.path, "--key-file", plain.key))
    assert "no pack objects" in msg
    msg = assert_fails(run_fusefs("compact", tmp_path / "nowhere"))
    assert "\n" not in msg.strip()
    for option, value in (("--pack-below", "lots"), ("--pack-below", "2G"),
                          ("--pack-size", "1K")):
        msg = assert_fails(run_fusefs("init", tmp_path / f"v{option}", "--store",
                                      tmp_path / "s", option, value))
        assert "\n" not in msg.strip() and "Traceback" not in msg, msg
