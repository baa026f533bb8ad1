"""The store contract, run against every store backend, plus open_store() URL parsing.

`TestStoreContract` is parametrized over store factories (the `kit` fixture). A new backend
(S3, in-memory, faulty) is added by writing one more factory class with the same three
methods and listing it in `FACTORIES`; the contract tests then run against it unchanged.
LocalStore-only behaviour (directory layout, temp files, permissions) is tested separately.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from fusefs.codec.buffers import page_aligned_slots
from fusefs.errors import ConfigError, NoSuchObject, StoreError
from fusefs.mounts import NETWORK_FILESYSTEMS, filesystem_type, may_hang
from fusefs.stores import open_store
from fusefs.stores.base import MARKER, Store
from fusefs.stores.local import DIRECT_MIN, LocalStore, object_relpath
from fusefs.stores.s3 import S3Store


def run(fn, *args):
    return trio.run(fn, *args)


def name_of(i: int) -> str:
    return f"{i:032x}"[::-1]  # 32 hex digits, varied first two characters


# ------------------------------------------------------------------------------------------
# Factories: one per backend
# ------------------------------------------------------------------------------------------


class LocalFactory:
    """Stores in fresh directories under tmp_path."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.count = 0

    def _fresh(self) -> Path:
        self.count += 1
        return self.base / f"store{self.count}"

    def new(self) -> Store:
        """An empty, usable store."""
        root = self._fresh()
        root.mkdir()
        return LocalStore(str(root))

    def missing(self) -> Store:
        """A store whose location does not exist."""
        return LocalStore(str(self._fresh()))

    def break_(self, store: Store) -> None:
        """Make a working store unusable from now on (its location disappears)."""
        assert isinstance(store, LocalStore)
        shutil.rmtree(store.root)


class S3Factory:
    """Stores under fresh prefixes of buckets on a real S3 HTTP server (moto, 127.0.0.1)."""

    def __init__(self, base: Path, server) -> None:
        self.server = server
        self.count = 0
        self.bucket = server.create_bucket(f"contract{next(_buckets)}")

    def _url(self, bucket: str) -> str:
        self.count += 1
        return f"s3://{bucket}/p{self.count}?endpoint={self.server.endpoint}"

    def new(self) -> Store:
        return S3Store(self._url(self.bucket))

    def missing(self) -> Store:
        return S3Store(self._url(f"no-such-bucket-{self.count}"))

    def break_(self, store: Store) -> None:
        assert isinstance(store, S3Store)
        client = self.server.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket):
            for o in page.get("Contents", ()):
                client.delete_object(Bucket=store.bucket, Key=o["Key"])
        client.delete_bucket(Bucket=store.bucket)


_buckets = itertools.count()
FACTORIES = {"local": LocalFactory, "s3": S3Factory}


