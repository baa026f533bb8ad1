"""An unmounted volume opened by a command (scrub, compact, snapshot).

The same `Volume` a mount builds, under the volume lock (no mount starts meanwhile), with the
writer's snapshot publisher: the snapshot objects then count as the writer's own (not
orphans) and deletions wait on the fence, as in a mount. Without it, an offline scrub once
removed every snapshot object as an orphan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from fusefs.codec.keys import VolumeKeys
from fusefs.config import VolumeConfig
from fusefs.errors import FusefsError
from fusefs.events import EventLog
from fusefs.meta.repo import MetaRepo
from fusefs.stores import open_store
from fusefs.volume import Volume
from fusefs.volumedir import VolumeDir


@contextlib.contextmanager
def offline_volume(vd: VolumeDir, cfg: VolumeConfig, keys: VolumeKeys, *,
                   writable: bool = True) -> Iterator[Volume]:
    """The volume of `vd`, locked; `writable` False for a follower's directory (it reads
    and reports: the writer owns the stores)."""
    lock_fd = vd.lock()
    try:
        meta = MetaRepo(vd.meta)
        try:
            volume = Volume(cfg, keys, [open_store(u) for u in cfg.stores], meta,
                            EventLog(vd.events), writable=writable, state_dir=vd.path)
            try:
                yield volume
            finally:
                if volume.publisher is not None:
                    volume.publisher.close()
        finally:
            meta.close()
    finally:
        os.close(lock_fd)


async def check_still_writer(volume: Volume, vd: VolumeDir) -> None:
    """Refuse once another host took over as the writer: its objects would look like this
    directory's orphans, and its metadata is not this one's."""
    pub = volume.publisher
    if pub is not None and not await pub.check_fence(now=True):
        raise FusefsError(f"{vd.path} is no longer the writer of its volume ({pub.fenced}): "
                          "run this from the writer's volume directory")
