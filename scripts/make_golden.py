#!/usr/bin/env python3
"""Make a golden volume: a small fusefs volume in one on-store format, kept in the repository
(tests/golden/format-N/) so that every later fusefs must still read it bit-identically.

    scripts/make_golden.py FORMAT [--code COMMIT]

Formats 2 and 3 are what fusefs wrote before the next format existed: the volume is written by
that release's code (`--code`, default the last commit that made volumes of that format),
taken from git history into a temp dir and run with this interpreter. Format 4 is written by
the checkout's code, with pack objects (`init --pack-below`, small packs: several per store).
Needs root (or FUSE for the user) and fusermount3, like the mount tests.

What goes in: a K=3/M=2 volume over 5 store directories with 64 KiB chunks and 4 KiB
segments, and files of awkward sizes, a sparse file, a truncated one, one rewritten in the
middle, one overwritten whole, an appended one, a hard link, a symlink, an empty directory
and an extended attribute. `manifest.json` records the sha256 of every file and what else a
reader must find. The key is a test key, committed with the volume.

Store URLs in the volume's config are absolute paths of the machine that made it: whoever
uses a golden volume copies it and points the config at the copied stores
(`tests/test_golden.py` does, and so does the reference decoder's test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMAT2_CODE = "ab1598d"  # the last release that made format-2 volumes
OLD_CODE = {2: FORMAT2_CODE, 3: "a0f81c9"}  # the last commits that made format-2, -3 volumes
N_STORES, K, M = 5, 3, 2
CHUNK, SEGMENT = 64 * 1024, 4096
KEY = "6f" * 32  # a test key: golden volumes hold no secrets


def pattern(n: int, seed: int) -> bytes:
    """Deterministic bytes (a golden volume made twice holds the same plaintext)."""
    out = bytearray()
    block = seed.to_bytes(8, "big")
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def write_contents(mnt: Path) -> None:
    """The files of a golden volume, written through a mount."""
    sizes = {"empty": 0, "one": 1, "seg-1": SEGMENT - 1, "seg": SEGMENT,
             "chunk-1": CHUNK - 1, "chunk": CHUNK, "chunk+1": CHUNK + 1,
             "three-chunks+7": 3 * CHUNK + 7}
    (mnt / "sizes").mkdir()
    for i, (name, size) in enumerate(sizes.items()):
        (mnt / "sizes" / name).write_bytes(pattern(size, i))
    with open(mnt / "sparse", "wb") as f:  # chunk 0 and 2 absent, data in chunk 1 and 3
        f.seek(CHUNK + 100)
        f.write(pattern(5000, 20))
        f.seek(3 * CHUNK + 10)
        f.write(pattern(10, 21))
    (mnt / "truncated").write_bytes(pattern(2 * CHUNK + 500, 22))
    os.truncate(mnt / "truncated", CHUNK + 300)
    (mnt / "rewritten").write_bytes(pattern(2 * CHUNK, 23))
    with open(mnt / "rewritten", "r+b") as f:
        f.seek(CHUNK - 50)
        f.write(pattern(100, 24))
    (mnt / "overwritten").write_bytes(pattern(CHUNK + 1000, 25))
    (mnt / "overwritten").write_bytes(pattern(3000, 26))
    (mnt / "appended").write_bytes(pattern(1000, 27))
    for i in range(3):
        with open(mnt / "appended", "ab") as f:
            f.write(pattern(700, 28 + i))
    (mnt / "dir" / "sub").mkdir(parents=True)
    (mnt / "dir" / "sub" / "deep").write_bytes(pattern(777, 31))
    os.link(mnt / "dir" / "sub" / "deep", mnt / "dir" / "hardlink")
    os.symlink("sub/deep", mnt / "dir" / "symlink")
    (mnt / "empty-dir").mkdir()
    os.setxattr(mnt / "sizes" / "one", "user.golden", b"xattr value")


def manifest_of(mnt: Path) -> dict:
    files, links, dirs = {}, {}, []
    for dirpath, dirnames, filenames in os.walk(mnt):
        rel_dir = os.path.relpath(dirpath, mnt)
        dirs += sorted(os.path.normpath(os.path.join(rel_dir, d)) for d in dirnames)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if path.is_symlink():
                links[rel] = os.readlink(path)
                continue
            data = path.read_bytes()
            files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    xattrs = {"sizes/one": {"user.golden": "xattr value"}}
    return {"files": files, "symlinks": links, "directories": sorted(dirs),
            "hardlinks": [["dir/sub/deep", "dir/hardlink"]], "xattrs": xattrs}


def fusefs(code: Path | None, *args: object) -> None:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    subprocess.run([sys.executable, "-m", "fusefs", *map(str, args)], check=True, env=env,
                   cwd="/")


def wait_mounted(mnt: Path) -> None:
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if time.monotonic() > deadline:
            raise SystemExit(f"{mnt} did not get mounted")
        time.sleep(0.05)  # polling with a deadline


def make(fmt: int, code_commit: str | None, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        code = None
        if fmt in OLD_CODE:
            code = work / "code"
            code.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive",
                                      code_commit or OLD_CODE[fmt], "fusefs"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        vol, key, mnt = work / "volume", work / "key", work / "mnt"
        stores = [work / "stores" / f"s{i}" for i in range(N_STORES)]
        for s in stores:
            s.mkdir(parents=True)
        key.write_text(KEY + "\n")
        key.chmod(0o600)
        args: list[object] = ["init", vol]
        for s in stores:
            args += ["--store", s]
        fusefs(code, *args, "--data-shares", K, "--parity-shares", M, "--chunk-size", CHUNK,
               "--segment-size", SEGMENT, "--key-file", key,
               *(("--pack-below", "64K", "--pack-size", "64K") if fmt >= 4 else ()))
        mnt.mkdir()
        fusefs(code, "mount", vol, mnt, "--key-file", key)
        try:
            wait_mounted(mnt)
            write_contents(mnt)
            manifest = manifest_of(mnt)
        finally:
            fusefs(code, "umount", mnt)
        db = sqlite3.connect(vol / "meta.db")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        for extra in ("meta.db-wal", "meta.db-shm", "fusefs.log", "events.jsonl",
                      "fusefs.lock", "fusefs.pid"):
            (vol / extra).unlink(missing_ok=True)
        config = (vol / "fusefs.toml").read_text()
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copytree(vol, out / "volume")
        shutil.copytree(work / "stores", out / "stores")
        shutil.copy(key, out / "key")
        manifest.update(format=fmt, data_shares=K, parity_shares=M, chunk_size=CHUNK,
                        segment_size=SEGMENT, made_by=code_commit or OLD_CODE[fmt]
                        if fmt in OLD_CODE else "this checkout",
                        stores_when_made=[str(s) for s in stores])
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True)
                                           + "\n")
        assert f"format = {fmt}" in config, config


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("format", type=int, choices=(2, 3, 4))
    p.add_argument("--code", help="commit whose fusefs writes a format-2 or -3 volume")
    p.add_argument("--out", type=Path, help="default: tests/golden/format-FORMAT")
    args = p.parse_args()
    out = args.out or ROOT / "tests" / "golden" / f"format-{args.format}"
    make(args.format, args.code, out)
    print(f"golden volume in format {args.format}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