@pytest.fixture(params=sorted(FACTORIES))
def kit(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "s3":
        return S3Factory(tmp_path, request.getfixturevalue("s3_server"))
    return FACTORIES[request.param](tmp_path)


@pytest.fixture
def store(kit) -> Store:
    return kit.new()


# ------------------------------------------------------------------------------------------
# The contract
# ------------------------------------------------------------------------------------------


class TestStoreContract:
    def test_put_get_bytes(self, store: Store) -> None:
        data = os.urandom(10_000)

        async def main():
            await store.put(name_of(1), data)
            return await store.get(name_of(1))

        got = run(main)
        assert got == data
        assert isinstance(got, bytes)

    def test_put_get_memoryview_writes_only_the_view(self, store: Store) -> None:
        big = os.urandom(5000)
        view = memoryview(big)[1000:3000]

        async def main():
            await store.put(name_of(2), view)
            return await store.get(name_of(2))

        assert run(main) == big[1000:3000]

    def test_put_get_empty_and_large(self, store: Store) -> None:
        large = os.urandom(3 << 20)

        async def main():
            await store.put(name_of(3), b"")
            await store.put(name_of(4), large)
            return await store.get(name_of(3)), await store.get(name_of(4))

        assert run(main) == (b"", large)

    def test_get_range(self, store: Store) -> None:
        """Ranged reads: inside, across the end (short), past the end (empty), missing."""
        data = os.urandom(300_000)

        async def main():
            await store.put(name_of(8), data)
            got = [await store.get_range(name_of(8), off, n)
                   for off, n in ((0, 10), (65_552, 131_088), (299_990, 100), (300_000, 5),
                                  (400_000, 5))]
            with pytest.raises(NoSuchObject):
                await store.get_range(name_of(9), 0, 10)
            return got

        assert run(main) == [data[:10], data[65_552:196_640], data[299_990:], b"", b""]
        if store.get_range_blocking is not None:
            assert store.get_range_blocking(name_of(8), 7, 3) == data[7:10]

    def test_overwrite(self, store: Store) -> None:
        async def main():
            await store.put(name_of(5), b"first version, longer than the second")
            await store.put(name_of(5), b"second")
            return await store.get(name_of(5)), await store.list()

        got, names = run(main)
        assert got == b"second"
        assert names == [name_of(5)]

    def test_get_missing_raises_no_such_object(self, store: Store) -> None:
        async def main():
            await store.put(name_of(6), b"x")
            with pytest.raises(NoSuchObject) as exc:
                await store.get(name_of(7))
            return exc.value

        err = run(main)
        assert isinstance(err, StoreError)
        assert name_of(7) in str(err)
        assert store.url in str(err)

    def test_delete_many_removes_present_and_ignores_missing(self, store: Store) -> None:
        async def main():
            for i in range(5):
                await store.put(name_of(i), b"x%d" % i)
            await store.delete_many([name_of(0), name_of(7), name_of(2), name_of(4)])
            await store.delete_many([])
            return sorted(await store.list())

        assert run(main) == [name_of(1), name_of(3)]

    def test_delete_is_idempotent(self, store: Store) -> None:
        async def main():
            await store.delete(name_of(8))  # never existed
            await store.put(name_of(8), b"data")
            await store.put(name_of(9), b"keep")
            await store.delete(name_of(8))
            await store.delete(name_of(8))
            with pytest.raises(NoSuchObject):
                await store.get(name_of(8))
            return await store.list(), await store.get(name_of(9))

        names, kept = run(main)
        assert names == [name_of(9)]
        assert kept == b"keep"

    def test_list_returns_exactly_the_names_put(self, store: Store) -> None:
        names = {secrets.token_hex(16) for _ in range(50)} | {name_of(10), name_of(11)}

        async def main():
            assert await store.list() == []
            await store.write_marker(b"a marker")
            for n in names:
                await store.put(n, n.encode())
            await store.delete(name_of(11))
            return await store.list()

        listed = run(main)
        assert sorted(listed) == sorted(names - {name_of(11)})
        assert MARKER not in listed

    def test_concurrent_puts(self, store: Store) -> None:
        blobs = {secrets.token_hex(16): os.urandom(1000 + i) for i in range(40)}

        async def main():
            async with trio.open_nursery() as nursery:
                for n, data in blobs.items():
                    nursery.start_soon(store.put, n, data)
            got = {}
            for n in blobs:
                got[n] = await store.get(n)
            return got, await store.list()

        got, listed = run(main)
        assert got == blobs
        assert sorted(listed) == sorted(blobs)

    def test_sync(self, store: Store) -> None:
        async def main():
            await store.sync()  # nothing written yet
            await store.put(name_of(12), b"durable")
            await store.sync()
            await store.delete(name_of(12))
            await store.sync()
            await store.sync()
            return await store.list()

        assert run(main) == []

    def test_failed_sync_is_not_forgotten(self, kit, store: Store) -> None:
        """sync() returning means "every completed put is durable": after a failed sync, a
        retry must not report success while the store is still broken."""

        async def main():
            await store.put(name_of(20), b"not yet durable")
            kit.break_(store)
            outcomes = []
            for _ in range(2):
                try:
                    await store.sync()
                    outcomes.append("ok")
                except StoreError as e:
                    outcomes.append(type(e).__name__)
            return outcomes

        assert run(main) == ["StoreError", "StoreError"]

    def test_marker_read_write(self, store: Store) -> None:
        marker = b'{"fusefs": 2, "volume": "0123456789abcdef0123456789abcdef"}'

        async def main():
            before = await store.read_marker()
            await store.write_marker(marker)
            after = await store.read_marker()
            await store.put(name_of(13), b"x")
            return before, after, await store.list()

        before, after, listed = run(main)
        assert before is None
        assert after == marker
        assert listed == [name_of(13)]

    def test_marker_bytes_are_opaque_to_the_store(self, store: Store) -> None:
        async def main():
            await store.put(MARKER, b"\xff not json")
            return await store.read_marker()

        assert run(main) == b"\xff not json"

    def test_check_usable_store(self, store: Store) -> None:
        async def main():
            await store.check(writable=False)
            await store.check(writable=True)
            await store.put(name_of(14), b"x")
            await store.check(writable=True)
            return await store.get(name_of(14))

        assert run(main) == b"x"

    def test_check_missing_store(self, kit) -> None:
        missing = kit.missing()
        for writable in (False, True):
            with pytest.raises(StoreError) as exc:
                run(missing.check, writable)
            assert missing.url in str(exc.value)

    def test_get_from_missing_store(self, kit) -> None:
        missing = kit.missing()
        with pytest.raises(StoreError) as exc:
            run(missing.get, name_of(15))
        assert missing.url in str(exc.value)

    def test_space(self, store: Store) -> None:
        space = run(store.space)
        if space is not None:
            total, free = space
            assert 0 <= free <= total
            assert total > 0

    def test_close(self, store: Store) -> None:
        async def main():
            await store.put(name_of(16), b"x")
            await store.close()

        run(main)
        assert store.url

    @pytest.mark.skip(reason="a full disk cannot be simulated without root-only tmpfs mounts; "
                             "StoreFull mapping of ENOSPC/EDQUOT is not exercised here")
    def test_put_to_full_store_raises_store_full(self, store: Store) -> None:
        raise AssertionError("not reached")


# ------------------------------------------------------------------------------------------
# LocalStore specifics
# ------------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    root = tmp_path / "local"
    root.mkdir()
    return LocalStore(str(root))


def test_local_layout(local: LocalStore) -> None:
    name = "ab" + "0" * 30

    async def main():
        await local.put(name, b"share")
        await local.write_marker(b"the marker")

    run(main)
    assert (local.root / "objects" / "a" / name).read_bytes() == b"share"
    assert (local.root / MARKER).read_bytes() == b"the marker"
    assert local.url == f"file://{local.root}"


def test_local_put_leaves_no_temp_files(local: LocalStore) -> None:
    async def main():
        for i in range(20):
            await local.put(name_of(i), os.urandom(100))
            await local.put(name_of(i), os.urandom(50))

    run(main)
    files = [p for p in local.root.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(name_of(i) for i in range(20))


@pytest.mark.parametrize("size", [DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, 1398443, 3 << 20])
def test_local_big_objects_written_direct_read_back_exactly(local: LocalStore, size: int
                                                              ) -> None:
    """Big shares bypass the page cache (O_DIRECT, from an aligned copy; the last partial
    block buffered): every size and an unaligned source view must round-trip."""
    raw = bytearray(os.urandom(size + 7))
    view = memoryview(raw)[3 : 3 + size]  # starts at an odd address
    aligned = page_aligned_slots(1, size)[0]  # as sealed shares are: written in place
    aligned[:] = view

    async def main():
        await local.put(name_of(1), view)
        await local.put(name_of(2), bytes(view))
        await local.put(name_of(3), aligned)
        return [await local.get(name_of(i)) for i in (1, 2, 3)]

    assert run(main) == [bytes(view)] * 3
    assert local.direct_io, "ext4 supports O_DIRECT: the direct path must have been used"


def test_local_list_skips_temp_files_and_strays(local: LocalStore) -> None:
    async def main():
        await local.put(name_of(1), b"x")

    run(main)
    sub = (local.root / object_relpath(name_of(1))).parent
    (sub / ".tmp-0123456789ab").write_bytes(b"crashed put")
    (local.root / "objects" / "stray-file").write_bytes(b"not a fan-out dir")
    assert run(local.list) == [name_of(1)]


def test_local_list_of_empty_store(local: LocalStore) -> None:
    assert run(local.list) == []
    assert not (local.root / "objects").exists()


def test_local_objects_are_0600(local: LocalStore) -> None:
    run(local.put, name_of(3), b"x")
    path = local.root / object_relpath(name_of(3))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_local_check_writable_creates_objects_dir(local: LocalStore) -> None:
    run(local.check, True)
    assert (local.root / "objects").is_dir()


def test_local_check_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "plain-file"
    path.write_bytes(b"")
    store = LocalStore(str(path))
    with pytest.raises(StoreError) as exc:
        run(store.check, False)
    assert store.url in str(exc.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: permission bits do not stop "
                                              "root, so a 0555 store still looks writable")
def test_local_check_read_only_dir(local: LocalStore) -> None:
    (local.root / "objects").mkdir()
    os.chmod(local.root / "objects", 0o555)
    os.chmod(local.root, 0o555)
    try:
        run(local.check, False)  # reading is still fine
        with pytest.raises(StoreError) as exc:
            run(local.check, True)
        assert local.url in str(exc.value)
        assert "read-only" in str(exc.value)
    finally:
        os.chmod(local.root, 0o755)
        os.chmod(local.root / "objects", 0o755)


# ------------------------------------------------------------------------------------------
# open_store
# ------------------------------------------------------------------------------------------


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path
    assert store.url == f"file://{tmp_path}"


def test_open_store_file_url_localhost(tmp_path: Path) -> None:
    store = open_store(f"file://localhost{tmp_path}")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path


def test_open_store_bare_absolute_path(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path
    # the canonical URL opens the same store again
    assert open_store(store.url).root == tmp_path


@pytest.mark.parametrize("url,scheme", [
    ("http://example.com/store", "http"),
    ("sftp://host/path", "sftp"),
])
def test_open_store_unknown_scheme(url: str, scheme: str) -> None:
    with pytest.raises(ConfigError) as exc:
        open_store(url)
    assert repr(scheme) in str(exc.value) or scheme in str(exc.value)
    assert "scheme" in str(exc.value)


@pytest.mark.parametrize("url", ["relative/path", "store", "./store", "../store", "file:rel",
                                 "file://otherhost/abs"])
def test_open_store_relative_or_bad_file_url(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        open_store(url)
    assert url in str(exc.value)
    assert "absolute" in str(exc.value)


def test_s3_url_options() -> None:
    store = open_store("s3://bkt/some/prefix?endpoint=http://127.0.0.1:9&region=eu-west-1")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint, store.region) == (
        "bkt", "some/prefix/", "http://127.0.0.1:9", "eu-west-1")
    with pytest.raises(ConfigError, match="unknown option"):
        open_store("s3://bkt/p?color=blue")
    with pytest.raises(ConfigError, match="s3://bucket"):
        open_store("s3:///nobucket")


def test_local_read_into_reports_the_bytes_read(local: LocalStore) -> None:
    """The volume asks for one byte more than a share should hold: a truncated or extended
    share must not pass as the right size."""
    data = os.urandom(1000)
    run(lambda: local.put(name_of(1), data))
    for size in (1000, 999, 1001, 1):
        buf = bytearray(size)
        got = local.read_into_blocking(name_of(1), memoryview(buf))
        assert got == min(size, 1000)
        assert bytes(buf[:got]) == data[:got]
    with pytest.raises(NoSuchObject):
        local.read_into_blocking(name_of(2), memoryview(bytearray(10)))


def test_filesystem_type_of_a_store_path(tmp_path: Path) -> None:
    """Small local-store reads run on the event loop only on filesystems that cannot hang
    for long; the type comes from /proc/mounts, as findmnt sees it."""
    want = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp_path)],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert filesystem_type(tmp_path) == want
    assert filesystem_type(tmp_path / "not" / "created" / "yet") == want
    assert may_hang(tmp_path) == (want in NETWORK_FILESYSTEMS or want.startswith("fuse"))
    assert LocalStore(str(tmp_path)).inline_io == (not may_hang(tmp_path))
    assert filesystem_type("/proc/self") == "proc"
