"""`fusefs snapshot VOLUME|MOUNTPOINT`: publish a metadata snapshot to the stores now (through
the daemon when mounted), e.g. right after an ingest, so that losing this host loses nothing
written before it."""

from __future__ import annotations

import os

import trio

from fusefs.errors import ConfigError, FusefsError
from fusefs.events import EventLog
from fusefs.meta.repo import MetaRepo
from fusefs.stores import open_store
from fusefs.volumedir import VolumeDir, resolve_target


def snapshot(target: str, key_file: str | None) -> None:
    vd, mounted = resolve_target(target)
    if mounted is not None:
        from fusefs.control import request

        for msg in request(vd.path, {"op": "snapshot"}):
            if "error" in msg:
                raise FusefsError(msg["error"])
            if "result" in msg:
                print(_said(msg["result"]))
                return
        raise FusefsError("the mount daemon closed the connection before answering")
    print(_said(_offline(vd, key_file)))


def _said(result: dict) -> str:
    if result.get("seq") is None:
        return "nothing changed since the last snapshot"
    return (f"published metadata snapshot {result['seq']}: {result['uploaded']} bytes "
            "uploaded")


def _offline(vd: VolumeDir, key_file: str | None) -> dict:
    from fusefs.volume import Volume

    cfg, keys = vd.unlock(key_file)
    if cfg.role != "writer":
        raise ConfigError(f"{vd.path} is a follower: only the writer publishes snapshots")
    lock_fd = vd.lock()
    meta = MetaRepo(vd.meta)
    try:
        volume = Volume(cfg, keys, [open_store(u) for u in cfg.stores], meta,
                        EventLog(vd.events), state_dir=vd.path)

        async def run() -> dict:
            assert volume.publisher is not None
            try:
                await volume.check_stores()
                await volume.publisher.check_at_mount()
                await volume.make_durable()
                seq = await volume.publisher.publish(force=True)
                return {"seq": seq, "uploaded": volume.publisher.uploaded_bytes}
            finally:
                volume.publisher.close()

        return trio.run(run)
    finally:
        meta.close()
        os.close(lock_fd)
