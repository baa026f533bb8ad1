"""The volume directory: where a volume's state lives on this host, and how it is used.

VOLUME/fusefs.toml  config (volume id, K, M, chunk and segment size, stores, key check)
VOLUME/meta.db      metadata (SQLite WAL)
VOLUME/events.jsonl tamper and fault events
VOLUME/fusefs.log   daemon log (and the log of offline scrubs)
VOLUME/fusefs.pid   pid of the mounted daemon (removed on clean exit)
VOLUME/fusefs.lock  flock held by the mounted daemon or an offline repair: one at a time
VOLUME/fusefs.sock  the daemon's control socket
VOLUME/fusefs.key   master key, only when init was given no --key-file

Commands find a volume from a VOLUME or MOUNTPOINT argument (`resolve_target`), unlock it
with its key (a wrong key is refused before anything is read), lock it, and log into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import tomli_w

from fusefs.codec.keys import VolumeKeys, load_key_file
from fusefs.config import CONFIG_NAME, FORMAT, VolumeConfig, validate
from fusefs.errors import ConfigError, KeyFileError
from fusefs.mounts import MountEntry, find_by_mountpoint, find_by_volume


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
    default_key = property(lambda self: self.path / "fusefs.key")

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
        if cfg.format != FORMAT:
            raise ConfigError(f"volume {self.path} has format {cfg.format}; this fusefs "
                              f"understands format {FORMAT}")
        validate(cfg)
        return cfg

    def save(self, cfg: VolumeConfig) -> None:
        """Write the config atomically (a crash leaves the old or the new one)."""
        tmp = self.config.with_suffix(".tmp")
        with open(tmp, "wb") as f:
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
        keys = VolumeKeys(load_key_file(self.key_path(key_file)), cfg.volume_id_bytes)
        if not keys.matches(cfg.key_check):
            raise KeyFileError(f"wrong key for volume {self.path}")
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

    def log_here(self, to_stderr: bool) -> None:
        """Send this process's log to VOLUME/fusefs.log (and to stderr)."""
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
