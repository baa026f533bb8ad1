#!/usr/bin/env python3
"""WebDataset-style input: many small files packed into tar shards, streamed through the
mount by DataLoader workers, each reading whole shards front to back.

    python examples/tar_shards.py pack /data/imagenet-mini/train /mnt/ds/shards
    python examples/tar_shards.py stream /mnt/ds/shards --workers 4

Why: a file costs a fusefs mount a few FUSE requests and share objects of its own, whatever
its size; a shard of a few hundred MB costs that once and is then read sequentially, in
1 MiB requests with readahead, at the mount's streaming speed (docs/training.md).

`pack` takes an ImageFolder tree (SRC/CLASS/NAME.jpg) and writes shard-000000.tar, ... to
DEST: the samples shuffled once (seeded), each sample KEY = CLASS/NAME stored as the
members KEY.jpg and KEY.cls (the class name), as WebDataset does. Plain `tarfile`: no
webdataset package needed. `stream --digests FILE` writes KEY -> [class, sha256 of the image
bytes] for checking against the source (the tests do).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import time
from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def pack(src: str, dest: str, per_shard: int, seed: int = 0) -> list[str]:
    """Write the tree's samples into shards of `per_shard` samples; the shard paths."""
    samples = sorted(
        (cls, name) for cls in os.listdir(src) if os.path.isdir(os.path.join(src, cls))
        for name in os.listdir(os.path.join(src, cls)))
    random.Random(seed).shuffle(samples)  # shards are read in order: shuffle them once
    os.makedirs(dest, exist_ok=True)
    shards = []
    for n, start in enumerate(range(0, len(samples), per_shard)):
        path = os.path.join(dest, f"shard-{n:06d}.tar")
        with tarfile.open(path, "w") as tar:
            for cls, name in samples[start : start + per_shard]:
                key = f"{cls}/{os.path.splitext(name)[0]}"
                tar.add(os.path.join(src, cls, name), arcname=f"{key}.jpg")
                _add_bytes(tar, f"{key}.cls", cls.encode())
        shards.append(path)
    return shards


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def samples(path: str) -> Iterator[tuple[str, bytes, str]]:
    """(key, image bytes, class) of each sample of one shard, read as a stream ("r|")."""
    key, parts = None, {}
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base, ext = member.name.rsplit(".", 1)
            if key is not None and base != key:
                yield key, parts["jpg"], parts["cls"].decode()
                parts = {}
            key = base
            parts[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if key is not None:
        yield key, parts["jpg"], parts["cls"].decode()


class Shards(IterableDataset):
    """The samples of a list of shards; each DataLoader worker takes every n-th shard."""

    def __init__(self, shards: list[str]) -> None:
        self.shards = shards

    def __iter__(self) -> Iterator[tuple[str, bytes, str]]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for path in mine:
            yield from samples(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="ImageFolder tree -> tar shards")
    pk.add_argument("src")
    pk.add_argument("dest")
    pk.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    st = sub.add_parser("stream", help="read the shards with a DataLoader")
    st.add_argument("shards", help="the directory holding shard-*.tar")
    st.add_argument("--workers", type=int, default=4)
    st.add_argument("--digests", help="write key -> [class, sha256 of image bytes] here")
    args = p.parse_args(argv)

    if args.command == "pack":
        shards = pack(args.src, args.dest, args.per_shard)
        print(f"{len(shards)} shards in {args.dest}")
        return 0
    shards = sorted(os.path.join(args.shards, n) for n in os.listdir(args.shards)
                    if n.endswith(".tar"))
    if not shards:
        print(f"no shard-*.tar in {args.shards}", file=sys.stderr)
        return 1
    loader = DataLoader(Shards(shards), batch_size=None, num_workers=args.workers)
    digests: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for key, image, cls in loader:
        if key in digests:
            print(f"sample {key} read twice", file=sys.stderr)
            return 1
        digests[key] = [cls, hashlib.sha256(image).hexdigest()]
    took = time.perf_counter() - t0
    print(f"{len(digests)} samples from {len(shards)} shards in {took:.2f} s, "
          f"{len(digests) / took:.0f} samples/s ({args.workers} workers)")
    if args.digests:
        with open(args.digests, "w") as f:
            json.dump(digests, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
