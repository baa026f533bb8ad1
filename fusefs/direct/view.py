"""One process's read-only view of a volume: its metadata (SQLite, opened read-only), its
stores and the one read algorithm (`chunkread.ChunkReader`), built in the process that
reads, never inherited across a fork (`DirectVolume` rebuilds it when the pid changes).

A mount of the volume may be writing meanwhile. Two rules keep every answer right:
- a file's rows are read in one SQLite read transaction (`pin`): one committed state, never
  half of a commit;
- a chunk version the mount has replaced since loses its shares (deleted after the commit):
  before anything is reported as damage the version is checked to be still current; if it
  is not, the chunk was rewritten (`ChunkReplaced`), and that is no damage.

Damage this process finds is recorded in the volume's event log as `reported` (so `fusefs
status` shows it) and, when a mount of the volume runs and writes, handed to it over its
control socket: the mount reads the chunk itself and heals it. The direct API never writes
to the stores or the metadata: it cannot know which stores the mount holds back (a store in
doubt must never be written), it would race the mount's own heals and garbage collection,
and the metadata has exactly one writer. Without a mount, `fusefs scrub` repairs.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from fusefs.chunkread import ChunkReader
from fusefs.control import request
from fusefs.errors import FusefsError, warn
from fusefs.events import EventLog
from fusefs.heal import report
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import ROOT_INODE, ChunkRow, InodeRow, MetaRepo
from fusefs.stores import open_store
from fusefs.volumedir import VolumeDir
from fusefs.workers import IoPolicy

MAX_SYMLINKS = 40  # as the kernel: more links followed in one path is a loop (ELOOP)
HAND_OVER_TIMEOUT = 5.0  # seconds a worker waits for the mount to take damage it found
HAND_OVER_PAUSE = 60.0  # seconds no mount is asked after one did not answer
READDIR_BATCH = 1000


# The root directory as a path walk starts from it: one query fewer for every path.
_ROOT = InodeRow(ROOT_INODE, b"", stat.S_IFDIR, 0, 0, 2, 0, 0, 0, 0, 0, None)


@dataclass(frozen=True, slots=True)
class Pinned:
    """A file as one read transaction saw it: its inode and its chunk rows."""

    path: str
    inode: InodeRow
    rows: dict[int, ChunkRow]


def split(path: str) -> list[str]:
    """Components of a path in the volume ('/' is the volume's root; '.' ignored)."""
    return [p for p in os.fspath(path).split("/") if p and p != "."]


class VolumeView:
    def __init__(self, vd: VolumeDir, key_file: Path) -> None:
        cfg, keys = vd.unlock(str(key_file))
        self.vd = vd
        self.config = cfg
        stores = [open_store(url) for url in cfg.stores]
        self.meta = MetaRepo(vd.meta, read_only=True)
        self._meta_path = os.fspath(vd.meta)  # stat-ed at every pin: no pathlib on the way
        self._meta_ino = _inode_number(self._meta_path)
        self.events = EventLog(vd.events, first=self._first_event)
        self.events.resolve_path = self._path_of
        self.layout = Layout(cfg, keys, stores)
        self.health = StoreHealth(stores, self.events)
        policy = IoPolicy(stores)
        self.reader = ChunkReader(self.layout, self.health, policy, self.events,
                                  current=self.current)
        self._blocking, self._ranges = policy.reads, policy.ranges  # else: the async driver
        self._lock = threading.RLock()  # one SQLite connection; threads take turns
        self._reported: set[tuple[bytes, int]] = set()  # (oid, share): once per process
        self._hand_over_off = 0.0  # monotonic time until which no mount is asked

    def close(self) -> None:
        self.meta.close()

    def _first_event(self, event: dict) -> None:
        where = f" ({event['file']})" if event.get("file") else ""
        warn(f"volume {self.vd.path}: {event['kind']} on {event.get('store')}{where}; this "
             f"process records what it finds in {self.vd.events} (`fusefs status`)")

    # -- metadata ----------------------------------------------------------------------
    def _fresh(self) -> None:
        """A follower's mount puts a newer metadata database in place of the old one: read
        the new one (an open file keeps its rows, whose shares outlive the switch)."""
        if _inode_number(self._meta_path) != self._meta_ino:
            self.meta.close()
            self.meta = MetaRepo(self.vd.meta, read_only=True)
            self._meta_ino = _inode_number(self._meta_path)

    def lookup(self, path: str, *, follow: bool = True) -> InodeRow:
        """The inode a path names (inside `reading`); symlinks whose targets stay inside the
        volume are followed, the last one only with `follow`. OSError as open(2) would."""
        todo, trail, links = split(path), [_ROOT], 0
        while todo:
            name = todo.pop(0)
            cur = trail[-1]
            if not stat.S_ISDIR(cur.mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            if name == "..":
                if len(trail) > 1:
                    trail.pop()
                continue
            row = self.meta.lookup_inode(cur.id, os.fsencode(name))
            if row is None:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory in the "
                                        f"volume {self.vd.path}", path)
            if stat.S_ISLNK(row.mode) and (todo or follow):
                links += 1
                target = os.fsdecode(row.target or b"")
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                if target.startswith("/"):
                    raise FileNotFoundError(errno.ENOENT, f"a symlink on the way points "
                                            f"outside the volume ({target})", path)
                todo[:0] = split(target)
                continue
            trail.append(row)
        if trail[-1] is _ROOT:  # its attributes are only read when asked for
            root = self.meta.get_inode(ROOT_INODE)
            assert root is not None, "the volume has no root directory"
            return root
        return trail[-1]

    def stat(self, path: str, *, follow: bool = True) -> InodeRow:
        with self._lock:
            self._fresh()
            with self.meta.reading():
                return self.lookup(path, follow=follow)

    def pin(self, path: str) -> Pinned:
        """A regular file's inode and chunk rows, from one read transaction."""
        with self._lock:
            self._fresh()
            with self.meta.reading():
                row = self.lookup(path)
                if stat.S_ISDIR(row.mode):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
                if not stat.S_ISREG(row.mode):
                    raise OSError(errno.EINVAL, "not a regular file", path)
                rows = {r.idx: r for r in self.meta.chunks_of(row.id)}
        return Pinned(path, row, rows)

    def entries(self, path: str) -> Iterator[tuple[str, InodeRow]]:
        """(name, inode) of each entry of a directory, in creation order, read in batches
        (each batch one read transaction: a big directory never holds one open long)."""
        with self._lock:
            self._fresh()
            with self.meta.reading():
                ino = self.lookup(path)
                if not stat.S_ISDIR(ino.mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                batch = self.meta.readdir(ino.id, 0, READDIR_BATCH)
        while batch:
            for _, name, row in batch:
                yield os.fsdecode(name), row
            if len(batch) < READDIR_BATCH:
                return
            with self._lock, self.meta.reading():
                batch = self.meta.readdir(ino.id, batch[-1][0], READDIR_BATCH)

    def current(self, ino: int, row: ChunkRow) -> bool:
        """Whether a chunk version is still its file's (committed state now)."""
        with self._lock:
            return self.meta.chunk_by_oid(ino, row.idx, row.oid) is not None

    def _path_of(self, ino: int) -> str | None:
        with self._lock:
            return self.meta.path_of(ino)

    # -- chunks ------------------------------------------------------------------------
    def chunk(self, ino: int, file_id: bytes, row: ChunkRow) -> bytes | bytearray:
        """Verified plaintext of one chunk (rebuilt around bad shares, which are reported).
        Raises ChunkUnrecoverable, or ChunkReplaced when the version was rewritten."""
        if self._blocking:
            got = self.reader.read_now(ino, file_id, row)
        else:
            with self._lock:  # one event loop at a time: the health and limiters are shared
                got = trio.run(partial(self.reader.read, ino, file_id, row))
        damage = got.damage()
        if damage:
            self._damaged(ino, row, damage)
        return got.plain

    def span(self, file_id: bytes, row: ChunkRow, start: int, end: int) -> bytes | None:
        """Plaintext [start, end) of a chunk from the segments that hold it, or None (any
        doubt: the caller reads the whole chunk, which finds and reports the damage)."""
        if self._ranges:
            return self.reader.read_span_now(file_id, row, start, end)
        with self._lock:
            return trio.run(self.reader.read_span, file_id, row, start, end)

    def announce(self, row: ChunkRow) -> None:
        """The shares of a chunk about to be read: local disks start on them together."""
        if self._blocking:
            self.reader.announce(row)

    def _damaged(self, ino: int, row: ChunkRow, damage: dict[int, str]) -> None:
        if not self.current(ino, row):
            return  # rewritten meanwhile: its shares were being deleted, not damaged
        new = {i: why for i, why in damage.items() if (row.oid, i) not in self._reported}
        if not new:
            return
        self._reported.update((row.oid, i) for i in new)
        report(self.events, self.layout, ino, row, new, self._hand_over(ino, row))

    def _hand_over(self, ino: int, row: ChunkRow) -> str:
        """Ask a mount of the volume to heal the chunk; what became of it, for the event.
        A mount that did not answer is not asked again for HAND_OVER_PAUSE seconds (each
        try could cost the reader HAND_OVER_TIMEOUT)."""
        found = f"found by the direct read API (pid {os.getpid()})"
        if not self.vd.socket.exists():
            return f"{found}; no mount is running: `fusefs scrub` repairs it"
        if time.monotonic() < self._hand_over_off:
            return f"{found}; the mount did not answer lately: `fusefs scrub` repairs it"
        message = {"op": "heal", "inode": ino, "chunk": row.idx, "version": row.oid.hex()}
        try:
            for answer in request(self.vd.path, message, timeout=HAND_OVER_TIMEOUT):
                if "error" in answer:
                    return f"{found}; the mount did not take it: {answer['error']}"
        except (FusefsError, OSError, ValueError) as e:
            self._hand_over_off = time.monotonic() + HAND_OVER_PAUSE
            return f"{found}; the mount could not be asked to heal it ({e}): `fusefs " \
                   "scrub` repairs it"
        return f"{found}; handed to the mount, which heals it"


def _inode_number(path: str | Path) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1
