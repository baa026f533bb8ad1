"""The fingerprint definition (codec.digest): pure, no I/O but a plain temp directory.

The property that makes fingerprints from the metadata possible: with a power-of-two chunk
size, a file's content digest follows from its chunks' digests, whatever the chunk size.
The worked example of docs/format.md is pinned here, so the document and the code agree.
"""

from __future__ import annotations

import os
import random

import pytest

from fusefs.codec import digest
from fusefs.pathdigest import of_plain_path

LEAF = digest.LEAF


@pytest.mark.parametrize("size", [0, 1, LEAF - 1, LEAF, LEAF + 1, 3 * LEAF, 5 * LEAF + 7,
                                  (1 << 20) + 3, 9 * (1 << 20) // 2])
@pytest.mark.parametrize("chunk", [LEAF, 4 * LEAF, 1 << 20, 4 << 20])
def test_a_file_digest_follows_from_its_chunk_digests(size: int, chunk: int) -> None:
    data = random.Random(size).randbytes(size)
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    assert digest.combinable(chunk)
    assert digest.combine([digest.content(p) for p in parts]) == digest.content(data)


@pytest.mark.parametrize("chunk", [LEAF + 1, 3 << 20, 100_000, LEAF // 2])
def test_chunk_sizes_that_are_not_a_power_of_two_are_not_combined(chunk: int) -> None:
    assert not digest.combinable(chunk)


@pytest.mark.parametrize("size", [0, 1, LEAF - 3, LEAF, 2 * LEAF, 3 * LEAF + 5, 64 * LEAF,
                                  100 * LEAF + 1])
def test_the_digest_of_a_hole_is_that_of_its_zeros(size: int) -> None:
    assert digest.zeros(size) == digest.content(bytes(size))


def test_a_stream_in_odd_pieces_has_the_digest_of_the_whole() -> None:
    rnd = random.Random(3)
    data = rnd.randbytes(7 * LEAF + 123)
    hasher = digest.ContentHasher()
    at = 0
    while at < len(data):
        step = rnd.choice([1, 17, LEAF - 1, LEAF, 3 * LEAF + 2])
        hasher.update(data[at : at + step])
        at += step
    assert hasher.size == len(data)
    assert hasher.digest() == digest.content(data)
    assert digest.ContentHasher().digest() == digest.content(b"")


def test_a_tree_digest_does_not_depend_on_the_order_of_its_entries() -> None:
    entries = [(b"b", digest.FILE, bytes(32)), (b"a", digest.DIR, bytes(range(32))),
               (b"c", digest.SYMLINK, b"a/b")]
    assert digest.tree_digest(entries) == digest.tree_digest(list(reversed(entries)))
    assert digest.tree_digest(entries) != digest.tree_digest(entries[:2])


def test_each_kind_of_change_changes_the_fingerprint(tmp_path) -> None:
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d" / "x").write_bytes(b"hello")
    (root / "y").write_bytes(bytes(LEAF + 1))
    os.symlink("d/x", root / "l")
    seen = {of_plain_path(str(root))["fingerprint"]}

    def changed() -> None:
        fp = of_plain_path(str(root))["fingerprint"]
        assert fp not in seen
        seen.add(fp)

    (root / "d" / "x").write_bytes(b"hellp")  # one byte
    changed()
    (root / "d" / "x").rename(root / "d" / "z")  # a rename
    changed()
    (root / "new").write_bytes(b"")  # an empty file added
    changed()
    (root / "new").unlink()  # ... and removed again: back to a value seen before
    assert of_plain_path(str(root))["fingerprint"] in seen
    os.remove(root / "l")
    os.symlink("d/z", root / "l")  # a link target
    changed()
    (root / "d" / "e").mkdir()  # an empty directory
    changed()
    os.chmod(root / "y", 0o600)  # modes do not count (see docs/format.md)
    assert of_plain_path(str(root))["fingerprint"] in seen


def test_the_worked_example_of_the_format_document(tmp_path) -> None:
    """docs/format.md, "Fingerprints": the same tree, the same values."""
    root = tmp_path / "example"
    (root / "data").mkdir(parents=True)
    (root / "data" / "hello.txt").write_bytes(b"hello, world")
    (root / "data" / "zeros.bin").write_bytes(bytes(LEAF + 1))
    os.symlink("data/hello.txt", root / "latest")
    hello = digest.content(b"hello, world")
    assert hello.hex() == EXAMPLE["content hello.txt"]
    assert digest.file_digest(12, hello).hex() == EXAMPLE["file hello.txt"]
    zeros = digest.content(bytes(LEAF + 1))
    assert digest.node(digest.leaf(bytes(LEAF)), digest.leaf(b"\0")) == zeros
    assert zeros.hex() == EXAMPLE["content zeros.bin"]
    assert digest.file_digest(LEAF + 1, zeros).hex() == EXAMPLE["file zeros.bin"]
    got = of_plain_path(str(root / "data"))
    assert got["fingerprint"] == EXAMPLE["tree data"]
    assert of_plain_path(str(root))["fingerprint"] == EXAMPLE["tree example"]


EXAMPLE = {
    "content hello.txt": "a4f041f6831a71b8274aa7771afd74b1ddf18c0d2c002b2e7cd6fcc926823ef6",
    "file hello.txt": "f1ac429168ff0faac286937fc5e06590602d093d6e2c61372ee977596150f876",
    "content zeros.bin": "44bf437e6076fbc834a28481312f93859751740969ee7f86d1f981355095c22c",
    "file zeros.bin": "5a8fcc12859921ed1b7bd73fdb32c05797493cd4e91e9c6efc73f1715e4d2fcd",
    "tree data": "ac25417864d127f9307d5bc744cb986976828a2b062188dc6f5633512353886d",
    "tree example": "d05190df0b4e8842b14483298dc2adedc953f5beb34a50452fda8f79040ea04f",
}
