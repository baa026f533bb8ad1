"""The volume over real LocalStores: write/read, a corruption catalogue, healing, events, GC.

Corruptions are applied directly to share files in the store directories
(STORE/objects/<2 hex>/<name>), where share i of a chunk is
`volume.keys.object_name(row.oid, i)` in store `row.placement[i]`. Healing runs in the
background, so reads that should heal run inside a nursery assigned to `volume.healer.nursery`;
leaving the nursery waits for the heal.
"""

from __future__ import annotations

import collections
import os
import random
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from fusefs.codec.checksum import digest
from fusefs.codec.keys import VolumeKeys
from fusefs.config import FORMAT, MIN_CHUNK, VolumeConfig
from fusefs.errors import ChunkUnrecoverable, StoreError
from fusefs.events import EventLog, read_events
from fusefs.heal import MAX_BACKGROUND_HEALS
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.stores.local import LocalStore, object_relpath
from fusefs.volume import Volume
from fusefs.workers import INLINE_BACKOFF, INLINE_SLOW

K, M = 3, 2
N = K + M
N_STORES = 5
SEG = 4096  # small segments: a 64 KiB test chunk has 16, spread over the 3 data shares


@dataclass
class Env:
    volume: Volume
    meta: MetaRepo
    ino: int
    file_id: bytes
    events_path: Path
    store_dirs: list[Path]

    # -- helpers -------------------------------------------------------------------------
    def path(self, row: ChunkRow, share: int) -> Path:
        name = self.volume.keys.object_name(row.oid, share)
        return self.store_dirs[row.placement[share]] / object_relpath(name)

    def all_objects(self) -> set[Path]:
        return {p for d in self.store_dirs for p in (d / "objects").rglob("*") if p.is_file()}

    def write(self, idx: int, data: bytes, ino: int | None = None,
              file_id: bytes | None = None) -> ChunkRow:
        ino = self.ino if ino is None else ino
        file_id = self.file_id if file_id is None else file_id
        prev = self.meta.chunk_version(ino, idx)
        row, missing = trio.run(self.volume.write_chunk, ino, file_id, idx, data, prev)
        self.volume.commit_chunk(ino, row, missing)
        return row

    def read(self, row: ChunkRow, file_id: bytes | None = None) -> bytes:
        """read_chunk with background heals allowed; returns once every heal finished."""
        file_id = self.file_id if file_id is None else file_id

        async def main() -> bytes:
            result: bytes | None = None
            error: Exception | None = None
            async with trio.open_nursery() as nursery:
                self.volume.healer.nursery = nursery
                try:
                    result = await self.volume.read_chunk(self.ino, file_id, row)
                except Exception as e:  # noqa: BLE001 - re-raised unwrapped below
                    error = e
                finally:
                    self.volume.healer.nursery = None
            if error is not None:
                raise error  # not wrapped in the nursery's ExceptionGroup
            assert result is not None
            return result

        return trio.run(main)

    def events(self) -> list[dict]:
        return read_events(self.events_path)


class AsyncOnlyStore(LocalStore):
    """A LocalStore without the blocking fast path, as a remote store would be: the volume
    must take its general (async) read path."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.get_blocking = None
        self.get_range_blocking = None


class ThreadedLocalStore(LocalStore):
    """A LocalStore as on a filesystem that may hang (NFS): small reads and writes go to a
    worker thread instead of running on the event loop."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.inline_io = False


