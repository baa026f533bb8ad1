"""The training examples (examples/*.py, issue 14, "Done when" 1) run as scripts against a
real mount, and with the direct API, and every decoded pixel array or byte they read is
checked against the source.

One volume is mounted for the module; the source is a few hundred small JPEGs made here
with Pillow in an ImageFolder tree (3 classes), copied into the mount.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import MiB, Mounter, Volume, create_volume, drop_cache, read_events

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CLASSES = ("cat", "dog", "fox")
PER_CLASS = 80
EXAMPLE_TIMEOUT = 120  # seconds for one example run


@dataclass
class Setup:
    vol: Volume
    mnt: Path
    src: Path  # the ImageFolder tree on local disk
    out: Path  # where the examples write their digests


def make_jpegs(root: Path) -> None:
    """Small JPEGs of different sizes and contents (gradients with noise: they decode to
    arrays that differ, not to flat colour)."""
    rng = np.random.default_rng(14)
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            h, w = 40 + (i % 7) * 4, 56 + (i % 5) * 8
            y, x = np.mgrid[0:h, 0:w]
            base = np.stack([x * 4 + c * 60, y * 5 + i, (x + y) * 2], axis=-1) % 256
            noise = rng.integers(0, 40, size=(h, w, 3))
            pixels = ((base + noise) % 256).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{cls}{i:03d}.jpg", quality=90)


def decoded(path: Path) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("training")
    src = base / "src"
    make_jpegs(src)
    vol = create_volume(base, "vol")
    m = Mounter()
    try:
        mnt = m.mount(vol, base / "mnt")
        shutil.copytree(src, mnt / "train")
        yield Setup(vol, mnt, src, base)
    finally:
        problems = m.cleanup()
    assert not problems, problems


def run_example(script: str, *args: object) -> str:
    """Run examples/SCRIPT as a program (this checkout's fusefs on its path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                          capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def expected_images(src: Path) -> dict[str, list]:
    return {f"{cls}/{p.name}": [c, decoded(p)] for c, cls in enumerate(CLASSES)
            for p in sorted((src / cls).iterdir())}


def drop_tree_cache(root: Path) -> None:
    """Drop the kernel's cached pages of every file under root: reads go to the daemon."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            drop_cache(Path(dirpath, name))


def test_imagefolder_dataloader_through_the_mount(setup: Setup) -> None:
    out = setup.out / "mount.json"
    drop_tree_cache(setup.mnt / "train")
    stdout = run_example("imagefolder_dataloader.py", "mount", setup.mnt / "train",
                         "--workers", 4, "--digests", out)
    assert f"{len(CLASSES) * PER_CLASS} images" in stdout and "images/s" in stdout
    assert json.loads(out.read_text()) == expected_images(setup.src)


def test_imagefolder_dataloader_with_the_direct_api(setup: Setup) -> None:
    """Beside the live mount: the volume directory is read by each worker itself."""
    out = setup.out / "direct.json"
    stdout = run_example("imagefolder_dataloader.py", "direct", setup.vol.path, "/train",
                         "--key-file", setup.vol.key, "--workers", 4, "--epochs", 2,
                         "--digests", out)
    assert stdout.count(f"{len(CLASSES) * PER_CLASS} images") == 2
    assert json.loads(out.read_text()) == expected_images(setup.src)
    assert read_events(setup.vol) == []


def test_tar_shards_packed_into_and_streamed_from_the_mount(setup: Setup) -> None:
    shards = setup.mnt / "shards"
    stdout = run_example("tar_shards.py", "pack", setup.src, shards, "--per-shard", 50)
    assert "5 shards" in stdout
    assert sorted(os.listdir(shards)) == [f"shard-{n:06d}.tar" for n in range(5)]
    out = setup.out / "shards.json"
    drop_tree_cache(shards)
    stdout = run_example("tar_shards.py", "stream", shards, "--workers", 4,
                         "--digests", out)
    assert "240 samples from 5 shards" in stdout
    expected = {f"{cls}/{p.stem}": [cls, hashlib.sha256(p.read_bytes()).hexdigest()]
                for cls in CLASSES for p in (setup.src / cls).iterdir()}
    assert json.loads(out.read_text()) == expected
    with open(shards / "shard-000003.tar", "rb") as f:  # a shard is a plain tar file
        assert f.read(512)[257:262] == b"ustar"


def test_numpy_memmap_of_a_large_array_through_the_mount(setup: Setup) -> None:
    rows, cols = 12_000, 768  # 35 MiB of float32: 9 chunks
    local, mounted = setup.out / "local.npy", setup.mnt / "features.npy"
    run_example("numpy_memmap.py", "write", local, "--rows", rows, "--cols", cols)
    run_example("numpy_memmap.py", "write", mounted, "--rows", rows, "--cols", cols)
    assert os.path.getsize(mounted) == os.path.getsize(local) > 32 * MiB
    source = np.load(local)
    drop_cache(mounted)
    out = setup.out / "memmap.json"
    run_example("numpy_memmap.py", "read", mounted, "--batches", 40, "--batch-size", 64,
                "--digests", out)
    got = json.loads(out.read_text())
    assert got["shape"] == [rows, cols] and got["dtype"] == "float32"
    assert got["sha256"] == hashlib.sha256(source.tobytes()).hexdigest()  # every byte
    assert len(got["batches"]) == 40
    for rows_read, sha in got["batches"]:
        assert sha == hashlib.sha256(source[rows_read].tobytes()).hexdigest()
    with open(mounted, "rb") as f:  # the file itself, byte for byte
        assert hashlib.sha256(f.read()).digest() == \
            hashlib.sha256(local.read_bytes()).digest()
