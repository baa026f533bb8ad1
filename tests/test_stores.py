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
import time
from pathlib import Path

import pytest
import trio

from fusefs.codec.buffers import page_aligned_slots
from fusefs.errors import ConfigError, NoSuchObject, StoreError
from fusefs.mounts import NETWORK_FILESYSTEMS, filesystem_type, may_hang
from fusefs.stores import local as local_mod
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


# ------------------------------------------------------------------------------------------
# LocalStore containment: planted symlinks and other strays (issue 12)
# ------------------------------------------------------------------------------------------


OUTSIDE_BYTES = b"outside the store: must never be read, written or deleted\n"


@pytest.fixture(params=["openat2", "per-component"])
def walk_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with openat2 and again with the fallback for kernels without it."""
    if request.param == "openat2":
        if not local_mod.OPENAT2:
            pytest.skip("this kernel has no openat2(2)")
    else:
        monkeypatch.setattr(local_mod, "OPENAT2", False)
    return request.param


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry below top (symlinks not followed): kind, bytes or link target, mtime."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes(), st.st_mtime_ns)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode), st.st_mtime_ns)
    return out


class Planted:
    """A store with objects in two fan-out directories, and an outside directory (with a
    sentinel file) that symlinks in the store point to."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "store"
        self.root.mkdir()
        self.store = LocalStore(str(self.root))
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.secret = self.outside / "secret"
        self.secret.write_bytes(OUTSIDE_BYTES)
        self.a1, self.a2, self.b1 = "a1" + "0" * 30, "a2" + "0" * 30, "b1" + "0" * 30

        async def fill():
            await self.store.write_marker(b"a marker of volume " + b"ee" * 16)
            for n in (self.a1, self.a2, self.b1):
                await self.store.put(n, n.encode())

        run(fill)

    def path(self, name: str) -> Path:
        return self.root / object_relpath(name)

    def snapshot(self) -> dict[str, tuple]:
        return snapshot(self.outside)

    def move_out(self, rel: str) -> Path:
        """Move ROOT/rel outside (its objects keep their bytes) and symlink it back."""
        target = self.outside / rel.replace("/", "-")
        os.rename(self.root / rel, target)
        (self.root / rel).symlink_to(target)
        return target


def assert_missing_everywhere(store: LocalStore, name: str) -> None:
    """Every read path says NoSuchObject (never the outside bytes, never another error)."""
    for read in (lambda: store.get_blocking(name),
                 lambda: store.get_range_blocking(name, 0, 10),
                 lambda: store.read_into_blocking(name, memoryview(bytearray(100))),
                 lambda: run(store.get, name),
                 lambda: run(store.get_range, name, 0, 10)):
        with pytest.raises(NoSuchObject) as exc:
            read()
        assert store.url in str(exc.value) and name in str(exc.value)
    store.will_need_blocking(name)  # a hint: no error, no effect


def test_local_symlinked_objects_read_as_missing_and_puts_replace_the_link(
        tmp_path: Path, walk_mode: str) -> None:
    """Object names that are symlinks (to an outside file, a dangling one, to an outside
    directory): reads fail as missing, list and delete leave them alone, a put replaces the
    link itself with a regular file and never writes through it."""
    s = Planted(tmp_path)
    s.path(s.a1).unlink()
    s.path(s.a1).symlink_to(s.secret)
    s.path(s.a2).unlink()
    s.path(s.a2).symlink_to(s.outside / "created-through-a-link")  # dangling
    s.path(s.b1).unlink()
    s.path(s.b1).symlink_to(s.outside)
    (s.root / MARKER).unlink()
    (s.root / MARKER).symlink_to(s.secret)
    before = s.snapshot()

    for name in (s.a1, s.a2, s.b1):
        assert_missing_everywhere(s.store, name)
    assert run(s.store.read_marker) is None
    assert run(s.store.list) == []
    run(s.store.delete_many, [s.a1, s.a2, s.b1])
    run(s.store.delete, s.a1)
    assert all(s.path(n).is_symlink() for n in (s.a1, s.a2, s.b1)), "delete removed a link"
    assert s.snapshot() == before

    async def heal():
        for n in (s.a1, s.a2, s.b1):
            await s.store.put(n, b"healed " + n.encode())
        await s.store.write_marker(b"a marker of volume " + b"ee" * 16)

    run(heal)
    for n in (s.a1, s.a2, s.b1):
        assert not s.path(n).is_symlink() and s.path(n).is_file()
        assert s.store.get_blocking(n) == b"healed " + n.encode()
    assert not (s.root / MARKER).is_symlink()
    assert run(s.store.read_marker) == b"a marker of volume " + b"ee" * 16
    assert sorted(run(s.store.list)) == sorted([s.a1, s.a2, s.b1])
    assert s.snapshot() == before, "a put wrote outside the store"


