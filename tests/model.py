"""The in-memory model behind tests/test_model.py: a few names in two directories, file bytes,
open handles, and which files have writes not committed yet.

It is plain Python on purpose: a bytearray per file and a dict of names are obviously right,
so any disagreement with fusefs is fusefs's (or the machine's) fault. Errors are raised as
`ModelError(errno)` with the errno ext4 would give for the same call.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass, field

from hypothesis import strategies as st

SUBDIR = "d"
NAMES = ("a", "b", "d/a")  # files live here; "d" is a directory throughout (few names: most
#                            calls meet an existing file)


class ModelError(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass(eq=False)
class ModelFile:
    data: bytearray = field(default_factory=bytearray)
    # Written since the last flush/fsync/close of any handle: what a second instance sees of
    # it is not defined yet (sealed chunks are committed as they fill up).
    dirty: bool = False
    opens: int = 0


@dataclass(eq=False)
class ModelHandle:
    file: ModelFile
    readable: bool
    writable: bool


def split(path: str) -> tuple[str, str]:
    """("d", "a") for "d/a", ("", "a") for "a"."""
    head, _, tail = path.rpartition("/")
    return head, tail


def payload(n: int, seed: int) -> bytes:
    """N bytes no other write of the run repeats (a misplaced piece cannot match by chance)."""
    return random.Random(seed).randbytes(n)


def offsets(cs: int) -> st.SearchStrategy[int]:
    """File offsets: chunk boundaries, the first four chunks, and 17-20 chunks in (a hole
    before; with 64 KiB chunks, more than 1 MiB away: a read there is a random read)."""
    edges = [0, 1, cs - 1, cs, cs + 1, 2 * cs - 7, 2 * cs, 3 * cs + 5]
    return st.one_of(st.sampled_from(edges), st.integers(0, 4 * cs),
                     st.integers(17 * cs, 20 * cs))


def lengths(cs: int) -> st.SearchStrategy[int]:
    """Write/read lengths: tiny, chunk-sized and up to two chunks."""
    return st.one_of(st.sampled_from([1, 2, 100, cs - 1, cs, cs + 1]), st.integers(1, 2 * cs))


class Model:
    """Names -> files, handle ids -> handles; every method changes state only on success."""

    def __init__(self) -> None:
        self.names: dict[str, ModelFile] = {}
        self.handles: dict[int, ModelHandle] = {}
        self._next = 0

    def listdir(self, directory: str) -> list[str]:
        names = [split(p)[1] for p in self.names if split(p)[0] == directory]
        return sorted(names + ([SUBDIR] if directory == "" else []))

    def _file(self, path: str) -> ModelFile:
        if path == SUBDIR:
            raise ModelError(errno.EISDIR)
        f = self.names.get(path)
        if f is None:
            raise ModelError(errno.ENOENT)
        return f

    def _handle(self, f: ModelFile, readable: bool, writable: bool) -> int:
        fh = self._next
        self._next += 1
        f.opens += 1
        self.handles[fh] = ModelHandle(f, readable, writable)
        return fh

    def open(self, path: str, *, readable: bool, writable: bool, create: bool = False,
             excl: bool = False, trunc: bool = False) -> int:
        """open(2); O_TRUNC is only modelled with a writable access mode."""
        if path == SUBDIR:
            raise ModelError(errno.EEXIST if create and excl else errno.EISDIR)
        f = self.names.get(path)
        if f is None:
            if not create:
                raise ModelError(errno.ENOENT)
            f = self.names[path] = ModelFile()
        elif create and excl:
            raise ModelError(errno.EEXIST)
        elif trunc and writable:
            self.truncate(f, 0)
        return self._handle(f, readable, writable)

    def handle(self, fh: int) -> ModelHandle:
        try:
            return self.handles[fh]
        except KeyError:
            raise ModelError(errno.EBADF) from None

    def write(self, fh: int, off: int, data: bytes) -> int:
        h = self.handle(fh)
        if not h.writable:
            raise ModelError(errno.EBADF)
        buf = h.file.data
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))
        buf[off : off + len(data)] = data
        h.file.dirty = h.file.dirty or bool(data)
        return len(data)

    def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handle(fh)
        if not h.readable:
            raise ModelError(errno.EBADF)
        return bytes(h.file.data[off : off + size])

    @staticmethod
    def truncate(f: ModelFile, size: int) -> None:
        if size < len(f.data):
            del f.data[size:]
        else:
            f.data.extend(bytes(size - len(f.data)))
        if size == 0:
            f.dirty = False  # nothing is left to commit: the empty file is committed

    def truncate_path(self, path: str, size: int) -> None:
        self.truncate(self._file(path), size)

    def ftruncate(self, fh: int, size: int) -> None:
        h = self.handle(fh)
        if not h.writable:
            raise ModelError(errno.EINVAL)
        self.truncate(h.file, size)

    def flush(self, fh: int) -> None:
        """close/fsync of any handle commits the whole file (its buffers are per inode)."""
        self.handle(fh).file.dirty = False

    def close(self, fh: int) -> None:
        h = self.handles.pop(fh)
        h.file.opens -= 1
        h.file.dirty = False

    def unlink(self, path: str) -> None:
        self._file(path)
        del self.names[path]

    def rename(self, src: str, dst: str) -> None:
        f = self._file(src)
        if dst == SUBDIR:
            raise ModelError(errno.EISDIR)
        if src == dst:
            return
        self.names[dst] = f
        del self.names[src]
