"""`fusefs compact VOLUME|MOUNTPOINT`: copy what packs mostly dead still hold into new packs
and free the rest now (a mounted volume also does it by itself every few minutes); through
the daemon when mounted."""

from __future__ import annotations

import json
import os

import trio

from fusefs.errors import ConfigError, FusefsError
from fusefs.events import EventLog
from fusefs.meta.repo import MetaRepo
from fusefs.stores import open_store
from fusefs.volumedir import VolumeDir, resolve_target


def compact(target: str, key_file: str | None, *, as_json: bool = False) -> int:
    """Compact now; the exit status (0: done, failures raise FusefsError)."""
    vd, mounted = resolve_target(target)
    if mounted is not None:
        from fusefs.control import request

        result = None
        for msg in request(vd.path, {"op": "compact"}):
            if "error" in msg:
                raise FusefsError(msg["error"])
            if "result" in msg:
                result = msg["result"]
        if result is None:
            raise FusefsError("the mount daemon closed the connection before answering")
    else:
        result = _offline(vd, key_file)
    if as_json:
        print(json.dumps(result))
        return 0
    print(f"compacted {result['packs']} packs: {result['moved_bytes']} bytes copied, "
          f"{result['freed_bytes']} bytes freed"
          + (f"; {result['left']} damaged members left for scrub" if result["left"] else ""))
    return 0


def _offline(vd: VolumeDir, key_file: str | None) -> dict:
    from fusefs.volume import Volume

    cfg, keys = vd.unlock(key_file)
    if cfg.role != "writer":
        raise ConfigError(f"{vd.path} is a follower: only the writer changes the stores")
    if not cfg.packs:
        raise ConfigError(f"{vd.path} has no pack objects (made without --pack-below): "
                          "nothing to compact")
    vd.log_here(to_stderr=False)
    lock_fd = vd.lock()
    meta = MetaRepo(vd.meta)
    try:
        volume = Volume(cfg, keys, [open_store(u) for u in cfg.stores], meta,
                        EventLog(vd.events), state_dir=vd.path)

        async def run() -> dict:
            try:
                await volume.check_stores()
                report = await volume.compact()
                volume.close_packs()
                await volume.make_durable(wait_for_garbage=True)
                if volume.publisher is not None:
                    await volume.publisher.publish()
                return report.as_dict()
            finally:
                if volume.publisher is not None:
                    volume.publisher.close()

        return trio.run(run)
    finally:
        meta.close()
        os.close(lock_fd)
