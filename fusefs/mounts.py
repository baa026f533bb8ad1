"""Find live fusefs mounts in /proc/mounts (mountpoint <-> volume directory)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.fusefs"


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
