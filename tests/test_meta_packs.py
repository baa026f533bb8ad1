"""The pack bookkeeping of the metadata (fusefs.meta.packrows, schema 4) over real SQLite:
`packs.live` follows `packed` in every transaction, a pack becomes dead only when sealed and
named by nothing, garbage a named version holds keeps its members alive, and moves are
conditional on the member being where it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fusefs.meta.packrows import PACK_DEAD, PACK_OPEN, PACK_SEALED, PackLoc
from fusefs.meta.repo import ROOT_INODE, ChunkRow, MetaRepo
from fusefs.meta.versions import VersionRepo

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
N = 5


@pytest.fixture
def repo(tmp_path: Path):
    r = MetaRepo(tmp_path / "meta.db", create=True)
    with r.transaction():
        assert r.create_inode(os.urandom(16), DIR, 0, 0, 2, 1).id == ROOT_INODE
    yield r
    r.close()


def packed_row(packs: list[tuple[int, bytes]], at: int, idx: int = 0, version: int = 1,
               length: int = 100) -> ChunkRow:
    """A chunk row whose share i is 100 bytes at `at` in pack packs[i]."""
    locs = tuple(PackLoc(pack, pid, at, length) for pack, pid in packs)
    return ChunkRow(idx, version, os.urandom(16), 250, bytes(range(N)), b"d" * 16 * N,
                    None, locs)


def state(repo: MetaRepo, pack: int) -> tuple[int, int, int]:
    row = next(p for p in repo.all_packs() if p.id == pack)
    return row.size, row.live, row.state


def new_packs(repo: MetaRepo) -> list[tuple[int, bytes]]:
    out = []
    for si in range(N):
        pid = os.urandom(16)
        out.append((repo.new_pack(pid, si), pid))
    return out


def test_live_bytes_follow_the_members_and_an_emptied_sealed_pack_dies(repo: MetaRepo
                                                                       ) -> None:
    packs = new_packs(repo)
    ino = repo.create_inode(os.urandom(16), REG, 0, 0, 1, 0).id
    first = packed_row(packs, 0)
    repo.put_chunk(ino, first, size=250)
    assert repo.get_chunk(ino, 0) == first  # the row comes back with its places
    assert state(repo, packs[0][0]) == (100, 100, PACK_OPEN)
    second = packed_row(packs, 100, version=2)
    repo.put_chunk(ino, second, size=250)  # the first version becomes garbage
    assert state(repo, packs[0][0]) == (200, 200, PACK_OPEN)
    [(gid, oid, _)] = repo.garbage()
    assert oid == first.oid and repo.packed_locs([oid])[oid] == first.locs
    repo.garbage_done([gid])
    assert state(repo, packs[0][0]) == (200, 100, PACK_OPEN)
    assert repo.packed_locs([first.oid]) == {}
    repo.delete_chunks_from(ino, 0)
    repo.garbage_done([g for g, _, _ in repo.garbage()])
    assert state(repo, packs[0][0]) == (200, 0, PACK_OPEN)  # open: not dead yet
    assert repo.pack_garbage() == []
    repo.seal_packs([p for p, _ in packs])
    assert state(repo, packs[0][0]) == (200, 0, PACK_DEAD)
    dead = repo.pack_garbage()
    assert sorted((p, pid, si) for _, p, pid, si in dead) == sorted(
        (p, pid, si) for si, (p, pid) in enumerate(packs))
    repo.pack_garbage_done([(g, p) for g, p, _, _ in dead])
    assert repo.all_packs() == [] and repo.pack_garbage() == []


def test_a_member_moves_only_from_where_it_is(repo: MetaRepo) -> None:
    packs = new_packs(repo)
    ino = repo.create_inode(os.urandom(16), REG, 0, 0, 1, 0).id
    row = packed_row(packs, 0)
    repo.put_chunk(ino, row)
    repo.seal_packs([p for p, _ in packs])
    newer = new_packs(repo)
    old = row.locs[2]
    copy = PackLoc(newer[2][0], newer[2][1], 0, 100)
    assert repo.move_share(row.oid, 2, old, copy)
    assert not repo.move_share(row.oid, 2, old, copy)  # moved already: the copy is unnamed
    assert repo.get_chunk(ino, 0).loc(2) == copy
    assert state(repo, old.pack) == (100, 0, PACK_DEAD)  # its only member left
    assert state(repo, copy.pack) == (100, 100, PACK_OPEN)
    assert state(repo, packs[1][0]) == (100, 100, PACK_SEALED)
    assert repo.move_share(row.oid, 1, row.locs[1], None)  # healed into an object
    assert repo.get_chunk(ino, 0).loc(1) is None
    assert not repo.move_share(os.urandom(16), 0, old, copy)  # a version that is gone


def test_garbage_a_version_holds_keeps_its_members_alive(repo: MetaRepo) -> None:
    packs = new_packs(repo)
    top = repo.create_inode(os.urandom(16), DIR, 0, 0, 2, 0).id
    repo.add_dentry(ROOT_INODE, b"ds", top)
    ino = repo.create_inode(os.urandom(16), REG, 0, 0, 1, 0).id
    repo.add_dentry(top, b"f", ino)
    row = packed_row(packs, 0)
    repo.put_chunk(ino, row, size=250)
    repo.seal_packs([p for p, _ in packs])
    versions = VersionRepo(repo)
    v1 = versions.create(b"v1", top, b"/ds", 1)
    assert versions.chunks_of(v1.id, ino) == [row]  # a version's rows have places too
    repo.delete_chunks_from(ino, 0)
    assert repo.garbage() == []  # held by v1: not deletable
    assert state(repo, packs[0][0]) == (100, 100, PACK_SEALED)
    assert repo.version_only_chunks()[0][2] == row
    versions.delete(v1.id)
    repo.garbage_done([g for g, _, _ in repo.garbage()])
    assert state(repo, packs[0][0]) == (100, 0, PACK_DEAD)


def test_a_restored_chunk_is_not_counted_twice(repo: MetaRepo) -> None:
    packs = new_packs(repo)
    ino = repo.create_inode(os.urandom(16), REG, 0, 0, 1, 0).id
    first = packed_row(packs, 0)
    repo.put_chunk(ino, first, size=250)
    repo.put_chunk(ino, packed_row(packs, 100, version=2), size=250)
    [(gid, _, _, row)] = repo.suspect_garbage()
    assert row == first
    repo.restore_chunk(ino, gid, row, 250)  # the replacement's shares were lost
    assert repo.get_chunk(ino, 0) == first
    assert state(repo, packs[0][0]) == (200, 200, PACK_OPEN)  # both still named once
    repo.garbage_done([g for g, _, _ in repo.garbage()])
    assert state(repo, packs[0][0]) == (200, 100, PACK_OPEN)


def test_a_crashed_writers_open_packs_are_sealed_and_empty_ones_die(repo: MetaRepo) -> None:
    packs = new_packs(repo)
    ino = repo.create_inode(os.urandom(16), REG, 0, 0, 1, 0).id
    locs = (*[PackLoc(p, pid, 0, 100) for p, pid in packs[:3]], None, None)
    repo.put_chunk(ino, ChunkRow(0, 1, os.urandom(16), 250, bytes(range(N)), b"d" * 16 * N,
                                 None, locs))
    repo.seal_packs()  # (the next mount does this before it writes)
    assert [state(repo, p)[2] for p, _ in packs] == [PACK_SEALED] * 3 + [PACK_DEAD] * 2
    assert repo.get_chunk(ino, 0).loc(4) is None  # shares 3, 4: objects of their own


def test_a_schema_3_database_reads_without_packs_and_migrates_to_4(tmp_path: Path) -> None:
    import shutil
    import sqlite3

    from fusefs.meta.schema import MIGRATIONS, SCHEMA_VERSION

    db = tmp_path / "meta.db"
    shutil.copy(Path(__file__).parent / "golden" / "format-3" / "volume" / "meta.db", db)
    raw = sqlite3.connect(db)  # schema 1 -> 3 as the release before packs left it
    raw.executescript(f"BEGIN; {MIGRATIONS[1]} {MIGRATIONS[2]} UPDATE dbinfo SET value='3'"
                      " WHERE key='schema_version'; COMMIT;")
    raw.close()
    old = MetaRepo(db, read_only=True)  # not migrated: empty temporary pack tables
    try:
        assert old.get_info("schema_version") == "3" and old.all_packs() == []
        rows = old.chunks_after(0, -1, 1000)
        assert rows and all(r.locs is None for _, _, r in rows)
    finally:
        old.close()
    new = MetaRepo(db)
    try:
        assert new.get_info("schema_version") == str(SCHEMA_VERSION) == "4"
        assert new.all_packs() == [] and new.pack_garbage() == []
        assert [r for _, _, r in new.chunks_after(0, -1, 1000)] == [r for _, _, r in rows]
    finally:
        new.close()
