"""Volume administration without a mount: `init` and `status`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path

import trio

from fusefs.codec.keys import VolumeKeys, create_key_file, load_key_file, warn_if_exposed
from fusefs.config import DEFAULT_CHUNK, DEFAULT_SEGMENT, VolumeConfig, parse_size, validate
from fusefs.errors import ConfigError, FusefsError, StoreError, warn
from fusefs.events import read_events
from fusefs.meta.repo import MetaRepo
from fusefs.stores import Store, open_store
from fusefs.volumedir import VolumeDir, resolve_target


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
    cfg = VolumeConfig(volume_id.hex(), k, m, chunk, [s.url for s in stores], key_check="",
                       segment_size=seg)
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
        trio.run(_write_markers, stores, cfg.volume_id)
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
                             f"({marker.get('volume', 'unknown')})")
        if await store.list():
            raise StoreError(f"store {store.url} is not empty")


def _create_local_root(store: Store) -> None:
    root = getattr(store, "root", None)
    if root is not None and not root.exists() and root.parent.is_dir():
        try:
            root.mkdir()
        except OSError as e:
            raise StoreError(f"cannot create store directory {root}: {e.strerror}") from None


async def _write_markers(stores: list[Store], volume_id: str) -> None:
    for store in stores:
        await store.write_marker(volume_id)


# -- status ------------------------------------------------------------------------------
async def _store_states(cfg: VolumeConfig) -> list[dict]:
    out = []
    for url in cfg.stores:
        store = open_store(url)
        info: dict = {"url": url, "state": "ok", "objects": None}
        try:
            await store.check(writable=False)
            marker = await store.read_marker()
            if marker is None:
                info["state"] = "no marker (emptied or replaced)"
            elif marker.get("volume") != cfg.volume_id:
                info["state"] = "belongs to another volume"
            info["objects"] = len(await store.list())
        except FusefsError as e:
            info["state"] = "unavailable"
            info["error"] = str(e)
        out.append(info)
    return out


def _still_unrecoverable(meta: MetaRepo, events: list[dict]) -> set[str]:
    """Files with a chunk that a read or scrub found unrecoverable and that nothing has
    fixed since: not deleted or truncated away, not rewritten (another chunk version), not
    healed by a later pass (the store came back). Events from before versions were
    recorded count until the file or chunk is gone."""
    healed = {}  # (inode, chunk) -> index of the last heal event
    for n, e in enumerate(events):
        if e.get("action") == "healed":
            healed[(e.get("inode"), e.get("chunk"))] = n
    out = set()
    for n, e in enumerate(events):
        if e.get("action") != "unrecoverable":
            continue
        ino, idx = e.get("inode"), e.get("chunk")
        if ino is None or idx is None:
            if e.get("file"):
                out.add(e["file"])
            continue
        row = meta.get_chunk(ino, idx) if meta.get_inode(ino) is not None else None
        if row is None or healed.get((ino, idx), -1) > n:
            continue
        if e.get("version") is not None and row.oid.hex() != e["version"]:
            continue
        out.add(meta.path_of(ino) or e.get("file") or f"<inode {ino}>")
    return out


def status(target: str, as_json: bool) -> int:
    vd, entry = resolve_target(target)
    mountpoint = str(entry.mountpoint) if entry else None
    cfg = vd.load()
    events = read_events(vd.events)
    meta = MetaRepo(vd.meta, read_only=True)
    try:
        st = meta.stats()
        stored = meta.stored_bytes(cfg.data_shares, cfg.n_shares, cfg.segment_size)
        queued = meta.repair_count()
        at_risk = {meta.path_of(ino) or f"<inode {ino}>" for ino in meta.inodes_with_repairs()}
        at_risk |= _still_unrecoverable(meta, events)
    finally:
        meta.close()
    by_store: dict[str, dict[str, int]] = {}
    by_action: dict[str, int] = {}
    for e in events:
        kinds = by_store.setdefault(e.get("store") or "-", {})
        kinds[e.get("kind", "?")] = kinds.get(e.get("kind", "?"), 0) + 1
        by_action[e.get("action", "?")] = by_action.get(e.get("action", "?"), 0) + 1
    report = {
        "volume": str(vd.path),
        "volume_id": cfg.volume_id,
        "mounted": mountpoint,
        "data_shares": cfg.data_shares,
        "parity_shares": cfg.parity_shares,
        "chunk_size": cfg.chunk_size,
        "segment_size": cfg.segment_size,
        "stores": trio.run(_store_states, cfg),
        "files": st.files,
        "directories": st.directories,
        "symlinks": st.symlinks,
        "chunks": st.chunks,
        "logical_bytes": st.logical_bytes,
        "stored_bytes": stored,
        "repairs_queued": queued,
        "files_at_risk": sorted(at_risk),
        "events": {"total": len(events), "by_store": by_store, "by_action": by_action,
                   "last": events[-1] if events else None},
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"volume     {report['volume']} (id {cfg.volume_id})")
    print(f"mounted    {mountpoint or 'no'}")
    print(f"layout     {cfg.data_shares} data + {cfg.parity_shares} parity shares, "
          f"chunk size {cfg.chunk_size}, segment size {cfg.segment_size}")
    print(f"contents   {st.files} files, {st.directories} directories, {st.symlinks} symlinks,"
          f" {st.chunks} chunks")
    ratio = f" ({stored / st.logical_bytes:.2f}x)" if st.logical_bytes else ""
    print(f"bytes      {st.logical_bytes} logical, {stored} stored{ratio}")
    print("stores")
    for s in report["stores"]:
        objs = "" if s["objects"] is None else f"  {s['objects']} objects"
        err = f"  ({s['error']})" if "error" in s else ""
        print(f"  {s['url']}  {s['state']}{objs}{err}")
    print(f"events     {len(events)} recorded"
          + (f" ({', '.join(f'{n} {a}' for a, n in sorted(by_action.items()))})"
             if events else ""))
    for url, kinds in sorted(by_store.items()):
        print(f"  {url}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if events:
        last = events[-1]
        print(f"  last: {last.get('time')} {last.get('kind')} on {last.get('store')} "
              f"file {last.get('file')} -> {last.get('action')}")
    print(f"repairs    {queued} shares queued")
    if at_risk:
        print(f"at risk    {len(at_risk)} files: " + ", ".join(sorted(at_risk)[:10]))
    return 0