class ManualClock:
    """The volume's clock (store health, the inline-I/O backoff): it moves only when a test
    moves it, so a loaded machine cannot make a read look slow."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


CLOCK = ManualClock()


def build_env(tmp_path: Path, store_cls: type[LocalStore], fmt: int = FORMAT):
    store_dirs = [tmp_path / f"store{i}" for i in range(N_STORES)]
    for d in store_dirs:
        d.mkdir()
    stores = [store_cls(str(d)) for d in store_dirs]
    volume_id = os.urandom(16)
    keys = VolumeKeys(os.urandom(32), volume_id)
    cfg = VolumeConfig(volume_id.hex(), K, M, MIN_CHUNK, [s.url for s in stores],
                       keys.check_value, segment_size=SEG, format=fmt)

    meta = MetaRepo(tmp_path / "meta.db", create=True)
    now = time.time_ns()
    with meta.transaction():
        meta.create_inode(os.urandom(16), stat.S_IFDIR | 0o755, 0, 0, 2, now)
        f = meta.create_inode(os.urandom(16), stat.S_IFREG | 0o644, 0, 0, 1, now)
    events_path = tmp_path / "events.jsonl"
    volume = Volume(cfg, keys, stores, meta, EventLog(events_path), clock=CLOCK)
    yield Env(volume, meta, f.id, f.file_id, events_path, store_dirs)
    meta.close()


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest):
    """A volume over LocalStores (reads take the one-hop path when all is healthy), or over
    the store class given by `READ_PATHS`."""
    yield from build_env(tmp_path, getattr(request, "param", LocalStore))


# Runs a test over every read path: local stores inline on the event loop (small reads from
# a local disk), local stores in one worker-thread hop, and the general async path.
READ_PATHS = pytest.mark.parametrize(
    "env", [LocalStore, ThreadedLocalStore, AsyncOnlyStore],
    ids=["local-inline", "local-thread", "async-only"], indirect=True)


def data_of(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


# ------------------------------------------------------------------------------------------
# healthy path
# ------------------------------------------------------------------------------------------


@READ_PATHS
@pytest.mark.parametrize("length", [0, 1, 1000, MIN_CHUNK - 1, MIN_CHUNK])
def test_write_then_read(env: Env, length: int) -> None:
    data = data_of(length, length)
    row = env.write(0, data)
    assert row.version == 1 and row.length == length
    assert len(row.placement) == N and len(set(row.placement)) == N
    assert len(row.digests) == 16 * N
    for i in range(N):
        p = env.path(row, i)
        assert digest(p.read_bytes()) == row.share_digest(i)
    assert env.read(row) == data
    assert env.events() == []


@READ_PATHS
def test_write_does_not_commit(env: Env) -> None:
    row, _ = trio.run(env.volume.write_chunk, env.ino, env.file_id, 0, b"abc", 0)
    assert env.meta.get_chunk(env.ino, 0) is None
    assert trio.run(env.volume.read_chunk, env.ino, env.file_id, row) == b"abc"


@READ_PATHS
def test_versions_and_files_are_independent(env: Env) -> None:
    other = env.meta.create_inode(os.urandom(16), stat.S_IFREG | 0o644, 0, 0, 1, 1)
    r1 = env.write(0, b"v1")
    r2 = env.write(0, b"v2")
    r3 = env.write(1, b"chunk one")
    r4 = env.write(0, b"other file", ino=other.id, file_id=other.file_id)
    assert (r1.version, r2.version, r3.version, r4.version) == (1, 2, 1, 1)
    assert env.read(r2) == b"v2"
    assert env.read(r1) == b"v1"  # old shares stay readable until garbage is collected
    assert env.read(r3) == b"chunk one"
    got = trio.run(env.volume.read_chunk, other.id, other.file_id, r4)
    assert got == b"other file"


@READ_PATHS
def test_wrong_file_id_is_unrecoverable(env: Env) -> None:
    """All shares are intact, but they belong to another file: nothing may be returned."""
    row = env.write(0, data_of(5000, 1))
    with pytest.raises(ChunkUnrecoverable):
        env.read(row, file_id=os.urandom(16))
    events = env.events()
    assert sorted(e["object"] for e in events) == sorted(
        env.volume.keys.object_name(row.oid, i) for i in range(N))
    assert {e["kind"] for e in events} == {"authentication_failure"}
    assert {e["action"] for e in events} == {"unrecoverable"}


@READ_PATHS
def test_wrong_version_in_row_is_unrecoverable(env: Env) -> None:
    row = env.write(0, data_of(5000, 2))
    with pytest.raises(ChunkUnrecoverable):
        env.read(replace(row, version=row.version + 1))


# ------------------------------------------------------------------------------------------
# corruption catalogue
# ------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """A chunk under test plus material a corruptor may need."""

    env: Env
    row: ChunkRow  # the chunk that will be corrupted (current version)
    data: bytes
    original: dict[int, bytes]  # its share bytes before corruption
    other: ChunkRow  # another chunk of the same file, same length
    old: dict[int, bytes]  # share bytes of the previous version of `row`


def make_scene(env: Env, length: int = 20_000) -> Scene:
    old_row = env.write(0, data_of(length, 100))
    old = {i: env.path(old_row, i).read_bytes() for i in range(N)}
    data = data_of(length, 101)
    row = env.write(0, data)  # version 2; version 1's shares are garbage, still stored
    other = env.write(1, data_of(length, 102))
    original = {i: env.path(row, i).read_bytes() for i in range(N)}
    return Scene(env, row, data, original, other, old)


def bit_flip(s: Scene, i: int) -> None:
    p = s.env.path(s.row, i)
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10
    p.write_bytes(bytes(b))


def truncate(s: Scene, i: int) -> None:
    p = s.env.path(s.row, i)
    p.write_bytes(p.read_bytes()[:-1])


def truncate_to_zero(s: Scene, i: int) -> None:
    s.env.path(s.row, i).write_bytes(b"")


def extend(s: Scene, i: int) -> None:
    p = s.env.path(s.row, i)
    p.write_bytes(p.read_bytes() + b"\0")


def delete(s: Scene, i: int) -> None:
    s.env.path(s.row, i).unlink()


def other_chunk_share(s: Scene, i: int) -> None:
    s.env.path(s.row, i).write_bytes(s.env.path(s.other, i).read_bytes())


def other_chunk_other_share(s: Scene, i: int) -> None:
    s.env.path(s.row, i).write_bytes(s.env.path(s.other, (i + 1) % N).read_bytes())


def rollback(s: Scene, i: int) -> None:
    s.env.path(s.row, i).write_bytes(s.old[i])


CORRUPTORS: dict[str, Callable[[Scene, int], None]] = {
    "bit_flip": bit_flip,
    "truncate": truncate,
    "truncate_to_zero": truncate_to_zero,
    "extend": extend,
    "delete": delete,
    "other_chunk_share": other_chunk_share,
    "other_chunk_other_share": other_chunk_other_share,
    "rollback": rollback,
}

# Sets of bad shares that a read will actually fetch (data shares are fetched first, parity
# only to replace bad ones), so every bad share is seen and must be healed.
HEALABLE = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 3), (2, 3)]


def assert_healed(s: Scene, shares) -> None:
    for i in shares:
        got = s.env.path(s.row, i).read_bytes()
        assert digest(got) == s.row.share_digest(i), f"share {i} not healed"
        assert got == s.original[i]


@pytest.mark.parametrize("bad", HEALABLE, ids=lambda b: "bad" + "".join(map(str, b)))
@pytest.mark.parametrize("corrupt", list(CORRUPTORS))
def test_corruption_is_read_through_and_healed(env: Env, corrupt: str, bad: tuple) -> None:
    s = make_scene(env)
    for i in bad:
        CORRUPTORS[corrupt](s, i)
    assert env.read(s.row) == s.data
    assert_healed(s, bad)
    # every share of the chunk is back to its exact bytes
    for i in range(N):
        assert env.path(s.row, i).read_bytes() == s.original[i]
    events = assert_share_events(env, s, bad, corrupt, "healed")
    # a second read is healthy and records nothing new
    assert env.read(s.row) == s.data
    assert len(env.events()) == len(events)
    assert env.read(s.other) == data_of(20_000, 102)  # the donor chunk was not harmed


def assert_share_events(env: Env, s, bad, corrupt: str, action: str) -> list[dict]:
    """Exactly one event per damaged share, naming its kind, store, object, inode, chunk."""
    events = env.events()
    kind = "missing" if corrupt == "delete" else "checksum_mismatch"
    expected = {env.volume.keys.object_name(s.row.oid, i): i for i in bad}
    assert sorted(e["object"] for e in events) == sorted(expected)
    for e in events:
        i = expected[e["object"]]
        assert e["kind"] == kind
        assert e["action"] == action
        assert e["store"] == env.volume.stores[s.row.placement[i]].url
        assert e["inode"] == env.ino and e["chunk"] == 0
    return events


@READ_PATHS
def test_swap_of_two_shares_is_healed(env: Env) -> None:
    s = make_scene(env)
    p0, p1 = env.path(s.row, 0), env.path(s.row, 1)
    b0, b1 = p0.read_bytes(), p1.read_bytes()
    p0.write_bytes(b1)
    p1.write_bytes(b0)
    assert env.read(s.row) == s.data
    assert_healed(s, (0, 1))
    assert {e["kind"] for e in env.events()} == {"checksum_mismatch"}


def test_swap_between_two_chunks_is_healed(env: Env) -> None:
    s = make_scene(env)
    pa, pb = env.path(s.row, 2), env.path(s.other, 2)
    a, b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(b)
    pb.write_bytes(a)
    assert env.read(s.row) == s.data
    assert env.read(s.other) == data_of(20_000, 102)
    assert pa.read_bytes() == a and pb.read_bytes() == b
    assert len(env.events()) == 2


@READ_PATHS
def test_bad_parity_share_is_not_needed(env: Env) -> None:
    """A healthy read fetches only the data shares: a bad parity share does not matter."""
    s = make_scene(env)
    bit_flip(s, 4)
    assert env.read(s.row) == s.data
    assert env.events() == []


@pytest.mark.parametrize("bad", [(0, 1, 2), (0, 1, 3), (0, 3, 4), (1, 2, 4)],
                         ids=lambda b: "bad" + "".join(map(str, b)))
@pytest.mark.parametrize("corrupt", ["bit_flip", "delete", "rollback", "other_chunk_share"])
def test_three_bad_shares_are_unrecoverable(env: Env, corrupt: str, bad: tuple) -> None:
    s = make_scene(env)
    for i in bad:
        CORRUPTORS[corrupt](s, i)
    with pytest.raises(ChunkUnrecoverable) as exc:
        env.read(s.row)
    assert "chunk 0" in str(exc.value)
    assert_share_events(env, s, bad, corrupt, "unrecoverable")
    # nothing was "healed" into a wrong state: the good shares are untouched
    for i in set(range(N)) - set(bad):
        assert env.path(s.row, i).read_bytes() == s.original[i]


def test_events_name_the_file(env: Env) -> None:
    env.volume.events.resolve_path = lambda ino: f"/file-{ino}"
    s = make_scene(env)
    delete(s, 0)
    env.read(s.row)
    (event,) = env.events()
    assert event["file"] == f"/file-{env.ino}"
    assert event["time"].endswith("Z")


# ------------------------------------------------------------------------------------------
# forged shares (checksum forgery: the metadata digest matches the forged bytes)
# ------------------------------------------------------------------------------------------


def forge_share(env: Env, s: Scene, i: int) -> ChunkRow:
    """Replace share i with other bytes and make the metadata digest match them."""
    forged = data_of(len(s.original[i]), 999)
    env.path(s.row, i).write_bytes(forged)
    digests = bytearray(s.row.digests)
    digests[16 * i : 16 * i + 16] = digest(forged)
    env.meta.db.execute("UPDATE chunks SET digests=? WHERE inode=? AND idx=?",
                        (bytes(digests), env.ino, s.row.idx))
    row = env.meta.get_chunk(env.ino, s.row.idx)
    assert row is not None and row.share_digest(i) == digest(forged)
    return row


@READ_PATHS
@pytest.mark.parametrize("forged", [0, 1, 2])
def test_forged_share_still_reads_right(env: Env, forged: int) -> None:
    s = make_scene(env)
    row = forge_share(env, s, forged)
    assert env.read(row) == s.data
    kinds = {e["kind"] for e in env.events()}
    assert kinds == {"authentication_failure"}
    assert {e["object"] for e in env.events()} == {
        env.volume.keys.object_name(row.oid, forged)}


@pytest.mark.parametrize("forged", [0, 1, 2])
def test_forged_share_is_healed(env: Env, forged: int) -> None:
    s = make_scene(env)
    row = forge_share(env, s, forged)
    assert env.read(row) == s.data
    assert env.path(row, forged).read_bytes() == s.original[forged], "forged share not healed"
    assert [e["action"] for e in env.events()] == ["healed"]


@READ_PATHS
def test_forged_share_plus_a_missing_share(env: Env) -> None:
    s = make_scene(env)
    row = forge_share(env, s, 0)
    delete(s, 1)
    assert env.read(row) == s.data


# ------------------------------------------------------------------------------------------
# heal without a nursery, and heal dedupe
# ------------------------------------------------------------------------------------------


def test_read_without_nursery_heals_inline(env: Env) -> None:
    """`Healer.nursery` is documented as "for background heals; None: heal inline"."""
    s = make_scene(env)
    bit_flip(s, 0)
    assert env.volume.healer.nursery is None
    assert trio.run(env.volume.read_chunk, env.ino, env.file_id, s.row) == s.data
    assert env.path(s.row, 0).read_bytes() == s.original[0], "share not healed inline"


def test_damage_seen_without_nursery_is_recorded(env: Env) -> None:
    """Tamper evidence: a read that met a bad share records an event, nursery or not."""
    s = make_scene(env)
    delete(s, 1)
    assert trio.run(env.volume.read_chunk, env.ino, env.file_id, s.row) == s.data
    assert [(e["kind"], e["object"]) for e in env.events()] == [
        ("missing", env.volume.keys.object_name(s.row.oid, 1))]


def test_concurrent_reads_of_a_damaged_chunk(env: Env) -> None:
    s = make_scene(env)
    delete(s, 0)

    async def main() -> list[bytes]:
        results: list[bytes] = []

        async def one() -> None:
            results.append(await env.volume.read_chunk(env.ino, env.file_id, s.row))

        async with trio.open_nursery() as nursery:
            env.volume.healer.nursery = nursery
            for _ in range(4):
                nursery.start_soon(one)
        env.volume.healer.nursery = None
        await env.volume.healer.wait()
        return results

    assert trio.run(main) == [s.data] * 4
    assert_healed(s, (0,))
    events = env.events()
    # a heal in progress is not started twice; a read that saw the damage before an earlier
    # heal finished may heal again (harmless: same bytes)
    assert 1 <= len(events) <= 4
    assert {(e["kind"], e["action"], e["object"]) for e in events} == {
        ("missing", "healed", env.volume.keys.object_name(s.row.oid, 0))}


def test_a_burst_of_damage_beyond_the_heal_limit_is_healed_before_idle(env: Env) -> None:
    """More damaged chunks read at once than heals may run: the rest go to the repair queue,
    which is worked through as soon as the heals in flight are done, before the healer
    counts as idle (unmount waits for that)."""
    rows = [env.write(i, data_of(3000, 200 + i)) for i in range(MAX_BACKGROUND_HEALS + 8)]
    for row in rows:
        env.path(row, 1).unlink()

    async def main() -> list[bytes]:
        results: list[bytes] = []

        async def one(row: ChunkRow) -> None:
            results.append(await env.volume.read_chunk(env.ino, env.file_id, row))

        async with trio.open_nursery() as nursery:
            env.volume.healer.nursery = nursery
            for row in rows:
                nursery.start_soon(one, row)
            await trio.sleep(0)
        env.volume.healer.nursery = None
        await env.volume.healer.wait()
        return results

    assert sorted(trio.run(main)) == sorted(data_of(3000, 200 + i) for i in range(len(rows)))
    actions = collections.Counter(e["action"] for e in env.events())
    assert actions["queued"] > 0, "the burst never overflowed: the test proves nothing"
    assert env.meta.repair_count() == 0
    assert all(env.path(row, 1).is_file() for row in rows)


@pytest.mark.parametrize("store_cls", [LocalStore, AsyncOnlyStore], ids=["local", "async"])
def test_format_2_volumes_keep_reading_writing_and_healing(tmp_path: Path,
                                                           store_cls: type[LocalStore]) -> None:
    for env in build_env(tmp_path, store_cls, fmt=2):
        data = data_of(MIN_CHUNK, 77)
        row = env.write(0, data)
        assert env.read(row) == data
        env.path(row, 0).unlink()
        env.path(row, 1).write_bytes(b"garbage")
        assert env.read(row) == data
        assert {(e["kind"], e["action"]) for e in env.events()} == {
            ("missing", "healed"), ("checksum_mismatch", "healed")}
        assert env.read(row) == data
        assert read_span(env, row, 100, 5000) == data[100:5000]


# ------------------------------------------------------------------------------------------
# garbage collection
# ------------------------------------------------------------------------------------------


def test_make_durable_deletes_garbage_only_when_called(env: Env) -> None:
    v1 = env.write(0, b"first version")
    v1_paths = [env.path(v1, i) for i in range(N)]
    v2 = env.write(0, b"second version")
    v2_paths = [env.path(v2, i) for i in range(N)]
    assert all(p.exists() for p in v1_paths), "old shares deleted before make_durable"
    assert len(env.meta.garbage()) == 1

    trio.run(env.volume.make_durable)
    assert not any(p.exists() for p in v1_paths)
    assert all(p.exists() for p in v2_paths)
    assert env.meta.garbage() == []
    assert env.all_objects() == set(v2_paths)
    assert env.read(v2) == b"second version"


def test_make_durable_after_truncate_and_delete(env: Env) -> None:
    rows = [env.write(i, data_of(3000, i)) for i in range(3)]
    env.meta.delete_chunks_from(env.ino, 1)
    before = env.all_objects()
    assert len(before) == 3 * N
    trio.run(env.volume.make_durable)
    assert env.all_objects() == {env.path(rows[0], i) for i in range(N)}
    env.meta.delete_inode(env.ino)
    trio.run(env.volume.make_durable)
    assert env.all_objects() == set()
    assert env.meta.garbage() == []


def test_make_durable_with_already_missing_garbage(env: Env) -> None:
    v1 = env.write(0, b"one")
    env.write(0, b"two")
    env.path(v1, 0).unlink()  # some shares of the garbage are gone already
    trio.run(env.volume.make_durable)
    assert env.meta.garbage() == []
    assert len(env.all_objects()) == N


def test_make_durable_in_a_daemon_deletes_garbage_after_returning(env: Env) -> None:
    """Mounted (a nursery), the durable point returns once the new version is durable; the
    old shares go in a background pass, all of them, one batch per store."""
    old = [env.write(i, data_of(3000, i)) for i in range(4)]
    new = [env.write(i, data_of(3000, i + 10)) for i in range(4)]
    seen: dict[str, object] = {}

    async def main():
        async with trio.open_nursery() as nursery:
            env.volume.nursery = nursery
            await env.volume.make_durable()
            seen["garbage at return"] = len(env.meta.garbage())
            seen["old shares at return"] = sum(env.path(r, i).exists() for r in old
                                               for i in range(N))
            await env.volume.make_durable(wait_for_garbage=True)  # as unmount does
            seen["garbage after waiting"] = len(env.meta.garbage())
        env.volume.nursery = None

    trio.run(main)
    assert seen == {"garbage at return": 4, "old shares at return": 4 * N,
                    "garbage after waiting": 0}
    assert env.meta.garbage() == []
    assert env.all_objects() == {env.path(r, i) for r in new for i in range(N)}
    assert [env.read(r) for r in new] == [data_of(3000, i + 10) for i in range(4)]


def test_make_durable_without_garbage(env: Env) -> None:
    row = env.write(0, b"only")
    trio.run(env.volume.make_durable)
    trio.run(env.volume.make_durable)
    assert env.read(row) == b"only"
    assert len(env.all_objects()) == N


# ------------------------------------------------------------------------------------------
# segment reads (a small random read fetches only the segments it needs)
# ------------------------------------------------------------------------------------------


class SickDiskStore(LocalStore):
    """A LocalStore on a disk that answers slowly while `slow` is set (a failing drive);
    records which thread each small read ran on."""

    slow = False
    threads: list[str] = []

    def __init__(self, root: str) -> None:
        super().__init__(root)
        plain_range, plain_into = self.get_range_blocking, self.read_into_blocking

        def get_range(name: str, offset: int, length: int) -> bytes:
            self._note()
            return plain_range(name, offset, length)

        def read_into(name: str, view: memoryview) -> int:
            self._note()
            return plain_into(name, view)

        self.get_range_blocking, self.read_into_blocking = get_range, read_into

    def _note(self) -> None:
        SickDiskStore.threads.append(threading.current_thread().name)
        if SickDiskStore.slow:
            CLOCK.advance(INLINE_SLOW * 2)  # the disk's latency, on the volume's clock


@pytest.mark.parametrize("env", [SickDiskStore], indirect=True)
def test_small_reads_run_inline_until_the_disk_is_slow(env: Env) -> None:
    """Small reads from local disks run on the event loop's thread; one slow answer sends
    them to worker threads (which can time out around a hung disk) for a while, and after
    that while they run inline again."""
    assert env.volume.stores[0].inline_io  # tmp_path: a local filesystem here
    data = data_of(MIN_CHUNK, 21)
    row = env.write(0, data)
    main = threading.current_thread().name
    SickDiskStore.threads.clear()
    assert read_span(env, row, 10, 20) == data[10:20]
    assert env.read(row) == data
    assert set(SickDiskStore.threads) == {main}
    SickDiskStore.slow = True
    try:
        assert read_span(env, row, 10, 20) == data[10:20]  # inline, and slow
        slow_at = CLOCK.now
        SickDiskStore.threads.clear()
        assert read_span(env, row, 30, 40) == data[30:40]
        assert env.read(row) == data
    finally:
        SickDiskStore.slow = False
    assert SickDiskStore.threads and main not in SickDiskStore.threads
    CLOCK.advance(slow_at + INLINE_BACKOFF - 0.01 - CLOCK.now)
    SickDiskStore.threads.clear()
    assert read_span(env, row, 50, 60) == data[50:60]
    assert main not in SickDiskStore.threads, "back inline before the backoff ended"
    CLOCK.advance(0.01)
    SickDiskStore.threads.clear()
    assert read_span(env, row, 50, 60) == data[50:60]
    assert set(SickDiskStore.threads) == {main}


def read_span(env: Env, row: ChunkRow, start: int, end: int) -> bytes | None:
    return trio.run(env.volume.read_span, env.file_id, row, start, end)


def spans(length: int, seed: int = 0) -> list[tuple[int, int]]:
    """Edge spans (first/last byte, segment and share boundaries) plus random ones."""
    rng = random.Random(seed)
    out = [(0, 1), (0, SEG), (SEG - 1, SEG + 1), (length - 1, length), (0, length),
           (length // 3 - 5, length // 3 + 5), (2 * length // 3 - 1, 2 * length // 3 + 1)]
    for _ in range(30):
        a = rng.randrange(length)
        out.append((a, rng.randrange(a + 1, min(length, a + 3 * SEG) + 1)))
    return [(max(0, a), min(length, b)) for a, b in out if max(0, a) < min(length, b)]


@READ_PATHS
@pytest.mark.parametrize("length", [1, SEG, 3 * SEG + 7, MIN_CHUNK])
def test_read_span_returns_exactly_the_bytes(env: Env, length: int) -> None:
    data = data_of(length, 7)
    row = env.write(0, data)
    for a, b in spans(length):
        assert read_span(env, row, a, b) == data[a:b], (a, b)


def _spans_touching(row: ChunkRow, share: int) -> list[tuple[int, int]]:
    from fusefs.codec import chunk as chunkcodec
    from fusefs.codec import erasure

    size = erasure.share_size(chunkcodec.sealed_length(row.length, SEG), K)
    touching = []
    for a, b in spans(row.length, seed=share):
        span = chunkcodec.segment_span(a, b, row.length, SEG)
        if any(i == share for i, _, _ in span.pieces(size)):
            touching.append((a, b))
    return touching


@READ_PATHS
@pytest.mark.parametrize("corrupt", list(CORRUPTORS))
@pytest.mark.parametrize("share", range(K))
def test_read_span_never_returns_wrong_bytes(env: Env, corrupt: str, share: int) -> None:
    """A damaged data share makes a span read give up (None), never give wrong bytes; the
    whole-chunk read then rebuilds the right bytes and heals."""
    s = make_scene(env, length=MIN_CHUNK)
    CORRUPTORS[corrupt](s, share)
    whole_share = corrupt in ("delete", "truncate_to_zero", "rollback", "other_chunk_share",
                              "other_chunk_other_share")
    touching = _spans_touching(s.row, share)
    assert touching
    for a, b in touching:
        got = read_span(env, s.row, a, b)
        assert got is None or got == s.data[a:b], (corrupt, a, b)
        if whole_share:
            assert got is None, (corrupt, a, b)
    assert env.events() == []  # a span read reports nothing: the whole-chunk read does
    assert env.read(s.row) == s.data
    assert_healed(s, (share,))
    for a, b in touching:
        assert read_span(env, s.row, a, b) == s.data[a:b]


@READ_PATHS
def test_read_span_of_swapped_shares_gives_up(env: Env) -> None:
    s = make_scene(env, length=MIN_CHUNK)
    p0, p1 = env.path(s.row, 0), env.path(s.row, 1)
    b0, b1 = p0.read_bytes(), p1.read_bytes()
    p0.write_bytes(b1)
    p1.write_bytes(b0)
    for a, b in _spans_touching(s.row, 0) + _spans_touching(s.row, 1):
        assert read_span(env, s.row, a, b) is None, (a, b)


def test_read_span_with_a_store_down_gives_up(env: Env) -> None:
    data = data_of(MIN_CHUNK, 9)
    row = env.write(0, data)
    env.volume.mark_down(row.placement[1], StoreError("test: store switched off"))
    assert read_span(env, row, 0, 10) == data[:10]  # share 0 only
    for a, b in _spans_touching(row, 1):
        assert read_span(env, row, a, b) is None
