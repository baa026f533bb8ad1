"""`fusefs scrub` (issue 3, "Done when" 5, and the scrub contract).

- a scrub of a mounted volume runs (and repairs) while a reader streams a 40 MiB file: both
  finish, every streamed byte is right, and the volume is healthy afterwards;
- `--rate` limits how fast the stores are read;
- orphans (objects no chunk refers to, planted in a store) are reported by `--no-repair`
  (and do not make the volume unhealthy: they are not damage to its data)
  (exit 1) and removed by a repairing scrub; the referenced objects are left alone;
- an unmounted volume is scrubbed and repaired in-process with `--key-file`;
- the `--json` report has its documented keys (checked on every call, see
  `helpers.scrub_json`); an unknown path exits 1 with one line on stderr; a second scrub of
  a mounted volume while one runs is refused with a clear message.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    FUSEFS,
    KiB,
    MiB,
    Mounter,
    Streamer,
    assert_event_vocabulary,
    assert_fails,
    assert_tree,
    forge_digest,
    is_mounted,
    rand_bytes,
    read_events,
    run_fusefs,
    scrub_json,
    share_map,
    wait_until,
)

from fusefs.stores.local import object_relpath

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


def test_scrub_while_streaming_a_large_file(volume, mounter: Mounter, tmp_path: Path):
    vol = volume(chunk_size=MiB)
    big = rand_bytes(40 * MiB + 123, "big")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "big.bin").write_bytes(big)
    mounter.umount(mnt)

    # damage one share of every 4th full chunk (share objects: the 123-byte tail's are
    # packed), parity shares included
    chunks = share_map(vol)["/big.bin"]
    assert len(chunks) == 41
    damaged = {}
    for n, chunk in enumerate(chunks[:40:4]):
        loc = chunk[n % 5]
        assert loc.pack is None
        damaged[loc.file] = loc.file.read_bytes()
        if n % 2:
            loc.file.unlink()
        else:
            loc.file.write_bytes(damaged[loc.file][: len(damaged[loc.file]) // 3])

    mnt = mounter.mount(vol, tmp_path / "mnt")
    reader = Streamer({mnt / "big.bin": big}, block=MiB).start()
    try:
        assert wait_until(lambda: reader.bytes > 0 or reader.errors, 30), "reader not started"
        before = reader.bytes
        res, report = scrub_json(mnt)
        during = reader.bytes - before
        reader.wait_passes(1)
    finally:
        errors = reader.stop()
    assert not errors, f"the streaming reader failed while scrub ran: {errors[:5]}"
    assert during > 0, "the reader made no progress while the scrub ran"
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert report["chunks"] == 41 and report["unrecoverable_files"] == []
    assert report["bytes_read"] >= len(big)

    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert sum(s["shares_checked"] for s in report["stores"]) == 41 * 5
    for f, data in damaged.items():
        assert f.read_bytes() == data, f"{f} was not restored to its exact bytes"
    mounter.umount(mnt)
    assert_event_vocabulary(read_events(vol))


def test_scrub_rate_limit(volume, mounter: Mounter, tmp_path: Path):
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "f.bin").write_bytes(rand_bytes(12 * MiB, "rate"))  # ~21 MB of shares
    rate = 20  # MB/s
    start = time.monotonic()
    res, report = scrub_json(mnt, "--rate", rate)
    wall = time.monotonic() - start
    assert res.returncode == 0, res.describe()
    assert report["bytes_read"] >= 20e6, report["bytes_read"]
    least = 0.8 * report["bytes_read"] / (rate * 1e6)  # loose: 80% of bytes / rate
    assert report["seconds"] >= least and wall >= least, (
        f"--rate {rate} read {report['bytes_read']} bytes in {report['seconds']} s "
        f"(wall {wall:.2f} s); at that rate it takes >= {least:.2f} s")
    mounter.umount(mnt)


@pytest.mark.parametrize("packed", [False, True], ids=["objects", "packed"])
def test_orphans_reported_then_removed(volume, mounter: Mounter, tmp_path: Path,
                                       packed: bool):
    """An orphan is a planted object, or a real share object or pack copied to a store that
    does not hold it."""
    vol = volume(chunk_size="64K", pack_below="256K" if packed else "0")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = {"a.bin": rand_bytes(150 * KiB, "a"), "b.bin": rand_bytes(1000, "b")}
    for rel, data in files.items():
        (mnt / rel).write_bytes(data)

    # a planted object with a name nobody uses, and a real share copied to a store that
    # does not hold it (its name is referenced, but not on that store)
    planted = vol.stores[1] / object_relpath("ab" + os.urandom(15).hex())
    planted.parent.mkdir(exist_ok=True)
    planted.write_bytes(os.urandom(4096))
    share = share_map(vol)["/a.bin"][0][0]
    assert (share.pack is not None) == packed
    real = share.pack or share.file
    other = next(i for i in range(5) if i != share.store and i != 1)
    copied = vol.stores[other] / object_relpath(real.name)
    copied.parent.mkdir(exist_ok=True)
    copied.write_bytes(real.read_bytes())
    orphans = {1: planted, other: copied}

    res, report = scrub_json(mnt, "--no-repair")
    # orphans are reported, but they are not damage to the volume's data: still healthy
    assert res.returncode == 0 and report["healthy"], res.describe()
    for i, s in enumerate(report["stores"]):
        assert s["orphans"] == (1 if i in orphans else 0), (i, s)
        assert s["orphans_removed"] == 0, s
        assert s["missing"] + s["checksum_mismatch"] + s["authentication_failure"] == 0, s
    assert planted.exists() and copied.exists(), "--no-repair removed an object"
    events = read_events(vol)
    for i, p in orphans.items():
        assert any(e["kind"] == "unexpected_object" and e["action"] == "reported"
                   and e["object"] == p.name and e["store"] == vol.store_url(i)
                   for e in events), (p, events)

    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    for i, s in enumerate(report["stores"]):
        want = 1 if i in orphans else 0
        assert s["orphans"] == want and s["orphans_removed"] == want, (i, s)
    assert not planted.exists() and not copied.exists(), "the orphans are still there"
    assert real.exists(), "the real object of the copied orphan was removed"
    events = read_events(vol)
    for i, p in orphans.items():
        assert any(e["kind"] == "unexpected_object" and e["action"] == "removed"
                   and e["object"] == p.name and e["store"] == vol.store_url(i)
                   for e in events), (p, events)

    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 0 and all(s["orphans"] == 0 for s in report["stores"])
    mounter.umount(mnt)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, files)
    mounter.umount(mnt)
    assert_event_vocabulary(read_events(vol))


@pytest.mark.parametrize("packed", [False, True], ids=["objects", "packed"])
def test_offline_scrub_repairs(volume, mounter: Mounter, tmp_path: Path, packed: bool):
    """Share objects, or pack members (a member is missing when its pack was cut short
    before it, bad when its bytes changed): each kind is found, counted and rebuilt."""
    vol = volume(chunk_size="64K", pack_below="256K" if packed else "0")
    files = {"d/x.bin": rand_bytes(5 * 64 * KiB + 3, "x"), "y.bin": rand_bytes(70 * KiB, "y")}
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "d").mkdir()
    for rel, data in files.items():
        (mnt / rel).write_bytes(data)
    mounter.umount(mnt)

    smap = share_map(vol)
    x, y = smap["/d/x.bin"], smap["/y.bin"]
    assert all((loc.pack is not None) == packed for c in x + y for loc in c)
    if packed:  # y's last chunk was written last: its shares end their packs
        damage = [  # (share, expected kind)
            (y[1][4], "missing"), (x[1][0], "checksum_mismatch"),
            (x[2][2], "authentication_failure"), (x[3][1], "checksum_mismatch"),
            (y[1][1], "missing"), (y[0][3], "checksum_mismatch"),
        ]
    else:
        damage = [
            (x[0][4], "missing"), (x[1][0], "checksum_mismatch"),
            (x[2][2], "authentication_failure"), (x[3][1], "checksum_mismatch"),
            (x[3][3], "missing"), (y[1][3], "checksum_mismatch"),
        ]
    original = {loc: loc.read() for loc, _ in damage}
    touched = {loc.pack or loc.file for loc, _ in damage}
    for loc, kind in damage:
        data = original[loc]
        if kind == "missing" and loc.pack is not None:
            assert loc.pack.stat().st_size == loc.offset + loc.length, "not the last member"
            os.truncate(loc.pack, loc.offset)
        elif kind == "missing":
            loc.file.unlink()
        elif kind == "authentication_failure":
            forge_digest(vol, loc, os.urandom(len(data)))
        else:
            loc.overwrite(data[:-1] + bytes([data[-1] ^ 1]))
    damaged_now = {f: f.read_bytes() if f.exists() else None for f in touched}

    # the volume's key is not in VOLUME: an unmounted scrub needs --key-file
    assert_fails(run_fusefs("scrub", vol.path, "--no-repair"), 1)

    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert res.returncode == 1, res.describe()
    assert set(report["damaged_files"]) == {"/d/x.bin", "/y.bin"}, report["damaged_files"]
    in_x = sum(loc.path == "/d/x.bin" for loc, _ in damage)
    assert len(report["damaged_files"]["/d/x.bin"]) == in_x
    want = {vol.store_url(i): {"missing": 0, "checksum_mismatch": 0,
                               "authentication_failure": 0} for i in range(5)}
    for loc, kind in damage:
        want[vol.store_url(loc.store)][kind] += 1
    got = {s["url"]: {k: s[k] for k in ("missing", "checksum_mismatch",
                                        "authentication_failure")} for s in report["stores"]}
    assert got == want
    assert {f: f.read_bytes() if f.exists() else None for f in touched} == damaged_now, (
        "scrub --no-repair changed objects")

    res, report = scrub_json(vol.path, "--key-file", vol.key)
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert sum(s["repaired"] for s in report["stores"]) == len(damage)
    now = share_map(vol)
    for loc, _ in damage:  # rebuilt to the exact bytes (a pack member: into a new pack)
        assert now[loc.path][loc.chunk][loc.share].read() == original[loc], f"{loc} not restored"
    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert res.returncode == 0, res.describe()
    events = read_events(vol)
    assert_event_vocabulary(events)
    for loc, kind in damage:
        assert any(e["object"] == loc.event_object and e["kind"] == kind
                   and e["action"] == "healed" and e.get("file") == loc.path
                   and e["store"] == vol.store_url(loc.store) and e.get("chunk") == loc.chunk
                   for e in events), (loc, kind, [e for e in events if e.get("file") == loc.path])

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, files, exact=False)
    mounter.umount(mnt)


def test_scrub_of_unknown_path(tmp_path: Path):
    msg = assert_fails(run_fusefs("scrub", tmp_path / "no-such-volume"), 1)
    assert "no-such-volume" in msg
    (tmp_path / "plain").mkdir()
    assert_fails(run_fusefs("scrub", tmp_path / "plain", "--json"), 1)


def test_second_scrub_is_refused(volume, mounter: Mounter, tmp_path: Path):
    vol = volume(chunk_size="64K")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    data = rand_bytes(10 * 64 * KiB, "slow")
    (mnt / "f.bin").write_bytes(data)
    slow: subprocess.Popen | None = None

    def start_slow() -> subprocess.Popen:
        # ~110 KB of shares per chunk at 0.05 MB/s: about 2 s per chunk, 20 s in all
        return subprocess.Popen([*FUSEFS, "scrub", str(mnt), "--rate", "0.05"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/")

    try:
        refused = None
        deadline = time.monotonic() + 40
        while refused is None and time.monotonic() < deadline:
            if slow is None or slow.poll() is not None:
                slow = start_slow()  # (again, if it lost the race against a probe)
            probe = run_fusefs("scrub", mnt, "--no-repair")
            if probe.returncode == 1 and "already" in probe.stderr:
                refused = probe
        assert refused is not None, "a second scrub was never refused while one ran"
        msg = assert_fails(refused, 1, contains=["scrub"])
        assert "already running" in msg, msg
    finally:
        if slow is not None and slow.poll() is None:
            slow.kill()  # our own client; the daemon must notice and release its lock
            slow.wait(10)

    # the daemon notices its client is gone and releases the scrub lock
    results = []

    def settled() -> bool:
        results.append(run_fusefs("scrub", mnt, "--no-repair"))
        return results[-1].returncode == 0 or "already running" not in results[-1].stderr

    assert wait_until(settled, 30, interval=0.2), "the scrub lock was never released"
    assert is_mounted(mnt) and results[-1].returncode == 0, (
        "killing a `fusefs scrub` client must not break the mount; then: "
        + results[-1].describe())
    assert (mnt / "f.bin").read_bytes() == data
    mounter.umount(mnt)
