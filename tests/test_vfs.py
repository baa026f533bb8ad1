"""POSIX semantics of fusefs.vfs.FileSystem without a mount.

A real volume (5 LocalStores, SQLite metadata, K=3/M=2) with the smallest chunk size, so a
few hundred KiB cross several chunk boundaries. Most tests seal inline
(`fs.flusher.nursery = None`, the default); `test_background_*` run inside a nursery.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from fusefs.codec.keys import VolumeKeys
from fusefs.config import MIN_CHUNK, VolumeConfig
from fusefs.errors import FsError
from fusefs.events import EventLog
from fusefs.meta.repo import ROOT_INODE, MetaRepo
from fusefs.stores.local import LocalStore, object_relpath
from fusefs.vfs import RENAME_EXCHANGE, RENAME_NOREPLACE, FileSystem
from fusefs.volume import Volume
from fusefs.xattrfs import XATTR_CREATE, XATTR_REPLACE

CS = MIN_CHUNK  # 64 KiB
N_SHARES = 5
UID, GID = 1000, 1000
RW = os.O_RDWR


@dataclass
class Env:
    fs: FileSystem
    meta: MetaRepo
    volume: Volume
    store_dirs: list[Path]

    def fresh_fs(self) -> FileSystem:
        """Another FileSystem over the same volume: an empty cache, reads go to the stores."""
        return FileSystem(self.meta, self.volume)

    def objects(self) -> int:
        return sum(1 for d in self.store_dirs for p in (d / "objects").rglob("*") if p.is_file())


@pytest.fixture
def env(tmp_path: Path) -> Env:
    store_dirs = [tmp_path / f"store{i}" for i in range(N_SHARES)]
    for d in store_dirs:
        d.mkdir()
    stores = [LocalStore(str(d)) for d in store_dirs]
    volume_id = os.urandom(16)
    keys = VolumeKeys(os.urandom(32), volume_id)
    cfg = VolumeConfig(volume_id.hex(), 3, 2, CS, [s.url for s in stores], keys.check_value)
    meta = MetaRepo(tmp_path / "meta.db", create=True)
    with meta.transaction():
        root = meta.create_inode(os.urandom(16), stat.S_IFDIR | 0o755, 0, 0, 2, time.time_ns())
    assert root.id == ROOT_INODE
    volume = Volume(cfg, keys, stores, meta, EventLog(tmp_path / "events.jsonl"))
    fs = FileSystem(meta, volume)
    assert fs.flusher.nursery is None  # inline sealing unless a test opens a nursery
    yield Env(fs, meta, volume, store_dirs)
    meta.close()


def run(fn: Callable[..., Awaitable], *args):
    return trio.run(fn, *args)


def data_of(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


def errno_of(exc_info: pytest.ExceptionInfo) -> int:
    return exc_info.value.errno


async def create(fs: FileSystem, name: bytes, parent: int = ROOT_INODE) -> tuple[int, int]:
    fh, attr = await fs.create(parent, name, 0o644, RW | os.O_CREAT, UID, GID)
    return fh, attr.id


async def write_file(fs: FileSystem, name: bytes, data: bytes, parent: int = ROOT_INODE,
                     piece: int = 10_000) -> int:
    """create + write in `piece`-byte writes + release; returns the inode."""
    fh, ino = await create(fs, name, parent)
    for off in range(0, len(data), piece):
        await fs.write(fh, off, data[off : off + piece])
    await fs.release(fh)
    return ino


async def read_all(fs: FileSystem, ino: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, fs.attr(ino).size + 1000)
    finally:
        await fs.release(fh)


# ------------------------------------------------------------------------------------------
# data: write, read, flush
# ------------------------------------------------------------------------------------------


def test_round_trip_across_chunk_boundaries(env: Env) -> None:
    fs = env.fs
    data = data_of(3 * CS + 123, seed=1)

    async def main():
        fh, ino = await create(fs, b"f")
        # odd-sized writes, so pieces straddle chunk boundaries
        for off in range(0, len(data), 10_007):
            assert await fs.write(fh, off, data[off : off + 10_007]) == len(
                data[off : off + 10_007])
        assert fs.attr(ino).size == len(data)
        ranges = [(0, len(data)), (CS - 5, 10), (CS - 1, CS + 2), (2 * CS, CS),
                  (len(data) - 3, 100), (len(data), 10), (len(data) + 5000, 10), (17, 0)]
        before = [await fs.read(fh, o, n) for o, n in ranges]
        await fs.flush(fh)
        after = [await fs.read(fh, o, n) for o, n in ranges]
        await fs.release(fh)
        return ino, ranges, before, after

    ino, ranges, before, after = run(main)
    expected = [data[o : o + n] for o, n in ranges]
    assert before == expected  # from dirty / in-flight buffers
    assert after == expected  # from committed chunks
    assert env.meta.get_inode(ino).size == len(data)
    rows = [env.meta.get_chunk(ino, i) for i in range(5)]
    assert [r.length if r else None for r in rows] == [CS, CS, CS, 123, None]
    assert env.objects() == 4 * N_SHARES
    # a fresh filesystem (empty cache) reads the same bytes from the stores
    assert run(read_all, env.fresh_fs(), ino) == data


def test_small_file_and_empty_file(env: Env) -> None:
    async def main():
        a = await write_file(env.fs, b"small", b"hello")
        b = await write_file(env.fs, b"empty", b"")
        return a, b

    a, b = run(main)
    fresh = env.fresh_fs()
    assert run(read_all, fresh, a) == b"hello"
    assert run(read_all, fresh, b) == b""
    assert env.meta.get_chunk(b, 0) is None
    assert fresh.attr(a).size == 5 and fresh.attr(b).size == 0


def test_overwrite_in_place_keeps_other_bytes(env: Env) -> None:
    data = bytearray(data_of(2 * CS + 10, seed=2))

    async def main():
        ino = await write_file(env.fs, b"f", bytes(data))
        fh = await env.fs.open(ino, RW)
        await env.fs.write(fh, CS - 3, b"XXXXXX")  # across the first boundary
        await env.fs.release(fh)
        return ino

    ino = run(main)
    data[CS - 3 : CS + 3] = b"XXXXXX"
    assert run(read_all, env.fresh_fs(), ino) == bytes(data)
    # the replaced versions were collected: 3 chunks, 5 shares each
    run(env.volume.make_durable)  # close leaves garbage to the durability pass
    assert env.objects() == 3 * N_SHARES
    assert env.meta.garbage() == []
    assert env.meta.get_chunk(ino, 0).version == 2
    assert env.meta.get_chunk(ino, 2).version == 1


def test_sparse_write(env: Env) -> None:
    off = 5 * CS + 7

    async def main():
        fh, ino = await create(env.fs, b"sparse")
        await env.fs.write(fh, off, b"tail")
        await env.fs.write(fh, 2 * CS + 100, b"mid")
        before = await env.fs.read(fh, 0, off + 100)
        await env.fs.release(fh)
        return ino, before

    ino, before = run(main)
    expected = bytearray(off + 4)
    expected[off:] = b"tail"
    expected[2 * CS + 100 : 2 * CS + 103] = b"mid"
    assert before == bytes(expected)
    assert run(read_all, env.fresh_fs(), ino) == bytes(expected)
    assert env.meta.get_inode(ino).size == off + 4
    present = [i for i in range(7) if env.meta.get_chunk(ino, i) is not None]
    assert present == [2, 5]  # holes take no chunks


def test_read_from_write_only_handle_and_bad_handles(env: Env) -> None:
    async def main():
        fh, ino = await create(env.fs, b"f")
        await env.fs.write(fh, 0, b"abc")
        await env.fs.release(fh)
        ro = await env.fs.open(ino, os.O_RDONLY)
        with pytest.raises(FsError) as e1:
            await env.fs.write(ro, 0, b"x")
        await env.fs.release(ro)
        with pytest.raises(FsError) as e2:
            await env.fs.read(ro, 0, 10)
        return errno_of(e1), errno_of(e2)

    assert run(main) == (errno.EBADF, errno.EBADF)


def test_open_with_o_trunc(env: Env) -> None:
    async def main():
        ino = await write_file(env.fs, b"f", data_of(2 * CS))
        fh = await env.fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        assert env.fs.attr(ino).size == 0
        await env.fs.write(fh, 0, b"new")
        await env.fs.release(fh)
        return ino

    ino = run(main)
    assert run(read_all, env.fresh_fs(), ino) == b"new"
    run(env.volume.make_durable)  # close leaves garbage to the durability pass
    assert env.objects() == N_SHARES


def test_background_sealing(env: Env) -> None:
    data = data_of(6 * CS + 5, seed=3)

    async def main():
        async with trio.open_nursery() as nursery:
            env.fs.flusher.nursery = nursery
            env.volume.healer.nursery = nursery
            fh, ino = await create(env.fs, b"bg")
            await env.fs.write(fh, 0, data)
            mid = await env.fs.read(fh, CS - 10, 3 * CS)  # dirty, in flight or sealed
            await env.fs.flush(fh)
            assert not env.fs.files[ino].inflight
            whole = await env.fs.read(fh, 0, len(data))
            await env.fs.release(fh)
            env.fs.flusher.nursery = None
            env.volume.healer.nursery = None
        return ino, mid, whole

    ino, mid, whole = run(main)
    assert mid == data[CS - 10 : 4 * CS - 10]
    assert whole == data
    assert env.meta.get_inode(ino).size == len(data)
    assert run(read_all, env.fresh_fs(), ino) == data


def test_read_only_open_of_a_small_file_announces_its_data_shares(env: Env) -> None:
    """Local disks start on a small file's data shares at open (posix_fadvise WILLNEED), so
    several readers' disk reads overlap although reads of small files run inline."""
    data = data_of(CS // 2, seed=6)
    ino = run(write_file, env.fs, b"small", data)
    row = env.meta.get_chunk(ino, 0)
    announced: list[str] = []
    for store in env.volume.stores:
        plain = store.will_need_blocking

        def spy(name: str, plain=plain) -> None:
            announced.append(name)
            plain(name)

        store.will_need_blocking = spy
    fresh = env.fresh_fs()

    async def main():
        fh = await fresh.open(ino, os.O_RDONLY)
        got = await fresh.read(fh, 0, CS)
        await fresh.release(fh)
        fh = await fresh.open(ino, RW)  # opened for writing: nothing to announce
        await fresh.release(fh)
        return got

    assert run(main) == data
    keys = env.volume.keys
    assert sorted(announced) == sorted(keys.object_name(row.oid, i) for i in range(3))


def test_background_sequential_read_with_readahead(env: Env) -> None:
    data = data_of(8 * CS, seed=4)
    ino = run(write_file, env.fs, b"ra", data, ROOT_INODE, CS)
    fresh = env.fresh_fs()

    async def main():
        out = []
        async with trio.open_nursery() as nursery:
            fresh.flusher.nursery = nursery
            fh = await fresh.open(ino, os.O_RDONLY)
            for off in range(0, len(data), 32 << 10):
                out.append(await fresh.read(fh, off, 32 << 10))
            await fresh.release(fh)
            fresh.flusher.nursery = None
        return b"".join(out)

    assert run(main) == data


def test_background_readahead_needs_a_run_not_one_coincidence(env: Env) -> None:
    """A random reader that once lands right after its previous read fetches only what it
    asked for; a reader that keeps going on from where it was starts readahead."""
    data = data_of(40 * CS, seed=5)  # reads > 1 MiB apart are not near one another
    ino = run(write_file, env.fs, b"ra2", data, ROOT_INODE, CS)
    fresh = env.fresh_fs()

    def cached() -> set[int]:
        return {idx for (i, idx, _) in fresh.cache._items if i == ino}

    async def reads(fh: int, offsets: list[int]) -> list[bytes]:
        async with trio.open_nursery() as nursery:  # exits once readahead has finished
            fresh.flusher.nursery = nursery
            got = [bytes(await fresh.read(fh, off, 4096)) for off in offsets]
            fresh.flusher.nursery = None
        return got

    async def main():
        fh = await fresh.open(ino, os.O_RDONLY)
        random_like = [30 * CS + 100, 2 * CS + 500, 2 * CS + 4596]  # the third: a coincidence
        got = await reads(fh, random_like)
        after_random = cached()
        run_offsets = [20 * CS + 4096 * j for j in range(3)]
        got += await reads(fh, run_offsets)
        await fresh.release(fh)
        return random_like + run_offsets, got, after_random, cached()

    offsets, got, after_random, after_run = run(main)
    assert got == [data[o : o + 4096] for o in offsets]
    assert after_random == set(), "ranged reads only: nothing fetched whole, no readahead"
    assert {21, 22} <= after_run, "a sequential run reads ahead"


def test_unrecoverable_chunk_is_eio(env: Env) -> None:
    data = data_of(3 * CS, seed=8)
    ino = run(write_file, env.fs, b"f", data)
    row = env.meta.get_chunk(ino, 1)
    for i in range(3):  # 3 of 5 shares gone: k=3 cannot be met
        name = env.volume.keys.object_name(row.oid, i)
        (env.store_dirs[row.placement[i]] / object_relpath(name)).unlink()
    fresh = env.fresh_fs()

    async def main():
        fh = await fresh.open(ino, RW)
        first = await fresh.read(fh, 0, CS)
        last = await fresh.read(fh, 2 * CS, CS)
        with pytest.raises(FsError) as e1:
            await fresh.read(fh, CS - 10, 20)
        with pytest.raises(FsError) as e2:
            await fresh.write(fh, CS + 5, b"partial")  # needs the old bytes of chunk 1
        await fresh.release(fh)
        return first, last, errno_of(e1), errno_of(e2)

    first, last, err1, err2 = run(main)
    assert first == data[:CS] and last == data[2 * CS :]
    assert (err1, err2) == (errno.EIO, errno.EIO)


# ------------------------------------------------------------------------------------------
# truncate
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shrink_to", [0, 100, CS, CS + 100, 2 * CS - 1])
def test_truncate_shrink_then_grow_reads_zeros_open_file(env: Env, shrink_to: int) -> None:
    data = data_of(2 * CS + 500, seed=5)
    grow_to = 3 * CS + 7

    async def main():
        ino = await write_file(env.fs, b"t", data)
        fh = await env.fs.open(ino, RW)
        await env.fs.setattr(ino, size=shrink_to)
        assert env.fs.attr(ino).size == shrink_to
        shrunk = await env.fs.read(fh, 0, 10 * CS)
        await env.fs.setattr(ino, size=grow_to)
        grown = await env.fs.read(fh, 0, 10 * CS)
        await env.fs.release(fh)
        return ino, shrunk, grown

    ino, shrunk, grown = run(main)
    expected = data[:shrink_to] + bytes(grow_to - shrink_to)
    assert shrunk == data[:shrink_to]
    assert grown == expected
    assert env.meta.get_inode(ino).size == grow_to
    assert run(read_all, env.fresh_fs(), ino) == expected


def test_truncate_without_open_handle(env: Env) -> None:
    data = data_of(2 * CS + 500, seed=6)

    async def main():
        ino = await write_file(env.fs, b"t", data)
        await env.fs.setattr(ino, size=CS + 1)
        await env.fs.setattr(ino, size=2 * CS + 500)
        return ino

    ino = run(main)
    expected = data[: CS + 1] + bytes(CS - 1 + 500)
    assert run(read_all, env.fresh_fs(), ino) == expected
    assert ino not in env.fs.files
    # chunk 2 dropped, chunk 1 rewritten to one byte, old versions collected
    assert env.meta.get_chunk(ino, 2) is None
    assert env.meta.get_chunk(ino, 1).length == 1
    run(env.volume.make_durable)  # close leaves garbage to the durability pass
    assert env.objects() == 2 * N_SHARES


def test_truncate_dirty_data_shrink_then_grow(env: Env) -> None:
    async def main():
        fh, ino = await create(env.fs, b"t")
        await env.fs.write(fh, 0, b"a" * 1000)
        await env.fs.write(fh, CS, b"b" * 1000)  # two dirty, unsealed chunks
        await env.fs.setattr(ino, size=10)
        await env.fs.setattr(ino, size=CS + 1000)
        before = await env.fs.read(fh, 0, 2 * CS)
        await env.fs.release(fh)
        return ino, before

    ino, before = run(main)
    expected = b"a" * 10 + bytes(CS + 1000 - 10)
    assert before == expected
    assert run(read_all, env.fresh_fs(), ino) == expected


@pytest.mark.parametrize("shrink_to", [0, CS + 100])
def test_truncate_commits_only_states_a_reader_may_see(env: Env, tmp_path: Path,
                                                       shrink_to: int) -> None:
    """Another process reading the metadata (the direct API beside a mount) sees every
    commit: each must read as the old file or a prefix of it, never the old size over
    dropped chunks (zeros where data was). The state is observed before every statement
    the file layer runs, through a second, read-only connection."""
    data = data_of(3 * CS + 500, seed=7)
    ino = run(write_file, env.fs, b"t", data)
    reader = sqlite3.connect(f"file:{tmp_path / 'meta.db'}?mode=ro", uri=True)
    seen: list[tuple[int, set[int]]] = []

    def observe(_statement: object) -> None:
        (size,) = reader.execute("SELECT size FROM inodes WHERE id=?", (ino,)).fetchone()
        chunks = {r[0] for r in reader.execute("SELECT idx FROM chunks WHERE inode=?", (ino,))}
        seen.append((size, chunks))

    async def shrink() -> None:
        await env.fs.setattr(ino, size=shrink_to)

    env.meta.db.set_trace_callback(observe)
    try:
        run(shrink)
    finally:
        env.meta.db.set_trace_callback(None)
    observe(None)
    reader.close()
    assert seen[0] == (len(data), {0, 1, 2, 3}) and seen[-1][0] == shrink_to
    for size, chunks in seen:
        assert set(range(-(-size // CS))) <= chunks, f"size {size} over chunks {chunks}"


def test_truncate_directory_and_symlink(env: Env) -> None:
    d = env.fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID)
    s = env.fs.symlink(ROOT_INODE, b"s", b"target", UID, GID)
    with pytest.raises(FsError) as e1:
        run(lambda: env.fs.setattr(d.id, size=0))
    with pytest.raises(FsError) as e2:
        run(lambda: env.fs.setattr(s.id, size=0))
    assert (errno_of(e1), errno_of(e2)) == (errno.EISDIR, errno.EINVAL)


# ------------------------------------------------------------------------------------------
# names: create, rename, unlink, rmdir, links
# ------------------------------------------------------------------------------------------


def test_create_existing_and_bad_names(env: Env) -> None:
    run(write_file, env.fs, b"f", b"x")
    with pytest.raises(FsError) as e:
        run(create, env.fs, b"f")
    assert errno_of(e) == errno.EEXIST
    for bad, err in [(b"", errno.EINVAL), (b".", errno.EINVAL), (b"..", errno.EINVAL),
                     (b"a/b", errno.EINVAL), (b"n" * 256, errno.ENAMETOOLONG)]:
        with pytest.raises(FsError) as e:
            env.fs.mkdir(ROOT_INODE, bad, 0o755, UID, GID)
        assert errno_of(e) == err, bad
    env.fs.mkdir(ROOT_INODE, b"n" * 255, 0o755, UID, GID)
    assert env.fs.lookup(ROOT_INODE, b"n" * 255).mode == stat.S_IFDIR | 0o755


def test_lookup_dot_and_dotdot(env: Env) -> None:
    d = env.fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID)
    assert env.fs.lookup(d.id, b".").id == d.id
    assert env.fs.lookup(d.id, b"..").id == ROOT_INODE
    assert env.fs.lookup(ROOT_INODE, b"..").id == ROOT_INODE
    with pytest.raises(FsError) as e:
        env.fs.lookup(ROOT_INODE, b"missing")
    assert errno_of(e) == errno.ENOENT


def test_lookup_errors_of_the_parent(env: Env) -> None:
    """The parent is checked only when the name is missing: the errors must not change."""
    f = run(write_file, env.fs, b"f", b"x")
    for parent, name, err in [(f, b"x", errno.ENOTDIR), (f, b".", errno.ENOTDIR),
                              (9999, b"x", errno.ENOENT), (ROOT_INODE, b"n" * 256,
                                                           errno.ENAMETOOLONG)]:
        with pytest.raises(FsError) as e:
            env.fs.lookup(parent, name)
        assert errno_of(e) == err, (parent, name)


def test_open_after_lookup_sees_changes_in_between(env: Env) -> None:
    """open reuses the row lookup read only while nothing changed in the database."""
    async def main():
        ino = await write_file(env.fs, b"f", data_of(3000))
        assert env.fs.lookup(ROOT_INODE, b"f").size == 3000
        await env.fs.setattr(ino, size=1000)  # commits the new size, no FileData left
        assert ino not in env.fs.files
        assert await read_all(env.fs, ino) == data_of(3000)[:1000]
        assert env.fs.lookup(ROOT_INODE, b"f").size == 1000
        fh = await env.fs.open(ino, RW)
        await env.fs.write(fh, 1000, b"y" * 500)
        await env.fs.release(fh)
        env.fs.lookup(ROOT_INODE, b"f")
        other = await write_file(env.fs, b"g", b"z")  # another file changes: still coherent
        assert await read_all(env.fs, ino) == data_of(3000)[:1000] + b"y" * 500
        assert await read_all(env.fs, other) == b"z"

    run(main)


def test_open_after_lookup_of_an_unlinked_file(env: Env) -> None:
    async def main():
        ino = await write_file(env.fs, b"f", b"data")
        env.fs.lookup(ROOT_INODE, b"f")
        env.fs.unlink(ROOT_INODE, b"f")
        assert await read_all(env.fs, ino) == b"data"  # the kernel's reference keeps it
        env.fs.forget(ino, 2)  # create and lookup each took one
        with pytest.raises(FsError) as e:
            await env.fs.open(ino, os.O_RDONLY)
        assert errno_of(e) == errno.ENOENT

    run(main)


def test_rename_replacing_a_target(env: Env) -> None:
    async def main():
        a = await write_file(env.fs, b"a", b"AAAA")
        b = await write_file(env.fs, b"b", b"BBBBBBBB")
        return a, b

    a, b = run(main)
    env.fs.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert env.fs.lookup(ROOT_INODE, b"b").id == a
    with pytest.raises(FsError) as e:
        env.fs.lookup(ROOT_INODE, b"a")
    assert errno_of(e) == errno.ENOENT
    assert run(read_all, env.fs, a) == b"AAAA"
    # the replaced inode has no name; the kernel still references it until forget
    assert env.meta.get_inode(b).nlink == 0
    env.fs.forget(b, 1)
    assert env.meta.get_inode(b) is None
    run(env.fs.collect_unlinked)
    assert env.objects() == N_SHARES  # only a's shares remain


def test_rename_across_directories_and_noreplace(env: Env) -> None:
    d1 = env.fs.mkdir(ROOT_INODE, b"d1", 0o755, UID, GID)
    d2 = env.fs.mkdir(ROOT_INODE, b"d2", 0o755, UID, GID)
    sub = env.fs.mkdir(d1.id, b"sub", 0o755, UID, GID)
    f = run(write_file, env.fs, b"f", b"x", d1.id)
    env.fs.rename(d1.id, b"sub", d2.id, b"sub2")
    assert env.fs.lookup(d2.id, b"sub2").id == sub.id
    assert env.fs.attr(d1.id).nlink == 2
    assert env.fs.attr(d2.id).nlink == 3
    assert env.fs.lookup(sub.id, b"..").id == d2.id
    run(write_file, env.fs, b"g", b"y", d2.id)
    with pytest.raises(FsError) as e:
        env.fs.rename(d1.id, b"f", d2.id, b"g", RENAME_NOREPLACE)
    assert errno_of(e) == errno.EEXIST
    env.fs.rename(d1.id, b"f", d2.id, b"h", RENAME_NOREPLACE)
    assert env.fs.lookup(d2.id, b"h").id == f


def test_rename_exchange(env: Env) -> None:
    d = env.fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID)
    f = run(write_file, env.fs, b"f", b"x")
    env.fs.rename(ROOT_INODE, b"d", ROOT_INODE, b"f", RENAME_EXCHANGE)
    assert env.fs.lookup(ROOT_INODE, b"f").id == d.id
    assert env.fs.lookup(ROOT_INODE, b"d").id == f
    with pytest.raises(FsError) as e:
        env.fs.rename(ROOT_INODE, b"d", ROOT_INODE, b"nothing", RENAME_EXCHANGE)
    assert errno_of(e) == errno.ENOENT


def test_rename_dir_into_its_own_subdir(env: Env) -> None:
    a = env.fs.mkdir(ROOT_INODE, b"a", 0o755, UID, GID)
    b = env.fs.mkdir(a.id, b"b", 0o755, UID, GID)
    c = env.fs.mkdir(b.id, b"c", 0o755, UID, GID)
    for parent in (a.id, b.id, c.id):
        with pytest.raises(FsError) as e:
            env.fs.rename(ROOT_INODE, b"a", parent, b"x")
        assert errno_of(e) == errno.EINVAL
    with pytest.raises(FsError) as e:
        env.fs.rename(a.id, b"b", c.id, b"x")
    assert errno_of(e) == errno.EINVAL
    # nothing moved
    assert env.fs.lookup(ROOT_INODE, b"a").id == a.id
    assert env.fs.lookup(a.id, b"b").id == b.id
    assert env.meta.parent_of(a.id) == (ROOT_INODE, b"a")


def test_rename_type_mismatches(env: Env) -> None:
    d = env.fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID)
    env.fs.mkdir(ROOT_INODE, b"full", 0o755, UID, GID)
    full = env.fs.lookup(ROOT_INODE, b"full")
    env.fs.mkdir(full.id, b"child", 0o755, UID, GID)
    run(write_file, env.fs, b"f", b"x")
    cases = [(b"d", b"f", errno.ENOTDIR), (b"f", b"d", errno.EISDIR),
             (b"d", b"full", errno.ENOTEMPTY), (b"missing", b"z", errno.ENOENT)]
    for src, dst, err in cases:
        with pytest.raises(FsError) as e:
            env.fs.rename(ROOT_INODE, src, ROOT_INODE, dst)
        assert errno_of(e) == err, (src, dst)
    # a dir replaces an empty dir; link counts stay right
    env.fs.mkdir(ROOT_INODE, b"empty", 0o755, UID, GID)
    root_links = env.fs.attr(ROOT_INODE).nlink
    env.fs.rename(ROOT_INODE, b"d", ROOT_INODE, b"empty")
    assert env.fs.lookup(ROOT_INODE, b"empty").id == d.id
    assert env.fs.attr(ROOT_INODE).nlink == root_links - 1


