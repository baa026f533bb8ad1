"""The README's two set-up commands work as root where `sudo` does not exist, and for a user
with sudo (issue 15, "Done when" 6); CI runs the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "Quick start should show two commands: the demo and the tests"
    return [b.strip() for b in blocks]


def test_the_set_up_commands_do_not_need_sudo():
    demo, tests = quick_start_commands()
    for cmd in (demo, tests):
        assert not re.search(r"(^|[;&|]\s*)sudo\b", cmd), f"needs sudo: {cmd}"
    assert demo.endswith("./scripts/demo")
    assert tests == "./scripts/test"
    for script in ("scripts/demo", "scripts/test"):
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"


def test_ci_runs_the_readme_test_command():
    _, tests = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^run {re.escape(tests)}\b", ci, re.M), ci


def _as_root_with(path: str, uid_is_root: bool) -> subprocess.CompletedProcess:
    """`_as_root` of scripts/_install.sh with PATH=PATH and `id -u` faked to root or not."""
    fake = "" if uid_is_root else "id() { echo 1000; }; "
    return subprocess.run(
        ["bash", "-c", f"{fake}source scripts/_install.sh; _as_root echo as-root"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={"PATH": path, "HOME": os.environ.get("HOME", "/root")})


def test_install_calls_sudo_only_when_not_root(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                              text=True).stdout.strip()
        if not real:
            pytest.skip(f"no {tool}")
        (bin_dir / tool).symlink_to(real)
    # root, no sudo anywhere: runs the command itself
    res = _as_root_with(str(bin_dir), uid_is_root=True)
    assert res.returncode == 0 and res.stdout.strip() == "as-root", res.stderr
    # not root, a sudo on PATH: goes through it
    sudo = bin_dir / "sudo"
    sudo.write_text('#!/bin/sh\necho "sudo $*"\n')
    sudo.chmod(0o755)
    res = _as_root_with(str(bin_dir), uid_is_root=False)
    assert res.stdout.strip() == "sudo echo as-root", res.stdout + res.stderr
    # not root and no sudo: a clear error
    sudo.unlink()
    res = _as_root_with(str(bin_dir), uid_is_root=False)
    assert res.returncode != 0 and "need root or sudo" in res.stderr
