"""Tamper evidence: every detected problem becomes one JSON line in VOLUME/events.jsonl.

An event says when, what kind, which store and object, which file and chunk, and what was
done about it. `fusefs status` summarises them; the vocabulary is stable for scripts:

kind:   missing, checksum_mismatch, authentication_failure (a forged or misplaced share),
        store_unreachable, store_full, store_read_only, unexpected_object (an orphan in a
        store), store_replaced (a store without a marker, holding only this volume's
        objects), marker_damaged (a store whose marker is damaged, same), store_in_doubt (a
        store that may not be this volume's: another volume's marker, another store's, or
        objects this volume never placed there), store_slow (a share a hedged write left to
        finish in the background and that did not arrive), write_lost (a power loss took
        the shares of changes made after the last durable point)
action: healed, queued (for the repair queue), unrecoverable (fewer than K good shares: the
        read failed with EIO), reported (scrub --no-repair, or a mount that may not write),
        removed (orphan deleted), bypassed (a store skipped for a while), claimed (a fresh
        marker written), read_only (the store is read, never written or deleted from),
        obsolete (the chunk was rewritten before the heal), restored (after a power loss,
        the version of the last durable point was put back)
version: the oid of the chunk version concerned (hex; it stays on this host, like the
        metadata), so `status` can tell damage that a rewrite has since replaced
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, path: Path | None, *,
                 first: Callable[[dict], None] | None = None) -> None:
        """`first` (a reader inside someone else's program: the direct API) replaces the
        log line per event: it is called with the first event only, the rest go to the
        file alone (a whole store lost would otherwise be a line per chunk on stderr)."""
        self.path = path
        self.resolve_path: Callable[[int], str | None] = lambda ino: None
        self.count = 0
        self.first = first

    def record(self, kind: str, *, action: str, store: str | None = None,
               obj: str | None = None, inode: int | None = None, chunk: int | None = None,
               version: bytes | None = None, detail: str | None = None) -> None:
        """Append one event; never raises (a full disk must not break a read)."""
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kind": kind,
                 "store": store, "object": obj, "inode": inode, "chunk": chunk,
                 "action": action}
        if inode is not None:
            try:
                event["file"] = self.resolve_path(inode)
            except Exception:  # noqa: BLE001 - an event must be recorded even so
                event["file"] = None
        if version is not None:  # which chunk version (its oid): `status` tells a rewrite
            event["version"] = version.hex()
        if detail:
            event["detail"] = detail
        self.count += 1
        if self.first is None:
            log.warning("event: %s", json.dumps(event))
        elif self.count == 1:
            self.first(event)
        if self.path is None:
            return
        try:
            with open(self.path, "a", opener=_private) as f:
                f.write(json.dumps(event) + "\n")
        except OSError as e:
            log.error("cannot append to event log %s: %s", self.path, e)


def _private(path: str, flags: int) -> int:
    """Create the event log 0600 whatever the umask: it names files (see `volumedir`)."""
    return os.open(path, flags, 0o600)


def read_events(path: Path) -> list[dict]:
    """All events of a volume (missing log: none); broken lines are skipped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
