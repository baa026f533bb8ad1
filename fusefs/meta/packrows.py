"""The SQL of pack objects (format 4), beside `repo`: where packed shares are (`packed`), the
packs themselves (`packs`) and the dead ones waiting to be deleted (`pack_garbage`).

`PackSql` is a part of `MetaRepo` (same connection, same transactions: `packs.live` changes
in the transaction that changes `packed`), kept apart so the chunk-map SQL stays readable.
"""

from __future__ import annotations

import sqlite3
import struct
from contextlib import AbstractContextManager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PackLoc:
    """Where a packed share is: `length` bytes at `offset` of pack `pack` (packs.id), whose
    object is named after `pid`."""

    pack: int
    pid: bytes
    offset: int
    length: int


Locs = tuple["PackLoc | None", ...]  # per share: its place in a pack, or None (own object)
_LOC = struct.Struct(">QII")  # packed.locs: u64 packs.id, u32 offset, u32 length per share


def encode_locs(locs: Locs) -> bytes:
    return b"".join(_LOC.pack(loc.pack, loc.offset, loc.length) if loc is not None
                    else _LOC.pack(0, 0, 0) for loc in locs)


@dataclass(frozen=True, slots=True)
class PackRow:
    id: int
    pid: bytes
    store: int
    size: int
    live: int
    state: int


PACK_OPEN, PACK_SEALED, PACK_DEAD = 0, 1, 2  # packs.state


