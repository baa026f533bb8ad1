"""Writing chunks: seal, place, store with the write quorum, commit with what a store missed.

Copy-on-write: every write is a new chunk version under a fresh random oid, so its shares
never overwrite the shares of the version readers may still be using. `write` stores the
shares (one plan, `_store`, carried out in one blocking call for local disks or with async
puts in parallel) and `commit` records the row together with the repairs of shares a store
did not take; the version it replaces becomes garbage in that same commit (`durability`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

import trio

from fusefs import placement
from fusefs.codec import chunk as chunkcodec
from fusefs.codec.digest import content as content_digest
from fusefs.durability import delete_shares
from fusefs.errors import StoreError, StoreFull
from fusefs.events import EventLog
from fusefs.health import UNREACHABLE, StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import ChunkRow, MetaRepo
from fusefs.packs import PackWriter
from fusefs.shareio import AsyncRun, BlockingRun, Compute, Plan, Put
from fusefs.workers import IoPolicy

log = logging.getLogger(__name__)

STORE_SLOW = "store_slow"  # a share still being stored when its write returned (hedged)


def _seal(lay: Layout, cid: chunkcodec.ChunkId, oid: bytes, plain: bytes | memoryview
          ) -> tuple[list, list[bytes], bytes]:
    """Encrypt and erasure-code one chunk (the file key too: deriving a new file's key is
    HKDF work the event loop need not do for big chunks), and take the content digest of
    its plaintext (fingerprints) in the same worker-thread hop."""
    aead, nonce_id = lay.cipher(cid.file_id, oid)
    shares, digests = chunkcodec.seal(aead, cid, nonce_id, plain, lay.k, lay.m, lay.seg)
    return shares, digests, content_digest(plain)


def _store(lay: Layout, cid: chunkcodec.ChunkId, oid: bytes, plain: bytes | memoryview,
           where: bytes, packs: PackWriter | None) -> Plan:
    """Seal, then put share i on store where[i] (into its pack, with `packs`). Returns
    (digests, content, PutResult)."""
    shares, digests, content = yield Compute(len(plain), _seal, (lay, cid, oid, plain))
    return digests, content, (yield Put(oid, shares, where, packs))


class ChunkWriter:
    def __init__(self, lay: Layout, health: StoreHealth, policy: IoPolicy, meta: MetaRepo,
                 events: EventLog,
                 recheck: Callable[[set[int]], Awaitable[None]] | None = None) -> None:
        self.lay = lay
        self.health = health
        self.policy = policy
        self.meta = meta
        self.events = events
        self.recheck = recheck  # asked to recheck refused stores when a write lacks some
        self.packs: PackWriter | None = None  # format 4: where small shares go
        self.nursery: trio.Nursery | None = None  # where hedged puts finish; None: awaited
        self.writing: set[bytes] = set()  # oids whose shares are stored but not committed
        self._arrived: dict[bytes, set[int]] = {}  # pending shares stored before the commit

    async def write(self, file_id: bytes, idx: int, plain: bytes | memoryview,
                    prev_version: int, oid: bytes | None = None
                    ) -> tuple[ChunkRow, dict[int, str]]:
        """Seal `plain` as a new version of chunk `idx` and store its shares.

        Returns the row to commit and the shares that could not be stored (at most
        n - quorum; share -> event kind). Raises StoreError when fewer than `quorum` stores
        took a share; what was stored is deleted again and nothing is committed. The oid is
        random unless given (metadata snapshot objects, which are named by their content and
        never packed: a new host finds them from the heads alone).
        """
        lay = self.lay
        packs = self.packs if oid is None and lay.packs_here(len(plain)) else None
        oid = os.urandom(16) if oid is None else oid
        cid = chunkcodec.ChunkId(lay.volume_id, file_id, idx, prev_version + 1)
        where = placement.place(oid, lay.n, len(lay.stores))
        refused = {si for si in where if self.health.write_refusal(si) is not None}
        if lay.n - len(refused) < lay.quorum and self.recheck is not None:
            await self.recheck(refused)  # one of them may be back already
        if packs is not None:
            await packs.prepare(where)
        plan = _store(lay, cid, oid, plain, where, packs)
        self.writing.add(oid)
        try:
            if self.policy.writes and all(self.health.write_refusal(si) is None
                                          for si in where):
                run = BlockingRun(lay, frozenset())
                try:
                    digests, content, put = await self.policy.write(len(plain), run.drive,
                                                                    plan)
                finally:
                    run.mark_failures(self.health)
            else:
                digests, content, put = await AsyncRun(
                    lay, self.health, background=self.nursery, late=self._late).drive(plan)
            if lay.n - len(put.failed) < lay.quorum:
                await self._undo(oid, where, put.failed)
        except BaseException:
            self.writing.discard(oid)
            self._arrived.pop(oid, None)
            raise
        missing = {i: "store_full" if isinstance(e, StoreFull) else UNREACHABLE
                   for i, e in sorted(put.failed.items())}
        missing.update({i: STORE_SLOW for i in put.pending})
        row = ChunkRow(idx, cid.version, oid, len(plain), where, b"".join(digests), content,
                       put.row_locs(lay.n))
        return row, missing

    def forget(self, oid: bytes) -> None:
        """An oid written without a chunk row to commit (a snapshot object) is recorded
        elsewhere now: scrub no longer needs to know it is being written."""
        self.writing.discard(oid)
        self._arrived.pop(oid, None)

    def _late(self, oid: bytes, share: int, error: StoreError | None) -> None:
        """A hedged put finished in the background. Stored: its repair is not needed (or
        not yet queued: the commit skips it). Failed: the queued repair stays for the
        repair worker and scrub (its store was bypassed when it failed)."""
        if error is not None:
            log.warning("share %d of %s was not stored: %s", share, oid.hex(), error)
        elif oid in self.writing:
            self._arrived.setdefault(oid, set()).add(share)
        else:
            self.meta.repair_done(oid, share)

    async def _undo(self, oid: bytes, where: bytes, failed: dict[int, StoreError]) -> None:
        """Below the write quorum: delete what was stored and raise the most telling error
        ("no space" tells the user most)."""
        await delete_shares(self.lay, self.health, oid, where, skip=failed)  # (a pack's
        #                                   members are not deleted: they stay unrecorded)
        first = next((e for e in failed.values() if isinstance(e, StoreFull)),
                     next(iter(failed.values())))
        n = self.lay.n
        raise type(first)(f"only {n - len(failed)} of {n} stores took a share "
                          f"(write quorum {self.lay.quorum}): {first}")

    def commit(self, ino: int, row: ChunkRow, missing: dict[int, str],
               size: int | None = None) -> None:
        """Commit a written chunk version with its pending share repairs, atomically, and
        record each share that could not be stored (share -> event kind)."""
        arrived = self._arrived.pop(row.oid, set())
        queued = {i: kind for i, kind in missing.items() if i not in arrived}
        with self.meta.transaction():
            self.meta.put_chunk(ino, row, size=size)
            now = time.time_ns()
            for i, kind in queued.items():
                self.meta.queue_repair(row.oid, i, ino, row.idx, kind, now)
        self.writing.discard(row.oid)
        for i, kind in queued.items():
            if kind != STORE_SLOW:  # still being stored: not damage (yet)
                self.events.record(kind, action="queued", store=self.lay.url_of(row, i),
                                   obj=self.lay.obj(row, i), inode=ino, chunk=row.idx)
