"""Object stores: flat key -> bytes maps holding opaque, encrypted shares.

`open_store` builds a store from its URL; `base.Store` is the contract every backend keeps.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fusefs.errors import ConfigError
from fusefs.stores.base import Store
from fusefs.stores.local import LocalStore

__all__ = ["Store", "open_store"]


def open_store(url: str) -> Store:
    """Build a store from its URL: file:///abs/path (or a bare absolute path), s3://bucket/prefix."""
    parts = urlsplit(url)
    if parts.scheme == "" and url.startswith("/"):
        return LocalStore(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: use file:///absolute/path")
        return LocalStore(parts.path)
    if parts.scheme == "s3":
        from fusefs.stores.s3 import S3Store  # only now: importing boto3 takes a while

        return S3Store(url)
    if parts.scheme == "":
        raise ConfigError(f"store URL {url!r}: use file:///absolute/path or an absolute path")
    raise ConfigError(f"store URL {url!r}: unknown scheme {parts.scheme!r} "
                      "(supported: file, s3)")
