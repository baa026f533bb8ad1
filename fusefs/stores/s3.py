"""A store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS's S3 interface).

URL: s3://bucket/prefix[?endpoint=http://host:port&region=...&profile=...]. Credentials and
region come from the standard AWS chain (environment, shared config and credentials files,
profile); the endpoint also from AWS_ENDPOINT_URL. With an endpoint, path-style addressing is
used (what MinIO and local servers expect). Layout: PREFIX/fusefs-store and
PREFIX/objects/<name>. A successful PUT is durable, so `sync` has nothing to do.

Client: boto3/botocore in worker threads (a pooled, thread-safe client per store; bounded by
a limiter), with botocore's standard retry mode: capped exponential backoff with jitter on
5xx, throttling and connection errors. Permanent errors (403, missing bucket) are reported at
`check` time, i.e. by init and mount, in one line.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import trio

from fusefs.errors import ConfigError, NoSuchObject, StoreError
from fusefs.stores.base import FIXED_NAMES, Store

_PARALLEL = 16  # concurrent requests per store (connection pool size too)
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DELETE_BATCH = 1000  # keys per DeleteObjects request (the S3 limit)


class S3Store(Store):
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise ConfigError(f"store URL {url!r}: use s3://bucket/prefix")
        self.url = url  # kept whole: the endpoint option must survive into the config
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region", "profile"}
        if unknown:
            raise ConfigError(f"store URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
        self.endpoint = query.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.region = query.get("region")
        self.profile = query.get("profile")
        self._client = None
        self._limiter = trio.CapacityLimiter(_PARALLEL)
        self._dirty = False

    # -- client --------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise ConfigError("s3:// stores need boto3 (pip install boto3)") from None
            config = Config(
                retries={"max_attempts": 6, "mode": "standard"},
                connect_timeout=5, read_timeout=30, max_pool_connections=_PARALLEL,
                s3={"addressing_style": "path"} if self.endpoint else {},
            )
            session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            self._client = session.client("s3", endpoint_url=self.endpoint, config=config)
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}" if name in FIXED_NAMES else f"{self.prefix}objects/{name}"

    def _error(self, what: str, name: str, e: Exception) -> StoreError:
        code = _code(e)
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"store {self.url}: access denied ({code}); check the "
                              "credentials")
        if code in ("NoSuchBucket",):
            return StoreError(f"store {self.url}: bucket {self.bucket} does not exist")
        return StoreError(f"store {self.url}: cannot {what} {name}: {code or e}")

    async def _run(self, fn, *args, abandon: bool = False):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter,
                                             abandon_on_cancel=abandon)

    # -- blocking parts ------------------------------------------------------------------
    def _get_sync(self, name: str, byte_range: str | None = None) -> bytes:
        extra = {"Range": byte_range} if byte_range else {}
        try:
            resp = self.client().get_object(Bucket=self.bucket, Key=self._key(name), **extra)
            return resp["Body"].read()
        except Exception as e:  # noqa: BLE001 - botocore raises many types; classify
            code = _code(e)
            if code in _MISSING_CODES:
                raise NoSuchObject(f"store {self.url}: object {name} is missing") from None
            if code in ("InvalidRange", "416"):
                return b""  # the range starts past the end: a short object
            raise self._error("read", name, e) from None

    def _put_sync(self, name: str, data: bytes | memoryview) -> None:
        try:
            self.client().put_object(Bucket=self.bucket, Key=self._key(name), Body=bytes(data))
        except Exception as e:  # noqa: BLE001
            raise self._error("write", name, e) from None

    def _delete_sync(self, name: str) -> None:
        try:
            self.client().delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as e:  # noqa: BLE001
            if _code(e) not in _MISSING_CODES:
                raise self._error("delete", name, e) from None

    def _delete_many_sync(self, names: list[str]) -> None:
        for at in range(0, len(names), _DELETE_BATCH):
            batch = names[at : at + _DELETE_BATCH]
            try:
                resp = self.client().delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._key(n)} for n in batch], "Quiet": True})
            except Exception as e:  # noqa: BLE001
                raise self._error("delete", f"{len(batch)} objects", e) from None
            errors = [e for e in resp.get("Errors", ()) if e.get("Code") not in _MISSING_CODES]
            if errors:
                raise StoreError(f"store {self.url}: cannot delete {errors[0].get('Key')}: "
                                 f"{errors[0].get('Code')} {errors[0].get('Message', '')}")

    def _list_sync(self) -> list[str]:
        start = f"{self.prefix}objects/"
        names: list[str] = []
        try:
            pages = self.client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start)
            for page in pages:
                names.extend(o["Key"][len(start):] for o in page.get("Contents", ()))
        except Exception as e:  # noqa: BLE001
            raise self._error("list", "objects", e) from None
        return names

    def _check_sync(self) -> None:
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            if _code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"store {self.url}: bucket {self.bucket} does not exist "
                                 "(fusefs does not create buckets)") from None
            raise self._error("reach", "bucket", e) from None

    # -- the async contract ------------------------------------------------------------
    async def get(self, name: str) -> bytes:
        return await self._run(self._get_sync, name, abandon=True)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return await self._run(self._get_sync, name, f"bytes={offset}-{offset + length - 1}",
                               abandon=True)

    async def put(self, name: str, data: bytes | memoryview) -> None:
        await self._run(self._put_sync, name, data)
        self._dirty = True

    async def delete(self, name: str) -> None:
        await self._run(self._delete_sync, name)

    async def delete_many(self, names: list[str]) -> None:
        await self._run(self._delete_many_sync, names)

    async def list(self) -> list[str]:
        return await self._run(self._list_sync)

    async def sync(self) -> None:
        """A PUT that returned is durable; still confirm the bucket is there (a deleted
        bucket took the puts with it), and keep failing until it is."""
        if self._dirty:
            await self._run(self._check_sync)
            self._dirty = False

    async def check(self, writable: bool) -> None:
        await self._run(self._check_sync)


def _code(e: Exception) -> str:
    """The S3 error code of a botocore exception ('' for others)."""
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    name = type(e).__name__
    return "ConnectionError" if "Connect" in name or "Endpoint" in name else ""
