#!/usr/bin/env python3
"""A minimal pyfuse3 + trio pass-through filesystem: the ceiling of a Python FUSE daemon.

    passthrough.py SOURCE MOUNTPOINT

Mirrors SOURCE at MOUNTPOINT in the foreground until it is unmounted (fusermount3 -u, or
SIGINT/SIGTERM). It exists for scripts/bench only, as a ceiling, not a product: the stack of
fusefs (pyfuse3 and trio in one Python process) with no encryption, erasure coding or
metadata database, so where it misses a figure, a pyfuse3 + trio daemon of this design
cannot reach it on the machine. Every os call runs inline on the trio thread, blocking it,
as in the simplest pyfuse3 daemons: no worker threads, so cold disk reads are not
overlapped (fusefs does the same for small I/O on local disks and uses worker threads for
whole big chunks). Mount options, entry and attribute
timeouts, keep_cache and the 4 MiB readahead (root only) are those of fusefs.

Left out: rename, links, symlinks, xattrs; one path per inode (the source's st_ino); new
files belong to the daemon's user (without allow_other nobody else can use the mount).
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fusefs.mounts import mounted_at  # the project's one mount-table reader

Ctx = pyfuse3.RequestContext
Entry = pyfuse3.EntryAttributes

TIMEOUT = 10.0  # entry and attribute timeouts, as fusefs
READAHEAD_KIB = 4096  # as fusefs, raised once the kernel's INIT has been answered


def oserror_to_fuse(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    return wrapper


class Passthrough(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self.root_ino = os.lstat(source).st_ino
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.lookups: dict[int, int] = {}
        self.dirs: dict[int, tuple[str, list[str]]] = {}
        self.next_dir = 1

    def _attr(self, path: str) -> Entry:
        st = os.lstat(path)
        e = Entry()
        e.st_ino = pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino
        e.generation = 0
        e.entry_timeout = e.attr_timeout = TIMEOUT
        e.st_mode, e.st_nlink, e.st_uid, e.st_gid = st.st_mode, st.st_nlink, st.st_uid, st.st_gid
        e.st_rdev, e.st_size, e.st_blksize, e.st_blocks = (st.st_rdev, st.st_size,
                                                           st.st_blksize, st.st_blocks)
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return e

    def _remember(self, path: str, e: Entry) -> Entry:
        """The kernel holds one more reference to inode E.st_ino, which is at PATH."""
        self.paths[e.st_ino] = path
        self.lookups[e.st_ino] = self.lookups.get(e.st_ino, 0) + 1
        return e

    def _entry(self, path: str) -> Entry:
        return self._remember(path, self._attr(path))

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self.paths[parent], os.fsdecode(name))

    @oserror_to_fuse
    async def lookup(self, parent_inode: int, name: bytes, ctx: Ctx) -> Entry:
        return self._entry(self._child(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            elif ino != pyfuse3.ROOT_INODE:
                self.lookups.pop(ino, None)
                self.paths.pop(ino, None)

    @oserror_to_fuse
    async def getattr(self, inode: int, ctx: Ctx) -> Entry:
        return self._attr(self.paths[inode])

    @oserror_to_fuse
    async def setattr(self, inode: int, attr: Entry, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: Ctx) -> Entry:
        path = self.paths[inode]
        if fields.update_size:
            os.truncate(fh if fh is not None else path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, attr.st_mode & 0o7777)
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        return self._attr(path)

    @oserror_to_fuse
    async def opendir(self, inode: int, ctx: Ctx) -> int:
        fh, self.next_dir = self.next_dir, self.next_dir + 1
        self.dirs[fh] = (self.paths[inode], sorted(os.listdir(self.paths[inode])))
        return fh

    @oserror_to_fuse
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        parent, names = self.dirs[fh]  # the listing taken at opendir: stable offsets
        for i in range(start_id, len(names)):
            path = os.path.join(parent, names[i])
            try:
                e = self._attr(path)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]), e, i + 1):
                return
            self._remember(path, e)  # readdirplus: the kernel now holds a reference

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @oserror_to_fuse
    async def open(self, inode: int, flags: int, ctx: Ctx) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=os.open(self.paths[inode], flags), keep_cache=True)

    @oserror_to_fuse
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Ctx) -> tuple[pyfuse3.FileInfo, Entry]:
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT, mode)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._entry(path)

    @oserror_to_fuse
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @oserror_to_fuse
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def flush(self, fh: int) -> None:
        return None  # every write went straight to the source file

    @oserror_to_fuse
    async def fsync(self, fh: int, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    @oserror_to_fuse
    async def release(self, fh: int) -> None:
        os.close(fh)

    @oserror_to_fuse
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Ctx) -> Entry:
        path = self._child(parent_inode, name)
        os.mkdir(path, mode)
        return self._entry(path)

    @oserror_to_fuse
    async def unlink(self, parent_inode: int, name: bytes, ctx: Ctx) -> None:
        os.unlink(self._child(parent_inode, name))

    @oserror_to_fuse
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Ctx) -> None:
        os.rmdir(self._child(parent_inode, name))

    @oserror_to_fuse
    async def statfs(self, ctx: Ctx) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        st = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
            setattr(st, field, getattr(sv, field))
        return st


async def raise_readahead(mountpoint: str) -> None:
    """After INIT (a stat from a thread returns only then), as fusefs: best effort."""
    try:
        await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
        entry = mounted_at(mountpoint)
        if entry is not None:
            Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb").write_text(f"{READAHEAD_KIB}\n")
    except OSError as e:
        print(f"passthrough: readahead not raised: {e}", file=sys.stderr)


async def serve(mountpoint: str) -> bool:
    """Serve until unmounted (False) or until SIGINT/SIGTERM (True: unmount on the way out)."""
    signalled = False

    async def stop_on_signal() -> None:
        nonlocal signalled
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                signalled = True
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(raise_readahead, mountpoint)
        nursery.start_soon(stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    return signalled


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: passthrough.py SOURCE MOUNTPOINT", file=sys.stderr)
        return 2
    source, mountpoint = (os.path.abspath(a) for a in argv)
    opts = set(pyfuse3.default_options) | {
        f"fsname=passthrough:{source.replace(',', '_')}", "subtype=passthrough",
        "default_permissions", "noatime"}
    pyfuse3.init(Passthrough(source), mountpoint, opts)
    try:
        signalled = trio.run(serve, mountpoint)
    except BaseException:
        pyfuse3.close(unmount=True)  # failed: take the mount down with us
        raise
    pyfuse3.close(unmount=signalled)  # after fusermount3 -u the kernel has unmounted us
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
