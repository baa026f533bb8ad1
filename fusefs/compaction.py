"""Compaction: packs most of whose bytes no chunk version needs are copied, the members
still needed only, into the store's open pack, and then deleted.

Deleting or rewriting small files leaves dead bytes in packs (a pack is never rewritten in
place). A sealed pack more than DEAD_FRACTION dead is compacted: it is read once, its live
members are appended to the open pack of the same store in one write, one transaction
points every member at its copy (each only if it is still where it was: a heal or another
compaction may have moved it), and the pack, now named by nothing, is dead. It is deleted
like garbage: once that commit is durable (the stores synced first, then the metadata, so
after a power loss the pointers never name copies that are not on disk) and, with
followers, once a snapshot without it was published and the grace period passed
(`durability`). The same copy-on-write order as every write: new bytes, commit, old bytes
deleted. Killed anywhere in between, nothing is lost: before the commit, the copies are
unnamed bytes at the end of the open pack (the old pack is still named and read); after
it, the old pack waits in `pack_garbage` and the next durable point deletes it. No object
is ever left that no metadata names.

Compaction copies bytes; it does not verify them. A damaged member stays damaged in its
copy and is found (its checksum is in the chunk row) and healed by the next read or scrub;
a member the pack is too short to hold is left where it is for the heal to move, and its
pack stays until then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from fusefs.errors import NoSuchObject, StoreError
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import MetaRepo, PackLoc, PackRow
from fusefs.packs import PackWriter

log = logging.getLogger(__name__)

DEAD_FRACTION = 0.5  # a pack this dead is compacted: each byte copied frees at least one,
#                      so compaction writes at most as much as the deletes it follows
COMPACT_INTERVAL = 60.0  # seconds between the mounted volume's looks for dead packs
_SCAN_BATCH = 2000  # packed rows read per query while looking for a pack's members

Member = tuple[bytes, int, PackLoc]  # (chunk version oid, share, where it is)


@dataclass
class CompactReport:
    packs: int = 0  # packs emptied (deleted once that is durable)
    moved_bytes: int = 0  # live bytes copied
    freed_bytes: int = 0  # bytes of the packs emptied
    left: int = 0  # members left in place (their pack is damaged: heal moves them)

    def as_dict(self) -> dict:
        return dict(vars(self))


class Compactor:
    def __init__(self, lay: Layout, health: StoreHealth, meta: MetaRepo,
                 packs: PackWriter) -> None:
        self.lay = lay
        self.health = health
        self.meta = meta
        self.packs = packs
        self._lock = trio.Lock()

    async def run_once(self) -> CompactReport:
        """Compact every pack that is dead enough, on stores that take writes."""
        report = CompactReport()
        if self.packs.closed:
            return report  # unmounting: nothing is appended any more
        async with self._lock:
            candidates = [p for p in self.meta.compaction_candidates(DEAD_FRACTION)
                          if self.health.write_refusal(p.store) is None]
            if not candidates:
                return report
            members = await self._members({p.id for p in candidates})
            for pack in candidates:
                await self._compact(pack, members.get(pack.id, []), report)
        if report.packs:
            log.info("compaction: %d packs emptied, %d bytes copied, %d bytes to free",
                     report.packs, report.moved_bytes, report.freed_bytes)
        return report

    async def _members(self, wanted: set[int]) -> dict[int, list[Member]]:
        """The members of these packs, by pack, in one pass over the packed shares (a
        slice at a time: requests are served in between)."""
        out: dict[int, list[Member]] = {}
        cursor = b""
        while True:
            rows = self.meta.packed_after(cursor, _SCAN_BATCH)
            for oid, locs in rows:
                for i, loc in enumerate(locs):
                    if loc is not None and loc.pack in wanted:
                        out.setdefault(loc.pack, []).append((oid, i, loc))
            if len(rows) < _SCAN_BATCH:
                return out
            cursor = rows[-1][0]
            await trio.sleep(0)

    async def _compact(self, pack: PackRow, members: list[Member],
                       report: CompactReport) -> None:
        store = self.lay.stores[pack.store]
        try:
            data = await store.get(self.lay.pack_name(pack.pid))
        except NoSuchObject:
            data = b""
        except StoreError as e:
            log.warning("compaction of a pack on %s skipped: %s", store.url, e)
            self.health.mark_down(pack.store, e)
            return
        members.sort(key=lambda m: m[2].offset)
        whole = [m for m in members if m[2].offset + m[2].length <= len(data)]
        report.left += len(members) - len(whole)
        view = memoryview(data)
        blob = b"".join(view[loc.offset : loc.offset + loc.length] for _, _, loc in whole)
        base = None
        if blob:
            await self.packs.prepare([pack.store])
            try:
                base = await self.packs.append(pack.store, blob)
            except StoreError as e:
                log.warning("compaction of a pack on %s stopped: %s", store.url, e)
                self.health.mark_down(pack.store, e)
                return
        moved = 0
        with self.meta.transaction():
            at = 0
            for oid, share, loc in whole:
                assert base is not None
                new = PackLoc(base.pack, base.pid, base.offset + at, loc.length)
                at += loc.length
                if self.meta.move_share(oid, share, loc, new):
                    moved += loc.length
        report.moved_bytes += moved
        if self.meta.pack_is_dead(pack.id):
            report.packs += 1
            report.freed_bytes += pack.size

    async def run(self) -> None:
        """Daemon task: compact every COMPACT_INTERVAL (a query when there is nothing)."""
        while True:
            await trio.sleep(COMPACT_INTERVAL)
            try:
                await self.run_once()
            except Exception:
                log.exception("compaction pass failed")
