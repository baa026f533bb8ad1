"""Store identity (`storecheck`): whose a store is, told from its authenticated marker and,
when the marker is gone or damaged, from its objects. Real LocalStores, real metadata."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import trio

from fusefs.codec.keys import VolumeKeys
from fusefs.config import MIN_CHUNK, VolumeConfig
from fusefs.events import EventLog
from fusefs.meta.repo import MetaRepo
from fusefs.storecheck import (
    CLAIMED,
    IN_DOUBT,
    NOT_CLAIMED,
    OK,
    UNREACHABLE,
    check_store,
    identify,
    marker_bytes,
)
from fusefs.stores.base import MARKER
from fusefs.stores.local import LocalStore
from fusefs.volume import Volume

N = 5


@pytest.fixture
def vol(tmp_path: Path):
    dirs = [tmp_path / f"s{i}" for i in range(N)]
    for d in dirs:
        d.mkdir()
    stores = [LocalStore(str(d)) for d in dirs]
    vid = os.urandom(16)
    keys = VolumeKeys(os.urandom(32), vid)
    cfg = VolumeConfig(vid.hex(), 3, 2, MIN_CHUNK, [s.url for s in stores], keys.check_value)
    meta = MetaRepo(tmp_path / "meta.db", create=True)
    with meta.transaction():
        meta.create_inode(os.urandom(16), stat.S_IFDIR | 0o755, 0, 0, 2, time.time_ns())
        f = meta.create_inode(os.urandom(16), stat.S_IFREG | 0o644, 0, 0, 1, time.time_ns())
    volume = Volume(cfg, keys, stores, meta, EventLog(None))

    async def fill() -> None:
        for si, s in enumerate(stores):
            await s.write_marker(marker_bytes(keys, cfg.volume_id, si))
        row, missing = await volume.write_chunk(f.id, f.file_id, 0, b"x" * 1000, 0)
        volume.commit_chunk(f.id, row, missing)

    trio.run(fill)
    yield cfg, keys, stores, dirs, meta
    meta.close()


def check(vol, si: int, *, claim: bool = True):
    cfg, keys, stores, _, meta = vol
    return trio.run(lambda: check_store(stores[si], si, cfg, keys, meta, writable=claim,
                                        claim=claim))


def test_identify_tells_ours_from_damaged_from_foreign() -> None:
    vid = os.urandom(16)
    keys = VolumeKeys(os.urandom(32), vid)
    ours = marker_bytes(keys, vid.hex(), 2)
    assert identify(ours, keys, vid.hex(), 2, N) == ("ours", "")
    assert identify(None, keys, vid.hex(), 2, N) == ("lost", "no marker")
    assert identify(ours[:20], keys, vid.hex(), 2, N) == ("lost", "damaged marker")
    # a flipped volume id: the MAC still proves it is ours
    m = json.loads(ours)
    m["volume"] = "0" * 32
    assert identify(json.dumps(m).encode(), keys, vid.hex(), 2, N)[0] == "rewrite"
    # a flipped MAC: it names us but proves nothing: ours only if its objects are
    m = json.loads(ours)
    m["mac"] = "0" * 64
    assert identify(json.dumps(m).encode(), keys, vid.hex(), 2, N)[0] == "lost"
    # another store of this volume (URLs swapped)
    verdict, why = identify(marker_bytes(keys, vid.hex(), 4), keys, vid.hex(), 2, N)
    assert verdict == "doubt" and "store 4" in why
    # another volume, new and old marker formats
    other = VolumeKeys(os.urandom(32), os.urandom(16))
    verdict, why = identify(marker_bytes(other, "ab" * 16, 2), keys, vid.hex(), 2, N)
    assert verdict == "doubt" and "ab" * 16 in why
    old = json.dumps({"fusefs": 1, "volume": "cd" * 16}).encode()
    assert identify(old, keys, vid.hex(), 2, N)[0] == "doubt"
    # our own marker from before markers were authenticated
    legacy = json.dumps({"fusefs": 1, "volume": vid.hex()}).encode()
    assert identify(legacy, keys, vid.hex(), 2, N)[0] == "rewrite"


def test_ours_is_ok(vol) -> None:
    assert check(vol, 0).kind == OK


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip", "garbage"])
def test_a_damaged_marker_of_a_store_with_only_our_objects_is_claimed(vol, damage) -> None:
    cfg, keys, stores, dirs, _ = vol
    marker = dirs[0] / MARKER
    raw = marker.read_bytes()
    if damage == "delete":
        marker.unlink()
    elif damage == "truncate":
        marker.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        marker.write_bytes(raw[:30] + bytes([raw[30] ^ 0x01]) + raw[31:])
    else:
        marker.write_bytes(os.urandom(len(raw)))
    objects = sorted(p.name for p in (dirs[0] / "objects").rglob("*"))
    assert check(vol, 0, claim=False).kind == NOT_CLAIMED
    state = check(vol, 0)
    assert state.kind == CLAIMED and state.detail in ("no marker", "damaged marker"), state
    assert marker.read_bytes() == marker_bytes(keys, cfg.volume_id, 0)
    assert sorted(p.name for p in (dirs[0] / "objects").rglob("*")) == objects
    assert check(vol, 0).kind == OK


def test_a_store_with_objects_we_never_placed_is_in_doubt(vol) -> None:
    _, _, stores, dirs, _ = vol
    (dirs[0] / MARKER).unlink()
    trio.run(stores[0].put, "ab" * 16, b"someone else's object")
    state = check(vol, 0)
    assert state.kind == IN_DOUBT and "never placed" in state.detail
    assert not (dirs[0] / MARKER).exists(), "a store in doubt was written to"


def test_another_volumes_or_another_stores_marker_is_in_doubt(vol) -> None:
    cfg, keys, _, dirs, _ = vol
    other = VolumeKeys(os.urandom(32), os.urandom(16))
    foreign = marker_bytes(other, "ef" * 16, 0)
    (dirs[0] / MARKER).write_bytes(foreign)
    state = check(vol, 0)
    assert state.kind == IN_DOUBT and "another volume" in state.detail
    assert (dirs[0] / MARKER).read_bytes() == foreign
    (dirs[1] / MARKER).write_bytes(marker_bytes(keys, cfg.volume_id, 3))
    state = check(vol, 1)
    assert state.kind == IN_DOUBT and "store 3" in state.detail


def test_an_old_marker_is_upgraded_without_an_event(vol) -> None:
    cfg, keys, _, dirs, _ = vol
    (dirs[2] / MARKER).write_text(json.dumps({"fusefs": 1, "volume": cfg.volume_id}))
    state = check(vol, 2)
    assert state.kind == CLAIMED and state.detail.startswith("old marker")
    assert (dirs[2] / MARKER).read_bytes() == marker_bytes(keys, cfg.volume_id, 2)


def test_a_missing_store_is_unreachable(vol) -> None:
    _, _, _, dirs, _ = vol
    dirs[3].rename(dirs[3].with_name("away"))
    state = check(vol, 3)
    assert state.kind == UNREACHABLE and "missing" in state.detail