def test_local_symlinked_fanout_dir_is_never_traversed(tmp_path: Path, walk_mode: str
                                                         ) -> None:
    """objects/a -> a directory outside holding valid objects: reads fail as missing, list
    skips it, delete leaves its files, a put into it fails naming it (nothing created
    there); other fan-out directories work as before."""
    s = Planted(tmp_path)
    target = s.move_out("objects/a")
    before = s.snapshot()
    assert sorted(p.name for p in target.iterdir()) == sorted([s.a1, s.a2])

    for name in (s.a1, s.a2):
        assert_missing_everywhere(s.store, name)
    assert run(s.store.list) == [s.b1]
    run(s.store.delete_many, [s.a1, s.a2])
    with pytest.raises(StoreError) as exc:
        run(s.store.put, s.a1, b"new")
    assert not isinstance(exc.value, NoSuchObject)
    assert s.store.url in str(exc.value) and "objects/a" in str(exc.value)
    assert "symlink" in str(exc.value)
    with pytest.raises(StoreError):
        s.store.put_blocking("a9" + "0" * 30, b"new")
    assert s.snapshot() == before, "something changed outside the store"

    run(s.store.put, "c1" + "0" * 30, b"elsewhere")  # the rest of the store still works
    assert s.store.get_blocking(s.b1) == s.b1.encode()
    assert sorted(run(s.store.list)) == [s.b1, "c1" + "0" * 30]
    assert s.snapshot() == before


def test_local_symlinked_objects_dir_refuses_writes(tmp_path: Path, walk_mode: str) -> None:
    """objects -> a directory outside: nothing of it is read, listed, deleted or written;
    the store still checks (refusing would refuse the whole mount) and keeps its marker."""
    s = Planted(tmp_path)
    s.move_out("objects")
    before = s.snapshot()

    for name in (s.a1, s.b1):
        assert_missing_everywhere(s.store, name)
    with pytest.raises(StoreError) as exc:
        run(s.store.list)
    assert "objects is a symlink" in str(exc.value) and s.store.url in str(exc.value)
    run(s.store.delete_many, [s.a1, s.b1])
    for name in (s.a1, "f0" + "0" * 30):  # an existing and a new fan-out directory
        with pytest.raises(StoreError) as exc:
            run(s.store.put, name, b"new")
        assert "objects is a symlink" in str(exc.value), exc.value
    run(s.store.check, True)
    assert run(s.store.read_marker) == b"a marker of volume " + b"ee" * 16
    assert run(s.store.remove_stale_temporaries, 0) == 0
    assert s.snapshot() == before, "something changed outside the store"


def test_local_non_regular_objects_read_as_missing(tmp_path: Path, walk_mode: str) -> None:
    """A directory, a FIFO (must not hang the reader) or a file where a fan-out directory
    should be: missing for reads, not listed, not deleted; a put replaces an empty
    directory or a FIFO with the object."""
    s = Planted(tmp_path)
    s.path(s.a1).unlink()
    s.path(s.a1).mkdir()
    s.path(s.a2).unlink()
    os.mkfifo(s.path(s.a2))
    shutil.rmtree(s.root / "objects" / "b")
    (s.root / "objects" / "b").write_bytes(b"a file, not a fan-out directory")

    for name in (s.a1, s.a2, s.b1):
        assert_missing_everywhere(s.store, name)
    assert run(s.store.list) == []
    run(s.store.delete_many, [s.a1, s.a2, s.b1])
    assert s.path(s.a1).is_dir() and stat.S_ISFIFO(s.path(s.a2).lstat().st_mode)
    run(s.store.put, s.a1, b"one")
    run(s.store.put, s.a2, b"two")
    with pytest.raises(StoreError) as exc:
        run(s.store.put, s.b1, b"three")
    assert "objects/b is not a directory" in str(exc.value)
    assert (s.store.get_blocking(s.a1), s.store.get_blocking(s.a2)) == (b"one", b"two")
    assert sorted(run(s.store.list)) == [s.a1, s.a2]