class PackSql:
    """Pack bookkeeping of a `MetaRepo` (it provides `db`, `transaction` and `_pids`)."""

    db: sqlite3.Connection
    _pids: dict[int, bytes]  # packs.id -> pid (never changes)

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def decode_locs(self, blob: bytes) -> Locs:
        pid = self._pid
        return tuple(PackLoc(pack, pid(pack), off, n) if pack else None
                     for pack, off, n in _LOC.iter_unpack(blob))

    def _pid(self, pack: int) -> bytes:
        found = self._pids.get(pack)
        if found is None:
            row = self.db.execute("SELECT pid FROM packs WHERE id=?", (pack,)).fetchone()
            found = self._pids[pack] = row[0] if row else bytes(16)
        return found

    def _add_packed(self, oid: bytes, locs: Locs) -> None:
        """Record where a chunk version's packed shares are, and count them in their packs."""
        self.db.execute("INSERT OR REPLACE INTO packed VALUES (?,?)", (oid, encode_locs(locs)))
        self._count([(loc, 1) for loc in locs if loc is not None])

    def _count(self, changes: list[tuple[PackLoc, int]]) -> None:
        """Add (+1) or remove (-1) members to or from their packs' live bytes."""
        if changes:
            self.db.executemany(
                "UPDATE packs SET live = live + ?, size = MAX(size, ?) WHERE id=?",
                [(sign * loc.length, loc.offset + loc.length, loc.pack)
                 for loc, sign in changes])

    def all_packs(self) -> list[PackRow]:
        """Every pack with an object in a store (or about to have one)."""
        return [PackRow(*r) for r in self.db.execute(
            "SELECT id, pid, store, size, live, state FROM packs")]

    # -- packs ---------------------------------------------------------------------------
    def packed_locs(self, oids: list[bytes]) -> dict[bytes, Locs]:
        """Where the packed shares of these chunk versions are (versions without any: absent)."""
        out: dict[bytes, Locs] = {}
        for at in range(0, len(oids), 500):
            part = oids[at : at + 500]
            for oid, blob in self.db.execute(
                    f"SELECT oid, locs FROM packed WHERE oid IN ({','.join('?' * len(part))})",
                    part):
                out[oid] = self.decode_locs(blob)
        return out

    def new_pack(self, pid: bytes, store: int) -> int:
        """Record a pack before its object is created (so no pack object is ever unnamed:
        an interrupted mount leaves an empty pack row, never an orphan)."""
        with self.transaction():
            cur = self.db.execute("INSERT INTO packs (pid, store, size, live, state)"
                                  " VALUES (?,?,0,0,?)", (pid, store, PACK_OPEN))
        self._pids[cur.lastrowid] = pid  # type: ignore[index]
        return cur.lastrowid  # type: ignore[return-value]

    def seal_packs(self, ids: list[int] | None = None) -> None:
        """No more appends to these packs (None: every open one, as at mount after a crash);
        those that hold nothing anyone needs become dead."""
        with self.transaction():
            if ids is None:
                self.db.execute("UPDATE packs SET state=? WHERE state=?",
                                (PACK_SEALED, PACK_OPEN))
            else:
                self.db.executemany("UPDATE packs SET state=? WHERE id=? AND state=?",
                                    [(PACK_SEALED, i, PACK_OPEN) for i in ids])
            self.retire_empty_packs()

    def retire_empty_packs(self) -> None:
        """Sealed packs that no chunk version names any more become dead (to be deleted)."""
        self.db.execute("INSERT OR IGNORE INTO pack_garbage (pack) SELECT id FROM packs"
                        " WHERE state=? AND live <= 0", (PACK_SEALED,))
        self.db.execute("UPDATE packs SET state=? WHERE state=? AND live <= 0",
                        (PACK_DEAD, PACK_SEALED))

    def move_share(self, oid: bytes, share: int, old: PackLoc, new: PackLoc | None) -> bool:
        """Point share `share` of chunk version `oid` at its new place in a pack (a heal or
        compaction copied it there; None: an object of its own), if it is still at `old`;
        False when it moved meanwhile or the version is gone (the copy then holds nothing
        anyone needs)."""
        row = self.db.execute("SELECT locs FROM packed WHERE oid=?", (oid,)).fetchone()
        if row is None:
            return False
        locs = list(self.decode_locs(row[0]))
        cur = locs[share]
        if cur is None or (cur.pack, cur.offset) != (old.pack, old.offset):
            return False
        locs[share] = new
        with self.transaction():
            self.db.execute("UPDATE packed SET locs=? WHERE oid=?",
                            (encode_locs(tuple(locs)), oid))
            self._count([(old, -1)] if new is None else [(old, -1), (new, 1)])
            self.retire_empty_packs()
        return True

    def pack_garbage(self, limit: int = 1000, published_before_ns: int | None = None
                     ) -> list[tuple[int, int, bytes, int]]:
        """Dead packs to delete: (pack_garbage id, packs.id, pid, store); with
        `published_before_ns`, only those a snapshot published before then no longer names."""
        where = "" if published_before_ns is None else " WHERE g.published_ns <= ?"
        args = () if published_before_ns is None else (published_before_ns,)
        return self.db.execute(
            "SELECT g.id, p.id, p.pid, p.store FROM pack_garbage g JOIN packs p"
            f" ON p.id = g.pack{where} ORDER BY g.id LIMIT ?", (*args, limit)).fetchall()

    def pack_garbage_done(self, ids: list[tuple[int, int]]) -> None:
        """These dead packs' objects are deleted: (pack_garbage id, packs.id) pairs."""
        with self.transaction():
            self.db.executemany("DELETE FROM pack_garbage WHERE id=?", [(g,) for g, _ in ids])
            self.db.executemany("DELETE FROM packs WHERE id=?", [(p,) for _, p in ids])
        for _, p in ids:
            self._pids.pop(p, None)

    def pack_is_dead(self, pack: int) -> bool:
        row = self.db.execute("SELECT state FROM packs WHERE id=?", (pack,)).fetchone()
        return row is None or row[0] == PACK_DEAD

    def max_pack_garbage_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM pack_garbage").fetchone()[0]

    def mark_pack_garbage_published(self, up_to_id: int, now_ns: int) -> None:
        """A snapshot was published that no longer names the dead packs up to this id."""
        self.db.execute("UPDATE pack_garbage SET published_ns=? WHERE published_ns IS NULL"
                        " AND id <= ?", (now_ns, up_to_id))

    def compaction_candidates(self, dead_fraction: float) -> list[PackRow]:
        """Sealed packs more than `dead_fraction` of whose bytes no chunk version names."""
        return [PackRow(*r) for r in self.db.execute(
            "SELECT id, pid, store, size, live, state FROM packs WHERE state=? AND live > 0"
            " AND live < size * ?", (PACK_SEALED, 1.0 - dead_fraction))]

    def packed_after(self, oid: bytes, limit: int) -> list[tuple[bytes, Locs]]:
        """`packed` rows after `oid`, in oid order (a cursor over every packed share)."""
        return [(o, self.decode_locs(b)) for o, b in self.db.execute(
            "SELECT oid, locs FROM packed WHERE oid > ? ORDER BY oid LIMIT ?", (oid, limit))]

    def _forget_packed(self, garbage_ids: list[int]) -> None:
        """Garbage rows about to go: their chunk versions' members leave their packs."""
        gone: list[tuple[bytes, bytes]] = []
        for at in range(0, len(garbage_ids), 500):
            part = garbage_ids[at : at + 500]
            gone += self.db.execute(
                "SELECT p.oid, p.locs FROM garbage g JOIN packed p ON p.oid = g.oid"
                f" WHERE g.id IN ({','.join('?' * len(part))})", part).fetchall()
        if gone:
            self._count([(loc, -1) for _, blob in gone
                         for loc in self.decode_locs(blob) if loc is not None])
            self.db.executemany("DELETE FROM packed WHERE oid=?", [(o,) for o, _ in gone])
            self.retire_empty_packs()
