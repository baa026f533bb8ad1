"""Composition root: open a volume (config, key, stores, metadata) and serve it over FUSE.

Everything that can be wrong with the user's input is checked here, before the kernel mount,
and reported as a `FusefsError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from fusefs import kernelcache, lifecycle, metrics
from fusefs.codec import erasure
from fusefs.codec.keys import VolumeKeys
from fusefs.config import VolumeConfig
from fusefs.errors import ConfigError, FusefsError
from fusefs.events import EventLog
from fusefs.meta.repo import MetaRepo
from fusefs.mounts import mounted_at
from fusefs.snapshots.follower import Follower
from fusefs.snapshots.index import snapshot_objects
from fusefs.storecheck import check_all, require_readable, warning
from fusefs.stores import open_store
from fusefs.versionfs import VersionedFileSystem
from fusefs.versioning import Versioning
from fusefs.volume import Volume
from fusefs.volumedir import VolumeDir

log = logging.getLogger(__name__)


@dataclass
class MountOptions:
    read_only: bool = False
    allow_other: bool = False
    metrics: str | None = None  # ADDR:PORT of the Prometheus endpoint (None: off)
    follow: bool = False  # a follower: switch to each newly published snapshot
    accept_older: bool = False  # a follower: accept a snapshot older than one seen before
    dataset: bool = True  # with read_only: dataset mode (`kernelcache`); False: as writable
    expect: dict[str, str] = field(default_factory=dict)  # version name ("" = the root)
    #                               -> the fingerprint it must have, or nothing is served


def check_role(cfg: VolumeConfig, opts: MountOptions) -> None:
    if cfg.role == "follower" and not opts.read_only:
        raise ConfigError("this volume directory follows another host's writes: mount it "
                          "--read-only (with --follow to see new snapshots)")
    if opts.follow and cfg.role != "follower":
        raise ConfigError("--follow is for a follower's volume directory (made with "
                          "`fusefs recover ... --follower`)")


READAHEAD_KIB = 4096  # kernel readahead for the mount: 1 MiB read requests, 4 in flight


def tune_readahead(mp: Path, kib: int) -> None:
    """Raise the kernel's readahead for this mount (default 128 KiB): sequential readers then
    send 1 MiB requests, an eighth of the FUSE round trips. Root only; best effort.

    The device number comes from the mount table (st_dev of the mountpoint would do as well,
    but a stat on the trio thread would ask this very daemon and deadlock).
    """
    entry = mounted_at(mp)
    if entry is None:
        log.info("cannot raise readahead of %s: not in the mount table", mp)
        return
    try:
        Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb").write_text(f"{kib}\n")
        log.info("readahead of %s set to %d KiB", mp, kib)
    except OSError as e:
        log.info("cannot raise readahead of %s: %s", mp, e)


def check_mountpoint(mountpoint: str) -> Path:
    mp = Path(mountpoint).absolute()
    if not mp.exists():
        raise ConfigError(f"mountpoint {mp} does not exist")
    if not mp.is_dir():
        raise ConfigError(f"mountpoint {mp} is not a directory")
    if os.path.ismount(mp):
        raise ConfigError(f"mountpoint {mp} is busy (something is already mounted there)")
    return mp


def preflight(vd: VolumeDir, key_file: str | None, mountpoint: str,
              opts: MountOptions) -> list[str]:
    """All user-input checks of `mount`, cheap enough to run before daemonizing. Changes
    nothing; returns a warning line for each store that is not fully usable (the daemon
    checks again and acts). StoreError when fewer than K stores can be read."""
    cfg, keys = vd.unlock(key_file)
    check_role(cfg, opts)
    check_mountpoint(mountpoint)
    os.close(vd.lock())
    stores = [open_store(u) for u in cfg.stores]
    meta = MetaRepo(vd.meta, read_only=True)
    try:
        states = trio.run(partial(check_all, stores, cfg, keys, meta,
                                  writable=not opts.read_only, claim=False,
                                  also=snapshot_objects(vd.snapshot_files[0])))
    finally:
        meta.close()
    require_readable(stores, states, cfg.data_shares)
    lines = (warning(s.url, st, writable=not opts.read_only, volume=str(vd.path))
             for s, st in zip(stores, states, strict=True))
    return [line for line in lines if line]


def serve(vd: VolumeDir, key_file: str | None, mountpoint: str, opts: MountOptions,
          ready: Callable[[str | None], None]) -> None:
    """Mount and serve until unmounted. `ready(None)` once live, `ready(msg)` on failure."""
    try:
        cfg, keys = vd.unlock(key_file)
        check_role(cfg, opts)
        mp = check_mountpoint(mountpoint)
        lock_fd = vd.lock()
    except FusefsError as e:
        ready(str(e))
        raise
    try:
        vd.write_pid()
        with lifecycle.metrics_served(opts.metrics, vd, ready):
            trio.run(_serve, vd, cfg, keys, mp, opts, ready)
        vd.pid.unlink(missing_ok=True)  # only a clean exit removes it
    finally:
        os.close(lock_fd)


async def _serve(vd: VolumeDir, cfg: VolumeConfig, keys: VolumeKeys, mp: Path,
                 opts: MountOptions, ready: Callable[[str | None], None]) -> None:
    import pyfuse3

    from fusefs.fuse_ops import READ_BY_INODE, FuseOps, mount_options

    try:
        meta = MetaRepo(vd.meta)
    except FusefsError as e:
        ready(str(e))
        raise
    try:
        volume, fs, follower = await _open(vd, cfg, keys, meta, opts)
        cache = kernelcache.choose(read_only=opts.read_only, follower=follower is not None,
                                   dataset=opts.dataset, read_by_inode=READ_BY_INODE,
                                   has_xattrs=meta.has_xattrs())
        pyfuse3.init(FuseOps(fs, cache), str(mp), mount_options(
            str(vd.path), read_only=opts.read_only, allow_other=opts.allow_other))
    except (FusefsError, RuntimeError) as e:
        meta.close()
        msg = str(e) if isinstance(e, FusefsError) else f"cannot mount on {mp}: {e}"
        ready(msg)
        raise FusefsError(msg) from None
    log.info("mounted volume %s on %s", vd.path, mp)
    log.info("kernel cache: %s (entries and attributes %g s, FLUSH %s, OPEN %s)%s",
             cache.name, cache.entry_timeout, "on" if cache.flush else "off",
             "on" if cache.open else "off",
             "" if READ_BY_INODE or not opts.read_only else
             "; no-open mode needs the patched pyfuse3 (scripts/_install.sh)")
    if erasure.backend == "isal":
        log.info("erasure coding: zfec's code, computed by ISA-L")
    else:
        log.warning("erasure coding: zfec (libisal, Debian/Ubuntu package libisal2, computes "
                    "the same shares ~15x faster)")
    try:
        await _run(vd, mp, volume, fs, follower, opts, ready)
    finally:
        meta.close()
        log.info("unmounted %s", mp)


async def _open(vd: VolumeDir, cfg: VolumeConfig, keys: VolumeKeys, meta: MetaRepo,
                opts: MountOptions) -> tuple[Volume, VersionedFileSystem, Follower | None]:
    """The volume behind a mount, checked and, after a crash, put in order."""
    stores = [open_store(u) for u in cfg.stores]
    metrics.instrument_stores(stores)
    events = EventLog(vd.events)
    volume = Volume(cfg, keys, stores, meta, events, writable=not opts.read_only,
                    state_dir=vd.path)
    await volume.check_stores()
    for store, state in zip(stores, volume.watch.states, strict=True):
        line = warning(store.url, state, writable=not opts.read_only, volume=str(vd.path))
        if line:
            log.warning("%s", line)
    follower = None
    if cfg.role == "follower":
        follower = Follower(volume.layout, volume.reader, meta, events, vd.seen,
                            accept_older=opts.accept_older)
        if opts.follow:
            await follower.refresh()  # the newest snapshot before serving
    fs = VersionedFileSystem(meta, volume, read_only=opts.read_only, pin=follower is not None,
                             dataset=opts.dataset)
    if volume.publisher is not None:
        await volume.publisher.check_at_mount()
        volume.publisher.open_for_writing = fs.writing_inodes
    if opts.expect:
        await check_expected(Versioning(fs), opts.expect)
    if not opts.read_only:
        if volume.packs is not None:
            volume.packs.start()  # packs left open by a crash: sealed (and freed if empty)
        await volume.recover_lost_writes()  # a power loss: before garbage is collected
        await volume.watch.remove_stale_temporaries()  # a kill -9 during a share write
        await fs.collect_unlinked()  # inodes left unlinked-but-open by a crash
    return volume, fs, follower


async def check_expected(versioning: Versioning, expect: dict[str, str]) -> None:
    """Refuse to serve when a pinned tree's fingerprint differs (ConfigError, one line):
    what was approved is exactly what a training job reads, and a rolled-back metadata
    snapshot is caught by a host that knows nothing but the fingerprint."""
    for name, wanted in sorted(expect.items()):
        what = f"version {name!r}" if name else "the volume's root"
        if name:
            found = versioning.versions.by_name(name.encode(errors="surrogateescape"))
            if found is None:
                raise ConfigError(f"refusing to serve: no version named {name!r} (expected "
                                  f"fingerprint {wanted})")
            have = (await versioning.version_fingerprint(found)).hex()
        else:
            try:
                have = (await versioning.fingerprint("/"))["fingerprint"]
            except FusefsError as e:
                raise ConfigError(f"refusing to serve: the fingerprint of {what} cannot be "
                                  f"computed: {e}") from None
        if have != wanted:
            raise ConfigError(f"refusing to serve: {what} has fingerprint {have}, expected "
                              f"{wanted}")
        log.info("%s has the expected fingerprint %s", what, wanted)


async def _run(vd: VolumeDir, mp: Path, volume: Volume, fs: VersionedFileSystem,
               follower: Follower | None, opts: MountOptions,
               ready: Callable[[str | None], None]) -> None:
    """Serve until unmounted, with the daemon's background tasks; leave everything durable
    (and published) on the way out."""
    import pyfuse3

    from fusefs.control import ControlServer

    unmount = True
    signalled: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            fs.flusher.nursery = nursery
            volume.healer.nursery = nursery
            volume.nursery = nursery
            nursery.start_soon(volume.healer.run_worker)
            nursery.start_soon(volume.run_durability)
            nursery.start_soon(volume.run_store_watch)
            if not opts.read_only:
                nursery.start_soon(volume.run_compaction)
                nursery.start_soon(fs.run_commits)
            if volume.publisher is not None:
                nursery.start_soon(volume.publisher.run)
            fs.invalidate_entry = _invalidate_entry
            if follower is not None and opts.follow:
                follower.on_switch = partial(_switched, fs)
                nursery.start_soon(follower.run)
            await nursery.start(ControlServer(vd.path, volume, Versioning(fs)).serve)
            nursery.start_soon(_stop_on_signal, signalled, mp)
            nursery.start_soon(_announce_when_serving, mp, ready)
            await pyfuse3.main()
            # main() returns when the kernel unmounted us (fusermount -u) or on a signal
            unmount = bool(signalled)
            await _finish(fs, volume)
            nursery.cancel_scope.cancel()
    finally:
        fs.flusher.nursery = None
        volume.healer.nursery = None
        volume.nursery = None
        if unmount:
            with trio.CancelScope(shield=True):
                await _finish(fs, volume)
        pyfuse3.close(unmount=unmount)
        if volume.publisher is not None:
            volume.publisher.close()


async def _finish(fs: VersionedFileSystem, volume: Volume) -> None:
    """Flush, make durable, and publish the final metadata snapshot."""
    await fs.shutdown()
    if volume.publisher is not None and not volume.fenced:
        try:
            await volume.publisher.publish()
        except Exception as e:  # noqa: BLE001 - the data is durable: unmount goes on
            log.error("the final metadata snapshot was not published: %s", e)


async def _switched(fs: VersionedFileSystem, previous: Path) -> None:
    """A follower moved to a newer snapshot: drop what the kernel and the daemon cached of
    what changed."""
    import pyfuse3

    inodes, entries = fs.meta.changed_since(previous)
    fs.switched()

    def invalidate() -> None:
        for parent, name in entries:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_entry(parent, name)
        for ino in inodes:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(ino)

    await trio.to_thread.run_sync(invalidate)
    log.info("new snapshot: %d inodes and %d names invalidated", len(inodes), len(entries))


async def _invalidate_entry(parent: int, name: bytes) -> None:
    """Make the kernel forget a name (from a thread: it may wait on the kernel)."""
    import pyfuse3

    def invalidate() -> None:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, name)

    await trio.to_thread.run_sync(invalidate)


async def _announce_when_serving(mp: Path, ready: Callable[[str | None], None]) -> None:
    """Tell the parent the mount is live once the kernel's INIT has been answered.

    A stat of the mountpoint from a worker thread returns only after pyfuse3.main() has
    answered INIT. Only then can readahead be raised: the INIT reply caps it at the 128 KiB
    the kernel offered when it sent INIT.
    """
    try:
        await trio.to_thread.run_sync(os.stat, mp, abandon_on_cancel=True)
    except OSError as e:
        log.warning("the new mount %s does not answer: %s", mp, e)
    else:
        tune_readahead(mp, READAHEAD_KIB)
    ready(None)


async def _stop_on_signal(signalled: list[int], mp: Path) -> None:
    """SIGTERM/SIGINT: stop serving; `_serve` flushes and unmounts on the way out. A second
    one while that runs detaches the mount and exits at once (`lifecycle.force_exit`)."""
    import pyfuse3

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if signalled:
                lifecycle.force_exit(mp, signum)
            log.info("signal %d: unmounting", signum)
            signalled.append(signum)
            pyfuse3.terminate()
