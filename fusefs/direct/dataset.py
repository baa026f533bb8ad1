"""A map-style dataset over the files of a volume, read with the direct API.

It is what PyTorch's DataLoader needs (`__len__`, `__getitem__`, picklable) without
importing torch: fusefs does not depend on it. Each DataLoader worker reads through its own
`DirectVolume` view, opened in the worker after the fork (or after unpickling, with the
spawn start method), so the workers scale with processes instead of sharing one FUSE
daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from fusefs.direct.volume import DirectVolume


class FileDataset:
    """Item i is the bytes of the i-th file under `root` (sorted by path), passed through
    `transform` when given.

    `suffixes` keeps only names ending so (case-insensitive), e.g. (".jpg", ".jpeg").
    `targets=True` labels items as torchvision's ImageFolder does: the classes are the
    directories right under `root` (sorted), an item is `(sample, class index)`, and files
    directly in `root` are left out. `transform` must be picklable for spawned workers (a
    module-level function, not a lambda).
    """

    def __init__(self, volume: DirectVolume | str | os.PathLike[str], root: str = "/", *,
                 key_file: str | os.PathLike[str] | None = None,
                 suffixes: Iterable[str] | None = None,
                 transform: Callable[[bytes], Any] | None = None,
                 targets: bool = False) -> None:
        self.volume = volume if isinstance(volume, DirectVolume) else \
            DirectVolume(volume, key_file)
        self.root = "/" + "/".join(p for p in root.split("/") if p)
        self.transform = transform
        ends = tuple(s.lower() for s in suffixes) if suffixes is not None else None
        paths = []
        for dirpath, _dirs, files in self.volume.walk(self.root):
            paths += [f"{dirpath.rstrip('/')}/{f}" for f in files
                      if ends is None or f.lower().endswith(ends)]
        paths.sort()
        self.classes: list[str] = []
        self.targets: list[int] | None = None
        if targets:
            base = len(self.root.rstrip("/")) + 1
            paths = [p for p in paths if "/" in p[base:]]
            self.classes = sorted({p[base:].split("/", 1)[0] for p in paths})
            index = {c: i for i, c in enumerate(self.classes)}
            self.targets = [index[p[base:].split("/", 1)[0]] for p in paths]
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        data = self.volume.read_bytes(self.paths[i])
        sample = self.transform(data) if self.transform is not None else data
        return sample if self.targets is None else (sample, self.targets[i])
