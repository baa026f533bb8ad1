"""The one reader of the kernel's mount table: live fusefs mounts (mountpoint <-> volume
directory), the filesystem a path lives on, and a mount's device number.

Everything comes from /proc/self/mountinfo, which never blocks on a hung FUSE daemon (a stat
of a mountpoint would). Its fields escape space, tab, newline and backslash as octal (\\040);
`mountinfo()` returns them unescaped, so a mountpoint with a space compares equal to its path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.fusefs"
MOUNTINFO = "/proc/self/mountinfo"
# Filesystems whose I/O can hang for as long as a server or network is away.
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "afs",
                                  "glusterfs", "lustre", "gpfs", "beegfs", "ocfs2", "gfs2"})


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One line of /proc/self/mountinfo, unescaped."""

    device: str  # "major:minor" (the name of /sys/class/bdi/<device>)
    root: str  # the mounted directory inside its filesystem
    mountpoint: str
    fstype: str  # e.g. "ext4", "fuse.fusefs"
    source: str  # e.g. "/dev/sda1"; a fusefs mount's volume directory (its fsname)


@dataclass(frozen=True)
class MountEntry:
    volume: Path
    mountpoint: Path


def unescape(field: str) -> str:
    r"""A mountinfo field as the path it stands for (\040 -> space, \134 -> backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Mounts in the order the kernel lists them (a later mount on the same place is on top).

    Format (proc(5)): ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
    SUPEROPTIONS; the optional fields vary in number, so the line is split at " - ".
    """
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if not sep or len(fields) < 5 or not rfields:
            continue
        source = unescape(rfields[1]) if len(rfields) > 1 else ""
        out.append(MountInfo(fields[2], unescape(fields[3]), unescape(fields[4]), rfields[0],
                             source))
    return out


def mountinfo() -> list[MountInfo]:
    """Every mount this process sees ([] when /proc is not there)."""
    try:
        with open(MOUNTINFO) as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


def mounted_at(path: str | os.PathLike) -> MountInfo | None:
    """The topmost mount whose mountpoint is exactly `path` (made absolute, not resolved:
    resolving a dead FUSE mountpoint would hang)."""
    target = os.path.abspath(path)
    found = None
    for m in mountinfo():
        if m.mountpoint == target:
            found = m
    return found


def fusefs_mounts() -> list[MountEntry]:
    return [MountEntry(Path(m.source), Path(m.mountpoint)) for m in mountinfo()
            if m.fstype == FSTYPE]


def find_by_mountpoint(path: str) -> MountEntry | None:
    real = Path(os.path.realpath(path))
    return next((m for m in fusefs_mounts() if m.mountpoint == real), None)


def find_by_volume(volume: Path) -> MountEntry | None:
    real = Path(os.path.realpath(volume))
    return next((m for m in fusefs_mounts() if Path(os.path.realpath(m.volume)) == real), None)


def containing_mount(path: str | os.PathLike) -> MountInfo | None:
    """The mount `path` lives on: the longest mountpoint prefix (the later of two mounts on
    one place wins); None when the mount table cannot be read."""
    real = os.path.realpath(path)
    best: MountInfo | None = None
    for m in mountinfo():
        inside = real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")
        if inside and (best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best


def filesystem_type(path: str | Path) -> str | None:
    """The type of the filesystem `path` lives on, e.g. "ext4", "nfs4", "fuse.sshfs"; None
    when unknown."""
    m = containing_mount(path)
    return m.fstype if m is not None else None


def may_hang(path: str | Path) -> bool:
    """True when I/O under `path` may block for long: a network or FUSE filesystem, or one
    that cannot be identified."""
    kind = filesystem_type(path)
    return kind is None or kind in NETWORK_FILESYSTEMS or kind.startswith("fuse")
