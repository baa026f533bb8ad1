"""fusefs as a container sidecar, for real (issue 15, "Done when" 1).

A Docker engine of its own (Debian's docker.io: `dockerd` with its own data root, exec root,
pidfile and socket in a temp dir, `--iptables=false --ip-forward=false --bridge=none`: the
host's firewall and routing are not touched), a base image made with `debootstrap
--variant=minbase bookworm` from the machine's Debian mirror and `docker import` (no registry
is needed), and the repository's Dockerfile built on it (`--network host`) with wheels made
on the host (`pip wheel`) and installed with `--no-index --find-links`; pyfuse3 comes as its
source and is built in the image's build stage. All of it once per test session.

Then: the sidecar mounts a volume of 5 store directories on a subdirectory of a shared
directory (a shared mount: the sidecar binds it `rshared`, the trainer `rslave`), a second
container writes a tree through it, the host reads it back bit-identical, SIGTERM stops the
sidecar (exit 0, no mount left), and a mount on the host reads the same bytes. The same
with examples/docker-compose.yml and Debian's docker-compose (1.29).

Skipped, with the reason, where no engine can start (not root, no dockerd, no /dev/fuse, or
dockerd fails). Teardown always removes the containers, stops the engine and unmounts
everything under its directories.

FUSEFS_TEST_DOCKER_ROOTFS=PATH.tar (development only) imports that tarball of a bookworm
root filesystem instead of running debootstrap.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    TREE_SIZES,
    Mounter,
    assert_tree,
    create_volume,
    fusermount_lazy,
    is_mounted,
    tree_layout,
    write_tree,
)

from fusefs.mounts import mountinfo

ROOT = Path(__file__).resolve().parent.parent
BASE_TAG = "fusefs-test-base:bookworm"
IMAGE_TAG = "fusefs-test:latest"
SUITE = "bookworm"
ENGINE_START_TIMEOUT = 60
HEALTH_TIMEOUT = 90

pytestmark = pytest.mark.timeout(1500)  # the first test builds everything (~3-6 min)


def log(msg: str) -> None:
    print(f"[docker] {msg}", file=sys.stderr, flush=True)


def _unmount_below(path: Path) -> None:
    """Lazily unmount every mount at or below PATH, deepest first."""
    prefix = str(path).rstrip("/")
    found = [m.mountpoint for m in mountinfo()
             if m.mountpoint == prefix or m.mountpoint.startswith(prefix + "/")]
    for mp in sorted(set(found), key=len, reverse=True):
        if subprocess.run(["umount", "-l", mp], capture_output=True).returncode != 0:
            fusermount_lazy(mp)


@dataclass
class Engine:
    root: Path
    docker_bin: str
    proc: subprocess.Popen

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: object, check: bool = True, timeout: float = 600,
               input: bytes | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run([self.docker_bin, "-H", self.host, *map(str, args)],
                             capture_output=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))} exited {res.returncode}:"
                                 f"\n{res.stdout.decode(errors='replace')[-3000:]}"
                                 f"\n{res.stderr.decode(errors='replace')[-3000:]}")
        return res

    def out(self, *args: object) -> str:
        return self.docker(*args).stdout.decode().strip()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "dockerd.log").read_text().splitlines()[-15:])
        return ""


def _engine_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run a Docker engine"
    if shutil.which("dockerd") is None:
        return "no container engine: dockerd is not installed (apt-get install docker.io)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return None


def _stop_engine(engine: Engine) -> None:
    with contextlib.suppress(Exception):
        ids = engine.docker("ps", "-aq", check=False, timeout=60).stdout.decode().split()
        if ids:
            engine.docker("rm", "-f", *ids, check=False, timeout=120)
    if engine.proc.poll() is None:
        engine.proc.send_signal(signal.SIGTERM)
        try:
            engine.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine.proc.pid, signal.SIGKILL)
            engine.proc.wait(30)
    # containerd and its shims run in the engine's session; none may outlive it
    for pid in _pids_with(str(engine.root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _unmount_below(engine.root)


def _pids_with(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
    return pids


@pytest.fixture(scope="session")
def engine():
    reason = _engine_unavailable()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="fusefs-dk-", dir="/tmp"))
    (root / "daemon.json").write_text("{}\n")
    dockerd = shutil.which("dockerd")
    sibling = Path(dockerd).resolve().parent.parent / "bin" / "docker"
    docker_bin = str(sibling) if sibling.exists() else shutil.which("docker")
    if docker_bin is None:
        pytest.skip("no docker command line (apt-get install docker.io)")
    logf = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [dockerd, "--data-root", root / "data", "--exec-root", root / "exec",
         "--pidfile", root / "docker.pid", "-H", f"unix://{root}/docker.sock",
         "--config-file", root / "daemon.json", "--iptables=false", "--ip-forward=false",
         "--bridge=none", "--log-level=warn"],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    eng = Engine(root, docker_bin, proc)
    try:
        deadline = time.monotonic() + ENGINE_START_TIMEOUT
        while eng.docker("info", check=False, timeout=30).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = eng.log_tail()
                _stop_engine(eng)
                pytest.skip(f"no container engine can start here: dockerd "
                            f"{'exited' if proc.poll() is not None else 'did not answer'}"
                            f": {tail[-500:]}")
            time.sleep(0.2)
        log(f"engine up: {eng.out('version', '--format', '{{.Server.Version}}')} in {root}")
        yield eng
    finally:
        _stop_engine(eng)
        logf.close()
        shutil.rmtree(root, ignore_errors=True)


def debian_mirror() -> str:
    """The machine's configured Debian mirror (sources.list or deb822 .sources)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob(
        "*.list")), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for f in files:
        with contextlib.suppress(OSError):
            for m in re.finditer(r"(?m)^(?:URIs:|deb(?:\s+\[[^]]*\])?)\s+(\S+)",
                                 f.read_text()):
                if re.search(r"/debian/?$", m.group(1)):
                    return m.group(1)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def base_image(engine: Engine) -> str:
    t0 = time.monotonic()
    tarball = os.environ.get("FUSEFS_TEST_DOCKER_ROOTFS")
    if tarball:
        engine.docker("import", tarball, BASE_TAG, timeout=600)
    else:
        if shutil.which("debootstrap") is None:
            pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
        rootfs = engine.root / "rootfs"
        mirror = debian_mirror()
        res = subprocess.run(["debootstrap", "--variant=minbase", SUITE, rootfs, mirror],
                             capture_output=True, timeout=900)
        if res.returncode != 0:
            raise AssertionError(f"debootstrap from {mirror} failed:\n"
                                 f"{res.stdout.decode(errors='replace')[-2000:]}"
                                 f"{res.stderr.decode(errors='replace')[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        try:
            res = subprocess.run([engine.docker_bin, "-H", engine.host, "import", "-",
                                  BASE_TAG], stdin=tar.stdout, capture_output=True,
                                 timeout=600)
        finally:
            tar.stdout.close()
            tar.wait()
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        shutil.rmtree(rootfs, ignore_errors=True)
    log(f"base image {BASE_TAG} in {time.monotonic() - t0:.0f} s")
    return BASE_TAG


def _pip(*args: object) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", *map(str, args)], capture_output=True,
                         text=True, timeout=900,
                         env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert res.returncode == 0, f"pip {' '.join(map(str, args))}:\n{res.stderr[-3000:]}"


def wheelhouse(dest: Path) -> None:
    """The wheels of fusefs's dependencies, built on the host, and pyfuse3 as its source
    with what building it needs: the image's build stage compiles it against libfuse3-dev."""
    import importlib.metadata

    _pip("wheel", "-q", "-w", dest, ROOT)
    for w in list(dest.glob("pyfuse3-*.whl")) + list(dest.glob("fusefs-*.whl")):
        w.unlink()
    version = importlib.metadata.version("pyfuse3")
    _pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", dest,
         f"pyfuse3=={version}")
    _pip("download", "-q", "--only-binary", ":all:", "-d", dest, "setuptools", "wheel",
         "Cython", "setuptools_scm")


