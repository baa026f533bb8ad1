"""A store in a local directory (a disk, an NFS mount, ...).

Layout: ROOT/fusefs-store (marker) and ROOT/objects/<1 hex>/<name>. Puts write a temporary
file and rename it into place, so an object is never seen half-written. Durability is
batched: `sync` calls syncfs(2) on the store's filesystem once, instead of an fsync per
share (5 fsyncs per chunk would dominate write time).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from fusefs.codec.buffers import address
from fusefs.errors import NoSuchObject, StoreError, StoreFull
from fusefs.mounts import may_hang
from fusefs.stores.base import MARKER, Store

_libc = ctypes.CDLL(None, use_errno=True)
_IO_THREADS = 8  # concurrent blocking calls per store
# Objects are spread over 16 directories by their first hex digit. Fewer, bigger directories
# mean fewer cold directory blocks to read: a cold open+read of a share took ~150-185 us
# with 256 directories, ~130 us with 16 (ext4, measured); htree directories stay fast with
# millions of entries.
FANOUT_DIGITS = 1


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


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _write_direct(fd: int, view: memoryview) -> None:
    """Write view through fd (opened O_DIRECT): the aligned bulk straight to the disk (from
    the view itself when it starts on a page, as sealed shares do, else from an aligned
    copy), the last partial block buffered."""
    bulk = len(view) // _ALIGN * _ALIGN
    at = address(view)
    if at is not None and at % _ALIGN == 0:
        _write_all(fd, view[:bulk])  # partial direct writes stay block-aligned
    else:
        staging = _aligned.take(bulk)
        try:
            stage = memoryview(staging)
            try:
                stage[:bulk] = view[:bulk]
                _write_all(fd, stage[:bulk])
            finally:
                stage.release()
        finally:
            _aligned.give(staging)
    if bulk < len(view):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        _write_all(fd, view[bulk:])


def object_relpath(name: str) -> str:
    """Where an object lives below the store root."""
    return f"objects/{name[:FANOUT_DIGITS]}/{name}"


T = TypeVar("T")


def _fill(fd: int, view: memoryview) -> int:
    """Read the file from its start into view; the bytes read (fewer at its end)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], got)
        if n == 0:
            break
        got += n
    return got


