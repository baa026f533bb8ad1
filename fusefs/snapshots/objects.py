"""Metadata snapshot objects: how the volume's metadata lives in its own stores.

Three kinds, all unreadable without the key:
- **blocks**: the metadata database cut into BLOCK_SIZE pieces, each sealed and erasure-coded
  exactly like a chunk of file data (K+M shares over the stores), as chunk 0 of a virtual
  file `META_FILE_ID`. A block's oid is a keyed hash of its content, so an unchanged block
  has the same name in every snapshot and is uploaded once.
- **superblocks**: one per published snapshot (epoch, sequence number): the volume's layout
  (its whole config), the list of blocks, the snapshots still retained, sealed and coded the
  same way as chunk 1 of the virtual file, version = sequence number, oid = keyed hash of
  (epoch, sequence).
- **the head**: a small object under the fixed name `fusefs-head` in every store, AES-GCM
  sealed, naming the newest superblock (its epoch, sequence, length, placement, digests). A
  new host finds the newest snapshot from the heads; stores that disagree are reported.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass

import trio
from cryptography.exceptions import InvalidTag

from fusefs.chunkread import ChunkReader
from fusefs.chunkwrite import ChunkWriter
from fusefs.codec.keys import VolumeKeys
from fusefs.errors import ChunkUnrecoverable, FusefsError, NoSuchObject, StoreError
from fusefs.layout import Layout
from fusefs.meta.repo import ChunkRow
from fusefs.stores.base import HEAD, Store

META_FILE_ID = b"fusefs-metadata\x00"  # the virtual file of snapshot objects (AD, keys)
BLOCK_SIZE = 64 << 10  # a small change re-uploads a few of these (SQLite pages are 4 KiB)
KIND_BLOCK, KIND_SUPER = 0, 1  # the "chunk index" of each kind (bound into the AD)
SNAPSHOT_FORMAT = 1


class SnapshotError(FusefsError):
    """No usable metadata snapshot (missing, damaged, or older than one already seen)."""


@dataclass(frozen=True)
class Ref:
    """Where a sealed snapshot object is: what a ChunkRow says of a chunk."""

    oid: bytes
    length: int
    placement: bytes
    digests: bytes

    def row(self, kind: int, version: int) -> ChunkRow:
        return ChunkRow(kind, version, self.oid, self.length, self.placement, self.digests)

    def as_list(self) -> list:
        return [self.oid.hex(), self.length, self.placement.hex(), self.digests.hex()]

    @classmethod
    def from_list(cls, v: list) -> Ref:
        return cls(bytes.fromhex(v[0]), int(v[1]), bytes.fromhex(v[2]), bytes.fromhex(v[3]))


@dataclass(frozen=True)
class Head:
    epoch: int
    seq: int
    time_ns: int
    writer: str  # hex id of the writing volume directory
    superblock: Ref
    config: dict  # the volume's config (what a new host needs to read the superblock)

    @property
    def order(self) -> tuple[int, int]:
        return self.epoch, self.seq


def block_oid(keys: VolumeKeys, data: bytes | memoryview) -> bytes:
    return keys.snapshot_oid(b"block\0", bytes(data))


def superblock_oid(keys: VolumeKeys, epoch: int, seq: int) -> bytes:
    return keys.snapshot_oid(b"superblock\0", epoch.to_bytes(8, "big"), seq.to_bytes(8, "big"))


# -- sealed objects ---------------------------------------------------------------------
async def put_object(writer: ChunkWriter, kind: int, version: int, oid: bytes,
                     data: bytes | memoryview) -> Ref:
    """Seal and store one snapshot object (at least the write quorum of its shares)."""
    row, _ = await writer.write(META_FILE_ID, kind, data, version - 1, oid=oid)
    return Ref(row.oid, row.length, row.placement, row.digests)


async def get_object(reader: ChunkReader, kind: int, version: int, ref: Ref) -> bytes:
    """Fetch, verify and open one snapshot object; SnapshotError when it cannot be read."""
    try:
        got = await reader.read(0, META_FILE_ID, ref.row(kind, version), quiet=True)
    except ChunkUnrecoverable as e:
        raise SnapshotError(f"snapshot object {ref.oid.hex()} cannot be read: {e}") from None
    return bytes(got.plain)


def encode_superblock(sb: dict) -> bytes:
    return zlib.compress(json.dumps(sb, separators=(",", ":")).encode(), 1)


def decode_superblock(data: bytes) -> dict:
    try:
        sb = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError) as e:
        raise SnapshotError(f"superblock is unreadable: {e}") from None
    if sb.get("fusefs_snapshot") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"superblock format {sb.get('fusefs_snapshot')} is unknown")
    return sb


# -- the head ---------------------------------------------------------------------------
def seal_head(keys: VolumeKeys, volume_id: bytes, head: Head) -> bytes:
    plain = json.dumps({"epoch": head.epoch, "seq": head.seq, "time_ns": head.time_ns,
                        "writer": head.writer, "superblock": head.superblock.as_list(),
                        "config": head.config})
    nonce = os.urandom(12)
    return nonce + keys.head_aead.encrypt(nonce, plain.encode(), b"fusefs-head" + volume_id)


def open_head(keys: VolumeKeys, volume_id: bytes, raw: bytes) -> Head:
    """The head a store holds; SnapshotError when it is not an authentic head of ours."""
    try:
        plain = keys.head_aead.decrypt(raw[:12], raw[12:], b"fusefs-head" + volume_id)
        h = json.loads(plain)
        return Head(int(h["epoch"]), int(h["seq"]), int(h["time_ns"]), str(h["writer"]),
                    Ref.from_list(h["superblock"]), dict(h["config"]))
    except (InvalidTag, ValueError, KeyError, TypeError, IndexError) as e:
        raise SnapshotError(f"not an authentic head of this volume ({type(e).__name__})"
                            ) from None


async def read_heads(lay: Layout) -> list[Head | str | None]:
    """Each store's head: a Head, None (no head yet), or why it cannot be used."""
    out: list[Head | str | None] = [None] * len(lay.stores)

    async def one(si: int, store: Store) -> None:
        try:
            with trio.fail_after(15):
                raw = await store.get(HEAD)
            out[si] = open_head(lay.keys, lay.volume_id, raw)
        except NoSuchObject:
            out[si] = None
        except (StoreError, SnapshotError) as e:
            out[si] = str(e)
        except trio.TooSlowError:
            out[si] = "no answer within 15 s"

    async with trio.open_nursery() as nursery:
        for si, store in enumerate(lay.stores):
            nursery.start_soon(one, si, store)
    return out


def newest(heads: list[Head | str | None]) -> Head | None:
    found = [h for h in heads if isinstance(h, Head)]
    return max(found, key=lambda h: h.order) if found else None
