"""The volume: chunks in, verified plaintext out, over K+M shares on N stores.

Responsible for placement, parallel share I/O, checksum verification, rebuild from any K good
shares, healing bad shares on read, copy-on-write garbage collection and durability points.
It knows chunk rows and stores; it knows nothing about names, directories or FUSE.

Concurrency: runs on the trio thread; zfec/AES-GCM work above `CPU_THRESHOLD` bytes goes to
worker threads behind one limiter (both release the GIL), smaller work stays inline because a
thread hop costs more than it saves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import trio

from fusefs import placement
from fusefs.codec import chunk as chunkcodec
from fusefs.codec import erasure
from fusefs.codec.checksum import digest
from fusefs.codec.keys import VolumeKeys
from fusefs.config import VolumeConfig
from fusefs.errors import ChunkUnrecoverable, NoSuchObject, StoreError
from fusefs.events import EventLog
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.stores.base import Store

log = logging.getLogger(__name__)

CPU_THRESHOLD = 128 << 10  # below this, sealing/opening inline beats a thread hop
_CPU_LIMITER = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
_FAST_READ_LIMITER = trio.CapacityLimiter(8)  # whole-chunk reads from local stores


class _NotHealthy(Exception):
    """The one-hop fast path met anything unusual; the general path takes over."""


async def run_cpu(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run CPU-bound `fn` in a worker thread when the input is large enough to pay off."""
    if size < CPU_THRESHOLD:
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args, limiter=_CPU_LIMITER)


