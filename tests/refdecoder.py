#!/usr/bin/env python3
"""Reference decoder for fusefs volumes (formats 2, 3 and 4), written from docs/format.md alone.

The disaster tool of last resort: a volume whose fusefs is gone (lost, broken, unbuildable)
can still be read with this one file, the volume directory (fusefs.toml, meta.db), the stores
and the key. It imports nothing from fusefs: it also proves that the format document is
complete. Needs Python 3.11+, `cryptography`, `zfec` and `xxhash`.

    python refdecoder.py list VOLUME [--version NAME]
    python refdecoder.py extract VOLUME DEST [--key-file KEY] [--store PATH ...] [--version NAME]

`--version NAME` reads the named version (schema 3) instead of the live tree: its own rows in
the version_* tables, whose chunk rows name shares like the live tree's do.

`--store PATH` (repeated, in store-index order, one per store) replaces the config's store
URLs: for stores that moved. Only local (`file://`) stores are read; an `s3://` store counts
as unavailable unless it is replaced by a directory holding a copy of its objects (with or
without the `objects/<first hex digit>/` fan-out). The key defaults to VOLUME/fusefs.key.

`extract` writes every file bit-identically (holes stay sparse), directories, symlinks,
FIFOs, sockets and devices (devices as root only), with modes, times, xattrs (best effort) and
owners (as root); hard links are extracted as hard links. A chunk is rebuilt from parity when
data shares are missing or fail their xxh3 checksum, and other K-subsets are tried when K
checksum-valid shares do not authenticate. A file with a chunk that has no K good shares is
not written: one line on stderr names it, the other files are extracted, and the exit status
is 1. Read an unmounted volume: meta.db is read as it is on disk (a leftover -wal is applied
to a private copy).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import os
import shutil
import sqlite3
import stat
import sys
import tempfile
import tomllib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
import zfec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMATS = (2, 3, 4)  # 4: shares of small chunks may live in pack objects
SCHEMA_VERSIONS = ("1", "2", "3", "4")  # 2 added to garbage and the unreadable table: not
#                                     read here; 3 chunk content digests (not needed to read)
#                                     and the named versions (--version); 4 the pack tables
TAG = 16


class Fatal(Exception):
    """An error that ends the run (one line)."""


class Unrecoverable(Exception):
    """A chunk of a file cannot be read back (one line)."""


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def load_key(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise Fatal(f"cannot read the key file {path}: {e.strerror}") from e
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == 32:
        return raw
    raise Fatal(f"{path} is not a key file (64 hex digits or 32 raw bytes)")


def open_meta(volume: Path, keep: list[object]) -> sqlite3.Connection:
    """meta.db read-only, creating nothing in VOLUME; a leftover WAL is read through a copy."""
    db = volume / "meta.db"
    if not db.is_file():
        raise Fatal(f"{db} does not exist: not a fusefs volume directory")
    wal = volume / "meta.db-wal"
    if wal.is_file() and wal.stat().st_size > 0:  # not cleanly unmounted: commits in the WAL
        tmp = tempfile.TemporaryDirectory(prefix="refdecoder-")
        keep.append(tmp)
        shutil.copyfile(db, Path(tmp.name) / "meta.db")
        shutil.copyfile(wal, Path(tmp.name) / "meta.db-wal")
        conn = sqlite3.connect(Path(tmp.name) / "meta.db")
    else:
        uri = "file:" + urllib.parse.quote(str(db.resolve())) + "?immutable=1"
        conn = sqlite3.connect(uri, uri=True)
    conn.execute("PRAGMA query_only = 1")
    try:
        (version,) = conn.execute(
            "SELECT value FROM dbinfo WHERE key = 'schema_version'").fetchone()
    except (sqlite3.DatabaseError, TypeError) as e:
        raise Fatal(f"{db}: not a fusefs metadata database ({e})") from e
    if version not in SCHEMA_VERSIONS:
        raise Fatal(f"{db}: schema version {version} is unknown to this decoder")
    return conn


@dataclass
class Volume:
    path: Path
    volume_id: bytes
    fmt: int
    k: int
    m: int
    chunk_size: int
    segment_size: int
    stores: list[Path | None]  # None: a store this decoder cannot read
    db: sqlite3.Connection
    master: bytes | None = None
    _keep: list[object] = field(default_factory=list)
    vid: int | None = None  # a named version's id; None: the live tree
    root: int = 1  # the top directory's inode

    def rows(self, table: str, columns: str, where: str = "", args: tuple = ()) -> list:
        """`SELECT columns FROM table [WHERE where]` of the live tree, or of the version."""
        if self.vid is None:
            sql = f"SELECT {columns} FROM {table}" + (f" WHERE {where}" if where else "")
            return self.db.execute(sql, args).fetchall()
        sql = f"SELECT {columns} FROM version_{table} WHERE vid = ?" + (
            f" AND {where}" if where else "")
        return self.db.execute(sql, (self.vid, *args)).fetchall()

    def use_version(self, name: str) -> None:
        try:
            found = self.db.execute("SELECT id, root FROM versions WHERE name = ?",
                                    (os.fsencode(name),)).fetchone()
        except sqlite3.OperationalError:
            found = None  # a schema without versions
        if found is None:
            raise Fatal(f"{self.path}: no version named {name!r}")
        self.vid, self.root = found

    @classmethod
    def open(cls, path: Path, key_file: Path | None, stores: list[str] | None,
             need_key: bool = True) -> Volume:
        try:
            conf = tomllib.loads((path / "fusefs.toml").read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise Fatal(f"cannot read {path / 'fusefs.toml'}: {e}") from e
        if conf.get("format") not in FORMATS:
            raise Fatal(f"{path}: on-store format {conf.get('format')} is not one of {FORMATS}")
        try:
            settings = (bytes.fromhex(conf["volume_id"]), conf["format"], int(conf["data_shares"]),
                        int(conf["parity_shares"]), int(conf["chunk_size"]),
                        int(conf["segment_size"]))
            urls, key_check = list(conf["stores"]), str(conf["key_check"])
        except (KeyError, TypeError, ValueError) as e:
            raise Fatal(f"{path / 'fusefs.toml'}: a setting is missing or bad: {e}") from e
        if stores and len(stores) != len(urls):
            raise Fatal(f"{len(stores)} --store given, the volume has {len(urls)} stores")
        roots = [Path(s) for s in stores] if stores else [store_root(u) for u in urls]
        keep: list[object] = []
        vol = cls(path, *settings, roots, open_meta(path, keep), _keep=keep)
        if not need_key:
            return vol
        master = load_key(key_file or path / "fusefs.key")
        check = hkdf(master, vol.volume_id, b"fusefs key check").hex()
        if not hmac.compare_digest(check, key_check):
            raise Fatal("wrong key: it does not match this volume's key_check")
        vol.master = master
        return vol

    @property
    def names_key(self) -> bytes:
        assert self.master is not None
        return hkdf(self.master, self.volume_id, b"fusefs object names")

    def file_key(self, file_id: bytes) -> bytes:
        assert self.master is not None
        return hkdf(self.master, self.volume_id, b"fusefs file key" + file_id)

    def chunk_key(self, file_id: bytes, oid: bytes) -> bytes:
        """The AES-256-GCM key of one chunk version."""
        key = self.file_key(file_id)
        return key if self.fmt == 2 else hkdf(key, self.volume_id, b"fusefs chunk key" + oid)


def store_root(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url[len("file://"):])  # the path is literal: no percent-decoding
    if url.startswith("/"):
        return Path(url)
    print(f"refdecoder: {url}: only local stores are read; its shares count as missing",
          file=sys.stderr)
    return None


def object_name(names_key: bytes, oid: bytes, share: int) -> str:
    return hashlib.blake2b(oid + bytes([share]), key=names_key, digest_size=16).hexdigest()


def pack_name(names_key: bytes, pid: bytes) -> str:
    return hashlib.blake2b(b"pack" + pid, key=names_key, digest_size=16).hexdigest()


def share_paths(root: Path, name: str) -> list[Path]:
    """Where a local store keeps object NAME (and where a flat copy of an S3 prefix would)."""
    return [root / "objects" / name[0] / name, root / "objects" / name]


@dataclass
class Chunk:
    file_id: bytes
    idx: int
    version: int
    oid: bytes
    length: int
    placement: bytes
    digests: bytes
    locs: list[tuple[bytes, int, int] | None] = field(default_factory=list)
    # per share (schema 4): (pack pid, offset, length) when it is a member of a pack


def read_object(root: Path, name: str, where: tuple[int, int] | None) -> bytes | None:
    """Object NAME of a store (bytes `where` = (offset, length) of it); None: missing."""
    for p in share_paths(root, name):
        try:
            with open(p, "rb") as f:
                if where is None:
                    return f.read()
                f.seek(where[0])
                return f.read(where[1])
        except FileNotFoundError:
            continue
    return None


def read_share(vol: Volume, names_key: bytes, c: Chunk, i: int, size: int) -> bytes | str:
    """Share I of chunk C if it is there and matches its digest, else what is wrong with it."""
    if i >= len(c.placement) or c.placement[i] >= len(vol.stores):
        return f"share {i}: no such store"
    root = vol.stores[c.placement[i]]
    if root is None:
        return f"share {i}: store {c.placement[i]} not readable"
    loc = c.locs[i] if i < len(c.locs) else None
    try:
        data = (read_object(root, object_name(names_key, c.oid, i), None) if loc is None
                else read_object(root, pack_name(names_key, loc[0]), (loc[1], loc[2])))
    except OSError as e:
        return f"share {i}: {e.strerror}"
    if data is None:
        return f"share {i}: missing"
    if len(data) != size or xxhash.xxh3_128_digest(data) != c.digests[16 * i : 16 * i + 16]:
        return f"share {i}: checksum mismatch"
    return data


def decrypt(vol: Volume, c: Chunk, ct: bytes) -> bytes:
    aead = AESGCM(vol.chunk_key(c.file_id, c.oid))
    S = vol.segment_size
    out = []
    for j in range(max(1, -(-c.length // S))):
        start = j * (S + TAG)
        seg = ct[start : start + min(S, c.length - j * S) + TAG]
        nonce = (c.oid[:8] if vol.fmt == 2 else bytes(8)) + j.to_bytes(4, "big")
        ad = (vol.volume_id + c.file_id + c.idx.to_bytes(8, "big")
              + c.version.to_bytes(8, "big") + j.to_bytes(4, "big"))
        out.append(aead.decrypt(nonce, seg, ad))
    return b"".join(out)


def read_chunk(vol: Volume, names_key: bytes, c: Chunk) -> bytes:
    """The chunk's plaintext (`length` bytes), rebuilt from parity where needed."""
    k, n = vol.k, vol.k + vol.m
    if len(c.placement) != n or len(c.digests) != 16 * n:
        raise Unrecoverable(f"chunk {c.idx}: malformed row (placement or digests length)")
    ct_len = c.length + TAG * max(1, -(-c.length // vol.segment_size))
    s = max(1, -(-ct_len // k))
    good: dict[int, bytes] = {}
    problems: list[str] = []
    for i in range(n):  # data shares first: a healthy chunk needs no decoding
        share = read_share(vol, names_key, c, i, s)
        if isinstance(share, str):
            problems.append(share)
            continue
        good[i] = share
        # Every K-subset that includes the new share (the others were tried already).
        for subset in itertools.combinations(sorted(good), k):
            if i not in subset:
                continue
            if subset == tuple(range(k)):
                data = [good[j] for j in subset]
            else:
                data = zfec.Decoder(k, n).decode([good[j] for j in subset], list(subset))
            try:
                return decrypt(vol, c, b"".join(data)[:ct_len])
            except InvalidTag:
                problems.append(f"shares {','.join(map(str, subset))}: authentication failed")
    raise Unrecoverable(f"chunk {c.idx}: {len(good)} good shares, {k} needed "
                        f"({'; '.join(problems)})")


# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------


@dataclass
class Entry:
    path: bytes  # relative to the volume's root
    inode: int
    file_id: bytes
    mode: int
    uid: int
    gid: int
    size: int
    rdev: int
    atime_ns: int
    mtime_ns: int
    target: bytes | None


def walk(vol: Volume) -> Iterator[Entry]:
    """Every name reachable from the root (inode 1, or a version's top directory), parents
    before children."""
    children: dict[int, list[tuple[bytes, int]]] = {}
    for parent, name, ino in sorted(vol.rows("dentries", "parent, name, inode")):
        children.setdefault(parent, []).append((bytes(name), ino))
    inodes = {row[0]: row for row in vol.rows(
        "inodes", "id, file_id, mode, uid, gid, size, rdev, atime_ns, mtime_ns, target")}
    todo, seen = [(b"", vol.root)], {vol.root}
    while todo:
        prefix, parent = todo.pop(0)
        for name, ino in children.get(parent, []):
            if name in (b"", b".", b"..") or b"/" in name:
                raise Fatal(f"inode {parent} has an entry named {name!r}: metadata damaged")
            path = prefix + name
            _, fid, mode, uid, gid, size, rdev, at, mt, target = inodes[ino]
            if isinstance(target, str):
                target = target.encode()
            yield Entry(path, ino, bytes(fid), mode, uid, gid, size, rdev, at, mt, target)
            if stat.S_ISDIR(mode) and ino not in seen:
                seen.add(ino)
                todo.append((path + b"/", ino))


def pack_locs(vol: Volume, oid: bytes) -> list[tuple[bytes, int, int] | None]:
    """Where the packed shares of chunk version OID are (schema 4: table `packed`, 16 bytes
    per share: u64 BE packs.id, 0 for a share that is an object of its own, u32 BE offset,
    u32 BE length)."""
    try:
        row = vol.db.execute("SELECT locs FROM packed WHERE oid = ?", (oid,)).fetchone()
    except sqlite3.OperationalError:
        return []  # a schema before packs
    if row is None:
        return []
    out: list[tuple[bytes, int, int] | None] = []
    blob = bytes(row[0])
    for at in range(0, len(blob), 16):
        pack = int.from_bytes(blob[at : at + 8], "big")
        found = vol.db.execute("SELECT pid FROM packs WHERE id = ?", (pack,)).fetchone()
        out.append(None if pack == 0 else (  # (a pack without a row: read as missing)
            bytes(found[0]) if found else b"", int.from_bytes(blob[at + 8 : at + 12], "big"),
            int.from_bytes(blob[at + 12 : at + 16], "big")))
    return out


def chunks_of(vol: Volume, e: Entry) -> Iterator[Chunk]:
    for idx, version, oid, length, placement, digests in sorted(vol.rows(
            "chunks", "idx, version, oid, length, placement, digests", "inode = ?",
            (e.inode,))):
        yield Chunk(e.file_id, idx, version, bytes(oid), length, bytes(placement),
                    bytes(digests), pack_locs(vol, bytes(oid)))


def write_file(vol: Volume, names_key: bytes, e: Entry, dest: Path) -> None:
    """The file's `size` bytes: each chunk's plaintext at idx * chunk_size, zeros elsewhere."""
    with open(dest, "wb") as f:
        f.truncate(e.size)  # holes (missing rows, short chunks) read as zeros
        for c in chunks_of(vol, e):
            start = c.idx * vol.chunk_size
            if start >= e.size:
                continue
            f.seek(start)
            f.write(read_chunk(vol, names_key, c)[: e.size - start])


def set_meta(vol: Volume, e: Entry, dest: Path) -> None:
    link = stat.S_ISLNK(e.mode)
    if os.geteuid() == 0:
        os.chown(dest, e.uid, e.gid, follow_symlinks=False)
    if not link:
        os.chmod(dest, stat.S_IMODE(e.mode))
        for name, value in vol.rows("xattrs", "name, value", "inode = ?", (e.inode,)):
            name = name.encode() if isinstance(name, str) else bytes(name)
            try:
                os.setxattr(dest, name, bytes(value))
            except OSError as err:
                print(f"refdecoder: {os.fsdecode(e.path)}: xattr {os.fsdecode(name)} not set:"
                      f" {err.strerror}", file=sys.stderr)
    os.utime(dest, ns=(e.atime_ns, e.mtime_ns), follow_symlinks=False)


def extract(vol: Volume, dest: Path) -> list[str]:
    """Extract the volume under DEST; return the error lines of files that were not written."""
    names_key = vol.names_key
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise Fatal(f"{dest} is not empty")
    errors: list[str] = []
    written: dict[int, Path | str] = {}  # inode -> its first path, or its error
    dirs: list[tuple[Entry, Path]] = []
    for e in walk(vol):
        p = dest / os.fsdecode(e.path)
        if stat.S_ISDIR(e.mode):
            p.mkdir()
            dirs.append((e, p))
            continue
        first = written.get(e.inode)
        if isinstance(first, Path):
            os.link(first, p)
            continue
        if isinstance(first, str):
            errors.append(f"{os.fsdecode(e.path)}: {first}")
            continue
        try:
            if stat.S_ISREG(e.mode):
                write_file(vol, names_key, e, p)
            elif stat.S_ISLNK(e.mode):
                os.symlink(e.target or b"", p)
            else:  # FIFO, socket, device (rdev as os.makedev encodes it)
                try:
                    os.mknod(p, stat.S_IFMT(e.mode) | 0o600, e.rdev)
                except PermissionError:
                    print(f"refdecoder: {os.fsdecode(e.path)}: not extracted (creating a device"
                          " needs root)", file=sys.stderr)
                    continue
        except Unrecoverable as err:
            p.unlink(missing_ok=True)  # never leave wrong bytes behind
            written[e.inode] = f"unrecoverable: {err}"
            errors.append(f"{os.fsdecode(e.path)}: {written[e.inode]}")
            continue
        set_meta(vol, e, p)
        written[e.inode] = p
    for e, p in reversed(dirs):  # deepest first, after their contents
        set_meta(vol, e, p)
    return errors


def list_tree(vol: Volume) -> Iterator[str]:
    for e in walk(vol):
        kind = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
                stat.S_IFSOCK: "s", stat.S_IFCHR: "c", stat.S_IFBLK: "b"}.get(
            stat.S_IFMT(e.mode), "?")
        line = f"{kind}\t{stat.S_IMODE(e.mode):04o}\t{e.inode}\t{e.size}\t" + os.fsdecode(e.path)
        yield line + (" -> " + os.fsdecode(e.target or b"") if kind == "l" else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="refdecoder", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, what in (("list", "list every path: type, mode, inode, size, path (tab-separated)"),
                       ("extract", "extract every file into DEST (must be empty)")):
        p = sub.add_parser(name, help=what)
        p.add_argument("volume", type=Path, metavar="VOLUME")
        if name == "extract":
            p.add_argument("dest", type=Path, metavar="DEST")
        p.add_argument("--key-file", type=Path, help="master key (default VOLUME/fusefs.key)")
        p.add_argument("--store", action="append", metavar="PATH",
                       help="store directory replacing the config's URL (repeat, in order)")
        p.add_argument("--version", metavar="NAME", help="a named version, not the live tree")
    args = ap.parse_args(argv)
    try:
        vol = Volume.open(args.volume, args.key_file, args.store,
                          need_key=args.command == "extract")
        try:
            if args.version is not None:
                vol.use_version(args.version)
            if args.command == "list":
                for line in list_tree(vol):
                    print(line)
                return 0
            errors = extract(vol, args.dest)
        finally:
            vol.db.close()
    except (Fatal, OSError, sqlite3.Error) as e:
        print(f"refdecoder: {e}", file=sys.stderr)
        return 1
    for line in errors:
        print(f"refdecoder: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
