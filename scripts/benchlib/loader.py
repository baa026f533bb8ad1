"""The pipeline benchmark's workload: a DataLoader over a tree of JPEG files.

`make_images` writes an ImageFolder-style tree of distinct, decodable JPEGs (~110 KiB, made
with Pillow from a few noisy gradients; each file carries its index in a JPEG comment, so no
two files are alike) and returns each file's xxh3 digest. `ImageFiles` is a map-style dataset
(PyTorch's protocol: `__len__`, `__getitem__`; torch is not imported here): an item reads
one file whole, checks its digest (wrong bytes fail the run) and, with `decode`, decodes it
with Pillow to RGB pixels. It returns the byte count only, so that the figures measure
reading and decoding, not the queue back to the main process.

`scan` lists the tree as ImageFolder does when the dataset is made (in epoch 1, after the
cache drop: it is part of a cold start). `epoch` runs one shuffled pass with N worker
processes: through `torch.utils.data.DataLoader` when torch imports (batch size 32, the
default collate), else through a fork pool of the same size (`multiprocessing`). Workers
are started and joined inside the epoch (as a DataLoader without persistent workers does),
so their CPU time is the children's rusage of the epoch.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

from .config import BenchError, KiB

BATCH = 32
IMAGE_SIZE = (500, 375)  # ImageNet's typical size; ~110 KiB at quality 85 with this noise
_BASES = 8


def _bases(seed: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = IMAGE_SIZE
    out = []
    for b in range(_BASES):
        x = np.linspace(0, 255, w)[None, :, None]
        y = np.linspace(0, 255, h)[:, None, None]
        tint = np.array([b * 30 % 256, 128, 255 - b * 30 % 256])[None, None, :]
        pixels = (x + y) / 2 * 0.7 + tint * 0.3 + rng.normal(0, 44, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                       quality=85)
        out.append(buf.getvalue())
    return out


def _with_comment(jpeg: bytes, index: int) -> bytes:
    """The JPEG with a COM segment naming INDEX right after SOI: a distinct, valid file."""
    text = f"fusefs bench image {index}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def image_paths(root: str, n: int, classes: int) -> list[str]:
    return [os.path.join(root, "train", f"class{i % classes:03d}", f"img{i:05d}.jpg")
            for i in range(n)]


def make_images(root: str, n: int, classes: int, seed: int = 0) -> list[int]:
    """Write N JPEGs under ROOT/train/classNNN/; their xxh3-64 digests, by index."""
    bases = _bases(seed)
    os.makedirs(os.path.join(root, "train"))
    for c in range(min(classes, n)):
        os.mkdir(os.path.join(root, "train", f"class{c:03d}"))
    digests = []
    for i, path in enumerate(image_paths(root, n, classes)):
        data = _with_comment(bases[i % _BASES], i)
        with open(path, "wb") as f:
            f.write(data)
        digests.append(xxhash.xxh3_64_intdigest(data))
    return digests


def scan(root: str, digests: list[int]) -> tuple[list[str], list[int]]:
    """What torchvision's ImageFolder does when a dataset is made: list every class
    directory (sorted) and its files (sorted); the paths and their digests in that order."""
    paths, found = [], []
    top = os.path.join(root, "train")
    for cls in sorted(e.name for e in os.scandir(top) if e.is_dir()):
        d = os.path.join(top, cls)
        for name in sorted(e.name for e in os.scandir(d) if e.is_file()):
            paths.append(os.path.join(d, name))
            found.append(digests[int(name[3:-4])])  # imgNNNNN.jpg
    if len(paths) != len(digests):
        raise BenchError(f"found {len(paths)} images under {top}, expected {len(digests)}")
    return paths, found


def mean_size(root: str, n: int, classes: int) -> float:
    paths = image_paths(root, n, classes)
    return sum(os.path.getsize(p) for p in paths[:64]) / min(64, n) / KiB


def read_file(path: str) -> bytes:
    """As torchvision's loaders open a file. Python's buffered open() asks isatty(): on a
    FUSE mount that is a FUSE_IOCTL request per file, which the kernel sends again however
    often the daemon answers ENOSYS (unlike FLUSH and OPEN)."""
    with open(path, "rb") as f:
        return f.read()


def read_file_unbuffered(path: str) -> bytes:
    """The same bytes without the isatty() check (--unbuffered)."""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


@dataclass
class ImageFiles:
    """Map-style dataset over the image tree (works with torch's DataLoader unchanged)."""

    paths: list[str]
    digests: list[int]
    decode: bool
    # reader(path) -> bytes; made in the worker process by `open_reader` (after the fork)
    open_reader: Callable[[], Callable[[str], bytes]] | None = None
    unbuffered: bool = False  # open(..., buffering=0): no isatty() ioctl per file
    _reader: Callable[[str], bytes] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        if self._reader is None:
            self._reader = self.open_reader() if self.open_reader else (
                read_file_unbuffered if self.unbuffered else read_file)
        data = self._reader(self.paths[i])
        if xxhash.xxh3_64_intdigest(data) != self.digests[i]:
            raise BenchError(f"WRONG DATA read from {self.paths[i]} ({len(data)} bytes)")
        if self.decode:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                rgb = img.convert("RGB")
            if rgb.size != IMAGE_SIZE:
                raise BenchError(f"{self.paths[i]} decoded to {rgb.size}")
        return len(data)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_DATASET: ImageFiles | None = None  # the pool fallback's dataset, inherited by fork


def _pool_batch(indices: list[int]) -> int:
    assert _DATASET is not None
    return sum(_DATASET[i] for i in indices)


@dataclass
class Epoch:
    seconds: float
    worker_cpu: float  # user + system seconds of the worker processes
    main_cpu: float  # of this process (the DataLoader's main loop)
    images: int


def epoch(ds: ImageFiles, workers: int, seed: int, use_torch: bool) -> Epoch:
    """One shuffled pass over DS with WORKERS processes; every byte checked."""
    global _DATASET
    cpu0, main0 = _children_cpu(), time.process_time()
    t0 = time.perf_counter()
    total = 0
    if use_torch:
        import torch
        from torch.utils.data import DataLoader

        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(seed),
                            multiprocessing_context="fork")
        for batch in loader:
            total += int(batch.sum())
        del loader
    else:
        order = list(range(len(ds)))
        random.Random(seed).shuffle(order)
        batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
        _DATASET = ds
        pool = multiprocessing.get_context("fork").Pool(workers)
        try:
            total = sum(pool.imap_unordered(_pool_batch, batches))
            pool.close()
        finally:
            pool.terminate()
            pool.join()
            _DATASET = None
    seconds = time.perf_counter() - t0
    if total <= 0:
        raise BenchError("the epoch read nothing")
    return Epoch(seconds, _children_cpu() - cpu0, time.process_time() - main0, len(ds))
