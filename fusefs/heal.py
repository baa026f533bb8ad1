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
from collections.abc import Callable

import trio

from fusefs import metrics
from fusefs.chunkread import ChunkReader
from fusefs.codec import erasure
from fusefs.codec.checksum import digest
from fusefs.errors import ChunkUnrecoverable, StoreError
from fusefs.events import EventLog
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import ChunkRow, MetaRepo, PackLoc
from fusefs.packs import PackWriter
from fusefs.shareio import AUTH
from fusefs.workers import run_cpu

log = logging.getLogger(__name__)

Known = memoryview  # the padded ciphertext of a chunk a read has just authenticated

REPAIR_INTERVAL = 30.0  # seconds between passes of the repair worker over the queue
MAX_BACKGROUND_HEALS = 16  # beyond this, damage found by reads goes to the repair queue:
#                            a degraded read of a whole store must not hold every chunk's
#                            shares in memory nor double the CPU work of the read; the queue
#                            is worked through once reads have stopped overflowing for
#                            DRAIN_CALM (or at once when the volume is unmounted)
DRAIN_CALM = 2.0  # seconds without overflow before the queue is worked through: during a
#                   degraded read of a whole store, draining at once cost the read ~20% (bench)
_DRAIN = b"drain"  # stands in `_healing` for the pass over what overflowed into the queue


def report(events: EventLog, lay: Layout, ino: int, row: ChunkRow, bad: dict[int, str],
           detail: str | None = None) -> None:
    """Record damage that is not healed here (a reader that may not write: a read-only
    mount, the direct API); scrub, or a mount that writes, repairs it."""
    for i, why in sorted(bad.items()):
        events.record(why, action="reported", store=lay.url_of(row, i),
                      obj=lay.obj(row, i), inode=ino, chunk=row.idx, version=row.oid,
                      detail=detail)


