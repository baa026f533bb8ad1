"""Reads with damaged stores (issue 2, "Done when" 2).

A K=3/M=2 volume over 5 stores is written once (a tree of awkward sizes) and unmounted; its
volume directory and stores are saved. Each test restores that state, damages some stores
while the volume is NOT mounted (so no page cache can hide the damage), mounts it fresh and
reads every file:

- any 2 stores emptied, corrupted or shuffled: every file reads back bit-identical;
- 3 stores damaged: every non-empty file fails with EIO, and no wrong byte is ever returned.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from pathlib import Path

import pytest
from helpers import (
    KiB,
    MiB,
    Mounter,
    Snapshot,
    Volume,
    assert_tree,
    copy_dir,
    copy_in,
    create_volume,
    drop_cache,
    rand_bytes,
    read_checked,
    status_json,
    tree_layout,
    write_tree,
)

pytestmark = pytest.mark.mount

N_STORES = 5


class Pristine:
    """A written volume and a saved copy of its directory and stores."""

    def __init__(self, base: Path) -> None:
        self.base = base
        # share objects: the damage tools work on whole objects (a pack's members would be
        # hit or missed by where they lie); test_mount_packs damages packs
        self.vol = create_volume(base, "vol", pack_below="0")
        cs = int(status_json(self.vol.path)["chunk_size"])
        sizes = [0, 1, 4095, 4097, 64 * KiB + 3, MiB + 1, 2 * cs + 17]
        self.layout = tree_layout(sizes)
        src = base / "src"
        self.expected = write_tree(src, self.layout, seed="degraded")
        copy_in(self.vol, src, base / "mnt-write")
        for i in range(N_STORES):
            assert self.vol.objects(i), f"store {i} holds no share object after writing"
        self.snapshot = Snapshot(self.vol, base / "saved")

    def restore(self) -> Volume:
        return self.snapshot.restore()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("degraded"))


def empty_store(vol: Volume, i: int) -> None:
    root = vol.stores[i] / "objects"
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    assert vol.objects(i) == []


def corrupt_store(vol: Volume, i: int) -> None:
    """Flip bytes all over every object of store i (start, every 512th byte, middle, end)."""
    objects = vol.objects(i)
    assert objects
    for p in objects:
        data = bytearray(p.read_bytes())
        if not data:
            p.write_bytes(b"\xff")
            continue
        for pos in {0, len(data) // 2, len(data) - 1, *range(0, len(data), 512)}:
            data[pos] ^= 0xFF
        p.write_bytes(bytes(data))


def shuffle_store(vol: Volume, i: int) -> None:
    """Give every object of store i the content of another one (valid shares, wrong place)."""
    objects = vol.objects(i)
    assert len(objects) >= 2
    contents = [p.read_bytes() for p in objects]
    for p, data in zip(objects, contents[1:] + contents[:1], strict=True):
        p.write_bytes(data)


def truncate_store(vol: Volume, i: int) -> None:
    """Cut every object of store i to half its length (a short or interrupted upload)."""
    for p in vol.objects(i):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])


def dirify_store(vol: Volume, i: int) -> None:
    """Replace every object of store i by an empty directory (reads fail with EISDIR)."""
    objects = vol.objects(i)
    assert objects
    for p in objects:
        p.unlink()
        p.mkdir()


DAMAGE = {
    "empty": empty_store,
    "corrupt": corrupt_store,
    "shuffle": shuffle_store,
    "truncate": truncate_store,
    "dirs": dirify_store,
}


def damage(vol: Volume, plan: dict[int, str]) -> None:
    for i, how in plan.items():
        DAMAGE[how](vol, i)


PAIRS = list(itertools.combinations(range(N_STORES), 2))
TWO_STORE_CASES = (
    [("empty", p) for p in PAIRS]
    + [("corrupt", p) for p in PAIRS]
    + [("shuffle", (0, 4)), ("shuffle", (1, 2)), ("mixed", (0, 3)), ("mixed", (2, 4))]
    + [("truncate", (1, 3)), ("dirs", (0, 1))]
)


def plan_of(how: str, stores: tuple[int, ...]) -> dict[int, str]:
    if how == "mixed":  # one store emptied, the others corrupted
        return {s: ("empty" if n == 0 else "corrupt") for n, s in enumerate(stores)}
    return dict.fromkeys(stores, how)


@pytest.mark.parametrize(
    ("how", "stores"), TWO_STORE_CASES, ids=[f"{h}-s{a}-s{b}" for h, (a, b) in TWO_STORE_CASES]
)
def test_two_stores_damaged_every_file_reads_back(
    pristine: Pristine, tmp_path: Path, mounter: Mounter, how: str, stores: tuple[int, int]
):
    vol = pristine.restore()
    damage(vol, plan_of(how, stores))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt / "tree", pristine.expected)
    mounter.umount(mnt)


THREE_STORE_CASES = [
    ("empty", (0, 1, 2)),
    ("empty", (2, 3, 4)),
    ("corrupt", (0, 2, 4)),
    ("corrupt", (1, 2, 3)),
    ("shuffle", (0, 1, 4)),
    ("mixed", (1, 3, 4)),
    ("truncate", (0, 2, 3)),
    ("dirs", (2, 3, 4)),
]


@pytest.mark.parametrize(
    ("how", "stores"),
    THREE_STORE_CASES,
    ids=[f"{h}-" + "-".join(f"s{i}" for i in st) for h, st in THREE_STORE_CASES],
)
def test_three_stores_damaged_reads_fail_with_eio(
    pristine: Pristine, tmp_path: Path, mounter: Mounter, how: str, stores: tuple[int, ...]
):
    vol = pristine.restore()
    damage(vol, plan_of(how, stores))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    outcome = {}
    for rel, data in pristine.expected.items():
        p = mnt / "tree" / rel
        assert os.stat(p).st_size == len(data), f"{rel}: metadata should be intact"
        outcome[rel] = read_checked(p, data)  # asserts: no wrong byte, ever
        if outcome[rel] == "ok":
            # a second read (page cache or not) must agree
            outcome[rel] = read_checked(p, data)
    bad = {rel: r for rel, r in outcome.items() if pristine.expected[rel] and r != "eio"}
    assert not bad, f"with 3 of 5 stores damaged these reads did not fail with EIO: {bad}"
    assert all(r == "ok" for rel, r in outcome.items() if not pristine.expected[rel])
    listing = sorted(os.listdir(mnt / "tree"))
    assert listing, "the directory tree must still be listable"
    mounter.umount(mnt)


def test_repeated_eio_does_not_break_the_mount(pristine: Pristine, tmp_path: Path, mounter):
    """After EIO on damaged files the mount keeps serving new writes and reads."""
    vol = pristine.restore()
    damage(vol, plan_of("empty", (0, 1, 2)))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    big = next(rel for rel, d in pristine.expected.items() if len(d) > MiB)
    for _ in range(3):
        with pytest.raises(OSError) as info:
            (mnt / "tree" / big).read_bytes()
        assert info.value.errno == errno.EIO
    # stores are present (only emptied), so writing new data works
    (mnt / "fresh.bin").write_bytes(b"still alive" * 1000)
    assert (mnt / "fresh.bin").read_bytes() == b"still alive" * 1000
    mounter.umount(mnt)


def test_degraded_reads_never_write_back_wrong_data(pristine: Pristine, tmp_path: Path, mounter):
    """Read with 2 stores corrupted (repairs may rewrite shares), then corrupt 2 others:
    every read is right or EIO, never wrong bytes."""
    vol = pristine.restore()
    damage(vol, plan_of("corrupt", (0, 1)))
    mnt = mounter.mount(vol, tmp_path / "mnt1")
    assert_tree(mnt / "tree", pristine.expected)
    mounter.umount(mnt)
    damage(vol, plan_of("corrupt", (2, 3)))
    mnt = mounter.mount(vol, tmp_path / "mnt2")
    for rel, data in pristine.expected.items():
        read_checked(mnt / "tree" / rel, data)
    mounter.umount(mnt)


def test_stores_damaged_while_mounted(pristine: Pristine, tmp_path: Path, mounter):
    """Stores lost under a live mount: with 2 gone every read is right, with 3 every read is
    right (from a cache) or EIO, never wrong."""
    vol = pristine.restore()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    for rel in pristine.expected:
        drop_cache(mnt / "tree" / rel)
    damage(vol, plan_of("empty", (1, 4)))
    assert_tree(mnt / "tree", pristine.expected)
    for rel in pristine.expected:
        drop_cache(mnt / "tree" / rel)
    damage(vol, plan_of("corrupt", (2,)))
    for rel, data in pristine.expected.items():
        read_checked(mnt / "tree" / rel, data)
    mounter.umount(mnt)


def test_rolled_back_shares_never_return_stale_bytes(tmp_path: Path, volume, mounter):
    """Old versions of shares put back under the current names: 2 stores -> the new bytes,
    3 stores -> EIO; the old bytes are never returned."""
    vol = volume()
    cs = int(status_json(vol.path)["chunk_size"])
    v1 = rand_bytes(2 * cs + 100, "v1")
    v2 = rand_bytes(2 * cs + 100, "v2")
    mnt = mounter.mount(vol, tmp_path / "m")
    (mnt / "f").write_bytes(v1)
    mounter.umount(mnt)
    old = [[p.read_bytes() for p in vol.objects(i)] for i in range(N_STORES)]
    mnt = mounter.mount(vol, tmp_path / "m")
    (mnt / "f").write_bytes(v2)
    mounter.umount(mnt)
    saved = tmp_path / "saved"
    for i in range(N_STORES):
        copy_dir(vol.stores[i], saved / f"s{i}")

    def roll_back(stores: tuple[int, ...]) -> None:
        for i in range(N_STORES):
            copy_dir(saved / f"s{i}", vol.stores[i])
        for i in stores:
            current = vol.objects(i)
            assert current and old[i]
            for n, p in enumerate(current):
                p.write_bytes(old[i][n % len(old[i])])

    roll_back((0, 3))
    mnt = mounter.mount(vol, tmp_path / "m")
    assert read_checked(mnt / "f", v2) == "ok"
    mounter.umount(mnt)
    roll_back((0, 1, 3))
    mnt = mounter.mount(vol, tmp_path / "m")
    assert read_checked(mnt / "f", v2) == "eio"
    mounter.umount(mnt)


def _random_reads(path: Path, data: bytes, seed: int, count: int = 60) -> dict[str, int]:
    """Small preads at scattered offsets (the ranged-read path): each is right, or EIO (or
    short: counted as EIO)."""
    import random

    rng = random.Random(seed)
    outcome = {"ok": 0, "eio": 0}
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            off = rng.randrange(1, len(data))
            size = rng.choice([1, 4 * KiB, 64 * KiB + 5, 128 * KiB, 200 * KiB])
            try:
                got = os.pread(fd, size, off)
            except OSError as e:
                assert e.errno == errno.EIO, e
                outcome["eio"] += 1
                continue
            # a short read is allowed (the kernel returns the bytes before a failed page),
            # wrong bytes never are
            assert got == data[off : off + len(got)], f"wrong bytes at {off} of {path}"
            if len(got) < min(size, len(data) - off):
                outcome["eio"] += 1
                continue
            outcome["ok"] += 1
    finally:
        os.close(fd)
    return outcome


@pytest.mark.parametrize("how", ["corrupt", "shuffle", "truncate", "mixed"])
def test_random_reads_with_two_damaged_stores(pristine: Pristine, tmp_path: Path, mounter,
                                              how: str):
    """Ranged reads give up on damaged segments and fall back to the whole-chunk read."""
    vol = pristine.restore()
    damage(vol, plan_of(how, (0, 2)))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    big = {rel: d for rel, d in pristine.expected.items() if len(d) > MiB}
    assert big
    for n, (rel, data) in enumerate(sorted(big.items())):
        assert _random_reads(mnt / "tree" / rel, data, seed=n) == {"ok": 60, "eio": 0}
    mounter.umount(mnt)


def test_random_reads_with_three_damaged_stores_never_return_wrong_bytes(
        pristine: Pristine, tmp_path: Path, mounter):
    vol = pristine.restore()
    damage(vol, plan_of("corrupt", (0, 1, 3)))
    mnt = mounter.mount(vol, tmp_path / "mnt")
    for n, (rel, data) in enumerate(sorted(pristine.expected.items())):
        if len(data) > MiB:
            outcome = _random_reads(mnt / "tree" / rel, data, seed=n)
            assert outcome["eio"] > 0, outcome  # every chunk has 3 bad shares
    mounter.umount(mnt)