class Volume:
    def __init__(self, config: VolumeConfig, keys: VolumeKeys, stores: list[Store],
                 meta: MetaRepo, events: EventLog) -> None:
        self.config = config
        self.keys = keys
        self.stores = stores
        self.meta = meta
        self.events = events
        self.k = config.data_shares
        self.m = config.parity_shares
        self.n = config.n_shares
        self.volume_id = config.volume_id_bytes
        self.nursery: trio.Nursery | None = None  # for background heals; None: heal inline
        self._healing: set[bytes] = set()  # oids with a heal in progress (no double work)
        self._fast_reads = all(s.get_blocking is not None for s in stores)
        self._heals_done = trio.Event()

    # -- write ---------------------------------------------------------------------------
    async def write_chunk(self, ino: int, file_id: bytes, idx: int, plain: bytes,
                          prev_version: int) -> ChunkRow:
        """Seal `plain` as a new version of chunk `idx` and store all n shares.

        Returns the row to commit. Nothing is committed here: the caller commits, and the
        replaced version's shares become garbage in that same commit (copy-on-write).
        """
        oid = os.urandom(16)
        version = prev_version + 1
        cid = chunkcodec.ChunkId(self.volume_id, file_id, idx, version)
        aead = self.keys.file_aead(file_id)
        shares, digests = await run_cpu(len(plain), chunkcodec.seal, aead, cid, oid, plain,
                                        self.k, self.m)
        where = placement.place(oid, self.n, len(self.stores))
        failures: list[StoreError] = []

        async def put(i: int) -> None:
            try:
                await self.stores[where[i]].put(self.keys.object_name(oid, i), shares[i])
            except StoreError as e:
                failures.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(self.n):
                nursery.start_soon(put, i)
        if failures:
            await self.delete_shares(oid, where)
            raise failures[0]
        return ChunkRow(idx, version, oid, len(plain), where, b"".join(digests))

    # -- read ----------------------------------------------------------------------------
    async def read_chunk(self, ino: int, file_id: bytes, row: ChunkRow) -> bytes:
        """Fetch, verify and decrypt one chunk; heal bad shares; never return wrong bytes.

        Raises ChunkUnrecoverable when fewer than k shares are good.
        """
        if self._fast_reads:
            try:
                return await trio.to_thread.run_sync(self._read_healthy, file_id, row,
                                                     limiter=_FAST_READ_LIMITER)
            except _NotHealthy:
                pass  # something is missing or damaged: the careful path finds out what
        good: dict[int, bytes] = {}
        bad: dict[int, str] = {}
        order = list(range(self.n))  # data shares first: a healthy read needs no decoding
        tried = 0

        async def fetch(i: int) -> None:
            store = self.stores[row.placement[i]]
            name = self.keys.object_name(row.oid, i)
            try:
                data = await store.get(name)
            except NoSuchObject:
                bad[i] = "missing"
                return
            except StoreError as e:
                bad[i] = "store unreachable"
                log.warning("%s", e)
                return
            if digest(data) != row.share_digest(i):
                bad[i] = "checksum mismatch"
                return
            good[i] = data

        plain = None
        while plain is None:
            while len(good) < self.k and tried < self.n:
                batch = order[tried : tried + self.k - len(good)]
                tried += len(batch)
                async with trio.open_nursery() as nursery:
                    for i in batch:
                        nursery.start_soon(fetch, i)
            if len(good) < self.k:
                self._unrecoverable(ino, row, bad)
            cid = chunkcodec.ChunkId(self.volume_id, file_id, row.idx, row.version)
            try:
                plain, forged = await run_cpu(
                    row.length, chunkcodec.open_, self.keys.file_aead(file_id), cid, row.oid,
                    row.length, dict(good), self.k, self.m)
            except chunkcodec.AuthenticationFailed:
                if tried < self.n:  # more shares might outvote the forged ones
                    batch = order[tried:]
                    tried = self.n
                    async with trio.open_nursery() as nursery:
                        for i in batch:
                            nursery.start_soon(fetch, i)
                    continue
                for i in good:
                    bad[i] = "authentication failure"
                good.clear()
                self._unrecoverable(ino, row, bad)
            for i in forged:
                bad[i] = "authentication failure"
                good.pop(i, None)
        if bad:
            await self._heal_later(ino, row, dict(good), bad)
        return plain

    def _read_healthy(self, file_id: bytes, row: ChunkRow) -> bytes:
        """Worker thread: read the k data shares, verify, decrypt; raise _NotHealthy on
        any problem. One thread hop per chunk instead of k + 1 (local stores only)."""
        shares = {}
        try:
            for i in range(self.k):
                data = self.stores[row.placement[i]].get_blocking(  # type: ignore[misc]
                    self.keys.object_name(row.oid, i))
                if digest(data) != row.share_digest(i):
                    raise _NotHealthy
                shares[i] = data
        except StoreError:
            raise _NotHealthy from None
        cid = chunkcodec.ChunkId(self.volume_id, file_id, row.idx, row.version)
        try:
            plain, _ = chunkcodec.open_(self.keys.file_aead(file_id), cid, row.oid, row.length,
                                        shares, self.k, self.m, all_subsets=False)
        except chunkcodec.AuthenticationFailed:
            raise _NotHealthy from None
        return plain

    def _unrecoverable(self, ino: int, row: ChunkRow, bad: dict[int, str]) -> None:
        for i, why in sorted(bad.items()):
            self.events.record(why.replace(" ", "_"), action="unrecoverable",
                               store=self.stores[row.placement[i]].url,
                               obj=self.keys.object_name(row.oid, i), inode=ino,
                               chunk=row.idx)
        raise ChunkUnrecoverable(f"chunk {row.idx} of inode {ino}: fewer than {self.k} good "
                                 f"shares ({len(bad)} of {self.n} bad)")

    # -- heal ----------------------------------------------------------------------------
    async def _heal_later(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                          bad: dict[int, str]) -> None:
        """Heal in the background (never blocking the reader) or, with no nursery, now."""
        if row.oid in self._healing:
            return
        self._healing.add(row.oid)
        if self.nursery is None:
            await self._heal_task(ino, row, good, bad)
        else:
            self.nursery.start_soon(self._heal_task, ino, row, good, bad)

    async def _heal_task(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                         bad: dict[int, str]) -> None:
        try:
            await self.heal(ino, row, good, bad)
        except Exception:
            log.exception("heal of chunk %d of inode %d failed", row.idx, ino)
        finally:
            self._healing.discard(row.oid)
            if not self._healing:
                self._heals_done.set()
                self._heals_done = trio.Event()

    async def wait_heals(self) -> None:
        """Wait until background heals started so far have finished (used at unmount)."""
        while self._healing:
            await self._heals_done.wait()

    async def heal(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                   bad: dict[int, str]) -> None:
        """Rewrite bad shares with their exact expected bytes, rebuilt from k good ones."""
        subset = {i: good[i] for i in sorted(good)[: self.k]}
        length = chunkcodec.sealed_length(row.length)
        ct = await run_cpu(row.length, erasure.decode, subset, self.k, self.m, length)
        fresh = await run_cpu(row.length, erasure.regenerate, ct, self.k, self.m, list(bad))
        for i, why in sorted(bad.items()):
            store = self.stores[row.placement[i]]
            name = self.keys.object_name(row.oid, i)
            if digest(fresh[i]) != row.share_digest(i):
                if why != "authentication failure":  # cannot happen unless a bug
                    self.events.record(why.replace(" ", "_"), action="unrecoverable",
                                       store=store.url, obj=name, inode=ino, chunk=row.idx,
                                       detail="rebuilt share does not match its checksum")
                    continue
                # The recorded checksum matched forged bytes; the rebuilt share is proven
                # by authentication, so its checksum becomes the record.
                self.meta.set_share_digest(ino, row.idx, row.oid, i, digest(fresh[i]))
            try:
                await store.put(name, fresh[i])
                action = "healed"
            except StoreError as e:
                log.warning("heal of %s on %s failed: %s", name, store.url, e)
                action = "heal failed"
            self.events.record(why.replace(" ", "_"), action=action, store=store.url,
                               obj=name, inode=ino, chunk=row.idx)

    # -- garbage and durability ----------------------------------------------------------
    async def delete_shares(self, oid: bytes, where: bytes) -> bool:
        """Delete every share of one chunk version; False if a store refused."""
        ok = True

        async def delete(i: int) -> None:
            nonlocal ok
            try:
                await self.stores[where[i]].delete(self.keys.object_name(oid, i))
            except StoreError as e:
                log.warning("%s", e)
                ok = False

        async with trio.open_nursery() as nursery:
            for i in range(len(where)):
                nursery.start_soon(delete, i)
        return ok

    async def make_durable(self) -> None:
        """Make every completed write durable, then delete the shares it replaced.

        Order: stores synced -> metadata WAL fsynced -> old shares deleted. Garbage is read
        before syncing so only rows whose replacement is already durable are deleted.
        """
        garbage = self.meta.garbage()
        failures: list[StoreError] = []

        async def sync(store: Store) -> None:
            try:
                await store.sync()
            except StoreError as e:
                failures.append(e)

        async with trio.open_nursery() as nursery:
            for store in self.stores:
                nursery.start_soon(sync, store)
        if failures:
            raise failures[0]
        wal_size = await trio.to_thread.run_sync(self.meta.fsync_wal)
        self.meta.checkpoint_if_large(wal_size)
        done = []
        for gid, oid, where in garbage:
            if await self.delete_shares(oid, where):
                done.append(gid)
        self.meta.garbage_done(done)
