"""Bad input to the command line (issue 2, "Bad input and faults" and "Done when" 4).

Every case asserts the exit status (1 = failure, 2 = usage error), that a failure prints
exactly one line on stderr, that no traceback appears, and that nothing was damaged: the
volume directories and stores are byte-identical before and after the failed command, and
the volume still mounts with the right key and reads back its data. A refused `init` must
leave nothing behind that would block the corrected command.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from helpers import (
    MiB,
    Mounter,
    Volume,
    assert_fails,
    assert_ok,
    create_volume,
    is_mounted,
    mount_entry,
    rand_bytes,
    run_fusefs,
    snapshot_files,
)

pytestmark = pytest.mark.mount

# Files in VOLUME a failed command may legitimately touch: the log, a stale pid, SQLite's
# side files.
VOLATILE = [r"(^|/)fusefs\.log", r"(^|/)fusefs\.pid$", r"-wal$", r"-shm$", r"\.lock$"]


class Env:
    """Two volumes (a, b) with different keys; a holds a known file."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.a = create_volume(base, "a")
        self.b = create_volume(base, "b")
        self.data = rand_bytes(MiB + 77, "precious")
        m = Mounter()
        try:
            mnt = m.mount(self.a, base / "setup-mnt")
            (mnt / "precious.bin").write_bytes(self.data)
            m.umount(mnt)
        finally:
            problems = m.cleanup()
        assert not problems, problems
        self._n = itertools.count()

    def fresh_dir(self, prefix: str) -> Path:
        d = self.base / f"{prefix}{next(self._n)}"
        return d

    def fresh_stores(self, n: int) -> list[Path]:
        stores = [self.fresh_dir("store") for _ in range(n)]
        for s in stores:
            s.mkdir()
        return stores

    def snapshot(self) -> dict[str, str]:
        snap = {}
        for vol in (self.a, self.b):
            roots = [(vol.path, VOLATILE)] + [(s, []) for s in vol.stores]
            for root, ignore in roots:
                for rel, data in snapshot_files(root, ignore).items():
                    snap[f"{root}/{rel}"] = hashlib.sha256(data).hexdigest()
        return snap

    def assert_intact(self, mounter: Mounter, vol: Volume | None = None) -> None:
        """The volume still mounts with its own key and its data is intact."""
        vol = vol or self.a
        mnt = mounter.mount(vol, self.fresh_dir("verify-mnt"))
        if vol is self.a:
            assert (mnt / "precious.bin").read_bytes() == self.data
        mounter.umount(mnt)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("badinput"))


def init_args(vol: Path, stores: list[Path | str], key: Path, k: int = 3, m: int = 2) -> list:
    args: list[object] = ["init", vol]
    for s in stores:
        args += ["--store", s if str(s).startswith(("file://", "ftp://")) else f"file://{s}"]
    return args + ["--data-shares", k, "--parity-shares", m, "--key-file", key]


# ------------------------------------------------------------------------------------------
# mount
# ------------------------------------------------------------------------------------------


def test_mount_wrong_key(env: Env, mounter: Mounter):
    mnt = env.fresh_dir("mnt")
    mnt.mkdir()
    before = env.snapshot()
    res = mounter.try_mount(env.a, mnt, key=env.b.key)
    assert_fails(res, contains=["wrong key"])
    assert not is_mounted(mnt)
    assert env.snapshot() == before
    env.assert_intact(mounter)


def test_mount_garbage_key_file(env: Env, mounter: Mounter):
    mnt = env.fresh_dir("mnt")
    mnt.mkdir()
    key = env.fresh_dir("garbage-key")
    key.write_bytes(b"this is not a key\n")
    before = env.snapshot()
    assert_fails(mounter.try_mount(env.a, mnt, key=key))
    assert not is_mounted(mnt)
    assert env.snapshot() == before
    assert key.read_bytes() == b"this is not a key\n"
    env.assert_intact(mounter)


def test_mount_missing_key_file(env: Env, mounter: Mounter):
    mnt = env.fresh_dir("mnt")
    mnt.mkdir()
    key = env.fresh_dir("missing-key")
    before = env.snapshot()
    assert_fails(mounter.try_mount(env.a, mnt, key=key))
    assert not is_mounted(mnt)
    assert not key.exists(), "mount must never create a key file"
    assert env.snapshot() == before
    env.assert_intact(mounter)


