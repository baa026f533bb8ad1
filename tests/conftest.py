"""Fixtures for the real-mount tests (tests/test_mount_*.py).

- `volume()`: a factory that runs `fusefs init` over fresh store directories in tmp_path
  (K=3, M=2, 5 stores and a new key file by default).
- `mounted(vol)`: a factory that mounts a volume on a fresh directory and ALWAYS takes it down
  at teardown (`fusefs umount`, then `fusermount3 -uz`, then abort the FUSE connection and
  kill the daemon). `mounter` is the object behind it, for tests that unmount themselves.
- `shared_fs` / `mdir`: one volume mounted for the whole session, shared by the read-mostly
  POSIX tests; `mdir` is a fresh directory in it for one test.
- A watchdog aborts every FUSE connection shortly before pytest-timeout would fire, so a test
  blocked in a request to a hung daemon fails (ENOTCONN) instead of hanging the run.

Every test in a `test_mount_*` module gets the `mount` marker and is skipped, with the reason,
when /dev/fuse or fusermount3 is missing.

FUSEFS_TEST_REFERENCE_DIR=/some/ext4/dir runs the `mdir` tests against that directory instead
of a fusefs mount: a way to check the tests themselves against the kernel's own filesystems.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The `fusefs` commands the tests run (cwd /) must import this checkout's package: from a
# venv shared by several checkouts (git worktrees, an editable install of another one) they
# otherwise ran that other checkout's daemon, and a fix made here was not what was tested.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_REPO, *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, _REPO)  # and so must the tests that use the package in this process

import helpers  # noqa: E402

WATCHDOG_MARGIN = 0.9  # abort FUSE connections at 90% of the test's timeout


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mount: needs a real FUSE mount (/dev/fuse, fusermount3)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = helpers.fuse_unavailable_reason()
    for item in items:
        if item.path.name.startswith("test_mount_"):
            item.add_marker(pytest.mark.mount)
        if reason and item.get_closest_marker("mount"):
            item.add_marker(pytest.mark.skip(reason=f"real-mount test: {reason}"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Last line of defence: nothing a test mounted may outlive the run.
    with helpers._REGISTRY_LOCK:
        mounters = list(helpers._ALL_MOUNTERS)
    for m in mounters:
        m.cleanup()
    try:
        basetemp = str(session.config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return
    ours = (basetemp + os.sep, os.path.join(tempfile.gettempdir(), helpers.ALLOW_OTHER_PREFIX))
    for mnt in helpers.fuse_mounts():
        if mnt.startswith(ours):
            print(f"\nfusefs tests: forcing down a leftover mount {mnt}", file=sys.stderr)
            helpers.fusermount_lazy(mnt)


def _timeout_of(item: pytest.Item) -> float | None:
    marker = item.get_closest_marker("timeout")
    value = None
    if marker is not None:
        value = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
    if value is None:
        try:
            value = item.config.getoption("timeout")
        except ValueError:
            value = None
    if value is None:
        try:
            value = item.config.getini("timeout")
        except ValueError:
            value = None
    try:
        value = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value or None


@pytest.fixture(autouse=True)
def _fuse_hang_watchdog(request: pytest.FixtureRequest):
    timeout = _timeout_of(request.node)
    if timeout is None or not request.node.get_closest_marker("mount"):
        yield
        return
    timer = threading.Timer(
        timeout * WATCHDOG_MARGIN,
        helpers.abort_all_mounts,
        args=(f"{request.node.nodeid} ran for {timeout * WATCHDOG_MARGIN:.0f} s",),
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# ------------------------------------------------------------------------------------------
# Volumes and mounts
# ------------------------------------------------------------------------------------------


@pytest.fixture
def volume(tmp_path: Path):
    """Factory: volume(name=None, n_stores=5, k=3, m=2, chunk_size=None, segment_size=None,
    key=None) -> Volume."""
    counter = itertools.count()

    def factory(name: str | None = None, **kwargs) -> helpers.Volume:
        return helpers.create_volume(tmp_path, name or f"vol{next(counter)}", **kwargs)

    return factory


@pytest.fixture
def mounter():
    m = helpers.Mounter()
    yield m
    problems = m.cleanup()
    if problems:
        pytest.fail("unmounting at teardown went wrong:\n" + "\n".join(problems))


@pytest.fixture
def mounted(mounter: helpers.Mounter, tmp_path: Path):
    """Factory: mounted(vol, mnt=None, *extra_args, key=None) -> mountpoint Path (live)."""
    counter = itertools.count()

    def factory(vol: helpers.Volume, mnt: Path | None = None, *extra, key=None) -> Path:
        if mnt is None:
            mnt = tmp_path / f"mnt{next(counter)}"
            while mnt.exists():
                mnt = tmp_path / f"mnt{next(counter)}"
        return mounter.mount(vol, mnt, *extra, key=key)

    return factory


@dataclass
class SharedFS:
    root: Path
    chunk_size: int
    volume: helpers.Volume | None


@pytest.fixture(scope="session")
def shared_fs(tmp_path_factory: pytest.TempPathFactory):
    """One K=3/M=2 volume over 5 stores, mounted for the whole session."""
    ref = os.environ.get("FUSEFS_TEST_REFERENCE_DIR")
    if ref:
        root = Path(tempfile.mkdtemp(prefix="fusefs-reference-", dir=ref))
        yield SharedFS(root, helpers.MiB, None)
        return
    base = tmp_path_factory.mktemp("shared")
    vol = helpers.create_volume(base, "vol")
    chunk_size = int(helpers.status_json(vol.path)["chunk_size"])
    m = helpers.Mounter()
    try:
        mnt = m.mount(vol, base / "mnt")
        yield SharedFS(mnt, chunk_size, vol)
    finally:
        problems = m.cleanup()
    if problems:
        pytest.fail("unmounting the shared volume went wrong:\n" + "\n".join(problems))


@pytest.fixture
def mdir(shared_fs: SharedFS, request: pytest.FixtureRequest) -> Path:
    """A fresh, empty directory of this test in the shared mount."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:100]
    d = shared_fs.root / name
    n = 0
    while d.exists():
        n += 1
        d = shared_fs.root / f"{name}.{n}"
    d.mkdir()
    return d


@pytest.fixture
def chunk_size(shared_fs: SharedFS) -> int:
    return shared_fs.chunk_size


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session (skipped without moto)."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as e:
        pytest.skip(f"S3 tests need moto[server] and boto3: {e}")
    from s3server import S3Server, use_test_credentials

    use_test_credentials()
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the test S3 server."""
    name = "b" + format(abs(hash(request.node.nodeid)) % 10**12, "012d") + str(
        next(_bucket_counter))
    return s3_server.create_bucket(name)


_bucket_counter = itertools.count()
