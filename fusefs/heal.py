"""Healing: rewrite missing or damaged shares with their exact expected bytes.

A bad share found by a read is healed in the background (the reader never waits); a heal
that cannot be done now (store down, full, read-only) goes to the repair queue in the
metadata and is retried by the repair worker and by scrub. Healing works on ciphertext: the
k good shares are re-encoded, and a rebuilt share must match its recorded checksum before it
is written (or be proven by authentication when the recorded checksum matched forged bytes).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from fusefs.codec import chunk as chunkcodec
from fusefs.codec import erasure
from fusefs.codec.checksum import digest
from fusefs.errors import ChunkUnrecoverable, StoreError
from fusefs.meta.repo import ChunkRow
from fusefs.workers import run_cpu

if TYPE_CHECKING:
    from fusefs.volume import Volume

log = logging.getLogger(__name__)

Known = memoryview  # the padded ciphertext of a chunk a read has just authenticated

REPAIR_INTERVAL = 30.0  # seconds between passes of the repair worker over the queue
MAX_BACKGROUND_HEALS = 16  # beyond this, damage found by reads goes to the repair queue:
#                            a degraded read of a whole store must not hold every chunk's
#                            shares in memory nor double the CPU work of the read


class Healer:
    def __init__(self, volume: Volume) -> None:
        self.v = volume
        self.nursery: trio.Nursery | None = None  # background heals; None: heal inline
        self._healing: set[bytes] = set()  # oids with a heal in progress (no double work)
        self._idle = trio.Event()
        self._idle.set()

    async def heal_later(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                         bad: dict[int, str], known: Known | None = None) -> None:
        """Heal in the background (never blocking the reader) or, with no nursery, now."""
        if row.oid in self._healing:
            return
        if self.nursery is not None and len(self._healing) >= MAX_BACKGROUND_HEALS:
            v = self.v
            now = time.time_ns()
            for i, why in sorted(bad.items()):
                v.meta.queue_repair(row.oid, i, ino, row.idx, why, now)
                v.events.record(why, action="queued", store=v.stores[row.placement[i]].url,
                                obj=v.keys.object_name(row.oid, i), inode=ino, chunk=row.idx)
            return
        self._healing.add(row.oid)
        self._idle = trio.Event()
        if self.nursery is None:
            await self._heal_task(ino, row, good, bad, known)
        else:
            self.nursery.start_soon(self._heal_task, ino, row, good, bad, known)

    async def _heal_task(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                         bad: dict[int, str], known: Known | None) -> None:
        try:
            await self.heal(ino, row, good, bad, known)
        except Exception:
            log.exception("heal of chunk %d of inode %d failed", row.idx, ino)
        finally:
            self._healing.discard(row.oid)
            if not self._healing:
                self._idle.set()

    async def wait(self) -> None:
        """Wait until background heals started so far have finished (used at unmount)."""
        await self._idle.wait()

    async def heal(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                   bad: dict[int, str], known: Known | None = None) -> dict[int, str]:
        """Rewrite bad shares from k good ones (or from the ciphertext a read just
        authenticated); return share -> action taken."""
        v = self.v
        fresh = await run_cpu(row.length, self._rebuild, row, good, sorted(bad), known)
        actions = {}
        for i, why in sorted(bad.items()):
            si = row.placement[i]
            store, name = v.stores[si], v.keys.object_name(row.oid, i)
            actions[i] = action = await self._rewrite(ino, row, i, why, fresh[i])
            v.events.record(why, action=action, store=store.url, obj=name, inode=ino,
                            chunk=row.idx, version=row.oid)
        return actions

    def _rebuild(self, row: ChunkRow, good: dict[int, bytes], wanted: list[int],
                 known: Known | None) -> dict[int, erasure.Buffer]:
        """The exact bytes of shares `wanted`, by the cheapest way at hand.

        A read that has just authenticated the chunk hands over its padded ciphertext: lost
        data shares are slices of it, so only lost parity shares cost an encode. Else the
        k data shares are joined, or any k shares decoded. `_rewrite` still checks every
        result against its recorded checksum.
        """
        v = self.v
        size = erasure.share_size(chunkcodec.sealed_length(row.length, v.seg), v.k)
        padded: erasure.Buffer
        if known is not None:
            padded = known
        elif all(i in good for i in range(v.k)):
            padded = b"".join(good[i] for i in range(v.k))
        else:
            subset = {i: good[i] for i in sorted(good)[: v.k]}
            padded = erasure.decode(subset, v.k, v.m, v.k * size)
        return erasure.regenerate_padded(padded, v.k, v.m, wanted)

    async def _rewrite(self, ino: int, row: ChunkRow, i: int, why: str,
                       share: erasure.Buffer) -> str:
        v = self.v
        si = row.placement[i]
        if digest(share) != row.share_digest(i):
            if why != "authentication_failure":
                log.error("rebuilt share %d of chunk %d (inode %d) does not match its "
                          "checksum", i, row.idx, ino)
                return "unrecoverable"
            # The recorded checksum matched forged bytes; the rebuilt share is proven by
            # authentication, so its checksum becomes the record.
            v.meta.set_share_digest(ino, row.idx, row.oid, i, digest(share))
        if v.meta.chunk_by_oid(ino, row.idx, row.oid) is None:
            return "obsolete"  # the chunk was rewritten meanwhile: nothing to heal
        if v.store_down(si):
            v.meta.queue_repair(row.oid, i, ino, row.idx, why, time.time_ns())
            return "queued"
        try:
            await v.stores[si].put(v.keys.object_name(row.oid, i), share)
        except StoreError as e:
            log.warning("heal of share %d of chunk %d on %s failed: %s", i, row.idx,
                        v.stores[si].url, e)
            v.mark_down(si, e)
            v.meta.queue_repair(row.oid, i, ino, row.idx, why, time.time_ns())
            return "queued"
        v.meta.repair_done(row.oid, i)
        return "healed"

    async def verify(self, ino: int, file_id: bytes, row: ChunkRow,
                     repair: bool) -> tuple[dict[int, str], dict[int, str]]:
        """Check every share of a chunk (scrub). Returns (bad share -> problem,
        share -> action). Raises ChunkUnrecoverable when fewer than k shares are good."""
        good: dict[int, bytes] = {}
        bad: dict[int, str] = {}
        await self.v.gather(ino, file_id, row, good, bad, want_all=True)
        if not bad:
            return bad, {}
        if not repair:
            for i, why in sorted(bad.items()):
                self.v.events.record(why, action="reported", inode=ino, chunk=row.idx,
                                     store=self.v.stores[row.placement[i]].url,
                                     obj=self.v.keys.object_name(row.oid, i))
            return bad, {}
        return bad, await self.heal(ino, row, good, bad)

    async def process_queue(self) -> tuple[int, int]:
        """Retry queued repairs. Returns (repaired, still queued)."""
        v = self.v
        repaired = 0
        for oid, share, ino, idx, reason in v.meta.repairs():
            row = v.meta.chunk_by_oid(ino, idx, oid)
            if row is None:
                v.meta.repair_done(oid, share)  # that version is gone: nothing to repair
                continue
            if v.store_down(row.placement[share]):
                continue
            inode = v.meta.get_inode(ino)
            if inode is None:
                v.meta.repair_done(oid, share)
                continue
            good: dict[int, bytes] = {}
            bad: dict[int, str] = {}
            try:
                await v.gather(ino, inode.file_id, row, good, bad, want_all=False)
            except ChunkUnrecoverable:
                continue
            bad.setdefault(share, reason)
            actions = await self.heal(ino, row, good, bad)
            repaired += sum(1 for a in actions.values() if a == "healed")
        return repaired, v.meta.repair_count()

    async def run_worker(self) -> None:
        """Daemon task: retry the repair queue every REPAIR_INTERVAL seconds."""
        while True:
            await trio.sleep(REPAIR_INTERVAL)
            if not self.v.meta.repair_count():
                continue
            try:
                repaired, left = await self.process_queue()
                if repaired:
                    log.info("repair queue: %d shares repaired, %d still queued", repaired, left)
            except Exception:
                log.exception("repair worker pass failed")
