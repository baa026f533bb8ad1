"""The metadata schema, one commented place.

Invariants:
- inode 1 is the root directory; inode numbers are never reused while the volume lives
  (AUTOINCREMENT), so a stale kernel reference can never reach a new file.
- a chunk row exists only for chunks whose shares were all written before the row was
  committed; a file's bytes past the last chunk row (or in a missing row) read as zeros.
- every share object in a store is referenced by exactly one chunk row or one garbage row,
  except objects written by a write that crashed before its commit (orphans; scrub finds them).
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3  # 2: garbage rows keep the replaced chunk row (power-loss recovery);
#                    3: content digests of chunks (fingerprints) and named versions

_TABLES = """
-- One row per file, directory or symlink.
CREATE TABLE inodes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- the inode number; 1 = root
    file_id   BLOB NOT NULL UNIQUE,  -- 16 random bytes: selects the file key, bound into AEAD
    mode      INTEGER NOT NULL,      -- st_mode (type and permission bits)
    uid       INTEGER NOT NULL,
    gid       INTEGER NOT NULL,
    nlink     INTEGER NOT NULL,      -- 0: unlinked, kept until the kernel forgets it
    size      INTEGER NOT NULL,      -- logical size in bytes (holes read as zeros)
    rdev      INTEGER NOT NULL DEFAULT 0,
    atime_ns  INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    target    BLOB                   -- symlink target, NULL for other types
);

-- Directory entries. `id` doubles as the stable readdir cookie.
CREATE TABLE dentries (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    parent  INTEGER NOT NULL REFERENCES inodes(id),
    name    BLOB NOT NULL,
    inode   INTEGER NOT NULL REFERENCES inodes(id),
    UNIQUE (parent, name)
);
CREATE INDEX dentries_inode ON dentries(inode);

-- The chunk map: chunk `idx` of inode covers bytes [idx*chunk_size, idx*chunk_size+length).
CREATE TABLE chunks (
    inode     INTEGER NOT NULL REFERENCES inodes(id),
    idx       INTEGER NOT NULL,
    version   INTEGER NOT NULL,   -- bumped on every rewrite; bound into the AEAD data
    oid       BLOB NOT NULL,      -- 16 random bytes of this version: nonce + object names
    length    INTEGER NOT NULL,   -- plaintext bytes in this chunk
    placement BLOB NOT NULL,      -- byte i = index of the store that holds share i
    digests   BLOB NOT NULL,      -- 16-byte xxh3-128 of share i, concatenated
    content   BLOB,               -- 32-byte content digest of the `length` plaintext bytes
                                  -- (codec.digest.content; fingerprints); NULL in rows
                                  -- written before schema 3 until a fingerprint fills it in
    PRIMARY KEY (inode, idx)
) WITHOUT ROWID;

-- Extended attributes.
CREATE TABLE xattrs (
    inode  INTEGER NOT NULL REFERENCES inodes(id),
    name   BLOB NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (inode, name)
) WITHOUT ROWID;

