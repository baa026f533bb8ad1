"""Dataset mode (issue 14): a read-only mount lets the kernel cache names, attributes and
pages for long and stop sending requests that carry nothing (FLUSH; OPEN and RELEASE in
no-open mode, with the patched pyfuse3); the bytes stay right, also with a damaged store,
and a follower still sees every change of the writer at once (invalidation, not timeouts).

The request counts come from the daemon's own metrics (`--metrics`), scraped over HTTP.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import shutil
from pathlib import Path

import pyfuse3
import pytest
from helpers import (
    MiB,
    Mounter,
    Volume,
    assert_ok,
    drop_cache,
    rand_bytes,
    run_fusefs,
    wait_until,
)
from test_mount_metrics import metrics_url, scrape, total

from fusefs import kernelcache
from fusefs.fuse_ops import READ_BY_INODE

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

PATCHES = Path(__file__).resolve().parent.parent / "patches"


def requests(url: str) -> dict[str, float]:
    s = scrape(url)
    return {op: total(s, "fusefs_fuse_requests_total", op=op)
            for op in ("lookup", "open", "read", "flush", "release", "getattr")}


def make_tree(vol: Volume, mounter: Mounter, mnt: Path, n: int = 40) -> dict[str, bytes]:
    """Small files (one short chunk each) and one of several chunks, written and unmounted."""
    mounter.mount(vol, mnt)
    files = {f"d{i % 4}/img{i:03d}.jpg": rand_bytes(20_000 + 997 * i, f"ds{i}")
             for i in range(n)}
    files["big.bin"] = rand_bytes(3 * MiB + 5, "big")
    for rel, data in files.items():
        (mnt / rel).parent.mkdir(exist_ok=True)
        (mnt / rel).write_bytes(data)
    mounter.umount(mnt)
    return files


def read_all(mnt: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        with open(mnt / rel, "rb") as f:
            got = f.read()
        assert got == data, f"wrong bytes from {rel}"


def mount_log(vol: Volume) -> str:
    return (vol.path / "fusefs.log").read_text()


@pytest.mark.parametrize("stock", [False, True], ids=["as-built", "stock-fallback"])
def test_dataset_mode_reads_right_with_few_requests(tmp_path: Path, volume, mounter: Mounter,
                                                    monkeypatch, stock: bool) -> None:
    """As built (no-open mode with the patched pyfuse3), and as with the stock pyfuse3
    (FUSEFS_NO_OPEN=0 takes the same path as a build without `read_noopen`)."""
    vol = volume(chunk_size=MiB)
    mnt = tmp_path / "mnt"
    files = make_tree(vol, mounter, mnt)
    if stock:
        monkeypatch.setenv("FUSEFS_NO_OPEN", "0")
    mounter.mount(vol, mnt, "--read-only", "--metrics", "127.0.0.1:0")
    url = metrics_url(vol)
    no_open = READ_BY_INODE and not stock
    assert ("kernel cache: dataset, no-open" if no_open else "kernel cache: dataset, no xattrs (") \
        in mount_log(vol)

    read_all(mnt, files)  # epoch 1: from the stores
    first = requests(url)
    read_all(mnt, files)  # epoch 2: the kernel has names, attributes and pages
    second = requests(url)
    n = len(files)
    assert first["flush"] <= 1, first  # ENOSYS once, then never again
    if no_open:
        assert first["open"] <= 1 and first["release"] == 0, first
        assert second == first, f"epoch 2 asked the daemon: {first} -> {second}"
    else:
        assert first["open"] == n, first
        assert second["open"] == 2 * n and second["read"] == first["read"], second
    assert second["lookup"] == first["lookup"], "names were looked up again"

    # a seek into the middle of a multi-chunk file, and an mmap of it (numpy.memmap),
    # read through the same path; the page cache was dropped: the daemon serves them
    drop_cache(mnt / "big.bin")
    with open(mnt / "big.bin", "rb") as f:
        f.seek(2 * MiB + 17)
        assert f.read(1000) == files["big.bin"][2 * MiB + 17 : 2 * MiB + 1017]
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert m[MiB - 5 : MiB + 4096] == files["big.bin"][MiB - 5 : MiB + 4096]
            assert hashlib.sha256(m).digest() == hashlib.sha256(files["big.bin"]).digest()
    mounter.umount(mnt)


def test_dataset_mode_rebuilds_from_a_damaged_store(tmp_path: Path, volume,
                                                    mounter: Mounter) -> None:
    """Reads by inode (no open) take the one read algorithm: a store emptied and another's
    shares flipped still give the right bytes (K=3, M=2)."""
    vol = volume(chunk_size=MiB)
    mnt = tmp_path / "mnt"
    files = make_tree(vol, mounter, mnt, n=12)
    shutil.rmtree(vol.stores[0] / "objects")
    (vol.stores[0] / "objects").mkdir()
    for p in (vol.stores[2] / "objects").rglob("*"):
        if p.is_file():
            data = bytearray(p.read_bytes())
            data[len(data) // 3] ^= 0x5A
            p.write_bytes(bytes(data))
    mounter.mount(vol, mnt, "--read-only")
    read_all(mnt, files)
    mounter.umount(mnt)
    events = (vol.path / "events.jsonl").read_text()
    assert "checksum" in events or "missing" in events, events[-2000:]


def test_no_dataset_answers_every_request(tmp_path: Path, volume, mounter: Mounter) -> None:
    vol = volume()
    mnt = tmp_path / "mnt"
    files = make_tree(vol, mounter, mnt, n=8)
    mounter.mount(vol, mnt, "--read-only", "--no-dataset", "--metrics", "127.0.0.1:0")
    assert "kernel cache: default" in mount_log(vol)
    url = metrics_url(vol)
    read_all(mnt, files)
    got = requests(url)
    assert got["open"] == got["release"] == got["flush"] == len(files), got
    mounter.umount(mnt)


def test_a_writable_mount_never_uses_dataset_mode(tmp_path: Path, volume,
                                                  mounter: Mounter) -> None:
    """Another process's write through the same mount is seen at once, bytes and size."""
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert "kernel cache: default" in mount_log(vol)
    (mnt / "f").write_bytes(b"one")
    assert (mnt / "f").read_bytes() == b"one"
    (mnt / "f").write_bytes(b"twenty-two bytes long!")
    assert (mnt / "f").read_bytes() == b"twenty-two bytes long!"
    mounter.umount(mnt)


