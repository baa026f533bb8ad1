"""`fusefs snapshot VOLUME|MOUNTPOINT`: publish a metadata snapshot to the stores now (through
the daemon when mounted), e.g. right after an ingest, so that losing this host loses nothing
written before it."""

from __future__ import annotations

import trio

from fusefs.errors import ConfigError
from fusefs.volumedir import VolumeDir, resolve_target


def snapshot(target: str, key_file: str | None) -> None:
    vd, mounted = resolve_target(target)
    if mounted is not None:
        from fusefs.control import ask

        print(_said(ask(vd.path, {"op": "snapshot"})))
        return
    print(_said(_offline(vd, key_file)))


def _said(result: dict) -> str:
    if result.get("seq") is None:
        return "nothing changed since the last snapshot"
    return (f"published metadata snapshot {result['seq']}: {result['uploaded']} bytes "
            "uploaded")


def _offline(vd: VolumeDir, key_file: str | None) -> dict:
    from fusefs.offline import offline_volume

    cfg, keys = vd.unlock(key_file)
    if cfg.role != "writer":
        raise ConfigError(f"{vd.path} is a follower: only the writer publishes snapshots")
    with offline_volume(vd, cfg, keys) as volume:

        async def run() -> dict:
            assert volume.publisher is not None
            await volume.check_stores()
            await volume.publisher.check_at_mount()
            await volume.make_durable()
            seq = await volume.publisher.publish(force=True)
            return {"seq": seq, "uploaded": volume.publisher.uploaded_bytes}

        return trio.run(run)
