"""The README's example of pinning a training run to a version (issue 16, "Done when" 5)
runs as written against a real mount: it checks the version's fingerprint, refuses a
wrong one, and stores the fingerprint with the model.

Where PyTorch is not installed, a stand-in `torch` module (nn.Linear with a state_dict,
save as a pickle) takes its place: the snippet's fusefs part is what this test is about.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Mounter, assert_ok, run_fusefs, tree_layout, write_tree

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

README = Path(__file__).resolve().parent.parent / "README.md"
STAND_IN = '''
import pickle


class _Linear:
    def __init__(self, n_in, n_out):
        self.shape = (n_out, n_in)

    def state_dict(self):
        return {"weight.shape": self.shape}


class nn:
    Linear = _Linear


def save(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
'''


def snippet() -> str:
    text = README.read_text()
    found = re.search(r"<!-- pinned-training-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "the README lost its pinned training example"
    return found.group(1)


def run_snippet(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    try:
        import torch  # noqa: F401
    except ImportError:
        (cwd / "stand-in").mkdir(exist_ok=True)
        (cwd / "stand-in" / "torch.py").write_text(STAND_IN)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(cwd / "stand-in"), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_readme_pins_a_training_run_to_a_version(volume, mounter: Mounter,
                                                      tmp_path: Path) -> None:
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    write_tree(mnt / "train", tree_layout([100, 70_000]), seed="readme")
    made = json.loads(assert_ok(run_fusefs("version", "create", mnt, "imagenet-v3", "train",
                                           "--json")).stdout)
    code = snippet()
    data = str(mnt / ".fusefs" / "versions" / "imagenet-v3")
    code = re.sub(r'^DATA = ".*?"', f"DATA = {data!r}", code, count=1, flags=re.M)
    pinned = re.sub(r'^APPROVED = ".*?"', f'APPROVED = "{made["fingerprint"]}"', code,
                    count=1, flags=re.M)
    assert pinned != code and f"DATA = {data!r}" in pinned

    res = run_snippet(pinned, tmp_path)
    assert res.returncode == 0, res.stderr
    saved = (tmp_path / "model.pt").read_bytes()
    try:
        import torch

        logged = torch.load(tmp_path / "model.pt", weights_only=False)
    except ImportError:
        logged = pickle.loads(saved)
    assert logged["dataset"] == data
    assert logged["dataset_fingerprint"] == made["fingerprint"]

    (tmp_path / "model.pt").unlink()
    res = run_snippet(pinned.replace(made["fingerprint"], "0" * 64), tmp_path)
    assert res.returncode == 1 and "is not the approved dataset" in res.stderr, res.stderr
    assert not (tmp_path / "model.pt").exists()
    mounter.umount(mnt)
