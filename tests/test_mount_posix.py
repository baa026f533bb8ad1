"""POSIX behaviour of a real fusefs mount (issue 2, "POSIX coverage" and "Done when" 1).

Most tests work in their own directory (`mdir`) of one volume mounted for the whole session;
the tests that need a remount, a special mount option or exact volume counters make their own
volume. Expected errno values are those of ext4 (run with FUSEFS_TEST_REFERENCE_DIR=/some/dir
to check the `mdir` tests against the kernel's own filesystem).
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import resource
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    ALLOW_OTHER_PREFIX,
    FUSEFS,
    TREE_SIZES,
    GiB,
    KiB,
    MiB,
    Volume,
    assert_ok,
    assert_tree,
    drop_cache,
    is_mounted,
    mount_entry,
    rand_bytes,
    read_uncached,
    run_fusefs,
    snapshot_files,
    snapshot_shares,
    status_json,
    tree_layout,
    wait_until,
    write_tree,
)

pytestmark = pytest.mark.mount


def expect_errno(err: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    got = info.value.errno
    assert got == err, (
        f"{fn.__name__}{tuple(str(a) for a in args)}: got {errno.errorcode.get(got, got)}, "
        f"expected {errno.errorcode[err]}"
    )


def current_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_a_store_inside_a_fuse_mount_reads_through_threads(mdir: Path):
    """A FUSE filesystem (this mount) may hang: a store on it never reads inline."""
    from fusefs.mounts import filesystem_type, may_hang
    from fusefs.stores.local import LocalStore

    (mdir / "store").mkdir()
    assert filesystem_type(mdir / "store") == "fuse.fusefs"
    assert may_hang(mdir / "store")
    assert not LocalStore(str(mdir / "store")).inline_io


# ------------------------------------------------------------------------------------------
# create / open / read / write / close
# ------------------------------------------------------------------------------------------


def test_create_write_read_close(mdir: Path):
    p = mdir / "hello.txt"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        assert os.write(fd, b"hello world\n") == 12
    finally:
        os.close(fd)
    assert p.read_bytes() == b"hello world\n"
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 12
    assert st.st_nlink == 1
    assert stat.S_IMODE(st.st_mode) == 0o644 & ~current_umask()
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    with open(p, "rb") as f:
        assert f.read(5) == b"hello"
        assert f.read() == b" world\n"
        assert f.read() == b""
    assert read_uncached(p) == b"hello world\n"
    # overwrite in place, keep the rest
    with open(p, "r+b") as f:
        f.write(b"HELLO")
    assert read_uncached(p) == b"HELLO world\n"


def test_dense_file_roundtrip_and_stat(mdir: Path, chunk_size: int):
    data = rand_bytes(2 * chunk_size + 12345, "dense")
    p = mdir / "dense.bin"
    write_file(p, data)
    st = os.stat(p)
    assert st.st_size == len(data)
    assert st.st_blocks * 512 >= len(data), "st_blocks undercounts a dense file (du/cp see holes)"
    assert st.st_blksize > 0
    assert read_uncached(p) == data
    # odd-sized sequential reads
    drop_cache(p)
    got = bytearray()
    with open(p, "rb", buffering=0) as f:
        while chunk := f.read(7777):
            got += chunk
    assert bytes(got) == data
    assert os.stat(mdir / "dense.bin").st_ino != os.stat(mdir).st_ino


def test_pread_pwrite_any_offset(mdir: Path, chunk_size: int):
    rng = random.Random(1234)
    p = mdir / "random-io.bin"
    model = bytearray()
    span = 3 * chunk_size + 1000
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for i in range(150):
            if i % 3 == 0:  # land on or straddle a chunk boundary
                off = rng.randrange(1, 4) * chunk_size + rng.randrange(-300, 300)
            else:
                off = rng.randrange(0, span)
            n = rng.choice([1, 2, 17, 511, 4096, 4097, 65536, rng.randrange(1, 300 * KiB)])
            buf = rng.randbytes(n)
            assert os.pwrite(fd, buf, off) == n
            if off > len(model):
                model += bytes(off - len(model))
            model[off:off + n] = buf
            roff = rng.randrange(0, len(model))
            rlen = rng.randrange(1, 200 * KiB)
            assert os.pread(fd, rlen, roff) == bytes(model[roff:roff + rlen]), f"op {i}"
        assert os.fstat(fd).st_size == len(model)
        assert os.pread(fd, 100, len(model)) == b""
        assert os.pread(fd, 100, len(model) + 12345) == b""
        assert os.pread(fd, 100, len(model) - 10) == bytes(model[-10:])
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read_uncached(p) == bytes(model)


def test_append(mdir: Path):
    p = mdir / "log.txt"
    with open(p, "ab") as f:
        f.write(b"one\n")
    with open(p, "ab") as f:
        f.write(b"two\n")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"three\n")  # O_APPEND: goes to the end whatever the offset
    finally:
        os.close(fd)
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(20):
            os.write(a if i % 2 else b, f"line {i}\n".encode())
    finally:
        os.close(a)
        os.close(b)
    expected = b"one\ntwo\nthree\n" + b"".join(f"line {i}\n".encode() for i in range(20))
    assert p.read_bytes() == expected
    assert read_uncached(p) == expected
    big = rand_bytes(3 * MiB + 5, "append")
    with open(p, "ab") as f:
        f.write(big)
    assert read_uncached(p) == expected + big


def test_sparse_writes_and_holes(mdir: Path, chunk_size: int):
    p = mdir / "sparse.bin"
    far = 3 * chunk_size + 7
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"A" * 10, 0)
        os.pwrite(fd, b"B" * 10, far)
        assert os.fstat(fd).st_size == far + 10
    finally:
        os.close(fd)
    want = b"A" * 10 + bytes(far - 10) + b"B" * 10
    assert p.read_bytes() == want
    assert read_uncached(p) == want
    # fill part of the hole, inside a chunk that was never written
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"C" * 5, chunk_size + 100)
    finally:
        os.close(fd)
    want = want[:chunk_size + 100] + b"C" * 5 + want[chunk_size + 105:]
    assert read_uncached(p) == want
    # a file that is all hole
    q = mdir / "hole-only.bin"
    q.touch()
    os.truncate(q, 2 * chunk_size + 3)
    assert os.stat(q).st_size == 2 * chunk_size + 3
    assert read_uncached(q) == bytes(2 * chunk_size + 3)


def test_file_larger_than_4gib_sparse(mdir: Path):
    p = mdir / "huge.sparse"
    off = 5 * GiB
    with open(p, "wb") as f:
        f.seek(off)
        f.write(b"tail-bytes")
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"ACROSS4G", 4 * GiB - 4)
    finally:
        os.close(fd)
    assert os.stat(p).st_size == off + 10
    drop_cache(p)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, 0) == bytes(MiB)
        assert os.pread(fd, 16, 4 * GiB - 12) == bytes(8) + b"ACROSS4G"
        assert os.pread(fd, 1000, 4 * GiB + 4) == bytes(1000)
        assert os.pread(fd, MiB, off - MiB) == bytes(MiB)
        assert os.pread(fd, 100, off) == b"tail-bytes"
        assert os.pread(fd, 10, off + 10) == b""
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------
# truncate
# ------------------------------------------------------------------------------------------


def test_truncate_shrink_then_grow_reads_zeros(mdir: Path, chunk_size: int):
    data = rand_bytes(3 * chunk_size + 100, "trunc")
    p = mdir / "t.bin"
    write_file(p, data)
    cut = chunk_size + 10  # in the middle of the second chunk
    os.truncate(p, cut)
    assert os.stat(p).st_size == cut
    assert read_uncached(p) == data[:cut]
    os.truncate(p, 2 * chunk_size + 5)  # grow: the old bytes must not come back
    assert os.stat(p).st_size == 2 * chunk_size + 5
    assert read_uncached(p) == data[:cut] + bytes(2 * chunk_size + 5 - cut)
    os.truncate(p, 0)
    assert os.stat(p).st_size == 0
    assert read_uncached(p) == b""
    os.truncate(p, 4097)
    assert read_uncached(p) == bytes(4097)


def test_ftruncate(mdir: Path, chunk_size: int):
    data = rand_bytes(chunk_size + 5000, "ftrunc")
    p = mdir / "ft.bin"
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, 4000)
        assert os.fstat(fd).st_size == 4000
        assert os.pread(fd, 10000, 0) == data[:4000]
        os.ftruncate(fd, 6000)
        assert os.pread(fd, 10000, 0) == data[:4000] + bytes(2000)
        os.pwrite(fd, b"xyz", 5000)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read_uncached(p) == data[:4000] + bytes(1000) + b"xyz" + bytes(997)


def test_open_o_trunc(mdir: Path):
    p = mdir / "otrunc.bin"
    write_file(p, rand_bytes(2 * MiB, "otrunc"))
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert read_uncached(p) == b"new"
    write_file(p, b"again")  # open(..., "wb") is O_CREAT|O_TRUNC
    assert read_uncached(p) == b"again"
    assert os.stat(p).st_size == 5


# ------------------------------------------------------------------------------------------
# directories
# ------------------------------------------------------------------------------------------


def test_mkdir_rmdir(mdir: Path):
    d = mdir / "d"
    os.mkdir(d, 0o750)
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750 & ~current_umask()
    os.makedirs(d / "x" / "y" / "z")
    assert os.listdir(d / "x" / "y") == ["z"]
    expect_errno(errno.ENOTEMPTY, os.rmdir, d / "x")
    os.rmdir(d / "x" / "y" / "z")
    os.rmdir(d / "x" / "y")
    os.rmdir(d / "x")
    assert os.listdir(d) == []
    os.rmdir(d)
    assert not d.exists()
    expect_errno(errno.ENOENT, os.stat, d)
    os.mkdir(d)  # the name is free again
    assert os.listdir(d) == []


def test_directory_nlink_like_ext4(mdir: Path):
    d = mdir / "p"
    d.mkdir()
    assert os.stat(d).st_nlink == 2
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "f").touch()
    assert os.stat(d).st_nlink == 4
    os.rmdir(d / "a")
    assert os.stat(d).st_nlink == 3
    os.rename(d / "b", mdir / "b")
    assert os.stat(d).st_nlink == 2


def test_readdir_3000_entries(mdir: Path):
    d = mdir / "many"
    d.mkdir()
    names = [f"entry-{i:05d}" for i in range(3000)]
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    assert len(listed) == len(set(listed)), "readdir returned duplicates"
    assert set(listed) == set(names)
    with os.scandir(d) as it:
        entries = list(it)
    assert len(entries) == 3000
    assert all(e.is_file() for e in entries)
    for n in names[::2]:
        os.unlink(d / n)
    assert sorted(os.listdir(d)) == names[1::2]


def test_readdir_while_deleting(mdir: Path):
    d = mdir / "churn"
    d.mkdir()
    names = {f"n{i:04d}" for i in range(1000)}
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    seen = []
    with os.scandir(d) as it:
        for entry in it:  # deleting entries already returned must not skip or repeat others
            seen.append(entry.name)
            os.unlink(entry.path)
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert set(seen) == names, f"{len(names - set(seen))} entries were skipped"
    assert os.listdir(d) == []


# ------------------------------------------------------------------------------------------
# unlink
# ------------------------------------------------------------------------------------------


def test_unlink(mdir: Path):
    p = mdir / "gone.bin"
    write_file(p, rand_bytes(100_000, "gone"))
    os.unlink(p)
    assert not p.exists()
    assert os.listdir(mdir) == []
    expect_errno(errno.ENOENT, os.unlink, p)
    write_file(p, b"new life")
    assert read_uncached(p) == b"new life"


def test_open_then_unlink_keeps_working(mdir: Path, chunk_size: int):
    p = mdir / "orphan.bin"
    data = rand_bytes(chunk_size + 3000, "orphan")
    write_file(p, data)
    fd = os.open(p, os.O_RDWR)
    fd2 = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        assert not p.exists()
        assert "orphan.bin" not in os.listdir(mdir)
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data) + 10, 0) == data
        more = rand_bytes(2 * chunk_size, "orphan-more")
        assert os.pwrite(fd, more, len(data)) == len(more)
        os.fsync(fd)
        assert os.fstat(fd).st_size == len(data) + len(more)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, len(data) + len(more), 0) == data + more
        os.close(fd)
        fd = -1
        # the second descriptor keeps the inode alive after the first is closed
        os.posix_fadvise(fd2, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd2, len(data) + len(more), 0) == data + more
        # a new file with the same name is a different file
        write_file(p, b"fresh")
        assert p.read_bytes() == b"fresh"
        assert os.pread(fd2, 5, 0) == data[:5]
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(fd2)
    assert read_uncached(p) == b"fresh"


# ------------------------------------------------------------------------------------------
# rename
# ------------------------------------------------------------------------------------------


def test_rename_file_same_dir_and_across_dirs(mdir: Path):
    data = rand_bytes(300_000, "mv")
    (mdir / "d1").mkdir()
    (mdir / "d2").mkdir()
    write_file(mdir / "d1" / "a", data)
    ino = os.stat(mdir / "d1" / "a").st_ino
    os.rename(mdir / "d1" / "a", mdir / "d1" / "b")
    assert os.listdir(mdir / "d1") == ["b"]
    os.rename(mdir / "d1" / "b", mdir / "d2" / "c")
    assert os.listdir(mdir / "d1") == []
    assert os.listdir(mdir / "d2") == ["c"]
    assert os.stat(mdir / "d2" / "c").st_ino == ino
    assert read_uncached(mdir / "d2" / "c") == data
    expect_errno(errno.ENOENT, os.stat, mdir / "d1" / "a")
    os.rename(mdir / "d2" / "c", mdir / "d2" / "c")  # same name: no-op
    assert read_uncached(mdir / "d2" / "c") == data


def test_rename_replaces_existing_target(mdir: Path):
    old = rand_bytes(200_000, "old")
    new = rand_bytes(100_000, "new")
    write_file(mdir / "target", old)
    write_file(mdir / "source", new)
    fd = os.open(mdir / "target", os.O_RDONLY)  # the replaced file stays readable
    try:
        os.rename(mdir / "source", mdir / "target")
        assert sorted(os.listdir(mdir)) == ["target"]
        assert read_uncached(mdir / "target") == new
        assert os.fstat(fd).st_nlink == 0
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, len(old), 0) == old
    finally:
        os.close(fd)
    # replacing an empty directory with a directory
    (mdir / "srcdir").mkdir()
    write_file(mdir / "srcdir" / "inside", b"inside")
    (mdir / "emptydir").mkdir()
    os.rename(mdir / "srcdir", mdir / "emptydir")
    assert os.listdir(mdir / "emptydir") == ["inside"]
    assert not (mdir / "srcdir").exists()


def test_rename_directory_with_contents(mdir: Path):
    src = mdir / "tree"
    layout = tree_layout([0, 1, 5000, 70_000])
    expected = write_tree(src, layout, seed="rdir")
    (mdir / "elsewhere").mkdir()
    os.rename(src, mdir / "elsewhere" / "moved")
    assert not src.exists()
    assert_tree(mdir / "elsewhere" / "moved", expected)
    for rel in expected:
        drop_cache(mdir / "elsewhere" / "moved" / rel)
    assert_tree(mdir / "elsewhere" / "moved", expected)
    # a file created under the new path lands there
    write_file(mdir / "elsewhere" / "moved" / "a" / "new", b"n")
    assert (mdir / "elsewhere" / "moved" / "a" / "new").read_bytes() == b"n"


def test_rename_errors(mdir: Path):
    (mdir / "full").mkdir()
    (mdir / "full" / "x").touch()
    (mdir / "dir").mkdir()
    (mdir / "file").touch()
    expect_errno(errno.ENOTEMPTY, os.rename, mdir / "dir", mdir / "full")
    expect_errno(errno.EISDIR, os.rename, mdir / "file", mdir / "dir")
    expect_errno(errno.ENOTDIR, os.rename, mdir / "dir", mdir / "file")
    expect_errno(errno.ENOENT, os.rename, mdir / "missing", mdir / "other")
    expect_errno(errno.EINVAL, os.rename, mdir / "dir", mdir / "dir" / "sub")
    expect_errno(errno.ENOENT, os.rename, mdir / "file", mdir / "nodir" / "file")
    assert sorted(os.listdir(mdir)) == ["dir", "file", "full"]
    assert os.listdir(mdir / "full") == ["x"]


# ------------------------------------------------------------------------------------------
# links
# ------------------------------------------------------------------------------------------


def test_hard_links(mdir: Path):
    a = mdir / "a"
    (mdir / "sub").mkdir()
    b = mdir / "sub" / "b"
    data = rand_bytes(150_000, "link")
    write_file(a, data)
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino
    assert sa.st_nlink == sb.st_nlink == 2
    with open(b, "r+b") as f:  # data is shared
        f.seek(10)
        f.write(b"through-b")
    want = data[:10] + b"through-b" + data[19:]
    assert read_uncached(a) == want
    os.link(a, mdir / "c")
    assert os.stat(b).st_nlink == 3
    os.unlink(a)
    assert os.stat(b).st_nlink == 2
    assert read_uncached(b) == want
    os.rename(mdir / "c", mdir / "d")
    assert os.stat(mdir / "d").st_nlink == 2
    os.unlink(mdir / "d")
    assert os.stat(b).st_nlink == 1
    assert read_uncached(b) == want
    expect_errno(errno.EEXIST, os.link, b, mdir / "sub" / "b")
    expect_errno(errno.EPERM, os.link, mdir / "sub", mdir / "dirlink")
    expect_errno(errno.ENOENT, os.link, mdir / "nothing", mdir / "x")


def test_symlinks_and_readlink(mdir: Path):
    write_file(mdir / "target.txt", b"pointed at")
    os.symlink("target.txt", mdir / "link")
    assert os.readlink(mdir / "link") == "target.txt"
    lst = os.lstat(mdir / "link")
    assert stat.S_ISLNK(lst.st_mode)
    assert lst.st_size == len("target.txt")
    assert stat.S_ISREG(os.stat(mdir / "link").st_mode)
    assert (mdir / "link").read_bytes() == b"pointed at"
    os.symlink("nowhere", mdir / "dangling")
    assert not os.path.exists(mdir / "dangling")
    assert os.path.lexists(mdir / "dangling")
    expect_errno(errno.ENOENT, os.open, mdir / "dangling", os.O_RDONLY)
    (mdir / "realdir").mkdir()
    (mdir / "realdir" / "inner").touch()
    os.symlink("realdir", mdir / "dirlink")
    assert os.listdir(mdir / "dirlink") == ["inner"]
    long_target = "/" + "/".join(["segment" + str(i) for i in range(120)])
    os.symlink(long_target, mdir / "longlink")
    assert os.readlink(mdir / "longlink") == long_target
    os.symlink("/etc/hostname", mdir / "abslink")
    assert os.readlink(mdir / "abslink") == "/etc/hostname"
    os.unlink(mdir / "link")
    assert (mdir / "target.txt").read_bytes() == b"pointed at"
    expect_errno(errno.EEXIST, os.symlink, "x", mdir / "dangling")
    expect_errno(errno.EINVAL, os.readlink, mdir / "target.txt")


# ------------------------------------------------------------------------------------------
# attributes
# ------------------------------------------------------------------------------------------


def test_chmod_chown_utimens(mdir: Path):
    p = mdir / "attrs"
    p.touch()
    os.chmod(p, 0o640)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    os.chmod(p, 0o4755)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4755
    (mdir / "dir").mkdir()
    os.chmod(mdir / "dir", 0o700)
    assert stat.S_IMODE(os.stat(mdir / "dir").st_mode) == 0o700
    if os.geteuid() == 0:
        os.chown(p, 1234, 5678)
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        os.symlink("attrs", mdir / "sl")
        os.lchown(mdir / "sl", 4321, 8765)
        lst = os.lstat(mdir / "sl")
        assert (lst.st_uid, lst.st_gid) == (4321, 8765)
        assert os.stat(p).st_uid == 1234
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert st.st_atime_ns == 1_000_000_123
    assert st.st_mtime_ns == 2_000_000_456
    os.utime(mdir / "dir", ns=(3_000_000_001, 4_000_000_002))
    assert os.stat(mdir / "dir").st_mtime_ns == 4_000_000_002
    os.utime(p)  # now
    assert abs(os.stat(p).st_mtime - time.time()) < 60


def test_write_updates_mtime_and_ctime(mdir: Path):
    p = mdir / "m"
    p.write_bytes(b"x")
    os.utime(p, ns=(10**18, 10**18 // 2))
    before = os.stat(p)
    with open(p, "ab") as f:
        f.write(b"more")
    after = os.stat(p)
    assert after.st_mtime_ns > before.st_mtime_ns
    assert after.st_ctime_ns >= before.st_ctime_ns
    os.utime(mdir, ns=(10**18, 10**18 // 2))
    (mdir / "newfile").touch()
    assert os.stat(mdir).st_mtime_ns != 10**18 // 2, "creating an entry left the dir mtime"


def test_xattrs(mdir: Path):
    p = mdir / "x"
    p.write_bytes(b"data")
    big = rand_bytes(1000, "xattr") + b"\0\0tail"
    os.setxattr(p, "user.test", b"value")
    os.setxattr(p, "user.empty", b"")
    os.setxattr(p, "user.big", big)
    assert os.getxattr(p, "user.test") == b"value"
    assert os.getxattr(p, "user.empty") == b""
    assert os.getxattr(p, "user.big") == big
    assert {"user.test", "user.empty", "user.big"} <= set(os.listxattr(p))
    os.setxattr(p, "user.test", b"changed")
    assert os.getxattr(p, "user.test") == b"changed"
    expect_errno(errno.EEXIST, os.setxattr, p, "user.test", b"v", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, p, "user.nope", b"v", os.XATTR_REPLACE)
    os.setxattr(p, "user.test", b"replaced", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.test") == b"replaced"
    os.removexattr(p, "user.test")
    expect_errno(errno.ENODATA, os.getxattr, p, "user.test")
    expect_errno(errno.ENODATA, os.removexattr, p, "user.test")
    expect_errno(errno.ENODATA, os.getxattr, p, "user.never-set")
    assert "user.test" not in os.listxattr(p)
    assert p.read_bytes() == b"data"
    expect_errno(errno.ENOENT, os.getxattr, mdir / "missing", "user.test")
    (mdir / "d").mkdir()
    os.setxattr(mdir / "d", "user.dir", b"on a dir")
    assert os.getxattr(mdir / "d", "user.dir") == b"on a dir"
    assert os.listxattr(mdir / "d") == ["user.dir"]


def test_statvfs(shared_fs, mdir: Path):
    sv = os.statvfs(shared_fs.root)
    assert sv.f_bsize > 0
    assert sv.f_frsize > 0
    assert sv.f_blocks > 0
    assert 0 <= sv.f_bavail <= sv.f_bfree <= sv.f_blocks
    assert sv.f_namemax >= 255
    assert os.statvfs(mdir).f_blocks == sv.f_blocks


def test_fsync_and_fdatasync(mdir: Path):
    p = mdir / "synced"
    data = rand_bytes(3 * MiB + 1, "sync")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data[:MiB])
        os.fsync(fd)
        os.write(fd, data[MiB:])
        os.fdatasync(fd)
        os.fsync(fd)  # nothing dirty: still fine
    finally:
        os.close(fd)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)  # on a read-only descriptor
    finally:
        os.close(fd)
    dfd = os.open(mdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert read_uncached(p) == data


def test_mmap_read(mdir: Path, chunk_size: int):
    data = rand_bytes(2 * chunk_size + 4097, "mmap")
    p = mdir / "mapped"
    write_file(p, data)
    drop_cache(p)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert len(mm) == len(data)
        assert mm[chunk_size - 5:chunk_size + 5] == data[chunk_size - 5:chunk_size + 5]
        assert mm[-100:] == data[-100:]
        assert mm[:] == data


# ------------------------------------------------------------------------------------------
# concurrency and many files
# ------------------------------------------------------------------------------------------


def test_concurrent_readers_of_one_file(mdir: Path, chunk_size: int):
    data = rand_bytes(3 * chunk_size + 17, "concurrent")
    p = mdir / "shared.bin"
    write_file(p, data)
    drop_cache(p)
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                for i in range(30):
                    if i % 10 == 0:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    off = rng.randrange(0, len(data))
                    n = rng.randrange(1, 2 * chunk_size)
                    if os.pread(fd, n, off) != data[off:off + n]:
                        errors.append(f"reader {seed}: wrong bytes at [{off}, {off + n})")
                        return
                os.lseek(fd, 0, os.SEEK_SET)
                whole = bytearray()
                while buf := os.read(fd, 1 << 20):
                    whole += buf
                if whole != data:
                    errors.append(f"reader {seed}: sequential read differs")
            finally:
                os.close(fd)
        except OSError as exc:
            errors.append(f"reader {seed}: {exc!r}")

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a reader is stuck"
    assert errors == []


def test_many_open_files(mdir: Path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    n = 200
    contents = [rand_bytes(10_000 + i, f"many{i}") for i in range(n)]
    fds = []
    try:
        for i in range(n):
            fds.append(os.open(mdir / f"f{i:03d}", os.O_CREAT | os.O_RDWR, 0o644))
        for fd, data in zip(fds, contents, strict=True):
            assert os.write(fd, data) == len(data)
        for fd, data in zip(reversed(fds), reversed(contents), strict=True):
            assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        for fd in fds:
            os.close(fd)
    assert len(os.listdir(mdir)) == n
    for i, data in enumerate(contents):
        assert read_uncached(mdir / f"f{i:03d}") == data


def test_read_sees_write_of_other_descriptor(mdir: Path, chunk_size: int):
    p = mdir / "coherent.bin"
    data = rand_bytes(2 * chunk_size, "coherent")
    write_file(p, data)
    writer = os.open(p, os.O_WRONLY)
    reader = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(reader, 100, chunk_size - 50) == data[chunk_size - 50:chunk_size + 50]
        os.pwrite(writer, b"Z" * 100, chunk_size - 50)  # no fsync, no close
        assert os.pread(reader, 100, chunk_size - 50) == b"Z" * 100
        os.pwrite(writer, b"tail", 2 * chunk_size)
        assert os.fstat(reader).st_size == 2 * chunk_size + 4
        assert os.pread(reader, 10, 2 * chunk_size) == b"tail"
    finally:
        os.close(writer)
        os.close(reader)


def test_concurrent_writers_of_different_files(mdir: Path):
    errors: list[str] = []
    contents = {f"w{t}-{i}": rand_bytes(MiB + 1000 * t + i, f"cw{t}{i}")
                for t in range(4) for i in range(4)}

    def writer(t: int) -> None:
        try:
            for i in range(4):
                name = f"w{t}-{i}"
                with open(mdir / name, "wb") as f:
                    for off in range(0, len(contents[name]), 100_000):
                        f.write(contents[name][off:off + 100_000])
        except OSError as exc:
            errors.append(f"writer {t}: {exc!r}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a writer is stuck"
    assert errors == []
    assert sorted(os.listdir(mdir)) == sorted(contents)
    for name, data in contents.items():
        assert read_uncached(mdir / name) == data, name


def test_odd_file_names(mdir: Path):
    names = [
        b"spaces in a name",
        "\u00fcn\u00efc\u00f8d\u00e9-\u540d\u524d.txt".encode(),
        b"new\nline",
        b"\xff\xfe-not-utf8-\xe9",
        b".hidden",
        b"-dash",
        b"tab\there",
        b"back\\slash",
    ]
    base = os.fsencode(mdir)
    for i, n in enumerate(names):
        with open(os.path.join(base, n), "wb") as f:
            f.write(b"content %d" % i)
    assert sorted(os.listdir(base)) == sorted(names)
    for i, n in enumerate(names):
        with open(os.path.join(base, n), "rb") as f:
            assert f.read() == b"content %d" % i
    os.rename(os.path.join(base, names[3]), os.path.join(base, b"\xfe\xff-renamed"))
    assert b"\xfe\xff-renamed" in os.listdir(base)
    os.mkdir(os.path.join(base, b"dir \xff"))
    assert os.listdir(os.path.join(base, b"dir \xff")) == []


def test_deep_nesting(mdir: Path):
    d = mdir
    for i in range(40):
        d = d / (f"level{i:02d}-" + "x" * 70)
    os.makedirs(d)
    assert len(str(d)) > 3000
    (d / "leaf").write_bytes(b"deep")
    assert (d / "leaf").read_bytes() == b"deep"
    os.rename(mdir / ("level00-" + "x" * 70), mdir / "top")
    assert (mdir / "top" / d.relative_to(mdir / ("level00-" + "x" * 70)) / "leaf").read_bytes() \
        == b"deep"


def test_copy_within_mount(mdir: Path, chunk_size: int):
    data = rand_bytes(2 * chunk_size + 99, "copy")
    write_file(mdir / "orig", data)
    shutil.copyfile(mdir / "orig", mdir / "copy")  # sendfile() inside the mount
    shutil.copy2(mdir / "orig", mdir / "copy2")
    assert read_uncached(mdir / "copy") == data
    assert read_uncached(mdir / "copy2") == data
    assert os.stat(mdir / "copy2").st_mtime_ns == os.stat(mdir / "orig").st_mtime_ns


# ------------------------------------------------------------------------------------------
# errno values (as ext4)
# ------------------------------------------------------------------------------------------


def test_errno_enoent(mdir: Path):
    expect_errno(errno.ENOENT, os.open, mdir / "nope", os.O_RDONLY)
    expect_errno(errno.ENOENT, os.stat, mdir / "nope")
    expect_errno(errno.ENOENT, os.unlink, mdir / "nope")
    expect_errno(errno.ENOENT, os.rmdir, mdir / "nope")
    expect_errno(errno.ENOENT, os.listdir, mdir / "nope")
    expect_errno(errno.ENOENT, os.open, mdir / "nodir" / "f", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.ENOENT, os.mkdir, mdir / "nodir" / "d")
    expect_errno(errno.ENOENT, os.chmod, mdir / "nope", 0o600)
    expect_errno(errno.ENOENT, os.truncate, mdir / "nope", 0)
    expect_errno(errno.ENOENT, os.readlink, mdir / "nope")


def test_errno_eexist(mdir: Path):
    (mdir / "f").touch()
    (mdir / "d").mkdir()
    expect_errno(errno.EEXIST, os.open, mdir / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect_errno(errno.EEXIST, os.open, mdir / "d", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect_errno(errno.EEXIST, os.mkdir, mdir / "d")
    expect_errno(errno.EEXIST, os.mkdir, mdir / "f")
    expect_errno(errno.EEXIST, os.symlink, "t", mdir / "f")
    expect_errno(errno.EEXIST, os.link, mdir / "f", mdir / "d")


def test_errno_eisdir_enotdir(mdir: Path):
    (mdir / "f").write_bytes(b"file")
    (mdir / "d").mkdir()
    expect_errno(errno.EISDIR, os.open, mdir / "d", os.O_WRONLY)
    expect_errno(errno.EISDIR, os.open, mdir / "d", os.O_RDWR)
    expect_errno(errno.EISDIR, os.unlink, mdir / "d")
    expect_errno(errno.EISDIR, os.truncate, mdir / "d", 0)
    expect_errno(errno.ENOTDIR, os.rmdir, mdir / "f")
    expect_errno(errno.ENOTDIR, os.listdir, mdir / "f")
    expect_errno(errno.ENOTDIR, os.stat, mdir / "f" / "x")
    expect_errno(errno.ENOTDIR, os.open, mdir / "f" / "x", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.ENOTDIR, os.mkdir, mdir / "f" / "x")
    expect_errno(errno.ENOTDIR, os.open, mdir / "f", os.O_RDONLY | os.O_DIRECTORY)


def test_errno_enotempty(mdir: Path):
    (mdir / "d" / "sub").mkdir(parents=True)
    expect_errno(errno.ENOTEMPTY, os.rmdir, mdir / "d")
    (mdir / "e").mkdir()
    (mdir / "e" / "f").touch()
    expect_errno(errno.ENOTEMPTY, os.rmdir, mdir / "e")
    os.unlink(mdir / "e" / "f")
    os.rmdir(mdir / "e")


def test_errno_enametoolong_and_name_max(mdir: Path):
    ok = "n" * 255
    (mdir / ok).write_bytes(b"255")
    assert os.listdir(mdir) == [ok]
    assert (mdir / ok).read_bytes() == b"255"
    os.unlink(mdir / ok)
    expect_errno(errno.ENAMETOOLONG, os.open, mdir / ("n" * 256), os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, mdir / ("d" * 256))
    expect_errno(errno.ENAMETOOLONG, os.stat, mdir / ("s" * 256))
    assert os.listdir(mdir) == []


def test_errno_ebadf_and_einval(mdir: Path):
    p = mdir / "ro"
    p.write_bytes(b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        expect_errno(errno.EBADF, os.write, fd, b"x")
        expect_errno(errno.EINVAL, os.ftruncate, fd, 0)
    finally:
        os.close(fd)
    fd = os.open(p, os.O_WRONLY)
    try:
        expect_errno(errno.EBADF, os.read, fd, 1)
    finally:
        os.close(fd)
    assert p.read_bytes() == b"abc"


# ------------------------------------------------------------------------------------------
# own volumes: the reference tree across a remount, read-only, status, init basics
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_tree_copy_roundtrip_and_remount(tmp_path: Path, volume, mounter):
    src = tmp_path / "src"
    layout = tree_layout(TREE_SIZES)
    expected = write_tree(src, layout, seed="tree")
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt1")
    shutil.copytree(src, mnt / "tree")
    t = mnt / "tree"
    f4097 = next(rel for rel, size in layout.items() if size == 4097)
    f4096 = next(rel for rel, size in layout.items() if size == 4096)
    os.link(t / f4097, t / "hardlink.bin")
    os.symlink(f4096, t / "symlink")
    os.setxattr(t / f4096, "user.origin", b"tree-test")
    os.chmod(t / f4096, 0o600)
    os.utime(t / f4096, ns=(123_456_789_012_345_678, 223_456_789_012_345_678))
    with open(mnt / "big.sparse", "wb") as f:
        f.seek(5 * GiB)
        f.write(b"beyond-4GiB")
    regular = dict(expected, **{"hardlink.bin": expected[f4097]})

    def check(root: Path) -> None:
        tt = root / "tree"
        assert_tree(tt, {**regular, "symlink": expected[f4096]})
        assert (tt / "empty-dir").is_dir() and os.listdir(tt / "empty-dir") == []
        for rel in layout:
            if rel != f4096:
                assert os.stat(tt / rel).st_mtime_ns == os.stat(src / rel).st_mtime_ns, rel
        assert os.stat(tt / f4097).st_nlink == 2
        assert os.stat(tt / f4097).st_ino == os.stat(tt / "hardlink.bin").st_ino
        assert os.readlink(tt / "symlink") == f4096
        assert os.getxattr(tt / f4096, "user.origin") == b"tree-test"
        st = os.stat(tt / f4096)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_mtime_ns == 223_456_789_012_345_678
        assert os.stat(root / "big.sparse").st_size == 5 * GiB + 11
        with open(root / "big.sparse", "rb") as f:
            assert os.pread(f.fileno(), 4096, 5 * GiB - 4096) == bytes(4096)
            assert os.pread(f.fileno(), 100, 5 * GiB) == b"beyond-4GiB"
            assert os.pread(f.fileno(), 4096, 0) == bytes(4096)

    check(mnt)
    mounter.umount(mnt)
    mnt2 = mounter.mount(vol, tmp_path / "mnt2")
    check(mnt2)


def test_read_only_mount(tmp_path: Path, volume, mounter):
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "rw")
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"read me")
    mounter.umount(mnt)
    stores_before = [snapshot_files(s) for s in vol.stores]
    ro = mounter.mount(vol, tmp_path / "ro", "--read-only")
    assert (ro / "d" / "f").read_bytes() == b"read me"
    expect_errno(errno.EROFS, os.open, ro / "d" / "f", os.O_WRONLY)
    expect_errno(errno.EROFS, os.open, ro / "d" / "new", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EROFS, os.mkdir, ro / "e")
    expect_errno(errno.EROFS, os.unlink, ro / "d" / "f")
    expect_errno(errno.EROFS, os.rename, ro / "d" / "f", ro / "d" / "g")
    expect_errno(errno.EROFS, os.chmod, ro / "d" / "f", 0o600)
    expect_errno(errno.EROFS, os.truncate, ro / "d" / "f", 0)
    expect_errno(errno.EROFS, os.setxattr, ro / "d" / "f", "user.a", b"b")
    expect_errno(errno.EROFS, os.symlink, "x", ro / "d" / "l")
    mounter.umount(ro)
    assert [snapshot_files(s) for s in vol.stores] == stores_before, "a read-only mount wrote"


def test_status_json(tmp_path: Path, volume, mounter):
    vol = volume()
    st = status_json(vol.path)
    for key in ("volume_id", "data_shares", "parity_shares", "chunk_size", "stores", "files",
                "chunks", "logical_bytes", "stored_bytes"):
        assert key in st, f"status --json lacks {key!r}: {st}"
    assert (st["data_shares"], st["parity_shares"]) == (3, 2)
    assert isinstance(st["chunk_size"], int) and st["chunk_size"] > 0
    assert len(st["stores"]) == 5
    for i, s in enumerate(st["stores"]):
        assert str(vol.stores[i]) in s["url"], (s, vol.stores[i])
        assert isinstance(s["state"], str) and s["state"]
    assert st["files"] == 0 and st["logical_bytes"] == 0
    sizes = [0, 100_000, 2 * st["chunk_size"] + 5]
    mnt = mounter.mount(vol, tmp_path / "mnt")
    for i, size in enumerate(sizes):
        write_file(mnt / f"file{i}", rand_bytes(size, f"status{i}"))
    st_mounted = status_json(mnt)
    assert st_mounted["volume_id"] == st["volume_id"]
    mounter.umount(mnt)
    st = status_json(vol.path)
    assert st["files"] == 3
    assert st["logical_bytes"] == sum(sizes)
    assert st["chunks"] >= 1 + 3  # one for the small file, three for the big one
    assert st["stored_bytes"] >= sum(sizes) * 5 // 3
    res = assert_ok(run_fusefs("status", vol.path))
    assert res.stdout.strip()


def test_init_key_file_created_0600_and_reused(tmp_path: Path, volume, mounter):
    vol = volume()
    st = os.stat(vol.key)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size >= 32
    key_bytes = vol.key.read_bytes()
    vol2 = volume(key=vol.key)  # an existing key file is used, not replaced
    assert vol2.key.read_bytes() == key_bytes
    mnt = mounter.mount(vol2, tmp_path / "mnt")
    (mnt / "f").write_bytes(b"ok")
    mounter.umount(mnt)
    assert status_json(vol2.path)["volume_id"] != status_json(vol.path)["volume_id"]


def test_init_bare_store_paths(tmp_path: Path, mounter):
    stores = [tmp_path / f"bare{i}" for i in range(5)]
    for s in stores:
        s.mkdir()
    args = ["init", tmp_path / "vol", "--key-file", tmp_path / "k"]
    for s in stores:
        args += ["--store", s]
    assert_ok(run_fusefs(*args))
    vol = Volume(tmp_path / "vol", stores, tmp_path / "k", 3, 2)
    st = status_json(vol.path)
    assert len(st["stores"]) == 5
    mnt = mounter.mount(vol, tmp_path / "mnt")
    data = rand_bytes(MiB + 3, "bare")
    write_file(mnt / "f", data)
    mounter.umount(mnt)
    assert all(vol.objects(i) for i in range(5)), "every store should hold a share"
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert (mnt / "f").read_bytes() == data


def test_modifications_persist_across_remounts(tmp_path: Path, volume, mounter):
    vol = volume()
    cs = int(status_json(vol.path)["chunk_size"])
    mnt = mounter.mount(vol, tmp_path / "m1")
    files = {
        "a": rand_bytes(3 * cs + 11, "m-a"),
        "b": rand_bytes(2 * cs, "m-b"),
        "c": rand_bytes(5000, "m-c"),
        "d/e": rand_bytes(cs + 1, "m-e"),
        "gone": rand_bytes(4096, "m-gone"),
    }
    (mnt / "d").mkdir()
    for rel, data in files.items():
        write_file(mnt / rel, data)
    mounter.umount(mnt)

    mnt = mounter.mount(vol, tmp_path / "m2")
    patch = rand_bytes(300, "patch")
    with open(mnt / "a", "r+b") as f:  # across a chunk boundary of a stored file
        f.seek(cs - 150)
        f.write(patch)
    a = bytearray(files["a"])
    a[cs - 150:cs + 150] = patch
    files["a"] = bytes(a)
    os.truncate(mnt / "b", cs + 7)
    files["b"] = files["b"][:cs + 7]
    with open(mnt / "c", "ab") as f:
        f.write(b"appended")
    files["c"] += b"appended"
    os.rename(mnt / "d" / "e", mnt / "e-moved")
    files["e-moved"] = files.pop("d/e")
    os.unlink(mnt / "gone")
    del files["gone"]
    mounter.umount(mnt)

    mnt = mounter.mount(vol, tmp_path / "m3")
    assert_tree(mnt, files)
    assert os.listdir(mnt / "d") == []
    mounter.umount(mnt)


def test_space_is_freed_after_overwrite_and_unlink(tmp_path: Path, volume, mounter):
    vol = volume()
    cs = int(status_json(vol.path)["chunk_size"])
    mnt = mounter.mount(vol, tmp_path / "m")
    mounter.umount(mnt)

    def file_objects() -> int:  # bytes of share objects, not of metadata snapshots
        snap = {name for _, name in snapshot_shares(vol)}
        return sum(p.stat().st_size for i in range(5) for p in vol.objects(i)
                   if p.name not in snap)

    baseline = file_objects()

    mnt = mounter.mount(vol, tmp_path / "m")
    for seed in ("v1", "v2", "v3"):  # three versions of the same file
        write_file(mnt / "f", rand_bytes(3 * cs, seed))
    write_file(mnt / "victim", rand_bytes(cs, "victim"))
    write_file(mnt / "replacement", rand_bytes(1000, "replacement"))
    os.rename(mnt / "replacement", mnt / "victim")
    mounter.umount(mnt)
    st = status_json(vol.path)
    assert st["logical_bytes"] == 3 * cs + 1000
    one_version = (3 * cs + 1000) * 5 // 3
    assert st["stored_bytes"] < 2 * one_version, f"old versions not deleted: {st}"
    on_disk = file_objects() - baseline
    assert on_disk < 2 * one_version, f"stores hold {on_disk} bytes for {one_version}"

    mnt = mounter.mount(vol, tmp_path / "m")
    fd = os.open(mnt / "f", os.O_RDWR)  # unlinked while open: freed at the last close
    os.unlink(mnt / "f")
    os.pwrite(fd, b"x" * 1000, 0)
    os.close(fd)
    os.unlink(mnt / "victim")
    mounter.umount(mnt)
    st = status_json(vol.path)
    assert (st["files"], st["chunks"], st["logical_bytes"], st["stored_bytes"]) == (0, 0, 0, 0), st
    after = file_objects()
    assert after <= baseline + 64 * KiB, f"stores still hold {after - baseline} bytes"


def test_foreground_mount(tmp_path: Path, volume, mounter):
    vol = volume()
    mnt = tmp_path / "fg"
    mnt.mkdir()
    with open(tmp_path / "fg.out", "wb") as out, open(tmp_path / "fg.err", "wb") as err:
        proc = subprocess.Popen(
            [*FUSEFS, "mount", str(vol.path), str(mnt), "--key-file", str(vol.key),
             "--foreground"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd="/",
        )
    try:
        up = wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, 30)
        assert up and is_mounted(mnt), f"foreground mount did not come up (exit {proc.poll()})"
        mounter.adopt(vol, mnt)
        (mnt / "f").write_bytes(b"foreground")
        assert (mnt / "f").read_bytes() == b"foreground"
        assert proc.poll() is None, "--foreground must not return while mounted"
        mounter.umount(mnt)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (vol.path / "fusefs.log").stat().st_size > 0, "no log in VOLUME/fusefs.log"
    assert "Traceback" not in (tmp_path / "fg.err").read_text()


def test_allow_other_respects_permissions(volume, mounter):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    vol = volume()
    top = Path(tempfile.mkdtemp(prefix=ALLOW_OTHER_PREFIX))  # reachable by others
    try:
        os.chmod(top, 0o755)
        mnt = mounter.mount(vol, top / "mnt", "--allow-other")
        os.chmod(mnt, 0o755)
        (mnt / "public").write_bytes(b"for everyone")
        os.chmod(mnt / "public", 0o644)
        (mnt / "private").write_bytes(b"root only")
        os.chmod(mnt / "private", 0o600)

        def as_nobody(script: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["/bin/sh", "-c", script, "sh", str(mnt)], user=65534, group=65534,
                extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/",
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            )

        r = as_nobody('ls "$1"')
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["private", "public"]
        r = as_nobody('cat "$1/public"')
        assert (r.returncode, r.stdout) == (0, "for everyone"), r.stderr
        for script in ('cat "$1/private"', 'echo x >> "$1/public"', ': > "$1/new-by-nobody"'):
            r = as_nobody(script)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (script, r.stderr)
        assert (mnt / "public").read_bytes() == b"for everyone"
        assert not (mnt / "new-by-nobody").exists()
        mounter.umount(mnt)
    finally:
        mounter.cleanup()
        if not is_mounted(top / "mnt"):
            shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a bdi's readahead needs root")
def test_mount_raises_readahead_after_init(shared_fs):
    """Sequential readers get 1 MiB FUSE reads: the kernel's INIT reply would cap readahead at
    128 KiB if it were raised before the daemon answered INIT."""
    if shared_fs.volume is None:
        pytest.skip("reference run")
    minor, _ = mount_entry(shared_fs.root)
    kib = int(Path(f"/sys/class/bdi/0:{minor}/read_ahead_kb").read_text())
    assert kib == 4096


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a bdi's readahead needs root")
def test_readahead_is_raised_on_a_mountpoint_with_a_space(volume, mounted, tmp_path):
    """The mount table escapes a space as \\040: the daemon must still find its own mount."""
    mnt = mounted(volume(), tmp_path / "with space")
    minor, _ = mount_entry(mnt)
    assert int(Path(f"/sys/class/bdi/0:{minor}/read_ahead_kb").read_text()) == 4096
