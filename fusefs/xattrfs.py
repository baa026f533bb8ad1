"""Extended attributes of the live tree (a mixin of `vfs.FileSystem`): stored in the
metadata, limits and flags as Linux has them."""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING

from fusefs.errors import FsError

if TYPE_CHECKING:
    from fusefs.filedata import FileData
    from fusefs.meta.repo import InodeRow, MetaRepo

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_CREATE, XATTR_REPLACE = 1, 2


class ExtendedAttributes:
    """getxattr/setxattr/listxattr/removexattr over `meta` (the FileSystem's)."""

    meta: MetaRepo
    files: dict[int, FileData]
    _any_xattrs: bool  # the volume holds some xattr (none: getxattr needs no query)

    def _inode(self, ino: int) -> InodeRow:
        raise NotImplementedError

    def _writable(self) -> None:
        raise NotImplementedError

    def getxattr(self, ino: int, name: bytes) -> bytes:
        # The kernel asks for security.capability before every write; on an open file of a
        # volume without any xattr the answer needs no query.
        value = self.meta.get_xattr(ino, name) if self._any_xattrs else None
        if value is None:
            if ino not in self.files:
                self._inode(ino)
            raise FsError(errno.ENODATA)
        return value

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._writable()
        self._inode(ino)
        if len(name) > XATTR_NAME_MAX or not name:
            raise FsError(errno.ERANGE)
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(errno.E2BIG)
        exists = self.meta.get_xattr(ino, name) is not None
        if flags & XATTR_CREATE and exists:
            raise FsError(errno.EEXIST)
        if flags & XATTR_REPLACE and not exists:
            raise FsError(errno.ENODATA)
        self._any_xattrs = True
        with self.meta.transaction():
            self.meta.set_xattr(ino, name, value)
            self.meta.update_inode(ino, ctime_ns=time.time_ns())

    def listxattr(self, ino: int) -> list[bytes]:
        self._inode(ino)
        return self.meta.list_xattrs(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        self._inode(ino)
        if not self.meta.remove_xattr(ino, name):
            raise FsError(errno.ENODATA)
        self.meta.commit_pending()
