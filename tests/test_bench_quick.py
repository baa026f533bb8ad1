"""scripts/bench --quick runs end to end at a tiny size: table printed, JSON written, exit 0.

No figure is judged here (shared CI machines are noisy); this only keeps the benchmark working.
It needs a real FUSE mount, so it carries the `mount` marker (skipped without /dev/fuse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fuse_mounts, fusermount_lazy, is_mounted, pid_alive, wait_until

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"
PASSTHROUGH = BENCH.parent / "passthrough.py"
ROWS = [
    "1 sequential write",
    "2 sequential cold read",
    "3 random 128 KiB cold reads",
    "4 small files: write",
    "4 small files: cold read",
    "5 metadata walk",
    "6 sequential cold read, 1 store empty",
    "7 daemon peak RSS",
]


def test_bench_quick(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, FUSEFS_BENCH_SCALE="0.005")
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeat", "1", "--no-peers",
         "--dir", str(work), "--json", str(out_json)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=100, env=env,
    )
    report = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert "Traceback" not in proc.stdout + proc.stderr, report
    for row in ROWS:
        assert row in proc.stdout, f"no table row {row!r}; {report}"
    assert "fusefs/raw" in proc.stdout, report

    doc = json.loads(out_json.read_text())
    for key in ("write", "read", "random", "small_read", "walk_cold"):
        assert doc["medians"][key]["raw"] > 0, key
        assert doc["medians"][key]["fusefs"] > 0, key
    assert doc["medians"]["degraded"]["fusefs"] > 0
    assert doc["medians"]["rss"]["fusefs"] > 0

    # It cleaned up after itself: no mount left, its temp dir is gone.
    assert not [m for m in fuse_mounts() if m.startswith(str(tmp_path))]
    assert list(work.iterdir()) == []


def test_passthrough_mirrors_its_source(tmp_path: Path) -> None:
    """The bench's pass-through peer (the stack's ceiling) mounts, mirrors and unmounts."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    (src / "d").mkdir(parents=True)
    mnt.mkdir()
    (src / "d" / "old").write_bytes(b"x" * 300_000)
    proc = subprocess.Popen([sys.executable, str(PASSTHROUGH), str(src), str(mnt)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, 30)
        assert is_mounted(mnt), proc.communicate(timeout=10)[0]
        assert (mnt / "d" / "old").read_bytes() == b"x" * 300_000
        data = os.urandom(1 << 20)
        (mnt / "d" / "new").write_bytes(data)
        assert (src / "d" / "new").read_bytes() == data
        assert sorted(os.listdir(mnt / "d")) == ["new", "old"]
        (mnt / "d" / "old").unlink()
        assert not (src / "d" / "old").exists()
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=20)
        assert proc.wait(timeout=20) == 0
    finally:
        if is_mounted(mnt):
            fusermount_lazy(mnt)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert not is_mounted(mnt) and not pid_alive(proc.pid)


PIPELINE = BENCH.parent / "bench_pipeline"


def test_bench_pipeline_quick(tmp_path: Path) -> None:
    """scripts/bench_pipeline --quick: a DataLoader (or the fork pool without torch) over a
    few hundred JPEGs on raw and fusefs, every byte checked; tables printed, JSON written."""
    work = tmp_path / "work"
    work.mkdir()
    out_json = tmp_path / "pipeline.json"
    proc = subprocess.run(
        [sys.executable, str(PIPELINE), "--quick", "--files", "120", "--dir", str(work),
         "--json", str(out_json)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=100,
    )
    report = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert "Traceback" not in proc.stdout + proc.stderr, report
    for line in ("images/s (ratio to raw)", "CPU ms per image", "FUSE requests per image",
                 "read, 1 worker, epoch 1 cold", "read, 2 workers, epoch 2 warm"):
        assert line in proc.stdout, f"no {line!r}; {report}"
    doc = json.loads(out_json.read_text())
    assert doc["columns"][:3] == ["raw", "fusefs", "fusefs-rw"], doc["columns"]
    for key in ("read/1/cold", "read/2/warm"):
        for col in ("raw", "fusefs", "fusefs-rw"):
            assert doc["medians"][key][col]["images_s"] > 0, (key, col)
        assert doc["medians"][key]["fusefs"]["daemon_ms"] is not None
    rw = doc["medians"]["read/1/cold"]["fusefs-rw"]["requests"]
    assert rw["open"] >= 1 and rw["read"] >= 1, rw  # every file opened and read by the daemon
    assert not [m for m in fuse_mounts() if m.startswith(str(tmp_path))]
    assert list(work.iterdir()) == []
