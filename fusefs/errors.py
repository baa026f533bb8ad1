"""Exceptions shared by every layer.

`FusefsError` carries a message written for the user: the CLI prints it as one line and
exits 1. `FsError` carries an errno for the POSIX layer; the FUSE adapter turns it into
`FUSEError`. Store errors say which store and which object, so events can name them.
`warn` is the one way a command tells the user about something it goes on despite.
"""

from __future__ import annotations

import errno
import sys


def warn(message: str) -> None:
    """One line on stderr: `fusefs: warning: MESSAGE` (the command goes on)."""
    print(f"fusefs: warning: {message}", file=sys.stderr, flush=True)


class FusefsError(Exception):
    """A failure the user can act on; `str()` is the one-line message."""


class ConfigError(FusefsError):
    """The volume directory or its configuration is missing or broken."""


class KeyFileError(FusefsError):
    """The key is missing, unreadable or does not belong to the volume."""


class StoreError(FusefsError):
    """A store could not be reached or refused an operation."""


class NoSuchObject(StoreError):
    """The object does not exist in the store (it may have been deleted or never written)."""


class StoreFull(StoreError):
    """The store has no space left."""


class ChunkUnrecoverable(FusefsError):
    """Fewer than K good shares exist for a chunk: the read must fail with EIO."""


class ChunkReplaced(FusefsError):
    """The chunk version being read is no longer the file's: a writer replaced it and its
    shares are gone (a reader beside a writing mount). Not damage: read the new metadata."""


class FsError(Exception):
    """A POSIX error with an errno, raised by the filesystem layer."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(msg or errno.errorcode.get(err, str(err)))
        self.errno = err
