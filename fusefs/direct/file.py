"""A file of the volume opened by the direct API: a read-only, seekable binary file object.

It reads the chunk rows pinned at open (one read transaction), so everything it returns
belongs to one committed version of the file. When a mount rewrites the file and deletes
the old shares before they are read, the file re-reads its rows if it has not returned a
byte yet, and otherwise raises `FileChangedError`: never bytes of two versions.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable

from fusefs.direct.view import Pinned, VolumeView
from fusefs.errors import ChunkReplaced, ChunkUnrecoverable, StoreError

REPIN_ATTEMPTS = 5  # a file that keeps being rewritten faster than it can be read


class FileChangedError(OSError):
    """The file was rewritten (by a mount of the volume) while it was being read, after
    some of its bytes were returned: open it again (errno ESTALE)."""


class DirectFile(io.RawIOBase):
    """`open(path)` of `DirectVolume`: read, readinto, readall, seek, tell, peek,
    readline, iteration; a context manager. Caches the last chunk it read."""

    def __init__(self, view: Callable[[], VolumeView], path: str) -> None:
        super().__init__()
        self._view = view  # the current process's view (a file may outlive a fork)
        self.name = path
        self.mode = "rb"
        self._pin: Pinned = view().pin(path)
        self._pos = 0
        self._next = 0  # where a sequential reader reads next
        self._served = False  # some bytes were returned: the version may not change now
        self._chunk: tuple[int, bytes, bytes | bytearray] | None = None  # (idx, oid, data)

    @property
    def size(self) -> int:
        return self._pin.inode.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position", self.name)
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        self._checkClosed()
        out = memoryview(buffer).cast("B")
        n = self._read(self._pos, out)
        self._pos += n
        self._served = self._served or n > 0
        return n

    def readall(self) -> bytes:
        self._checkClosed()
        for _ in range(REPIN_ATTEMPTS):
            pin = self._pin
            out = bytearray(max(0, self.size - self._pos))
            n = self._read(self._pos, memoryview(out))
            if self._pin is pin:  # else read again: the new version has its own size
                break
        else:
            raise FileChangedError(errno.ESTALE, "the file keeps being rewritten faster "
                                   "than it can be read", self.name)
        del out[n:]
        self._pos += n
        self._served = self._served or n > 0
        return bytes(out)

    def peek(self, size: int = 0) -> bytes:
        """Bytes from the position on without moving it (at least one unless at the end);
        also makes `readline` fast."""
        self._checkClosed()
        want = max(size, 1)
        out = bytearray(min(max(want, 8192), max(0, self.size - self._pos)))
        n = self._read(self._pos, memoryview(out), sequential=True)
        self._served = self._served or n > 0
        return bytes(out[:n])

    def close(self) -> None:
        self._chunk = None
        super().close()

    # -- reading ---------------------------------------------------------------------------
    def _read(self, off: int, out: memoryview, sequential: bool = False) -> int:
        """Fill `out` with the file's bytes from `off`; the count (0 at the end)."""
        for _ in range(REPIN_ATTEMPTS):
            try:
                return self._fill(off, out, sequential or off in (0, self._next))
            except ChunkReplaced:
                if self._served:
                    raise FileChangedError(errno.ESTALE, "the file was rewritten while it "
                                           "was read; open it again", self.name) from None
                self._pin = self._view().pin(self.name)  # nothing returned yet: the new one
                self._chunk = None
        raise FileChangedError(errno.ESTALE, "the file keeps being rewritten faster than it "
                               "can be read", self.name)

    def _fill(self, off: int, out: memoryview, sequential: bool) -> int:
        end = min(off + len(out), self.size)
        if off >= end:
            return 0
        cs = self._view().config.chunk_size
        pos = off
        while pos < end:
            idx, a = divmod(pos, cs)
            b = min(cs, end - idx * cs)
            w = pos - off
            self._piece(idx, a, b, sequential, out[w : w + b - a])
            pos += b - a
        self._next = end
        return end - off

    def _piece(self, idx: int, a: int, b: int, sequential: bool, dest: memoryview) -> None:
        """Bytes [a, b) of chunk idx into dest (zeros where the chunk has none: a hole)."""
        row = self._pin.rows.get(idx)
        if row is None or a >= row.length:
            dest[:] = bytes(len(dest))
            return
        view = self._view()
        have = min(b, row.length)
        cached = self._chunk
        data: bytes | bytearray | None = None
        if cached is not None and cached[0] == idx and cached[1] == row.oid:
            data = cached[2]
        elif not sequential and 2 * (b - a) <= view.config.chunk_size:
            part = self._guard(lambda: view.span(self._pin.inode.file_id, row, a, have))
            if part is not None:
                dest[: have - a] = part
                dest[have - a :] = bytes(b - have)
                return
        if data is None:
            view.announce(row)
            data = self._guard(lambda: view.chunk(self._pin.inode.id,
                                                  self._pin.inode.file_id, row))
            self._chunk = (idx, row.oid, data)
        dest[: have - a] = memoryview(data)[a:have]
        dest[have - a :] = bytes(b - have)

    def _guard(self, fn: Callable[[], object]):  # noqa: ANN202 - fn's result
        """Run a chunk read; failures become the OSError a read(2) gives (EIO)."""
        try:
            return fn()
        except (ChunkUnrecoverable, StoreError) as e:
            raise OSError(errno.EIO, f"unreadable: {e}", self.name) from None
