"""A volume over 2 local stores and 3 S3 buckets on a real HTTP S3 server (moto on
127.0.0.1, a separate process): reads and writes through a real mount, an outage of the S3
server, and recovery; bad credentials and a missing bucket are one-line errors at init."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import (
    MiB,
    Mounter,
    assert_fails,
    mixed_volume,
    rand_bytes,
    read_uncached,
    run_fusefs,
    scrub_json,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]



def test_mixed_local_and_s3_volume(tmp_path: Path, s3_server, mounter: Mounter) -> None:
    vol, _, _ = mixed_volume(tmp_path, s3_server, 3, 2, 2)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = {f"d/f{i}.bin": rand_bytes(size, i)
             for i, size in enumerate([0, 1, 4097, MiB, 3 * MiB + 17])}
    (mnt / "d").mkdir()
    for rel, data in files.items():
        (mnt / rel).write_bytes(data)
    mounter.umount(mnt)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    for rel, data in files.items():
        assert read_uncached(mnt / rel) == data, rel
    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert sum(s["shares_checked"] for s in report["stores"]) == 5 * report["chunks"]


def test_s3_outage_and_recovery(tmp_path: Path, mounter: Mounter) -> None:
    """K=2 over 2 local + 3 S3 stores: with the S3 server down, reads go on from the local
    stores; after it comes back (empty, as moto keeps nothing), scrub refills the buckets."""
    pytest.importorskip("moto.server")
    from s3server import S3Server, use_test_credentials

    use_test_credentials()
    server = S3Server().start()
    try:
        vol, buckets, _ = mixed_volume(tmp_path, server, 2, 3, 2)
        mnt = mounter.mount(vol, tmp_path / "mnt")
        files = {f"f{i}.bin": rand_bytes(MiB + 1000 * i, f"o{i}") for i in range(4)}
        for rel, data in files.items():
            (mnt / rel).write_bytes(data)
        server.stop()
        for rel, data in files.items():
            assert read_uncached(mnt / rel) == data, f"{rel} unreadable during the outage"
        # 2 stores left: below the write quorum of K+1 = 3
        with pytest.raises(OSError), open(mnt / "new.bin", "wb") as f:
            f.write(b"x" * 1000)
            f.flush()
            os.fsync(f.fileno())
        server.start()  # same port, empty: the buckets come back empty
        for b in buckets:
            server.create_bucket(b)
        res, report = scrub_json(mnt)
        assert res.returncode == 0 and report["healthy"], res.describe()
        res, report = scrub_json(mnt, "--no-repair")
        assert res.returncode == 0 and report["healthy"], res.describe()
        objects = server.client().list_objects_v2(Bucket=buckets[0], Prefix="vol/objects/")
        assert objects.get("KeyCount", 0) > 0, "scrub did not refill the bucket"
        mounter.umount(mnt)
        mnt = mounter.mount(vol, tmp_path / "mnt")
        for rel, data in files.items():
            assert read_uncached(mnt / rel) == data, rel
    finally:
        server.stop()


def test_bad_credentials(tmp_path: Path) -> None:
    """A server that checks keys (moto with authentication on) refuses ours: one line that
    says so, and nothing is created."""
    pytest.importorskip("moto.server")
    from s3server import S3Server, use_test_credentials

    use_test_credentials()
    server = S3Server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    try:
        (tmp_path / "l").mkdir()
        msg = assert_fails(run_fusefs(
            "init", tmp_path / "vol", "--store", f"file://{tmp_path / 'l'}",
            "--store", f"s3://somebucket/p?endpoint={server.endpoint}",
            "--data-shares", "1", "--parity-shares", "1", "--key-file", tmp_path / "k"))
        assert "access denied" in msg and "credentials" in msg, msg
        assert not (tmp_path / "vol").exists()
    finally:
        server.stop()


def test_missing_bucket_and_bad_endpoint(tmp_path: Path, s3_server) -> None:
    (tmp_path / "l").mkdir()
    base = ["init", tmp_path / "vol", "--store", f"file://{tmp_path / 'l'}",
            "--data-shares", "1", "--parity-shares", "1", "--key-file", tmp_path / "k"]
    msg = assert_fails(run_fusefs(
        *base, "--store", f"s3://no-such-bucket/p?endpoint={s3_server.endpoint}"))
    assert "does not exist" in msg and "no-such-bucket" in msg
    msg = assert_fails(run_fusefs(*base, "--store", "s3://b/p?endpoint=http://127.0.0.1:9"))
    assert "s3://b/p" in msg
    assert not (tmp_path / "vol").exists()
