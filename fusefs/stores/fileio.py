"""The file I/O of a local store: direct (O_DIRECT) writes of big shares from page-aligned
memory, whole and partial reads that survive short reads."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import threading
from collections.abc import Callable

from fusefs.codec.buffers import address

# Shares this big are written with O_DIRECT: the kernel's copy into the page cache was a
# third of the daemon's CPU time on sequential writes (perf), and a store's page cache
# only duplicates what the mount's own page cache holds in plaintext. Smaller objects (small
# files, written inline on the event loop) stay buffered: a direct write waits for the disk.
DIRECT_MIN = 256 * 1024
_ALIGN = 4096  # O_DIRECT wants address, offset and length aligned to the device's blocks
_SPARE_BUFFERS = 8  # aligned copy buffers kept for reuse


class _AlignedBuffers:
    """Page-aligned buffers (anonymous mmaps) to stage direct writes, reused across puts."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return mmap.mmap(-1, -(-size // (1 << 20)) << 20)  # whole MiBs: reusable

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < _SPARE_BUFFERS:
                self._free.append(buf)
                return
        buf.close()


_aligned = _AlignedBuffers()


def write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def write_direct(fd: int, view: memoryview) -> None:
    """Write view through fd (opened O_DIRECT): the aligned bulk straight to the disk (from
    the view itself when it starts on a page, as sealed shares do, else from an aligned
    copy), the last partial block buffered."""
    bulk = len(view) // _ALIGN * _ALIGN
    at = address(view)
    if at is not None and at % _ALIGN == 0:
        write_all(fd, view[:bulk])  # partial direct writes stay block-aligned
    else:
        staging = _aligned.take(bulk)
        try:
            stage = memoryview(staging)
            try:
                stage[:bulk] = view[:bulk]
                write_all(fd, stage[:bulk])
            finally:
                stage.release()
        finally:
            _aligned.give(staging)
    if bulk < len(view):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        write_all(fd, view[bulk:])


def fill(fd: int, view: memoryview, offset: int = 0) -> int:
    """Read the file from `offset` into view; the bytes read (fewer at its end)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def read_whole(fd: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.ENXIO,
                      "not a regular file")
    size = st.st_size
    data = os.read(fd, size)
    while len(data) < size:  # short reads are rare (signals, special filesystems)
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


class PackAppender:
    """A pack object being appended to: one open file, written with pwrite at the offsets
    the pack writer hands out (no create and rename per share). The file is created under
    its final name (O_EXCL: a pack name is never reused), so a reader may see it grow;
    readers read only members the metadata names, which are wholly written before."""

    def __init__(self, fd: int, name: str, error: Callable[[str, str, OSError], Exception],
                 written: Callable[[], None]) -> None:
        self.fd, self.name = fd, name
        self._error, self._written = error, written  # the store's error and dirty marks

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise self._error("write", self.name, e) from None
        self._written()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def removed(self) -> bool:
        """The file lost its name (deleted or replaced): nothing appended reaches the store."""
        try:
            return os.fstat(self.fd).st_nlink == 0
        except OSError:
            return True
