"""Schema 3 in the metadata repository: content digests, the migration of older databases,
and named versions (copies of a tree's rows that hold their chunk versions back from the
garbage collector). Real SQLite files in tmp_path, no mount."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from fusefs.meta.repo import ROOT_INODE, ChunkRow, MetaRepo
from fusefs.meta.schema import SCHEMA_VERSION
from fusefs.meta.versions import VersionRepo

DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644
GOLDEN_OLD_SCHEMA = Path(__file__).parent / "golden" / "format-3" / "volume" / "meta.db"


@pytest.fixture
def repo(tmp_path: Path):
    r = MetaRepo(tmp_path / "meta.db", create=True)
    with r.transaction():
        r.create_inode(os.urandom(16), DIR, 0, 0, 2, 1)
    yield r
    r.close()


def add(repo: MetaRepo, parent: int, name: bytes, mode: int = REG) -> int:
    ino = repo.create_inode(os.urandom(16), mode, 0, 0, 1, 1).id
    repo.add_dentry(parent, name, ino)
    return ino


def row(idx: int = 0, content: bytes | None = None) -> ChunkRow:
    return ChunkRow(idx, 1, os.urandom(16), 10, bytes(range(5)), os.urandom(80), content)


def deletable(repo: MetaRepo) -> set[bytes]:
    return {oid for _, oid, _ in repo.garbage()}


def test_an_older_database_is_read_as_is_and_migrated_when_written(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    shutil.copy(GOLDEN_OLD_SCHEMA, db)
    old = MetaRepo(db, read_only=True)
    try:
        assert old.get_info("schema_version") == "1"  # the golden volume's, made long ago
        rows = old.chunks_after(0, -1, 1000)
        assert rows and all(r.content is None for _, _, r in rows)
        assert VersionRepo(old).all() == []
        assert len(old.all_versions()) >= len(rows)
    finally:
        old.close()
    new = MetaRepo(db)
    try:
        assert new.get_info("schema_version") == str(SCHEMA_VERSION) == "4"
        assert [r for _, _, r in new.chunks_after(0, -1, 1000)] == [r for _, _, r in rows]
        ino, _, first = rows[0]
        new.set_content(first.oid, b"c" * 32)
        assert new.get_chunk(ino, first.idx).content == b"c" * 32
    finally:
        new.close()


def test_a_version_copies_only_its_tree(repo: MetaRepo) -> None:
    versions = VersionRepo(repo)
    ds = add(repo, ROOT_INODE, b"ds", DIR)
    inner = add(repo, ds, b"a", DIR)
    f = add(repo, inner, b"f")
    outside = add(repo, ROOT_INODE, b"outside")
    repo.put_chunk(f, row(0, b"x" * 32))
    repo.put_chunk(outside, row(0))
    repo.set_xattr(f, b"user.k", b"v")
    v = versions.create(b"v1", ds, b"/ds", 1)
    assert (v.name, v.root, v.source, v.fingerprint) == (b"v1", ds, b"/ds", None)
    assert versions.lookup_inode(v.id, ds, b"a").id == inner
    assert versions.lookup_inode(v.id, inner, b"f").id == f
    assert versions.inode(v.id, outside) is None
    assert versions.chunks_of(v.id, f) == repo.chunks_of(f)
    assert versions.get_xattr(v.id, f, b"user.k") == b"v"
    assert versions.parent_of(v.id, f) == inner and versions.parent_of(v.id, ds) is None
    tree = versions.subtree(ds, v.id)
    assert sorted(e[1] for e in tree.entries) == [b"a", b"f"]
    assert list(tree.chunks) == [f]
    assert versions.subtree(ds).entries == tree.entries  # the live tree, unchanged yet
    repo.remove_dentry(inner, b"f")  # the live tree changes; the version does not
    assert versions.subtree(ds).chunks == {}
    assert versions.subtree(ds, v.id).chunks == tree.chunks


def test_garbage_a_version_holds_waits_until_the_version_is_deleted(repo: MetaRepo) -> None:
    versions = VersionRepo(repo)
    ds = add(repo, ROOT_INODE, b"ds", DIR)
    f = add(repo, ds, b"f")
    kept = row(0)
    repo.put_chunk(f, kept)
    v1 = versions.create(b"v1", ds, b"/ds", 1)
    v2 = versions.create(b"v2", ds, b"/ds", 2)
    repo.put_chunk(f, row(0))  # the live tree replaces the chunk: kept goes to garbage ...
    assert kept.oid not in deletable(repo)  # ... but two versions still need it
    assert repo.chunk_by_oid(f, 0, kept.oid) is not None  # heals and repairs still wanted
    assert (kept.oid, kept.placement) in repo.all_versions()  # never an orphan
    repo.mark_garbage_published(repo.max_garbage_id(), 5)
    versions.delete(v1.id)
    assert kept.oid not in deletable(repo)
    versions.delete(v2.id)
    assert kept.oid in deletable(repo)
    assert repo.garbage(published_before_ns=10) == []  # its grace period starts again


def test_a_deleted_version_gives_up_what_only_it_held(repo: MetaRepo) -> None:
    versions = VersionRepo(repo)
    ds = add(repo, ROOT_INODE, b"ds", DIR)
    f = add(repo, ds, b"f")
    live = row(0)
    repo.put_chunk(f, live)
    file_id = repo.get_inode(f).file_id
    v = versions.create(b"v", ds, b"/ds", 1)
    repo.delete_inode(f)  # the file goes from the live tree
    assert repo.file_id_of(f) == file_id  # the version still reads it
    assert live.oid not in deletable(repo)
    assert [r.oid for _, _, r in repo.version_only_chunks()] == [live.oid]
    with repo.transaction():  # as if its garbage row had been lost: delete adds one
        repo.db.execute("DELETE FROM garbage")
    versions.delete(v.id)
    assert deletable(repo) == {live.oid}
    assert repo.file_id_of(f) is None
    assert repo.version_only_chunks() == []


def test_a_version_still_naming_a_live_chunk_frees_nothing(repo: MetaRepo) -> None:
    versions = VersionRepo(repo)
    ds = add(repo, ROOT_INODE, b"ds", DIR)
    f = add(repo, ds, b"f")
    repo.put_chunk(f, row(0))
    v = versions.create(b"v", ds, b"/ds", 1)
    versions.delete(v.id)
    assert deletable(repo) == set()
    assert versions.all() == []


def test_a_lazily_found_digest_is_recorded_in_the_tree_and_its_versions(
        repo: MetaRepo) -> None:
    versions = VersionRepo(repo)
    ds = add(repo, ROOT_INODE, b"ds", DIR)
    f = add(repo, ds, b"f")
    old = row(0)  # written before digests were kept
    repo.put_chunk(f, old)
    v = versions.create(b"v", ds, b"/ds", 1)
    repo.set_content(old.oid, b"d" * 32)
    assert repo.get_chunk(f, 0).content == b"d" * 32
    assert versions.chunks_of(v.id, f)[0].content == b"d" * 32
    repo.set_content(old.oid, b"e" * 32)  # a recorded digest is never overwritten
    assert repo.get_chunk(f, 0).content == b"d" * 32


def test_a_schema_2_database_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from fusefs.meta.schema import MIGRATIONS

    db = tmp_path / "meta.db"
    shutil.copy(GOLDEN_OLD_SCHEMA, db)
    raw = sqlite3.connect(db)
    raw.executescript(f"BEGIN; {MIGRATIONS[1]} UPDATE dbinfo SET value='2' WHERE"
                      " key='schema_version'; COMMIT;")
    raw.close()
    ro = MetaRepo(db, read_only=True)
    try:
        before = ro.chunks_after(0, -1, 1000)
        assert before and ro.garbage() == [] and VersionRepo(ro).all() == []
    finally:
        ro.close()
    new = MetaRepo(db)
    try:
        assert new.get_info("schema_version") == str(SCHEMA_VERSION)
        assert new.chunks_after(0, -1, 1000) == before
        ino, _, first = before[0]
        new.put_chunk(ino, row(first.idx, b"c" * 32))  # the replaced row keeps its content
        assert new.suspect_garbage()[-1][3] == first
    finally:
        new.close()
