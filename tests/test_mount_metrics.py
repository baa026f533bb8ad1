"""Prometheus metrics (`fusefs mount --metrics ADDR:PORT`, issue 15 "Done when" 4): /metrics
serves every listed series over real HTTP while a volume with a damaged store is read, and
the counters move as they should (degraded reads, heals, store errors, bytes, cache)."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    MiB,
    Mounter,
    assert_fails,
    rand_bytes,
    read_uncached,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

SERIES = [
    "fusefs_fuse_requests_total", "fusefs_fuse_request_duration_seconds_bucket",
    "fusefs_fuse_request_duration_seconds_count", "fusefs_fuse_errors_total",
    "fusefs_read_bytes_total", "fusefs_written_bytes_total",
    "fusefs_store_requests_total", "fusefs_store_request_duration_seconds_bucket",
    "fusefs_store_errors_total", "fusefs_degraded_reads_total",
    "fusefs_unrecoverable_chunks_total", "fusefs_heals_total", "fusefs_queued_repairs",
    "fusefs_chunk_cache_hits_total", "fusefs_chunk_cache_misses_total",
    "fusefs_process_resident_memory_bytes", "fusefs_process_peak_resident_memory_bytes",
]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def metrics_url(vol) -> str:
    log = (vol.path / "fusefs.log").read_text()
    m = re.findall(r"metrics on http://([^:]+):(\d+)/metrics", log)
    assert m, "the daemon did not log where it serves metrics"
    return f"http://127.0.0.1:{m[-1][1]}/metrics"


def test_metrics_during_a_read_with_a_damaged_store(tmp_path: Path, volume, mounter: Mounter):
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    files = {mnt / f"f{i}.bin": rand_bytes(6 * MiB + i, f"metrics{i}") for i in range(4)}
    for p, data in files.items():
        p.write_bytes(data)
    mounter.umount(mnt)
    emptied = vol.stores[0]
    removed = [p for p in (emptied / "objects").rglob("*") if p.is_file()]
    assert removed, "store 0 holds no shares"
    for p in removed:
        p.unlink()

    mounter.mount(vol, mnt, "--metrics", "127.0.0.1:0")
    url = metrics_url(vol)
    before = scrape(url)
    for name in ("fusefs_degraded_reads_total", "fusefs_unrecoverable_chunks_total"):
        assert total(before, name) == 0, name

    assert not (mnt / "no-such-file").exists()  # a lookup answered with ENOENT
    done = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        try:
            for p, data in files.items():
                if read_uncached(p) != data:
                    errors.append(f"{p}: wrong bytes")
        finally:
            done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    during = []
    while not done.is_set():  # scrapes while the read goes on
        during.append(scrape(url))
    t.join(60)
    assert not errors, errors
    assert during, "no scrape happened during the read"

    size = sum(len(d) for d in files.values())
    url_of_emptied = f"file://{emptied}"
    # Each degraded read (a data share missing from store 0) heals that share, in the
    # background: wait for the heals (the read itself is done).
    degraded = total(scrape(url), "fusefs_degraded_reads_total")
    assert degraded >= 1, "no read was degraded although store 0 is empty"
    assert wait_until(lambda: total(scrape(url), "fusefs_heals_total", result="healed")
                      >= degraded, 30), "the shares found missing were not healed"
    after = scrape(url)
    missing = {(n, ls) for (n, ls) in after if n in SERIES}
    names = {n for n, _ in missing}
    assert set(SERIES) <= names, f"series missing from /metrics: {sorted(set(SERIES) - names)}"
    assert total(after, "fusefs_degraded_reads_total") >= 1
    assert total(after, "fusefs_fuse_errors_total", op="lookup", errno="ENOENT") >= 1
    assert total(after, "fusefs_unrecoverable_chunks_total") == 0
    assert total(after, "fusefs_read_bytes_total") >= size
    assert total(after, "fusefs_fuse_requests_total", op="read") >= 1
    assert total(after, "fusefs_fuse_request_duration_seconds_count", op="read") == \
        total(after, "fusefs_fuse_requests_total", op="read")
    assert total(after, "fusefs_store_errors_total", store=url_of_emptied, error="missing") >= 1
    assert total(after, "fusefs_store_requests_total", store=url_of_emptied, op="put") >= \
        degraded, "the heals' puts to the emptied store were not counted"
    assert total(after, "fusefs_chunk_cache_misses_total") >= 1
    assert total(after, "fusefs_queued_repairs") == 0
    assert total(after, "fusefs_process_resident_memory_bytes") > 10 * MiB
    assert total(after, "fusefs_process_peak_resident_memory_bytes") >= \
        total(after, "fusefs_process_resident_memory_bytes") * 0.5
    # Counters never go back.
    for key, value in during[-1].items():
        if key[0].endswith("_total") and key in after:
            assert after[key] >= value, key

    # Reading again: served from the chunk cache (the page cache is dropped).
    hits = total(after, "fusefs_chunk_cache_hits_total")
    p, data = next(iter(files.items()))
    assert read_uncached(p) == data
    assert total(scrape(url), "fusefs_chunk_cache_hits_total") > hits
    # Writes count their bytes.
    (mnt / "new.bin").write_bytes(b"x" * 12345)
    assert total(scrape(url), "fusefs_written_bytes_total") >= 12345
    mounter.umount(mnt)
    with pytest.raises(OSError):
        scrape(url)  # the endpoint goes with the daemon


def test_metrics_are_off_by_default(tmp_path: Path, volume, mounter: Mounter):
    vol = volume()
    mnt = mounter.mount(vol, tmp_path / "mnt")
    (mnt / "f").write_bytes(b"data")
    assert "metrics on" not in (vol.path / "fusefs.log").read_text()
    mounter.umount(mnt)


def test_metrics_address_taken_or_wrong(tmp_path: Path, volume, mounter: Mounter):
    vol = volume()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = mounter.try_mount(vol, mnt, "--metrics", f"127.0.0.1:{port}")
        assert_fails(res, contains=["cannot serve metrics"])
    res = mounter.try_mount(vol, mnt, "--metrics", "nonsense")
    assert_fails(res, contains=["ADDR:PORT"])