@pytest.fixture(scope="session")
def image(engine: Engine, base_image: str) -> str:
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"the wheels are built by this Python ({sys.version.split()[0]}); the "
                    f"{SUITE} image has Python 3.11")
    t0 = time.monotonic()
    ctx = engine.root / "context"
    ctx.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, ctx / name)
    shutil.copytree(ROOT / "fusefs", ctx / "fusefs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheelhouse(ctx / "wheels")
    t1 = time.monotonic()
    engine.docker("build", "--network", "host", "-t", IMAGE_TAG,
                  "--build-arg", f"BASE={base_image}",
                  "--build-arg", "PIP_ARGS=--no-index --find-links /src/wheels", ctx,
                  timeout=1200)
    size = int(engine.out("image", "inspect", "-f", "{{.Size}}", IMAGE_TAG))
    log(f"image {IMAGE_TAG}: wheels {t1 - t0:.0f} s, build {time.monotonic() - t1:.0f} s, "
        f"{size / 1e6:.0f} MB")
    assert engine.out("run", "--rm", "--network", "none", IMAGE_TAG, "--version") \
        .startswith("fusefs ")
    return IMAGE_TAG


@contextlib.contextmanager
def shared_dir(path: Path):
    """A shared mount (mount --bind D D; mount --make-shared D), always unmounted after."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "--make-shared", path], check=True)
        yield path
    finally:
        _unmount_below(path)


def wait_healthy(engine: Engine, container: str, timeout: float = HEALTH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = engine.out("inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}",
                           container)
        if state.endswith(" healthy"):
            return
        if not state.startswith(("running", "created")) or time.monotonic() > deadline:
            logs = engine.docker("logs", container, check=False).stderr.decode()[-3000:]
            raise AssertionError(f"{container} is not healthy ({state}); its log:\n{logs}")
        time.sleep(0.2)


def stop_and_check(engine: Engine, container: str, mnt: Path) -> None:
    """SIGTERM (docker stop): exit 0, the volume unmounted, no dead mount left."""
    engine.docker("stop", "-t", "60", container, timeout=120)
    code = engine.out("inspect", "-f", "{{.State.ExitCode}}", container)
    logs = engine.docker("logs", container).stderr.decode(errors="replace")
    assert code == "0", f"the sidecar exited {code}:\n{logs[-3000:]}"
    assert "signal 15: unmounting" in logs and "unmounted" in logs, logs[-3000:]
    assert not is_mounted(mnt), f"{mnt} is still mounted on the host after the sidecar stopped"


def remount_and_compare(vol_path: Path, key: Path, mnt: Path, expected: dict[str, bytes]
                        ) -> None:
    """Durable: the volume, mounted on the host, reads bit-identical."""
    from helpers import Volume

    m = Mounter()
    try:
        m.mount(Volume(vol_path, [], key, 3, 2), mnt)
        assert_tree(mnt, expected)
        m.umount(mnt)
    finally:
        problems = m.cleanup()
    assert not problems, problems


def test_sidecar_container(engine: Engine, image: str, base_image: str, tmp_path: Path):
    t0 = time.monotonic()
    vol = create_volume(tmp_path, "vol")
    src = tmp_path / "src"
    expected = write_tree(src, tree_layout(TREE_SIZES), seed="docker")
    name = "fusefs-sidecar"
    with shared_dir(tmp_path / "shared") as shared:
        mnt = shared / "data"
        try:
            engine.docker(
                "run", "-d", "--name", name, "--network", "none",
                "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
                "-v", f"{tmp_path}:{tmp_path}", "-v", f"{shared}:/shared:rshared",
                "-e", f"FUSEFS_VOLUME={vol.path}", "-e", "FUSEFS_MOUNTPOINT=/shared/data",
                "-e", f"FUSEFS_KEY_FILE={vol.key}",
                "--health-cmd", "fusefs health", "--health-interval", "1s",
                "--health-retries", "3", "--stop-timeout", "60",
                image, "mount", "--foreground", "--init")
            wait_healthy(engine, name)
            assert is_mounted(mnt), "the sidecar's mount did not propagate to the host"
            engine.docker("run", "--rm", "--network", "none", "-v", f"{src}:/src:ro",
                          "-v", f"{shared}:/shared:rslave", base_image,
                          "sh", "-c", "cp -r /src/. /shared/data/")
            assert_tree(mnt, expected)  # written by the trainer, read by the host
            stop_and_check(engine, name, mnt)
        finally:
            engine.docker("rm", "-f", name, check=False)
            if is_mounted(mnt):
                fusermount_lazy(mnt)
    remount_and_compare(vol.path, vol.key, tmp_path / "hostmnt", expected)
    log(f"docker run test: {time.monotonic() - t0:.1f} s")


COMPOSE_OVERRIDE = """\
services:
  fusefs:
    network_mode: none
    healthcheck:
      interval: 1s
  trainer:
    network_mode: none
    command: ["sh", "-c", "cp -r /src/. /shared/data/"]
    volumes:
      - {src}:/src:ro
"""


def test_compose_example(engine: Engine, image: str, base_image: str, tmp_path: Path):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    t0 = time.monotonic()
    home = tmp_path / "home"
    stores = [home / "stores" / f"s{i}" for i in range(5)]
    for s in stores:
        s.mkdir(parents=True)
    (home / "stores.txt").write_text("".join(f"{s}\n" for s in stores))
    key = home / "volume.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    src = tmp_path / "src"
    expected = write_tree(src, tree_layout(TREE_SIZES), seed="compose")
    override = tmp_path / "override.yml"
    override.write_text(COMPOSE_OVERRIDE.format(src=src))
    project = "fusefstest"
    with shared_dir(home / "shared") as shared:
        mnt = shared / "data"
        env = {**engine.env, "FUSEFS_IMAGE": image, "TRAINER_IMAGE": base_image,
               "FUSEFS_HOME": str(home), "FUSEFS_SHARED": str(shared)}

        def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
            res = subprocess.run([compose, "-p", project, "-f",
                                  str(ROOT / "examples" / "docker-compose.yml"), "-f",
                                  str(override), *args], env=env, capture_output=True,
                                 text=True, timeout=timeout)
            assert res.returncode == 0, f"docker-compose {' '.join(args)}:\n" \
                                        f"{res.stdout[-3000:]}{res.stderr[-3000:]}"
            return res

        try:
            run("up", "-d")  # returns once the sidecar is healthy and the trainer started
            sidecar = run("ps", "-q", "fusefs").stdout.strip()
            trainer = run("ps", "-q", "trainer").stdout.strip()
            assert sidecar and trainer
            assert engine.out("wait", trainer) == "0", \
                engine.docker("logs", trainer, check=False).stderr.decode()[-3000:]
            assert engine.out("inspect", "-f", "{{.State.Health.Status}}", sidecar) == "healthy"
            assert_tree(mnt, expected)
            run("stop", "fusefs", timeout=120)
            code = engine.out("inspect", "-f", "{{.State.ExitCode}}", sidecar)
            logs = engine.docker("logs", sidecar).stderr.decode(errors="replace")
            assert code == "0", logs[-3000:]
            assert "signal 15: unmounting" in logs, logs[-3000:]
            assert not is_mounted(mnt), "a mount was left behind after the sidecar stopped"
        finally:
            subprocess.run([compose, "-p", project, "-f",
                            str(ROOT / "examples" / "docker-compose.yml"), "-f", str(override),
                            "down", "-t", "30"], env=env, capture_output=True, timeout=300)
            if is_mounted(mnt):
                fusermount_lazy(mnt)
    remount_and_compare(home / "volume", key, tmp_path / "hostmnt", expected)
    log(f"compose test: {time.monotonic() - t0:.1f} s")
