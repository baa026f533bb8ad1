"""`fusefs compact VOLUME|MOUNTPOINT`: copy what packs mostly dead still hold into new packs
and free the rest now (a mounted volume also does it by itself every few minutes); through
the daemon when mounted."""

from __future__ import annotations

import json

import trio

from fusefs.errors import ConfigError
from fusefs.volumedir import VolumeDir, resolve_target


def compact(target: str, key_file: str | None, *, as_json: bool = False) -> int:
    """Compact now; the exit status (0: done, failures raise FusefsError)."""
    vd, mounted = resolve_target(target)
    if mounted is not None:
        from fusefs.control import ask

        result = ask(vd.path, {"op": "compact"})
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
    from fusefs.offline import check_still_writer, offline_volume

    cfg, keys = vd.unlock(key_file)
    if cfg.role != "writer":
        raise ConfigError(f"{vd.path} is a follower: only the writer changes the stores")
    if not cfg.packs:
        raise ConfigError(f"{vd.path} has no pack objects (made without --pack-below): "
                          "nothing to compact")
    vd.log_here(to_stderr=False)
    with offline_volume(vd, cfg, keys) as volume:

        async def run() -> dict:
            await volume.check_stores()
            await check_still_writer(volume, vd)
            report = await volume.compact()
            volume.close_packs()
            await volume.make_durable(wait_for_garbage=True)
            if volume.publisher is not None:
                await volume.publisher.publish()
            return report.as_dict()

        return trio.run(run)