def test_rename_onto_another_link_of_the_same_inode(env: Env) -> None:
    f = run(write_file, env.fs, b"a", b"x")
    env.fs.link(f, ROOT_INODE, b"b")
    env.fs.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")  # POSIX: does nothing
    assert env.fs.lookup(ROOT_INODE, b"a").id == f
    assert env.fs.lookup(ROOT_INODE, b"b").id == f
    assert env.fs.attr(f).nlink == 2


def test_rmdir(env: Env) -> None:
    d = env.fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID)
    run(write_file, env.fs, b"f", b"x", d.id)
    with pytest.raises(FsError) as e:
        env.fs.rmdir(ROOT_INODE, b"d")
    assert errno_of(e) == errno.ENOTEMPTY
    with pytest.raises(FsError) as e:
        env.fs.rmdir(ROOT_INODE, b"nothing")
    assert errno_of(e) == errno.ENOENT
    with pytest.raises(FsError) as e:
        env.fs.rmdir(d.id, b"f")
    assert errno_of(e) == errno.ENOTDIR
    with pytest.raises(FsError) as e:
        env.fs.unlink(ROOT_INODE, b"d")
    assert errno_of(e) == errno.EISDIR
    env.fs.unlink(d.id, b"f")
    env.fs.rmdir(ROOT_INODE, b"d")
    assert env.meta.lookup(ROOT_INODE, b"d") is None
    assert env.fs.attr(ROOT_INODE).nlink == 2
    env.fs.forget(d.id, 1)
    assert env.meta.get_inode(d.id) is None


