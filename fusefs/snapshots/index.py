"""The writer's record of what it has published (VOLUME/snapshots.db, on this host): every
retained snapshot, the blocks each one lists, and the blocks in the stores.

Blocks are named by their content, so this index is how a new snapshot knows which blocks
are already in the stores (only the others are uploaded), and how rotation knows which
blocks no retained snapshot lists any more (those are deleted). It is rebuilt by `recover`
from the retained superblocks; losing it costs one full upload, never data.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fusefs.snapshots.objects import Ref

_TABLES = """
CREATE TABLE IF NOT EXISTS snapshots (
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, time_ns INTEGER NOT NULL,
    oid BLOB NOT NULL, length INTEGER NOT NULL, placement BLOB NOT NULL,
    digests BLOB NOT NULL,
    PRIMARY KEY (epoch, seq));
CREATE TABLE IF NOT EXISTS blocks (
    oid BLOB PRIMARY KEY, length INTEGER NOT NULL, placement BLOB NOT NULL,
    digests BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot_blocks (
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, pos INTEGER NOT NULL,
    oid BLOB NOT NULL, PRIMARY KEY (epoch, seq, pos)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshot_blocks_oid ON snapshot_blocks(oid);
"""


class SnapshotIndex:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.executescript(_TABLES)

    def close(self) -> None:
        self.db.close()

    def known_block(self, oid: bytes) -> Ref | None:
        row = self.db.execute("SELECT oid, length, placement, digests FROM blocks"
                              " WHERE oid=?", (oid,)).fetchone()
        return Ref(*row) if row else None

    def add(self, epoch: int, seq: int, time_ns: int, sb: Ref, blocks: list[Ref]) -> None:
        """Record a published snapshot and its blocks (new ones included)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?,?,?,?,?)",
                            (epoch, seq, time_ns, sb.oid, sb.length, sb.placement, sb.digests))
            self.db.executemany("INSERT OR IGNORE INTO blocks VALUES (?,?,?,?)",
                                [(b.oid, b.length, b.placement, b.digests) for b in blocks])
            self.db.executemany("INSERT OR REPLACE INTO snapshot_blocks VALUES (?,?,?,?)",
                                [(epoch, seq, pos, b.oid) for pos, b in enumerate(blocks)])

    def snapshots(self) -> list[tuple[int, int, int, Ref]]:
        """(epoch, seq, time_ns, superblock), oldest first."""
        return [(r[0], r[1], r[2], Ref(*r[3:])) for r in self.db.execute(
            "SELECT epoch, seq, time_ns, oid, length, placement, digests FROM snapshots"
            " ORDER BY seq, epoch")]

    def latest(self) -> tuple[int, int, int, Ref] | None:
        found = self.snapshots()
        return found[-1] if found else None

    def block_oids(self, epoch: int, seq: int) -> list[bytes]:
        """The blocks of one snapshot, in order."""
        return [r[0] for r in self.db.execute(
            "SELECT oid FROM snapshot_blocks WHERE epoch=? AND seq=? ORDER BY pos",
            (epoch, seq))]

    def forget(self, epoch: int, seq: int) -> list[Ref]:
        """Drop a snapshot; return the blocks no remaining snapshot lists (to delete)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM snapshots WHERE epoch=? AND seq=?", (epoch, seq))
            self.db.execute("DELETE FROM snapshot_blocks WHERE epoch=? AND seq=?", (epoch, seq))
            orphans = [Ref(*r) for r in self.db.execute(
                "SELECT oid, length, placement, digests FROM blocks b WHERE NOT EXISTS"
                " (SELECT 1 FROM snapshot_blocks s WHERE s.oid = b.oid)")]
            self.db.executemany("DELETE FROM blocks WHERE oid=?", [(b.oid,) for b in orphans])
        return orphans

    def objects(self) -> list[tuple[int, int, Ref]]:
        """(kind, version, ref) of every snapshot object kept: blocks, then superblocks."""
        blocks = [(0, 0, Ref(*r)) for r in self.db.execute(
            "SELECT oid, length, placement, digests FROM blocks")]
        return blocks + [(1, s, ref) for _, s, _, ref in self.snapshots()]

    def all_refs(self) -> list[Ref]:
        """Every snapshot object this writer keeps in the stores (scrub: not orphans)."""
        return [Ref(*r) for r in self.db.execute(
            "SELECT oid, length, placement, digests FROM blocks UNION ALL"
            " SELECT oid, length, placement, digests FROM snapshots")]


def snapshot_objects(path: Path) -> list[tuple[bytes, bytes]]:
    """(oid, placement) of every snapshot object the index at `path` knows (none if there
    is no index): for tools that run beside a volume without its publisher."""
    if not path.exists():
        return []
    index = SnapshotIndex(path)
    try:
        return [(r.oid, r.placement) for r in index.all_refs()]
    finally:
        index.close()
