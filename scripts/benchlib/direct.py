"""The pipeline benchmark's "direct" column: fusefs's direct read API, when it exists.

The API (`fusefs.direct`, issue 14: a volume opened read-only from its volume directory
inside each loader worker, files read by path with the mount's read algorithm). This module
is the one place that knows its shape: `find()` returns None when the API is there (else
why the column is skipped: a fusefs without it), and `opener()` a factory the benchmark
calls once in each worker process, after the fork, that opens the volume and returns
`read(path)`.

Expected shape, checked in this order (adapt here, nowhere else, if the API differs):
  fusefs.direct.open_volume(volume_dir, key_file=...) -> object with read_bytes(path)
  fusefs.direct.Volume(volume_dir, key_file=...)      -> the same
where `path` is absolute in the volume ("/train/class000/img00000.jpg"). Checked against
the direct-api branch (fusefs.direct.open_volume) merged into this one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

Reader = Callable[[str], bytes]


class _Opener:
    """Picklable factory: opens the volume in the calling (worker) process."""

    def __init__(self, volume_dir: str, key_file: str, prefix: str) -> None:
        self.volume_dir = volume_dir
        self.key_file = key_file
        self.prefix = prefix  # the benchmark's paths start with the mountpoint: cut it

    def __call__(self) -> Reader:
        mod = importlib.import_module("fusefs.direct")
        make = getattr(mod, "open_volume", None) or mod.Volume
        vol = make(self.volume_dir, key_file=self.key_file)
        cut = len(self.prefix)

        def read(path: str) -> bytes:
            return vol.read_bytes("/" + path[cut:].lstrip("/"))

        return read


def find() -> str | None:
    """None when the API is there; else why the column is skipped."""
    try:
        mod = importlib.import_module("fusefs.direct")
    except ImportError as exc:
        return f"no direct read API in this fusefs ({exc})"
    if not (hasattr(mod, "open_volume") or hasattr(mod, "Volume")):
        return "fusefs.direct has neither open_volume nor Volume (adapt scripts/benchlib/direct.py)"
    return None


def opener(volume_dir: str, key_file: str, prefix: str) -> Callable[[], Reader]:
    return _Opener(volume_dir, key_file, prefix)