@pytest.mark.parametrize("order", ["release-then-forget", "forget-then-release"])
def test_unlink_while_open(env: Env, order: str) -> None:
    data = data_of(2 * CS + 3, seed=7)

    async def main():
        fh, ino = await create(env.fs, b"f")
        await env.fs.write(fh, 0, data)
        await env.fs.flush(fh)
        env.fs.unlink(ROOT_INODE, b"f")
        assert env.fs.attr(ino).nlink == 0
        with pytest.raises(FsError):
            env.fs.lookup(ROOT_INODE, b"f")
        got = await env.fs.read(fh, 0, len(data))
        await env.fs.write(fh, len(data), b"more")  # still writable
        got_more = await env.fs.read(fh, len(data), 10)
        assert env.meta.get_inode(ino) is not None
        if order == "release-then-forget":
            await env.fs.release(fh)
            assert env.meta.get_inode(ino) is not None  # the kernel still knows it
            env.fs.forget(ino, 1)
        else:
            env.fs.forget(ino, 1)
            assert env.meta.get_inode(ino) is not None  # still open
            await env.fs.release(fh)
        return ino, got, got_more

    ino, got, got_more = run(main)
    assert got == data
    assert got_more == b"more"
    assert env.meta.get_inode(ino) is None
    assert env.meta.get_chunk(ino, 0) is None
    assert ino not in env.fs.files
    run(env.volume.make_durable)
    assert env.objects() == 0


