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
    "content hello.txt": "ac7ec81ccb9b305ab483efe867aea8fee1528d47695c657885d22004ce142272",
    "file hello.txt": "b143fc28d97ad8d3e4dd5911983f6b6815568f169d683596a6d1234ecb7bf480",
    "content zeros.bin": "df7905fb0a0a5fb532dc73a6084878decda3c467c38fc12bb4b05a4241a6c1a1",
    "file zeros.bin": "0117b5c7fc0805006c97b8ca577866a539de256c6c050543679365f0d886be37",
    "tree data": "d41ce031cba1540b3e859ebc269ce5ebabe7225479fd317d455b9cf38e625ff1",
    "tree example": "21d1f9f215776dc3a7bbc8ddd62e6b9cf6680edb7cabcf5525fa6547ed21458a",
}
