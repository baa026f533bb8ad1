"""The direct read API (`fusefs.open_volume`, issue 14): a volume's files read by path from
its volume directory, in the calling process, without a mount.

The data is written through a real mount (the kernel is the client), then read with the
direct API: unmounted, from forked and spawned processes, and beside a mount that keeps
rewriting the files (a chunk whose shares the mount deleted under a reader is no damage,
and no read ever mixes two versions of a file).
"""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import pickle
import random
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    KiB,
    MiB,
    Mounter,
    Volume,
    create_volume,
    mixed_volume,
    rand_bytes,
    read_events,
    share_map,
    tree_layout,
    wait_until,
    write_tree,
)

import fusefs
from fusefs.errors import ConfigError, KeyFileError

CHUNK = 64 * KiB  # small chunks: multi-chunk files stay small
SIZES = [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 200_000, MiB + 3]
SPARSE_AT = 5 * CHUNK + 100  # the sparse file: 10 bytes here, holes before them


@dataclass
class Written:
    vol: Volume
    files: dict[str, bytes]  # "/path" -> content


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A K=3/M=2 volume filled through a real mount, then unmounted: a tree of awkward
    sizes, a sparse file, a relative symlink, one pointing outside, one looping."""
    base = tmp_path_factory.mktemp("direct")
    vol = create_volume(base, "vol", chunk_size=CHUNK)
    m = Mounter()
    try:
        mnt = m.mount(vol, base / "mnt")
        files = {"/" + k: v for k, v in write_tree(mnt, tree_layout(SIZES), "direct").items()}
        with open(mnt / "sparse.bin", "wb") as f:
            f.seek(SPARSE_AT)
            f.write(b"0123456789")
        files["/sparse.bin"] = bytes(SPARSE_AT) + b"0123456789"
        os.symlink("a/b", mnt / "to-b")
        os.symlink("/etc/passwd", mnt / "outside")
        os.symlink("loop", mnt / "loop")
        m.umount(mnt)
    finally:
        problems = m.cleanup()
    assert not problems, problems
    return Written(vol, files)


@pytest.fixture
def vol(written: Written):
    with fusefs.open_volume(written.vol.path, key_file=written.vol.key) as v:
        yield v


def test_read_bytes_returns_every_file_bit_identical(written: Written, vol) -> None:
    for path, data in written.files.items():
        assert vol.read_bytes(path) == data, path
    assert read_events(written.vol) == []  # a healthy volume: nothing to report


def test_a_file_object_behaves_as_a_file_opened_rb(written: Written, vol) -> None:
    """Random sequences of seek/read/readinto/peek/readline/tell against io.BytesIO."""
    rng = random.Random(14)
    for path, data in written.files.items():
        ref = io.BytesIO(data)
        with vol.open(path) as f:
            assert f.readable() and f.seekable() and not f.writable()
            assert f.name == path and f.size == len(data)
            for _ in range(60):
                op = rng.choice(["seek", "seek_end", "read", "readinto", "peek", "readline",
                                 "read_all"])
                if op == "seek":
                    off = rng.randrange(len(data) + 3)
                    assert f.seek(off) == ref.seek(off)
                elif op == "seek_end":
                    off = -rng.randrange(min(len(data), 70_000) + 1)
                    assert f.seek(off, io.SEEK_END) == ref.seek(off, io.SEEK_END)
                elif op == "read":
                    n = rng.choice([1, 7, 4096, CHUNK, 3 * CHUNK + 5])
                    assert f.read(n) == ref.read(n)
                elif op == "readinto":
                    n = rng.randrange(1, 100_000)
                    a, b = bytearray(n), bytearray(n)
                    assert f.readinto(a) == ref.readinto(b) and a == b
                elif op == "peek":
                    got = f.peek(10)
                    want = data[ref.tell():]
                    assert want.startswith(got) and (got or not want)
                elif op == "readline":
                    assert f.readline() == ref.readline()
                else:
                    assert f.read() == ref.read()
                assert f.tell() == ref.tell()
        with pytest.raises(ValueError):
            f.read(1)  # closed


def test_holes_read_as_zeros_and_small_random_reads_are_right(written: Written,
                                                              vol) -> None:
    with vol.open("/sparse.bin") as f:
        f.seek(SPARSE_AT - 3)
        assert f.read(8) == b"\0\0\0" + b"01234"
        f.seek(CHUNK + 5)
        assert f.read(100) == bytes(100)
    big, data = next((p, d) for p, d in written.files.items() if len(d) == MiB + 3)
    rng = random.Random(2)
    with vol.open(big) as f:
        for _ in range(50):  # small reads far from the last one: segments, not chunks
            off, n = rng.randrange(len(data)), rng.randrange(1, 9000)
            f.seek(off)
            assert f.read(n) == data[off : off + n]


def test_listdir_walk_stat_and_exists_describe_the_tree(written: Written, vol) -> None:
    walked = {d: (sorted(ds), sorted(fs)) for d, ds, fs in vol.walk("/")}
    files = {f"{d.rstrip('/')}/{f}" for d, (_, fs) in walked.items() for f in fs}
    assert files == set(written.files) | {"/outside", "/loop"}
    assert walked["/"][0] == ["a", "d", "empty-dir", "to-b"]  # a symlink, not walked
    assert "/to-b" not in walked
    assert walked["/empty-dir"] == ([], [])
    assert sorted(vol.listdir("/a")) == walked["/a"][0] + walked["/a"][1]
    assert sorted(vol.listdir("to-b")) == sorted(vol.listdir("/a/b"))  # followed
    for path, data in written.files.items():
        st = vol.stat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(data), path
        assert st.st_mtime_ns > 0 and st.st_mtime == pytest.approx(st.st_mtime_ns / 1e9)
    assert stat.S_ISDIR(vol.stat("/a/b").st_mode) and vol.is_dir("/a/b")
    assert stat.S_ISLNK(vol.stat("/to-b", follow_symlinks=False).st_mode)
    assert vol.exists("/a/b/c") and not vol.exists("/a/nope") and not vol.exists("/d/x/y")
    visited = []
    for d, ds, _ in vol.walk("/a"):
        visited.append(d)
        if "c" in ds:
            ds.remove("c")
    assert visited == ["/a", "/a/b"]  # dirnames pruned in place: /a/b/c is skipped


def test_symlinks_inside_the_volume_are_followed_others_refused(written: Written,
                                                                vol) -> None:
    inner = next(p for p in written.files if p.startswith("/a/b/") and p.count("/") == 3)
    assert vol.read_bytes("/to-b/" + inner.rsplit("/", 1)[1]) == written.files[inner]
    assert vol.read_bytes("/a/../to-b/./c/../" + inner.rsplit("/", 1)[1]) == \
        written.files[inner]
    with pytest.raises(FileNotFoundError, match="outside the volume"):
        vol.read_bytes("/outside")
    with pytest.raises(OSError) as e:
        vol.read_bytes("/loop")
    assert e.value.errno == errno.ELOOP


def test_errors_name_the_problem_in_one_line(written: Written, vol, tmp_path: Path) -> None:
    cases = [
        (lambda: fusefs.open_volume(tmp_path / "none"), ConfigError, "does not exist"),
        (lambda: fusefs.open_volume(tmp_path), ConfigError, "neither a fusefs volume"),
        (lambda: fusefs.open_volume(written.vol.path), KeyFileError, "no key for volume"),
        (lambda: fusefs.open_volume(written.vol.path, key_file=tmp_path / "k"),
         KeyFileError, "does not exist"),
        (lambda: vol.open("/a/nope"), FileNotFoundError, "no such file"),
        (lambda: vol.open("/a"), IsADirectoryError, "directory"),
        (lambda: vol.open(next(iter(written.files)) + "/x"), NotADirectoryError, ""),
        (lambda: vol.listdir(next(iter(written.files))), NotADirectoryError, ""),
        (lambda: vol.open("/a", "wb"), ValueError, "reads only"),
    ]
    other = tmp_path / "other.key"
    other.write_text("ab" * 32 + "\n")
    cases.append((lambda: fusefs.open_volume(written.vol.path, key_file=other),
                  KeyFileError, "wrong key"))
    for fn, kind, words in cases:
        with pytest.raises(kind) as e:
            fn()
        assert words.lower() in str(e.value).lower() and "\n" not in str(e.value)


def test_the_key_is_found_as_the_cli_finds_it(written: Written, monkeypatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("FUSEFS_KEY_FILE", str(written.vol.key))
    path, data = next((p, d) for p, d in written.files.items() if d)
    assert fusefs.open_volume(written.vol.path).read_bytes(path) == data
    monkeypatch.delenv("FUSEFS_KEY_FILE")
    copy = tmp_path / "vol"  # a volume directory that keeps its key (VOLUME/fusefs.key)
    subprocess.run(["cp", "-a", str(written.vol.path), str(copy)], check=True)
    (copy / "fusefs.key").write_bytes(written.vol.key.read_bytes())
    assert fusefs.open_volume(copy).read_bytes(path) == data


def _contents(vol: fusefs.DirectVolume, paths: list[str]) -> tuple[int, int, list[bytes]]:
    """In a child process: (pid the view was built in before, after, file contents)."""
    before = vol._pid
    out = [vol.read_bytes(p) for p in paths]
    return before, vol._pid, out


_INHERITED: list[fusefs.DirectVolume] = []  # handed to forked children by fork, not pickle


def _contents_inherited(paths: list[str]) -> tuple[int, int, list[bytes]]:
    return _contents(_INHERITED[0], paths)


def test_forked_and_spawned_processes_open_views_of_their_own(written: Written,
                                                              vol) -> None:
    paths = sorted(written.files)
    assert vol.read_bytes(paths[-1]) == written.files[paths[-1]]  # the parent's view
    _INHERITED[:] = [vol]
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        # one task per worker: a worker given both halves had rebuilt its view for the
        # first, and reported its own pid as "before" for the second
        with ctx.Pool(2, maxtasksperchild=1) as pool:
            if method == "fork":
                results = pool.map(_contents_inherited, [paths[i::2] for i in range(2)])
            else:  # the volume is pickled to the child
                results = pool.starmap(_contents, [(vol, paths[i::2]) for i in range(2)])
        for i, (before, after, contents) in enumerate(results):
            assert contents == [written.files[p] for p in paths[i::2]]
            assert after not in (os.getpid(), -1)
            assert before in ((os.getpid(),) if method == "fork" else (-1,))
    assert vol.read_bytes(paths[-1]) == written.files[paths[-1]]  # still the parent's
    blob = pickle.dumps(vol)
    key = written.vol.key.read_text().strip()
    assert key.encode() not in blob and bytes.fromhex(key) not in blob


def test_importing_the_api_imports_neither_torch_nor_pyfuse3() -> None:
    code = ("import sys, fusefs; fusefs.FileDataset; fusefs.open_volume; "
            "print(sorted(m for m in ('torch', 'pyfuse3', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_file_dataset_lists_labels_and_reads(written: Written, vol) -> None:
    ds = fusefs.FileDataset(vol, "/a", suffixes=[".BIN"], targets=True)
    below = sorted(p for p in written.files if p.startswith("/a/") and p.count("/") > 2)
    assert ds.paths == below and len(ds) == len(below)
    assert ds.classes == ["b"] and set(ds.targets) == {0}
    sample, target = ds[len(ds) - 1]
    assert sample == written.files[below[-1]] and target == 0
    flat = fusefs.FileDataset(written.vol.path, key_file=written.vol.key, transform=len,
                              suffixes=(".bin",))
    assert [flat[i] for i in range(len(flat))] == [
        len(written.files[p]) for p in sorted(written.files)]
    again = pickle.loads(pickle.dumps(flat))
    assert again[0] == flat[0] and again.paths == flat.paths


# -- beside a mount that writes ----------------------------------------------------------------
def test_a_file_rewritten_and_collected_under_an_open_file(volume, mounted) -> None:
    """The mount rewrites a file in place and deletes the old shares while the direct API
    has it open: before any byte was returned it reads the new version; after, ESTALE. No
    event: shares deleted by the mount are not damage."""
    vol = volume(chunk_size=CHUNK, pack_below="0")  # share objects: deleted when replaced
    mnt = mounted(vol)
    old, new = rand_bytes(4 * CHUNK, "old"), rand_bytes(4 * CHUNK, "new")
    for name in ("fresh", "started"):
        (mnt / name).write_bytes(old)
    direct = fusefs.open_volume(mnt, key_file=vol.key)  # by its mountpoint, too
    fresh, started = direct.open("/fresh"), direct.open("/started")
    assert started.read(100) == old[:100]
    shares = [s.file for name in ("/fresh", "/started")
              for chunk in share_map(vol)[name] for s in chunk]
    for name in ("fresh", "started"):
        with open(mnt / name, "r+b") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
    # no gc grace (the helpers' default): the fsyncs deleted the replaced shares
    assert wait_until(lambda: not any(p.exists() for p in shares), 30), "not collected"
    assert fresh.read() == new
    started.seek(3 * CHUNK)
    with pytest.raises(fusefs.FileChangedError) as e:
        started.read(10)
    assert e.value.errno == errno.ESTALE and "/started" in str(e.value)
    assert direct.read_bytes("/started") == new
    assert read_events(vol) == []


def test_reads_beside_a_mount_that_keeps_rewriting_files_never_mix(volume, mounted) -> None:
    """Files rewritten (opened with O_TRUNC, written, fsynced: the replaced shares are
    deleted at once, no gc grace) again and again while the direct API reads them. The
    mount commits a file's size only with its data, so each committed state is one
    version or a prefix of the next (being written): every read must be exactly that,
    never bytes of two versions."""
    vol = volume(chunk_size=CHUNK)
    mnt = mounted(vol)
    names = [f"f{i}" for i in range(4)]
    versions: dict[str, list[bytes]] = {n: [] for n in names}

    def put(name: str, v: int) -> None:
        data = rand_bytes(12 * CHUNK + v, f"{name}:{v}")
        versions[name].append(data)
        with open(mnt / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    for n in names:
        put(n, 0)
    rounds, problems, done = 8, [], threading.Event()

    def writer() -> None:
        try:
            for v in range(1, rounds + 1):
                for n in names:
                    put(n, v)
        except Exception as e:  # noqa: BLE001 - reported by the test
            problems.append(repr(e))
        finally:
            done.set()

    direct = fusefs.open_volume(vol.path, key_file=vol.key)
    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    try:
        while not done.is_set() or reads < 40:
            for n in names:
                got = direct.read_bytes("/" + n)
                assert any(v.startswith(got) for v in versions[n]), \
                    f"{n}: {len(got)} bytes that are no version nor a prefix of one"
                reads += 1
    finally:
        t.join(60)
    assert not problems, problems
    assert all(direct.read_bytes("/" + n) == versions[n][-1] for n in names)
    assert read_events(vol) == []


def test_a_metadata_database_put_in_place_is_read_from_then_on(volume, mounted, mounter,
                                                               tmp_path: Path) -> None:
    """A follower's mount switches snapshots by putting a newer database in place of
    meta.db (os.replace): a direct reader opened before reads the new one from then on."""
    vol = volume()
    mnt = mounted(vol)
    (mnt / "old").write_bytes(b"old")
    mounter.umount(mnt)
    direct = fusefs.open_volume(vol.path, key_file=vol.key)
    assert direct.listdir("/") == ["old"]
    newer = tmp_path / "newer"  # the same volume (same stores), a file more
    subprocess.run(["cp", "-a", str(vol.path), str(newer)], check=True)
    mnt = mounted(Volume(newer, vol.stores, vol.key, vol.k, vol.m))
    (mnt / "new").write_bytes(b"new")
    mounter.umount(mnt)
    os.replace(newer / "meta.db", vol.path / "meta.db")
    for side in ("-wal", "-shm"):
        Path(f"{vol.path / 'meta.db'}{side}").unlink(missing_ok=True)
    assert sorted(direct.listdir("/")) == ["new", "old"]
    assert direct.read_bytes("/new") == b"new" and direct.read_bytes("/old") == b"old"


def test_shares_of_a_replaced_version_going_away_are_no_damage(volume, mounted) -> None:
    """A file opened (its rows pinned), then rewritten by the mount; one share of the old
    version goes (as in a garbage pass of the mount) before it is read: the open file
    returns the old version, right, and nothing is reported: that share was garbage."""
    vol = volume(chunk_size=CHUNK, gc_grace=3600,  # the mount deletes none of them itself
                 pack_below="0")  # share objects: one of them goes
    mnt = mounted(vol)
    old, new = rand_bytes(2 * CHUNK, "old"), rand_bytes(2 * CHUNK, "new")
    (mnt / "f").write_bytes(old)
    direct = fusefs.open_volume(vol.path, key_file=vol.key)
    f = direct.open("/f")
    first = share_map(vol)["/f"][0][0]  # a data share of chunk 0: a read needs it
    with open(mnt / "f", "r+b") as w:
        w.write(new)
        w.flush()
        os.fsync(w.fileno())
    first.file.unlink()
    assert f.read() == old
    assert read_events(vol) == []
    assert direct.read_bytes("/f") == new


@pytest.mark.timeout(180)
def test_a_volume_with_s3_stores_is_read_through_the_async_driver(tmp_path: Path, s3_server,
                                                                  mounter: Mounter) -> None:
    """2 local stores and 3 buckets on a real S3 HTTP server: the direct API runs the read
    plans on the async driver (hedged fetches), whole chunks and small ranged reads, and
    reports a share lost from a local store."""
    vol, _, _ = mixed_volume(tmp_path, s3_server, 3, 2, 2)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = {f"/f{i}.bin": rand_bytes(size, i)
             for i, size in enumerate([1, 3 * MiB, *range(4097, 4107)])}
    for path, data in files.items():
        (mnt / path[1:]).write_bytes(data)
    mounter.umount(mnt)
    paths = Volume(vol.path, [*vol.stores, *[tmp_path / "s3"] * 3], vol.key, 3, 2)
    lost = next(s for chunks in share_map(paths).values() for s in chunks[0]
                if s.store < 2 and s.share < 3)  # a data share on a local store: read
    if lost.pack is None:
        lost.file.unlink()
        kind = "missing"
    else:  # a pack member (local stores pack small shares): its bytes flipped
        lost.overwrite(bytes(b ^ 0xFF for b in lost.read()))
        kind = "checksum_mismatch"
    direct = fusefs.open_volume(vol.path, key_file=vol.key)
    for path, data in files.items():
        assert direct.read_bytes(path) == data, path
    with direct.open("/f1.bin") as f:
        f.seek(MiB + 12345)
        assert f.read(5000) == files["/f1.bin"][MiB + 12345 : MiB + 17345]
    (event,) = read_events(vol)
    assert (event["kind"], event["action"], event["file"], event["object"]) == \
        (kind, "reported", lost.path, lost.event_object)
