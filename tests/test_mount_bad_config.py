"""Broken volume state and hostile environments: a damaged config or metadata database, a
full store disk, a key file that cannot be written. Each gets one line on stderr, exit 1, no
traceback, and nothing else is damaged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import (
    MiB,
    Mounter,
    Volume,
    assert_fails,
    assert_ok,
    create_volume,
    rand_bytes,
    run_fusefs,
)

pytestmark = pytest.mark.mount


def test_broken_config_is_refused_and_left_alone(tmp_path: Path, mounter: Mounter) -> None:
    vol = create_volume(tmp_path, "v")
    cfg = vol.path / "fusefs.toml"
    for text in ("this is = = not toml", "format = 1\n", 'volume_id = "zz"\n' + cfg.read_text()):
        cfg_backup = cfg.read_bytes()
        cfg.write_text(text)
        msg = assert_fails(mounter.try_mount(vol, tmp_path / "m"), contains=["config"])
        assert "Traceback" not in msg
        assert_fails(run_fusefs("status", vol.path), contains=["config"])
        assert cfg.read_text() == text  # a failed command never rewrites the config
        cfg.write_bytes(cfg_backup)
    mnt = mounter.mount(vol, tmp_path / "m")  # the repaired config works again
    assert mnt.is_dir()


def test_broken_metadata_database_is_refused(tmp_path: Path, mounter: Mounter) -> None:
    vol = create_volume(tmp_path, "v")
    db = vol.path / "meta.db"
    good = db.read_bytes()
    db.write_bytes(b"\0garbage" * 1000)
    assert_fails(mounter.try_mount(vol, tmp_path / "m"), contains=["metadata"])
    assert db.read_bytes() == b"\0garbage" * 1000
    db.write_bytes(good)
    mounter.mount(vol, tmp_path / "m")


def test_key_file_in_missing_directory(tmp_path: Path) -> None:
    stores = []
    for i in range(3):
        (tmp_path / f"s{i}").mkdir()
        stores += ["--store", str(tmp_path / f"s{i}")]
    res = run_fusefs("init", tmp_path / "vol", *stores, "--key-file", tmp_path / "no" / "k")
    assert_fails(res, contains=["key file"])
    assert not (tmp_path / "vol").exists()  # nothing half-made is left behind
    assert_ok(run_fusefs("init", tmp_path / "vol", *stores, "--key-file", tmp_path / "k"))


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 4 MiB tmpfs: a store disk that fills up."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    d = tmp_path / "tiny"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_full_store_disk(tmp_path: Path, mounter: Mounter, small_tmpfs: Path) -> None:
    """Two stores on a disk that fills up: below the write quorum a write fails with a clear
    errno, nothing already stored is damaged, and the volume keeps working."""
    stores = []
    for i in range(5):
        d = (small_tmpfs if i < 2 else tmp_path) / f"s{i}"
        d.mkdir()
        stores += ["--store", f"file://{d}"]
    assert_ok(run_fusefs("init", tmp_path / "vol", *stores, "--data-shares", "3",
                         "--parity-shares", "2", "--key-file", tmp_path / "key"))
    vol = Volume(tmp_path / "vol", [Path(u.removeprefix("file://")) for u in stores[1::2]],
                 tmp_path / "key", 3, 2)
    mnt = mounter.mount(vol, tmp_path / "m")
    before = rand_bytes(MiB, "before")
    (mnt / "before.bin").write_bytes(before)
    big = rand_bytes(16 * MiB, "big")  # ~5.3 MiB of shares per store: more than 4 MiB fits
    with pytest.raises(OSError) as err, open(mnt / "big.bin", "wb") as f:
        f.write(big)
        f.flush()
        os.fsync(f.fileno())
    assert err.value.errno in (28, 5), err.value  # ENOSPC or EIO
    assert (mnt / "before.bin").read_bytes() == before
    # free its space now: truncate (unlink frees only once the kernel forgets the inode),
    # then fsync so the replaced shares are deleted now, not in the next 5 s pass
    os.truncate(mnt / "big.bin", 0)
    fd = os.open(mnt, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    (mnt / "big.bin").unlink()
    (mnt / "after.bin").write_bytes(b"small files still fit")
    mounter.umount(mnt)
    mnt = mounter.mount(vol, tmp_path / "m")
    assert (mnt / "before.bin").read_bytes() == before
    assert (mnt / "after.bin").read_bytes() == b"small files still fit"
