"""fusefs: a transparent, self-healing, encrypted FUSE filesystem for machine-learning data.

`fusefs.open_volume`, `DirectVolume`, `DirectFile`, `FileChangedError` and `FileDataset`
are the direct read API (`fusefs.direct`), imported on first use: the command line does
not pay for them. `fusefs.fingerprint` gives the content fingerprint of a path.
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


def fingerprint(path: str, *, verify: bool = False) -> str:
    """The content fingerprint (64 hex digits) of a directory tree or file: from the
    metadata inside a fusefs mount, by reading it anywhere else; the same value for the same
    content either way (docs/format.md, "Fingerprints"). For training code to log next to
    the model. `verify` (in a mount) re-reads every byte and raises FusefsError when
    anything differs from what the metadata records."""
    from fusefs.errors import FusefsError
    from fusefs.pathdigest import fingerprint as of_path

    got = of_path(path, verify=verify)
    if got.get("mismatches") or got.get("recorded", got["fingerprint"]) != got["fingerprint"]:
        raise FusefsError(f"{path}: the bytes read differ from what the metadata records")
    return got["fingerprint"]