def test_local_list_and_delete_agree(tmp_path: Path, walk_mode: str) -> None:
    """Strays of every kind are neither listed nor deleted; every listed name is deleted
    for real by delete_many, after which nothing is listed and every stray is still
    there."""
    s = Planted(tmp_path)
    objects = s.root / "objects"
    wrong_dir = objects / "a" / ("b7" + "0" * 30)  # an object name in the wrong fan-out dir
    wrong_dir.write_bytes(b"misplaced")
    (objects / "a" / ("A3" + "0" * 30)).write_bytes(b"upper case: not an object name")
    (objects / "a" / "a-not-hex").write_bytes(b"not hex")
    (objects / "a" / ".tmp-0123456789ab").write_bytes(b"a temporary")
    (objects / "a" / ("a4" + "0" * 30)).mkdir()
    (objects / "a" / ("a5" + "0" * 30)).symlink_to(s.secret)
    (objects / "ab").mkdir()  # not a fan-out name
    (objects / "ab" / ("ab" + "0" * 30)).write_bytes(b"in a directory that is not ours")
    (objects / "c").symlink_to(s.outside)
    (s.outside / ("c1" + "0" * 30)).write_bytes(b"outside, 'in' objects/c")
    def strays_now() -> dict[str, tuple]:  # directories' mtimes change with deletes
        return {rel: v[:2] for rel, v in snapshot(s.root).items()
                if rel not in {object_relpath(n) for n in (s.a1, s.a2, s.b1)}}

    strays = strays_now()
    before = s.snapshot()

    listed = run(s.store.list)
    assert sorted(listed) == sorted([s.a1, s.a2, s.b1])
    every_name = listed + ["b7" + "0" * 30, "A3" + "0" * 30, "a-not-hex", "a4" + "0" * 30,
                           "a5" + "0" * 30, "ab" + "0" * 30, "c1" + "0" * 30, ".tmp-0123456789ab",
                           MARKER]
    run(s.store.delete_many, every_name)
    assert run(s.store.list) == []
    assert strays_now() == strays
    assert s.snapshot() == before


def test_local_store_directory_removed_and_recreated(tmp_path: Path, walk_mode: str) -> None:
    """The root is found by its path on every operation: a removed store is unavailable
    (not "missing object"), a recreated one is used at once."""
    s = Planted(tmp_path)
    os.rename(s.root, tmp_path / "away")
    for read in (lambda: s.store.get_blocking(s.a1), lambda: run(s.store.put, s.a1, b"x")):
        with pytest.raises(StoreError) as exc:
            read()
        assert not isinstance(exc.value, NoSuchObject)
        assert "unavailable" in str(exc.value)
    assert not s.root.exists(), "a put created the missing store root"
    s.root.mkdir()
    with pytest.raises(NoSuchObject):
        s.store.get_blocking(s.a1)
    run(s.store.put, s.a1, b"again")
    assert (s.root / object_relpath(s.a1)).read_bytes() == b"again"
    assert (tmp_path / "away" / object_relpath(s.a1)).read_bytes() == s.a1.encode()


def test_local_root_may_be_the_admins_symlink(tmp_path: Path, walk_mode: str) -> None:
    """The configured root is trusted: a symlink there is followed (and re-resolved once
    its old target is gone); only what is below it must be free of symlinks."""
    disk1, disk2 = tmp_path / "disk1", tmp_path / "disk2"
    disk1.mkdir()
    disk2.mkdir()
    link = tmp_path / "store-link"
    link.symlink_to(disk1)
    store = LocalStore(str(link))
    run(store.put, name_of(1), b"on disk1")
    assert (disk1 / object_relpath(name_of(1))).read_bytes() == b"on disk1"
    assert run(store.list) == [name_of(1)]
    shutil.rmtree(disk1)
    link.unlink()
    link.symlink_to(disk2)  # the admin re-points the store
    with pytest.raises(NoSuchObject):
        store.get_blocking(name_of(1))
    run(store.put, name_of(2), b"on disk2")
    assert (disk2 / object_relpath(name_of(2))).read_bytes() == b"on disk2"