@pytest.mark.parametrize("kind", ["empty-dir", "missing", "regular-file"])
def test_mount_volume_not_a_volume(env: Env, mounter: Mounter, kind: str):
    path = env.fresh_dir("notavol")
    if kind == "empty-dir":
        path.mkdir()
    elif kind == "regular-file":
        path.write_bytes(b"just a file")
    mnt = env.fresh_dir("mnt")
    mnt.mkdir()
    fake = Volume(path, [], env.a.key, 3, 2)
    assert_fails(mounter.try_mount(fake, mnt))
    assert not is_mounted(mnt)
    if kind == "empty-dir":
        assert os.listdir(path) == [], "a failed mount wrote into the directory"
    elif kind == "missing":
        assert not path.exists()
    else:
        assert path.read_bytes() == b"just a file"


def test_mount_mountpoint_missing(env: Env, mounter: Mounter):
    mnt = env.fresh_dir("missing-mnt")
    before = env.snapshot()
    assert_fails(mounter.try_mount(env.a, mnt))
    assert not mnt.exists()
    assert env.snapshot() == before
    env.assert_intact(mounter)


def test_mount_mountpoint_not_a_directory(env: Env, mounter: Mounter):
    mnt = env.fresh_dir("file-mnt")
    mnt.write_bytes(b"I am a file")
    before = env.snapshot()
    assert_fails(mounter.try_mount(env.a, mnt))
    assert not is_mounted(mnt)
    assert mnt.read_bytes() == b"I am a file"
    assert env.snapshot() == before
    env.assert_intact(mounter)


def test_mount_mountpoint_busy(env: Env, mounter: Mounter):
    mnt = mounter.mount(env.a, env.fresh_dir("busy-mnt"))
    minor = mount_entry(mnt)[0]
    res = mounter.try_mount(env.b, mnt)
    assert_fails(res)
    assert mount_entry(mnt)[0] == minor, "the second mount was stacked on the first"
    assert (mnt / "precious.bin").read_bytes() == env.data  # the first mount still serves
    mounter.umount(mnt)
    env.assert_intact(mounter, env.b)


def test_mount_volume_already_mounted(env: Env, mounter: Mounter):
    mnt1 = mounter.mount(env.a, env.fresh_dir("first-mnt"))
    mnt2 = env.fresh_dir("second-mnt")
    mnt2.mkdir()
    assert_fails(mounter.try_mount(env.a, mnt2))
    assert not is_mounted(mnt2)
    assert (mnt1 / "precious.bin").read_bytes() == env.data
    (mnt1 / "written-while-refused").write_bytes(b"x")
    os.unlink(mnt1 / "written-while-refused")
    mounter.umount(mnt1)
    env.assert_intact(mounter)


@pytest.mark.parametrize("kind", ["missing", "not-a-directory"])
def test_mount_with_too_few_stores_is_refused_naming_them(env: Env, mounter: Mounter,
                                                          kind: str):
    """One or two stores away: the volume mounts degraded (tests/test_mount_hostile_stores.py).
    Three of five (fewer than K=3 left): refused, one line naming each store."""
    gone = env.a.stores[2:]
    mnt = env.fresh_dir("mnt")
    mnt.mkdir()
    for store in gone:
        os.rename(store, store.with_name(store.name + ".away"))
        if kind == "not-a-directory":
            store.write_bytes(b"not a store")
    try:
        befores = [snapshot_files(s.with_name(s.name + ".away")) for s in gone]
        msg = assert_fails(mounter.try_mount(env.a, mnt))
        assert not is_mounted(mnt)
        assert "only 2 of 5 stores" in msg, msg
        for store in gone:
            assert str(store) in msg, f"message does not name {store}: {msg}"
        assert [snapshot_files(s.with_name(s.name + ".away")) for s in gone] == befores
    finally:
        for store in gone:
            if store.is_file():
                store.unlink()
            os.rename(store.with_name(store.name + ".away"), store)
    env.assert_intact(mounter)


# ------------------------------------------------------------------------------------------
# init
# ------------------------------------------------------------------------------------------


def test_init_into_existing_volume(env: Env, mounter: Mounter):
    stores = env.fresh_stores(5)
    before = env.snapshot()
    assert_fails(run_fusefs(*init_args(env.a.path, stores, env.fresh_dir("k"))))
    assert env.snapshot() == before
    env.assert_intact(mounter)
    # the refused command claimed none of the new stores
    assert_ok(run_fusefs(*init_args(env.fresh_dir("vol"), stores, env.fresh_dir("k"))))


