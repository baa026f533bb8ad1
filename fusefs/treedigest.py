"""Fingerprints of the live tree or of a named version, from the metadata (daemon side).

The definition is `codec.digest`'s. A file's digest follows from the content digests its
chunk rows record, so a fingerprint reads no data: the rows of the whole tree are loaded in
two queries and hashed in a worker thread (its own read-only connection, in one read
transaction: a consistent instant while writes go on). A chunk is read, through the
verified read path, only when its row cannot tell: written before digests were kept (its
digest is then recorded, so the next fingerprint is fast), or shorter than the part of the
file it covers (a sparse file: the zeros after it change its digest), or, on a volume whose
chunk size is not a power of two, any file of more than one chunk. `verify` reads every
chunk and compares its bytes with what the metadata records.

What it tells about files open for writing: what was last committed (closed or flushed).
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from fusefs.codec import digest
from fusefs.errors import ChunkUnrecoverable, FusefsError, StoreError
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.meta.versions import TreeRows, VersionRepo
from fusefs.volume import Volume
from fusefs.workers import run_cpu

READS = 8  # chunks read at once (verify, missing digests)

Progress = Callable[[int, int], None]  # (chunks read, chunks to read)
Need = tuple[int, bytes, ChunkRow | None, int]  # (inode, file id, row or None: hole, span)


@dataclass
class TreeDigest:
    digest: bytes
    files: int = 0
    directories: int = 0
    bytes: int = 0
    chunks_read: int = 0
    mismatches: list[str] = field(default_factory=list)  # verify: what differs, per chunk

    def as_dict(self) -> dict:
        return {"fingerprint": self.digest.hex(), "files": self.files,
                "directories": self.directories, "bytes": self.bytes,
                "chunks_read": self.chunks_read, "mismatches": self.mismatches}


@dataclass
class _Tree:
    """One tree's rows, indexed: what the hashing pass walks."""

    rows: TreeRows
    top: int
    top_mode: int
    top_size: int
    children: dict[int, list[tuple[bytes, int, int, int, int, bytes | None, bytes]]] = \
        field(default_factory=dict)
    names: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # inode -> a name
    files: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # inode -> size, id

    def __post_init__(self) -> None:
        for parent, name, ino, mode, size, rdev, target, file_id in self.rows.entries:
            self.children.setdefault(parent, []).append((name, ino, mode, size, rdev, target,
                                                         file_id))
            self.names.setdefault(ino, (parent, name))
            if stat.S_ISREG(mode):
                self.files[ino] = (size, file_id)

    def path(self, ino: int) -> str:
        parts = []
        while ino != self.top and ino in self.names and len(parts) < 4096:
            ino, name = self.names[ino]
            parts.append(name.decode(errors="replace"))
        return "/".join(reversed(parts)) or "."