class Healer:
    def __init__(self, lay: Layout, health: StoreHealth, reader: ChunkReader, meta: MetaRepo,
                 events: EventLog, *, writes: bool = True) -> None:
        self.lay = lay
        self.writes = writes  # False: report damage, change nothing (a read-only mount)
        self.health = health
        self.reader = reader
        self.meta = meta
        self.events = events
        self.nursery: trio.Nursery | None = None  # background heals; None: heal inline
        self.packs: PackWriter | None = None  # where healed packed shares are appended
        self._healing: set[bytes] = set()  # oids with a heal in progress (no double work)
        self._idle = trio.Event()
        self._idle.set()
        self._overflowed = False  # heals went to the repair queue since the last drain
        self._overflow_at = 0.0  # trio time of the last overflow
        self._now = trio.Event()  # set: drain without waiting for calm (unmount)

    async def heal_later(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                         bad: dict[int, str], known: Known | None = None) -> None:
        """Heal in the background (never blocking the reader) or, with no nursery, now."""
        if not self.writes:
            report(self.events, self.lay, ino, row, bad)
            return
        if row.oid in self._healing:
            return
        if self.nursery is not None and len(self._healing) >= MAX_BACKGROUND_HEALS:
            now = time.time_ns()
            for i, why in sorted(bad.items()):
                self.meta.queue_repair(row.oid, i, ino, row.idx, why, now)
                self.events.record(why, action="queued", store=self.lay.url_of(row, i),
                                   obj=self.lay.obj(row, i), inode=ino, chunk=row.idx)
                metrics.heal("queued")
            self._overflowed = True
            self._overflow_at = trio.current_time()
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
            self._done(row.oid)

    def _done(self, oid: bytes) -> None:
        """A heal (or a drain) finished: when none is left, work through what overflowed
        into the repair queue meanwhile, then count as idle (unmount waits for that)."""
        self._healing.discard(oid)
        if self._healing:
            return
        if self._overflowed and self.nursery is not None:
            self._overflowed = False
            self._healing.add(_DRAIN)
            self.nursery.start_soon(self._drain)
        else:
            self._idle.set()

    async def _drain(self) -> None:
        try:
            while not self._now.is_set():  # wait for the reads to calm down
                wait = self._overflow_at + DRAIN_CALM - trio.current_time()
                if wait <= 0:
                    break
                with trio.move_on_after(wait):
                    await self._now.wait()
            await self.process_queue()
        except Exception:
            log.exception("repair pass after a burst of heals failed")
        finally:
            self._done(_DRAIN)

    async def wait(self) -> None:
        """Wait until background heals started so far have finished, and what overflowed
        into the repair queue is worked through now (used at unmount)."""
        self._now.set()
        try:
            await self._idle.wait()
        finally:
            self._now = trio.Event()

    async def heal(self, ino: int, row: ChunkRow, good: dict[int, bytes],
                   bad: dict[int, str], known: Known | None = None,
                   still_needed: Callable[[], bool] | None = None) -> dict[int, str]:
        """Rewrite bad shares from k good ones (or from the ciphertext a read just
        authenticated); return share -> action taken. `still_needed` says whether the
        object is still wanted (default: it is still the chunk's current version)."""
        fresh = await run_cpu(row.length, self._rebuild, row, good, sorted(bad), known)
        actions = {}
        for i, why in sorted(bad.items()):
            actions[i] = action = await self._rewrite(ino, row, i, why, fresh[i],
                                                      still_needed)
            metrics.heal(action)
            self.events.record(why, action=action, store=self.lay.url_of(row, i),
                               obj=self.lay.obj(row, i), inode=ino, chunk=row.idx,
                               version=row.oid)
        return actions

    def _rebuild(self, row: ChunkRow, good: dict[int, bytes], wanted: list[int],
                 known: Known | None) -> dict[int, erasure.Buffer]:
        """The exact bytes of shares `wanted`, by the cheapest way at hand.

        A read that has just authenticated the chunk hands over its padded ciphertext: lost
        data shares are slices of it, so only lost parity shares cost an encode. Else the
        k data shares are joined, or any k shares decoded. `_rewrite` still checks every
        result against its recorded checksum.
        """
        k, m = self.lay.k, self.lay.m
        padded: erasure.Buffer
        if known is not None:
            padded = known
        elif all(i in good for i in range(k)):
            padded = b"".join(good[i] for i in range(k))
        else:
            subset = {i: good[i] for i in sorted(good)[:k]}
            padded = erasure.decode(subset, k, m, k * self.lay.share_size(row.length))
        return erasure.regenerate_padded(padded, k, m, wanted)

    async def _rewrite(self, ino: int, row: ChunkRow, i: int, why: str,
                       share: erasure.Buffer,
                       still_needed: Callable[[], bool] | None = None) -> str:
        si = row.placement[i]
        if digest(share) != row.share_digest(i):
            if why != AUTH:
                log.error("rebuilt share %d of chunk %d (inode %d) does not match its "
                          "checksum", i, row.idx, ino)
                return "unrecoverable"
            # The recorded checksum matched forged bytes; the rebuilt share is proven by
            # authentication, so its checksum becomes the record.
            self.meta.set_share_digest(ino, row.idx, row.oid, i, digest(share))
        if not (still_needed() if still_needed is not None
                else self.meta.chunk_by_oid(ino, row.idx, row.oid) is not None):
            return "obsolete"  # the chunk was rewritten meanwhile: nothing to heal
        if self.health.write_refusal(si) is not None:  # down, full, or not to be written
            self.meta.queue_repair(row.oid, i, ino, row.idx, why, time.time_ns())
            return "queued"
        old = row.loc(i)
        try:
            if old is None:
                await self.lay.stores[si].put(self.lay.name(row.oid, i), share)
            elif not await self._move(row, i, old, share):
                return "obsolete"  # moved by another heal meanwhile, or the version went
        except StoreError as e:
            log.warning("heal of share %d of chunk %d on %s failed: %s", i, row.idx,
                        self.lay.stores[si].url, e)
            self.health.mark_down(si, e)
            self.meta.queue_repair(row.oid, i, ino, row.idx, why, time.time_ns())
            return "queued"
        self.meta.repair_done(row.oid, i)
        return "healed"

    async def _move(self, row: ChunkRow, i: int, old: PackLoc, share: erasure.Buffer) -> bool:
        """A packed share is healed by appending its exact bytes to its store's open pack
        and pointing the chunk version at the copy (a pack is never written twice; the
        damaged bytes become dead, and compaction frees them). A store that takes no
        appends (its URL now names an S3 bucket), or a heal after the packs were sealed
        (unmount), gets the share as an object of its own."""
        if self.packs is None:
            raise StoreError(f"store {self.lay.url_of(row, i)}: no pack writer (read-only)")
        si = row.placement[i]
        if not self.packs.can_pack(si) or self.packs.closed:
            await self.lay.stores[si].put(self.lay.name(row.oid, i), share)
            return self.meta.move_share(row.oid, i, old, None)
        await self.packs.prepare([si])
        new = await self.packs.append(si, share)
        return self.meta.move_share(row.oid, i, old, new)

    async def verify(self, ino: int, file_id: bytes, row: ChunkRow, repair: bool,
                     still_needed: Callable[[], bool] | None = None
                     ) -> tuple[dict[int, str], dict[int, str]]:
        """Check every share of a chunk (scrub). Returns (bad share -> problem,
        share -> action). Raises ChunkUnrecoverable when fewer than k shares are good."""
        got = await self.reader.read(ino, file_id, row, every_share=True)
        bad = got.bad
        if not bad:
            return bad, {}
        if not repair:
            for i, why in sorted(bad.items()):
                self.events.record(why, action="reported", inode=ino, chunk=row.idx,
                                   store=self.lay.url_of(row, i), obj=self.lay.obj(row, i))
            return bad, {}
        return bad, await self.heal(ino, row, got.good, bad, got.padded, still_needed)

    async def process_queue(self) -> tuple[int, int]:
        """Retry queued repairs. Returns (repaired, still queued)."""
        repaired = 0
        for oid, share, ino, idx, reason in self.meta.repairs():
            row = self.meta.chunk_by_oid(ino, idx, oid)
            if row is None:
                self.meta.repair_done(oid, share)  # that version is gone: nothing to repair
                continue
            if self.health.write_refusal(row.placement[share]) is not None:
                continue
            file_id = self.meta.file_id_of(ino)  # a version may hold a deleted file's chunk
            if file_id is None:
                self.meta.repair_done(oid, share)
                continue
            try:
                got = await self.reader.read(ino, file_id, row)
            except ChunkUnrecoverable:
                continue
            bad = dict(got.bad)
            bad.setdefault(share, reason)
            actions = await self.heal(ino, row, got.good, bad, got.padded)
            repaired += sum(1 for a in actions.values() if a == "healed")
        return repaired, self.meta.repair_count()

    async def run_worker(self) -> None:
        """Daemon task: retry the repair queue every REPAIR_INTERVAL seconds."""
        while self.writes:
            await trio.sleep(REPAIR_INTERVAL)
            if not self.meta.repair_count():
                continue
            try:
                repaired, left = await self.process_queue()
                if repaired:
                    log.info("repair queue: %d shares repaired, %d still queued", repaired, left)
            except Exception:
                log.exception("repair worker pass failed")