def test_forget_counts(env: Env) -> None:
    f = run(write_file, env.fs, b"f", b"x")  # create: 1 lookup
    env.fs.lookup(ROOT_INODE, b"f")
    env.fs.lookup(ROOT_INODE, b"f")  # 3 lookups
    env.fs.unlink(ROOT_INODE, b"f")
    env.fs.forget(f, 2)
    assert env.meta.get_inode(f) is not None
    env.fs.forget(f, 1)
    assert env.meta.get_inode(f) is None


def test_unlink_without_references_deletes_at_once(env: Env) -> None:
    f = run(write_file, env.fs, b"f", b"x")
    env.fs.forget(f, 1)
    assert env.meta.get_inode(f) is not None  # still has a name
    env.fs.unlink(ROOT_INODE, b"f")
    assert env.meta.get_inode(f) is None


def test_link_counts(env: Env) -> None:
    fs = env.fs
    assert fs.attr(ROOT_INODE).nlink == 2
    d = fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID)
    assert d.nlink == 2
    assert fs.attr(ROOT_INODE).nlink == 3
    e = fs.mkdir(d.id, b"e", 0o755, UID, GID)
    assert fs.attr(d.id).nlink == 3
    f = run(write_file, fs, b"f", b"data", d.id)
    assert fs.attr(f).nlink == 1
    assert fs.link(f, ROOT_INODE, b"f2").nlink == 2
    assert fs.link(f, e.id, b"f3").nlink == 3
    with pytest.raises(FsError) as err:
        fs.link(d.id, ROOT_INODE, b"dirlink")
    assert errno_of(err) == errno.EPERM
    with pytest.raises(FsError) as err:
        fs.link(f, ROOT_INODE, b"f2")
    assert errno_of(err) == errno.EEXIST
    assert run(read_all, fs, fs.lookup(e.id, b"f3").id) == b"data"
    fs.unlink(d.id, b"f")
    assert fs.attr(f).nlink == 2
    fs.unlink(ROOT_INODE, b"f2")
    fs.unlink(e.id, b"f3")
    assert fs.attr(f).nlink == 0
    fs.rmdir(d.id, b"e")
    assert fs.attr(d.id).nlink == 2
    fs.rmdir(ROOT_INODE, b"d")
    assert fs.attr(ROOT_INODE).nlink == 2


