"""Find live fusefs mounts in /proc/mounts (mountpoint <-> volume directory), and the
filesystem a path lives on."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.fusefs"
# Filesystems whose I/O can hang for as long as a server or network is away.
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "afs",
                                  "glusterfs", "lustre", "gpfs", "beegfs", "ocfs2", "gfs2"})


@dataclass(frozen=True)
class MountEntry:
    volume: Path
    mountpoint: Path


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def fusefs_mounts() -> list[MountEntry]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == FSTYPE:
            out.append(MountEntry(Path(_unescape(fields[0])), Path(_unescape(fields[1]))))
    return out


def find_by_mountpoint(path: str) -> MountEntry | None:
    real = Path(os.path.realpath(path))
    return next((m for m in fusefs_mounts() if m.mountpoint == real), None)


def find_by_volume(volume: Path) -> MountEntry | None:
    real = Path(os.path.realpath(volume))
    return next((m for m in fusefs_mounts() if Path(os.path.realpath(m.volume)) == real), None)


def filesystem_type(path: str | Path) -> str | None:
    """The type of the filesystem `path` lives on (the longest mountpoint prefix in
    /proc/mounts), e.g. "ext4", "nfs4", "fuse.sshfs"; None when unknown."""
    real = os.path.realpath(path)
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = -1, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mp = _unescape(fields[1])
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= best:  # >=: the later of two mounts on one place wins
            best, kind = len(mp), fields[2]
    return kind


def may_hang(path: str | Path) -> bool:
    """True when I/O under `path` may block for long: a network or FUSE filesystem, or one
    that cannot be identified."""
    kind = filesystem_type(path)
    return kind is None or kind in NETWORK_FILESYSTEMS or kind.startswith("fuse")
