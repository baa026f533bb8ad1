"""The mount daemon's control socket: lets `fusefs scrub` (and later tools) work on a mounted
volume without unmounting it.

VOLUME/fusefs.sock. Only the daemon's user (and root, who could read the daemon's memory
anyway) may talk to it, enforced three times over:
  - it lives in the volume directory, which the mount made 0700 (`VolumeDir.make_private`):
    a directory of its own would add nothing once that one is private;
  - it is born 0600: bound under umask 077, not chmod-ed after bind (no window in which
    anyone could connect);
  - every connection's peer is checked (SO_PEERCRED: the uid the kernel recorded at
    connect): a stranger gets one error line and is logged, in case the directory was
    opened up by hand or the socket reached through a descriptor passed on.
Protocol: the client sends one JSON object per line ({"op": "snapshot"}, {"op": "compact"},
{"op": "scrub", "repair": true, "rate": null}, {"op": "fingerprint", "path": "/a/b",
"verify": false}, {"op": "version", "action": "create", "name": "v1", "path": "/a"},
"list", "delete", or {"op": "heal", "inode": N, "chunk": I, "version": HEX} from a direct
reader that found damage); the daemon answers with JSON lines: any number of {"progress":
[done, total, bytes]}, then one {"result": ...} or {"error": "message"}. The socket is bound
through /proc/self/fd so a long volume path cannot exceed the 108-byte limit of socket
addresses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from fusefs.errors import FusefsError
from fusefs.meta.repo import ChunkRow
from fusefs.versioning import Versioning
from fusefs.volume import Volume
from fusefs.volumedir import SOCKET_NAME

log = logging.getLogger(__name__)
T = TypeVar("T")

_PROGRESS_INTERVAL = 0.2  # seconds between progress messages
_REFUSAL_READ_TIMEOUT = 5  # seconds a refused client gets to send its request
HEAL_CHECKS = 4  # chunks handed over by direct readers that are read at once


def _address(volume_dir: Path) -> tuple[int, str]:
    fd = os.open(volume_dir, os.O_RDONLY | os.O_DIRECTORY)
    return fd, f"/proc/self/fd/{fd}/{SOCKET_NAME}"


class ControlServer:
    def __init__(self, volume_dir: Path, volume: Volume,
                 versioning: Versioning | None = None) -> None:
        self.path = volume_dir / SOCKET_NAME
        self.volume_dir = volume_dir
        self.volume = volume
        self.versioning = versioning
        self._scrub_lock = trio.Lock()
        self._background: trio.Nursery | None = None  # chunk checks asked for by `heal`
        self._checks = trio.CapacityLimiter(HEAL_CHECKS)
        self._version_lock = trio.Lock()  # one version change at a time

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.path.unlink(missing_ok=True)
        sock = trio.socket.from_stdlib_socket(_bind_private(self.volume_dir))
        sock.listen(4)
        task_status.started()
        try:
            async with trio.open_nursery() as self._background:
                await trio.serve_listeners(self._handle, [trio.SocketListener(sock)])
        finally:
            self.path.unlink(missing_ok=True)

    async def _handle(self, stream: trio.SocketStream) -> None:
        """Serve one client. Never raises: an error here would stop the whole mount."""
        try:
            async with stream:
                refusal = _refusal(stream.socket)
                if refusal:
                    log.warning("control socket: %s", refusal)
                    # take the request first: closing on unread data would make the
                    # client's send fail (EPIPE) before it could read why
                    with trio.move_on_after(_REFUSAL_READ_TIMEOUT), \
                            contextlib.suppress(FusefsError, UnicodeDecodeError):
                        await _read_line(stream)
                    await _send(stream, {"error": refusal})
                    return
                try:
                    request = json.loads(await _read_line(stream))
                    if request.get("op") == "scrub":
                        await self._scrub(stream, request)
                    elif request.get("op") == "snapshot":
                        await self._snapshot(stream)
                    elif request.get("op") == "compact":
                        await self._compact(stream)
                    elif request.get("op") == "heal":
                        await self._heal(stream, request)
                    elif request.get("op") in ("fingerprint", "version"):
                        await self._versions(stream, request)
                    else:
                        raise FusefsError(f"unknown request {request.get('op')!r}")
                except (FusefsError, ValueError) as e:
                    await _send(stream, {"error": str(e)})
                except Exception as e:
                    if _client_gone(e):
                        log.info("control client went away")
                        return
                    log.exception("control request failed")
                    await _send(stream, {"error": f"internal error: {e}"})
        except Exception as e:
            if not _client_gone(e):
                log.exception("control connection failed")

    async def _snapshot(self, stream: trio.SocketStream) -> None:
        publisher = self.volume.publisher
        if publisher is None:
            raise FusefsError("this mount does not publish snapshots (read-only or a "
                              "follower)")
        await self.volume.make_durable()
        seq = await publisher.publish(force=True)
        await _send(stream, {"result": {"seq": seq, "uploaded": publisher.uploaded_bytes}})

    async def _compact(self, stream: trio.SocketStream) -> None:
        if self.volume.compactor is None:
            raise FusefsError("this mount does not compact (read-only, or a volume without "
                              "packs)")
        report = await self.volume.compact()
        await self.volume.make_durable()
        await _send(stream, {"result": report.as_dict()})

    async def _heal(self, stream: trio.SocketStream, request: dict) -> None:
        """A reader beside the mount (the direct API, which never writes) found damage in a
        chunk: read it again here, the way the mount reads, which heals what it finds. All
        the client says is which chunk version to look at; it is answered at once."""
        volume = self.volume
        if not volume.healer.writes or volume.fenced:
            raise FusefsError("this mount does not write to the stores (read-only, a "
                              "follower, or fenced): `fusefs scrub` repairs the damage")
        try:
            ino, idx = int(request["inode"]), int(request["chunk"])
            oid = bytes.fromhex(request["version"])
        except (KeyError, TypeError, ValueError):
            raise FusefsError("malformed heal request") from None
        row = volume.meta.chunk_by_oid(ino, idx, oid)
        inode = volume.meta.get_inode(ino) if row is not None else None
        if row is None or inode is None or self._background is None:
            await _send(stream, {"result": {"checking": False}})  # rewritten meanwhile
            return
        self._background.start_soon(self._check, ino, inode.file_id, row)
        await _send(stream, {"result": {"checking": True}})

    async def _check(self, ino: int, file_id: bytes, row: ChunkRow) -> None:
        async with self._checks:
            try:
                await self.volume.read_chunk(ino, file_id, row)
            except FusefsError as e:  # unrecoverable, or stores down: recorded as such
                log.warning("chunk %d of inode %d, handed over by a direct reader: %s",
                            row.idx, ino, e)

    async def _scrub(self, stream: trio.SocketStream, request: dict) -> None:
        if self._scrub_lock.locked():
            raise FusefsError("a scrub of this volume is already running")
        async with self._scrub_lock:
            pending: list[tuple[int, int, int]] = []

            def progress(done: int, total: int, nbytes: int) -> None:
                pending[:] = [(done, total, nbytes)]

            scrubber = self.volume.scrubber(repair=bool(request.get("repair", True)),
                                            rate=request.get("rate"), progress=progress)
            report = await _reporting(stream, pending, scrubber.run())
            await _send(stream, {"result": report.as_dict()})

    async def _versions(self, stream: trio.SocketStream, request: dict) -> None:
        """Fingerprints and named versions (`versioning`)."""
        if self.versioning is None:
            raise FusefsError("this daemon does not serve versions")
        path = str(request.get("path") or "/")
        if request["op"] == "fingerprint":
            pending: list[tuple[int, int, int]] = []
            got = await _reporting(stream, pending, self.versioning.fingerprint(
                path, verify=bool(request.get("verify")),
                progress=lambda done, total: pending.__setitem__(slice(None),
                                                                 [(done, total, 0)])))
            await _send(stream, {"result": got})
            return
        action = request.get("action")
        if action == "list":
            await _send(stream, {"result": await self.versioning.list()})
            return
        if action not in ("create", "delete"):
            raise FusefsError(f"unknown version action {action!r}")
        async with self._version_lock:
            name = str(request.get("name") or "")
            if action == "create":
                result = await self.versioning.create(name, path)
            else:
                result = await self.versioning.delete(name)
        await _send(stream, {"result": result})


async def _reporting(stream: trio.SocketStream, pending: list[tuple[int, int, int]],
                     work: Awaitable[T]) -> T:
    """Await `work`, sending what it leaves in `pending` as progress every
    _PROGRESS_INTERVAL."""
    async with trio.open_nursery() as nursery:
        async def reporter() -> None:
            while True:
                await trio.sleep(_PROGRESS_INTERVAL)
                if pending:
                    await _send(stream, {"progress": list(pending.pop())})

        nursery.start_soon(reporter)
        result = await work
        nursery.cancel_scope.cancel()
    return result


def _bind_private(volume_dir: Path) -> socket.socket:
    """A Unix socket bound at VOLUME/fusefs.sock, mode 0600 from birth (umask 077 for the
    bind: the process-wide umask is only ever narrowed here, so a file another thread
    creates meanwhile can only come out more private)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd, addr = _address(volume_dir)
    old = os.umask(0o077)
    try:
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
        os.close(fd)
    return sock


