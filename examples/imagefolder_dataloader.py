#!/usr/bin/env python3
"""Train-style input from an ImageFolder tree of JPEGs (ROOT/CLASS/NAME.jpg): a PyTorch
DataLoader with 4 worker processes, shuffled, decoded with Pillow; one epoch, in images/s.

The same tree, read two ways:

    python examples/imagefolder_dataloader.py mount /data/train
    python examples/imagefolder_dataloader.py direct /var/lib/fusefs/ds /train \\
        --key-file /etc/fusefs/ds.key

`mount` is plain PyTorch over files (here: a fusefs mount): nothing fusefs-specific, as a
training script runs unchanged. `direct` reads the volume in each worker process with the
direct API (`fusefs.FileDataset`): no mount and no FUSE daemon in the way, the same
verification and repair reporting. torchvision is not needed: decoding is Pillow's.

`--digests FILE` writes, per image, its path under the root, its class index and the
sha256 of its decoded pixels, for checking against the source (the tests do).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

SUFFIXES = (".jpg", ".jpeg", ".png")


def decode(data: bytes) -> np.ndarray:
    """JPEG bytes -> an HxWx3 uint8 array (a real pipeline would resize and augment)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class ImageFolder(Dataset):
    """torchvision's ImageFolder over plain files: classes are the directories under
    root, an item is (pixels, class index)."""

    def __init__(self, root: str) -> None:
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.paths, self.targets = [], []
        for target, cls in enumerate(self.classes):
            for name in sorted(os.listdir(os.path.join(root, cls))):
                if name.lower().endswith(SUFFIXES):
                    self.paths.append(os.path.join(root, cls, name))
                    self.targets.append(target)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        with open(self.paths[i], "rb") as f:
            return decode(f.read()), self.targets[i]


class Indexed(Dataset):
    """Items with their index, so the main process knows which image each one is."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        pixels, target = self.inner[i]
        return pixels, target, i


def collate(items: list[tuple[np.ndarray, int, int]]
            ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Images of any size: a list of HxWx3 tensors, and the targets and indices."""
    return ([torch.from_numpy(p) for p, _, _ in items],
            torch.tensor([t for _, t, _ in items]), torch.tensor([i for _, _, i in items]))


def dataset(args: argparse.Namespace) -> tuple[Dataset, list[str]]:
    """The dataset and each item's path relative to the root."""
    if args.how == "mount":
        ds = ImageFolder(args.root)
        return ds, [os.path.relpath(p, args.root) for p in ds.paths]
    import fusefs

    direct = fusefs.FileDataset(args.volume, args.root, key_file=args.key_file,
                                suffixes=SUFFIXES, transform=decode, targets=True)
    base = len(direct.root.rstrip("/")) + 1
    return direct, [p[base:] for p in direct.paths]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="how", required=True)
    m = sub.add_parser("mount", help="read files under ROOT (e.g. on a fusefs mount)")
    m.add_argument("root")
    d = sub.add_parser("direct", help="read the volume with the direct API")
    d.add_argument("volume", help="the volume directory")
    d.add_argument("root", help="the tree's path inside the volume, e.g. /train")
    d.add_argument("--key-file", help="default: $FUSEFS_KEY_FILE, else VOLUME/fusefs.key")
    for sp in (m, d):
        sp.add_argument("--workers", type=int, default=4)
        sp.add_argument("--batch-size", type=int, default=32)
        sp.add_argument("--epochs", type=int, default=1)
        sp.add_argument("--digests", help="write path -> [class, sha256 of pixels] here")
    args = p.parse_args(argv)

    ds, names = dataset(args)
    if not len(ds):
        print(f"no images under {args.root}", file=sys.stderr)
        return 1
    loader = DataLoader(Indexed(ds), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, collate_fn=collate,
                        persistent_workers=args.workers > 0)
    digests: dict[str, list] = {}
    for epoch in range(args.epochs):
        t0, n = time.perf_counter(), 0
        for images, targets, indices in loader:
            n += len(images)
            for img, target, i in zip(images, targets.tolist(), indices.tolist(),
                                      strict=True):
                digests[names[i]] = [target, hashlib.sha256(img.numpy().tobytes()).hexdigest()]
        took = time.perf_counter() - t0
        print(f"epoch {epoch + 1}: {n} images in {took:.2f} s, {n / took:.0f} images/s "
              f"({args.workers} workers, {args.how})")
    if args.digests:
        with open(args.digests, "w") as f:
            json.dump(digests, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
