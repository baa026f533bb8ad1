"""A store that lost its marker is claimed again only when every object in it is one the
volume expects there (heals may refill a replaced store before scrub claims it)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import trio

from fusefs.codec.keys import VolumeKeys
from fusefs.config import MIN_CHUNK, VolumeConfig
from fusefs.events import EventLog
from fusefs.meta.repo import MetaRepo
from fusefs.ownership import ownership_problem
from fusefs.stores.base import MARKER
from fusefs.stores.local import LocalStore
from fusefs.volume import Volume


def test_claim_only_a_store_holding_our_objects(tmp_path: Path) -> None:
    dirs = [tmp_path / f"s{i}" for i in range(5)]
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

    async def main() -> None:
        for s in stores:
            await s.write_marker(cfg.volume_id)
        row, missing = await volume.write_chunk(f.id, f.file_id, 0, b"x" * 1000, 0)
        volume.commit_chunk(f.id, row, missing)
        s0 = stores[0]
        assert await ownership_problem(s0, 0, cfg.volume_id, keys, meta, claim=True) is None
        (dirs[0] / MARKER).unlink()  # replaced, then refilled by a heal: only our objects
        assert "no marker" in await ownership_problem(s0, 0, cfg.volume_id, keys, meta,
                                                      claim=False)
        assert await ownership_problem(s0, 0, cfg.volume_id, keys, meta, claim=True) is None
        assert (await s0.read_marker())["volume"] == cfg.volume_id
        (dirs[0] / MARKER).unlink()
        await s0.put("ab" * 16, b"someone else's object")
        problem = await ownership_problem(s0, 0, cfg.volume_id, keys, meta, claim=True)
        assert problem == "holds objects but no fusefs marker"
        assert await s0.read_marker() is None
        await stores[1].write_marker("f" * 32)
        problem = await ownership_problem(stores[1], 1, cfg.volume_id, keys, meta, claim=True)
        assert problem is not None and "another volume" in problem

    trio.run(main)
    meta.close()
