#!/usr/bin/env python3
"""How long a fingerprint from the metadata takes for a big tree (issue 16: 100,000 files
in under 5 s), and what taking a version of it costs.

    python scripts/fingerprint_bench.py [--files N] [--dirs D] [--dir DIR]

Makes a volume (`fusefs init`) in a temp dir under DIR (default /tmp), fills its metadata
with N files in D directories (one chunk row each, with its content digest, as written
through a mount; the data itself is never read by a fingerprint, so none is stored), mounts
it and times, through the command line: `fusefs fingerprint MOUNTPOINT` (twice: cold and
warm page cache), `fusefs version create`, and `fusefs fingerprint` of the version. Also
`fusefs fingerprint` of a plain directory of 1,000 small files, for the rate of reading.
Prints one line per measurement; unmounts and removes everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusefs.codec import digest  # noqa: E402
from fusefs.meta.repo import ROOT_INODE, ChunkRow, MetaRepo  # noqa: E402

FUSEFS = [sys.executable, "-m", "fusefs"]


def run(*args: object) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run([*FUSEFS, *map(str, args)], capture_output=True, text=True, cwd="/")
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"fusefs {' '.join(map(str, args))} failed: {res.stderr.strip()}")
    return took, res.stdout.strip()


def populate(db: Path, files: int, dirs: int) -> None:
    """N files in D directories, as a mount would have recorded them (one chunk each)."""
    meta = MetaRepo(db)
    now = time.time_ns()
    with meta.transaction():
        parents = []
        for d in range(dirs):
            ino = meta.create_inode(os.urandom(16), stat.S_IFDIR | 0o755, 0, 0, 2, now).id
            meta.add_dentry(ROOT_INODE, f"class{d:04d}".encode(), ino)
            parents.append(ino)
        for i in range(files):
            size = 50_000 + i % 100_000
            ino = meta.create_inode(os.urandom(16), stat.S_IFREG | 0o644, 0, 0, 1, now).id
            meta.update_inode(ino, size=size)
            meta.add_dentry(parents[i % dirs], f"img{i:07d}.jpg".encode(), ino)
            content = digest.content(i.to_bytes(8, "big"))  # stands for the file's digest
            meta.put_chunk(ino, ChunkRow(0, 1, os.urandom(16), size, bytes(range(5)),
                                         bytes(80), content))
    meta.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    meta.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=1_000)
    p.add_argument("--dir", default="/tmp")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fusefs-fp-bench-", dir=args.dir))
    mnt = work / "mnt"
    try:
        stores = []
        for i in range(5):
            (work / f"s{i}").mkdir()
            stores += ["--store", work / f"s{i}"]
        run("init", work / "vol", *stores, "--data-shares", 3, "--parity-shares", 2,
            "--key-file", work / "key", "--snapshot-interval", 0)
        t0 = time.perf_counter()
        populate(work / "vol" / "meta.db", args.files, args.dirs)
        print(f"metadata of {args.files} files in {args.dirs} directories written in "
              f"{time.perf_counter() - t0:.1f} s")
        mnt.mkdir()
        run("mount", work / "vol", mnt, "--key-file", work / "key")
        try:
            for what in ("cold", "warm"):
                took, out = run("fingerprint", mnt)
                print(f"fusefs fingerprint of the mount ({what}): {took:.2f} s  "
                      f"{out.split()[0]}")
            took, out = run("version", "create", mnt, "v1")
            print(f"fusefs version create (copy + fingerprint): {took:.2f} s")
            took, out = run("fingerprint", mnt / ".fusefs" / "versions" / "v1")
            print(f"fusefs fingerprint of the version: {took:.2f} s  {out.split()[0]}")
        finally:
            run("umount", mnt)
        plain = work / "plain"
        plain.mkdir()
        for i in range(1000):
            (plain / f"f{i}").write_bytes(os.urandom(110_000))
        took, _ = run("fingerprint", plain)
        print(f"fusefs fingerprint of a plain directory of 1,000 x 110 KB files: {took:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
