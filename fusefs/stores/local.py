"""A store in a local directory (a disk, an NFS mount, ...).

Layout: ROOT/fusefs-store (marker) and ROOT/objects/<1 hex>/<name>. Puts write a temporary
file and rename it into place, so an object is never seen half-written. Durability is
batched: `sync` calls syncfs(2) on the store's filesystem once, instead of an fsync per
share (5 fsyncs per chunk would dominate write time).

Containment. The daemon runs as root, and whoever can write into a store directory (or
brings the disk) must not be able to make it create, read or delete files elsewhere. So no
path below the store root is ever followed through a symlink: every open is one openat2(2)
with RESOLVE_NO_SYMLINKS on the root's resolved path (on kernels without openat2, one
component at a time with O_NOFOLLOW), and creates, renames, unlinks and mkdirs act on a
single name relative to a directory fd opened that way. The configured root path is the
trust anchor: a symlink there (or above it) is the admin's and is resolved (see `_resolve`).

What is an object. Exactly a regular file objects/<d>/<name> whose name is lowercase hex
starting with <d>. `list` returns those and nothing else, and `delete` removes those and
nothing else, so the two always agree: anything misplaced (a symlink, a directory, a device
or FIFO, a file in the wrong fan-out directory, a temporary) is neither listed nor deleted.
Reading a name that is not such a file raises NoSuchObject: the volume rebuilds the share
from the other stores and heals it with a put, whose rename replaces whatever was in the way
(a rename over a symlink replaces the link, never its target; an empty directory is removed).

A symlinked (or otherwise non-directory) `objects` or fan-out directory is never traversed:
its objects read as missing, `list` skips the fan-out directory (and refuses when `objects`
itself is not a directory), and a put that needs it fails with a StoreError naming it (the
volume queues a repair and reports the store). Deleting or replacing it would discard what
someone deliberately put there; an admin has to look at it.

Temporaries a crashed writer left behind (`.tmp-*` regular files in the root and the fan-out
directories, invisible to `list`) are removed by `remove_stale_temporaries`: those that no
put of this process is writing (tracked by name, so a put stalled for minutes on a slow disk
keeps its file) and that were last written more than `older_than` seconds ago (which spares
the puts of another process using the store, such as an admin command).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import trio

from fusefs.errors import NoSuchObject, StoreError, StoreFull
from fusefs.mounts import may_hang
from fusefs.stores.base import FIXED_NAMES, Store
from fusefs.stores.fileio import (
    DIRECT_MIN,
    PackAppender,
    fill,
    read_whole,
    write_all,
    write_direct,
)
from fusefs.stores.nofollow import (
    OPENAT2,
    how,
    open_walk,
    openat2,
    raw_openat2,
    remove_stale,
    replace_in,
    unlink_regular,
)

_libc = ctypes.CDLL(None, use_errno=True)
_IO_THREADS = 8  # concurrent blocking calls per store
_ANNOUNCED_FDS = 64  # fds of announced objects kept for the read that follows (per store)
# Objects are spread over 16 directories by their first hex digit. Fewer, bigger directories
# mean fewer cold directory blocks to read: a cold open+read of a share took ~150-185 us
# with 256 directories, ~130 us with 16 (ext4, measured); htree directories stay fast with
# millions of entries.
FANOUT_DIGITS = 1
OBJECTS = "objects"
TMP_PREFIX = ".tmp-"  # temporaries of puts: dot-names, which `list` never returns
_OBJECT_NAME = re.compile(r"[0-9a-f]+")  # what keys.object_name makes (32 hex digits)
_NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR)  # a symlink (or a file) where a directory is
# Reading a non-regular file where an object should be (a directory, a FIFO, a socket): the
# object is not there.
_NOT_A_FILE = (errno.EISDIR, errno.ESPIPE, errno.ENXIO)

def is_object_name(name: str) -> bool:
    """Whether `name` can be a share object's name (lowercase hex)."""
    return _OBJECT_NAME.fullmatch(name) is not None


def object_relpath(name: str) -> str:
    """Where an object lives below the store root."""
    return f"{OBJECTS}/{name[:FANOUT_DIGITS]}/{name}"


