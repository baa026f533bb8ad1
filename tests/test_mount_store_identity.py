"""A volume mounts with up to M stores down, damaged or hostile (issue 12, "Done when" 1 and 2).

One store's marker must not be able to deny the volume: a marker bit-flipped, truncated,
deleted (objects left) or naming another volume, on one or two of five stores, and the mount
comes up; every file reads back bit-identical; events and status name the store; nothing in
that store is created or deleted, scrub included. Stores down at mount (a stopped S3 server)
are read around and used again once they are back; with fewer than K left the mount is
refused with one line naming each.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from helpers import (
    MiB,
    Mounter,
    assert_event_vocabulary,
    assert_fails,
    assert_ok,
    assert_tree,
    is_mounted,
    mixed_volume,
    rand_bytes,
    read_events,
    read_uncached,
    scrub_json,
    snapshot_files,
    status_json,
    tree_layout,
    write_tree,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(240)]

DAMAGES = ["flip", "truncate", "delete", "other-volume"]


def objects_of(store: Path) -> dict[str, bytes]:
    """Every object of a local store, by path (the marker is not an object)."""
    return snapshot_files(store / "objects")


def damage_marker(store: Path, how: str, foreign: bytes) -> None:
    marker = store / "fusefs-store"
    raw = marker.read_bytes()
    if how == "flip":
        at = len(raw) // 2
        marker.write_bytes(raw[:at] + bytes([raw[at] ^ 0x10]) + raw[at + 1 :])
    elif how == "truncate":
        marker.write_bytes(raw[: len(raw) // 3])
    elif how == "delete":
        marker.unlink()
    else:
        marker.write_bytes(foreign)


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_or_foreign_markers_do_not_deny_the_volume(volume, mounter: Mounter,
                                                           tmp_path: Path, how: str,
                                                           count: int) -> None:
    vol = volume()
    other = volume()  # its markers stand for "a store of another volume"
    foreign = (other.stores[0] / "fusefs-store").read_bytes()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    expected = write_tree(mnt, tree_layout([0, 1, 4096, MiB + 3, 5 * MiB]), seed=how)
    mounter.umount(mnt)

    victims = list(range(count))
    for si in victims:
        damage_marker(vol.stores[si], how, foreign)
    before = [objects_of(vol.stores[si]) for si in victims]

    res = mounter.try_mount(vol, mnt)
    assert_ok(res)
    for si in victims:
        assert vol.store_url(si) in res.stderr, f"no warning names store {si}: {res.stderr}"
    assert len(res.stderr.strip().splitlines()) == count, res.stderr
    assert_tree(mnt, expected)
    for rel, data in expected.items():
        assert read_uncached(mnt / rel) == data, rel

    events = read_events(vol)
    assert_event_vocabulary(events)
    named = {e["store"] for e in events}
    assert {vol.store_url(si) for si in victims} <= named, events
    st = status_json(mnt)
    for si in victims:
        assert vol.store_url(si) in st["events"]["by_store"], st["events"]
    states = {s["url"]: s["state"] for s in st["stores"]}
    if how == "other-volume":
        for si in victims:
            assert "another volume" in states[vol.store_url(si)], states
        # with two stores in doubt only three take writes: below the write quorum of four
        if count == 1:
            (mnt / "new.bin").write_bytes(b"written around the store in doubt")
    else:  # ours, damaged: claimed again with a fresh marker
        for si in victims:
            assert states[vol.store_url(si)] == "ok", states
            marker = json.loads((vol.stores[si] / "fusefs-store").read_bytes())
            vid = tomllib.loads((vol.path / "fusefs.toml").read_text())["volume_id"]
            assert marker["volume"] == vid and marker["store"] == si, marker

    res, report = scrub_json(mnt)
    assert report["healthy"] == (how != "other-volume"), res.describe()
    mounter.umount(mnt)
    assert [objects_of(vol.stores[si]) for si in victims] == before, (
        "a store whose marker was damaged or foreign was written to or deleted from")



def test_a_volume_mounts_while_its_s3_stores_are_down(tmp_path: Path,
                                                      mounter: Mounter) -> None:
    pytest.importorskip("moto.server")
    from s3server import S3Server, use_test_credentials

    use_test_credentials()
    server = S3Server().start()
    try:
        vol, buckets, urls = mixed_volume(tmp_path, server, 3, 2, 3)
        mnt = mounter.mount(vol, tmp_path / "mnt")
        files = {f"f{i}.bin": rand_bytes(MiB // 2 + 1000 * i, f"s3-{i}") for i in range(4)}
        for rel, data in files.items():
            (mnt / rel).write_bytes(data)
        mounter.umount(mnt)
        markers = [server.client().get_object(Bucket=b, Key="vol/fusefs-store")["Body"].read()
                   for b in buckets]
        server.stop()

        res = mounter.try_mount(vol, mnt)
        assert_ok(res)
        for url in urls[3:]:
            assert url in res.stderr and "unreachable" in res.stderr, res.stderr
        for rel, data in files.items():
            assert read_uncached(mnt / rel) == data, f"{rel} unreadable with S3 down"

        server.start()  # same port; moto kept nothing: the buckets come back empty
        for b, marker in zip(buckets, markers, strict=True):
            server.create_bucket(b)
            server.client().put_object(Bucket=b, Key="vol/fusefs-store", Body=marker)
        later = {f"later{i}.bin": rand_bytes(100_000 + i, f"later-{i}") for i in range(3)}
        for rel, data in later.items():
            (mnt / rel).write_bytes(data)
        res, report = scrub_json(mnt)
        assert res.returncode == 0 and report["healthy"], res.describe()
        assert report["queued_repairs"] == 0, report
        for b in buckets:
            listed = server.client().list_objects_v2(Bucket=b, Prefix="vol/objects/")
            # every chunk and every metadata snapshot object has one share on every store
            # (K + M = 5 stores)
            want = report["chunks"] + report["snapshot_objects"]
            assert listed.get("KeyCount", 0) == want, (b, listed.get("KeyCount"), want)
        for rel, data in {**files, **later}.items():
            assert read_uncached(mnt / rel) == data, rel
        mounter.umount(mnt)

        # three of five down: refused, one line naming each
        server.stop()
        away = vol.stores[2].with_name("away")
        os.rename(vol.stores[2], away)
        try:
            mnt.mkdir(exist_ok=True)
            msg = assert_fails(mounter.try_mount(vol, mnt))
            assert not is_mounted(mnt)
            for url in urls[2:]:
                assert url in msg, (url, msg)
        finally:
            os.rename(away, vol.stores[2])
    finally:
        server.stop()
