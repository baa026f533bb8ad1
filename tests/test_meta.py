"""Unit tests of the metadata repository (fusefs.meta) over real SQLite files in tmp_path."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from fusefs.codec import chunk as chunkcodec
from fusefs.codec import erasure
from fusefs.errors import ConfigError
from fusefs.meta.repo import ROOT_INODE, ChunkRow, MetaRepo
from fusefs.meta.schema import SCHEMA_VERSION

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "meta.db"


@pytest.fixture
def repo(db_path: Path):
    r = MetaRepo(db_path, create=True)
    with r.transaction():
        root = r.create_inode(os.urandom(16), DIR, 0, 0, 2, 1)
    assert root.id == ROOT_INODE
    yield r
    r.close()


def new_file(repo: MetaRepo, mode: int = REG, **kw) -> int:
    return repo.create_inode(os.urandom(16), mode, 1000, 1000, 1, 5, **kw).id


def chunk_row(idx: int, version: int = 1, length: int = 100, n: int = 5) -> ChunkRow:
    return ChunkRow(idx, version, os.urandom(16), length, bytes(range(n)), os.urandom(16 * n))


def garbage_oids(repo: MetaRepo) -> list[bytes]:
    return [oid for _, oid, _ in repo.garbage()]


# ------------------------------------------------------------------------------------------
# schema and opening
# ------------------------------------------------------------------------------------------


def test_schema_creates(db_path: Path) -> None:
    r = MetaRepo(db_path, create=True)
    try:
        tables = {row[0] for row in r.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"inodes", "dentries", "chunks", "xattrs", "garbage", "dbinfo"} <= tables
        version = r.db.execute("SELECT value FROM dbinfo WHERE key='schema_version'").fetchone()
        assert int(version[0]) == SCHEMA_VERSION
        assert r.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert r.get_inode(ROOT_INODE) is None  # the root is added by `init`, not the schema
        assert r.garbage() == []
    finally:
        r.close()


def test_readdir_pages_through_an_index_also_on_an_older_database(repo: MetaRepo,
                                                                   db_path: Path) -> None:
    """Each readdir page is an index range, not a sort of the whole directory (which made a
    cold `find` quadratic in directory size); a database made before the index gets it."""
    query = "EXPLAIN QUERY PLAN SELECT d.id FROM dentries d WHERE d.parent=? AND d.id>? " \
            "ORDER BY d.id LIMIT 32"
    with repo.transaction():
        for i in range(100):
            repo.add_dentry(ROOT_INODE, f"f{i}".encode(), new_file(repo))
    repo.db.execute("DROP INDEX dentries_cookie")
    plan = " ".join(str(r) for r in repo.db.execute(query, (ROOT_INODE, 0)))
    assert "TEMP B-TREE" in plan
    repo.close()
    r = MetaRepo(db_path)
    try:
        plan = " ".join(str(r) for r in r.db.execute(query, (ROOT_INODE, 0)))
        assert "dentries_cookie" in plan and "TEMP B-TREE" not in plan, plan
        names = [n for _, n, _ in r.readdir(ROOT_INODE, 0, 1000)]
        assert names == [f"f{i}".encode() for i in range(100)]
    finally:
        r.close()


def test_missing_database_without_create(db_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        MetaRepo(db_path)
    assert str(db_path) in str(exc.value)
    assert not db_path.exists()


def test_create_over_existing_database_is_refused(repo: MetaRepo, db_path: Path) -> None:
    with pytest.raises(ConfigError):
        MetaRepo(db_path, create=True)
    assert repo.get_inode(ROOT_INODE) is not None


def test_reopen_sees_committed_data(db_path: Path) -> None:
    r = MetaRepo(db_path, create=True)
    with r.transaction():
        root = r.create_inode(b"r" * 16, DIR, 0, 0, 2, 1)
        f = r.create_inode(b"f" * 16, REG, 7, 8, 1, 2)
        r.add_dentry(root.id, b"file", f.id)
        r.put_chunk(f.id, ChunkRow(0, 1, b"o" * 16, 10, b"\0\1\2\3\4", b"d" * 80), size=10)
        r.set_xattr(f.id, b"user.a", b"1")
    with pytest.raises(RuntimeError), r.transaction():
        r.add_dentry(root.id, b"rolled-back", f.id)
        raise RuntimeError
    r.close()

    again = MetaRepo(db_path)
    try:
        assert again.lookup(root.id, b"file") == f.id
        assert again.lookup(root.id, b"rolled-back") is None
        assert again.get_inode(f.id).size == 10
        assert again.get_chunk(f.id, 0) == ChunkRow(0, 1, b"o" * 16, 10, b"\0\1\2\3\4",
                                                    b"d" * 80)
        assert again.get_xattr(f.id, b"user.a") == b"1"
    finally:
        again.close()

    ro = MetaRepo(db_path, read_only=True)
    try:
        assert ro.lookup(root.id, b"file") == f.id
        with pytest.raises(sqlite3.OperationalError):
            ro.add_dentry(root.id, b"nope", f.id)
    finally:
        ro.close()


def test_second_connection_sees_commits_before_close(repo: MetaRepo, db_path: Path) -> None:
    ino = new_file(repo)
    repo.add_dentry(ROOT_INODE, b"x", ino)
    other = MetaRepo(db_path, read_only=True)
    try:
        assert other.lookup(ROOT_INODE, b"x") == ino
    finally:
        other.close()


@pytest.mark.parametrize("dirname", ["hash#dir", "question?dir", "percent%41dir", "sp ace"])
def test_path_with_uri_special_characters(tmp_path: Path, dirname: str) -> None:
    """A volume directory may have any name; the database must live at the path given."""
    d = tmp_path / dirname
    d.mkdir()
    path = d / "meta.db"
    r = MetaRepo(path, create=True)
    with r.transaction():
        r.create_inode(os.urandom(16), DIR, 0, 0, 2, 1)
    r.close()
    assert path.exists(), f"database was not created at {path}; tmp has {os.listdir(tmp_path)}"
    assert sorted(os.listdir(tmp_path)) == [dirname]
    again = MetaRepo(path)
    try:
        assert again.get_inode(ROOT_INODE) is not None
    finally:
        again.close()


@pytest.mark.parametrize("version", [str(SCHEMA_VERSION + 1), "0", "banana", ""])
def test_other_schema_version_is_refused(db_path: Path, version: str) -> None:
    r = MetaRepo(db_path, create=True)
    r.db.execute("UPDATE dbinfo SET value=? WHERE key='schema_version'", (version,))
    r.close()
    with pytest.raises(ConfigError) as exc:
        MetaRepo(db_path)
    assert str(db_path) in str(exc.value)


def test_missing_schema_version_is_refused(db_path: Path) -> None:
    r = MetaRepo(db_path, create=True)
    r.db.execute("DELETE FROM dbinfo")
    r.close()
    with pytest.raises(ConfigError):
        MetaRepo(db_path)


def test_foreign_sqlite_database_is_refused(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    with pytest.raises(ConfigError) as exc:
        MetaRepo(db_path)
    assert str(db_path) in str(exc.value)


def test_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError) as exc:
        MetaRepo(db_path)
    assert str(db_path) in str(exc.value)


# ------------------------------------------------------------------------------------------
# inodes
# ------------------------------------------------------------------------------------------


def test_create_get_update_inode(repo: MetaRepo) -> None:
    fid = os.urandom(16)
    row = repo.create_inode(fid, REG, 1000, 100, 1, 123456789, rdev=0)
    assert row.id > ROOT_INODE
    assert (row.file_id, row.mode, row.uid, row.gid, row.nlink, row.size) == (
        fid, REG, 1000, 100, 1, 0)
    assert row.atime_ns == row.mtime_ns == row.ctime_ns == 123456789
    assert row.target is None
    assert repo.get_inode(row.id) == row

    repo.update_inode(row.id, size=4096, mtime_ns=5, nlink=2)
    got = repo.get_inode(row.id)
    assert (got.size, got.mtime_ns, got.nlink, got.ctime_ns) == (4096, 5, 2, 123456789)
    assert repo.get_inode(row.id + 1000) is None


def test_symlink_and_device_inodes(repo: MetaRepo) -> None:
    link = repo.create_inode(os.urandom(16), LNK, 0, 0, 1, 1, target=b"/some/where")
    assert link.target == b"/some/where"
    assert link.size == len(b"/some/where")
    dev = repo.create_inode(os.urandom(16), stat.S_IFCHR | 0o600, 0, 0, 1, 1, rdev=0x0501)
    assert repo.get_inode(dev.id).rdev == 0x0501


def test_inode_numbers_are_not_reused(repo: MetaRepo) -> None:
    a = new_file(repo)
    repo.delete_inode(a)
    b = new_file(repo)
    assert b > a


def test_file_id_is_unique(repo: MetaRepo) -> None:
    fid = os.urandom(16)
    repo.create_inode(fid, REG, 0, 0, 1, 1)
    with pytest.raises(sqlite3.IntegrityError):
        repo.create_inode(fid, REG, 0, 0, 1, 1)


def test_delete_inode(repo: MetaRepo) -> None:
    ino = new_file(repo)
    other = new_file(repo)
    rows = [chunk_row(i) for i in range(3)]
    for r in rows:
        repo.put_chunk(ino, r)
    keep = chunk_row(0)
    repo.put_chunk(other, keep)
    repo.set_xattr(ino, b"user.x", b"1")
    repo.set_xattr(other, b"user.x", b"2")

    repo.delete_inode(ino)
    assert repo.get_inode(ino) is None
    assert repo.get_chunk(ino, 0) is None
    assert repo.get_xattr(ino, b"user.x") is None
    assert sorted(garbage_oids(repo)) == sorted(r.oid for r in rows)
    assert {p for _, _, p in repo.garbage()} == {rows[0].placement}
    # the other inode is untouched
    assert repo.get_chunk(other, 0) == keep
    assert repo.get_xattr(other, b"user.x") == b"2"


def test_unlinked_inodes(repo: MetaRepo) -> None:
    a, b = new_file(repo), new_file(repo)
    repo.update_inode(a, nlink=0)
    assert repo.unlinked_inodes() == [a]
    repo.update_inode(b, nlink=0)
    assert sorted(repo.unlinked_inodes()) == [a, b]


# ------------------------------------------------------------------------------------------
# directory entries
# ------------------------------------------------------------------------------------------


def test_dentries_add_lookup_move_remove(repo: MetaRepo) -> None:
    sub = repo.create_inode(os.urandom(16), DIR, 0, 0, 2, 1).id
    repo.add_dentry(ROOT_INODE, b"sub", sub)
    f = new_file(repo)
    repo.add_dentry(sub, b"f\xffbin", f)  # names are bytes, not necessarily UTF-8

    assert repo.lookup(ROOT_INODE, b"sub") == sub
    assert repo.lookup(sub, b"f\xffbin") == f
    assert repo.lookup(ROOT_INODE, b"f\xffbin") is None
    assert repo.lookup_inode(sub, b"f\xffbin") == repo.get_inode(f)
    assert repo.lookup_inode(ROOT_INODE, b"f\xffbin") is None
    assert repo.has_children(sub) and repo.has_children(ROOT_INODE)
    assert repo.parent_of(sub) == (ROOT_INODE, b"sub")

    with pytest.raises(FileExistsError):
        repo.add_dentry(sub, b"f\xffbin", f)

    repo.move_dentry(sub, b"f\xffbin", ROOT_INODE, b"moved")
    assert repo.lookup(sub, b"f\xffbin") is None
    assert repo.lookup(ROOT_INODE, b"moved") == f
    assert not repo.has_children(sub)
    assert repo.parent_of(f) == (ROOT_INODE, b"moved")

    g = new_file(repo)
    repo.set_dentry_inode(ROOT_INODE, b"moved", g)
    assert repo.lookup(ROOT_INODE, b"moved") == g
    assert repo.parent_of(f) is None

    repo.remove_dentry(ROOT_INODE, b"moved")
    assert repo.lookup(ROOT_INODE, b"moved") is None
    repo.remove_dentry(ROOT_INODE, b"moved")  # removing twice is harmless
    assert repo.lookup(ROOT_INODE, b"sub") == sub


def test_hard_links_share_one_inode(repo: MetaRepo) -> None:
    f = new_file(repo)
    repo.add_dentry(ROOT_INODE, b"a", f)
    repo.add_dentry(ROOT_INODE, b"b", f)
    assert repo.lookup(ROOT_INODE, b"a") == repo.lookup(ROOT_INODE, b"b") == f
    repo.remove_dentry(ROOT_INODE, b"a")
    assert repo.lookup(ROOT_INODE, b"b") == f
    assert repo.parent_of(f) == (ROOT_INODE, b"b")


def _names(entries) -> list[bytes]:
    return [name for _, name, _ in entries]


def test_readdir_pages_and_joins_inodes(repo: MetaRepo) -> None:
    inos = {}
    for i in range(10):
        inos[f"e{i}".encode()] = new_file(repo)
        repo.add_dentry(ROOT_INODE, f"e{i}".encode(), inos[f"e{i}".encode()])
    seen = []
    after = 0
    while True:
        page = repo.readdir(ROOT_INODE, after, 3)
        if not page:
            break
        assert len(page) <= 3
        for cookie, name, row in page:
            assert cookie > after
            after = cookie
            assert row.id == inos[name]
            assert row.mode == REG
            seen.append(name)
    assert seen == [f"e{i}".encode() for i in range(10)]
    assert repo.readdir(ROOT_INODE, 0, 100)[0][2] == repo.get_inode(inos[b"e0"])


def test_readdir_cookies_stable_under_changes(repo: MetaRepo) -> None:
    names = [f"n{i:02d}".encode() for i in range(12)]
    ino = {n: new_file(repo) for n in names}
    for n in names:
        repo.add_dentry(ROOT_INODE, n, ino[n])

    page1 = repo.readdir(ROOT_INODE, 0, 4)
    assert _names(page1) == names[:4]
    cookies_before = {n: c for c, n, _ in repo.readdir(ROOT_INODE, 0, 100)}

    # between pages: delete the entry at the cookie we continue from, one already returned,
    # one not yet returned; rename one not yet returned; add new ones
    repo.remove_dentry(ROOT_INODE, names[3])
    repo.remove_dentry(ROOT_INODE, names[0])
    repo.remove_dentry(ROOT_INODE, names[6])
    repo.move_dentry(ROOT_INODE, names[8], ROOT_INODE, b"renamed")
    late = new_file(repo)
    repo.add_dentry(ROOT_INODE, b"late", late)

    after = page1[-1][0]
    rest = []
    while page := repo.readdir(ROOT_INODE, after, 4):
        rest.extend(page)
        after = page[-1][0]
        if len(rest) == 4:  # more changes mid-way: delete the newest, add another
            repo.remove_dentry(ROOT_INODE, b"late")
            repo.add_dentry(ROOT_INODE, b"later", new_file(repo))

    got = _names(page1) + _names(rest)
    expected = names[:4] + [n for n in names[4:] if n not in (names[6], names[8])]
    expected += [b"renamed", b"later"]
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got)), "an entry was returned twice"
    # a renamed entry keeps its cookie; entries never change cookies
    cookies_after = {n: c for c, n, _ in repo.readdir(ROOT_INODE, 0, 100)}
    assert cookies_after[b"renamed"] == cookies_before[names[8]]
    for n in names[1:]:
        if n in cookies_after:
            assert cookies_after[n] == cookies_before[n]


def test_readdir_cookies_are_never_reused(repo: MetaRepo) -> None:
    a = new_file(repo)
    repo.add_dentry(ROOT_INODE, b"a", a)
    repo.add_dentry(ROOT_INODE, b"b", a)
    last = repo.readdir(ROOT_INODE, 0, 10)[-1][0]
    repo.remove_dentry(ROOT_INODE, b"b")  # the highest cookie goes away
    repo.add_dentry(ROOT_INODE, b"c", a)
    cookie_c = repo.readdir(ROOT_INODE, 0, 10)[-1][0]
    assert cookie_c > last
    # a reader that stopped after "b" still sees "c"
    assert _names(repo.readdir(ROOT_INODE, last, 10)) == [b"c"]


def test_readdir_of_empty_and_other_directories(repo: MetaRepo) -> None:
    sub = repo.create_inode(os.urandom(16), DIR, 0, 0, 2, 1).id
    repo.add_dentry(ROOT_INODE, b"sub", sub)
    assert repo.readdir(sub, 0, 10) == []
    assert _names(repo.readdir(ROOT_INODE, 0, 10)) == [b"sub"]


# ------------------------------------------------------------------------------------------
# chunks and garbage
# ------------------------------------------------------------------------------------------


def test_put_get_chunk(repo: MetaRepo) -> None:
    ino = new_file(repo)
    row = chunk_row(0, version=1, length=65536)
    repo.put_chunk(ino, row, size=65536)
    assert repo.get_chunk(ino, 0) == row
    assert repo.get_chunk(ino, 1) is None
    assert repo.chunk_version(ino, 0) == 1
    assert repo.chunk_version(ino, 7) == 0
    assert repo.get_inode(ino).size == 65536
    assert repo.garbage() == []
    for i in range(5):
        assert row.share_digest(i) == row.digests[16 * i : 16 * i + 16]


def test_put_chunk_replacing_moves_old_oid_to_garbage(repo: MetaRepo) -> None:
    ino = new_file(repo)
    v1 = chunk_row(0, version=1)
    v2 = chunk_row(0, version=2)
    repo.put_chunk(ino, v1)
    repo.put_chunk(ino, v2, size=100)
    assert repo.get_chunk(ino, 0) == v2
    assert [(oid, pl) for _, oid, pl in repo.garbage()] == [(v1.oid, v1.placement)]

    v3 = chunk_row(0, version=3)
    repo.put_chunk(ino, v3)
    assert garbage_oids(repo) == [v1.oid, v2.oid]
    assert repo.chunk_version(ino, 0) == 3


def test_put_chunk_is_one_transaction(repo: MetaRepo) -> None:
    """If the new row cannot be written, the old oid must not have become garbage."""
    ino = new_file(repo)
    v1 = chunk_row(0, version=1)
    repo.put_chunk(ino, v1, size=100)
    broken = ChunkRow(0, 2, os.urandom(16), 50, None, b"")  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        repo.put_chunk(ino, broken, size=50)
    assert repo.garbage() == []
    assert repo.get_chunk(ino, 0) == v1
    assert repo.get_inode(ino).size == 100


def test_put_chunk_rolls_back_with_outer_transaction(repo: MetaRepo) -> None:
    ino = new_file(repo)
    v1 = chunk_row(0, version=1)
    repo.put_chunk(ino, v1)
    with pytest.raises(ValueError), repo.transaction():
        repo.put_chunk(ino, chunk_row(0, version=2), size=999)
        raise ValueError
    assert repo.get_chunk(ino, 0) == v1
    assert repo.garbage() == []
    assert repo.get_inode(ino).size == 0


def test_delete_chunks_from(repo: MetaRepo) -> None:
    ino = new_file(repo)
    rows = [chunk_row(i) for i in range(5)]
    for r in rows:
        repo.put_chunk(ino, r)
    repo.delete_chunks_from(ino, 2)
    assert [repo.get_chunk(ino, i) for i in range(5)] == rows[:2] + [None] * 3
    assert sorted(garbage_oids(repo)) == sorted(r.oid for r in rows[2:])
    repo.delete_chunks_from(ino, 2)  # nothing left past 2: no new garbage
    assert len(repo.garbage()) == 3
    repo.delete_chunks_from(ino, 0)
    assert repo.get_chunk(ino, 0) is None
    assert sorted(garbage_oids(repo)) == sorted(r.oid for r in rows)


def test_garbage_paging_and_done(repo: MetaRepo) -> None:
    ino = new_file(repo)
    rows = [chunk_row(i) for i in range(7)]
    for r in rows:
        repo.put_chunk(ino, r)
    repo.delete_chunks_from(ino, 0)
    first = repo.garbage(limit=3)
    assert len(first) == 3
    repo.garbage_done([gid for gid, _, _ in first])
    rest = repo.garbage()
    assert len(rest) == 4
    assert {oid for _, oid, _ in first} | {oid for _, oid, _ in rest} == {r.oid for r in rows}
    repo.garbage_done([gid for gid, _, _ in rest])
    assert repo.garbage() == []


# ------------------------------------------------------------------------------------------
# transactions
# ------------------------------------------------------------------------------------------


def test_transaction_commit_and_rollback(repo: MetaRepo) -> None:
    with repo.transaction():
        a = new_file(repo)
        repo.add_dentry(ROOT_INODE, b"a", a)
    assert repo.lookup(ROOT_INODE, b"a") == a

    with pytest.raises(KeyError), repo.transaction():
        b = new_file(repo)
        repo.add_dentry(ROOT_INODE, b"b", b)
        repo.set_xattr(a, b"user.k", b"v")
        raise KeyError("boom")
    assert repo.lookup(ROOT_INODE, b"b") is None
    assert repo.get_inode(b) is None
    assert repo.get_xattr(a, b"user.k") is None

    # the repository is usable again after a rollback
    with repo.transaction():
        repo.add_dentry(ROOT_INODE, b"c", a)
    assert repo.lookup(ROOT_INODE, b"c") == a


def test_transaction_rollback_on_base_exception(repo: MetaRepo) -> None:
    with pytest.raises(KeyboardInterrupt), repo.transaction():
        repo.add_dentry(ROOT_INODE, b"x", new_file(repo))
        raise KeyboardInterrupt
    assert repo.lookup(ROOT_INODE, b"x") is None
    assert not repo.db.in_transaction


def test_nested_transactions_join_the_outer_one(repo: MetaRepo) -> None:
    with pytest.raises(RuntimeError), repo.transaction():
        with repo.transaction():
            repo.add_dentry(ROOT_INODE, b"inner", new_file(repo))
        assert repo.db.in_transaction  # the inner block did not commit
        raise RuntimeError
    assert repo.lookup(ROOT_INODE, b"inner") is None

    with repo.transaction():
        with pytest.raises(RuntimeError), repo.transaction():
            raise RuntimeError
        repo.add_dentry(ROOT_INODE, b"after-inner-error", new_file(repo))
    assert repo.lookup(ROOT_INODE, b"after-inner-error") is not None
    assert not repo.db.in_transaction


def test_failing_statement_in_transaction_rolls_back(repo: MetaRepo) -> None:
    f = new_file(repo)
    repo.add_dentry(ROOT_INODE, b"dup", f)
    with pytest.raises(FileExistsError), repo.transaction():
        repo.add_dentry(ROOT_INODE, b"new", f)
        repo.add_dentry(ROOT_INODE, b"dup", f)
    assert repo.lookup(ROOT_INODE, b"new") is None


def test_deferred_rows_commit_with_the_next_transaction(repo: MetaRepo,
                                                        db_path: Path) -> None:
    """A created file's rows wait in an open transaction for its close's commit: another
    connection sees them only then; a failing body undoes itself alone; close commits."""
    other = MetaRepo(db_path, read_only=True)
    try:
        with repo.deferred():
            repo.add_dentry(ROOT_INODE, b"created", new_file(repo))
        assert repo.pending and repo.lookup(ROOT_INODE, b"created") is not None
        assert other.lookup(ROOT_INODE, b"created") is None  # not committed yet
        with pytest.raises(FileExistsError), repo.transaction():
            repo.add_dentry(ROOT_INODE, b"created", new_file(repo))  # the body fails...
        assert repo.pending  # ...and only its own statements are undone
        with repo.transaction():
            repo.add_dentry(ROOT_INODE, b"closed", new_file(repo))
        assert not repo.pending and not repo.db.in_transaction
        assert other.lookup(ROOT_INODE, b"created") is not None  # committed together
        assert other.lookup(ROOT_INODE, b"closed") is not None

        with repo.deferred():
            repo.add_dentry(ROOT_INODE, b"at-close", new_file(repo))
        repo.close()  # commits what is pending (an unmount)
        assert other.lookup(ROOT_INODE, b"at-close") is not None
    finally:
        other.close()


def test_new_databases_have_small_pages(repo: MetaRepo) -> None:
    assert repo.db.execute("PRAGMA page_size").fetchone()[0] == 1024


def test_fsync_wal(repo: MetaRepo) -> None:
    new_file(repo)
    assert repo.fsync_wal() > 0
    repo.checkpoint_if_large(0)  # small WAL: nothing to do
    assert repo.get_inode(ROOT_INODE) is not None


# ------------------------------------------------------------------------------------------
# xattrs
# ------------------------------------------------------------------------------------------


def test_xattrs(repo: MetaRepo) -> None:
    f = new_file(repo)
    g = new_file(repo)
    assert repo.get_xattr(f, b"user.a") is None
    assert repo.list_xattrs(f) == []
    repo.set_xattr(f, b"user.a", b"1")
    repo.set_xattr(f, b"user.b", b"\0binary\xff")
    repo.set_xattr(g, b"user.a", b"other")
    assert repo.get_xattr(f, b"user.b") == b"\0binary\xff"
    assert sorted(repo.list_xattrs(f)) == [b"user.a", b"user.b"]
    repo.set_xattr(f, b"user.a", b"replaced")
    assert repo.get_xattr(f, b"user.a") == b"replaced"
    assert sorted(repo.list_xattrs(f)) == [b"user.a", b"user.b"]
    assert repo.remove_xattr(f, b"user.a") is True
    assert repo.remove_xattr(f, b"user.a") is False
    assert repo.list_xattrs(f) == [b"user.b"]
    assert repo.get_xattr(g, b"user.a") == b"other"
    repo.set_xattr(f, b"user.empty", b"")
    assert repo.get_xattr(f, b"user.empty") == b""


# ------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------


def test_stats_and_stored_bytes(repo: MetaRepo) -> None:
    empty = repo.stats()
    assert (empty.files, empty.directories, empty.symlinks, empty.chunks,
            empty.logical_bytes, empty.sealed_bytes) == (0, 1, 0, 0, 0, 0)
    assert repo.stored_bytes(3, 5, 65536) == 0

    a, b = new_file(repo), new_file(repo)
    repo.create_inode(os.urandom(16), DIR, 0, 0, 2, 1)
    repo.create_inode(os.urandom(16), LNK, 0, 0, 1, 1, target=b"abcdef")
    lengths = {a: [65536, 65536, 17], b: [0, 1]}
    for ino, ls in lengths.items():
        for idx, length in enumerate(ls):
            repo.put_chunk(ino, chunk_row(idx, length=length))
    repo.update_inode(a, size=2 * 65536 + 17)
    repo.update_inode(b, size=1_000_000)  # sparse: size need not match the chunks

    st = repo.stats()
    assert (st.files, st.directories, st.symlinks) == (2, 2, 1)
    assert st.chunks == 5
    assert st.logical_bytes == 2 * 65536 + 17 + 1_000_000  # symlink sizes not counted
    assert st.sealed_bytes == sum(sum(v) for v in lengths.values())

    all_lengths = [x for v in lengths.values() for x in v]
    for k, n, seg in [(3, 5, 65536), (1, 2, 4096), (4, 4, 1 << 20), (2, 3, 65536)]:
        expected = sum(n * erasure.share_size(chunkcodec.sealed_length(x, seg), k)
                       for x in all_lengths)
        assert repo.stored_bytes(k, n, seg) == expected, (k, n, seg)
