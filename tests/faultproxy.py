"""A fault-injecting HTTP/1.1 reverse proxy for the S3 test server (issue 19).

One `FaultProxy` stands in front of one store: the store's URL names the proxy's endpoint,
and every request goes on to the real server (moto) with its method, path, query, headers
(the client's Host header included: SigV4 signs it) and body. From the test process, faults
are switched at run time, per request kind:

    GET     object reads, ranged (`Range:`) or whole
    PUT     object writes (and any other POST)
    DELETE  DELETE, and POST ?delete (multi-object delete)
    HEAD    HEAD of an object or of the bucket
    LIST    GET on the bucket (list-type=2)

Modes (`Fault.mode`):

    ok        forward
    503       answer 503 SlowDown (not forwarded)
    stall     hold the request `seconds`, then forward it or drop the connection (`then`);
              changing the faults (`set`, `clear`, `close`) releases held requests at once,
              and a released request is forwarded
    reset     read the request, then close the connection with an RST (SO_LINGER 0)
    truncate  forward; announce the full Content-Length, send half of the body, close (a
              response without a body is cut inside its headers)
    flip      forward; flip `flips` bytes of the response body
    replay    GET: answer with the bytes of another object of the same length that the proxy
              saw earlier (an older version of the same key preferred; a ranged GET gets the
              same range of an object of the same total length); else as `flip`
    404       answer 404 NoSuchKey (NoSuchBucket for bucket requests; not forwarded)

By default every matching request is faulted; `probability` (seeded, so deterministic)
and `limit` fault fewer, `only` restricts a fault to paths containing a string. Responses
whose bytes the proxy changed (truncate, flip, replay) lose their x-amz-checksum-* headers:
the store lies consistently, so what catches the damage is fusefs, not botocore.

`stats()` counts requests per kind (seen, faulted, ranged) so a test can check that a fault
was exercised. Use as a context manager, or call `close()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import random
import re
import socket
import struct
import sys
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KINDS = ("GET", "PUT", "DELETE", "HEAD", "LIST")
MODES = ("ok", "503", "stall", "reset", "truncate", "flip", "replay", "404")
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "expect",
        "content-length"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass(frozen=True)
class Fault:
    """What to do with the requests of one kind."""

    mode: str = "ok"
    seconds: float = 5.0  # stall: how long a request is held
    then: str = "forward"  # stall: afterwards "forward" or "drop" (close, no answer)
    probability: float = 1.0  # share of the matching requests that are faulted
    limit: int | None = None  # fault at most this many requests (None: no limit)
    flips: int = 1  # flip: how many bytes (spread over the body)
    only: str | None = None  # fault only requests whose path contains this

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fault mode {self.mode!r} is not one of {MODES}")
        if self.then not in ("forward", "drop"):
            raise ValueError(f"stall then={self.then!r}: use 'forward' or 'drop'")


OK = Fault()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up: expected
            super().handle_error(request, client_address)


class FaultProxy:
    """A reverse proxy on 127.0.0.1:<free port> in front of `upstream` (http://host:port)."""

    def __init__(self, upstream: str, *, seed: int = 0, memory_bytes: int = 64 << 20) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when faults change
        self._generation = 0
        self._closing = False
        self._faults: dict[str, Fault] = dict.fromkeys(KINDS, OK)
        self._used: Counter[str] = Counter()  # faults applied under the current settings
        self._rng = random.Random(seed)
        self.seen: Counter[str] = Counter()  # requests per kind
        self.faulted: Counter[str] = Counter()  # requests per kind that were faulted
        self.ranged: Counter[str] = Counter()  # requests per kind with a Range header
        self.replayed = 0  # replays that used another object's bytes
        self.replay_fallbacks = 0  # replays that found none and flipped bytes instead
        self.log: deque[tuple[str, str, str, str]] = deque(maxlen=5000)  # kind, method, path,
        #                                                                  mode (recent)
        # bodies seen (PUT requests, whole GET answers): length -> digest -> (path, bytes)
        self._memory: dict[int, OrderedDict[bytes, tuple[str, bytes]]] = {}
        self._memory_order: deque[tuple[int, bytes]] = deque()
        self._memory_used = 0
        self._memory_max = memory_bytes
        self._conns: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                         name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()

    # -- control (any thread) ------------------------------------------------------------
    def set(self, kinds: str | tuple[str, ...] | list[str], mode: str | Fault = "ok",
            **options) -> None:
        """Fault the requests of `kinds` ("GET", ..., or "*" for all) from now on."""
        fault = mode if isinstance(mode, Fault) else Fault(mode, **options)
        if isinstance(mode, Fault) and options:
            fault = replace(fault, **options)
        names = KINDS if kinds == "*" else (kinds,) if isinstance(kinds, str) else tuple(kinds)
        for kind in names:
            if kind not in KINDS:
                raise ValueError(f"request kind {kind!r} is not one of {KINDS}")
        with self._changed:
            for kind in names:
                self._faults[kind] = fault
                self._used[kind] = 0
            self._generation += 1
            self._changed.notify_all()

    def clear(self) -> None:
        """Every kind back to `ok`; held requests are released (forwarded)."""
        self.set("*", OK)

    def fault(self, kind: str) -> Fault:
        with self._lock:
            return self._faults[kind]

    def stats(self) -> dict[str, dict[str, int]]:
        """{"seen": {kind: n}, "faulted": {...}, "ranged": {...}} (a snapshot)."""
        with self._lock:
            return {"seen": dict(self.seen), "faulted": dict(self.faulted),
                    "ranged": dict(self.ranged)}

    def faulted_paths(self, kind: str) -> set[str]:
        """Paths of the recent requests of `kind` that were faulted."""
        with self._lock:
            return {path for k, _, path, mode in self.log if k == kind and mode != "ok"}

    def reset_stats(self) -> None:
        with self._lock:
            self.seen.clear()
            self.faulted.clear()
            self.ranged.clear()
            self.replayed = self.replay_fallbacks = 0
            self.log.clear()

    def close(self) -> None:
        """Stop serving: held requests are released, open connections shut down."""
        with self._changed:
            if self._closing:
                return
            self._closing = True
            self._generation += 1
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        active = {k: f.mode for k, f in self._faults.items() if f.mode != "ok"}
        return f"<FaultProxy {self.endpoint} -> {self.upstream[1]} faults={active}>"

    # -- request handling (handler threads) ----------------------------------------------
    def _decide(self, kind: str, method: str, path: str, ranged: bool) -> tuple[Fault, int]:
        """The fault for this request (OK when it passes), counted; and the generation."""
        with self._lock:
            self.seen[kind] += 1
            if ranged:
                self.ranged[kind] += 1
            fault = self._faults[kind]
            hit = (fault.mode != "ok"
                   and (fault.only is None or fault.only in path)
                   and (fault.limit is None or self._used[kind] < fault.limit)
                   and (fault.probability >= 1 or self._rng.random() < fault.probability))
            if hit:
                self._used[kind] += 1
                self.faulted[kind] += 1
            else:
                fault = OK
            self.log.append((kind, method, path, fault.mode))
            return fault, self._generation

    def _hold(self, seconds: float, generation: int) -> bool:
        """Wait `seconds` or until the faults change; True when released by a change."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._generation != generation or self._closing, timeout=seconds)

    def _remember(self, path: str, body: bytes) -> None:
        if not body or len(body) > self._memory_max:
            return
        key = hashlib.blake2b(body, digest_size=16).digest()
        with self._lock:
            bucket = self._memory.setdefault(len(body), OrderedDict())
            if key in bucket:
                bucket.move_to_end(key)
                return
            bucket[key] = (path, body)
            self._memory_order.append((len(body), key))
            self._memory_used += len(body)
            while self._memory_used > self._memory_max and self._memory_order:
                n, old = self._memory_order.popleft()
                entry = self._memory.get(n, {}).pop(old, None)
                if entry is not None:
                    self._memory_used -= n

    def _older(self, path: str, total: int, differs) -> bytes | None:
        """Another remembered body of length `total` for which `differs(body)` holds: one
        of the same path (an older version of the key) first, else the most recent."""
        with self._lock:
            entries = list(self._memory.get(total, {}).values())
        others = [(p, b) for p, b in reversed(entries) if differs(b)]
        for p, b in others:
            if p == path:
                return b
        return others[0][1] if others else None

    def _replay(self, path: str, status: int, headers: list[tuple[str, str]],
                body: bytes) -> bytes | None:
        """The bytes a replaying store would answer with, or None (no candidate)."""
        if status == 200:
            return self._older(path, len(body), lambda b: b != body)
        if status == 206:
            cr = next((v for k, v in headers if k.lower() == "content-range"), "")
            m = _CONTENT_RANGE.fullmatch(cr.strip())
            if m:
                a, b, total = (int(x) for x in m.groups())
                whole = self._older(path, total, lambda w: w[a : b + 1] != body)
                if whole is not None:
                    return whole[a : b + 1]
        return None

    def _flip(self, body: bytes, flips: int) -> bytes:
        if not body:
            return body
        out = bytearray(body)
        for j in range(max(1, flips)):
            at = (len(out) * (2 * j + 1)) // (2 * max(1, flips))
            out[min(at, len(out) - 1)] ^= 0x01 << (j % 8)
        return bytes(out)


def _kind(method: str, path: str, query: str) -> str:
    parts = path.lstrip("/").split("/", 1)
    has_key = len(parts) == 2 and parts[1] != ""
    if method == "HEAD":
        return "HEAD"
    if method == "DELETE" or (method == "POST" and "delete" in parse_qs(
            query, keep_blank_values=True)):
        return "DELETE"
    if method in ("PUT", "POST"):
        return "PUT"
    return "GET" if has_key else "LIST"


def _error_xml(code: str, message: str, resource: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><Resource>{resource}</Resource>"
            f"<RequestId>faultproxy</RequestId></Error>").encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    server: _Server
    _up: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.proxy._lock:
            self.server.proxy._conns.discard(self.connection)
        if self._up is not None:
            self._up.close()
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    # -- one request ---------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _serve(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        split = urlsplit(self.path)
        kind = _kind(self.command, split.path, split.query)
        fault, generation = proxy._decide(kind, self.command, split.path,
                                          "Range" in self.headers)
        mode = fault.mode
        if mode == "stall":
            released = proxy._hold(fault.seconds, generation)
            if fault.then == "drop" and not released:
                self.close_connection = True
                return
            mode = "ok"
        if mode == "503":
            self._answer(503, "Slow Down", _error_xml(
                "SlowDown", "Please reduce your request rate.", split.path))
            return
        if mode == "404":
            has_key = "/" in split.path.strip("/")
            code = "NoSuchKey" if has_key else "NoSuchBucket"
            self._answer(404, "Not Found", b"" if self.command == "HEAD" else _error_xml(
                code, "The specified key does not exist.", split.path))
            return
        if mode == "reset":
            self._reset()
            return
        try:
            status, reason, headers, rbody = self._forward(body)
        except OSError as e:
            self._answer(502, "Bad Gateway", _error_xml("BadGateway", str(e), split.path))
            return
        if kind == "PUT" and status == 200 and self.command == "PUT":
            proxy._remember(split.path, body)
        elif kind == "GET" and status == 200:
            proxy._remember(split.path, rbody)
        changed = False
        if mode == "replay":
            other = proxy._replay(split.path, status, headers, rbody) if kind == "GET" else None
            with proxy._lock:
                if other is None:
                    proxy.replay_fallbacks += 1
                else:
                    proxy.replayed += 1
            mode = "flip" if other is None else "ok"
            if other is not None:
                rbody, changed = other, True
        if mode == "flip":
            rbody, changed = proxy._flip(rbody, fault.flips), True
        if changed:
            headers = [(k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")]
        if mode == "truncate":
            self._truncated(status, reason, headers, rbody)
            return
        self._answer(status, reason, rbody, headers)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send this request on upstream (one kept-alive connection per client connection;
        one retry on a stale one). Returns status, reason, headers, body."""
        for attempt in (0, 1):
            if self._up is None:
                self._up = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
            try:
                up = self._up
                up.putrequest(self.command, self.path, skip_host=True,
                              skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in _HOP:
                        up.putheader(k, v)
                if body or self.command in ("PUT", "POST"):
                    up.putheader("Content-Length", str(len(body)))
                up.endheaders(body or None)
                resp = up.getresponse()
                rbody = resp.read()
                headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP
                           or (k.lower() == "content-length" and self.command == "HEAD")]
                if resp.will_close:
                    self._up.close()
                    self._up = None
                return resp.status, resp.reason, headers, rbody
            except (http.client.HTTPException, OSError):
                self._up.close()
                self._up = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _answer(self, status: int, reason: str, body: bytes,
                headers: list[tuple[str, str]] = ()) -> None:
        self.send_response_only(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        elif not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", "0")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _truncated(self, status: int, reason: str, headers: list[tuple[str, str]],
                   body: bytes) -> None:
        self.close_connection = True
        if self.command == "HEAD" or not body:
            head = f"HTTP/1.1 {status} {reason}\r\n".encode()
            self.wfile.write(head[: len(head) // 2])
            return
        self.send_response_only(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])

    def _reset(self) -> None:
        """Close with an RST: SO_LINGER 0, then drop every reference to the socket."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        self.connection.close()
        self.rfile.close()
