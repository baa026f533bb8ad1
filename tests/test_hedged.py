"""Slow and failing stores: reads ask other stores instead of waiting, writes keep going
while the write quorum holds, and the missing shares are queued for repair.

A store that hangs cannot be produced with a real directory here, so `StallingStore` wraps
a real LocalStore and stalls its reads; everything else is the real volume over real files.
Time is trio's MockClock: it jumps ahead whenever every task waits, so a hedge delay costs
no wall time and a loaded machine cannot make a healthy store look slow (the store's own
reads and writes run on the event loop's thread, so nothing waits on a worker thread).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from fusefs.chunkwrite import STORE_SLOW
from fusefs.codec.keys import VolumeKeys
from fusefs.config import MIN_CHUNK, VolumeConfig
from fusefs.errors import StoreError
from fusefs.events import EventLog, read_events
from fusefs.health import STORE_RETRY_SECONDS
from fusefs.meta.repo import MetaRepo
from fusefs.shareio import HEDGE_DELAY, WRITE_HEDGE
from fusefs.stores.local import LocalStore, object_relpath
from fusefs.volume import Volume

K, M, N = 3, 2, 5


class StallingStore(LocalStore):
    """A LocalStore whose reads hang while `stalled` is set (a hung NFS mount, a stuck
    bucket). No blocking fast path, as for a remote store; its async calls answer at once
    (on the event loop's thread), as a store on a fast network would."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.get_blocking = None
        self.put_blocking = None
        self.open_append_blocking = None  # a remote store: no appends (an object per share)
        self.stalled = False
        self.puts_stall_until: trio.Event | None = None  # set: stalled puts go through

    async def get(self, name: str) -> bytes:
        if self.stalled:
            await trio.sleep_forever()
        return self._get_sync(name)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if self.stalled:
            await trio.sleep_forever()
        return self._get_range_sync(name, offset, length)

    async def put(self, name: str, data: bytes | memoryview) -> None:
        if self.puts_stall_until is not None:
            await self.puts_stall_until.wait()
        self._put_sync(name, data)


def run_virtual(main) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture
def vol(tmp_path: Path):
    dirs = [tmp_path / f"s{i}" for i in range(N)]
    for d in dirs:
        d.mkdir()
    stores = [StallingStore(str(d)) for d in dirs]
    vid = os.urandom(16)
    keys = VolumeKeys(os.urandom(32), vid)
    cfg = VolumeConfig(vid.hex(), K, M, MIN_CHUNK, [s.url for s in stores], keys.check_value)
    meta = MetaRepo(tmp_path / "meta.db", create=True)
    with meta.transaction():
        meta.create_inode(os.urandom(16), stat.S_IFDIR | 0o755, 0, 0, 2, time.time_ns())
        f = meta.create_inode(os.urandom(16), stat.S_IFREG | 0o644, 0, 0, 1, time.time_ns())
    volume = Volume(cfg, keys, stores, meta, EventLog(tmp_path / "events.jsonl"),
                    clock=trio.current_time)
    yield volume, f, dirs
    meta.close()


def test_a_stalled_store_does_not_set_read_latency(vol) -> None:
    volume, f, _ = vol
    data = os.urandom(50_000)

    async def main() -> None:
        row, missing = await volume.write_chunk(f.id, f.file_id, 0, data, 0)
        volume.commit_chunk(f.id, row, missing)
        volume.stores[row.placement[0]].stalled = True  # a data share's store hangs
        t0 = trio.current_time()
        got = await volume.read_chunk(f.id, f.file_id, row)
        took = trio.current_time() - t0
        assert got == data
        assert took == pytest.approx(HEDGE_DELAY), f"read waited {took:.1f} s for a hung store"
        assert volume.store_down(row.placement[0]), "the slow store is not bypassed"
        # the next read does not wait at all: the bypassed store is skipped
        t0 = trio.current_time()
        assert await volume.read_chunk(f.id, f.file_id, row) == data
        assert trio.current_time() - t0 == 0
        # and once the bypass is over, the store is asked (and waited for) again
        await trio.sleep(STORE_RETRY_SECONDS)
        assert not volume.store_down(row.placement[0])
        t0 = trio.current_time()
        assert await volume.read_chunk(f.id, f.file_id, row) == data
        assert trio.current_time() - t0 == pytest.approx(HEDGE_DELAY)

    run_virtual(main)
    kinds = {(e["kind"], e["action"]) for e in read_events(volume.events.path)}
    assert ("store_unreachable", "bypassed") in kinds


def test_writes_continue_at_quorum_and_queue_the_missing_share(vol) -> None:
    volume, f, dirs = vol
    data = os.urandom(40_000)

    async def main() -> None:
        shutil.rmtree(dirs[1])  # one store gone: 4 of 5 still take shares (quorum k+1 = 4)
        row, missing = await volume.write_chunk(f.id, f.file_id, 0, data, 0)
        volume.commit_chunk(f.id, row, missing)
        assert [row.placement[i] for i in missing] == [1]
        assert volume.meta.repair_count() == 1
        assert await volume.read_chunk(f.id, f.file_id, row) == data
        shutil.rmtree(dirs[2])  # a second store gone: below quorum, the write fails
        with pytest.raises(StoreError, match="write quorum"):
            await volume.write_chunk(f.id, f.file_id, 1, data, 0)
        # the stores come back (empty): the queued repair writes the missing share
        dirs[1].mkdir()
        dirs[2].mkdir()
        volume.mark_up(1)
        volume.mark_up(2)
        repaired, left = await volume.healer.process_queue()
        # the queued share, and the share of store 2 that went with its directory when the
        # repair read happened to fetch it (scrub finds it otherwise)
        assert left == 0 and repaired in (1, 2)
        (i,) = missing
        name = volume.keys.object_name(row.oid, i)
        assert (dirs[row.placement[i]] / object_relpath(name)).is_file()

    run_virtual(main)


def test_a_write_does_not_wait_for_a_stalled_store(vol) -> None:
    """The quorum has its shares: the write returns WRITE_HEDGE later; the stalled share is
    queued as a repair with the commit and dropped from the queue once it arrives."""
    volume, f, dirs = vol
    data = os.urandom(30_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            volume.nursery = nursery
            stalled = volume.stores[2]
            stalled.puts_stall_until = trio.Event()
            t0 = trio.current_time()
            rows = []
            for idx in range(3):  # the first waits WRITE_HEDGE; then the store is bypassed
                row, missing = await volume.write_chunk(f.id, f.file_id, idx, data, 0)
                volume.commit_chunk(f.id, row, missing)
                rows.append((row, missing))
            took = trio.current_time() - t0
            assert took == pytest.approx(WRITE_HEDGE), took
            assert volume.store_down(2), "the slow store is not bypassed"
            queued = sum(len(m) for _, m in rows)
            assert queued == sum(2 in r.placement for r, _ in rows) == \
                volume.meta.repair_count()
            for row, _ in rows:
                assert await volume.read_chunk(f.id, f.file_id, row) == data
            stalled.puts_stall_until.set()  # the store answers at last
            await trio.sleep(1)
            pending = sum(1 for r, m in rows if any(r.placement[i] == 2 and m[i] == STORE_SLOW
                                                   for i in m))
            assert volume.meta.repair_count() == queued - pending
            volume.nursery = None

    run_virtual(main)
