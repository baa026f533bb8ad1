"""Content digests on plaintext: what a fingerprint of a file or a directory tree is.

Defined so that anyone can recompute it from the bytes alone, anywhere (docs/format.md,
"Fingerprints", has the exact definition and a worked example):

  H(x)        = BLAKE3(x), 32 bytes
  leaf(b)     = BLAKE3 derive_key mode, context LEAF_CONTEXT, over b
                                             b: one LEAF (64 KiB) piece, the last one shorter
  node(l, r)  = H(0x01 ‖ l ‖ r)
  root(h)     = h[0] if len(h) == 1, else node(root(h[:p]), root(h[p:])),
                p = the largest power of two < len(h)      (a left-complete binary tree)
  content(d)  = root(leaf of each piece of d); the empty d has one empty piece
  file        = H(0x02 ‖ u64be(size) ‖ content(file bytes))
  tree        = H(0x03 ‖ entry ‖ entry ...), entries sorted by name (bytes), each
                u32be(len(name)) ‖ name ‖ type ‖ u32be(len(payload)) ‖ payload

Why a tree of 64 KiB leaves rather than one hash per chunk: every aligned run of 2^k leaves
is a node of that tree, so with a chunk size that is a power of two (>= 64 KiB) the content
digest of a chunk is a node of its file's tree, and a file's digest follows from its chunks'
digests alone (`combine`), whatever the volume's chunk size. A fingerprint computed on a
plain disk before ingest then equals the one fusefs reports from its metadata.

BLAKE3 rather than SHA-256: measured here, 9.2 GB/s against 1.9 GB/s (SHA-NI) for a 4 MiB
chunk on one core (8.3 GB/s in 64 KiB leaves), so the digest costs the write path a tenth of
what SHA-256 would. Leaves are separated from the other kinds of input by BLAKE3's own
derive_key mode rather than by a prefix byte: a one-byte prefix shifts the leaf off BLAKE3's
1 KiB chunk grid, which halves its SIMD throughput (0.87 against 0.46 ms per 4 MiB chunk).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable
from functools import lru_cache

from blake3 import blake3

LEAF = 64 << 10  # bytes per leaf; the smallest chunk size (config.MIN_CHUNK) is one leaf
DIGEST_SIZE = 32
LEAF_CONTEXT = "fusefs 2026-11-29 fingerprint leaf"  # BLAKE3 derive_key context of leaves
_NODE, _FILE, _TREE = b"\x01", b"\x02", b"\x03"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# Entry types of a tree digest (one ASCII byte) and what their payload is.
FILE, DIR, SYMLINK, FIFO, SOCKET, CHAR, BLOCK = b"f", b"d", b"l", b"p", b"s", b"c", b"b"


def leaf(piece: bytes | memoryview) -> bytes:
    return blake3(piece, derive_key_context=LEAF_CONTEXT).digest()


def node(left: bytes, right: bytes) -> bytes:
    return blake3(_NODE + left + right).digest()


def root(hashes: list[bytes]) -> bytes:
    """The root of the left-complete binary tree over `hashes` (at least one)."""
    n = len(hashes)
    if n == 1:
        return hashes[0]
    p = 1 << ((n - 1).bit_length() - 1)  # the largest power of two < n
    return node(root(hashes[:p]), root(hashes[p:]))


def leaves(data: bytes | bytearray | memoryview) -> list[bytes]:
    view = memoryview(data)
    if not len(view):
        return [leaf(b"")]
    return [leaf(view[i : i + LEAF]) for i in range(0, len(view), LEAF)]


def content(data: bytes | bytearray | memoryview) -> bytes:
    """The content digest of `data`: what the metadata records for every chunk."""
    return root(leaves(data))


@lru_cache(maxsize=64)
def zeros(length: int) -> bytes:
    """content() of `length` zero bytes (a hole), without hashing them all: the subtree of
    2^k full zero leaves is the same everywhere."""
    full, rest = divmod(length, LEAF)
    if length == 0:
        return leaf(b"")
    if rest and not full:
        return leaf(bytes(rest))
    if not rest and full & (full - 1) == 0:
        return _zero_subtree(full)
    p = 1 << ((_leaf_count(length) - 1).bit_length() - 1)
    return node(_zero_subtree(p), zeros(length - p * LEAF))


@lru_cache(maxsize=64)
def _zero_subtree(count: int) -> bytes:
    """Root over `count` (a power of two) full zero leaves."""
    if count == 1:
        return leaf(bytes(LEAF))
    half = _zero_subtree(count // 2)
    return node(half, half)


def _leaf_count(length: int) -> int:
    return max(1, -(-length // LEAF))


def combinable(chunk_size: int) -> bool:
    """Whether a file's content digest follows from its chunks' digests (`combine`)."""
    return chunk_size >= LEAF and chunk_size & (chunk_size - 1) == 0


def combine(chunk_digests: list[bytes]) -> bytes:
    """content() of a file from the content digests of its chunks, in order, each chunk
    `chunk_size` bytes (a power of two >= LEAF: `combinable`) but the last one."""
    return root(chunk_digests)


def file_digest(size: int, content_digest: bytes) -> bytes:
    return blake3(_FILE + _U64.pack(size) + content_digest).digest()


def tree_digest(entries: Iterable[tuple[bytes, bytes, bytes]]) -> bytes:
    """The digest of a directory from its entries (name, type, payload), in any order."""
    h = blake3(_TREE)
    for name, kind, payload in sorted(entries):
        h.update(_U32.pack(len(name)) + name + kind + _U32.pack(len(payload)) + payload)
    return h.digest()


def special_entry(mode: int, rdev: int, target: bytes | None) -> tuple[bytes, bytes]:
    """(type, payload) of an entry that is neither a file nor a directory."""
    if stat.S_ISLNK(mode):
        return SYMLINK, target or b""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = CHAR if stat.S_ISCHR(mode) else BLOCK
        return kind, _U32.pack(os.major(rdev)) + _U32.pack(os.minor(rdev))
    return (FIFO if stat.S_ISFIFO(mode) else SOCKET), b""


class ContentHasher:
    """content() of bytes fed in pieces of any size (a file read from a disk)."""

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._pending = bytearray()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.size += len(view)
        if self._pending:
            take = min(LEAF - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == LEAF:
                self._leaves.append(leaf(self._pending))
                self._pending = bytearray()
        whole = len(view) - len(view) % LEAF
        self._leaves += [leaf(view[i : i + LEAF]) for i in range(0, whole, LEAF)]
        self._pending += view[whole:]

    def digest(self) -> bytes:
        if self._pending or not self._leaves:
            return root([*self._leaves, leaf(self._pending)])
        return root(self._leaves)
