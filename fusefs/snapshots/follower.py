"""A follower: a read-only host that serves the writer's newest published snapshot.

It polls the heads every snapshot interval; when a newer snapshot is published it assembles
its database next to the current one (fetching only changed blocks) and switches to it at
once, between two requests: new files appear, deleted ones go, and files that were open keep
reading what they opened (their chunk maps are pinned, and the writer keeps replaced data
for a grace period). The caller is told what changed, so the kernel's caches can be dropped.

A host remembers the newest snapshot it has seen (VOLUME/seen.json) and refuses an older
one, which is what putting back old snapshot objects into every store would show it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from fusefs.chunkread import ChunkReader
from fusefs.events import EventLog
from fusefs.layout import Layout
from fusefs.meta.repo import MetaRepo
from fusefs.snapshots.fetch import fetch_database, fetch_superblock
from fusefs.snapshots.objects import Head, SnapshotError, newest, read_heads

log = logging.getLogger(__name__)

Switched = Callable[[Path], Awaitable[None]]  # told the previous database's path


def read_seen(path: Path) -> tuple[int, int]:
    try:
        seen = json.loads(path.read_text())
        return int(seen["epoch"]), int(seen["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def write_seen(path: Path, head: Head) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"epoch": head.epoch, "seq": head.seq}) + "\n")
    os.replace(tmp, path)


class Follower:
    def __init__(self, lay: Layout, reader: ChunkReader, meta: MetaRepo, events: EventLog,
                 seen: Path, *, accept_older: bool = False) -> None:
        self.lay = lay
        self.reader = reader
        self.meta = meta
        self.events = events
        self.seen = seen
        self.accept_older = accept_older
        self.current = read_seen(seen)
        self.on_switch: Switched | None = None

    async def refresh(self) -> bool:
        """Switch to the newest published snapshot if it is newer; True when switched.
        SnapshotError when the stores' newest is older than one this host has seen."""
        top = newest(await read_heads(self.lay))
        if top is None or top.order == self.current:
            return False
        if top.order < self.current:
            if not self.accept_older:
                raise SnapshotError(
                    f"the stores' newest metadata snapshot ({top.seq}, epoch {top.epoch}) is "
                    f"older than one this host has seen ({self.current[1]}, epoch "
                    f"{self.current[0]}): old snapshot objects may have been put back; mount "
                    "with --accept-older-snapshot to use it anyway")
            self.events.record("snapshot_rollback", action="reported",
                               detail=f"accepted older snapshot {top.seq}")
        sb = await fetch_superblock(self.reader, self.lay.config.volume_id, top)
        nxt = self.meta.path.with_name(self.meta.path.name + ".next")
        fetched = await fetch_database(self.reader, self.lay.keys, sb, nxt,
                                       reuse=self.meta.path)
        prev = self.meta.path.with_name(self.meta.path.name + ".prev")
        prev.unlink(missing_ok=True)
        os.link(self.meta.path, prev)
        self.meta.reopen(nxt)
        write_seen(self.seen, top)
        self.current = top.order
        log.info("following snapshot %d (epoch %d): %d bytes fetched", top.seq, top.epoch,
                 fetched)
        try:
            if self.on_switch is not None:
                await self.on_switch(prev)
        finally:
            prev.unlink(missing_ok=True)
        return True

    async def run(self) -> None:
        """Daemon task: poll for newer snapshots every snapshot interval."""
        interval = self.lay.config.snapshot_interval or 60.0
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh()
            except SnapshotError as e:
                log.error("not following: %s", e)
            except Exception:
                log.exception("following the writer's snapshots failed")
