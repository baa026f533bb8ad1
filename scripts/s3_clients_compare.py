#!/usr/bin/env python3
"""Compare S3 clients (boto3, obstore) called from 8 threads against a loopback moto server:
requests per second and client CPU per request (the server runs in its own process, so this
process's CPU time is the client's). Needs moto[server], boto3 and obstore installed."""

from __future__ import annotations

import concurrent.futures as cf
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from s3server import S3Server, use_test_credentials  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(label: str, put, get, size: int, n: int) -> None:
    data = os.urandom(size)
    with cf.ThreadPoolExecutor(8) as pool:
        t, c = time.perf_counter(), cpu_seconds()
        list(pool.map(lambda i: put(f"{label}/{size}/{i}", data), range(n)))
        put_s, put_cpu = time.perf_counter() - t, cpu_seconds() - c
        t, c = time.perf_counter(), cpu_seconds()
        got = list(pool.map(lambda i: get(f"{label}/{size}/{i}"), range(n)))
        get_s, get_cpu = time.perf_counter() - t, cpu_seconds() - c
    assert all(len(g) == size for g in got)
    print(f"{label:8s} {size // 1024:5d} KiB x{n}: put {n / put_s:6.0f}/s "
          f"({put_cpu / n * 1e3:.2f} ms client CPU each), get {n / get_s:6.0f}/s "
          f"({get_cpu / n * 1e3:.2f} ms client CPU each)")


def main() -> int:
    import boto3
    import obstore
    from botocore.config import Config
    from obstore.store import S3Store

    use_test_credentials()
    server = S3Server().start()
    try:
        server.create_bucket("cmp")
        b3 = boto3.client("s3", endpoint_url=server.endpoint, config=Config(
            max_pool_connections=16, s3={"addressing_style": "path"}))
        ob = S3Store("cmp", endpoint=server.endpoint, region="us-east-1",
                     access_key_id="test", secret_access_key="test",
                     client_options={"allow_http": True}, virtual_hosted_style_request=False)
        for size, n in ((100 * 1024, 300), (4 * 1024 * 1024, 30)):
            measure("boto3", lambda k, d: b3.put_object(Bucket="cmp", Key=k, Body=d),
                    lambda k: b3.get_object(Bucket="cmp", Key=k)["Body"].read(), size, n)
            measure("obstore", lambda k, d: obstore.put(ob, k, d),
                    lambda k: bytes(obstore.get(ob, k).bytes()), size, n)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
