"""The fingerprint of a path anywhere: inside a fusefs mount (asked of its daemon, which
answers from the metadata without reading data) or on any other filesystem (computed by
reading the files). Both follow `codec.digest`, so the value of a dataset on a plain disk
before ingest equals the one fusefs reports after.

Inside a mount whose daemon this process cannot reach (another user; a container that sees
the mount but not the volume directory), the files are read through the mount instead:
slower, the same value (the mount's read path verifies every byte).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from fusefs.codec import digest
from fusefs.errors import FusefsError
from fusefs.mounts import FSTYPE, containing_mount

READ_SIZE = 4 << 20  # a multiple of digest.LEAF


def fingerprint(path: str | os.PathLike, *, verify: bool = False,
                progress: Callable[[int, int, int], None] | None = None) -> dict:
    """{"fingerprint": hex, "files", "directories", "bytes", "source": "metadata" | "read",
    ...} of a directory tree or a file; with `verify` inside a mount, also "recorded" (the
    metadata's value) and "mismatches" (chunks whose bytes differ from their record)."""
    real = os.path.realpath(path)
    st = _stat(real)
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise FusefsError(f"{path}: neither a directory nor a regular file")
    mount = containing_mount(real)
    if mount is not None and mount.fstype == FSTYPE:
        rel = os.path.relpath(real, mount.mountpoint)
        inside = "/" if rel == "." else "/" + rel
        try:
            return {**_ask_daemon(Path(mount.source), inside, verify, progress),
                    "source": "metadata"}
        except _Unreachable:
            if verify:
                raise
    got = of_plain_path(real)
    return {**got, "source": "read"}


class _Unreachable(FusefsError):
    """The mount's daemon cannot be asked (its volume directory is out of reach)."""


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise FusefsError(f"{path}: {e.strerror}") from None


def _ask_daemon(volume: Path, inside: str, verify: bool,
                progress: Callable[[int, int, int], None] | None) -> dict:
    from fusefs.control import ask

    if not os.access(volume / "fusefs.sock", os.R_OK | os.W_OK):
        raise _Unreachable(f"the daemon of {volume} cannot be reached from here")
    return ask(volume, {"op": "fingerprint", "path": inside, "verify": verify}, progress)


def of_plain_path(path: str) -> dict:
    """The fingerprint of a file or directory tree by reading it (symlinks are entries,
    never followed; names are compared as bytes)."""
    st = _stat(path)
    if stat.S_ISREG(st.st_mode):
        return {"fingerprint": _file(path).hex(), "files": 1, "directories": 0,
                "bytes": st.st_size}
    counts = {"files": 0, "directories": 0, "bytes": 0}
    order = [os.fsencode(path)]
    listing: dict[bytes, list[tuple[bytes, os.stat_result]]] = {}
    for d in order:  # breadth first: every directory after its parent
        try:
            with os.scandir(d) as it:
                entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        except OSError as e:
            raise FusefsError(f"{os.fsdecode(d)}: {e.strerror}") from None
        listing[d] = entries
        order += [os.path.join(d, n) for n, s in entries if stat.S_ISDIR(s.st_mode)]
    digests: dict[bytes, bytes] = {}
    for d in reversed(order):  # children before their parents
        rows = []
        for name, s in listing[d]:
            full = os.path.join(d, name)
            if stat.S_ISDIR(s.st_mode):
                rows.append((name, digest.DIR, digests[full]))
            elif stat.S_ISREG(s.st_mode):
                rows.append((name, digest.FILE, _file(full)))
                counts["files"] += 1
                counts["bytes"] += s.st_size
            else:
                target = os.readlink(full) if stat.S_ISLNK(s.st_mode) else None
                rows.append((name, *digest.special_entry(s.st_mode, s.st_rdev, target)))
        digests[d] = digest.tree_digest(rows)
        counts["directories"] += 1
    return {"fingerprint": digests[order[0]].hex(), **counts}


def _file(path: str | bytes) -> bytes:
    hasher = digest.ContentHasher()
    try:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(READ_SIZE):
                hasher.update(block)
    except OSError as e:
        raise FusefsError(f"{os.fsdecode(path)}: {e.strerror}") from None
    return digest.file_digest(hasher.size, hasher.digest())
