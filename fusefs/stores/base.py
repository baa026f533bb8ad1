"""The store contract every backend implements.

A store is a flat map from opaque object names (hex strings) to bytes. It knows nothing
about files, chunks or keys. Every method may raise `StoreError` (unreachable, refused),
`NoSuchObject` or `StoreFull`; messages name the store so the user can act on them.

Durability: `put` may leave data in volatile caches; `sync` makes every completed `put`
durable. The volume calls `sync` before a metadata commit is made durable, so the ordering
"new shares, then metadata, then old shares deleted" also holds across power loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

from fusefs.errors import NoSuchObject

MARKER = "fusefs-store"  # says which volume (and which of its stores) owns the store
HEAD = "fusefs-head"  # the newest metadata snapshot of the volume (sealed; see `snapshots`)
FIXED_NAMES = frozenset({MARKER, HEAD})  # the only names that are not opaque share names


class Appender(Protocol):
    """An object being written from its start, piece by piece (a pack on a local disk)."""

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset` (blocking); once it returns, the bytes survive a crash
        of this process (not a power loss: `Store.sync`)."""

    def close(self) -> None:
        """No more writes."""

    def removed(self) -> bool:
        """Whether the object was deleted from the store while open (appends would land in
        a file nothing can read any more)."""


class Store(ABC):
    """An async object store."""

    url: str
    # Stores whose reads are cheap blocking calls (local disks) also offer them as a plain
    # function, so the volume can read and verify a whole chunk in one worker-thread hop.
    get_blocking: Callable[[str], bytes] | None = None
    get_range_blocking: Callable[[str, int, int], bytes] | None = None
    # Read an object from `offset` (0: its start) into a caller's buffer (the k data shares of
    # a chunk land side by side: no join copy); returns the bytes read, fewer at its end.
    read_into_blocking: Callable[[str, memoryview, int], int] | None = None
    # Start reading an object (or `length` bytes of it from `offset`; 0: all) into the page
    # cache without waiting (several shares of a chunk then come off the disk in parallel
    # although they are read one after the other).
    will_need_blocking: Callable[[str, int, int], None] | None = None
    put_blocking: Callable[[str, bytes | memoryview], None] | None = None
    # Create a new object and write it piece by piece (a pack object, format 4), where that
    # is cheaper than a put per piece (a local disk: one open file, no create and rename per
    # share). Stores without it (S3: a pack would have to be PUT whole at every close to
    # keep close()'s promise) keep an object per share.
    open_append_blocking: Callable[[str], Appender] | None = None
    # Small blocking reads and writes cost less than the hop to a worker thread and may then
    # run on the event loop: only on a local disk, where they cannot hang for long (not NFS
    # or FUSE).
    inline_io: bool = False

    @abstractmethod
    async def get(self, name: str) -> bytes:
        """Return the object's bytes; raise NoSuchObject when absent."""

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes of the object from `offset` (fewer at its end); raise
        NoSuchObject when absent. Small reads of big chunks fetch only what they need."""
        return (await self.get(name))[offset : offset + length]

    @abstractmethod
    async def put(self, name: str, data: bytes | memoryview) -> None:
        """Create or replace an object atomically (readers see old or new, never a mix)."""

    @abstractmethod
    async def delete(self, name: str) -> None:
        """Remove an object; a missing object is not an error."""

    async def delete_many(self, names: list[str]) -> None:
        """Remove many objects (missing ones are not an error) in as few calls as the store
        allows: garbage is deleted a pass at a time, and a thread hop or a request per
        share cost more than the deletes (1,280 shares after overwriting a 1 GiB file)."""
        for name in names:
            await self.delete(name)

    @abstractmethod
    async def list(self) -> list[str]:
        """Names of all share objects (not the marker)."""

    @abstractmethod
    async def sync(self) -> None:
        """Make every completed put and delete durable."""

    @abstractmethod
    async def check(self, writable: bool) -> None:
        """Raise StoreError with a clear message if the store cannot be used."""

    async def space(self) -> tuple[int, int] | None:
        """(total bytes, free bytes) when the store can tell, else None."""
        return None

    async def remove_stale_temporaries(self, older_than: float) -> int:
        """Remove temporaries a crashed writer left behind (a put killed between creating
        and renaming its file), last written more than `older_than` seconds ago and not in
        use by a put of this process; return how many. `list` never shows them, so nothing
        else would reclaim their space. Stores that write atomically (S3: one PUT) have
        none."""
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and file descriptors."""

    async def read_marker(self) -> bytes | None:
        """The bytes of the store's marker (which volume owns it: `storecheck` reads them),
        or None when there is none."""
        try:
            return await self.get(MARKER)
        except NoSuchObject:
            return None

    async def write_marker(self, data: bytes) -> None:
        await self.put(MARKER, data)
        await self.sync()
