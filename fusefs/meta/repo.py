"""All SQL of fusefs: the metadata repository over SQLite (WAL).

Calls are synchronous and run on the trio thread: each takes microseconds, and code between
two `await`s is atomic, so no locks are needed. Durability is explicit: commits are cheap
(synchronous=NORMAL: written to the WAL, not fsynced) and `make_durable` fsyncs the WAL, after
syncing the stores, when a close/fsync must be durable. Automatic checkpoints are off because
a checkpoint fsyncs, which would stall the event loop at whatever commit crossed the limit;
`checkpoint_if_large` folds the WAL in at durable points instead. Nothing here stops the
kernel from writing WAL pages back early, so a commit can reach the disk before the shares
it names: the order is guaranteed only at durable points.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from fusefs.errors import ConfigError
from fusefs.meta.packrows import (  # noqa: F401 (PackLoc, PackRow: re-exported)
    Locs,
    PackLoc,
    PackRow,
    PackSql,
)
from fusefs.meta.schema import (
    SCHEMA_VERSION,
    create_tables,
    ensure_indexes,
    migrate,
    read_as_current,
)
from fusefs.meta.txn import Transactions

ROOT_INODE = 1
# A commit appends every page it changed to the WAL: a small file's create and first chunk
# change ~9 pages, 36 KiB at SQLite's default 4 KiB and 11 KiB at 1 KiB (measured: its
# commit 100 -> 73 us, the WAL to checkpoint a third). Lookups and readdir are no slower.
# Only new databases get it; the page size of an existing one is kept.
_PAGE_SIZE = 1024
_WAL_CHECKPOINT_BYTES = 64 << 20  # checkpoint at a durable point once the WAL grows past this

INODE_COLS = "id, file_id, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, target"
_INODE_COLS_I = ", ".join(f"i.{c.strip()}" for c in INODE_COLS.split(","))
CHUNK_COLS = "idx, version, oid, length, placement, digests, content"


def chunk_select(alias: str) -> str:
    """The columns of a chunk row of table alias `alias` (chunks, garbage or version_chunks)
    and, last, its `packed.locs` (NULL: no share of it is in a pack): `MetaRepo.chunk_row`."""
    cols = ", ".join(f"{alias}.{c.strip()}" for c in CHUNK_COLS.split(","))
    return f"{cols}, (SELECT p.locs FROM packed p WHERE p.oid = {alias}.oid)"


CHUNK_SELECT = chunk_select("c")


@dataclass(slots=True)
class InodeRow:
    id: int
    file_id: bytes
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    rdev: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes | None


@dataclass(frozen=True, slots=True)
class ChunkRow:
    idx: int
    version: int
    oid: bytes
    length: int
    placement: bytes
    digests: bytes
    content: bytes | None = None  # content digest of the plaintext (None: not known yet)
    locs: Locs | None = None  # format 4: where packed shares are (None: no share is)

    def share_digest(self, share: int) -> bytes:
        return self.digests[16 * share : 16 * share + 16]

    def loc(self, share: int) -> PackLoc | None:
        """Where share `share` is when it is in a pack (else it is an object of its own)."""
        return None if self.locs is None else self.locs[share]


@dataclass(frozen=True, slots=True)
class Stats:
    files: int
    directories: int
    symlinks: int
    chunks: int
    logical_bytes: int
    sealed_bytes: int  # sum of chunk plaintext lengths (stored bytes are ~ n/k of this)


class MetaRepo(Transactions, PackSql):
    """The metadata database of one volume."""

    def __init__(self, path: Path, *, create: bool = False, read_only: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ConfigError(f"metadata database {self.path} is missing")
        if create:  # 0600 whatever the umask; SQLite gives -wal and -shm the db's mode
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as e:
                raise ConfigError(f"cannot create {self.path}: {e.strerror}") from None
        Transactions.__init__(self)
        self._pids: dict[int, bytes] = {}  # packs.id -> pid (never changes)
        self._open(read_only, create)

    def _open(self, read_only: bool, create: bool = False) -> None:
        quoted = urllib.parse.quote(str(self.path))  # '#', '?', '%' are URI syntax
        uri = f"file:{quoted}?mode=ro" if read_only else f"file:{quoted}"
        try:
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                      check_same_thread=False)
            if create:  # before the first write fixes it (see _PAGE_SIZE)
                self.db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA wal_autocheckpoint=0")
            if create:
                create_tables(self.db)
            row = self.db.execute(
                "SELECT value FROM dbinfo WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row is not None and row[0].isdigit() else None
            if version is not None and 1 <= version < SCHEMA_VERSION and not read_only:
                migrate(self.db, version)
                version = SCHEMA_VERSION
            elif version is not None and 1 <= version < SCHEMA_VERSION:
                read_as_current(self.db, version)
            if version is not None and 1 <= version <= SCHEMA_VERSION and not read_only:
                ensure_indexes(self.db)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"metadata database {self.path} is unusable: {e}") from None
        if version is None or not 1 <= version <= SCHEMA_VERSION:
            raise ConfigError(f"metadata database {self.path} has an unknown schema version")

    def close(self) -> None:
        if self.pending:
            self.commit_pending()
        self.db.close()

    def reopen(self, new_path: Path) -> None:
        """Put the database file `new_path` in place of this one and continue on it (a
        follower switching snapshots; nothing is written meanwhile: this is synchronous)."""
        self.db.close()
        os.replace(new_path, self.path)
        for side in ("-wal", "-shm"):
            Path(f"{self.path}{side}").unlink(missing_ok=True)
        self._open(read_only=False)

    def changed_since(self, previous: Path) -> tuple[set[int], list[tuple[int, bytes]]]:
        """What differs from an older copy of this database: inodes whose attributes or
        contents changed, appeared or went, and names that went or now name another inode
        (what a follower tells the kernel to forget)."""
        self.db.execute("ATTACH DATABASE ? AS prev",
                        (f"file:{urllib.parse.quote(str(previous))}?mode=ro",))
        try:
            inodes = {r[0] for r in self.db.execute(
                "SELECT id, mode, uid, gid, nlink, size, mtime_ns, ctime_ns, target FROM inodes"
                " EXCEPT SELECT id, mode, uid, gid, nlink, size, mtime_ns, ctime_ns, target"
                " FROM prev.inodes")}
            inodes |= {r[0] for r in self.db.execute(
                "SELECT id FROM prev.inodes EXCEPT SELECT id FROM inodes")}
            inodes |= {r[0] for r in self.db.execute(
                "SELECT inode FROM (SELECT inode, idx, oid FROM chunks EXCEPT"
                " SELECT inode, idx, oid FROM prev.chunks)")}
            entries = self.db.execute(
                "SELECT parent, name FROM (SELECT parent, name, inode FROM prev.dentries"
                " EXCEPT SELECT parent, name, inode FROM dentries)").fetchall()
        finally:
            self.db.execute("DETACH DATABASE prev")
        return inodes, entries

    def total_changes(self) -> int:
        """Rows changed through this connection so far (cheap "anything new?" test)."""
        return self.db.total_changes

    def fsync_wal(self) -> int:
        """fsync the WAL so every commit so far survives power loss; return its size.

        Touches no connection state, so it may run in a worker thread.
        """
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            os.fsync(fd)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def checkpoint_if_large(self, wal_size: int) -> None:
        """Fold the WAL into the database at a durable point, once it has grown large."""
        if wal_size > _WAL_CHECKPOINT_BYTES:
            self.commit_pending()  # (no checkpoint inside an open write transaction)
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- inodes --------------------------------------------------------------------------
    def get_inode(self, ino: int) -> InodeRow | None:
        row = self.db.execute(f"SELECT {INODE_COLS} FROM inodes WHERE id=?", (ino,)).fetchone()
        return InodeRow(*row) if row else None

    def create_inode(self, file_id: bytes, mode: int, uid: int, gid: int, nlink: int,
                     now_ns: int, target: bytes | None = None, rdev: int = 0) -> InodeRow:
        cur = self.db.execute(
            "INSERT INTO inodes (file_id, mode, uid, gid, nlink, size, rdev, atime_ns,"
            " mtime_ns, ctime_ns, target) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (file_id, mode, uid, gid, nlink, len(target) if target else 0, rdev,
             now_ns, now_ns, now_ns, target))
        return InodeRow(cur.lastrowid, file_id, mode, uid, gid, nlink,  # type: ignore[arg-type]
                        len(target) if target else 0, rdev, now_ns, now_ns, now_ns, target)

    def update_inode(self, ino: int, **fields: int) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE inodes SET {cols} WHERE id=?", (*fields.values(), ino))

    def add_nlink(self, ino: int, delta: int) -> None:
        """Change a link count in place (a directory gains or loses a subdirectory's "..")."""
        self.db.execute("UPDATE inodes SET nlink=nlink+? WHERE id=?", (delta, ino))

    def delete_inode(self, ino: int) -> None:
        """Remove an inode, its xattrs, and move its chunks' shares to the garbage list."""
        with self.transaction():
            self.delete_chunks_from(ino, 0)
            self.db.execute("DELETE FROM xattrs WHERE inode=?", (ino,))
            self.db.execute("DELETE FROM inodes WHERE id=?", (ino,))

    def unlinked_inodes(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT id FROM inodes WHERE nlink=0")]

    # -- directory entries ---------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute("SELECT inode FROM dentries WHERE parent=? AND name=?",
                              (parent, name)).fetchone()
        return row[0] if row else None

    def lookup_inode(self, parent: int, name: bytes) -> InodeRow | None:
        """The inode a name points to, in one query (a FUSE lookup per file opened)."""
        row = self.db.execute(
            f"SELECT {_INODE_COLS_I} FROM dentries d JOIN inodes i ON i.id = d.inode"
            " WHERE d.parent=? AND d.name=?", (parent, name)).fetchone()
        return InodeRow(*row) if row else None

    def add_dentry(self, parent: int, name: bytes, ino: int) -> None:
        """Raises FileExistsError when the name is taken (the UNIQUE constraint answers:
        no query to ask first)."""
        try:
            self.db.execute("INSERT INTO dentries (parent, name, inode) VALUES (?,?,?)",
                            (parent, name, ino))
        except sqlite3.IntegrityError:
            raise FileExistsError(os.fsdecode(name)) from None

    def remove_dentry(self, parent: int, name: bytes) -> None:
        self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))

    def move_dentry(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> None:
        self.db.execute("UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?",
                        (new_parent, new_name, parent, name))

    def set_dentry_inode(self, parent: int, name: bytes, ino: int) -> None:
        self.db.execute("UPDATE dentries SET inode=? WHERE parent=? AND name=?",
                        (ino, parent, name))

    def has_children(self, ino: int) -> bool:
        return self.db.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1",
                               (ino,)).fetchone() is not None

    def parent_of(self, ino: int) -> tuple[int, bytes] | None:
        """One (parent, name) of an inode (directories have exactly one)."""
        return self.db.execute("SELECT parent, name FROM dentries WHERE inode=? LIMIT 1",
                               (ino,)).fetchone()

    def readdir(self, parent: int, after: int, limit: int) -> list[tuple[int, bytes, InodeRow]]:
        """Entries with cookie > after, in cookie order, joined with their inodes."""
        rows = self.db.execute(
            f"SELECT d.id, d.name, {_INODE_COLS_I} FROM dentries d JOIN inodes i ON i.id = d.inode"
            " WHERE d.parent=? AND d.id>? ORDER BY d.id LIMIT ?", (parent, after, limit))
        return [(r[0], r[1], InodeRow(*r[2:])) for r in rows]

    def path_of(self, ino: int) -> str | None:
        """One path of an inode, for reports and events (None once unlinked)."""
        parts: list[str] = []
        while ino != ROOT_INODE:
            entry = self.parent_of(ino)
            if entry is None or len(parts) > 4096:
                return None
            ino, name = entry
            parts.append(os.fsdecode(name))
        return "/" + "/".join(reversed(parts))

    # -- chunks --------------------------------------------------------------------------
    def chunk_row(self, r: tuple | sqlite3.Row) -> ChunkRow:
        """A ChunkRow from the 8 columns of `CHUNK_SELECT` (the last one `packed.locs`)."""
        if r[7] is None:
            return ChunkRow(*r[:7])
        return ChunkRow(*r[:7], self.decode_locs(r[7]))

    def get_chunk(self, ino: int, idx: int) -> ChunkRow | None:
        row = self.db.execute(f"SELECT {CHUNK_SELECT} FROM chunks c WHERE c.inode=? AND c.idx=?",
                              (ino, idx)).fetchone()
        return self.chunk_row(row) if row else None

    def chunks_of(self, ino: int) -> list[ChunkRow]:
        """Every chunk row of a file, in index order."""
        return [self.chunk_row(r) for r in self.db.execute(
            f"SELECT {CHUNK_SELECT} FROM chunks c WHERE c.inode=? ORDER BY c.idx", (ino,))]

    def chunk_version(self, ino: int, idx: int) -> int:
        row = self.db.execute("SELECT version FROM chunks WHERE inode=? AND idx=?",
                              (ino, idx)).fetchone()
        return row[0] if row else 0

    def put_chunk(self, ino: int, chunk: ChunkRow, size: int | None = None) -> None:
        """Commit a new chunk version (and the file size with it, so a crash never leaves
        committed chunk data past the committed size); old shares become garbage."""
        with self.transaction():
            self._to_garbage("idx=?", ino, chunk.idx)
            if size is not None:
                self.db.execute("UPDATE inodes SET size=? WHERE id=?", (size, ino))
            self._insert_chunk(ino, chunk)
            if chunk.locs is not None:  # a new chunk version: its packed shares count
                self._add_packed(chunk.oid, chunk.locs)

    def _insert_chunk(self, ino: int, row: ChunkRow) -> None:
        """(A restored row's `packed` row stayed with its garbage row: not added again.)"""
        self.db.execute(
            f"INSERT OR REPLACE INTO chunks (inode, {CHUNK_COLS}) VALUES (?,?,?,?,?,?,?,?)",
            (ino, row.idx, row.version, row.oid, row.length, row.placement, row.digests,
             row.content))

    def set_content(self, oid: bytes, content: bytes) -> None:
        """Record the content digest of a chunk version written before digests were kept
        (computed by reading it), in the live tree and in every version that shares it."""
        with self.transaction():
            self.db.execute("UPDATE chunks SET content=? WHERE oid=? AND content IS NULL",
                            (content, oid))
            self.db.execute("UPDATE version_chunks SET content=? WHERE oid=?"
                            " AND content IS NULL", (content, oid))

    def set_share_digest(self, ino: int, idx: int, oid: bytes, share: int,
                         digest: bytes) -> None:
        """Record a share's checksum after a heal proved it by authentication (the stored
        digest matched forged bytes). Only the named chunk version is touched, wherever it
        is recorded (the live tree, named versions)."""
        for table in ("chunks", "version_chunks"):
            row = self.db.execute(f"SELECT digests FROM {table} WHERE inode=? AND idx=?"
                                  " AND oid=? LIMIT 1", (ino, idx, oid)).fetchone()
            if row is None:
                continue
            digests = bytearray(row[0])
            digests[16 * share : 16 * share + 16] = digest
            self.db.execute(f"UPDATE {table} SET digests=? WHERE inode=? AND idx=? AND oid=?",
                            (bytes(digests), ino, idx, oid))

    def chunks_after(self, ino: int, idx: int, limit: int) -> list[tuple[int, bytes, ChunkRow]]:
        """Chunk rows after (ino, idx) in (inode, index) order, with each file's id: a cursor
        that stays valid while files change (scrub)."""
        rows = self.db.execute(
            f"SELECT c.inode, i.file_id, {CHUNK_SELECT}"
            " FROM chunks c JOIN inodes i ON i.id = c.inode"
            " WHERE (c.inode, c.idx) > (?, ?) ORDER BY c.inode, c.idx LIMIT ?",
            (ino, idx, limit))
        return [(r[0], r[1], self.chunk_row(r[2:])) for r in rows]

    def version_only_chunks(self) -> list[tuple[int, bytes, ChunkRow]]:
        """Chunk versions only named versions still hold (the live tree replaced or deleted
        them), once each, with their file ids: what scrub verifies besides the live tree."""
        rows = self.db.execute(
            f"SELECT v.inode, i.file_id, {chunk_select('v')} FROM version_chunks v"
            " JOIN version_inodes i"
            " ON i.vid = v.vid AND i.id = v.inode WHERE NOT EXISTS (SELECT 1 FROM chunks c"
            " WHERE c.inode = v.inode AND c.idx = v.idx AND c.oid = v.oid)"
            " GROUP BY v.oid ORDER BY v.inode, v.idx")
        return [(r[0], r[1], self.chunk_row(r[2:])) for r in rows]

    def chunk_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def all_versions(self) -> list[tuple[bytes, bytes]]:
        """(oid, placement) of every chunk version whose shares must stay in the stores:
        current chunks, chunks of named versions and garbage not yet deleted."""
        return self.db.execute("SELECT oid, placement FROM chunks UNION ALL "
                               "SELECT oid, placement FROM version_chunks UNION ALL "
                               "SELECT oid, placement FROM garbage").fetchall()

    def chunk_by_oid(self, ino: int, idx: int, oid: bytes) -> ChunkRow | None:
        """The chunk version `oid` of (ino, idx) if the live tree or a named version still
        has it (a heal or repair of it is still wanted)."""
        row = self.get_chunk(ino, idx)
        if row is not None and row.oid == oid:
            return row
        row = self.db.execute(f"SELECT {chunk_select('v')} FROM version_chunks v WHERE"
                              " v.oid=? AND v.inode=? AND v.idx=? LIMIT 1",
                              (oid, ino, idx)).fetchone()
        return self.chunk_row(row) if row else None

    def file_id_of(self, ino: int) -> bytes | None:
        """The file id of an inode of the live tree or, once gone from it, of a version."""
        row = self.db.execute("SELECT file_id FROM inodes WHERE id=? UNION ALL SELECT file_id"
                              " FROM version_inodes WHERE id=? LIMIT 1", (ino, ino)).fetchone()
        return row[0] if row else None

    # -- repair queue --------------------------------------------------------------------
    def queue_repair(self, oid: bytes, share: int, ino: int, idx: int, reason: str,
                     now_ns: int) -> None:
        self.db.execute(
            "INSERT INTO repairs (oid, share, inode, idx, reason, since_ns) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT (oid, share) DO UPDATE SET attempts = attempts + 1",
            (oid, share, ino, idx, reason, now_ns))

    def repairs(self, limit: int = 1000) -> list[tuple[bytes, int, int, int, str]]:
        """Queued repairs: (oid, share, inode, idx, reason), oldest first."""
        return self.db.execute("SELECT oid, share, inode, idx, reason FROM repairs"
                               " ORDER BY since_ns LIMIT ?", (limit,)).fetchall()

    def repair_done(self, oid: bytes, share: int) -> None:
        self.db.execute("DELETE FROM repairs WHERE oid=? AND share=?", (oid, share))

    def repair_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]

    def inodes_with_repairs(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT inode FROM repairs")]

    def delete_chunks_from(self, ino: int, first_idx: int) -> None:
        """Drop chunks idx >= first_idx (truncate/delete); their shares become garbage."""
        with self.transaction():
            self._to_garbage("idx>=?", ino, first_idx)
            self.db.execute("DELETE FROM chunks WHERE inode=? AND idx>=?", (ino, first_idx))

    def _to_garbage(self, which: str, ino: int, idx: int) -> None:
        """Copy chunk rows of `ino` (idx matching `which`) into garbage, whole, with the
        file's size as it is now (before the caller changes it)."""
        self.db.execute(
            "INSERT INTO garbage (oid, placement, inode, idx, version, length, digests,"
            " content, size_before) SELECT c.oid, c.placement, c.inode, c.idx, c.version,"
            " c.length, c.digests, c.content, i.size FROM chunks c JOIN inodes i"
            f" ON i.id = c.inode WHERE c.inode=? AND c.{which}", (ino, idx))

    def garbage(self, limit: int = 1000, published_before_ns: int | None = None
                ) -> list[tuple[int, bytes, bytes]]:
        """Garbage rows to delete; with `published_before_ns`, only those that a snapshot
        published before then no longer names (followers have moved past them). Rows of a
        chunk version a named version still holds are not deletable: they wait (their
        shares go once the last version holding them is deleted)."""
        held = "NOT EXISTS (SELECT 1 FROM version_chunks v WHERE v.oid = g.oid)"
        if published_before_ns is None:
            return self.db.execute(f"SELECT id, oid, placement FROM garbage g WHERE {held}"
                                   " ORDER BY id LIMIT ?", (limit,)).fetchall()
        return self.db.execute(
            f"SELECT id, oid, placement FROM garbage g WHERE published_ns <= ? AND {held}"
            " ORDER BY id LIMIT ?", (published_before_ns, limit)).fetchall()

    def mark_garbage_published(self, up_to_id: int, now_ns: int,
                               except_inodes: set[int] = frozenset()) -> None:
        """A snapshot was published that no longer names the garbage rows up to this id
        (but those of `except_inodes`, which the snapshot showed as they were before)."""
        skip = ",".join("?" * len(except_inodes))
        self.db.execute(
            "UPDATE garbage SET published_ns=? WHERE published_ns IS NULL AND id <= ?"
            + (f" AND (inode IS NULL OR inode NOT IN ({skip}))" if skip else ""),
            (now_ns, up_to_id, *sorted(except_inodes)))

    def get_info(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM dbinfo WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_info(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO dbinfo VALUES (?, ?)", (key, value))

    def max_garbage_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM garbage").fetchone()[0]

    def garbage_done(self, ids: list[int]) -> None:
        """The shares of these garbage rows are gone from the stores: forget the rows, and
        their packed shares' places (the packs they emptied become dead)."""
        with self.transaction():
            self._forget_packed(ids)
            self.db.executemany("DELETE FROM garbage WHERE id=?", [(i,) for i in ids])

    # -- chunks found unrecoverable --------------------------------------------------------
    def mark_unreadable(self, oid: bytes, ino: int, idx: int, now_ns: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO unreadable VALUES (?,?,?,?)",
                        (oid, ino, idx, now_ns))

    def clear_unreadable(self, oid: bytes) -> None:
        self.db.execute("DELETE FROM unreadable WHERE oid=?", (oid,))

    def unreadable_oids(self) -> set[bytes]:
        return {r[0] for r in self._rows_if_table("SELECT oid FROM unreadable")}

    def unreadable_inodes(self) -> list[int]:
        """Files with a current chunk version found unrecoverable and not readable since."""
        return [r[0] for r in self._rows_if_table(
            "SELECT DISTINCT u.inode FROM unreadable u JOIN chunks c"
            " ON c.inode = u.inode AND c.idx = u.idx AND c.oid = u.oid")]

    def _rows_if_table(self, sql: str) -> list[tuple]:
        """The rows, or none from a database of an older schema opened read-only."""
        try:
            return self.db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []

    # -- power-loss recovery -------------------------------------------------------------
    def durable_garbage_id(self) -> int:
        """Garbage rows up to this id were replaced by versions known to be durable."""
        row = self.db.execute(
            "SELECT value FROM dbinfo WHERE key='durable_garbage_id'").fetchone()
        return int(row[0]) if row else 0

    def set_durable_garbage_id(self, gid: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO dbinfo VALUES ('durable_garbage_id', ?)",
                        (str(gid),))

    def suspect_garbage(self) -> list[tuple[int, int, int, ChunkRow]]:
        """Replaced chunk rows whose replacement may not be durable (committed after the
        last durable point), oldest first: (garbage id, inode, size before, row)."""
        rows = self.db.execute(
            f"SELECT g.id, g.inode, g.size_before, {chunk_select('g')}"
            " FROM garbage g WHERE g.id > ? AND g.inode IS NOT NULL ORDER BY g.id",
            (self.durable_garbage_id(),))
        return [(r[0], r[1], r[2], self.chunk_row(r[3:])) for r in rows]

    def restore_chunk(self, ino: int, gid: int, row: ChunkRow, size: int | None) -> None:
        """Put a replaced chunk version back (its replacement's shares were lost): the
        current row becomes garbage, the restored one's garbage row goes (its shares are
        current again), and the file size is set back when given."""
        with self.transaction():
            self._to_garbage("idx=?", ino, row.idx)
            self.db.execute("DELETE FROM garbage WHERE id=?", (gid,))
            self._insert_chunk(ino, row)
            if size is not None:
                self.db.execute("UPDATE inodes SET size=? WHERE id=?", (size, ino))

    # -- extended attributes -------------------------------------------------------------
    def get_xattr(self, ino: int, name: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM xattrs WHERE inode=? AND name=?",
                              (ino, name)).fetchone()
        return row[0] if row else None

    def has_xattrs(self) -> bool:
        """Whether any inode, live or in a named version, has an extended attribute."""
        return self.db.execute("SELECT 1 FROM xattrs UNION ALL SELECT 1 FROM version_xattrs"
                               " LIMIT 1").fetchone() is not None

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO xattrs VALUES (?,?,?)", (ino, name, value))

    def list_xattrs(self, ino: int) -> list[bytes]:
        return [r[0] for r in self.db.execute("SELECT name FROM xattrs WHERE inode=?", (ino,))]

    def remove_xattr(self, ino: int, name: bytes) -> bool:
        cur = self.db.execute("DELETE FROM xattrs WHERE inode=? AND name=?", (ino, name))
        return cur.rowcount > 0

    # -- reporting -----------------------------------------------------------------------
    def stats(self) -> Stats:
        f, d, s, logical = self.db.execute(
            # 61440 = S_IFMT, 32768 = S_IFREG, 16384 = S_IFDIR, 40960 = S_IFLNK
            "SELECT SUM(mode & 61440 = 32768), SUM(mode & 61440 = 16384),"
            " SUM(mode & 61440 = 40960),"
            " SUM(CASE WHEN mode & 61440 = 32768 THEN size ELSE 0 END) FROM inodes"
        ).fetchone()
        chunks, sealed = self.db.execute("SELECT COUNT(*), SUM(length) FROM chunks").fetchone()
        return Stats(f or 0, d or 0, s or 0, chunks or 0, logical or 0, sealed or 0)

    def inode_count(self) -> int:
        """Every inode (files, directories, links, nodes): statfs's used inodes. A count of
        one table, not `stats()` (which sums over every inode and chunk row: 51 ms for
        100,000 files, paid by every `df` and every `fusefs health` probe)."""
        return self.db.execute("SELECT COUNT(*) FROM inodes").fetchone()[0]

    def stored_bytes(self, k: int, n: int, seg: int) -> int:
        """Bytes of all shares in the stores: n shares of ceil(sealed length / k) per chunk,
        the sealed length being the plaintext plus a 16-byte tag per `seg`-byte segment."""
        row = self.db.execute(
            "SELECT SUM((length + 16 * MAX(1, (length + ? - 1) / ?) + ? - 1) / ?) FROM chunks",
            (seg, seg, k, k)).fetchone()
        return (row[0] or 0) * n