def _read_whole(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    data = os.read(fd, size)
    while len(data) < size:  # short reads are rare (signals, special filesystems)
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


class LocalStore(Store):
    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        self._objects = self.root / "objects"
        self._root_str = f"{self.root}/"
        self._objects_str = f"{self._objects}/"
        self._limiter = trio.CapacityLimiter(_IO_THREADS)
        self._dirty = False
        self.get_blocking = self._get_sync
        self.get_range_blocking = self._get_range_sync
        self.will_need_blocking = self._will_need_sync
        self.read_into_blocking = self._read_into_sync
        self.put_blocking = self._put_blocking
        self.inline_io = not may_hang(self.root)
        # off after the first EINVAL: filesystems without O_DIRECT (older tmpfs, some FUSE)
        self.direct_io = os.environ.get("FUSEFS_DIRECT_IO") != "0"

    def _put_blocking(self, name: str, data: bytes | memoryview) -> None:
        self._put_sync(name, data)
        self._dirty = True

    def _path(self, name: str) -> str:
        # plain strings: pathlib costs microseconds per join on the read hot path
        if name == MARKER:
            return self._root_str + MARKER
        return f"{self._root_str}{object_relpath(name)}"

    def _error(self, what: str, name: str, e: OSError) -> StoreError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreFull(f"store {self.url} is full (writing {name})")
        return StoreError(f"store {self.url}: cannot {what} {name}: {e.strerror}")

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- blocking parts, run in worker threads ------------------------------------------
    def _open(self, name: str) -> int:
        try:
            return os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            if not self.root.is_dir():  # the whole store is gone (unmounted disk?)
                raise StoreError(f"store {self.url} is unavailable (directory missing)") from None
            raise NoSuchObject(f"store {self.url}: object {name} is missing") from None
        except OSError as e:
            raise self._error("read", name, e) from None

    def _will_need_sync(self, name: str) -> None:
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except OSError:
            return  # the read that follows reports it
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _read(self, name: str, how: Callable[[int], T]) -> T:
        """`how` applied to an open fd of the object; an OSError becomes a StoreError."""
        fd = self._open(name)
        try:
            return how(fd)
        except OSError as e:
            raise self._error("read", name, e) from None
        finally:
            os.close(fd)

    def _read_into_sync(self, name: str, view: memoryview) -> int:
        return self._read(name, lambda fd: _fill(fd, view))

    def _get_range_sync(self, name: str, offset: int, length: int) -> bytes:
        # short only at the end of the object
        return self._read(name, lambda fd: os.pread(fd, length, offset))

    def _get_sync(self, name: str) -> bytes:
        return self._read(name, _read_whole)

    def _put_sync(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        parent = os.path.dirname(path)
        tmp = f"{parent}/.tmp-{secrets.token_hex(6)}"
        view = memoryview(data).cast("B")
        direct = self.direct_io and len(view) >= DIRECT_MIN
        try:
            try:
                fd = self._create(tmp, direct)
            except FileNotFoundError:
                # Never create the store root: if it is gone (a disk not mounted), writing
                # into the empty mountpoint below it would fill the wrong disk.
                if not self.root.is_dir():
                    raise StoreError(
                        f"store {self.url} is unavailable (directory missing)") from None
                os.makedirs(parent, exist_ok=True)
                fd = self._create(tmp, direct)
            try:
                if direct and self.direct_io:  # still on: _create may have turned it off
                    self._write_direct_or_fall_back(fd, view)
                else:
                    _write_all(fd, view)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error("write", name, e) from None

    def _write_direct_or_fall_back(self, fd: int, view: memoryview) -> None:
        try:
            _write_direct(fd, view)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # O_DIRECT opened but refused the write (alignment stricter than 4 KiB?):
            # buffered from the start, and from now on
            self.direct_io = False
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            _write_all(fd, view)

    def _create(self, tmp: str, direct: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        if direct:
            try:
                return os.open(tmp, flags | os.O_DIRECT, 0o600)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct_io = False  # this filesystem has no O_DIRECT
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # some filesystems create the file before refusing
        return os.open(tmp, flags, 0o600)

    def _delete_sync(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error("delete", name, e) from None

    def _delete_many_sync(self, names: list[str]) -> None:
        for name in names:
            self._delete_sync(name)

    def _list_sync(self) -> list[str]:
        names = []
        try:
            for sub in os.scandir(self._objects):
                if sub.is_dir(follow_symlinks=False):
                    names.extend(e.name for e in os.scandir(sub.path) if not e.name.startswith("."))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error("list", "objects", e) from None
        return names

    def _sync_sync(self) -> None:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise self._error("sync", "store", e) from None
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise StoreError(f"store {self.url}: sync failed: {os.strerror(err)}")
        finally:
            os.close(fd)

    def _check_sync(self, writable: bool) -> None:
        if not self.root.is_dir():
            raise StoreError(f"store {self.url} is missing or not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreError(f"store {self.url} is not readable")
        if writable:
            self._objects.mkdir(exist_ok=True)
            if not os.access(self._objects, os.W_OK) or not os.access(self.root, os.W_OK):
                raise StoreError(f"store {self.url} is read-only")

    # -- the async contract ------------------------------------------------------------
    async def get(self, name: str) -> bytes:
        # A read has no side effects: a caller that stops waiting (a hung disk) may leave
        # the thread behind instead of hanging with it.
        return await trio.to_thread.run_sync(self._get_sync, name, limiter=self._limiter,
                                             abandon_on_cancel=True)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await trio.to_thread.run_sync(self._get_range_sync, name, offset, length,
                                             limiter=self._limiter, abandon_on_cancel=True)

    async def put(self, name: str, data: bytes | memoryview) -> None:
        await self._run(self._put_sync, name, data)
        self._dirty = True  # after the put: sync() must cover it

    async def delete(self, name: str) -> None:
        await self._run(self._delete_sync, name)
        self._dirty = True

    async def delete_many(self, names: list[str]) -> None:
        await self._run(self._delete_many_sync, names)
        self._dirty = True

    async def list(self) -> list[str]:
        return await self._run(self._list_sync)

    async def sync(self) -> None:
        if self._dirty:
            self._dirty = False
            try:
                await self._run(self._sync_sync)
            except BaseException:
                self._dirty = True  # not synced: the next sync must try again
                raise

    async def check(self, writable: bool) -> None:
        try:
            await self._run(self._check_sync, writable)
        except OSError as e:
            raise StoreError(f"store {self.url}: {e.strerror}") from None

    async def space(self) -> tuple[int, int] | None:
        try:
            st = await self._run(os.statvfs, self.root)
        except OSError:
            return None
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