-- Shares of replaced or deleted chunk versions, deleted from the stores only once the
-- commit that replaced them is durable (copy-on-write). The row keeps the whole replaced
-- chunk row and the file's size before the change: if a power loss leaves the replacing
-- commit on disk but not the shares it names, the replaced version is put back
-- (`durability.recover_lost_writes`). Rows with id <= dbinfo 'durable_garbage_id' were
-- replaced by durable versions. The restore columns are NULL in rows from schema 1. A row
-- whose oid a version_chunks row names is not deleted: it waits for the last such version.
CREATE TABLE garbage (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    oid         BLOB NOT NULL,
    placement   BLOB NOT NULL,
    inode       INTEGER,   -- the chunk row that was replaced or deleted ...
    idx         INTEGER,
    version     INTEGER,
    length      INTEGER,
    digests     BLOB,
    size_before INTEGER,   -- ... and inodes.size just before that commit
    published_ns INTEGER,  -- when a metadata snapshot without this version was published:
                           -- followers may read it until then (and a grace period after)
    content     BLOB       -- (the replaced row's, schema 3)
);

-- Shares known to be missing or bad that could not be rewritten yet (store down, full,
-- read-only); retried by the repair worker and by scrub. Obsolete once the chunk version
-- (oid) is no longer referenced by a chunk row.
CREATE TABLE repairs (
    oid       BLOB NOT NULL,
    share     INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    idx       INTEGER NOT NULL,
    reason    TEXT NOT NULL,      -- event kind that found it: missing, checksum_mismatch, ...
    since_ns  INTEGER NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (oid, share)
) WITHOUT ROWID;

-- Chunk versions a read or scrub found unrecoverable (fewer than K good shares) and no
-- read has found whole since: what `fusefs status` lists as files at risk, with the repair
-- queue. A successful whole read of the version removes its row, whatever made it good
-- again (a store came back, a heal, a scrub). The events keep the history.
CREATE TABLE unreadable (
    oid       BLOB PRIMARY KEY,
    inode     INTEGER NOT NULL,
    idx       INTEGER NOT NULL,
    since_ns  INTEGER NOT NULL
) WITHOUT ROWID;

-- Key/value facts about the database itself: schema_version; durable_garbage_id (see
-- garbage); writer_epoch (which writer of the volume this is: a host that recovers the
-- volume as its writer raises it, and a writer that sees a higher one in the stores stops).
CREATE TABLE dbinfo (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

_VERSION_TABLES = """
-- Named versions: immutable copies of a tree's metadata that share the live tree's chunk
-- versions (copy-on-write: no share is copied). A share a version_chunks row names is never
-- deleted: garbage rows of its oid wait until no version names it (`MetaRepo.garbage`).
CREATE TABLE versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: part of kernel inodes
    name        BLOB NOT NULL UNIQUE,
    root        INTEGER NOT NULL,   -- the version's top directory (an id in version_inodes)
    source      BLOB NOT NULL,      -- the path it was taken from, inside the volume
    created_ns  INTEGER NOT NULL,
    fingerprint BLOB                -- tree digest of the version (NULL until computed)
);

-- The rows of inodes, dentries, chunks and xattrs of every inode under a version's root
-- when it was taken (same ids: a version's inode keeps its file_id, so its chunks decrypt).
CREATE TABLE version_inodes (
    vid       INTEGER NOT NULL REFERENCES versions(id),
    id        INTEGER NOT NULL,
    file_id   BLOB NOT NULL,
    mode      INTEGER NOT NULL,
    uid       INTEGER NOT NULL,
    gid       INTEGER NOT NULL,
    nlink     INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    rdev      INTEGER NOT NULL,
    atime_ns  INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    target    BLOB,
    PRIMARY KEY (vid, id)
) WITHOUT ROWID;
CREATE TABLE version_dentries (
    vid     INTEGER NOT NULL,
    id      INTEGER NOT NULL,   -- the live entry's id: the readdir cookie
    parent  INTEGER NOT NULL,
    name    BLOB NOT NULL,
    inode   INTEGER NOT NULL,
    PRIMARY KEY (vid, parent, name)
) WITHOUT ROWID;
CREATE INDEX version_dentries_cookie ON version_dentries(vid, parent, id);
CREATE TABLE version_chunks (
    vid       INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    idx       INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    oid       BLOB NOT NULL,
    length    INTEGER NOT NULL,
    placement BLOB NOT NULL,
    digests   BLOB NOT NULL,
    content   BLOB,
    PRIMARY KEY (vid, inode, idx)
) WITHOUT ROWID;
CREATE INDEX version_chunks_oid ON version_chunks(oid);
CREATE TABLE version_xattrs (
    vid    INTEGER NOT NULL,
    inode  INTEGER NOT NULL,
    name   BLOB NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (vid, inode, name)
) WITHOUT ROWID;
"""


def create_tables(db: sqlite3.Connection) -> None:
    """Create an empty schema (no root inode: the repository adds it)."""
    db.executescript(f"BEGIN; {_TABLES} {_VERSION_TABLES} INSERT INTO dbinfo VALUES "
                     f"('schema_version', '{SCHEMA_VERSION}'); COMMIT;")


# Upgrades from each older schema version to the next, run in one transaction at open.
MIGRATIONS = {
    1: """
        ALTER TABLE garbage ADD COLUMN inode INTEGER;
        ALTER TABLE garbage ADD COLUMN idx INTEGER;
        ALTER TABLE garbage ADD COLUMN version INTEGER;
        ALTER TABLE garbage ADD COLUMN length INTEGER;
        ALTER TABLE garbage ADD COLUMN digests BLOB;
        ALTER TABLE garbage ADD COLUMN size_before INTEGER;
        ALTER TABLE garbage ADD COLUMN published_ns INTEGER;
        CREATE TABLE unreadable (oid BLOB PRIMARY KEY, inode INTEGER NOT NULL,
                                 idx INTEGER NOT NULL, since_ns INTEGER NOT NULL)
            WITHOUT ROWID;
    """,
    2: "ALTER TABLE chunks ADD COLUMN content BLOB;"
       " ALTER TABLE garbage ADD COLUMN content BLOB;" + _VERSION_TABLES,
}


# Indexes that change no row and no reader's view, only speed: created when missing at every
# writable open, so volumes of any schema version get them without a migration.
_INDEXES = """
CREATE INDEX IF NOT EXISTS dentries_cookie ON dentries(parent, id);
"""


def ensure_indexes(db: sqlite3.Connection) -> None:
    """readdir pages through a directory in cookie (dentry id) order: without an index on
    (parent, id) each page sorted the whole directory again (quadratic in its size: a cold
    `find` over 100,000 files in directories of 1,000 took 7.8 s against 0.3 s raw)."""
    db.executescript(f"BEGIN; {_INDEXES} COMMIT;")


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a database of an older schema version up to SCHEMA_VERSION."""
    statements = "".join(MIGRATIONS[v] for v in range(version, SCHEMA_VERSION))
    db.executescript(f"BEGIN; {statements} UPDATE dbinfo SET value='{SCHEMA_VERSION}'"
                     " WHERE key='schema_version'; COMMIT;")


def read_as_current(db: sqlite3.Connection, version: int) -> None:
    """Let a read-only connection to an older schema (which it may not migrate) be queried
    as the current one: temporary views and empty tables shadow what is missing (SQLite
    looks up an unqualified name in `temp` before `main`)."""
    if version < 3:
        db.execute("CREATE TEMP VIEW chunks AS SELECT *, NULL AS content FROM main.chunks")
        db.execute("CREATE TEMP VIEW garbage AS SELECT *, NULL AS content FROM main.garbage")
        for statement in _VERSION_TABLES.split(";"):
            if "CREATE TABLE" in statement:
                db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE"))

