"""Pack objects (format 4): the shares of small chunks appended to one object per store.

A small file costs one share object per store (a create and a rename each on a local disk,
a PUT each on S3). In a format-4 volume, shares smaller than the config's `pack_below` are
appended instead to the store's open *pack*, and the chunk row records each one's (pack,
offset, length) (`meta.repo.PackLoc`, table `packed`). A pack is written from its start to
its end and never changed afterwards: the metadata names only members wholly written.

`PackWriter` keeps the open pack of every store that offers appends (a local disk:
`Store.open_append_blocking`; S3 stores keep an object per share, each PUT before the close
that needs it returns). There, a share is one pwrite into the open pack file: once it
returns, the bytes survive a kill -9 of the daemon (they are in the kernel's page cache),
which is what close() promises; power-loss durability comes, as for every share, from the
store's sync at the next durable point, before the metadata is fsynced. A pack is sealed
(no more appends) at the config's `pack_size`, at unmount, and at the next mount after a
crash (a mount never appends to a pack of an earlier one: its tail may hold bytes of writes
that never committed).

A new pack's metadata row is committed before its object is created, so every pack object
has a row until the object is deleted (no orphan pack, whatever crashes when). Packs leave
through `durability` (a pack no chunk version names any more is dead, and deleted once the
commit that emptied it is durable and followers have moved past it) and `compaction`.

Names: a pack's object name is a keyed hash of 16 random bytes (`VolumeKeys.pack_name`),
as opaque as a share's; a store learns only that an object grows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from fusefs.errors import StoreError
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import MetaRepo, PackLoc
from fusefs.stores.base import Appender

log = logging.getLogger(__name__)


@dataclass
class _Open:
    """The open pack of one store."""

    id: int  # packs.id
    pid: bytes
    appender: Appender
    outages: int  # the store's `StoreHealth.outages` when the pack was opened
    size: int = 0  # the next member's offset


class PackWriter:
    """The open pack of each store that takes appends; appends to it.

    `prepare` (on the event loop's thread) makes sure the stores a write is about to use
    have an open pack that is not full; `append_blocking` may then run in any thread (the
    blocking plan of a big chunk runs in a worker thread): a lock per store hands out
    offsets and writes, so concurrent appends never overlap.
    """

    def __init__(self, lay: Layout, meta: MetaRepo, health: StoreHealth) -> None:
        self.lay = lay
        self.meta = meta
        self.health = health
        self._open: dict[int, _Open] = {}
        self._locks = [threading.Lock() for _ in lay.stores]
        self._rotating = [trio.Lock() for _ in lay.stores]  # one new pack at a time
        self.closed = False
        self._started = False

    def start(self) -> None:
        """Seal the packs an earlier writer left open (it crashed, or this volume directory
        was recovered from its snapshot): they are never appended to again. Done before the
        first write of this writer (idempotent)."""
        if not self._started:
            self._started = True
            self.meta.seal_packs()

    def can_pack(self, si: int) -> bool:
        """Whether shares for store `si` go into its packs (else they are objects)."""
        return self.lay.stores[si].open_append_blocking is not None

    async def prepare(self, stores: Iterable[int]) -> None:
        """Open a pack on each of these stores that has none or a full one. A store that
        cannot create one is marked down (its shares then fail like any failed put)."""
        self.start()
        for si in set(stores):
            if self.closed or not self.can_pack(si) or not self._full(si):
                continue
            if self.health.write_refusal(si) is not None:
                continue
            async with self._rotating[si]:
                if not self._full(si):
                    continue  # another write opened one meanwhile
                try:
                    await self._rotate(si)
                except StoreError as e:
                    log.warning("cannot start a pack on %s: %s", self.lay.stores[si].url, e)
                    self.health.mark_down(si, e)

    def _full(self, si: int) -> bool:
        """Whether store `si` needs a new pack: none is open, the open one is full, or the
        store went down or was held since it was opened, or its file was deleted. The open
        descriptor may then name a file that is no longer where the store is (its directory
        was moved away and an empty one claimed in its place, a mount now covers it, it was
        deleted): appends through it would be recorded as members the store does not hold."""
        cur = self._open.get(si)
        return (cur is None or cur.size >= self.lay.config.pack_size
                or cur.outages != self.health.outages(si)
                # deleted under the mount (its store's objects removed by hand): one fstat,
                # on a local disk only (a hung NFS server must not block the event loop)
                or (self.lay.stores[si].inline_io and cur.appender.removed()))

    async def _rotate(self, si: int) -> None:
        store = self.lay.stores[si]
        outages = self.health.outages(si)
        pid = os.urandom(16)
        pack = self.meta.new_pack(pid, si)  # committed before the object exists
        name = self.lay.pack_name(pid)
        opener = store.open_append_blocking
        assert opener is not None
        if store.inline_io:
            appender = opener(name)
        else:  # a disk that may hang (NFS): not on the event loop
            appender = await trio.to_thread.run_sync(opener, name)
        old = self._swap(si, _Open(pack, pid, appender, outages))
        if old is not None:
            self.meta.seal_packs([old.id])

    def _swap(self, si: int, new: _Open | None) -> _Open | None:
        with self._locks[si]:
            old = self._open.pop(si, None)
            if new is not None:
                self._open[si] = new
            if old is not None:
                old.appender.close()
        return old

    def append_blocking(self, si: int, data: bytes | memoryview) -> PackLoc:
        """Append one share to the open pack of store `si`; where it went. StoreError when
        the store has no open pack or the write fails (nothing is recorded then)."""
        with self._locks[si]:
            cur = self._open.get(si)
            if cur is None:
                raise StoreError(f"store {self.lay.stores[si].url}: no pack is open")
            at = cur.size
            n = len(data)
            cur.appender.write_at(at, data)
            cur.size = at + n
            return PackLoc(cur.id, cur.pid, at, n)

    async def append(self, si: int, data: bytes | memoryview) -> PackLoc:
        """`append_blocking` from the event loop: inline on a local disk (a small pwrite
        costs less than a thread hop), else in a worker thread."""
        if self.lay.stores[si].inline_io:
            return self.append_blocking(si, data)
        return await trio.to_thread.run_sync(self.append_blocking, si, data)

    def close(self) -> None:
        """Seal every open pack (unmount)."""
        self.closed = True
        sealed = [old.id for si in list(self._open) if (old := self._swap(si, None))]
        if sealed:
            self.meta.seal_packs(sealed)