def test_a_follower_in_dataset_mode_sees_a_rewritten_file_at_once(
        volume, mounter: Mounter, tmp_path: Path) -> None:
    """Long kernel caches on a follower: a file it has read (pages and attributes cached)
    and that the writer then rewrites reads as the new version once the follower switched."""
    from test_mount_snapshots import as_host, recover

    vol = volume(snapshot_interval=1, gc_grace=30)
    wmnt = mounter.mount(vol, tmp_path / "writer")
    old = rand_bytes(150_000, "old")
    (wmnt / "f.bin").write_bytes(old)
    assert_ok(run_fusefs("snapshot", wmnt))
    assert_ok(recover(vol, tmp_path / "follower", "--follower"))
    fol = as_host(vol, tmp_path / "follower")
    rmnt = mounter.mount(fol, tmp_path / "reader", "--read-only", "--follow")
    assert "kernel cache: dataset (" in mount_log(fol)  # never no-open: opens pin versions
    assert (rmnt / "f.bin").read_bytes() == old  # now cached by the follower's kernel

    new = rand_bytes(90_000, "new")
    (wmnt / "f.bin").write_bytes(new)
    assert wait_until(lambda: os.stat(rmnt / "f.bin").st_size == len(new), 15)
    assert (rmnt / "f.bin").read_bytes() == new
    mounter.umount(rmnt)
    mounter.umount(wmnt)