def test_init_store_of_another_volume(env: Env):
    stores = env.fresh_stores(4)
    vol = env.fresh_dir("vol")
    before = env.snapshot()
    args = init_args(vol, [env.a.stores[0], *stores], env.fresh_dir("k"))
    assert_fails(run_fusefs(*args))
    assert env.snapshot() == before
    assert_fails(run_fusefs("status", vol))  # no half-made volume
    assert_ok(run_fusefs(*init_args(vol, [*stores, *env.fresh_stores(1)], env.fresh_dir("k"))))


def test_init_more_shares_than_stores(env: Env):
    stores = env.fresh_stores(4)
    vol = env.fresh_dir("vol")
    key = env.fresh_dir("k")
    assert_fails(run_fusefs(*init_args(vol, stores, key, k=3, m=2)))
    assert_fails(run_fusefs("status", vol))
    assert_ok(run_fusefs(*init_args(vol, stores, key, k=3, m=1)))


def test_init_data_shares_zero(env: Env):
    stores = env.fresh_stores(5)
    vol = env.fresh_dir("vol")
    assert_fails(run_fusefs(*init_args(vol, stores, env.fresh_dir("k"), k=0, m=2)))
    assert_fails(run_fusefs("status", vol))
    assert_ok(run_fusefs(*init_args(vol, stores, env.fresh_dir("k"), k=3, m=2)))


def test_init_unknown_url_scheme(env: Env):
    stores = env.fresh_stores(4)
    vol = env.fresh_dir("vol")
    key = env.fresh_dir("k")
    assert_fails(run_fusefs(*init_args(vol, ["ftp://x", *stores], key, k=3, m=1)))
    assert_fails(run_fusefs("status", vol))
    assert_ok(run_fusefs(*init_args(vol, stores, key, k=3, m=1)))


# ------------------------------------------------------------------------------------------
# status, umount, usage
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty-dir", "missing"])
def test_status_not_a_volume(env: Env, kind: str):
    path = env.fresh_dir("notavol")
    if kind == "empty-dir":
        path.mkdir()
    assert_fails(run_fusefs("status", path))
    assert_fails(run_fusefs("status", path, "--json"))


def test_umount_not_a_mountpoint(env: Env):
    d = env.fresh_dir("plain")
    d.mkdir()
    assert_fails(run_fusefs("umount", d))
    assert_fails(run_fusefs("umount", env.fresh_dir("missing")))


USAGE_ERRORS = [
    ["frobnicate"],
    ["init"],
    ["mount"],
    ["umount"],
    ["status"],
    ["init", "/tmp/fusefs-x", "--store", "/tmp/fusefs-s", "--no-such-flag"],
    ["status", "/tmp/fusefs-x", "--no-such-flag"],
    ["umount", "/tmp/fusefs-x", "--no-such-flag"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=["-".join(a[:1] + a[-1:]) for a in USAGE_ERRORS])
def test_usage_errors_exit_2(argv: list[str]):
    assert_fails(run_fusefs(*argv), code=2)
    assert not os.path.exists("/tmp/fusefs-x")


def test_mount_unknown_flag_exit_2_and_no_mount(env: Env, mounter: Mounter):
    mnt = env.fresh_dir("mnt")
    mnt.mkdir()
    res = run_fusefs("mount", env.a.path, mnt, "--key-file", env.a.key, "--no-such-flag")
    if is_mounted(mnt):  # should not happen; do not leave it behind
        mounter.adopt(env.a, mnt)
    assert_fails(res, code=2)
    assert not is_mounted(mnt)


def test_umount_busy_mount(env: Env, mounter: Mounter):
    """`fusefs umount` while a file is open: a clean refusal (exit 1, one line) and a mount
    that keeps working, or a complete unmount; never a half-dead mount."""
    mnt = mounter.mount(env.a, env.fresh_dir("busy-umount"))
    f = open(mnt / "precious.bin", "rb")  # noqa: SIM115
    try:
        res = run_fusefs("umount", mnt)
        if res.returncode != 0:
            assert_fails(res)
            assert is_mounted(mnt)
            assert f.read() == env.data
            assert (mnt / "precious.bin").read_bytes() == env.data
        else:
            assert not is_mounted(mnt)
    finally:
        f.close()
    if is_mounted(mnt):
        mounter.umount(mnt)
    env.assert_intact(mounter)
