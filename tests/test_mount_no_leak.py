"""The stores hold no plaintext and no names (issue 2, "Done when" 3).

Files with known content and distinctive names are written through a mount (plus a symlink,
an xattr and a rename), the volume is unmounted, and every file under every store is scanned:
no 64-byte window of any file's content, and no file, directory, link or xattr name or value,
may appear in an object's bytes or in its path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import MiB, rand_bytes

pytestmark = pytest.mark.mount

SECRET_NAMES = [
    "topsecret-dir",
    "nested-confidential-subdir",
    "secret-name-xyzzy.bin",
    "quarterly-numbers-plugh.csv",
    "renamed-secret-grault.dat",
    "secret-link-frobozz",
    "user.secret-attr-zorkmid",
]
SECRET_VALUES = [
    b"/target/of/secret-symlink-quux",
    b"xattr-value-waldo-4f1d2c",
    b"tiny-secret-garply",  # a whole small file
]
TEXT = (b"The quick brown fox jumps over the lazy dog; secret payroll line 0042, "
        b"account=plover, amount=31337.\n")


def windows(data: bytes, width: int = 64) -> list[bytes]:
    """Windows from the start, the middle, the end and every ~100 KiB of DATA."""
    if len(data) < width:
        return [data] if len(data) >= 16 else []
    starts = {0, (len(data) - width) // 2, len(data) - width, *range(0, len(data) - width, 100_000)}
    return [data[s:s + width] for s in sorted(starts)]


def test_stores_hold_no_plaintext_and_no_names(tmp_path: Path, volume, mounter):
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    d = mnt / "topsecret-dir" / "nested-confidential-subdir"
    d.mkdir(parents=True)
    contents = {
        d / "secret-name-xyzzy.bin": rand_bytes(3 * MiB + 333, "leak1"),
        mnt / "topsecret-dir" / "quarterly-numbers-plugh.csv": TEXT * 20_000,
        mnt / "small.txt": TEXT[:100],
        mnt / "tiny": b"tiny-secret-garply",
        mnt / "to-be-renamed": rand_bytes(70_000, "leak2"),
    }
    for p, data in contents.items():
        p.write_bytes(data)
    os.rename(mnt / "to-be-renamed", mnt / "topsecret-dir" / "renamed-secret-grault.dat")
    os.symlink("/target/of/secret-symlink-quux", mnt / "secret-link-frobozz")
    os.setxattr(
        d / "secret-name-xyzzy.bin", "user.secret-attr-zorkmid", b"xattr-value-waldo-4f1d2c"
    )
    # overwrite part of a file, so old and new versions of chunks both pass through the stores
    with open(d / "secret-name-xyzzy.bin", "r+b") as f:
        f.seek(MiB)
        f.write(TEXT * 100)
    final = [p.read_bytes() for p in (d / "secret-name-xyzzy.bin",)]
    mounter.umount(mnt)

    probes = set()
    for data in [*contents.values(), *final]:
        probes.update(windows(data))
    probes.update(SECRET_VALUES)
    names = [n.encode() for n in SECRET_NAMES]

    scanned = 0
    for store in vol.stores:
        for dirpath, dirnames, filenames in os.walk(store):
            for name in dirnames + filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), store)
                for n in SECRET_NAMES:
                    assert n not in rel, f"name {n!r} visible in store path {store}/{rel}"
            for f in filenames:
                path = Path(dirpath, f)
                blob = path.read_bytes()
                scanned += 1
                for n in names:
                    assert n not in blob, f"name {n!r} visible inside {path}"
                for pr in probes:
                    assert pr not in blob, f"plaintext {pr[:24]!r}... visible inside {path}"
    assert scanned >= len(vol.stores) * 2, "the stores hold suspiciously few files"
    assert all(vol.objects(i) for i in range(len(vol.stores)))