def _refusal(sock: trio.socket.SocketType) -> str | None:
    """Why the peer of a connection may not use it, or None: only the daemon's uid and
    root may (SO_PEERCRED is the peer's identity when it connected)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    pid, uid, _gid = struct.unpack("iII", creds)
    own = os.geteuid()
    if uid in (own, 0):
        return None
    allowed = f"uid {own}" + (" and root" if own != 0 else "")
    return (f"permission denied: uid {uid} (pid {pid}) may not control this mount "
            f"(only {allowed} may)")


def _client_gone(e: BaseException) -> bool:
    """True for errors that only mean the client closed its end (maybe inside a group)."""
    if isinstance(e, BaseExceptionGroup):
        return all(_client_gone(x) for x in e.exceptions)
    return isinstance(e, trio.BrokenResourceError | trio.ClosedResourceError
                      | BrokenPipeError | ConnectionResetError)


async def _read_line(stream: trio.SocketStream, limit: int = 1 << 16) -> str:
    buf = b""
    while b"\n" not in buf:
        data = await stream.receive_some(4096)
        if not data:
            break
        buf += data
        if len(buf) > limit:
            raise FusefsError("request too long")
    return buf.split(b"\n", 1)[0].decode()


async def _send(stream: trio.SocketStream, message: dict) -> None:
    await stream.send_all(json.dumps(message).encode() + b"\n")


def request(volume_dir: Path, message: dict, timeout: float | None = None
            ) -> Iterator[dict]:
    """Client side (blocking): send one request, yield the daemon's messages. `timeout`
    bounds each wait for the daemon (None: wait as long as it works)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    fd, addr = _address(volume_dir)
    try:
        sock.connect(addr)
    except OSError as e:
        raise FusefsError(f"cannot reach the mount daemon of {volume_dir}: {e.strerror}") from None
    finally:
        os.close(fd)
    with sock, sock.makefile("rb") as f:
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            for line in f:
                yield json.loads(line)
        except OSError as e:
            raise FusefsError(f"lost the connection to the mount daemon of {volume_dir}: "
                              f"{e.strerror}") from None


def ask(volume_dir: Path, message: dict,
        progress: Callable[[int, int, int], None] | None = None) -> Any:
    """Client side: one request, its result (progress messages to `progress`); the
    daemon's error message raised as a FusefsError."""
    for msg in request(volume_dir, message):
        if "progress" in msg:
            if progress is not None:
                progress(*msg["progress"])
        elif "error" in msg:
            raise FusefsError(msg["error"])
        elif "result" in msg:
            return msg["result"]
    raise FusefsError("the mount daemon closed the connection before answering")
