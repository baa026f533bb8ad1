"""Named versions in the mount: `MOUNTPOINT/.fusefs/versions/NAME/`, read-only.

`.fusefs` is not an entry of the root (a listing of the root does not show it, `find` and
`du` of the mount do not walk into it) but a lookup of that name finds it. Its only entry is
`versions`, which lists the versions by name; each is the tree it was taken of, as it was,
served from the version's own metadata rows and the chunk versions they share with the live
tree. Every change there fails with EROFS.

Kernel inode numbers: the live tree's are its inode ids (below 2^40: AUTOINCREMENT would
need a trillion files); a version's inode `i` of version `v` is `v << 40 | i`; `.fusefs` and
`versions` sit above all of them. Versions are immutable and their ids never reused, so the
kernel may cache what it read of them for as long as it likes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import replace

from fusefs.errors import FsError
from fusefs.filedata import FileData, Handle
from fusefs.meta.repo import ROOT_INODE, InodeRow, MetaRepo
from fusefs.meta.versions import VersionRepo
from fusefs.vfs import FileSystem
from fusefs.volume import Volume

CONTROL_NAME = b".fusefs"
VERSIONS_NAME = b"versions"
_SHIFT = 40
CONTROL_INO = (1 << 62) + 1
VERSIONS_INO = (1 << 62) + 2
MAX_VERSION_ID = (1 << 22) - 1  # v << 40 stays below the synthetic inodes


def version_ino(vid: int, ino: int) -> int:
    return vid << _SHIFT | ino


def split(kernel_ino: int) -> tuple[int, int] | None:
    """(version id, inode) of a version's kernel inode; None for any other inode."""
    vid = kernel_ino >> _SHIFT
    if 0 < vid <= MAX_VERSION_ID:
        return vid, kernel_ino & ((1 << _SHIFT) - 1)
    return None