def test_local_object_names_stay_below_the_store(tmp_path: Path) -> None:
    """Names are lowercase hex: anything else cannot be read or written (no "..", "/")."""
    s = Planted(tmp_path)
    for bad in ("../../outside/secret", "a/../../../outside/secret", "..", "", "A1" + "0" * 30):
        with pytest.raises(NoSuchObject):
            s.store.get_blocking(bad)
        with pytest.raises(StoreError):
            run(s.store.put, bad, b"x")


# ------------------------------------------------------------------------------------------
# Stale temporaries
# ------------------------------------------------------------------------------------------


def test_remove_stale_temporaries_default_is_a_no_op(store: Store) -> None:
    async def main():
        await store.put(name_of(1), b"x")
        return await store.remove_stale_temporaries(0), await store.list()

    assert run(main) == (0, [name_of(1)])


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_local_remove_stale_temporaries(tmp_path: Path, walk_mode: str) -> None:
    """Old `.tmp-*` files in the fan-out directories and the root go; a fresh one, objects,
    and anything that is not a regular file (a link to outside, a directory) stay."""
    s = Planted(tmp_path)
    objects = s.root / "objects"
    old = [objects / "a" / ".tmp-000000000001", objects / "b" / ".tmp-000000000002",
           s.root / ".tmp-000000000003"]
    fresh = objects / "a" / ".tmp-000000000004"
    kept = [fresh, objects / "b" / ".tmp-link", objects / "a" / ".tmp-dir",
            objects / "a" / ".tmp", objects / "a" / ".other-dot-name"]
    for p in old + [fresh, objects / "a" / ".tmp", objects / "a" / ".other-dot-name"]:
        p.write_bytes(b"crashed put")
    (objects / "b" / ".tmp-link").symlink_to(s.secret)
    (objects / "a" / ".tmp-dir").mkdir()
    for p in old + kept[1:]:
        age(p, 3600)
    age(fresh, 60)
    before = s.snapshot()

    assert run(s.store.remove_stale_temporaries, 600) == len(old)
    assert not any(p.exists() for p in old)
    assert all(p.exists() or p.is_symlink() for p in kept)
    assert sorted(run(s.store.list)) == sorted([s.a1, s.a2, s.b1])
    assert s.store.get_blocking(s.a1) == s.a1.encode()
    assert s.snapshot() == before
    assert run(s.store.remove_stale_temporaries, 600) == 0


def test_local_remove_stale_temporaries_spares_puts_in_progress(
        local: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put's own temporary is never removed, however old it looks (a write can stall for
    minutes on a hung disk): removal runs in the middle of a put that then succeeds."""
    removed = []
    real_write_all = local_mod.write_all

    def write_all_then_clean(fd: int, view: memoryview) -> None:
        real_write_all(fd, view)
        tmp = [p for p in (local.root / "objects").rglob(".tmp-*")]
        assert len(tmp) == 1
        age(tmp[0], 3600)
        removed.append(local._remove_stale_sync(0))

    monkeypatch.setattr(local_mod, "write_all", write_all_then_clean)
    run(local.put, name_of(1), b"in progress")
    assert removed == [0]
    assert local.get_blocking(name_of(1)) == b"in progress"
    assert not list(local.root.rglob(".tmp-*"))


def test_local_remove_stale_temporaries_of_a_missing_store(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "never-created"))
    with pytest.raises(StoreError) as exc:
        run(store.remove_stale_temporaries, 0)
    assert "unavailable" in str(exc.value) and store.url in str(exc.value)
    empty = LocalStore(str(tmp_path))
    assert run(empty.remove_stale_temporaries, 0) == 0
