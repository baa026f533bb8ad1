"""The only pyfuse3 importer: translates kernel requests to `FileSystem` calls.

It decides nothing. Every handler lets `FsError` out as `FUSEError(errno)` and turns any
other exception into EIO after logging it: pyfuse3 lets only `FUSEError` out of a handler,
and anything else aborts the whole mount ("Software caused connection abort" for every
caller). `forget` never raises.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any

import pyfuse3

from fusefs import metrics
from fusefs.errors import FsError
from fusefs.kernelcache import DEFAULT, KernelCache
from fusefs.meta.repo import InodeRow
from fusefs.vfs import FileSystem

log = logging.getLogger(__name__)

# The patched pyfuse3 (patches/pyfuse3-*.patch) hands a read without a file handle (fh 0:
# the kernel's no-open mode) to `read_noopen(inode, off, size)`; the stock build only has
# `read(fh, ...)`, which cannot tell the file, so no-open mode needs the patch.
READ_BY_INODE = hasattr(pyfuse3.Operations, "read_noopen")
_READDIR_BATCH = 32  # a readdirplus reply (one page) holds ~24 entries: fetch little more
_OP_NAMES = {"read_noopen": "read"}  # metrics name the kernel's opcode, not the method


def translate(fn: Callable[..., Any]) -> Callable[..., Any]:
    op = _OP_NAMES.get(fn.__name__, fn.__name__)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = metrics.fuse_started()
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError as e:
            metrics.fuse_error(op, e.errno)
            raise
        except FsError as e:
            metrics.fuse_error(op, e.errno)
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("internal error in %s", op)
            metrics.fuse_error(op, errno.EIO)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            metrics.fuse_done(op, t0)

    return wrapper


class FuseOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem, cache: KernelCache = DEFAULT) -> None:
        super().__init__()
        self.fs = fs
        self.cache = cache  # what the kernel may cache and skip (decided by `mount`)
        self.blksize = fs.volume.config.chunk_size

    def entry(self, row: InodeRow) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = row.id
        e.generation = 0
        e.entry_timeout = self.cache.entry_timeout
        e.attr_timeout = self.cache.attr_timeout
        e.st_mode = row.mode
        e.st_nlink = row.nlink
        e.st_uid = row.uid
        e.st_gid = row.gid
        e.st_rdev = row.rdev
        e.st_size = row.size
        e.st_blksize = self.blksize
        e.st_blocks = (row.size + 511) // 512
        e.st_atime_ns = row.atime_ns
        e.st_mtime_ns = row.mtime_ns
        e.st_ctime_ns = row.ctime_ns
        return e

    @translate
    async def lookup(self, parent_inode, name, ctx=None):
        return self.entry(self.fs.lookup(parent_inode, name))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            try:
                self.fs.forget(ino, count)
            except Exception:
                log.exception("forget of inode %d failed", ino)

    @translate
    async def getattr(self, inode, ctx=None):
        return self.entry(self.fs.attr(inode))

    @translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        row = await self.fs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.entry(row)

    @translate
    async def readlink(self, inode, ctx):
        return self.fs.readlink(inode)

    @translate
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self.entry(self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid))

    @translate
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.entry(self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @translate
    async def unlink(self, parent_inode, name, ctx):
        self.fs.unlink(parent_inode, name)

    @translate
    async def rmdir(self, parent_inode, name, ctx):
        self.fs.rmdir(parent_inode, name)

    @translate
    async def symlink(self, parent_inode, name, target, ctx):
        return self.entry(self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @translate
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @translate
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.entry(self.fs.link(inode, new_parent_inode, new_name))

    @translate
    async def open(self, inode, flags, ctx):
        if not self.cache.open:
            # no-open mode: the kernel takes ENOSYS as "open always succeeds", keeps the
            # page cache, sends no OPEN or RELEASE again, and reads with fh 0
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @translate
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, row = await self.fs.create(parent_inode, name, mode, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self.entry(row)

    @translate
    async def read(self, fh, off, size):
        data = await self.fs.read(fh, off, size)
        metrics.bytes_read(len(data))
        return data

    @translate
    async def read_noopen(self, inode, off, size):
        data = await self.fs.read_inode(inode, off, size)
        metrics.bytes_read(len(data))
        return data

    @translate
    async def write(self, fh, off, buf):
        n = await self.fs.write(fh, off, buf)
        metrics.bytes_written(n)
        return n

    @translate
    async def flush(self, fh):
        if not self.cache.flush:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # nothing to commit: never sent again
        await self.fs.flush(fh)

    @translate
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @translate
    async def release(self, fh):
        await self.fs.release(fh)

    @translate
    async def opendir(self, inode, ctx):
        return self.fs.opendir(inode)

    @translate
    async def readdir(self, fh, start_id, token):
        after = start_id
        while True:
            batch = self.fs.readdir(fh, after, _READDIR_BATCH)
            for cookie, name, row in batch:
                if not pyfuse3.readdir_reply(token, name, self.entry(row), cookie):
                    return
                self.fs.remember(row.id)
                after = cookie
            if len(batch) < _READDIR_BATCH:
                return

    @translate
    async def releasedir(self, fh):
        return None

    @translate
    async def fsyncdir(self, fh, datasync):
        await self.fs.volume.make_durable()

    @translate
    async def statfs(self, ctx):
        total, free = await self.fs.volume.space()
        st = pyfuse3.StatvfsData()
        st.f_bsize = self.blksize
        st.f_frsize = 4096
        st.f_blocks = total // st.f_frsize
        st.f_bfree = free // st.f_frsize
        st.f_bavail = st.f_bfree
        st.f_files = self.fs.meta.inode_count() + 1_000_000
        st.f_ffree = 1_000_000
        st.f_favail = st.f_ffree
        st.f_namemax = 255
        return st

    @translate
    async def getxattr(self, inode, name, ctx):
        if not self.cache.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # none exist: never sent again
        return self.fs.getxattr(inode, name)

    @translate
    async def setxattr(self, inode, name, value, ctx):
        self.fs.setxattr(inode, name, value)

    @translate
    async def listxattr(self, inode, ctx):
        if not self.cache.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return self.fs.listxattr(inode)

    @translate
    async def removexattr(self, inode, name, ctx):
        self.fs.removexattr(inode, name)

    @translate
    async def access(self, inode, mode, ctx):
        self.fs.attr(inode)  # default_permissions: the kernel checks the mode bits
        return True


def mount_options(fsname: str, *, read_only: bool, allow_other: bool) -> set[str]:
    """libfuse options: fsname tells `fusefs umount`/`status` which volume a mount is."""
    escaped = fsname.replace("\\", "\\\\").replace(",", "\\,")
    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts |= {f"fsname={escaped}", "subtype=fusefs", "default_permissions", "noatime"}
    if read_only:
        opts.add("ro")
    if allow_other:
        opts.add("allow_other")
    return opts
