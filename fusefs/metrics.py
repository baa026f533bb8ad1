"""Prometheus metrics of the mount daemon (`fusefs mount --metrics ADDR:PORT`).

Off by default. The data path calls the hooks below (`fuse_started`, `fuse_done`,
`bytes_read`, `degraded_read`, `heal`, `cache_hit`, ...) unconditionally; while metrics are
off they are no-op functions, so a hook costs one call of an empty function. `enable()`
rebinds them to functions that update the collectors, so callers must look them up at call
time (`metrics.cache_hit()`, never `from fusefs.metrics import cache_hit`). Store requests
are counted by wrapping each store's methods (`instrument_stores`), which does nothing while
metrics are off: then the stores are not touched at all.

Series (every name has the `fusefs_` prefix; counters end in `_total`, durations are in
seconds, sizes in bytes):

  fusefs_fuse_requests_total{op}                 FUSE requests answered, by operation
  fusefs_fuse_request_duration_seconds{op}       histogram of their latency
  fusefs_fuse_errors_total{op,errno}             requests answered with an error (ENOENT..)
  fusefs_read_bytes_total / fusefs_written_bytes_total   bytes read / written through FUSE
  fusefs_store_requests_total{store,op}          store requests (get, get_range, put, ...)
  fusefs_store_request_duration_seconds{store,op}  histogram of their latency
  fusefs_store_errors_total{store,op,error}      failed store requests (missing, full, error)
  fusefs_degraded_reads_total                    chunk reads that needed more than the K
                                                 data shares (a share missing, bad or down)
  fusefs_unrecoverable_chunks_total              chunk reads with fewer than K good shares
  fusefs_heals_total{result}                     bad shares handled: healed, queued,
                                                 unrecoverable, obsolete
  fusefs_queued_repairs                          shares in the repair queue now
  fusefs_chunk_cache_hits_total / _misses_total  chunk reads served from the plaintext
                                                 cache / fetched from the stores
  fusefs_process_resident_memory_bytes (and the other fusefs_process_* series), and
  fusefs_process_peak_resident_memory_bytes      the daemon's memory

This module imports nothing from fusefs but `errors`: every layer may import it.
`prometheus_client` is imported only by `enable()`.
"""

from __future__ import annotations

import bisect
import errno
import threading
import time
from collections.abc import Callable
from typing import Any

from fusefs.errors import ConfigError, NoSuchObject, StoreFull

FUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0, 30.0)
# Store methods that are requests, as the op label names them (blocking variants count as
# the same request as their async one).
_ASYNC_OPS = {"get": "get", "get_range": "get_range", "put": "put", "delete": "delete",
              "delete_many": "delete_many", "list": "list", "sync": "sync"}
_BLOCKING_OPS = {"get_blocking": "get", "read_into_blocking": "get",
                 "get_range_blocking": "get_range", "put_blocking": "put"}

enabled = False


# -- the hooks: no-ops until enable() ----------------------------------------------------
def _nothing(*_args: Any) -> None:
    return None


def _zero() -> float:
    return 0.0


fuse_started: Callable[[], float] = _zero  # a FUSE request starts: returns its start time
fuse_done: Callable[[str, float], None] = _nothing  # (op, start time)
fuse_error: Callable[[str, int], None] = _nothing  # (op, errno)
bytes_read: Callable[[int], None] = _nothing
bytes_written: Callable[[int], None] = _nothing
degraded_read: Callable[[], None] = _nothing
unrecoverable_chunk: Callable[[], None] = _nothing
heal: Callable[[str], None] = _nothing  # (result)
cache_hit: Callable[[], None] = _nothing
cache_miss: Callable[[], None] = _nothing


