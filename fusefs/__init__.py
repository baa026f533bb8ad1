"""fusefs: a transparent, self-healing, encrypted FUSE filesystem for machine-learning data.

`fusefs.open_volume`, `DirectVolume`, `DirectFile`, `FileChangedError` and `FileDataset`
are the direct read API (`fusefs.direct`), imported on first use: the command line does
not pay for them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_DIRECT = ("open_volume", "DirectVolume", "DirectFile", "FileChangedError", "FileDataset")


def __getattr__(name: str) -> Any:
    if name in _DIRECT:
        from fusefs import direct

        return getattr(direct, name)
    raise AttributeError(f"module 'fusefs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_DIRECT])