def test_the_patched_pyfuse3_is_in_use() -> None:
    """scripts/_install.sh rebuilds pyfuse3 with patches/pyfuse3-VERSION-*.patch when one
    exists for the installed version; without it no-open mode is off (the fallback)."""
    patched = hasattr(pyfuse3.Operations, "read_noopen")
    assert patched == READ_BY_INODE
    have_patch = any(PATCHES.glob(f"pyfuse3-{pyfuse3.__version__}-*.patch"))
    if not have_patch:
        pytest.skip(f"no patch for pyfuse3 {pyfuse3.__version__}: the stock build is used")
    if os.environ.get("FUSEFS_STOCK_PYFUSE3") == "1":
        pytest.skip("FUSEFS_STOCK_PYFUSE3=1: the stock build on purpose")
    assert patched, ("the stock pyfuse3 is installed although patches/ has one for "
                     f"{pyfuse3.__version__}: run scripts/_install.sh")


def test_kernel_cache_policy() -> None:
    """Which mount gets which levers, and the stock-pyfuse3 fallback."""
    c = kernelcache.choose
    assert c(read_only=False, follower=False, dataset=True, read_by_inode=True) \
        is kernelcache.DEFAULT
    assert c(read_only=True, follower=False, dataset=False, read_by_inode=True) \
        is kernelcache.DEFAULT
    ro = c(read_only=True, follower=False, dataset=True, read_by_inode=True)
    assert not ro.open and not ro.flush and ro.entry_timeout == kernelcache.LONG_TIMEOUT
    stock = c(read_only=True, follower=False, dataset=True, read_by_inode=False)
    assert stock.open and not stock.flush and stock.attr_timeout == kernelcache.LONG_TIMEOUT
    follower = c(read_only=True, follower=True, dataset=True, read_by_inode=True)
    assert follower.open and not follower.flush


def test_a_read_only_mount_of_a_volume_without_xattrs_stops_the_probes(
        tmp_path: Path, volume, mounter: Mounter) -> None:
    """`ls -l` asks for two attributes of every entry (security.selinux, system.nfs4_acl;
    POSIX ACLs the kernel answers itself): with none in the volume, the first
    GETXATTR is answered ENOSYS and the kernel answers the rest (EOPNOTSUPP); a volume with
    one attribute keeps them, and so does a writable mount (ENODATA)."""
    vol = volume(chunk_size=MiB)
    mnt = tmp_path / "mnt"
    files = make_tree(vol, mounter, mnt, n=8)
    mounter.mount(vol, mnt, "--read-only", "--metrics", "127.0.0.1:0")
    assert ", no xattrs" in mount_log(vol)
    for rel in files:
        for name in ("security.selinux", "system.nfs4_acl", "user.x"):
            with pytest.raises(OSError) as err:
                os.getxattr(mnt / rel, name)
            assert err.value.errno == errno.EOPNOTSUPP, (rel, name)
        with pytest.raises(OSError) as err:
            os.listxattr(mnt / rel)
        assert err.value.errno == errno.EOPNOTSUPP
    s = scrape(metrics_url(vol))
    assert total(s, "fusefs_fuse_requests_total", op="getxattr") <= 1
    assert total(s, "fusefs_fuse_requests_total", op="listxattr") <= 1
    mounter.umount(mnt)

    mounter.mount(vol, mnt)  # writable: POSIX answers, and an attribute is set
    with pytest.raises(OSError) as err:
        os.getxattr(mnt / "big.bin", "user.x")
    assert err.value.errno == errno.ENODATA
    os.setxattr(mnt / "big.bin", "user.x", b"kept")
    mounter.umount(mnt)
    mounter.mount(vol, mnt, "--read-only")
    assert ", no xattrs" not in mount_log(vol).rsplit("mounted volume", 1)[-1]
    assert os.getxattr(mnt / "big.bin", "user.x") == b"kept"
    with pytest.raises(OSError) as err:
        os.getxattr(mnt / "d0/img000.jpg", "user.x")
    assert err.value.errno == errno.ENODATA
    assert read_all(mnt, files) is None
    mounter.umount(mnt)
