"""The `fusefs` command: init, mount, umount, scrub, status, snapshot, recover, store claim.

Exit status: 0 success; 1 failure with a one-line message on stderr; 2 usage error.
Only `FusefsError` messages are shown to the user; anything else is a bug and is reported as
one line pointing at the log, never as a traceback.

Every command runs with umask 077: whatever fusefs creates (volume directory, metadata,
logs, control socket, local store directories and shares) is private to its user. Files
created through a mount are not affected: their mode comes from the kernel's request,
already masked by the umask of the process that creates them.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

from fusefs import __version__
from fusefs.errors import FusefsError

log = logging.getLogger("fusefs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusefs", description="Encrypted, erasure-coded, "
                                "self-healing FUSE filesystem for machine-learning data.")
    p.add_argument("--version", action="version", version=f"fusefs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create a volume over a set of stores")
    s.add_argument("volume", metavar="VOLUME", help="directory for the config and metadata")
    s.add_argument("--store", action="append", required=True, metavar="URL",
                   help="store URL: file:///abs/path or /abs/path (repeat, one per store)")
    s.add_argument("--data-shares", type=int, metavar="K", help="shares needed to read (K)")
    s.add_argument("--parity-shares", type=int, metavar="M", help="stores that may fail (M)")
    s.add_argument("--chunk-size", metavar="SIZE", default="4M", help="chunk size (default 4M)")
    s.add_argument("--segment-size", metavar="SIZE",
                   help="encryption unit inside a chunk (default 64K): the least a read fetches")
    s.add_argument("--snapshot-interval", type=float, metavar="SECONDS",
                   help="publish the metadata to the stores this often while it changes "
                        "(default 60; 0: only at unmount and on demand)")
    s.add_argument("--gc-grace", type=float, metavar="SECONDS",
                   help="keep replaced data this long after a snapshot without it is "
                        "published, for followers (default: 3 snapshot intervals)")
    s.add_argument("--key-file", metavar="PATH",
                   help="key file: created (mode 0600) if missing, else used "
                        "(default: VOLUME/fusefs.key)")

    s = sub.add_parser("mount", help="mount a volume")
    s.add_argument("volume", metavar="VOLUME")
    s.add_argument("mountpoint", metavar="MOUNTPOINT")
    s.add_argument("--key-file", metavar="PATH")
    s.add_argument("--foreground", action="store_true", help="do not daemonize; log to stderr")
    s.add_argument("--read-only", action="store_true")
    s.add_argument("--allow-other", action="store_true", help="let other users access it")
    s.add_argument("--follow", action="store_true",
                   help="a follower (read-only): switch to each new snapshot of the writer")
    s.add_argument("--accept-older-snapshot", action="store_true",
                   help="a follower: accept a snapshot older than one this host has seen")
    s.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    s = sub.add_parser("umount", help="flush, unmount and wait for the daemon to exit")
    s.add_argument("mountpoint", metavar="MOUNTPOINT")

    s = sub.add_parser("scrub", help="verify every share on every store and repair damage")
    s.add_argument("target", metavar="VOLUME|MOUNTPOINT")
    s.add_argument("--no-repair", action="store_true", help="only report, change nothing")
    s.add_argument("--json", action="store_true", help="machine-readable report")
    s.add_argument("--rate", type=float, metavar="MB/S",
                   help="limit store reads to this many MB/s (spare the readers)")
    s.add_argument("--key-file", metavar="PATH", help="key (unmounted volumes only)")

    s = sub.add_parser("status", help="show a volume's state")
    s.add_argument("target", metavar="VOLUME|MOUNTPOINT")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--key-file", metavar="PATH",
                   help="key, to verify the stores' markers (default: VOLUME/fusefs.key if "
                        "there)")

    s = sub.add_parser("snapshot", help="publish a metadata snapshot to the stores now")
    s.add_argument("target", metavar="VOLUME|MOUNTPOINT")
    s.add_argument("--key-file", metavar="PATH", help="key (unmounted volumes only)")

    s = sub.add_parser("recover", help="rebuild a volume directory from its stores and key")
    s.add_argument("volume", metavar="VOLUME", help="new volume directory (absent or empty)")
    s.add_argument("--store", action="append", required=True, metavar="URL",
                   help="a store of the volume (repeat; up to M may be missing or down)")
    s.add_argument("--key-file", required=True, metavar="PATH")
    s.add_argument("--follower", action="store_true",
                   help="a read-only follower of the writer, not a new writer")

    s = sub.add_parser("store", help="act on one store of a volume")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("claim", help="make a store that is in doubt this volume's again "
                                       "(after checking it)")
    v.add_argument("volume", metavar="VOLUME")
    v.add_argument("url", metavar="URL", help="the store's URL, as in the volume's config")
    v.add_argument("--key-file", metavar="PATH")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits 2 on usage errors
    os.umask(0o077)
    try:
        if args.command == "init":
            from fusefs.admin import init_volume

            init_volume(args)
            return 0
        if args.command == "mount":
            return cmd_mount(args)
        if args.command == "umount":
            return cmd_umount(args.mountpoint)
        if args.command == "scrub":
            from fusefs.scrubcli import scrub

            return scrub(args)
        if args.command == "status":
            from fusefs.status import status

            return status(args.target, as_json=args.json, key_file=args.key_file)
        if args.command == "snapshot":
            from fusefs.snapshotcmd import snapshot

            snapshot(args.target, args.key_file)
            return 0
        if args.command == "recover":
            from fusefs.recovercmd import recover

            recover(args.volume, args.store, args.key_file, args.follower)
            return 0
        if args.command == "store":
            from fusefs.admin import claim_store

            claim_store(args.volume, args.url, args.key_file)
            return 0
    except FusefsError as e:
        print(f"fusefs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fusefs: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, details in the log
        logging.getLogger("fusefs").debug("internal error", exc_info=True)
        print(f"fusefs: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 2


def cmd_mount(args: argparse.Namespace) -> int:
    from fusefs.mount import MountOptions, preflight, serve
    from fusefs.volumedir import VolumeDir

    vd = VolumeDir(args.volume)
    opts = MountOptions(read_only=args.read_only, allow_other=args.allow_other,
                        follow=args.follow, accept_older=args.accept_older_snapshot)
    if not args.foreground:
        for line in preflight(vd, args.key_file, args.mountpoint, opts):
            print(f"fusefs: warning: {line}", file=sys.stderr)
        return _spawn_daemon(vd, args)
    ready_fd = args.ready_fd

    def ready(error: str | None) -> None:
        nonlocal ready_fd
        if ready_fd is None:
            return
        os.write(ready_fd, b"ok\n" if error is None else f"error: {error}\n".encode())
        os.close(ready_fd)
        ready_fd = None

    vd.load()  # the log lives in the volume: refuse a non-volume before creating a file
    vd.log_here(to_stderr=args.ready_fd is None)
    vd.make_private()  # a directory left open by an older fusefs
    try:
        serve(vd, args.key_file, args.mountpoint, opts, ready)
    except FusefsError:
        raise
    except BaseException as e:
        log.exception("daemon failed")
        ready(f"daemon failed: {type(e).__name__}: {e} (see {vd.log})")
        raise FusefsError(f"daemon failed: {e}; see {vd.log}") from None
    return 0


def _spawn_daemon(vd, args: argparse.Namespace) -> int:
    """Start `mount --foreground` detached and wait until it says the mount is live."""
    from fusefs.volumedir import create_private

    rfd, wfd = os.pipe()
    cmd = [sys.executable, "-m", "fusefs", "mount", str(vd.path),
           os.path.abspath(args.mountpoint), "--foreground", "--ready-fd", str(wfd)]
    if args.key_file:
        cmd += ["--key-file", os.path.abspath(args.key_file)]
    if args.read_only:
        cmd.append("--read-only")
    if args.allow_other:
        cmd.append("--allow-other")
    if args.follow:
        cmd.append("--follow")
    if args.accept_older_snapshot:
        cmd.append("--accept-older-snapshot")
    with os.fdopen(create_private(vd.log), "ab") as logf:
        proc = subprocess.Popen(cmd, pass_fds=(wfd,), stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, start_new_session=True, cwd="/")
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        line = r.readline().decode(errors="replace").strip()
    if line == "ok":
        return 0
    if line.startswith("error: "):
        raise FusefsError(line.removeprefix("error: "))
    code = proc.wait()
    raise FusefsError(f"the mount daemon exited ({code}) before mounting; see {vd.log}")


def cmd_umount(mountpoint: str) -> int:
    from fusefs.mounts import find_by_mountpoint
    from fusefs.volumedir import VolumeDir

    entry = find_by_mountpoint(mountpoint)
    if entry is None:
        raise FusefsError(f"{mountpoint} is not a mounted fusefs volume")
    vd = VolumeDir(entry.volume)
    try:
        pid = int(vd.pid.read_text().strip())
    except (OSError, ValueError):
        pid = None
    res = subprocess.run(["fusermount3", "-u", str(entry.mountpoint)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "unknown error"
        if "busy" in why.lower():
            why = "it is busy (files or directories in it are still in use)"
        raise FusefsError(f"cannot unmount {entry.mountpoint}: {why}")
    if pid is not None:
        deadline = time.monotonic() + 300
        while _alive(pid):
            if time.monotonic() > deadline:
                raise FusefsError(f"daemon {pid} did not exit after unmount; see {vd.log}")
            time.sleep(0.05)
    if vd.pid.exists():
        raise FusefsError(f"the daemon did not shut down cleanly; see {vd.log}")
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        return False


if __name__ == "__main__":
    sys.exit(main())
