"""Reading a published snapshot back: the superblock a head names, and the metadata database
assembled from its blocks (reusing the blocks of a local copy that are unchanged).

Every object is verified as file data is (checksums, AES-GCM, any K of the K+M shares), and
each block is checked against its name (a keyed hash of its content), so an assembled
database is exactly the one the writer published.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from fusefs.chunkread import ChunkReader
from fusefs.codec.keys import VolumeKeys
from fusefs.snapshots.objects import (
    BLOCK_SIZE,
    KIND_BLOCK,
    KIND_SUPER,
    Head,
    Ref,
    SnapshotError,
    block_oid,
    decode_superblock,
    get_object,
)

DOWNLOADS = 8  # blocks fetched at once


async def fetch_superblock(reader: ChunkReader, volume_id: str, head: Head) -> dict:
    """The superblock a head names, checked to be the one it says it is."""
    sb = decode_superblock(await get_object(reader, KIND_SUPER, head.seq, head.superblock))
    if (sb.get("volume"), sb.get("epoch"), sb.get("seq")) != (volume_id, head.epoch, head.seq):
        raise SnapshotError(f"superblock of snapshot {head.seq} names another snapshot")
    return sb


def _local_blocks(keys: VolumeKeys, path: Path | None) -> dict[bytes, int]:
    """oid -> offset of each block of a local database copy (what need not be fetched)."""
    out: dict[bytes, int] = {}
    if path is None or not path.exists():
        return out
    with open(path, "rb") as f:
        at = 0
        while block := f.read(BLOCK_SIZE):
            out.setdefault(block_oid(keys, block), at)
            at += len(block)
    return out


async def fetch_database(reader: ChunkReader, keys: VolumeKeys, sb: dict, dest: Path,
                         reuse: Path | None = None) -> int:
    """Assemble the snapshot's metadata database at `dest`; return the bytes fetched."""
    blocks = [Ref.from_list(b) for b in sb["db"]["blocks"]]
    size = int(sb["db"]["size"])
    local = await trio.to_thread.run_sync(_local_blocks, keys, reuse)
    tmp = dest.with_name(dest.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fetched = 0
    limit = trio.Semaphore(DOWNLOADS)
    old = open(reuse, "rb") if local else None  # noqa: SIM115 - closed below

    async def one(j: int, ref: Ref) -> None:
        nonlocal fetched
        if ref.oid in local and old is not None:
            old.seek(local[ref.oid])
            data = old.read(ref.length)
        else:
            async with limit:
                data = await get_object(reader, KIND_BLOCK, 0, ref)
            fetched += len(data)
        if block_oid(keys, data) != ref.oid or len(data) != ref.length:
            raise SnapshotError(f"block {j} of the snapshot is not what its name says")
        os.pwrite(fd, data, j * BLOCK_SIZE)

    try:
        async with trio.open_nursery() as nursery:
            for j, ref in enumerate(blocks):
                nursery.start_soon(one, j, ref)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
        if old is not None:
            old.close()
    os.replace(tmp, dest)
    return fetched