def test_symlink_and_readlink(env: Env) -> None:
    s = env.fs.symlink(ROOT_INODE, b"s", b"/some/target", UID, GID)
    assert stat.S_ISLNK(s.mode)
    assert env.fs.readlink(s.id) == b"/some/target"
    assert env.fs.attr(s.id).size == len(b"/some/target")
    f = run(write_file, env.fs, b"f", b"x")
    with pytest.raises(FsError) as e:
        env.fs.readlink(f)
    assert errno_of(e) == errno.EINVAL


def test_readdir_paging(env: Env) -> None:
    for i in range(7):
        env.fs.mkdir(ROOT_INODE, f"d{i}".encode(), 0o755, UID, GID)
    names, after = [], 0
    while page := env.fs.readdir(ROOT_INODE, after, 3):
        names += [n for _, n, _ in page]
        after = page[-1][0]
        if len(names) == 3:
            env.fs.rmdir(ROOT_INODE, b"d4")
            env.fs.mkdir(ROOT_INODE, b"new", 0o755, UID, GID)
    assert names == [b"d0", b"d1", b"d2", b"d3", b"d5", b"d6", b"new"]


def test_readdir_shows_size_of_open_file(env: Env) -> None:
    async def main():
        fh, ino = await create(env.fs, b"f")
        await env.fs.write(fh, 0, b"x" * 1234)
        (entry,) = env.fs.readdir(ROOT_INODE, 0, 10)
        await env.fs.release(fh)
        return entry[2].size

    assert run(main) == 1234