def _file_content(tree: _Tree, ino: int, file_id: bytes, size: int, cs: int,
                  known: dict[tuple[int, int], bytes], needs: list[Need]) -> bytes | None:
    """content() of a file from its chunk rows; None when chunks must be read first (added
    to `needs`; `known` holds what reads found: (inode, idx) -> span content, idx -1 for
    a whole file read at once)."""
    n = -(-size // cs)
    if n == 0:
        return digest.content(b"")
    rows = {r.idx: r for r in tree.rows.chunks.get(ino, [])}
    if n > 1 and not digest.combinable(cs):
        if (ino, -1) in known:
            return known[(ino, -1)]
        needs.append((ino, file_id, None, size))
        return None
    roots: list[bytes] = []
    for j in range(n):
        span = min(cs, size - j * cs)
        row = rows.get(j)
        found = known.get((ino, j))
        if found is not None:
            roots.append(found)
        elif row is None:
            roots.append(digest.zeros(span))
        elif row.length == span and row.content is not None:
            roots.append(row.content)
        else:
            needs.append((ino, file_id, row, span))
    return digest.combine(roots) if len(roots) == n else None


def _hash_tree(tree: _Tree, cs: int, known: dict[tuple[int, int], bytes],
               needs: list[Need]) -> TreeDigest | None:
    """The tree's digest, or None when `needs` lists chunks to read first."""
    out = TreeDigest(b"")
    files: dict[int, bytes] = {}  # hard links: one digest per inode

    def file_of(ino: int, file_id: bytes, size: int) -> bytes | None:
        if ino not in files:
            found = _file_content(tree, ino, file_id, size, cs, known, needs)
            if found is None:
                return None
            files[ino] = digest.file_digest(size, found)
        return files[ino]

    if not stat.S_ISDIR(tree.top_mode):  # one file
        found = file_of(tree.top, tree.files[tree.top][1], tree.top_size)
        if found is None:
            return None
        out.digest, out.files, out.bytes = found, 1, tree.top_size
        return out
    order = [tree.top]
    for d in order:  # breadth first: every directory after its parent
        order += [c[1] for c in tree.children.get(d, []) if stat.S_ISDIR(c[2])]
    dirs: dict[int, bytes] = {}
    missing = False
    for d in reversed(order):  # children before their parents
        entries = []
        for name, ino, mode, size, rdev, target, file_id in tree.children.get(d, []):
            if stat.S_ISDIR(mode):
                entries.append((name, digest.DIR, dirs.get(ino, b"")))
            elif stat.S_ISREG(mode):
                found = file_of(ino, file_id, size)
                missing = missing or found is None
                entries.append((name, digest.FILE, found or b""))
                out.files += 1
                out.bytes += size
            else:
                entries.append((name, *digest.special_entry(mode, rdev, target)))
        dirs[d] = digest.tree_digest(entries)
        out.directories += 1
    if missing:
        return None
    out.digest = dirs[tree.top]
    return out


def load_tree(db_path: Path, top: int, vid: int | None) -> _Tree:
    """The rows under inode `top` (a directory or a file) of the live tree or a version,
    read in one read transaction of a connection of its own (runs in a worker thread)."""
    meta = MetaRepo(db_path, read_only=True)
    try:
        meta.db.execute("BEGIN")
        versions = VersionRepo(meta)
        row = meta.get_inode(top) if vid is None else versions.inode(vid, top)
        if row is None:
            raise FusefsError("it was deleted meanwhile")
        if stat.S_ISDIR(row.mode):
            rows = versions.subtree(top, vid)
        else:  # one file: a tree of one entry (under no directory)
            chunks = meta.chunks_of(top) if vid is None else versions.chunks_of(vid, top)
            rows = TreeRows([(-1, b"", top, row.mode, row.size, row.rdev, row.target,
                              row.file_id)], {top: chunks})
        meta.db.execute("COMMIT")
    finally:
        meta.close()
    return _Tree(rows, top, row.mode, row.size)


class TreeDigester:
    """Fingerprints over one mounted volume's metadata."""

    def __init__(self, meta: MetaRepo, volume: Volume) -> None:
        self.meta = meta
        self.volume = volume
        self.cs = volume.config.chunk_size

    async def digest(self, top: int, vid: int | None = None, *, verify: bool = False,
                     progress: Progress | None = None) -> TreeDigest:
        """The fingerprint of the tree (or file) at inode `top` of the live tree (vid None)
        or of version `vid`. FusefsError when a chunk it had to read is unreadable."""
        self.meta.commit_pending()  # (read through a connection of its own)
        tree = await trio.to_thread.run_sync(load_tree, self.meta.path, top, vid)
        known: dict[tuple[int, int], bytes] = {}
        mismatches: list[str] = []
        if verify:
            await self._read(tree, [(ino, tree.files[ino][1], row, 0) for ino, rows in
                                    tree.rows.chunks.items() for row in rows
                                    if ino in tree.files], known, mismatches, progress)
        for _ in range(2):  # what the rows tell; then again with what had to be read
            needs: list[Need] = []
            result = await trio.to_thread.run_sync(_hash_tree, tree, self.cs, known, needs)
            if result is not None:
                result.chunks_read = len(known)
                result.mismatches = mismatches
                return result
            await self._read(tree, needs, known, mismatches, progress)
        raise FusefsError("internal error: chunks still unread after reading them")

    async def _read(self, tree: _Tree, needs: list[Need], known: dict[tuple[int, int], bytes],
                    mismatches: list[str], progress: Progress | None) -> None:
        """Read the chunks (or whole files) `needs` lists through the verified read path;
        record what they hold in `known`, the digests the metadata lacked, and (verify:
        span 0) every chunk whose recorded digest does not match its bytes."""
        limit = trio.Semaphore(READS)
        done = 0
        cs = self.cs

        async def chunk(ino: int, file_id: bytes, row: ChunkRow) -> bytes:
            try:
                return await self.volume.read_chunk(ino, file_id, row)
            except (ChunkUnrecoverable, StoreError) as e:
                if self.meta.chunk_by_oid(ino, row.idx, row.oid) is None:
                    raise FusefsError(f"{tree.path(ino)} changed while it was being "
                                      "fingerprinted: run it again") from None
                raise FusefsError(f"{tree.path(ino)}: chunk {row.idx} cannot be read: "
                                  f"{e}") from None

        async def one(ino: int, file_id: bytes, row: ChunkRow | None, span: int) -> None:
            nonlocal done
            async with limit:
                if row is None:  # a whole file: the chunk size is not a power of two
                    hasher = digest.ContentHasher()
                    rows = {r.idx: r for r in tree.rows.chunks.get(ino, [])}
                    for j in range(-(-span // cs)):
                        part = min(cs, span - j * cs)
                        data = await chunk(ino, file_id, rows[j]) if j in rows else b""
                        await run_cpu(part, hasher.update, _padded(data, part))
                    known[(ino, -1)] = hasher.digest()
                else:
                    data = await chunk(ino, file_id, row)
                    await self._learn(tree, ino, row, data, span, known, mismatches)
            done += 1
            if progress is not None:
                progress(done, len(needs))

        async with trio.open_nursery() as nursery:
            for need in needs:
                nursery.start_soon(one, *need)

    async def _learn(self, tree: _Tree, ino: int, row: ChunkRow, data: bytes, span: int,
                     known: dict[tuple[int, int], bytes], mismatches: list[str]) -> None:
        """What one chunk read tells: its content digest (recorded when the metadata
        lacked it; compared with the record when verifying) and that of its span."""
        own = await run_cpu(len(data), digest.content, data)
        if row.content is None:
            if self.volume.healer.writes:  # a read-only mount changes no metadata
                self.meta.set_content(row.oid, own)
        elif own != row.content:
            mismatches.append(f"{tree.path(ino)}: chunk {row.idx}: the metadata records "
                              f"content {row.content.hex()[:16]}..., its bytes are "
                              f"{own.hex()[:16]}...")
        span = span or max(0, min(self.cs, tree.files[ino][0] - row.idx * self.cs))
        known[(ino, row.idx)] = own if span == len(data) else await run_cpu(
            span, digest.content, _padded(data, span))


def _padded(data: bytes, span: int) -> bytes:
    """The `span` bytes a chunk's part of its file reads as (zeros after its row)."""
    return data[:span] if len(data) >= span else data + bytes(span - len(data))

