"""The `fusefs` command: init, mount, umount, scrub, compact, status, snapshot, recover,
store claim, fingerprint, version.

Exit status: 0 success; 1 failure with a one-line message on stderr; 2 usage error.
Only `FusefsError` messages are shown to the user; anything else is a bug and is reported as
one line pointing at the log, never as a traceback.

Configuration for containers: every option of `init`, `mount` and `health` can also come
from an environment variable (`ENVIRONMENT` below; the command line wins), and the stores
from a mounted file, so a sidecar needs no command line beyond `mount --foreground`. S3
credentials come from the standard AWS variables and files (boto3's chain).

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

# Environment variables for options not given on the command line: (command, dest) -> name.
ENVIRONMENT = {
    ("init", "volume"): "FUSEFS_VOLUME",
    ("init", "store"): "FUSEFS_STORES",  # URLs separated by whitespace or commas
    ("init", "stores_file"): "FUSEFS_STORES_FILE",  # a file: one URL a line, # comments
    ("init", "data_shares"): "FUSEFS_DATA_SHARES",
    ("init", "parity_shares"): "FUSEFS_PARITY_SHARES",
    ("init", "chunk_size"): "FUSEFS_CHUNK_SIZE",
    ("init", "snapshot_interval"): "FUSEFS_SNAPSHOT_INTERVAL",
    ("init", "gc_grace"): "FUSEFS_GC_GRACE",
    ("init", "pack_below"): "FUSEFS_PACK_BELOW",
    ("init", "pack_size"): "FUSEFS_PACK_SIZE",
    ("init", "key_file"): "FUSEFS_KEY_FILE",
    ("mount", "volume"): "FUSEFS_VOLUME",
    ("mount", "mountpoint"): "FUSEFS_MOUNTPOINT",
    ("mount", "key_file"): "FUSEFS_KEY_FILE",
    ("mount", "metrics"): "FUSEFS_METRICS",
    ("mount", "read_only"): "FUSEFS_READ_ONLY",  # 1/true/yes
    ("mount", "allow_other"): "FUSEFS_ALLOW_OTHER",
    ("mount", "init"): "FUSEFS_INIT",
    ("mount", "follow"): "FUSEFS_FOLLOW",
    ("mount", "expect_fingerprint"): "FUSEFS_EXPECT_FINGERPRINT",  # [VERSION=]HASH, several
    #                                                          separated by spaces or commas
    ("health", "mountpoint"): "FUSEFS_MOUNTPOINT",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusefs", description="Encrypted, erasure-coded, "
                                "self-healing FUSE filesystem for machine-learning data.")
    p.add_argument("--version", action="version", version=f"fusefs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create a volume over a set of stores")
    s.add_argument("volume", metavar="VOLUME", nargs="?",
                   help="directory for the config and metadata")
    _init_options(s)
    s.add_argument("--if-missing", action="store_true",
                   help="do nothing when VOLUME already holds a volume")

    s = sub.add_parser("mount", help="mount a volume")
    s.add_argument("volume", metavar="VOLUME", nargs="?")
    s.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    s.add_argument("--key-file", metavar="PATH")
    s.add_argument("--foreground", action="store_true", help="do not daemonize; log to stderr")
    s.add_argument("--read-only", action="store_true",
                   help="read-only; in dataset mode unless --no-dataset")
    s.add_argument("--no-dataset", action="store_true",
                   help="read-only mounts: no dataset mode (short kernel caches, every "
                   "OPEN and FLUSH answered)")
    s.add_argument("--allow-other", action="store_true", help="let other users access it")
    s.add_argument("--follow", action="store_true",
                   help="a follower (read-only): switch to each new snapshot of the writer")
    s.add_argument("--accept-older-snapshot", action="store_true",
                   help="a follower: accept a snapshot older than one this host has seen")
    s.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics on http://ADDR:PORT/metrics (default: off)")
    s.add_argument("--init", action="store_true",
                   help="create the volume first when VOLUME holds none (init's options "
                        "from the environment), and MOUNTPOINT when missing")
    s.add_argument("--expect-fingerprint", action="append", metavar="[VERSION=]HASH",
                   help="refuse to serve unless the volume's root (or version VERSION) has "
                        "this fingerprint (repeat for several)")
    s.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    s = sub.add_parser("health", help="exit 0 when a mount answers (health/startup probes)")
    s.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    s.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long the mount has to answer (default 5)")

    s = sub.add_parser("umount", help="flush, unmount and wait for the daemon to exit")
    s.add_argument("mountpoint", metavar="MOUNTPOINT")

    s = sub.add_parser("scrub", help="verify every share on every store and repair damage")
    s.add_argument("target", metavar="VOLUME|MOUNTPOINT")
    s.add_argument("--no-repair", action="store_true", help="only report, change nothing")
    s.add_argument("--json", action="store_true", help="machine-readable report")
    s.add_argument("--rate", type=float, metavar="MB/S",
                   help="limit store reads to this many MB/s (spare the readers)")
    s.add_argument("--key-file", metavar="PATH", help="key (unmounted volumes only)")

    s = sub.add_parser("compact", help="copy what packs mostly dead still hold into new "
                       "packs, and free the rest")
    s.add_argument("target", metavar="VOLUME|MOUNTPOINT")
    s.add_argument("--json", action="store_true", help="machine-readable report")
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

    s = sub.add_parser("fingerprint", help="the content fingerprint of a directory tree or "
                       "file (in a mount: from the metadata; elsewhere: by reading it)")
    s.add_argument("path", metavar="PATH")
    s.add_argument("--verify", action="store_true",
                   help="in a mount: re-read every byte through the verified read path and "
                        "compare with the metadata (exit 1 when they differ)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("version", help="immutable named versions of a mounted volume's trees")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("create", help="take a read-only, copy-on-write version of a tree")
    v.add_argument("mountpoint", metavar="MOUNTPOINT")
    v.add_argument("name", metavar="NAME")
    v.add_argument("path", metavar="PATH", nargs="?",
                   help="the directory to take (in the mount; default: its root)")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v = verbs.add_parser("list", help="list the versions and their fingerprints")
    v.add_argument("mountpoint", metavar="MOUNTPOINT")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v = verbs.add_parser("delete", help="delete a version (its data goes when no longer "
                         "needed)")
    v.add_argument("mountpoint", metavar="MOUNTPOINT")
    v.add_argument("name", metavar="NAME")

    s = sub.add_parser("store", help="act on one store of a volume")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("claim", help="make a store that is in doubt this volume's again "
                                       "(after checking it)")
    v.add_argument("volume", metavar="VOLUME")
    v.add_argument("url", metavar="URL", help="the store's URL, as in the volume's config")
    v.add_argument("--key-file", metavar="PATH")
    return p


def _init_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--store", action="append", metavar="URL",
                   help="store URL: file:///abs/path or /abs/path (repeat, one per store)")
    s.add_argument("--stores-file", metavar="PATH",
                   help="a file naming the stores, one URL a line (# comments)")
    s.add_argument("--data-shares", type=int, metavar="K", help="shares needed to read (K)")
    s.add_argument("--parity-shares", type=int, metavar="M", help="stores that may fail (M)")
    s.add_argument("--chunk-size", metavar="SIZE", help="chunk size (default 4M)")
    s.add_argument("--segment-size", metavar="SIZE",
                   help="encryption unit inside a chunk (default 64K): the least a read fetches")
    s.add_argument("--snapshot-interval", type=float, metavar="SECONDS",
                   help="publish the metadata to the stores this often while it changes "
                        "(default 60; 0: only at unmount and on demand)")
    s.add_argument("--gc-grace", type=float, metavar="SECONDS",
                   help="keep replaced data this long after a snapshot without it is "
                        "published, for followers (default: 3 snapshot intervals)")
    s.add_argument("--pack-below", metavar="SIZE",
                   help="shares smaller than this go into pack objects, one per store "
                        "(default 256K; 0: every share is an object of its own)")
    s.add_argument("--pack-size", metavar="SIZE",
                   help="a pack object is sealed at this size (default 16M)")
    s.add_argument("--key-file", metavar="PATH",
                   help="key file: created (mode 0600) if missing, else used "
                        "(default: VOLUME/fusefs.key)")


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def apply_environment(p: argparse.ArgumentParser, args: argparse.Namespace,
                      environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Fill options the command line left out from ENVIRONMENT; usage errors (exit 2) for
    what is still missing or malformed."""
    for (command, dest), name in ENVIRONMENT.items():
        value = environ.get(name, "")
        if command != args.command or not hasattr(args, dest) or not value.strip():
            continue
        current = getattr(args, dest)
        if current not in (None, False, []):
            continue
        if dest in ("store", "expect_fingerprint"):
            setattr(args, dest, value.replace(",", " ").split())
        elif dest in ("data_shares", "parity_shares", "snapshot_interval", "gc_grace"):
            try:
                setattr(args, dest, (int if dest.endswith("shares") else float)(value))
            except ValueError:
                p.error(f"{name}={value!r} is not a number")
        elif dest in ("read_only", "allow_other", "init", "follow"):
            setattr(args, dest, _flag(value))
        else:
            setattr(args, dest, value)
    if args.command in ("init", "mount") and not args.volume:
        p.error(f"{args.command}: VOLUME is required (or set FUSEFS_VOLUME)")
    if args.command in ("mount", "health") and not args.mountpoint:
        p.error(f"{args.command}: MOUNTPOINT is required (or set FUSEFS_MOUNTPOINT)")


