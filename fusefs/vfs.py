"""POSIX semantics in plain Python: names, inodes, links, attributes, open files.

Every method raises `FsError(errno)` the way ext4 would; the FUSE adapter only translates.
Lookup counts follow the kernel's: an unlinked inode lives on until the kernel forgets it
and no handle is open, so open-then-unlink keeps working.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from dataclasses import replace

import trio

from fusefs.errors import FsError, StoreError
from fusefs.filedata import ChunkCache, FileData, Flusher, Handle
from fusefs.meta.repo import ROOT_INODE, InodeRow, MetaRepo
from fusefs.meta.txn import PENDING_MAX
from fusefs.volume import Volume
from fusefs.xattrfs import ExtendedAttributes

log = logging.getLogger(__name__)

NAME_MAX = 255
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
DEFAULT_CACHE_BYTES = 64 << 20
_LOOKED_UP_MAX = 256  # rows kept for an open that follows their lookup
# Dataset mode (a read-only mount: the metadata changes only at a follower's snapshot switch)
_ROWS_MAX = 1 << 16  # inode rows kept for opens (~300 bytes each)
_READERS_MAX = 1024  # files read without an open (no-open mode), their chunk rows memoised
_SERVED_MAX = 1 << 20  # files whose bytes the kernel has cached (keep_cache): not announced


class FileSystem(ExtendedAttributes):
    def __init__(self, meta: MetaRepo, volume: Volume, *, read_only: bool = False,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, pin: bool = False,
                 dataset: bool = False) -> None:
        self.meta = meta
        self.volume = volume
        self.read_only = read_only
        self.pin = pin  # a follower: open files keep the chunk map they opened with
        # Dataset mode: the metadata cannot change except at `switched()` (a read-only mount
        # holds the volume lock, heals rewrite shares with the same bytes), so inode and chunk
        # rows read once are kept until then. Never on a writable mount.
        self.dataset = dataset and read_only
        self._rows: dict[int, InodeRow] = {}
        self._readers: OrderedDict[int, FileData] = OrderedDict()
        self._served: set[int] = set()  # read whole once: the kernel keeps the pages
        self.announce_reads = os.environ.get("FUSEFS_ANNOUNCE_READS", "1") != "0"  # A/B
        self.cache = ChunkCache(cache_bytes)
        self.flusher = Flusher()
        self.lookups: dict[int, int] = {}
        self.handles: dict[int, Handle] = {}
        self.files: dict[int, FileData] = {}
        self._next_fh = 1
        self._any_xattrs = meta.has_xattrs()  # none: getxattr answers without a query
        # The kernel opens a file right after looking it up: open reuses the row that lookup
        # read instead of querying it again, but only while `meta.total_changes()` still
        # equals `_looked_up_gen`. We hold the only connection that writes the volume while
        # it is mounted (the volume lock), and every INSERT/UPDATE/DELETE through it bumps
        # the counter (a rolled-back one too), so an unchanged counter proves the row
        # unchanged. The rows are read-only snapshots (`_overlay` copies before changing).
        self._looked_up: dict[int, InodeRow] = {}
        self._looked_up_gen = -1
        self.commit_soon = trio.Event()  # set when a change is left pending (run_commits)

    # -- helpers -------------------------------------------------------------------------
    def _inode(self, ino: int) -> InodeRow:
        row = self.meta.get_inode(ino)
        if row is None:
            fd = self.files.get(ino)
            if fd is not None and fd.pinned_inode is not None:
                return fd.pinned_inode  # a follower's open file, gone from the snapshot
            raise FsError(errno.ENOENT)
        return row

    def attr(self, ino: int) -> InodeRow:
        """Attributes as the kernel should see them (in-memory size of open files)."""
        return self._overlay(self._inode(ino))

    def _overlay(self, row: InodeRow) -> InodeRow:
        fd = self.files.get(row.id)
        if fd is not None:
            row = replace(row, size=fd.size)
            if fd.mtime_ns is not None:
                row.mtime_ns = fd.mtime_ns
                row.ctime_ns = fd.ctime_ns or fd.mtime_ns
        return row

    def _dir(self, ino: int) -> InodeRow:
        row = self._inode(ino)
        if not stat.S_ISDIR(row.mode):
            raise FsError(errno.ENOTDIR)
        return row

    def _writable(self) -> None:
        if self.read_only or self.volume.fenced:
            raise FsError(errno.EROFS)

    def writing_inodes(self) -> set[int]:
        """Files open for writing or with data not yet committed (a snapshot shows them as
        they were before: never half-written)."""
        busy = {h.ino for h in self.handles.values() if h.writable}
        return busy | {fd.ino for fd in self.files.values()
                       if fd.dirty or fd.inflight or fd.mtime_ns is not None}

    def switched(self) -> None:
        """The metadata was replaced by a newer snapshot (a follower): forget what was read
        from the old one."""
        self._looked_up.clear()
        self._looked_up_gen = -1
        self._any_xattrs = self.meta.has_xattrs()
        self._rows.clear()
        self._readers.clear()
        self._served.clear()

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or name in (b".", b".."):
            raise FsError(errno.EINVAL)

    def _remember(self, ino: int) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    def _touch_dir(self, ino: int) -> None:
        now = time.time_ns()
        self.meta.update_inode(ino, mtime_ns=now, ctime_ns=now)

    # -- lookups and attributes ----------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> InodeRow:
        """One query when the name exists: a dentry's parent is always a directory, so
        the parent is only checked (ENOENT/ENOTDIR) when the name is not found."""
        if name != b"." and name != b"..":
            row = self.meta.lookup_inode(parent, name)
            if row is None:
                self._dir(parent)
                if len(name) > NAME_MAX:
                    raise FsError(errno.ENAMETOOLONG)
                raise FsError(errno.ENOENT)
            if self.dataset:
                self._keep_row(row)
                self._remember(row.id)
                return self._overlay(row)
            gen = self.meta.total_changes()
            if gen != self._looked_up_gen or len(self._looked_up) >= _LOOKED_UP_MAX:
                self._looked_up.clear()
                self._looked_up_gen = gen
            self._looked_up[row.id] = row
            self._remember(row.id)
            return self._overlay(row)
        self._dir(parent)
        if name == b".":
            ino = parent
        else:
            entry = self.meta.parent_of(parent)
            ino = entry[0] if entry else ROOT_INODE
        row = self.attr(ino)
        self._remember(ino)
        return row

    def forget(self, ino: int, count: int) -> None:
        left = self.lookups.get(ino, 0) - count
        if left > 0:
            self.lookups[ino] = left
            return
        self.lookups.pop(ino, None)
        self._maybe_delete(ino)

    def _maybe_delete(self, ino: int) -> None:
        if ino in self.lookups or ino in self.files or ino == ROOT_INODE:
            return
        row = self.meta.get_inode(ino)
        if row is not None and row.nlink == 0:
            self.meta.delete_inode(ino)

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None) -> InodeRow:
        self._writable()
        row = self._inode(ino)
        now = time.time_ns()
        if size is not None:
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR)
            if not stat.S_ISREG(row.mode):
                raise FsError(errno.EINVAL)
            await self._truncate(row, size)
        fields: dict[str, int] = {}
        if mode is not None:
            fields["mode"] = stat.S_IFMT(row.mode) | stat.S_IMODE(mode)
        if uid is not None:
            fields["uid"] = uid
        if gid is not None:
            fields["gid"] = gid
        if atime_ns is not None:
            fields["atime_ns"] = atime_ns
        if mtime_ns is not None:
            fields["mtime_ns"] = mtime_ns
            fd = self.files.get(ino)
            if fd is not None and fd.mtime_ns is not None:
                fd.mtime_ns, fd.ctime_ns = mtime_ns, now
        if fields or size is not None:
            fields["ctime_ns"] = now
            self.meta.update_inode(ino, **fields)
            self.meta.commit_pending()
        return self.attr(ino)

    async def _truncate(self, row: InodeRow, size: int) -> None:
        fd = self.files.get(row.id)
        if fd is not None:
            await fd.truncate(size)
            return
        fd = self._file_data(row)
        try:
            await fd.truncate(size)
            await fd.flush(durable=False)
        finally:
            self._drop_file_data(fd)

    def readlink(self, ino: int) -> bytes:
        row = self._inode(ino)
        if not stat.S_ISLNK(row.mode):
            raise FsError(errno.EINVAL)
        return row.target or b""

    # -- creating and removing names -----------------------------------------------------
    def _new_inode(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                   target: bytes | None = None, rdev: int = 0, *,
                   defer: bool = False) -> InodeRow:
        """`defer`: the rows may wait for the next commit (a created file's close)."""
        self._writable()
        self._check_name(name)
        self._dir(parent)
        is_dir = stat.S_ISDIR(mode)
        if defer:
            self.commit_soon.set()
        with self.meta.deferred() if defer else self.meta.transaction():
            row = self.meta.create_inode(os.urandom(16), mode, uid, gid, 2 if is_dir else 1,
                                         time.time_ns(), target, rdev)
            try:
                self.meta.add_dentry(parent, name, row.id)
            except FileExistsError:
                raise FsError(errno.EEXIST) from None
            if is_dir:
                self.meta.add_nlink(parent, 1)
            self._touch_dir(parent)
        self._remember(row.id)
        return row

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int,
              gid: int) -> InodeRow:
        return self._new_inode(parent, name, mode, uid, gid, rdev=rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> InodeRow:
        return self._new_inode(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int,
                gid: int) -> InodeRow:
        return self._new_inode(parent, name, stat.S_IFLNK | 0o777, uid, gid, target=target)

    def link(self, ino: int, parent: int, name: bytes) -> InodeRow:
        self._writable()
        self._check_name(name)
        row = self._inode(ino)
        if stat.S_ISDIR(row.mode):
            raise FsError(errno.EPERM)
        self._dir(parent)
        if self.meta.lookup(parent, name) is not None:
            raise FsError(errno.EEXIST)
        with self.meta.transaction():
            self.meta.add_dentry(parent, name, ino)
            self.meta.update_inode(ino, nlink=row.nlink + 1, ctime_ns=time.time_ns())
            self._touch_dir(parent)
        self._remember(ino)
        return self.attr(ino)

    def _drop_link(self, row: InodeRow) -> None:
        """One name of `row` is gone (inside a transaction)."""
        nlink = 0 if stat.S_ISDIR(row.mode) else row.nlink - 1
        self.meta.update_inode(row.id, nlink=nlink, ctime_ns=time.time_ns())

    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        self._dir(parent)
        ino = self.meta.lookup(parent, name)
        if ino is None:
            raise FsError(errno.ENOENT)
        row = self._inode(ino)
        if stat.S_ISDIR(row.mode):
            raise FsError(errno.EISDIR)
        with self.meta.transaction():
            self.meta.remove_dentry(parent, name)
            self._drop_link(row)
            self._touch_dir(parent)
        self._maybe_delete(ino)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        self._dir(parent)
        if name == b".":
            raise FsError(errno.EINVAL)
        ino = self.meta.lookup(parent, name)
        if ino is None:
            raise FsError(errno.ENOENT)
        row = self._dir(ino)
        if self.meta.has_children(ino):
            raise FsError(errno.ENOTEMPTY)
        with self.meta.transaction():
            self.meta.remove_dentry(parent, name)
            self._drop_link(row)
            self.meta.add_nlink(parent, -1)
            self._touch_dir(parent)
        self._maybe_delete(ino)

    def _is_ancestor(self, ino: int, of: int) -> bool:
        while of != ROOT_INODE:
            if of == ino:
                return True
            entry = self.meta.parent_of(of)
            if entry is None:
                return False
            of = entry[0]
        return ino == ROOT_INODE

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0) -> None:
        self._writable()
        self._check_name(n2)
        self._dir(p1)
        self._dir(p2)
        ino = self.meta.lookup(p1, n1)
        if ino is None:
            raise FsError(errno.ENOENT)
        src = self._inode(ino)
        target = self.meta.lookup(p2, n2)
        if flags & RENAME_NOREPLACE and target is not None:
            raise FsError(errno.EEXIST)
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FsError(errno.ENOENT)
            self._exchange(p1, n1, src, p2, n2, self._inode(target))
            return
        if target == ino:
            return
        src_dir = stat.S_ISDIR(src.mode)
        if src_dir and p1 != p2 and self._is_ancestor(ino, p2):
            raise FsError(errno.EINVAL)
        tgt = self._inode(target) if target is not None else None
        if tgt is not None:
            tgt_dir = stat.S_ISDIR(tgt.mode)
            if src_dir and not tgt_dir:
                raise FsError(errno.ENOTDIR)
            if tgt_dir and not src_dir:
                raise FsError(errno.EISDIR)
            if tgt_dir and self.meta.has_children(tgt.id):
                raise FsError(errno.ENOTEMPTY)
        with self.meta.transaction():
            if tgt is not None:
                self.meta.remove_dentry(p2, n2)
                self._drop_link(tgt)
                if stat.S_ISDIR(tgt.mode):
                    self.meta.add_nlink(p2, -1)
            self.meta.move_dentry(p1, n1, p2, n2)
            if src_dir and p1 != p2:
                self.meta.add_nlink(p1, -1)
                self.meta.add_nlink(p2, 1)
            self.meta.update_inode(ino, ctime_ns=time.time_ns())
            self._touch_dir(p1)
            if p2 != p1:
                self._touch_dir(p2)
        if tgt is not None:
            self._maybe_delete(tgt.id)

    def _exchange(self, p1: int, n1: bytes, a: InodeRow, p2: int, n2: bytes,
                  b: InodeRow) -> None:
        a_dir, b_dir = stat.S_ISDIR(a.mode), stat.S_ISDIR(b.mode)
        if p1 != p2 and ((a_dir and self._is_ancestor(a.id, p2))
                         or (b_dir and self._is_ancestor(b.id, p1))):
            raise FsError(errno.EINVAL)
        with self.meta.transaction():
            self.meta.set_dentry_inode(p1, n1, b.id)
            self.meta.set_dentry_inode(p2, n2, a.id)
            if p1 != p2 and a_dir != b_dir:
                delta = 1 if a_dir else -1  # a moves to p2, b moves to p1
                self.meta.add_nlink(p1, -delta)
                self.meta.add_nlink(p2, delta)
            now = time.time_ns()
            for ino in (a.id, b.id):
                self.meta.update_inode(ino, ctime_ns=now)
            self._touch_dir(p1)
            self._touch_dir(p2)

    # -- directories ---------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        self._dir(ino)
        return ino

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, InodeRow]]:
        """Up to `limit` entries with cookie > after; the caller counts lookups. In dataset
        mode the rows are kept: a loader lists its tree (ImageFolder) and then reads every
        file by inode, with no lookup in between to read the row again."""
        entries = self.meta.readdir(ino, after, limit)
        if self.dataset:
            for _, _, r in entries:
                self._keep_row(r)
        return [(c, n, self._overlay(r)) for c, n, r in entries]

    def remember(self, ino: int) -> None:
        """The kernel took a reference through readdirplus."""
        self._remember(ino)

    # -- open files ----------------------------------------------------------------------
    def _new_file_data(self, row: InodeRow) -> FileData:
        fd = FileData(row.id, row.file_id, row.size, self.meta, self.volume, self.cache,
                      self.flusher)
        if self.pin:
            fd.pin(row)
        elif self.dataset:
            fd.memoise_rows()
        return fd

    def _file_data(self, row: InodeRow) -> FileData:
        fd = self.files.get(row.id)
        if fd is None:
            fd = self.files[row.id] = self._new_file_data(row)
        fd.opens += 1
        return fd

    def _drop_file_data(self, fd: FileData) -> None:
        fd.opens -= 1
        if fd.opens == 0 and not fd.dirty and not fd.inflight:
            del self.files[fd.ino]
            self._maybe_delete(fd.ino)

    def _keep_row(self, row: InodeRow) -> None:
        if len(self._rows) >= _ROWS_MAX:
            self._rows.clear()
        self._rows[row.id] = row

    def _row_for_open(self, ino: int) -> InodeRow:
        """The row `lookup` just read if no row changed since, else a query. In dataset
        mode, any row read since the last snapshot switch."""
        if self.dataset:
            row = self._rows.get(ino)
            if row is None:
                row = self._inode(ino)
                self._keep_row(row)
            return row
        row = self._looked_up.pop(ino, None)
        if row is None or self._looked_up_gen != self.meta.total_changes():
            return self._inode(ino)
        return row

    async def open(self, ino: int, flags: int) -> int:
        return await self._open_row(self._row_for_open(ino), flags)

    async def _open_row(self, row: InodeRow, flags: int) -> int:
        ino = row.id
        if stat.S_ISDIR(row.mode):
            raise FsError(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._writable()
        fd = self._file_data(row)
        if flags & os.O_TRUNC and writable:
            try:
                await fd.truncate(0)
            except BaseException:
                self._drop_file_data(fd)
                raise
        if not writable and 0 < fd.size <= fd.cs and fd.opens == 1 \
                and ino not in self._served:
            chunk = fd.row(0)
            if chunk is not None and self.cache.get((ino, 0, chunk.oid)) is None:
                self.volume.announce(chunk)
            if self.dataset:  # keep_cache: the next open of it finds the pages cached
                if len(self._served) >= _SERVED_MAX:
                    self._served.clear()
                self._served.add(ino)
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, fd, writable)
        return fh

    async def create(self, parent: int, name: bytes, mode: int, flags: int, uid: int,
                     gid: int) -> tuple[int, InodeRow]:
        row = self._new_inode(parent, name, stat.S_IFREG | stat.S_IMODE(mode), uid, gid,
                              defer=True)
        fh = await self._open_row(row, flags & ~os.O_TRUNC)  # (the row is new: no query)
        return fh, self._overlay(row)

    def _handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        return await self._handle(fh).data.read(off, size)

    async def read_inode(self, ino: int, off: int, size: int) -> bytes | memoryview:
        """A read without an open (no-open mode, dataset mode only): the file's data and
        chunk rows are kept for the next reads of it, a bounded number of files."""
        if not self.dataset or self.pin:
            raise FsError(errno.EBADF)  # no-open mode is never chosen for these
        fd = self._readers.get(ino)
        if fd is None:
            row = self._row_for_open(ino)
            if not stat.S_ISREG(row.mode):
                raise FsError(errno.EISDIR if stat.S_ISDIR(row.mode) else errno.EINVAL)
            fd = self._readers[ino] = self._new_file_data(row)
            if len(self._readers) > _READERS_MAX:
                self._readers.popitem(last=False)
            if off == 0 and 0 < fd.size <= fd.cs and self.announce_reads:
                # No OPEN came to announce the shares ahead of this read: announce them
                # now and let the other readers' requests in (they announce theirs), so
                # the disk works on all of them while we read one after the other.
                chunk = fd.row(0)
                if chunk is not None and self.cache.get((ino, 0, chunk.oid)) is None:
                    self.volume.announce(chunk)
                    await trio.lowlevel.checkpoint()
        else:
            self._readers.move_to_end(ino)
        return await fd.read(off, size)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise FsError(errno.EBADF)
        self._writable()  # the volume may have been fenced since the open
        return await h.data.write(off, data)

    async def flush(self, fh: int) -> None:
        """close(2): everything written is stored and committed (survives kill -9 and the
        loss of M stores); power-loss durability follows within DURABILITY_INTERVAL."""
        await self._handle(fh).data.flush(durable=False)
        self.meta.commit_pending()  # a created file exists once closed, even if empty

    async def fsync(self, fh: int) -> None:
        """fsync(2): also synced to stable storage in every store and the metadata."""
        await self._handle(fh).data.flush(durable=True)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        try:
            await h.data.flush(durable=False)
        except FsError:
            if h.data.opens == 1:
                # The last close failed (stores full or gone): like a page-cache writeback
                # error, the unwritable bytes are dropped rather than pinned forever.
                log.error("dropping unwritable data of inode %d", h.ino)
                h.data.discard_dirty()
            raise
        finally:
            self._drop_file_data(h.data)
        self.meta.commit_pending()

    # -- volume-wide ---------------------------------------------------------------------
    async def run_commits(self) -> None:
        """Daemon task: what a create left pending (`meta.deferred`) is committed within
        PENDING_MAX seconds, open file or not (for other readers: the direct API)."""
        while True:
            await self.commit_soon.wait()
            self.commit_soon = trio.Event()
            await trio.sleep(PENDING_MAX)
            self.meta.commit_pending()

    async def shutdown(self) -> None:
        """At unmount: flush what is still open, forget every reference, collect garbage."""
        for fd in list(self.files.values()):
            try:
                await fd.flush()
            except FsError as e:
                log.error("flushing inode %d at unmount failed: %s", fd.ino, e)
        self.handles.clear()
        self.files.clear()
        self.lookups.clear()
        await self.volume.healer.wait()
        self.volume.close_packs()
        if not self.read_only:  # a read-only mount deletes nothing in the stores
            await self.collect_unlinked()

    async def collect_unlinked(self) -> None:
        """Delete inodes with no name and no reference (also left over from a crash)."""
        for ino in self.meta.unlinked_inodes():
            if ino not in self.lookups and ino not in self.files:
                self.meta.delete_inode(ino)
        try:
            await self.volume.make_durable(wait_for_garbage=True)  # mount and unmount
        except StoreError as e:
            log.error("could not sync the stores: %s", e)
