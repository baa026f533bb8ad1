"""Power loss keeps the old or the new version (issue 12, "Done when" 5).

SQLite may write a commit to disk before the stores have synced the shares it names. The
state a power loss can leave is built here directly: a file made durable, then changed (the
new chunk rows committed, the replaced versions in `garbage`), then the new shares removed
from the stores as if they had never reached the disks. The next start (a fresh Volume over
the same metadata and stores, as a mount does) must put the old version back before any
garbage is collected; nothing else may change. Real stores, real SQLite, no mount.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import trio

from fusefs.codec.keys import VolumeKeys
from fusefs.config import MIN_CHUNK, VolumeConfig
from fusefs.events import EventLog, read_events
from fusefs.meta.repo import ROOT_INODE, MetaRepo
from fusefs.stores.local import LocalStore, object_relpath
from fusefs.vfs import FileSystem
from fusefs.volume import Volume

CS = MIN_CHUNK


class Host:
    """A volume as a host sees it; `restart` is a new daemon over the same disks."""

    def __init__(self, tmp_path: Path) -> None:
        self.dirs = [tmp_path / f"s{i}" for i in range(5)]
        for d in self.dirs:
            d.mkdir()
        self.vid = os.urandom(16)
        self.keys = VolumeKeys(os.urandom(32), self.vid)
        self.cfg = VolumeConfig(self.vid.hex(), 3, 2, CS, [f"file://{d}" for d in self.dirs],
                                self.keys.check_value)
        self.meta_path = tmp_path / "meta.db"
        self.events = tmp_path / "events.jsonl"
        meta = MetaRepo(self.meta_path, create=True)
        with meta.transaction():
            meta.create_inode(os.urandom(16), stat.S_IFDIR | 0o755, 0, 0, 2, time.time_ns())
        meta.close()
        self.restart()

    def restart(self) -> None:
        self.meta = MetaRepo(self.meta_path)
        stores = [LocalStore(str(d)) for d in self.dirs]
        self.volume = Volume(self.cfg, self.keys, stores, self.meta, EventLog(self.events))
        self.fs = FileSystem(self.meta, self.volume)

    def objects(self) -> set[Path]:
        return {p for d in self.dirs for p in (d / "objects").rglob("*") if p.is_file()}

    def lose_shares_of(self, ino: int, idxs: list[int]) -> None:
        """The shares of these chunks' current versions never reached the disks."""
        for row in self.meta.chunks_of(ino):
            if row.idx in idxs:
                for i, si in enumerate(row.placement):
                    (self.dirs[si] / object_relpath(self.keys.object_name(row.oid, i))).unlink()


async def write(fs: FileSystem, name: bytes, data: bytes, flags: int = 0, at: int = 0) -> int:
    try:
        ino = fs.lookup(ROOT_INODE, name).id
        fh = await fs.open(ino, os.O_RDWR | flags)
    except Exception:  # noqa: BLE001 - not there yet
        fh, attr = await fs.create(ROOT_INODE, name, 0o644, os.O_RDWR, 0, 0)
        ino = attr.id
    await fs.write(fh, at, data)
    await fs.release(fh)  # close: committed, not yet durable
    return ino


async def read(fs: FileSystem, name: bytes) -> bytes:
    ino = fs.lookup(ROOT_INODE, name).id
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        return bytes(await fs.read(fh, 0, fs.attr(ino).size + 10))
    finally:
        await fs.release(fh)


OLD = os.urandom(3 * CS + 100)


@pytest.mark.parametrize("change", ["in-place", "truncate-rewrite", "append", "shrink"])
def test_a_lost_change_brings_the_old_version_back(tmp_path: Path, change: str) -> None:
    host = Host(tmp_path)

    async def before_the_power_loss() -> tuple[int, list[int], bytes]:
        ino = await write(host.fs, b"f", OLD)
        await host.volume.make_durable()  # fsync: the old version is durable
        if change == "in-place":
            new = OLD[:CS] + os.urandom(CS) + OLD[2 * CS :]
            await write(host.fs, b"f", new[CS : 2 * CS], at=CS)
            lost = [1]
        elif change == "truncate-rewrite":
            new = os.urandom(CS + 5)
            await write(host.fs, b"f", new, os.O_TRUNC)
            lost = [0, 1]
        elif change == "append":
            new = OLD + os.urandom(2 * CS)
            await write(host.fs, b"f", new)
            lost = [4]
        else:
            new = OLD[: CS + 7]
            await host.fs.setattr(ino, size=len(new))
            lost = [1]
        return ino, lost, new

    ino, lost, new = trio.run(before_the_power_loss)
    old_objects = host.objects()
    host.lose_shares_of(ino, lost)
    host.meta.close()

    host.restart()  # the next mount
    assert trio.run(host.volume.recover_lost_writes) == 1
    assert trio.run(read, host.fs, b"f") == OLD
    events = [e for e in read_events(host.events) if e["kind"] == "write_lost"]
    assert events and {e["action"] for e in events} == {"restored"}, events
    trio.run(host.volume.make_durable)  # garbage collected: the old version stays
    assert trio.run(read, host.fs, b"f") == OLD
    assert trio.run(host.volume.recover_lost_writes) == 0  # once is enough
    host.restart()
    assert trio.run(read, host.fs, b"f") == OLD
    assert host.objects() <= old_objects
    host.meta.close()


def test_a_change_whose_shares_arrived_stays(tmp_path: Path) -> None:
    host = Host(tmp_path)
    new = os.urandom(2 * CS)

    async def main() -> None:
        await write(host.fs, b"f", OLD)
        await host.volume.make_durable()
        await write(host.fs, b"f", new, os.O_TRUNC)

    trio.run(main)
    host.meta.close()
    host.restart()
    assert trio.run(host.volume.recover_lost_writes) == 0
    assert trio.run(read, host.fs, b"f") == new
    host.meta.close()


def test_nothing_is_suspect_after_a_durable_point(tmp_path: Path) -> None:
    host = Host(tmp_path)

    async def main() -> None:
        await write(host.fs, b"f", OLD)
        await write(host.fs, b"f", os.urandom(CS), os.O_TRUNC)
        await host.volume.make_durable()

    trio.run(main)
    assert host.meta.suspect_garbage() == []
    host.meta.close()
