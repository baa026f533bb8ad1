"""`fusefs status`: what a volume holds, the state of each store, the damage found and
what is still at risk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import trio

from fusefs.codec.keys import VolumeKeys
from fusefs.config import VolumeConfig
from fusefs.errors import FusefsError
from fusefs.events import read_events
from fusefs.meta.packrows import PACK_DEAD, PackRow
from fusefs.meta.repo import MetaRepo
from fusefs.snapshots.index import snapshot_objects
from fusefs.storecheck import (
    NOT_CLAIMED,
    OK,
    UNREACHABLE,
    StoreState,
    check_all,
    marker_volume,
)
from fusefs.stores import open_store
from fusefs.volumedir import VolumeDir, resolve_target


async def _store_states(cfg: VolumeConfig, keys: VolumeKeys | None, meta: MetaRepo,
                        index: Path) -> list[dict]:
    """Each store's state now: with the key, the full identity check (the marker's MAC);
    without it, only what the marker says."""
    stores = [open_store(url) for url in cfg.stores]
    if keys is not None:
        states = await check_all(stores, cfg, keys, meta, writable=False, claim=False,
                                 also=snapshot_objects(index))
    out = []
    for si, store in enumerate(stores):
        info: dict = {"url": store.url, "state": "ok", "objects": None}
        try:
            if keys is not None:
                _describe(info, states[si])
            else:
                await store.check(writable=False)
                raw = await store.read_marker()
                if raw is None:
                    info["state"] = "no marker (emptied or replaced)"
                elif marker_volume(raw) != cfg.volume_id:
                    info["state"] = "belongs to another volume"
            if info["state"] != "unavailable":
                info["objects"] = len(await store.list())
        except FusefsError as e:
            info["state"] = "unavailable"
            info["error"] = str(e)
        out.append(info)
    return out


def _packs(meta: MetaRepo) -> list[PackRow]:
    """The packs with an object in a store (none before format 4's schema)."""
    try:
        return [p for p in meta.all_packs() if p.state != PACK_DEAD]
    except sqlite3.OperationalError:  # no packs table
        return []


def _describe(info: dict, state: StoreState) -> None:
    if state.kind == UNREACHABLE:
        info["state"], info["error"] = "unavailable", state.detail
    elif state.kind == NOT_CLAIMED and state.detail == "no marker":
        info["state"] = "no marker (emptied or replaced)"
    elif state.kind == NOT_CLAIMED and state.detail.startswith("old marker"):
        info["state"] = "ok"
    elif state.kind == NOT_CLAIMED:
        info["state"] = f"marker damaged ({state.detail}); holds only this volume's objects"
    elif state.kind != OK:
        info["state"] = state.describe()


def _keys_if_at_hand(vd: VolumeDir, key_file: str | None) -> VolumeKeys | None:
    """The volume's keys when a key file is given or in the volume directory."""
    if key_file is None and not vd.default_key.exists():
        return None
    return vd.unlock(key_file)[1]


def status(target: str, as_json: bool, key_file: str | None = None) -> int:
    vd, entry = resolve_target(target)
    mountpoint = str(entry.mountpoint) if entry else None
    cfg = vd.load()
    keys = _keys_if_at_hand(vd, key_file)
    events = read_events(vd.events)
    meta = MetaRepo(vd.meta, read_only=True)
    try:
        store_states = trio.run(_store_states, cfg, keys, meta, vd.snapshot_files[0])
        st = meta.stats()
        stored = meta.stored_bytes(cfg.data_shares, cfg.n_shares, cfg.segment_size)
        queued = meta.repair_count()
        # At risk now: shares queued for repair, and chunks found unrecoverable that no read
        # has found whole since (whatever made them whole: a store back, a heal, a scrub).
        at_risk = {meta.path_of(ino) or f"<inode {ino}>"
                   for ino in {*meta.inodes_with_repairs(), *meta.unreadable_inodes()}}
        packs = _packs(meta)
    finally:
        meta.close()
    for si, info in enumerate(store_states):
        info["packs"] = sum(1 for p in packs if p.store == si)
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
        "stores": store_states,
        "files": st.files,
        "directories": st.directories,
        "symlinks": st.symlinks,
        "chunks": st.chunks,
        "logical_bytes": st.logical_bytes,
        "stored_bytes": stored,
        "packs": {"pack_below": cfg.pack_below if cfg.packs else 0, "count": len(packs),
                  "bytes": sum(p.size for p in packs),
                  "live_bytes": sum(max(p.live, 0) for p in packs)},
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
    pk = report["packs"]
    if pk["pack_below"] or pk["count"]:
        live = f", {100 * pk['live_bytes'] // pk['bytes']}% live" if pk["bytes"] else ""
        print(f"packs      {pk['count']} ({pk['bytes']} bytes{live}); shares smaller than "
              f"{pk['pack_below']} bytes go into packs")
    else:
        print("packs      off (every share is an object of its own)")
    print("stores")
    for s in report["stores"]:
        objs = "" if s["objects"] is None else f"  {s['objects']} objects"
        if s["objects"] is not None and s["packs"]:
            objs += f" ({s['packs']} of them packs)"
        err = f"  ({s['error']})" if "error" in s else ""
        print(f"  {s['url']}  {s['state']}{objs}{err}")
    print(f"events     {len(events)} recorded"
          + (f" ({', '.join(f'{n} {a}' for a, n in sorted(by_action.items()))})"
             if events else ""))
    for url, kinds in sorted(by_store.items()):
        print(f"  {url}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if events:
        last = events[-1]
        # store-wide events and a snapshot's shares name no file: no "file None"
        what = f" file {last['file']}" if last.get("file") else ""
        print(f"  last: {last.get('time')} {last.get('kind')} on {last.get('store')}"
              f"{what} -> {last.get('action')}")
    print(f"repairs    {queued} shares queued")
    if at_risk:
        print(f"at risk    {len(at_risk)} files: " + ", ".join(sorted(at_risk)[:10]))
    return 0