def parse_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, `:PORT` (every address), `PORT`, `[V6ADDR]:PORT` -> (addr, port)."""
    text = text.strip()
    addr, sep, port = text.rpartition(":")
    if not sep:
        addr, port = "", text
    addr = addr.strip("[]") if addr.startswith("[") else addr
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number < 65536 or ("[" in addr or "]" in addr):
        raise ConfigError(f"--metrics {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9100 or "
                          ":9100")
    return addr or "0.0.0.0", number


class _Histogram:
    """One histogram series, cheap to observe: a bisect and two additions under a lock
    (prometheus_client's own takes a lock per bucket and per sum). Exposed at scrape time
    with cumulative buckets; its count is also the matching `_requests_total`."""

    __slots__ = ("bounds", "counts", "total", "lock")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)  # the first bound >= value ("le")
        with self.lock:
            self.counts[i] += 1
            self.total += value

    def snapshot(self) -> tuple[list[tuple[str, int]], int, float]:
        with self.lock:
            counts, total = list(self.counts), self.total
        buckets, running = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), counts, strict=True):
            running += n
            buckets.append((bound, running))
        return buckets, running, total


class _Counter:
    """A counter incremented on the read path: an addition under a lock."""

    __slots__ = ("value", "lock")

    def __init__(self) -> None:
        self.value = 0.0
        self.lock = threading.Lock()

    def inc(self, amount: float = 1) -> None:
        with self.lock:
            self.value += amount


class Exporter:
    """The collectors and the HTTP server that serves them (`/metrics`)."""

    def __init__(self) -> None:
        import prometheus_client as pc

        pc.disable_created_metrics()  # no `_created` series: they double the output
        self.registry = reg = pc.CollectorRegistry(auto_describe=True)
        # Hot: every FUSE request, store request and chunk load (see _Histogram).
        self.fuse: dict[str, _Histogram] = {}
        self.stores: dict[tuple[str, str], _Histogram] = {}
        self.read, self.written = _Counter(), _Counter()
        self.cache_hits, self.cache_misses = _Counter(), _Counter()
        # Rare: errors and damage (prometheus_client's own counters).
        self.fuse_errors = pc.Counter("fusefs_fuse_errors", "FUSE requests answered with an "
                                      "error", ["op", "errno"], registry=reg)
        self.store_errors = pc.Counter("fusefs_store_errors", "Failed store requests",
                                       ["store", "op", "error"], registry=reg)
        self.degraded = pc.Counter("fusefs_degraded_reads", "Chunk reads that needed more "
                                   "than the K data shares", registry=reg)
        self.unrecoverable = pc.Counter("fusefs_unrecoverable_chunks", "Chunk reads that "
                                        "found fewer than K good shares", registry=reg)
        self.heals = pc.Counter("fusefs_heals", "Bad shares handled, by result", ["result"],
                                registry=reg)
        for result in ("healed", "queued", "unrecoverable", "obsolete"):
            self.heals.labels(result)
        pc.ProcessCollector(namespace="fusefs", registry=reg)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        reg.register(_Collector(self))
        self._server: Any = None
        self._thread: Any = None

    # -- hooks -----------------------------------------------------------------------------
    def _fuse_done(self, op: str, t0: float) -> None:
        h = self.fuse.get(op)
        if h is None:
            h = self.fuse[op] = _Histogram(FUSE_BUCKETS)
        h.observe(time.perf_counter() - t0)

    def _fuse_error(self, op: str, err: int) -> None:
        self.fuse_errors.labels(op, errno.errorcode.get(err, str(err))).inc()

    def install(self) -> None:
        global fuse_started, fuse_done, fuse_error, bytes_read, bytes_written
        global degraded_read, unrecoverable_chunk, heal, cache_hit, cache_miss, enabled
        fuse_started = time.perf_counter
        fuse_done = self._fuse_done
        fuse_error = self._fuse_error
        bytes_read = self.read.inc
        bytes_written = self.written.inc
        degraded_read = self.degraded.inc
        unrecoverable_chunk = self.unrecoverable.inc
        heal = lambda result: self.heals.labels(result).inc()  # noqa: E731
        cache_hit = self.cache_hits.inc
        cache_miss = self.cache_misses.inc
        enabled = True

    def add_gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A gauge whose value `fn()` gives when scraped (from the HTTP server's thread)."""
        self.gauges[name] = (doc, fn)

    # -- stores ----------------------------------------------------------------------------
    def instrument(self, store: Any) -> None:
        """Count and time every request of `store` (wraps its methods on the instance)."""
        url = store.url
        for attr, op in _ASYNC_OPS.items():
            setattr(store, attr, self._wrap_async(getattr(store, attr), url, op))
        for attr, op in _BLOCKING_OPS.items():
            fn = getattr(store, attr, None)
            if fn is not None:
                setattr(store, attr, self._wrap_blocking(fn, url, op))

    def _store_series(self, url: str, op: str) -> tuple[_Histogram, Callable[[Exception], None]]:
        h = self.stores.get((url, op))
        if h is None:
            h = self.stores[(url, op)] = _Histogram(STORE_BUCKETS)
        errors = self.store_errors

        def failed(e: Exception) -> None:
            kind = ("missing" if isinstance(e, NoSuchObject) else
                    "full" if isinstance(e, StoreFull) else "error")
            errors.labels(url, op, kind).inc()

        return h, failed

    def _wrap_async(self, fn: Callable[..., Any], url: str, op: str) -> Callable[..., Any]:
        h, failed = self._store_series(url, op)
        observe, clock = h.observe, time.perf_counter

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return await fn(*args, **kwargs)
            except Exception as e:
                failed(e)
                raise
            finally:
                observe(clock() - t0)

        return timed

    def _wrap_blocking(self, fn: Callable[..., Any], url: str, op: str) -> Callable[..., Any]:
        h, failed = self._store_series(url, op)
        observe, clock = h.observe, time.perf_counter

        def timed(*args: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args)
            except Exception as e:
                failed(e)
                raise
            finally:
                observe(clock() - t0)

        return timed

    # -- serving ---------------------------------------------------------------------------
    def serve(self, addr: str, port: int) -> None:
        import prometheus_client as pc

        try:
            self._server, self._thread = pc.start_http_server(port, addr, self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}"
                              ) from None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Collector:
    """The hot series and the gauges, read when scraped."""

    def __init__(self, exporter: Exporter) -> None:
        self.x = exporter

    def describe(self) -> list:
        return []  # unchecked: the series are known only once seen

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        x = self.x
        for name, doc, series, labels in (
                ("fusefs_fuse_request", "FUSE requests", x.fuse, ["op"]),
                ("fusefs_store_request", "Store requests", x.stores, ["store", "op"])):
            latency = HistogramMetricFamily(f"{name}_duration_seconds", f"Latency of {doc}",
                                            labels=labels)
            count = CounterMetricFamily(f"{name}s", f"{doc} answered", labels=labels)
            for key, h in sorted(list(series.items())):
                values = [key] if isinstance(key, str) else list(key)
                buckets, n, total = h.snapshot()
                latency.add_metric(values, buckets, total)
                count.add_metric(values, n)
            yield latency
            yield count
        for name, doc, c in (
                ("fusefs_read_bytes", "Bytes read through FUSE", x.read),
                ("fusefs_written_bytes", "Bytes written through FUSE", x.written),
                ("fusefs_chunk_cache_hits", "Chunk reads served from the plaintext cache",
                 x.cache_hits),
                ("fusefs_chunk_cache_misses", "Chunk reads fetched from the stores",
                 x.cache_misses)):
            yield CounterMetricFamily(name, doc, value=c.value)
        peak = _peak_rss()
        if peak is not None:
            yield GaugeMetricFamily("fusefs_process_peak_resident_memory_bytes",
                                    "Peak resident memory of the daemon", value=peak)
        for name, (doc, fn) in list(x.gauges.items()):
            try:
                value = fn()
            except Exception:  # noqa: BLE001 - a scrape must not fail for one gauge
                continue
            yield GaugeMetricFamily(name, doc, value=value)


_exporter: Exporter | None = None


def enable() -> Exporter:
    """Turn metrics on for this process (idempotent) and return the exporter."""
    global _exporter
    if _exporter is None:
        _exporter = Exporter()
        _exporter.install()
    return _exporter


def instrument_stores(stores: list[Any]) -> None:
    """Count and time the stores' requests, when metrics are on; else do nothing."""
    if _exporter is not None:
        for store in stores:
            _exporter.instrument(store)


def start(address: str | None) -> Exporter | None:
    """Serve /metrics on ADDR:PORT (None: metrics stay off). ConfigError when the address
    is wrong or taken."""
    if not address:
        return None
    addr, port = parse_address(address)
    exporter = enable()
    exporter.serve(addr, port)
    return exporter


def _peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