class VersionedFileSystem(FileSystem):
    """The live tree (`FileSystem`) with the read-only versions beside it."""

    def __init__(self, meta: MetaRepo, volume: Volume, **kwargs: object) -> None:
        super().__init__(meta, volume, **kwargs)  # type: ignore[arg-type]
        self.versions = VersionRepo(meta)
        # Tells the kernel a name is gone (a deleted version), set by the mount; the
        # kernel would otherwise show the name for as long as it caches entries.
        self.invalidate_entry: Callable[[int, bytes], Awaitable[None]] | None = None

    # -- inodes of the versions' side -------------------------------------------------
    def _synthetic(self, ino: int) -> InodeRow:
        root = super().attr(ROOT_INODE)
        return replace(root, id=ino, mode=stat.S_IFDIR | 0o555, nlink=2, size=0,
                       file_id=b"", target=None)

    def _version_row(self, vid: int, ino: int) -> InodeRow:
        row = self.versions.inode(vid, ino)
        if row is None:
            raise FsError(errno.ENOENT)  # a version deleted meanwhile
        return replace(row, id=version_ino(vid, ino))

    def _ours(self, ino: int) -> bool:
        return ino in (CONTROL_INO, VERSIONS_INO) or split(ino) is not None

    def _refuse(self, *inodes: int) -> None:
        if any(self._ours(i) for i in inodes):
            raise FsError(errno.EROFS)

    @staticmethod
    def _reserved(parent: int, name: bytes) -> bool:
        return parent == ROOT_INODE and name == CONTROL_NAME

    # -- lookups and attributes -------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> InodeRow:
        if self._reserved(parent, name):
            return self._synthetic(CONTROL_INO)
        if not self._ours(parent):
            return super().lookup(parent, name)
        if name == b".":
            return self.attr(parent)
        if parent == CONTROL_INO:
            if name == b"..":
                return super().attr(ROOT_INODE)
            if name == VERSIONS_NAME:
                return self._synthetic(VERSIONS_INO)
            raise FsError(errno.ENOENT)
        if parent == VERSIONS_INO:
            if name == b"..":
                return self._synthetic(CONTROL_INO)
            found = self.versions.by_name(name)
            if found is None:
                raise FsError(errno.ENOENT)
            return self._version_row(found.id, found.root)
        vid, ino = split(parent)  # type: ignore[misc]
        if name == b"..":
            up = self.versions.parent_of(vid, ino)
            return self._synthetic(VERSIONS_INO) if up is None else self._version_row(vid, up)
        row = self.versions.lookup_inode(vid, ino, name)
        if row is None:
            self._version_dir(parent)
            raise FsError(errno.ENOENT)
        return replace(row, id=version_ino(vid, row.id))

    def _version_dir(self, ino: int) -> InodeRow:
        row = self.attr(ino)
        if not stat.S_ISDIR(row.mode):
            raise FsError(errno.ENOTDIR)
        return row

    def forget(self, ino: int, count: int) -> None:
        if not self._ours(ino):
            super().forget(ino, count)

    def remember(self, ino: int) -> None:
        if not self._ours(ino):
            super().remember(ino)

    def attr(self, ino: int) -> InodeRow:
        if ino in (CONTROL_INO, VERSIONS_INO):
            return self._synthetic(ino)
        where = split(ino)
        if where is None:
            return super().attr(ino)
        return self._version_row(*where)

    def readlink(self, ino: int) -> bytes:
        if not self._ours(ino):
            return super().readlink(ino)
        row = self.attr(ino)
        if not stat.S_ISLNK(row.mode):
            raise FsError(errno.EINVAL)
        return row.target or b""

    # -- directories ------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        if not self._ours(ino):
            return super().opendir(ino)
        self._version_dir(ino)
        return ino

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, InodeRow]]:
        if not self._ours(ino):
            return super().readdir(ino, after, limit)
        if ino == CONTROL_INO:
            return [(1, VERSIONS_NAME, self._synthetic(VERSIONS_INO))] if after < 1 else []
        if ino == VERSIONS_INO:
            return [(v.id, v.name, self._version_row(v.id, v.root))
                    for v in self.versions.all() if v.id > after][:limit]
        vid, inner = split(ino)  # type: ignore[misc]
        return [(c, n, replace(r, id=version_ino(vid, r.id)))
                for c, n, r in self.versions.readdir(vid, inner, after, limit)]

    # -- open files -------------------------------------------------------------------
    async def open(self, ino: int, flags: int) -> int:
        where = split(ino)
        if where is None:
            if ino in (CONTROL_INO, VERSIONS_INO):
                raise FsError(errno.EISDIR)
            return await super().open(ino, flags)
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            raise FsError(errno.EROFS)
        vid, inner = where
        row = self.versions.inode(vid, inner)
        if row is None:
            raise FsError(errno.ENOENT)
        if stat.S_ISDIR(row.mode):
            raise FsError(errno.EISDIR)
        data = FileData(inner, row.file_id, row.size, self.meta, self.volume, self.cache,
                        self.flusher)
        data.pinned = {c.idx: c for c in self.versions.chunks_of(vid, inner)}
        data.pinned_inode = row
        data.opens = 1
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, data, False)
        return fh

    async def release(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None and split(h.ino) is not None:
            del self.handles[fh]  # nothing to flush: opened read-only, shared with no one
            return
        await super().release(fh)

    def open_in_version(self, vid: int) -> int:
        """Files of version `vid` open now (a version in use is not deleted)."""
        return sum(1 for h in self.handles.values()
                   if (w := split(h.ino)) is not None and w[0] == vid)

    # -- everything that changes something --------------------------------------------
    async def setattr(self, ino: int, **fields: int | None) -> InodeRow:
        self._refuse(ino)
        return await super().setattr(ino, **fields)  # type: ignore[arg-type]

    def _new_inode(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                   target: bytes | None = None, rdev: int = 0, *,
                   defer: bool = False) -> InodeRow:
        self._refuse(parent)
        if self._reserved(parent, name):
            raise FsError(errno.EEXIST)
        return super()._new_inode(parent, name, mode, uid, gid, target, rdev, defer=defer)

    def link(self, ino: int, parent: int, name: bytes) -> InodeRow:
        self._refuse(ino, parent)
        if self._reserved(parent, name):
            raise FsError(errno.EEXIST)
        return super().link(ino, parent, name)

    def unlink(self, parent: int, name: bytes) -> None:
        self._refuse(parent)
        if self._reserved(parent, name):
            raise FsError(errno.EROFS)
        super().unlink(parent, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._refuse(parent)
        if self._reserved(parent, name):
            raise FsError(errno.EROFS)
        super().rmdir(parent, name)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0) -> None:
        self._refuse(p1, p2)
        if self._reserved(p1, n1) or self._reserved(p2, n2):
            raise FsError(errno.EROFS)
        super().rename(p1, n1, p2, n2, flags)

    # -- extended attributes ----------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        where = split(ino)
        if where is None:
            if ino in (CONTROL_INO, VERSIONS_INO):
                raise FsError(errno.ENODATA)
            return super().getxattr(ino, name)
        value = self.versions.get_xattr(*where, name)
        if value is None:
            self.attr(ino)
            raise FsError(errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        where = split(ino)
        if where is None:
            return [] if ino in (CONTROL_INO, VERSIONS_INO) else super().listxattr(ino)
        self.attr(ino)
        return self.versions.list_xattrs(*where)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._refuse(ino)
        super().setxattr(ino, name, value, flags)

    def removexattr(self, ino: int, name: bytes) -> None:
        self._refuse(ino)
        super().removexattr(ino, name)
