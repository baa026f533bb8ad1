"""The fault-injecting proxy itself (tests/faultproxy.py), against the moto S3 server with a
boto3 client that does not retry: each mode does what it says, per request kind, and the
counters tell what happened."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from helpers import wait_until


@pytest.fixture
def proxy(s3_server):
    from faultproxy import FaultProxy

    with FaultProxy(s3_server.endpoint) as p:
        yield p


@pytest.fixture
def s3(proxy, s3_server):
    """(client through the proxy, bucket) with two objects of the same length."""
    import boto3
    from botocore.config import Config

    bucket = s3_server.create_bucket(f"proxy-{uuid.uuid4().hex[:12]}")
    client = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1",
                          config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                        read_timeout=10,
                                        connect_timeout=5, s3={"addressing_style": "path"}))
    client.put_object(Bucket=bucket, Key="p/a", Body=b"A" * 1000)
    client.put_object(Bucket=bucket, Key="p/b", Body=b"B" * 1000)
    return client, bucket


def get(client, bucket: str, key: str = "p/a", **kw) -> bytes:
    return client.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()


def code(exc: BaseException) -> str:
    """The S3 error code, or the exception's class name."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(exc).__name__)


def test_forwards_every_kind_and_counts(proxy, s3) -> None:
    client, bucket = s3
    proxy.reset_stats()
    assert get(client, bucket) == b"A" * 1000
    assert get(client, bucket, Range="bytes=10-19") == b"A" * 10
    client.put_object(Bucket=bucket, Key="p/c", Body=b"")
    assert client.list_objects_v2(Bucket=bucket, Prefix="p/")["KeyCount"] == 3
    client.head_bucket(Bucket=bucket)
    client.delete_object(Bucket=bucket, Key="p/c")
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "p/x"}]})
    stats = proxy.stats()
    assert stats["seen"] == {"GET": 2, "PUT": 1, "LIST": 1, "HEAD": 1, "DELETE": 2}, stats
    assert stats["ranged"] == {"GET": 1} and stats["faulted"] == {}, stats


@pytest.mark.parametrize(("mode", "expected"), [
    ("503", "SlowDown"), ("404", "NoSuchKey"), ("reset", "ConnectionClosedError"),
    ("truncate", "ResponseStreamingError")])
def test_failing_modes(proxy, s3, mode: str, expected: str) -> None:
    client, bucket = s3
    proxy.set("GET", mode)
    with pytest.raises(Exception) as err:  # noqa: B017 - botocore raises many types
        get(client, bucket)
    assert code(err.value) == expected, repr(err.value)
    assert proxy.stats()["faulted"] == {"GET": 1}
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 2  # other kinds pass
    proxy.set("LIST", "404")
    with pytest.raises(Exception) as err:  # noqa: B017
        client.list_objects_v2(Bucket=bucket)
    assert code(err.value) == "NoSuchBucket"
    proxy.clear()
    assert get(client, bucket) == b"A" * 1000


def test_flip_and_replay(proxy, s3) -> None:
    client, bucket = s3
    proxy.set("GET", "flip", flips=3)
    got = get(client, bucket)  # no checksum header left for botocore to object to
    assert sum(x != y for x, y in zip(got, b"A" * 1000, strict=True)) == 3
    proxy.set("GET", "replay")
    assert get(client, bucket, "p/a") == b"B" * 1000  # the other object of that length
    assert get(client, bucket, "p/b") == b"A" * 1000
    assert get(client, bucket, "p/a", Range="bytes=5-9") == b"B" * 5
    client.put_object(Bucket=bucket, Key="p/a", Body=b"C" * 1000)  # an older version of p/a
    assert get(client, bucket, "p/a") == b"A" * 1000
    client.put_object(Bucket=bucket, Key="p/odd", Body=b"D" * 77)  # no other of its length
    got = get(client, bucket, "p/odd")
    assert got != b"D" * 77 and len(got) == 77
    assert (proxy.replayed, proxy.replay_fallbacks) == (4, 1)


def test_stall_forward_drop_and_release(proxy, s3) -> None:
    client, bucket = s3
    proxy.set("GET", "stall", seconds=0.5)
    t0 = time.monotonic()
    assert get(client, bucket) == b"A" * 1000
    assert time.monotonic() - t0 >= 0.5
    proxy.set("GET", "stall", seconds=0.5, then="drop")
    with pytest.raises(Exception) as err:  # noqa: B017
        get(client, bucket)
    assert "Connection" in code(err.value), repr(err.value)
    # a held request is released (and forwarded) as soon as the faults change
    proxy.set("GET", "stall", seconds=60, then="drop")
    before = proxy.stats()["faulted"]["GET"]
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(get(client, bucket)))
    t0 = time.monotonic()
    t.start()
    assert wait_until(lambda: proxy.stats()["faulted"]["GET"] > before, 10)
    proxy.clear()
    t.join(10)
    assert out == [b"A" * 1000] and time.monotonic() - t0 < 10


def test_limit_probability_and_only(proxy, s3) -> None:
    client, bucket = s3
    proxy.set("GET", "404", limit=2)
    outcomes = []
    for _ in range(4):
        try:
            get(client, bucket)
            outcomes.append("ok")
        except Exception as e:  # noqa: BLE001
            outcomes.append(code(e))
    assert outcomes == ["NoSuchKey", "NoSuchKey", "ok", "ok"]
    proxy.set("GET", "404", only="/p/b")
    assert get(client, bucket, "p/a") == b"A" * 1000
    with pytest.raises(Exception):  # noqa: B017
        get(client, bucket, "p/b")
    proxy.set("GET", "flip", probability=0.5)
    flipped = sum(get(client, bucket) != b"A" * 1000 for _ in range(40))
    assert 5 < flipped < 35, flipped  # seeded: the same count every run
