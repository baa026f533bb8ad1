"""The reference decoder (tests/refdecoder.py), written from docs/format.md alone, reads every
golden volume and a volume made here by the real CLI bit-identically, healthy and with M stores
emptied, and refuses (one line, no wrong bytes) a chunk with fewer than K good shares.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import refdecoder as rd
import xxhash
import zfec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from helpers import KiB, Mounter, Volume, assert_ok, rand_bytes, run_fusefs, tree_layout, write_tree

DECODER = Path(rd.__file__)
GOLDEN = Path(__file__).parent / "golden"
FORMATS = sorted(p.name for p in GOLDEN.glob("format-*"))
K, M, N = 3, 2, 5


def run_decoder(*args: object) -> subprocess.CompletedProcess:
    """`python refdecoder.py ARGS` in a process where any import of fusefs fails."""
    guard = ("import runpy, sys; sys.modules['fusefs'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-c", guard, str(DECODER), *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd="/")


def store_args(stores: list[Path]) -> list[str]:
    return [a for s in stores for a in ("--store", str(s))]


def fresh_volume(tmp_path: Path, *extra: object) -> tuple[list[Path], Volume]:
    """A new K/M volume over N store directories, with the test's chunk and segment size."""
    stores = [tmp_path / "stores" / f"s{i}" for i in range(N)]
    for s in stores:
        s.mkdir(parents=True)
    vol = Volume(tmp_path / "vol", stores, tmp_path / "key", K, M)
    assert_ok(run_fusefs("init", vol.path, *store_args(stores), "--data-shares", K,
                         "--parity-shares", M, "--chunk-size", CS, "--segment-size", SEG,
                         "--key-file", vol.key, *extra))
    return stores, vol


def one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), res.stderr
    return lines[0]


