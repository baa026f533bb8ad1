"""Long commands show a bar on a terminal and plain lines when not on one (issue 15)."""

from __future__ import annotations

import io
import os
import subprocess

from helpers import FUSEFS, MiB, Mounter, rand_bytes

from fusefs.progress import Progress


def test_plain_lines_at_most_every_interval_and_a_last_one():
    out = io.StringIO()
    p = Progress("scrub", "chunk", bar=False, stream=out, interval=3600)
    for i in range(1, 101):
        p.update(i, 100, i * MiB)
    p.close()
    assert out.getvalue() == "", "a short run must stay silent"
    out = io.StringIO()
    p = Progress("scrub", "chunk", bar=False, stream=out, interval=0)
    for i in range(1, 4):
        p.update(i, 4, i * 2_000_000)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("scrub: 1/4 chunks (25%), 2 MB read")
    assert lines[-1].startswith("scrub: 3/4 chunks (75%), 6 MB read")
    assert "\r" not in out.getvalue()


def test_scrub_prints_progress_lines_when_not_on_a_terminal(tmp_path, volume):
    vol = volume()
    m = Mounter()
    try:
        mnt = m.mount(vol, tmp_path / "mnt")
        (mnt / "f.bin").write_bytes(rand_bytes(9 * MiB, "progress"))
        m.umount(mnt)
    finally:
        assert not m.cleanup()
    res = subprocess.run([*FUSEFS, "scrub", str(vol.path), "--key-file", str(vol.key)],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                         env={**os.environ, "FUSEFS_PROGRESS_INTERVAL": "0"})
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("scrub: ")]
    assert lines and lines[-1].startswith("scrub: 3/3 chunks (100%)"), res.stderr
    assert "\r" not in res.stderr and "healthy" in res.stdout
