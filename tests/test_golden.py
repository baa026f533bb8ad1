"""Golden volumes: small volumes in every on-store format fusefs has written, kept in
tests/golden/ (made by scripts/make_golden.py; format 2 by the release that wrote it). Each
must mount with today's code and read back bit-identically; a format-2 volume keeps working
in format 2 (new writes included). A format change that breaks one fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import Mounter, Volume, read_uncached

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

GOLDEN = Path(__file__).parent / "golden"
FORMATS = sorted(p.name for p in GOLDEN.glob("format-*"))


def copy_golden(name: str, dest: Path) -> tuple[Volume, dict]:
    """A working copy of a golden volume, its config pointed at the copied stores."""
    src = GOLDEN / name
    shutil.copytree(src / "volume", dest / "volume")
    shutil.copytree(src / "stores", dest / "stores")
    shutil.copy(src / "key", dest / "key")
    (dest / "key").chmod(0o600)
    manifest = json.loads((src / "manifest.json").read_text())
    stores = sorted((dest / "stores").iterdir())
    config = dest / "volume" / "fusefs.toml"
    text = config.read_text()
    for old, new in zip(manifest["stores_when_made"], stores, strict=True):
        text = text.replace(f'"file://{old}"', f'"file://{new}"')
    config.write_text(text)
    return Volume(dest / "volume", stores, dest / "key", manifest["data_shares"],
                  manifest["parity_shares"]), manifest


def assert_matches(mnt: Path, manifest: dict) -> None:
    for rel, want in manifest["files"].items():
        data = read_uncached(mnt / rel)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (want["size"],
                                                                  want["sha256"]), rel
    for rel, target in manifest["symlinks"].items():
        assert os.readlink(mnt / rel) == target, rel
    for rel in manifest["directories"]:
        assert (mnt / rel).is_dir(), rel
    for a, b in manifest["hardlinks"]:
        assert os.stat(mnt / a).st_ino == os.stat(mnt / b).st_ino, (a, b)
    for rel, attrs in manifest["xattrs"].items():
        for name, value in attrs.items():
            assert os.getxattr(mnt / rel, name) == value.encode(), (rel, name)


def test_every_known_format_has_a_golden_volume() -> None:
    from fusefs.config import FORMATS as KNOWN

    assert [f"format-{n}" for n in KNOWN] == FORMATS


@pytest.mark.parametrize("name", FORMATS)
def test_a_golden_volume_reads_back_bit_identically(name: str, mounter: Mounter,
                                                    tmp_path: Path) -> None:
    vol, manifest = copy_golden(name, tmp_path)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_matches(mnt, manifest)
    (mnt / "written-today").write_bytes(b"new data in an old volume" * 1000)
    mounter.umount(mnt)
    config = (vol.path / "fusefs.toml").read_text()
    assert re.search(rf"^format = {manifest['format']}$", config, re.M), "format changed"
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_matches(mnt, manifest)
    assert (mnt / "written-today").read_bytes() == b"new data in an old volume" * 1000
    mounter.umount(mnt)


@pytest.mark.parametrize("name", FORMATS)
def test_a_golden_volume_with_m_stores_emptied_reads_back(name: str, mounter: Mounter,
                                                          tmp_path: Path) -> None:
    vol, manifest = copy_golden(name, tmp_path)
    for store in vol.stores[: manifest["parity_shares"]]:
        shutil.rmtree(store / "objects")
    mnt = mounter.mount(vol, tmp_path / "mnt", "--read-only")
    assert_matches(mnt, manifest)
    mounter.umount(mnt)
