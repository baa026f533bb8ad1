"""Volume administration: `fusefs init` and `fusefs store claim`."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path

import trio

from fusefs.codec.keys import VolumeKeys, create_key_file, load_key_file, warn_if_exposed
from fusefs.config import (
    DEFAULT_CHUNK,
    DEFAULT_PACK_BELOW,
    DEFAULT_SEGMENT,
    VolumeConfig,
    parse_size,
    validate,
)
from fusefs.errors import ConfigError, StoreError, warn
from fusefs.health import STORE_RETRY_SECONDS
from fusefs.meta.repo import MetaRepo
from fusefs.mounts import find_by_volume
from fusefs.snapshots.index import snapshot_objects
from fusefs.storecheck import marker_bytes, marker_volume, owned_names
from fusefs.stores import Store, open_store
from fusefs.volumedir import VolumeDir


def default_shares(n_stores: int, k: int | None, m: int | None) -> tuple[int, int]:
    """K and M when not given: every store holds one share of each chunk, M ~ 40% (>= 1)."""
    if k is None and m is None:
        m = max(1, round(n_stores * 0.4))
        return n_stores - m, m
    if k is None:
        return n_stores - m, m  # type: ignore[operator]
    if m is None:
        return k, max(0, n_stores - k)
    return k, m


def init_volume(args: argparse.Namespace) -> None:
    vd = VolumeDir(args.volume)
    if vd.is_volume():
        raise ConfigError(f"{vd.path} already holds a fusefs volume")
    if vd.path.exists() and (not vd.path.is_dir() or any(vd.path.iterdir())):
        raise ConfigError(f"{vd.path} exists and is not an empty directory")
    urls = args.store
    stores = [open_store(u) for u in urls]
    if len({s.url for s in stores}) != len(stores):
        raise ConfigError("the same store was given twice")
    if len(stores) < 2:
        raise ConfigError("a volume needs at least 2 stores (K data + M >= 1 parity)")
    k, m = default_shares(len(stores), args.data_shares, args.parity_shares)
    chunk = parse_size(args.chunk_size) if args.chunk_size else DEFAULT_CHUNK
    seg = parse_size(args.segment_size) if args.segment_size else min(DEFAULT_SEGMENT, chunk)
    volume_id = os.urandom(16)
    timing = {name: value for name, value in (("snapshot_interval", args.snapshot_interval),
                                              ("gc_grace", args.gc_grace)) if value is not None}
    packing = {n: parse_size(v) for n in ("pack_below", "pack_size") if (v := getattr(args, n))}
    packing.setdefault("pack_below", DEFAULT_PACK_BELOW)
    cfg = VolumeConfig(volume_id.hex(), k, m, chunk, [s.url for s in stores], key_check="",
                       segment_size=seg, **timing, **packing)
    validate(cfg)
    trio.run(_prepare_stores, stores)

    key_path = Path(args.key_file) if args.key_file else vd.default_key
    created_dir = not vd.path.exists()
    try:
        vd.path.mkdir(parents=True, exist_ok=True)
        was = stat.S_IMODE(vd.path.stat().st_mode)
    except OSError as e:
        raise ConfigError(f"cannot create {vd.path}: {e.strerror}") from None
    tightened = _make_private_dir(vd.path, was)
    try:
        key_given = key_path.exists()
        master = load_key_file(key_path) if key_given else create_key_file(key_path)
        keys = VolumeKeys(master, volume_id)
        cfg = replace(cfg, key_check=keys.check_value)
        meta = MetaRepo(vd.meta, create=True)
        with meta.transaction():
            now = time.time_ns()
            meta.create_inode(os.urandom(16), stat.S_IFDIR | 0o755, os.getuid(), os.getgid(),
                              2, now)
        meta.fsync_wal()
        meta.close()
        trio.run(_write_markers, stores, cfg, keys)
        vd.save(cfg)  # last: the config's presence is what makes VOLUME a volume
    except BaseException:
        if created_dir:
            shutil.rmtree(vd.path, ignore_errors=True)
        else:
            for p in (vd.meta, Path(f"{vd.meta}-wal"), Path(f"{vd.meta}-shm")):
                p.unlink(missing_ok=True)
            if tightened:
                with contextlib.suppress(OSError):
                    os.chmod(vd.path, was)
        raise
    if key_given:
        warn_if_exposed(key_path)  # after success: a failure's one line says all
    print(f"created volume {vd.path}: {k} data + {m} parity shares over {len(stores)} stores,"
          f" chunk size {chunk}, segment size {seg}, key {key_path}")
    if tightened and not created_dir:
        print(f"made {vd.path} private (mode 0700, was {was:04o}): it holds the metadata")


def _make_private_dir(path: Path, mode: int) -> bool:
    """chmod 0700 a volume directory others may read or enter; True when it changed it.
    A directory we may write but not chmod (not ours) gets a warning, not a refusal."""
    if not mode & 0o077:
        return False
    try:
        os.chmod(path, 0o700)
    except OSError as e:
        warn(f"cannot make {path} private (mode {mode:04o}): {e.strerror}; "
             f"others may read its metadata")
        return False
    return True


async def _prepare_stores(stores: list[Store]) -> None:
    for store in stores:
        _create_local_root(store)
        await store.check(writable=True)
        marker = await store.read_marker()
        if marker is not None:
            raise StoreError(f"store {store.url} belongs to another volume "
                             f"({marker_volume(marker) or 'its marker is unreadable'})")
        if await store.list():
            raise StoreError(f"store {store.url} is not empty")


def _create_local_root(store: Store) -> None:
    root = getattr(store, "root", None)
    if root is not None and not root.exists() and root.parent.is_dir():
        try:
            root.mkdir()
        except OSError as e:
            raise StoreError(f"cannot create store directory {root}: {e.strerror}") from None


async def _write_markers(stores: list[Store], cfg: VolumeConfig, keys: VolumeKeys) -> None:
    for si, store in enumerate(stores):
        await store.write_marker(marker_bytes(keys, cfg.volume_id, si))


# -- fusefs store claim ------------------------------------------------------------------
def claim_store(volume: str, url: str, key_file: str | None) -> None:
    """Make a store in doubt this volume's again (the operator checked it): a fresh
    authenticated marker. Its objects this volume never placed become orphans, which the
    next repairing scrub deletes: say how many."""
    vd = VolumeDir(volume)
    cfg, keys = vd.unlock(key_file)
    target = open_store(url).url
    if target not in cfg.stores:
        raise ConfigError(f"{url} is not a store of volume {vd.path} (its stores: "
                          f"{', '.join(cfg.stores)})")
    si = cfg.stores.index(target)
    store = open_store(target)
    meta = MetaRepo(vd.meta, read_only=True)
    try:
        also = snapshot_objects(vd.snapshot_files[0])
        foreign = trio.run(_claim, store, si, cfg, keys, meta, also)
    finally:
        meta.close()
    print(f"claimed {target} as store {si} of volume {vd.path}")
    if foreign:
        print(f"{foreign} objects in it were not placed there by this volume: the next "
              f"`fusefs scrub {vd.path}` deletes them as orphans")
    if find_by_volume(vd.path) is not None:
        print(f"the mounted volume uses it again within {STORE_RETRY_SECONDS:.0f} s")


async def _claim(store: Store, si: int, cfg: VolumeConfig, keys: VolumeKeys,
                 meta: MetaRepo, also: list[tuple[bytes, bytes]]) -> int:
    await store.check(writable=True)
    foreign = len(set(await store.list()) - owned_names(meta, keys, si, also))
    await store.write_marker(marker_bytes(keys, cfg.volume_id, si))
    return foreign