def test_setattr_fields(env: Env) -> None:
    f = run(write_file, env.fs, b"f", b"x")
    row = run(lambda: env.fs.setattr(f, mode=0o100600, uid=5, gid=6, atime_ns=10, mtime_ns=20))
    assert row.mode == stat.S_IFREG | 0o600
    assert (row.uid, row.gid, row.atime_ns, row.mtime_ns) == (5, 6, 10, 20)
    d = env.fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID)
    row = run(lambda: env.fs.setattr(d.id, mode=0o700))
    assert row.mode == stat.S_IFDIR | 0o700


def test_read_only_filesystem(env: Env) -> None:
    f = run(write_file, env.fs, b"f", b"content")
    ro = FileSystem(env.meta, env.volume, read_only=True)
    assert run(read_all, ro, f) == b"content"
    attempts = [
        lambda: ro.mkdir(ROOT_INODE, b"d", 0o755, UID, GID),
        lambda: ro.unlink(ROOT_INODE, b"f"),
        lambda: ro.rename(ROOT_INODE, b"f", ROOT_INODE, b"g"),
        lambda: ro.setxattr(f, b"user.a", b"1"),
        lambda: run(lambda: ro.open(f, os.O_WRONLY)),
        lambda: run(lambda: ro.setattr(f, size=0)),
    ]
    for attempt in attempts:
        with pytest.raises(FsError) as e:
            attempt()
        assert errno_of(e) == errno.EROFS
    assert env.meta.lookup(ROOT_INODE, b"f") == f