def read_stores_file(path: str) -> list[str]:
    """Store URLs from a file (a mounted ConfigMap): one a line, blank lines and # comments
    ignored."""
    try:
        text = open(path).read()  # noqa: SIM115 - closed at once
    except OSError as e:
        raise FusefsError(f"cannot read stores file {path}: {e.strerror}") from None
    urls = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [u for u in urls if u]


def init_args(args: argparse.Namespace, environ: dict[str, str] | os._Environ = os.environ
              ) -> argparse.Namespace:
    """`init`'s options for `mount --init`: taken from the environment (ENVIRONMENT)."""
    ns = argparse.Namespace(command="init", volume=args.volume, store=None, stores_file=None,
                            data_shares=None, parity_shares=None, chunk_size=None,
                            segment_size=None, snapshot_interval=None, gc_grace=None,
                            pack_below=None, pack_size=None,
                            key_file=args.key_file, if_missing=True)
    apply_environment(_parser(), ns, environ)
    return ns


def cmd_init(args: argparse.Namespace) -> int:
    from fusefs.admin import init_volume
    from fusefs.volumedir import VolumeDir

    if args.if_missing and VolumeDir(args.volume).is_volume():
        return 0
    stores = list(args.store or [])
    if args.stores_file:
        stores += read_stores_file(args.stores_file)
    if not stores:
        raise FusefsError("init needs stores: --store URL (repeat), --stores-file PATH, or "
                          "FUSEFS_STORES / FUSEFS_STORES_FILE")
    args.store = stores
    args.chunk_size = args.chunk_size or "4M"
    init_volume(args)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from fusefs.lifecycle import health

    problem = health(args.mountpoint, args.timeout)
    if problem:
        print(f"fusefs: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)  # exits 2 on usage errors
    apply_environment(p, args)
    os.umask(0o077)
    try:
        if args.command == "init":
            return cmd_init(args)
        if args.command == "mount":
            return cmd_mount(args)
        if args.command == "health":
            rc = cmd_health(args)
            sys.stdout.flush()
            os._exit(rc)  # a probe thread may still wait for a hung mount
        if args.command == "umount":
            return cmd_umount(args.mountpoint)
        if args.command == "scrub":
            from fusefs.scrubcli import scrub

            return scrub(args)
        if args.command == "compact":
            from fusefs.compactcmd import compact

            return compact(args.target, args.key_file, as_json=args.json)
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
        if args.command == "fingerprint":
            from fusefs.versioncmd import fingerprint

            return fingerprint(args)
        if args.command == "version":
            from fusefs.versioncmd import version

            return version(args)
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
    from fusefs import lifecycle
    from fusefs.mount import MountOptions, preflight, serve
    from fusefs.volumedir import VolumeDir

    vd = VolumeDir(args.volume)
    if args.metrics:
        from fusefs.metrics import parse_address

        parse_address(args.metrics)  # a wrong address is refused before anything starts
    if args.foreground:
        lifecycle.terminate_on_sigterm()  # PID 1 of a container: until the loop listens
    if args.init:
        if not vd.is_volume():
            cmd_init(init_args(args))
        if not os.path.lexists(args.mountpoint):
            os.makedirs(args.mountpoint, mode=0o755)
    opts = MountOptions(read_only=args.read_only, allow_other=args.allow_other,
                        metrics=args.metrics, follow=args.follow,
                        accept_older=args.accept_older_snapshot, dataset=not args.no_dataset,
                        expect=parse_expectations(args.expect_fingerprint or []))
    if not args.foreground:
        vd.load()  # refuse a non-volume before touching the mountpoint
        cleaned = lifecycle.clean_dead_mount(args.mountpoint)
        if cleaned:
            print(f"fusefs: warning: {cleaned}", file=sys.stderr)
            lifecycle.note_in_volume_log(vd, cleaned)
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
    if args.ready_fd is None:  # started by hand or by a container (the parent cleaned)
        lifecycle.clean_dead_mount(args.mountpoint)
    try:
        serve(vd, args.key_file, args.mountpoint, opts, ready)
    except FusefsError:
        raise
    except BaseException as e:
        log.exception("daemon failed")
        ready(f"daemon failed: {type(e).__name__}: {e} (see {vd.log})")
        raise FusefsError(f"daemon failed: {e}; see {vd.log}") from None
    return 0


def parse_expectations(values: list[str]) -> dict[str, str]:
    """`--expect-fingerprint [VERSION=]HASH` values: version name ("" for the root) ->
    64 lowercase hex digits."""
    out: dict[str, str] = {}
    for value in values:
        name, _, digest = value.rpartition("=")
        digest = digest.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise FusefsError(f"--expect-fingerprint {value}: a fingerprint is 64 hex digits "
                              "(as `fusefs fingerprint` prints it), optionally after VERSION=")
        if out.get(name, digest) != digest:
            raise FusefsError(f"--expect-fingerprint: two fingerprints for "
                              f"{name or 'the root'}")
        out[name] = digest
    return out


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
    if args.no_dataset:
        cmd.append("--no-dataset")
    if args.allow_other:
        cmd.append("--allow-other")
    if args.follow:
        cmd.append("--follow")
    if args.accept_older_snapshot:
        cmd.append("--accept-older-snapshot")
    if args.metrics:
        cmd += ["--metrics", args.metrics]
    for expected in args.expect_fingerprint or []:
        cmd += ["--expect-fingerprint", expected]
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
