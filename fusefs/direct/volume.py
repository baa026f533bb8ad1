"""`DirectVolume`: read a volume's files by path from its volume directory, without a mount.

For data loaders whose worker processes each need their own reader: the FUSE daemon is one
Python thread, while each `DirectVolume` reads in the process that calls it, with the same
verification, rebuild and event recording as the mount (`chunkread`, through `view`).

Fork-safe and picklable: the open state (SQLite connection, store clients, caches) belongs
to the process that built it. After a fork (a DataLoader worker) the first call notices
the new pid and builds its own; a pickled `DirectVolume` carries only the volume directory
and the key file's path (never the key), and opens on first use where it is unpickled.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusefs.direct.file import DirectFile
from fusefs.direct.view import VolumeView
from fusefs.errors import KeyFileError
from fusefs.meta.repo import InodeRow
from fusefs.volumedir import VolumeDir, resolve_target

KEY_FILE_VARIABLE = "FUSEFS_KEY_FILE"  # as `fusefs mount` reads it
_ABANDONED: list[VolumeView] = []  # views inherited through fork: never used nor closed
#                                    here (closing the parent's SQLite connection in a
#                                    child is what SQLite forbids)


def key_path(vd: VolumeDir, key_file: str | os.PathLike[str] | None) -> Path:
    """The key file, found as the CLI finds it: the one given, else $FUSEFS_KEY_FILE, else
    VOLUME/fusefs.key."""
    if key_file is not None:
        return Path(key_file).absolute()
    if os.environ.get(KEY_FILE_VARIABLE, "").strip():
        return Path(os.environ[KEY_FILE_VARIABLE].strip()).absolute()
    if vd.default_key.exists():
        return vd.default_key
    raise KeyFileError(f"no key for volume {vd.path}: pass key_file=, set "
                       f"{KEY_FILE_VARIABLE}, or keep the key in {vd.default_key}")


class DirectVolume:
    """A volume opened read-only by path. Errors are exceptions with a one-line message:
    `fusefs.errors.ConfigError` (no volume there), `KeyFileError` (missing or wrong key),
    and for files the `OSError` that open(2)/read(2) on a mount would give (EIO: fewer
    than K good shares; `FileChangedError`, ESTALE: rewritten while being read)."""

    def __init__(self, volume_dir: str | os.PathLike[str],
                 key_file: str | os.PathLike[str] | None = None) -> None:
        if not VolumeDir(volume_dir).path.is_dir():
            VolumeDir(volume_dir).load()  # raises, naming the missing directory
        self._vd, _ = resolve_target(os.fspath(volume_dir))  # a volume, or its mountpoint
        self._vd.load()  # a broken volume is named before the key is looked for
        self.key_file = key_path(self._vd, key_file)
        self._view: VolumeView | None = None
        self._pid = -1
        self._now()  # open now: a wrong key fails here, in the caller's process

    @property
    def path(self) -> Path:
        """The volume directory."""
        return self._vd.path

    def _now(self) -> VolumeView:
        """This process's view, built on first use in each process."""
        if self._view is None or self._pid != os.getpid():
            if self._view is not None:
                _ABANDONED.append(self._view)
            self._view = None
            self._view = VolumeView(self._vd, self.key_file)
            self._pid = os.getpid()
        return self._view

    # -- pickling and lifetime -----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"volume_dir": str(self._vd.path), "key_file": str(self.key_file)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._vd = VolumeDir(state["volume_dir"])
        self.key_file = Path(state["key_file"])
        self._view, self._pid = None, -1  # opened on first use in this process

    def close(self) -> None:
        if self._view is not None and self._pid == os.getpid():
            self._view.close()
        self._view = None

    def __enter__(self) -> DirectVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DirectVolume({str(self._vd.path)!r})"

    # -- files -----------------------------------------------------------------------------
    def open(self, path: str, mode: str = "rb") -> DirectFile:
        """A binary file object for reading (the volume is read-only here)."""
        if mode not in ("r", "rb"):
            raise ValueError(f"the direct API reads only (mode 'rb'), not {mode!r}")
        return DirectFile(self._now, path)

    def read_bytes(self, path: str) -> bytes:
        """The whole file; one version of it, even while a mount rewrites it."""
        with self.open(path) as f:
            return f.readall()

    def stat(self, path: str, *, follow_symlinks: bool = True) -> os.stat_result:
        return _stat_result(self._now().stat(path, follow=follow_symlinks))

    def exists(self, path: str) -> bool:
        """As os.path.exists: False also for a path that cannot be followed (a loop)."""
        try:
            self._now().stat(path)
        except OSError:
            return False
        return True

    def is_dir(self, path: str) -> bool:
        """Whether `path` is a directory (following symlinks); False when it is not there,
        cannot be followed, or loops."""
        try:
            return stat.S_ISDIR(self._now().stat(path).mode)
        except OSError:
            return False

    def listdir(self, path: str = "/") -> list[str]:
        """Names in a directory, in the order they were created (as readdir gives them)."""
        return [name for name, _ in self._now().entries(path)]

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """As os.walk, top-down: (dirpath, dirnames, filenames); prune dirnames in place to
        skip directories. As os.walk, a symlink to a directory is listed in dirnames but
        not walked into; other symlinks (broken ones too) are in filenames."""
        stack = ["/" + "/".join(p for p in top.split("/") if p)]
        while stack:
            here = stack.pop()
            base = here.rstrip("/")
            dirs, files, links = [], [], set()
            try:
                entries = list(self._now().entries(here))
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone meanwhile (os.walk ignores such errors too)
            for name, row in entries:
                if stat.S_ISLNK(row.mode) and self.is_dir(f"{base}/{name}"):
                    links.add(name)
                (dirs if stat.S_ISDIR(row.mode) or name in links else files).append(name)
            yield here, dirs, files
            stack.extend(f"{base}/{d}" for d in reversed(dirs) if d not in links)


def open_volume(volume_dir: str | os.PathLike[str],
                key_file: str | os.PathLike[str] | None = None) -> DirectVolume:
    """Open a volume for direct reading (see `DirectVolume`)."""
    return DirectVolume(volume_dir, key_file)


def _stat_result(row: InodeRow) -> os.stat_result:
    blocks = -(-row.size // 512)
    return os.stat_result(
        (row.mode, row.id, 0, row.nlink, row.uid, row.gid, row.size,
         row.atime_ns // 10**9, row.mtime_ns // 10**9, row.ctime_ns // 10**9),
        {"st_atime": row.atime_ns / 1e9, "st_mtime": row.mtime_ns / 1e9,
         "st_ctime": row.ctime_ns / 1e9, "st_atime_ns": row.atime_ns,
         "st_mtime_ns": row.mtime_ns, "st_ctime_ns": row.ctime_ns, "st_blksize": 4096,
         "st_blocks": blocks, "st_rdev": row.rdev})
