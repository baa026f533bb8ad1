"""The volume directory: where a volume's state lives on this host, and how it is used.

VOLUME/fusefs.toml  config (volume id, K, M, chunk and segment size, stores, key check)
VOLUME/meta.db      metadata (SQLite WAL)
VOLUME/events.jsonl tamper and fault events
VOLUME/fusefs.log   daemon log (and the log of offline scrubs)
VOLUME/fusefs.pid   pid of the mounted daemon (removed on clean exit)
VOLUME/fusefs.lock  flock held by the mounted daemon or an offline repair: one at a time
VOLUME/fusefs.sock  the daemon's control socket (`control`)
VOLUME/fusefs.key   master key, only when init was given no --key-file

Commands find a volume from a VOLUME or MOUNTPOINT argument (`resolve_target`), unlock it
with its key (a wrong key is refused before anything is read), lock it, and log into it.

Private: the metadata names every file, its size and xattrs, so the directory is 0700 and
everything fusefs writes in it 0600. The CLI runs with umask 077 (`cli.main`), the files
created here also ask for 0600 themselves, and `make_private` tightens a directory left
open by an older fusefs (at mount and offline scrub). The key file is the user's: a loose
one gets a warning (`codec.keys.warn_if_exposed`), never a chmod.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import tomli_w

from fusefs.codec.keys import VolumeKeys, load_key_file, warn_if_exposed
from fusefs.config import CONFIG_NAME, FORMATS, VolumeConfig, validate
from fusefs.errors import ConfigError, KeyFileError
from fusefs.mounts import MountEntry, find_by_mountpoint, find_by_volume

log = logging.getLogger(__name__)

SOCKET_NAME = "fusefs.sock"


def create_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """Open `path` for writing, created 0600 whatever the umask; an existing file keeps
    its mode (`make_private` deals with those)."""
    return os.open(path, flags, 0o600)


class VolumeDir:
    """A volume directory: the paths in it and the operations on it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).absolute()

    config = property(lambda self: self.path / CONFIG_NAME)
    meta = property(lambda self: self.path / "meta.db")
    events = property(lambda self: self.path / "events.jsonl")
    log = property(lambda self: self.path / "fusefs.log")
    pid = property(lambda self: self.path / "fusefs.pid")
    lock_file = property(lambda self: self.path / "fusefs.lock")
    socket = property(lambda self: self.path / SOCKET_NAME)
    default_key = property(lambda self: self.path / "fusefs.key")
    seen = property(lambda self: self.path / "seen.json")  # newest snapshot this host saw
    snapshot_files = property(lambda self: [self.path / "snapshots.db",
                                            self.path / "snapshot.db"])

    def own_files(self) -> list[Path]:
        """Every file fusefs writes here (not the key: that one is the user's)."""
        meta = str(self.meta)
        return [self.config, self.config.with_suffix(".tmp"), self.meta, Path(meta + "-wal"),
                Path(meta + "-shm"), self.events, self.log, self.pid, self.lock_file,
                self.socket, self.seen, *self.snapshot_files]

    def make_private(self) -> list[str]:
        """Take group and other bits off the directory and the files fusefs keeps in it
        (left by an older fusefs or an open umask); log one line when anything changed.
        Returns what changed ("name 0644"); an error (not our directory) is logged."""
        changed = []
        for p in [self.path, *self.own_files()]:
            try:
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077:
                    continue
                os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("cannot make %s private: %s", p, e.strerror)
                continue
            changed.append(f"{'.' if p == self.path else p.name} {stat.S_IMODE(st.st_mode):04o}")
        if changed:
            log.warning("volume directory %s was readable by other users; made it private "
                        "(0700, files 0600); was: %s", self.path, ", ".join(changed))
        return changed

    def is_volume(self) -> bool:
        return self.config.is_file()

    def load(self) -> VolumeConfig:
        """The volume's config; ConfigError when this is no volume or its config is broken."""
        if not self.path.is_dir():
            raise ConfigError(f"{self.path} does not exist or is not a directory")
        if not self.is_volume():
            raise ConfigError(f"{self.path} is not a fusefs volume (no {CONFIG_NAME})")
        try:
            raw = tomllib.loads(self.config.read_text())
            cfg = VolumeConfig(**raw)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"volume config {self.config} is broken: {e}") from None
        if cfg.format not in FORMATS:
            raise ConfigError(f"volume {self.path} has format {cfg.format}; this fusefs "
                              f"understands formats {', '.join(map(str, FORMATS))}")
        validate(cfg)
        return cfg

    def save(self, cfg: VolumeConfig) -> None:
        """Write the config atomically (a crash leaves the old or the new one)."""
        tmp = self.config.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # a leftover keeps its mode; a new one is 0600
        with os.fdopen(create_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
            tomli_w.dump(asdict(cfg), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.config)

    def key_path(self, key_file: str | None) -> Path:
        """The key file to use: the one given, else VOLUME/fusefs.key."""
        if key_file:
            return Path(key_file)
        if self.default_key.exists():
            return self.default_key
        raise KeyFileError(f"no --key-file given and {self.default_key} does not exist")

    def unlock(self, key_file: str | None) -> tuple[VolumeConfig, VolumeKeys]:
        """Load the config and the key; refuse a key that is not this volume's."""
        cfg = self.load()
        path = self.key_path(key_file)
        keys = VolumeKeys(load_key_file(path), cfg.volume_id_bytes)
        if not keys.matches(cfg.key_check):
            raise KeyFileError(f"wrong key for volume {self.path}")
        warn_if_exposed(path)
        return cfg, keys

    def lock(self) -> int:
        """Take the volume's flock (one mount or offline repair at a time); the caller
        holds the returned descriptor for as long as it works on the volume."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = ""
            with contextlib.suppress(OSError):
                pid = f" (daemon pid {self.pid.read_text().strip()})"
            raise ConfigError(f"volume {self.path} is already mounted{pid}") from None
        return fd

    def write_pid(self) -> None:
        self.pid.unlink(missing_ok=True)  # a stale one keeps its mode; a new one is 0600
        fd = create_private(self.pid, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")

    def log_here(self, to_stderr: bool) -> None:
        """Send this process's log to VOLUME/fusefs.log (and to stderr)."""
        os.close(create_private(self.log))
        handlers: list[logging.Handler] = [logging.FileHandler(self.log)]
        if to_stderr:
            handlers.append(logging.StreamHandler(sys.stderr))
        logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def resolve_target(target: str) -> tuple[VolumeDir, MountEntry | None]:
    """The volume a VOLUME or MOUNTPOINT argument names, and its live mount if any."""
    vd = VolumeDir(target)
    if vd.is_volume():
        return vd, find_by_volume(vd.path)
    entry = find_by_mountpoint(target)
    if entry is not None:
        return VolumeDir(entry.volume), entry
    raise ConfigError(f"{target} is neither a fusefs volume nor a mounted fusefs volume")