def volume_files(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# --------------------------------------------------------------------------------------------
# The decoder itself and the document's worked example
# --------------------------------------------------------------------------------------------


def test_the_decoder_imports_nothing_from_fusefs() -> None:
    tree = ast.parse(DECODER.read_text())
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(n.split(".")[0] == "fusefs" for n in names), ast.unparse(node)


@pytest.mark.parametrize("fmt", [2, 3])
def test_the_worked_example_of_the_document(fmt: int, tmp_path: Path) -> None:
    master, vid = bytes(range(32)), bytes.fromhex("00112233445566778899aabbccddeeff")
    fid = b"\x0f" * 16
    oid = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
    stores = [tmp_path / f"s{i}" for i in range(N)]
    vol = rd.Volume(tmp_path, vid, fmt, K, M, 65536, 4096, list(stores),
                    db=None, master=master)  # type: ignore[arg-type]
    assert rd.hkdf(master, vid, b"fusefs key check").hex() == (
        "a41267e9c8e1bf3ea64ff90ed332950a8079772ecbc01e7d7973f69531e14d56")
    assert vol.file_key(fid).hex() == (
        "e147a5312ac321356456ceed9c36c7bea76aeacf527f11808360b4e3f6fed798")
    assert vol.names_key.hex() == (
        "4642037bfaf88b939384bc827a9ba5828af75fc68d59321cd3cdfec9635e55aa")
    marker_key = rd.hkdf(master, vid, b"fusefs store marker")
    mac = hmac.new(marker_key, b"fusefs-store\0" + vid + (0).to_bytes(4, "big"), "sha256")
    assert mac.hexdigest() == "7fbfdec86ea0dfc84c03cad3f576ce638fc8dabda75047547c01869444c18669"
    if fmt == 3:
        assert vol.chunk_key(fid, oid).hex() == (
            "e5f8c17feadc2b7f1d8e02ca1c76c45d142a08ee04f2f9c81c24e018f414c0a4")
    # Seal as the document says, then let the decoder read it back.
    nonce = (oid[:8] if fmt == 2 else bytes(8)) + bytes(4)
    ad = vid + fid + (0).to_bytes(8, "big") + (1).to_bytes(8, "big") + bytes(4)
    ct = AESGCM(vol.chunk_key(fid, oid)).encrypt(nonce, b"hello, world", ad)
    padded = ct + bytes(30 - len(ct))
    assert padded.hex() == {
        2: "a547815bded44bb43dc225a50a3d436c1f06a60b8927fdefb7078e2e0000",
        3: "e55f4fb3126de5a368fa12a546ed9eaa25291da6f83ea4f9cac975a20000"}[fmt]
    data = [padded[i * 10 : (i + 1) * 10] for i in range(K)]
    shares = data + zfec.Encoder(K, K + M).encode(data, [3, 4])
    placement = bytes([1, 2, 3, 4, 0])
    digests = b"".join(xxhash.xxh3_128_digest(s) for s in shares)
    if fmt == 3:
        table = [("e55f4fb3126de5a368fa", "36eded5c4da59c566a6223692b794dd3",
                  "3db42e39088327d0721c79a675bb8aec"),
                 ("12a546ed9eaa25291da6", "a83d1fe29fe31cf9ebd024b7e9e93f1b",
                  "0d510c261558db787db2deff000cdc8f"),
                 ("f83ea4f9cac975a20000", "d43bc657c6fa7e20987069135f0a975d",
                  "d48217356a3b7acf564c90e99d1831e0"),
                 ("408747d8ece4ec818a06", "115815a510342625f26e885e583ae447",
                  "05d28f8ae1a664db3d9a295b919d716d"),
                 ("f49a74bea2352767794b", "c130daed355d5e09d392c87fe7b27e43",
                  "1a12d1c967df5b2f90b097024fd5b90b")]
        got = [(s.hex(), digests[16 * i : 16 * i + 16].hex(),
                rd.object_name(vol.names_key, oid, i)) for i, s in enumerate(shares)]
        assert got == table
    paths = []
    for i, s in enumerate(shares):
        p = rd.share_paths(stores[placement[i]], rd.object_name(vol.names_key, oid, i))[0]
        p.parent.mkdir(parents=True)
        p.write_bytes(s)
        paths.append(p)
    chunk = rd.Chunk(fid, 0, 1, oid, 12, placement, digests)
    assert rd.read_chunk(vol, vol.names_key, chunk) == b"hello, world"
    paths[0].unlink()
    paths[2].write_bytes(b"x" * 10)  # fails its checksum
    assert rd.read_chunk(vol, vol.names_key, chunk) == b"hello, world"  # from shares 1, 3, 4
    paths[3].unlink()
    with pytest.raises(rd.Unrecoverable, match="2 good shares, 3 needed"):
        rd.read_chunk(vol, vol.names_key, chunk)


# --------------------------------------------------------------------------------------------
# Golden volumes
# --------------------------------------------------------------------------------------------


def copy_golden(name: str, dest: Path) -> tuple[Path, list[Path], Path, dict]:
    src = GOLDEN / name
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    stores = [dest / "stores" / f"s{i}" for i in range(len(manifest["stores_when_made"]))]
    return dest / "volume", stores, dest / "key", manifest


def assert_manifest(out: Path, manifest: dict) -> None:
    for rel, want in manifest["files"].items():
        data = (out / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (want["size"],
                                                                  want["sha256"]), rel
    for rel, target in manifest["symlinks"].items():
        assert os.readlink(out / rel) == target, rel
    for rel in manifest["directories"]:
        assert (out / rel).is_dir() and not (out / rel).is_symlink(), rel
    for a, b in manifest["hardlinks"]:
        assert os.stat(out / a).st_ino == os.stat(out / b).st_ino, (a, b)
    for dirpath, dirs, files in os.walk(out):
        for f in files + dirs:
            rel = os.path.relpath(os.path.join(dirpath, f), out)
            assert rel in manifest["files"] or rel in manifest["symlinks"] or (
                rel in manifest["directories"]), f"unexpected {rel}"


@pytest.mark.parametrize("name", FORMATS)
def test_a_golden_volume_decodes_bit_identically(name: str, tmp_path: Path) -> None:
    vol, stores, key, manifest = copy_golden(name, tmp_path / "golden")
    before = volume_files(vol)
    res = run_decoder("list", vol)
    assert res.returncode == 0, res.stderr
    listed = {line.split("\t", 4)[4].split(" -> ")[0] for line in res.stdout.splitlines()}
    assert listed == set(manifest["files"]) | set(manifest["symlinks"]) | set(
        manifest["directories"])
    res = run_decoder("extract", vol, tmp_path / "out", "--key-file", key, *store_args(stores))
    assert (res.returncode, res.stderr) == (0, "")
    assert_manifest(tmp_path / "out", manifest)
    for rel, attrs in manifest["xattrs"].items():
        for attr, value in attrs.items():
            assert os.getxattr(tmp_path / "out" / rel, attr) == value.encode()
    assert volume_files(vol) == before, "the decoder left files in the volume directory"


@pytest.mark.parametrize("lost", [(0, 1), (1, 3), (2, 4), (3, 4)])
@pytest.mark.parametrize("name", FORMATS)
def test_a_golden_volume_decodes_with_m_stores_emptied(name: str, lost: tuple[int, int],
                                                        tmp_path: Path) -> None:
    vol, stores, key, manifest = copy_golden(name, tmp_path / "golden")
    for i in lost:
        shutil.rmtree(stores[i] / "objects")
    out = tmp_path / "out"
    assert rd.main(["extract", str(vol), str(out), "--key-file", str(key),
                    *store_args(stores)]) == 0
    assert_manifest(out, manifest)


def test_a_store_copied_from_s3_without_the_fan_out_is_read(tmp_path: Path) -> None:
    """An S3 prefix synced to a directory: objects/<name>, no objects/<d>/ level."""
    vol, stores, key, manifest = copy_golden("format-3", tmp_path / "golden")
    for obj in list((stores[2] / "objects").glob("*/*")):
        obj.rename(stores[2] / "objects" / obj.name)
    for i in (0, 4):
        shutil.rmtree(stores[i] / "objects")
    out = tmp_path / "out"
    assert rd.main(["extract", str(vol), str(out), "--key-file", str(key),
                    *store_args(stores)]) == 0
    assert_manifest(out, manifest)


def forge(vol: Path, stores: list[Path], key: Path, path: bytes, idx: int, share: int) -> None:
    """Replace a share of chunk IDX of PATH with garbage AND record the garbage's checksum."""
    v = rd.Volume.open(vol, key, [str(s) for s in stores])
    try:
        entry = next(e for e in rd.walk(v) if e.path == path)
        chunk = next(c for c in rd.chunks_of(v, entry) if c.idx == idx)
    finally:
        v.db.close()
    obj = rd.share_paths(stores[chunk.placement[share]],
                         rd.object_name(v.names_key, chunk.oid, share))[0]
    junk = rand_bytes(obj.stat().st_size, f"forged {share}")
    obj.write_bytes(junk)
    digests = bytearray(chunk.digests)
    digests[16 * share : 16 * share + 16] = xxhash.xxh3_128_digest(junk)
    db = sqlite3.connect(vol / "meta.db")
    with db:
        db.execute("UPDATE chunks SET digests = ? WHERE inode = ? AND idx = ?",
                   (bytes(digests), entry.inode, idx))
    db.close()


def test_forged_checksums_are_caught_by_authentication(tmp_path: Path) -> None:
    vol, stores, key, manifest = copy_golden("format-3", tmp_path / "golden")
    forge(vol, stores, key, b"sizes/three-chunks+7", 1, 0)
    forge(vol, stores, key, b"sizes/three-chunks+7", 1, 4)
    res = run_decoder("extract", vol, tmp_path / "out", "--key-file", key, *store_args(stores))
    assert (res.returncode, res.stderr) == (0, "")
    assert_manifest(tmp_path / "out", manifest)
    forge(vol, stores, key, b"sizes/three-chunks+7", 1, 2)  # 2 honest shares left
    res = run_decoder("extract", vol, tmp_path / "out2", "--key-file", key, *store_args(stores))
    line = one_line(res)
    assert "sizes/three-chunks+7: unrecoverable: chunk 1" in line and "authentication" in line
    assert not (tmp_path / "out2" / "sizes" / "three-chunks+7").exists()


def test_commits_still_in_the_wal_are_seen_through_a_copy(tmp_path: Path) -> None:
    """A host that stopped without a checkpoint: meta.db plus a non-empty meta.db-wal."""
    vol, stores, key, manifest = copy_golden("format-2", tmp_path / "golden")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(vol / "fusefs.toml", crashed)
    db = sqlite3.connect(vol / "meta.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        with db:
            db.execute("UPDATE dentries SET name = ? WHERE name = ?", (b"moved", b"sparse"))
        for f in ("meta.db", "meta.db-wal"):
            shutil.copy(vol / f, crashed)
    finally:
        db.close()
    assert (crashed / "meta.db-wal").stat().st_size > 0
    before = volume_files(crashed)
    res = run_decoder("extract", crashed, tmp_path / "out", "--key-file", key,
                      *store_args(stores))
    assert (res.returncode, res.stderr) == (0, "")
    data = (tmp_path / "out" / "moved").read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["files"]["sparse"]["sha256"]
    assert not (tmp_path / "out" / "sparse").exists()
    assert volume_files(crashed) == before


def test_a_wrong_key_is_one_line(tmp_path: Path) -> None:
    vol, stores, _key, _ = copy_golden("format-3", tmp_path / "golden")
    (tmp_path / "other.key").write_text("ab" * 32 + "\n")
    res = run_decoder("extract", vol, tmp_path / "out", "--key-file", tmp_path / "other.key",
                      *store_args(stores))
    assert "wrong key" in one_line(res)


# --------------------------------------------------------------------------------------------
# A volume made here by the real CLI
# --------------------------------------------------------------------------------------------

CS, SEG = 64 * KiB, 4 * KiB


def make_tree(mnt: Path) -> dict[str, bytes]:
    sizes = [0, 1, SEG - 1, SEG, SEG + 1, CS - 1, CS, CS + 1, 3 * CS + 17, 5 * CS + SEG + 3]
    files = write_tree(mnt, tree_layout(sizes), seed="refdecoder")
    with open(mnt / "sparse", "wb") as f:  # a short chunk 0, a hole, a short chunk 2, a hole
        f.write(b"head")
        f.seek(2 * CS + 100)
        f.write(rand_bytes(5000, "sparse"))
        f.truncate(5 * CS + 7)
    files["sparse"] = (b"head".ljust(2 * CS + 100, b"\0") + rand_bytes(5000, "sparse")).ljust(
        5 * CS + 7, b"\0")
    data = bytearray(rand_bytes(3 * CS + 5, "overwritten"))
    (mnt / "overwritten").write_bytes(data)
    with open(mnt / "overwritten", "r+b") as f:
        f.seek(CS - 10)
        f.write(rand_bytes(4000, "patch"))
    data[CS - 10 : CS + 3990] = rand_bytes(4000, "patch")
    files["overwritten"] = bytes(data)
    (mnt / "shrunk").write_bytes(rand_bytes(2 * CS + 50, "shrunk"))
    os.truncate(mnt / "shrunk", CS + 30)
    files["shrunk"] = rand_bytes(2 * CS + 50, "shrunk")[: CS + 30]
    for n in range(3):
        with open(mnt / "appended", "ab") as f:
            f.write(rand_bytes(3000 + n, f"append {n}"))
    files["appended"] = b"".join(rand_bytes(3000 + n, f"append {n}") for n in range(3))
    os.link(mnt / "appended", mnt / "a" / "hardlink")
    files["a/hardlink"] = files["appended"]
    os.symlink("../appended", mnt / "a" / "symlink")
    os.mkfifo(mnt / "d" / "fifo")
    (mnt / "d" / "e f" / "ünï\ncode").write_bytes(b"odd name")
    files["d/e f/ünï\ncode"] = b"odd name"
    return files


def assert_extracted(out: Path, files: dict[str, bytes]) -> None:
    found = {os.path.relpath(os.path.join(d, f), out)
             for d, _, fs in os.walk(out) for f in fs
             if Path(d, f).is_file() and not Path(d, f).is_symlink()}
    assert found == set(files)
    assert (out / "d" / "fifo").is_fifo()
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data, rel
    assert os.readlink(out / "a" / "symlink") == "../appended"
    assert os.stat(out / "appended").st_ino == os.stat(out / "a" / "hardlink").st_ino
    assert (out / "empty-dir").is_dir()


@pytest.mark.mount
@pytest.mark.timeout(180)
def test_a_fresh_volume_decodes_and_refuses_too_few_shares(mounter: Mounter,
                                                           tmp_path: Path) -> None:
    stores, vol = fresh_volume(tmp_path)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = make_tree(mnt)
    mounter.umount(mnt)
    before = volume_files(vol.path)
    assert "meta.db-wal" not in before, "a cleanly unmounted volume left its WAL behind"

    res = run_decoder("extract", vol.path, tmp_path / "out", "--key-file", vol.key)
    assert (res.returncode, res.stderr) == (0, "")
    assert_extracted(tmp_path / "out", files)
    assert volume_files(vol.path) == before, "the decoder left files in the volume directory"

    moved = [tmp_path / "moved" / f"s{i}" for i in range(N)]  # the stores moved
    for s, d in zip(stores, moved, strict=True):
        shutil.move(s, d)
    for i in (0, 1):
        shutil.rmtree(moved[i] / "objects")
    res = run_decoder("extract", vol.path, tmp_path / "out2", "--key-file", vol.key,
                      *store_args(moved))
    assert (res.returncode, res.stderr) == (0, "")
    assert_extracted(tmp_path / "out2", files)

    # A third store's share of one chunk goes bad: that chunk has 2 good shares of 3 needed.
    name = next(p for p in files if p.endswith(f"-{3 * CS + 17}.bin"))  # 4 chunks
    v = rd.Volume.open(vol.path, vol.key, [str(s) for s in moved])
    entry = next(e for e in rd.walk(v) if e.path == name.encode())
    chunk = next(c for c in rd.chunks_of(v, entry) if c.idx == 2)
    v.db.close()
    share = chunk.placement.index(2)
    loc = chunk.locs[share] if share < len(chunk.locs) else None  # packed: (pid, offset, n)
    obj = (rd.object_name(v.names_key, chunk.oid, share) if loc is None
           else rd.pack_name(v.names_key, loc[0]))
    at = 0 if loc is None else loc[1]  # the share's first byte, in its object or its pack
    with open(rd.share_paths(moved[2], obj)[0], "r+b") as f:
        f.seek(at)
        first = f.read(1)
        f.seek(at)
        f.write(bytes([first[0] ^ 0xFF]))
    res = run_decoder("extract", vol.path, tmp_path / "out3", "--key-file", vol.key,
                      *store_args(moved))
    line = one_line(res)
    assert line.startswith(f"refdecoder: {name}: unrecoverable: chunk 2: 2 good shares, 3 needed")
    assert not (tmp_path / "out3" / name).exists()
    for rel, data in files.items():
        if rel != name:
            assert (tmp_path / "out3" / rel).read_bytes() == data, rel


@pytest.mark.mount
@pytest.mark.timeout(180)
def test_a_named_version_decodes_after_the_live_tree_moved_on(mounter: Mounter,
                                                               tmp_path: Path) -> None:
    """Schema 3: a version's rows (version_* tables) name shares the live tree no longer
    has; the decoder extracts the version as it was taken."""
    stores, vol = fresh_volume(tmp_path, "--gc-grace", 0)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = make_tree(mnt)
    assert_ok(run_fusefs("version", "create", mnt, "v1"))
    for rel in files:
        if "hardlink" not in rel:
            (mnt / rel).unlink()
    (mnt / "appended").write_bytes(b"new")
    mounter.umount(mnt)  # the replaced shares that v1 does not hold are deleted

    res = run_decoder("extract", vol.path, tmp_path / "out", "--key-file", vol.key,
                      "--version", "v1")
    assert (res.returncode, res.stderr) == (0, "")
    assert_extracted(tmp_path / "out", files)
    res = run_decoder("list", vol.path, "--version", "v2")
    assert one_line(res) == f"refdecoder: {vol.path}: no version named 'v2'"