def test_dataset_mode_reads_by_inode_and_forgets_at_a_switch(env: Env) -> None:
    """Dataset mode (read-only): reads without an open serve every byte (whole small files,
    ranges of a multi-chunk one); rows kept from readdir are dropped when the metadata is
    switched (a follower's new snapshot), so a changed file reads as it is now."""
    small = run(write_file, env.fs, b"small", b"s" * 5000)
    big_data = os.urandom(3 * CS + 77)
    big = run(write_file, env.fs, b"big", big_data)
    ds = FileSystem(env.meta, env.volume, read_only=True, dataset=True)
    assert ds.dataset and not FileSystem(env.meta, env.volume, dataset=True).dataset
    assert [n for _, n, _ in ds.readdir(ROOT_INODE, 0, 10)] == [b"small", b"big"]
    assert run(ds.read_inode, small, 0, 1 << 20) == b"s" * 5000
    assert run(ds.read_inode, big, CS - 10, 100) == big_data[CS - 10 : CS + 90]
    assert run(ds.read_inode, big, 0, len(big_data) + 5) == big_data
    with pytest.raises(FsError) as e:
        run(ds.read_inode, ROOT_INODE, 0, 10)
    assert errno_of(e) == errno.EISDIR

    async def rewrite() -> None:  # O_TRUNC: a new chunk version, a new size
        fh = await env.fs.open(small, os.O_WRONLY | os.O_TRUNC)
        await env.fs.write(fh, 0, b"changed")
        await env.fs.release(fh)

    run(rewrite)
    assert run(ds.read_inode, small, 0, 100) == b"s" * 100  # the view before the switch
    ds.switched()
    assert run(ds.read_inode, small, 0, 100) == b"changed"


# ------------------------------------------------------------------------------------------
# extended attributes
# ------------------------------------------------------------------------------------------


def test_xattr_flags(env: Env) -> None:
    fs = env.fs
    f = run(write_file, fs, b"f", b"x")
    with pytest.raises(FsError) as e:
        fs.getxattr(f, b"user.a")
    assert errno_of(e) == errno.ENODATA
    assert fs.listxattr(f) == []

    fs.setxattr(f, b"user.a", b"1", XATTR_CREATE)
    assert fs.getxattr(f, b"user.a") == b"1"
    with pytest.raises(FsError) as e:
        fs.setxattr(f, b"user.a", b"2", XATTR_CREATE)
    assert errno_of(e) == errno.EEXIST
    assert fs.getxattr(f, b"user.a") == b"1"

    fs.setxattr(f, b"user.a", b"3", XATTR_REPLACE)
    assert fs.getxattr(f, b"user.a") == b"3"
    with pytest.raises(FsError) as e:
        fs.setxattr(f, b"user.b", b"4", XATTR_REPLACE)
    assert errno_of(e) == errno.ENODATA
    with pytest.raises(FsError):
        fs.getxattr(f, b"user.b")

    fs.setxattr(f, b"user.b", b"")  # no flags: create or replace
    fs.setxattr(f, b"user.b", b"\0\xff")
    assert sorted(fs.listxattr(f)) == [b"user.a", b"user.b"]
    assert fs.getxattr(f, b"user.b") == b"\0\xff"

    fs.removexattr(f, b"user.a")
    with pytest.raises(FsError) as e:
        fs.removexattr(f, b"user.a")
    assert errno_of(e) == errno.ENODATA
    assert fs.listxattr(f) == [b"user.b"]


