"""`fusefs fingerprint PATH` and `fusefs version create|list|delete MOUNTPOINT ...`: the
client side (the daemon's side is `versioning`, reached through the control socket).

`fingerprint` prints `HEX  PATH` (like sha256sum); exit 1 when `--verify` finds bytes that
differ from what the metadata records. Version commands need a mounted volume and the
daemon's user (or root): versions are made, listed and deleted by the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from fusefs.errors import ConfigError
from fusefs.mounts import find_by_mountpoint
from fusefs.pathdigest import fingerprint as path_fingerprint
from fusefs.progress import Progress


def fingerprint(args: argparse.Namespace) -> int:
    bar = Progress("verify", "chunk", bar=sys.stderr.isatty() and not args.json)
    try:
        got = path_fingerprint(args.path, verify=args.verify,
                               progress=bar.update if args.verify else None)
    finally:
        bar.close()
    bad = got.get("mismatches") or []
    differs = args.verify and got.get("recorded", got["fingerprint"]) != got["fingerprint"]
    if args.json:
        print(json.dumps({"path": args.path, **got}, indent=2))
    else:
        print(f"{got['fingerprint']}  {args.path}")
        for line in bad[:20]:
            print(f"fusefs: {line}", file=sys.stderr)
        if differs:
            print(f"fusefs: the metadata records {got['recorded']}, the bytes read give "
                  f"{got['fingerprint']}", file=sys.stderr)
    return 1 if bad or differs else 0


def _mount_of(mountpoint: str) -> str:
    entry = find_by_mountpoint(mountpoint)
    if entry is None:
        raise ConfigError(f"{mountpoint} is not a mounted fusefs volume")
    return str(entry.volume)


def _ask(mountpoint: str, message: dict) -> dict | list:
    from pathlib import Path

    from fusefs.control import ask

    return ask(Path(_mount_of(mountpoint)), message)


def _inside(mountpoint: str, path: str | None) -> str:
    """PATH (absolute and under MOUNTPOINT, or relative to MOUNTPOINT) as a path inside the
    volume, symlinks resolved through the mount."""
    top = os.path.realpath(mountpoint)
    if path is None:
        return "/"
    real = os.path.realpath(path if os.path.isabs(path) else os.path.join(top, path))
    if real != top and not real.startswith(top.rstrip("/") + "/"):
        raise ConfigError(f"{path} is not inside the mount {mountpoint}")
    if not os.path.isdir(real):
        raise ConfigError(f"{path} is not a directory in the mount")
    return "/" + os.path.relpath(real, top) if real != top else "/"


def version(args: argparse.Namespace) -> int:
    if args.verb == "create":
        got = _ask(args.mountpoint, {"op": "version", "action": "create", "name": args.name,
                                     "path": _inside(args.mountpoint, args.path)})
        assert isinstance(got, dict)
        if args.json:
            print(json.dumps(got, indent=2))
            return 0
        print(f"version {got['name']} of {got['source']}: {got['fingerprint']} "
              f"({got['files']} files, {got['directories']} directories, {got['bytes']} "
              f"bytes), at {os.path.join(args.mountpoint, '.fusefs', 'versions', args.name)}")
        if got["published"] is not True:
            print(f"fusefs: warning: not published to the stores yet: {got['published']}",
                  file=sys.stderr)
        return 0
    if args.verb == "delete":
        got = _ask(args.mountpoint, {"op": "version", "action": "delete", "name": args.name})
        print(f"deleted version {args.name}")
        return 0
    got = _ask(args.mountpoint, {"op": "version", "action": "list"})
    assert isinstance(got, list)
    if args.json:
        print(json.dumps(got, indent=2))
        return 0
    for v in got:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_ns"] / 1e9))
        print(f"{v['name']}\t{v['fingerprint']}\t{when}\t{v['source']}")
    return 0
