"""The fixed facts of a volume that every data-path piece needs: its geometry (K, M,
segment size, write quorum), its keys and its stores, and the names derived from them.

Plain data, no behaviour beyond naming: who holds share i of a chunk version and under which
name, what the associated data binds, how big its shares are. Readers, writers, healing,
scrub and garbage collection share one `Layout` instead of reaching into each other.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fusefs.codec import chunk as chunkcodec
from fusefs.codec import erasure
from fusefs.codec.keys import VolumeKeys
from fusefs.config import VolumeConfig
from fusefs.meta.repo import ChunkRow, PackLoc
from fusefs.stores.base import Store

ZERO_NONCE_ID = bytes(16)


class PackCache:
    """Whole packs read once, so that the members a scrub verifies come from one read per
    pack instead of a ranged read each (`Scrubber`). Bounded: the least recently filled
    pack goes first; a member of a pack not held here is read from its store as usual.
    Worker threads read it while the event loop fills it: a lock guards the dict."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._packs: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[int, bytes]) -> bool:
        return key in self._packs

    def put(self, si: int, pid: bytes, data: bytes) -> None:
        with self._lock:
            self._packs[(si, pid)] = data
            self._size += len(data)
            while self._size > self.limit and len(self._packs) > 1:
                self._size -= len(self._packs.popitem(last=False)[1])

    def member(self, si: int, loc: PackLoc) -> memoryview | None:
        """The bytes of a member, or None: not held (read it from its store). A member
        that ends past the bytes held is not held either: the pack may have grown since it
        was read (the open pack of a mounted volume takes appends while a scrub runs, and
        the members of files written meanwhile were taken for missing on every store:
        unrecoverable). A truncated pack is found by the ranged read just the same."""
        with self._lock:
            data = self._packs.get((si, loc.pid))
        if data is None or loc.offset + loc.length > len(data):
            return None
        return memoryview(data)[loc.offset : loc.offset + loc.length]


@dataclass(frozen=True)
class Layout:
    config: VolumeConfig
    keys: VolumeKeys
    stores: list[Store]
    k: int = field(init=False)
    m: int = field(init=False)
    n: int = field(init=False)  # shares per chunk (k + m); may be fewer than the stores
    seg: int = field(init=False)
    quorum: int = field(init=False)  # stores that must take a share for a write to succeed
    volume_id: bytes = field(init=False)
    # Packs a scrub read whole (None: none); readers take members from it (`shareio`).
    pack_cache: PackCache | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        c = self.config
        for name, value in (("k", c.data_shares), ("m", c.parity_shares), ("n", c.n_shares),
                            ("seg", c.segment_size), ("quorum", c.quorum),
                            ("volume_id", c.volume_id_bytes)):
            object.__setattr__(self, name, value)

    def name(self, oid: bytes, share: int) -> str:
        """The opaque object name of share `share` of chunk version `oid` (when it is an
        object of its own: see `where`)."""
        return self.keys.object_name(oid, share)

    def pack_name(self, pid: bytes) -> str:
        """The opaque object name of a pack (format 4)."""
        return self.keys.pack_name(pid)

    def where(self, row: ChunkRow, share: int) -> tuple[str, PackLoc | None]:
        """The object holding share `share` of a chunk version, and the share's place in it
        when that object is a pack (None: the object is the share)."""
        loc = row.loc(share)
        if loc is None:
            return self.keys.object_name(row.oid, share), None
        return self.keys.pack_name(loc.pid), loc

    def obj(self, row: ChunkRow, share: int) -> str:
        """How events name a share: its object, or "PACK@OFFSET+LENGTH" inside a pack."""
        name, loc = self.where(row, share)
        return name if loc is None else f"{name}@{loc.offset}+{loc.length}"

    def cached_member(self, si: int, loc: PackLoc) -> memoryview | None:
        """A packed share from a pack a scrub read whole, or None (read it from its store)."""
        cache = self.pack_cache
        return None if cache is None else cache.member(si, loc)

    def set_pack_cache(self, cache: PackCache | None) -> None:
        object.__setattr__(self, "pack_cache", cache)

    def packs_here(self, length: int) -> bool:
        """Whether the shares of a chunk of `length` plaintext bytes go into packs."""
        return self.config.packs and self.share_size(length) < self.config.pack_below

    def store_of(self, row: ChunkRow, share: int) -> Store:
        return self.stores[row.placement[share]]

    def url_of(self, row: ChunkRow, share: int) -> str:
        return self.stores[row.placement[share]].url

    def cid(self, file_id: bytes, row: ChunkRow) -> chunkcodec.ChunkId:
        """What a chunk version's associated data binds."""
        return chunkcodec.ChunkId(self.volume_id, file_id, row.idx, row.version)

    def cipher(self, file_id: bytes, oid: bytes) -> tuple[AESGCM, bytes]:
        """The key and nonce id that encrypt chunk version `oid` of a file (`codec.chunk`):
        format 2, the file key and the oid; format 3, the version's own key and zeros."""
        if self.config.format >= 3:
            return self.keys.chunk_aead(file_id, oid), ZERO_NONCE_ID
        return self.keys.file_aead(file_id), oid

    def sealed_length(self, plain_len: int) -> int:
        return chunkcodec.sealed_length(plain_len, self.seg)

    def share_size(self, plain_len: int) -> int:
        """Bytes in each share of a chunk of `plain_len` plaintext bytes."""
        return erasure.share_size(self.sealed_length(plain_len), self.k)