def test_xattr_limits_and_missing_inode(env: Env) -> None:
    fs = env.fs
    f = run(write_file, fs, b"f", b"x")
    fs.setxattr(f, b"user." + b"n" * 250, b"v" * 65536)
    for name, value, err in [(b"user." + b"n" * 251, b"v", errno.ERANGE),
                             (b"", b"v", errno.ERANGE),
                             (b"user.big", b"v" * 65537, errno.E2BIG)]:
        with pytest.raises(FsError) as e:
            fs.setxattr(f, name, value)
        assert errno_of(e) == err
    for call in (lambda: fs.getxattr(9999, b"user.a"), lambda: fs.listxattr(9999),
                 lambda: fs.setxattr(9999, b"user.a", b"1"),
                 lambda: fs.removexattr(9999, b"user.a")):
        with pytest.raises(FsError) as e:
            call()
        assert errno_of(e) == errno.ENOENT


def test_xattrs_go_with_the_inode(env: Env) -> None:
    f = run(write_file, env.fs, b"f", b"x")
    env.fs.setxattr(f, b"user.a", b"1")
    env.fs.unlink(ROOT_INODE, b"f")
    env.fs.forget(f, 1)
    assert env.meta.get_inode(f) is None
    assert env.meta.get_xattr(f, b"user.a") is None


# ------------------------------------------------------------------------------------------
# volume-wide
# ------------------------------------------------------------------------------------------


def test_statfs(env: Env) -> None:
    total, free = run(env.fs.volume.space)
    st = os.statvfs(env.store_dirs[0])
    assert total == st.f_blocks * st.f_frsize * 3
    assert 0 < free <= total


def test_shutdown_flushes_and_collects(env: Env) -> None:
    async def main():
        fh, ino = await create(env.fs, b"f")
        await env.fs.write(fh, 0, b"unflushed")
        gone = await write_file(env.fs, b"gone", b"bye")
        env.fs.unlink(ROOT_INODE, b"gone")  # still looked up: survives until shutdown
        await env.fs.shutdown()
        return ino, gone

    ino, gone = run(main)
    assert env.meta.get_inode(gone) is None
    assert run(read_all, env.fresh_fs(), ino) == b"unflushed"
    assert env.objects() == N_SHARES


# ------------------------------------------------------------------------------------------
# times
# ------------------------------------------------------------------------------------------


def test_write_updates_mtime_and_ctime(env: Env) -> None:
    async def main():
        fh, ino = await create(env.fs, b"f")
        env.meta.update_inode(ino, mtime_ns=1, ctime_ns=1)
        start = time.time_ns()
        await env.fs.write(fh, 0, b"x")
        seen = env.fs.attr(ino)
        await env.fs.release(fh)
        return ino, start, seen

    ino, start, seen = run(main)
    assert seen.mtime_ns >= start and seen.ctime_ns >= start
    row = env.meta.get_inode(ino)
    assert row.mtime_ns >= start and row.ctime_ns >= start


def test_explicit_mtime_on_dirty_open_file_keeps_ctime_current(env: Env) -> None:
    """`cp -p` writes, then sets the old mtime with futimens() before close: mtime must be
    the one given, and ctime (which no user can set) must be the time of the change."""
    old = 1_000_000_000 * 10**9  # 2001-09-09

    async def main():
        fh, ino = await create(env.fs, b"f")
        await env.fs.write(fh, 0, b"copied data")
        start = time.time_ns()
        await env.fs.setattr(ino, atime_ns=old, mtime_ns=old)
        seen = env.fs.attr(ino)
        await env.fs.release(fh)
        return ino, start, seen

    ino, start, seen = run(main)
    row = env.meta.get_inode(ino)
    assert seen.mtime_ns == old and row.mtime_ns == old
    assert seen.ctime_ns >= start, "ctime shown as the user-given mtime"
    assert row.ctime_ns >= start, "ctime committed as the user-given mtime"


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "o_trunc"])
def test_a_failed_close_never_leaves_zeros(env: Env, existing: bool, background: bool) -> None:
    """close() fails with EIO (too few stores take the shares): the file must then read as
    what was committed (nothing, or an O_TRUNC'd empty file), never as the new size in
    zeros, in this instance and in a cold one. (The release after the failed flush used to
    commit the size with no data behind it.)"""
    data = data_of(3 * CS + 500, seed=9)

    async def main() -> int:
        if existing:
            await write_file(env.fs, b"f", b"old content")
            ino = env.fs.lookup(ROOT_INODE, b"f").id
            fh = await env.fs.open(ino, RW | os.O_TRUNC)
        else:
            fh, ino = await create(env.fs, b"f")
        for d in env.store_dirs[:2]:  # 3 of 5 stores left: below the write quorum of 4
            shutil.rmtree(d)
        async with trio.open_nursery() as nursery:
            env.fs.flusher.nursery = nursery if background else None
            for off in range(0, len(data), 70_000):
                await env.fs.write(fh, off, data[off : off + 70_000])
            with pytest.raises(FsError) as info:
                await env.fs.flush(fh)  # close(2): the kernel's FLUSH, then RELEASE
            assert info.value.errno == errno.EIO
            await env.fs.release(fh)
            env.fs.flusher.nursery = None
        return ino

    ino = run(main)
    assert env.fs.attr(ino).size == 0
    assert run(read_all, env.fs, ino) == b""
    cold = env.fresh_fs()
    assert cold.attr(ino).size == 0 and run(read_all, cold, ino) == b""