T = TypeVar("T")
# Reads: O_NONBLOCK so that a FIFO planted where an object should be cannot hang the reader
# (its read then fails, like any bad share; no effect on regular files), O_NOCTTY so that a
# terminal planted there does not become the daemon's controlling terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
_READ_HOW = how(_READ_FLAGS, 0)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY  # a directory to create, rename or unlink in
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY  # a directory to read


def _fanout_dirs(objects: int) -> Iterator[tuple[str, int]]:
    """(name, readable fd) of each fan-out directory below the `objects` fd, opened one at
    a time (the caller closes each): real directories with a fan-out name only."""
    with os.scandir(objects) as entries:
        subs = sorted(e.name for e in entries
                      if len(e.name) == FANOUT_DIGITS and is_object_name(e.name)
                      and e.is_dir(follow_symlinks=False))
    for sub in subs:
        try:
            fd = os.open(sub, _LIST_FLAGS | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=objects)
        except OSError as e:
            if e.errno == errno.ENOENT or e.errno in _NOT_FOLLOWED:
                continue  # removed or swapped for a symlink meanwhile
            raise
        yield sub, fd


class LocalStore(Store):
    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        self._given = os.path.abspath(root)
        # The root's resolved path, found by the first operation (resolving may block on a
        # hung NFS server: not in the constructor). Every open below walks it again, so a
        # store directory removed, replaced or mounted over is noticed at once; an fd of the
        # root kept open would still point at the old directory.
        self._base: str | None = None
        self._objects_prefix: str | None = None  # f"{_base}/objects/", for the read path
        self._limiter = trio.CapacityLimiter(_IO_THREADS)
        self._dirty = False
        self._writing: set[str] = set()  # temporaries of puts in progress in this process
        # Objects announced (`will_need_blocking`) stay open for the read that follows it: a
        # small file's read otherwise opens its shares twice (perf: openat was ~10% of the
        # daemon's CPU on a loader's cold epoch). A name always holds the same bytes (names
        # are versioned); an fd that outlived a heal's replace reads the old file, which
        # the read's checksum catches like any damage. Popped atomically (threads too).
        self._announced: OrderedDict[str, int] = OrderedDict()
        self.get_blocking = self._get_sync
        self.get_range_blocking = self._get_range_sync
        self.will_need_blocking = self._will_need_sync
        self.read_into_blocking = self._read_into_sync
        self.put_blocking = self._put_blocking
        self.open_append_blocking = self._open_append
        self.inline_io = not may_hang(self.root)
        # off after the first EINVAL: filesystems without O_DIRECT (older tmpfs, some FUSE)
        self.direct_io = os.environ.get("FUSEFS_DIRECT_IO") != "0"

    def _put_blocking(self, name: str, data: bytes | memoryview) -> None:
        self._put_sync(name, data)
        self._dirty = True

    def _written(self) -> None:
        self._dirty = True

    def _open_append(self, name: str) -> PackAppender:
        """Create object `name` (it must not exist) to be written piece by piece."""
        if _OBJECT_NAME.fullmatch(name) is None:
            raise StoreError(f"store {self.url}: cannot write {name!r}: not an object name")
        parent = self._dir_fd(name)
        try:
            # O_EXCL never follows a symlink at the name; O_NOFOLLOW says so again
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent)
        except OSError as e:
            raise self._error("write", name, e) from None
        finally:
            os.close(parent)
        self._dirty = True
        return PackAppender(fd, name, self._error, self._written)

    # -- paths ---------------------------------------------------------------------------
    def _resolve(self) -> str:
        """The root's path with the admin's symlinks resolved (the root itself may be one):
        the walk below it then refuses every symlink. Resolved again when a walk fails or
        the store is checked, so a re-pointed root link is followed once the old target
        is gone."""
        base = self._base = os.path.realpath(self.root)
        self._objects_prefix = f"{base}/{OBJECTS}/"
        return base

    def _open_below(self, rel: str, flags: int, mode: int = 0) -> int:
        """An fd of ROOT/rel, no symlink followed on the way (OSError as the kernel says:
        ELOOP or ENOTDIR for a symlink)."""
        base = self._base or self._resolve()
        for retry in (True, False):
            try:
                if OPENAT2:
                    return openat2(f"{base}/{rel}", flags, mode)
                return open_walk(base, rel, flags, mode)
            except OSError as e:
                # The admin's symlinks in the root path may have changed: resolve it again
                # (only then, for a missing object: realpath costs a stat per component).
                if not (retry and (e.errno in _NOT_FOLLOWED or e.errno == errno.ENOENT
                                   and base != self._given)):
                    raise
                old, base = base, self._resolve()
                if base == old:
                    raise
        raise AssertionError("not reached")

    def _object_rel(self, name: str) -> str:
        if name in FIXED_NAMES:
            return name
        if _OBJECT_NAME.fullmatch(name) is None:  # no "/" or "..": the walk stays below
            raise NoSuchObject(f"store {self.url}: {name!r} is not an object name")
        return f"{OBJECTS}/{name[:FANOUT_DIGITS]}/{name}"

    def _dir_rel(self, name: str) -> str:
        """The directory an object (or the marker) lives in, below the root."""
        return "" if name in FIXED_NAMES else f"{OBJECTS}/{name[:FANOUT_DIGITS]}"

    def _missing_root(self) -> StoreError | None:
        if self.root.is_dir():
            return None
        return StoreError(f"store {self.url} is unavailable (directory missing)")

    def _layout_problem(self, rel_dir: str) -> str | None:
        """Which directory on the way to rel_dir is a symlink or no directory (error
        messages only: lstat, never following)."""
        base = self._base or self._resolve()
        parts = rel_dir.split("/") if rel_dir else []
        for n in range(1, len(parts) + 1):
            sub = "/".join(parts[:n])
            try:
                mode = os.lstat(f"{base}/{sub}").st_mode
            except OSError:
                return None
            if stat.S_ISLNK(mode):
                return f"{sub} is a symlink; not followed"
            if not stat.S_ISDIR(mode):
                return f"{sub} is not a directory"
        return None

    def _error(self, what: str, name: str, e: OSError) -> StoreError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreFull(f"store {self.url} is full (writing {name})")
        return StoreError(f"store {self.url}: cannot {what} {name}: {e.strerror}")

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- blocking parts, run in worker threads ------------------------------------------
    def _open(self, name: str) -> int:
        if OPENAT2 and self._objects_prefix and _OBJECT_NAME.fullmatch(name) is not None:
            # the hot path, one openat2 (_open_below inlined: it costs a microsecond more)
            fd = raw_openat2(f"{self._objects_prefix}{name[:FANOUT_DIGITS]}/{name}"
                             .encode("utf-8", "surrogateescape"), _READ_HOW)
            if fd >= 0:
                return fd
        # the marker, a failure (reported below), no openat2: the general way
        try:
            return self._open_below(self._object_rel(name), _READ_FLAGS)
        except OSError as e:
            raise self._read_error(name, e) from None

    def _read_error(self, name: str, e: OSError) -> StoreError:
        if e.errno == errno.ENOENT:
            # the whole store gone (an unmounted disk?) is not a missing object
            return self._missing_root() or NoSuchObject(
                f"store {self.url}: object {name} is missing")
        if e.errno in _NOT_FOLLOWED or e.errno in _NOT_A_FILE:
            return NoSuchObject(f"store {self.url}: object {name} is missing (no regular "
                                f"file reachable without symlinks: {e.strerror})")
        return self._error("read", name, e)

    def _will_need_sync(self, name: str, offset: int = 0, length: int = 0) -> None:
        kept = self._announced.get(name)
        if kept is not None:
            if length:  # another member of a pack: its own range
                with contextlib.suppress(OSError):
                    os.posix_fadvise(kept, offset, length, os.POSIX_FADV_WILLNEED)
            return
        try:
            fd = self._open(name)
        except StoreError:
            return  # the read that follows reports it
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            os.close(fd)
            return
        old = self._announced.pop(name, None)
        self._announced[name] = fd
        if old is not None:
            os.close(old)
        while len(self._announced) > _ANNOUNCED_FDS:
            with contextlib.suppress(KeyError):
                os.close(self._announced.popitem(last=False)[1])

    def _forget_announced(self, name: str) -> None:
        """`name` was replaced or deleted: a kept fd would read what was there before."""
        fd = self._announced.pop(name, None)
        if fd is not None:
            os.close(fd)

    async def close(self) -> None:
        """Close the fds kept for announced reads."""
        while self._announced:
            with contextlib.suppress(KeyError):
                os.close(self._announced.popitem()[1])

    def _read(self, name: str, use: Callable[[int], T]) -> T:
        """`use` applied to an open fd of the object; an OSError becomes a StoreError."""
        fd = self._announced.pop(name, None)
        if fd is None:
            fd = self._open(name)
        try:
            return use(fd)
        except OSError as e:
            raise self._read_error(name, e) from None
        finally:
            os.close(fd)

    def _read_into_sync(self, name: str, view: memoryview, offset: int = 0) -> int:
        return self._read(name, lambda fd: fill(fd, view, offset))

    def _get_range_sync(self, name: str, offset: int, length: int) -> bytes:
        # short only at the end of the object
        return self._read(name, lambda fd: os.pread(fd, length, offset))

    def _get_sync(self, name: str) -> bytes:
        return self._read(name, read_whole)

    def _dir_fd(self, name: str) -> int:
        """An O_PATH fd of the directory `name` is put in, created if missing (never the
        root itself, nor through a symlink)."""
        rel = self._dir_rel(name)
        try:
            return self._open_below(rel, _DIR_FLAGS)
        except FileNotFoundError:
            # Never create the store root: if it is gone (a disk not mounted), writing
            # into the empty mountpoint below it would fill the wrong disk.
            missing = self._missing_root()
            if missing is not None:
                raise missing from None
            try:
                self._make_dirs(rel)
                return self._open_below(rel, _DIR_FLAGS)
            except OSError as e:
                raise self._write_dir_error(name, rel, e) from None
        except OSError as e:
            raise self._write_dir_error(name, rel, e) from None

    def _make_dirs(self, rel: str) -> None:
        """mkdir each missing directory of rel, each relative to its (unfollowed) parent."""
        done = ""
        for part in rel.split("/"):
            parent = self._open_below(done, _DIR_FLAGS)
            try:
                os.mkdir(part, dir_fd=parent)
            except FileExistsError:
                pass  # made meanwhile; or a symlink, which the next open refuses
            finally:
                os.close(parent)
            done = f"{done}/{part}" if done else part

    def _write_dir_error(self, name: str, rel: str, e: OSError) -> StoreError:
        if e.errno in _NOT_FOLLOWED:
            problem = self._layout_problem(rel) or f"the way to {rel} is not a directory"
            return StoreError(f"store {self.url}: cannot write {name}: {problem}")
        return self._error("write", name, e)

    def _put_sync(self, name: str, data: bytes | memoryview) -> None:
        if name not in FIXED_NAMES and _OBJECT_NAME.fullmatch(name) is None:
            raise StoreError(f"store {self.url}: cannot write {name!r}: not an object name")
        view = memoryview(data).cast("B")
        direct = self.direct_io and len(view) >= DIRECT_MIN
        tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}"
        parent = self._dir_fd(name)
        self._writing.add(tmp)  # before it exists: remove_stale_temporaries never sees it
        try:
            fd = self._create(parent, tmp, direct)
            try:
                if direct and self.direct_io:  # still on: _create may have turned it off
                    self._write_direct_or_fall_back(fd, view)
                else:
                    write_all(fd, view)
            finally:
                os.close(fd)
            replace_in(parent, tmp, name)
            self._forget_announced(name)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise self._error("write", name, e) from None
        finally:
            self._writing.discard(tmp)
            os.close(parent)

    def _write_direct_or_fall_back(self, fd: int, view: memoryview) -> None:
        try:
            write_direct(fd, view)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # O_DIRECT opened but refused the write (alignment stricter than 4 KiB?):
            # buffered from the start, and from now on
            self.direct_io = False
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            write_all(fd, view)

    def _create(self, parent: int, tmp: str, direct: bool) -> int:
        # O_EXCL never follows a symlink at tmp; O_NOFOLLOW says so again
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        if direct:
            try:
                return os.open(tmp, flags | os.O_DIRECT, 0o600, dir_fd=parent)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct_io = False  # this filesystem has no O_DIRECT
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent)  # some create the file before refusing
        return os.open(tmp, flags, 0o600, dir_fd=parent)

    def _delete_sync(self, name: str) -> None:
        self._delete_many_sync([name])

    def _delete_many_sync(self, names: list[str]) -> None:
        """Remove what `list` would return of these names (regular files in their fan-out
        directory); anything else under those names is left alone."""
        by_dir: dict[str, list[str]] = {}
        for name in names:
            self._forget_announced(name)
            if _OBJECT_NAME.fullmatch(name) is not None:
                by_dir.setdefault(name[:FANOUT_DIGITS], []).append(name)
        for sub, group in by_dir.items():
            try:
                parent = self._open_below(f"{OBJECTS}/{sub}", _DIR_FLAGS)
            except OSError as e:
                if e.errno == errno.ENOENT or e.errno in _NOT_FOLLOWED:
                    continue  # nothing `list` would return is there
                raise self._error("delete", group[0], e) from None
            try:
                for name in group:
                    unlink_regular(parent, name)
            except OSError as e:
                raise self._error("delete", name, e) from None
            finally:
                os.close(parent)

    def _list_sync(self) -> list[str]:
        try:
            objects = self._open_below(OBJECTS, _LIST_FLAGS)
        except FileNotFoundError:
            return []
        except OSError as e:
            if e.errno in _NOT_FOLLOWED:
                raise StoreError(f"store {self.url}: cannot list objects: "
                                 f"{self._layout_problem(OBJECTS) or e.strerror}") from None
            raise self._error("list", OBJECTS, e) from None
        names: list[str] = []
        fullmatch = _OBJECT_NAME.fullmatch  # per entry: millions of them
        try:
            for sub, fd in _fanout_dirs(objects):
                try:
                    with os.scandir(fd) as entries:
                        names.extend(n for e in entries
                                      if (n := e.name).startswith(sub) and fullmatch(n)
                                      and e.is_file(follow_symlinks=False))
                finally:
                    os.close(fd)
        except OSError as e:
            raise self._error("list", OBJECTS, e) from None
        finally:
            os.close(objects)
        return names

    def _remove_stale_sync(self, older_than: float) -> int:
        """Remove `.tmp-*` regular files in the root and the fan-out directories that no
        put of this process is writing and that were last written over `older_than`
        seconds ago; how many. Only dot-names are looked at (no stat per object)."""
        missing = self._missing_root()
        if missing is not None:
            raise missing
        cutoff = time.time() - older_than
        try:
            root = self._open_below("", _LIST_FLAGS)  # the marker's puts
            try:
                removed = remove_stale(root, TMP_PREFIX, cutoff, self._writing)
            finally:
                os.close(root)
            try:
                objects = self._open_below(OBJECTS, _LIST_FLAGS)
            except OSError as e:
                if e.errno == errno.ENOENT or e.errno in _NOT_FOLLOWED:
                    return removed  # no fan-out directory of ours
                raise
            try:
                for _, fd in _fanout_dirs(objects):
                    try:
                        removed += remove_stale(fd, TMP_PREFIX, cutoff, self._writing)
                    finally:
                        os.close(fd)
            finally:
                os.close(objects)
        except OSError as e:
            raise self._error("remove temporaries in", "store", e) from None
        return removed

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
        self._resolve()  # the admin may have re-pointed a symlinked root
        if not self.root.is_dir():
            raise StoreError(f"store {self.url} is missing or not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreError(f"store {self.url} is not readable")
        if writable:
            # A symlinked `objects` passes here (refusing would refuse the whole mount);
            # puts into it fail, naming it.
            root = self._open_below("", _DIR_FLAGS)
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(OBJECTS, dir_fd=root)
                if not (os.access(self.root, os.W_OK) and os.access(
                        OBJECTS, os.W_OK, dir_fd=root, follow_symlinks=False)):
                    raise StoreError(f"store {self.url} is read-only")
            finally:
                os.close(root)

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

    async def remove_stale_temporaries(self, older_than: float) -> int:
        removed = await self._run(self._remove_stale_sync, older_than)
        if removed:
            self._dirty = True
        return removed

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
