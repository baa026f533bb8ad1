"""`fusefs recover VOLUME --store URL ... --key-file PATH [--follower]`: rebuild a volume
directory on a new host from the stores and the key alone.

The stores' markers tell the volume id (and, authenticated, which store is which); the heads
name the newest snapshot; its superblock holds the volume's layout and the blocks of its
metadata. Up to M stores may be down or damaged. As a writer (the default) the new volume
directory takes over: it raises the writer epoch and publishes at once, so a writer still
running elsewhere stops. As a follower it can only be mounted read-only and never writes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path

import trio

from fusefs.chunkread import ChunkReader
from fusefs.codec.keys import VolumeKeys, load_key_file
from fusefs.config import VolumeConfig, validate
from fusefs.errors import ConfigError, FusefsError, NoSuchObject, StoreError
from fusefs.events import EventLog
from fusefs.health import StoreHealth
from fusefs.layout import Layout
from fusefs.meta.repo import MetaRepo
from fusefs.snapshots.fetch import fetch_database, fetch_superblock
from fusefs.snapshots.objects import Head, SnapshotError, read_heads
from fusefs.storecheck import identify
from fusefs.stores import open_store
from fusefs.stores.base import Store
from fusefs.volumedir import VolumeDir
from fusefs.workers import IoPolicy


class _Gone(Store):
    """A store index no given URL stands for: every request fails (read around it)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def get(self, name: str) -> bytes:
        raise StoreError(f"store {self.url} was not given")

    async def put(self, name: str, data: bytes | memoryview) -> None:
        raise StoreError(f"store {self.url} was not given")

    async def delete(self, name: str) -> None:
        raise StoreError(f"store {self.url} was not given")

    async def list(self) -> list[str]:
        raise StoreError(f"store {self.url} was not given")

    async def sync(self) -> None:
        return None

    async def check(self, writable: bool) -> None:
        raise StoreError(f"store {self.url} was not given")


async def _markers(stores: list[Store]) -> list[bytes | None]:
    out: list[bytes | None] = [None] * len(stores)

    async def one(j: int) -> None:
        try:
            with trio.fail_after(15):
                out[j] = await stores[j].read_marker()
        except (StoreError, NoSuchObject, trio.TooSlowError):
            out[j] = None

    async with trio.open_nursery() as nursery:
        for j in range(len(stores)):
            nursery.start_soon(one, j)
    return out


def _identify_volume(master: bytes, markers: list[bytes | None]
                     ) -> tuple[bytes, VolumeKeys, dict[int, int]]:
    """The volume whose authenticated markers the given stores hold: (volume id, keys,
    given position -> store index)."""
    candidates = []
    for raw in markers:
        try:
            vid = json.loads(raw or b"{}").get("volume")
            candidates.append(bytes.fromhex(vid))
        except (ValueError, TypeError, AttributeError):
            continue
    for vid in dict.fromkeys(candidates):
        keys = VolumeKeys(master, vid)
        where: dict[int, int] = {}
        for j, raw in enumerate(markers):
            for index in range(256):
                verdict, _ = identify(raw, keys, vid.hex(), index, 256)
                if verdict in ("ours", "rewrite") and raw is not None and \
                        json.loads(raw).get("store", index) == index:
                    where[j] = index
                    break
        if where:
            return vid, keys, where
    raise ConfigError("none of the given stores holds the marker of a volume this key opens "
                      "(wrong key, or not the stores of a fusefs volume)")


def _layout(head: Head, keys: VolumeKeys, given: list[Store], where: dict[int, int]
            ) -> tuple[VolumeConfig, Layout]:
    names = {f.name for f in fields(VolumeConfig)}
    cfg = VolumeConfig(**{k: v for k, v in head.config.items() if k in names})
    by_index: dict[int, Store] = {where[j]: s for j, s in enumerate(given) if j in where}
    for j, s in enumerate(given):  # no usable marker: the config's own URL tells its index
        if j not in where and s.url in cfg.stores and cfg.stores.index(s.url) not in by_index:
            by_index[cfg.stores.index(s.url)] = s
    stores = [by_index.get(i) or _Gone(url) for i, url in enumerate(cfg.stores)]
    urls = [s.url if not isinstance(s, _Gone) else url for s, url in zip(stores, cfg.stores,
                                                                        strict=True)]
    cfg = VolumeConfig(**{**{k: v for k, v in head.config.items() if k in names},
                          "stores": urls})
    validate(cfg)
    return cfg, Layout(cfg, keys, stores)


async def _recover(vd: VolumeDir, master: bytes, urls: list[str], follower: bool) -> str:
    given = [open_store(u) for u in urls]
    vid, keys, where = _identify_volume(master, await _markers(given))
    probe = Layout(VolumeConfig(vid.hex(), 1, 0, 1 << 20, [s.url for s in given],
                                keys.check_value), keys, given)
    heads = await read_heads(probe)
    distinct = {h.order: h for h in heads if isinstance(h, Head)}
    found = [distinct[o] for o in sorted(distinct, reverse=True)]
    if not found:
        raise FusefsError("no store holds a metadata snapshot of volume "
                          f"{vid.hex()} (was it ever mounted by a fusefs with snapshots?)")
    report = []
    newest = found[0]
    for s, h in zip(given, heads, strict=True):
        if isinstance(h, Head) and h.order != newest.order:
            report.append(f"store {s.url} names an older snapshot ({h.seq}, epoch {h.epoch})")
        elif not isinstance(h, Head):
            report.append(f"store {s.url} has no usable head ({h or 'none'})")
    errors = []
    for head in found:
        cfg, lay = _layout(head, keys, given, where)
        health = StoreHealth(lay.stores, EventLog(None))
        reader = ChunkReader(lay, health, IoPolicy(lay.stores), EventLog(None))
        try:
            sb = await fetch_superblock(reader, cfg.volume_id, head)
            fetched = await fetch_database(reader, keys, sb, vd.meta)
            break
        except SnapshotError as e:
            errors.append(f"snapshot {head.seq}: {e}")
    else:
        raise FusefsError("no snapshot could be read: " + "; ".join(errors))
    cfg = VolumeConfig(**{**cfg.__dict__, "role": "follower" if follower else "writer"})
    vd.save(cfg)
    vd.seen.write_text(json.dumps({"epoch": head.epoch, "seq": head.seq}) + "\n")
    meta = MetaRepo(vd.meta)
    try:
        st = meta.stats()
        if not follower:
            await _take_over(vd, cfg, keys, lay, meta, head, sb)
    finally:
        meta.close()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(head.time_ns / 1e9))
    lines = [f"recovered volume {cfg.volume_id} into {vd.path} as its "
             f"{'follower' if follower else 'writer'}: snapshot {head.seq} (epoch "
             f"{head.epoch}) of {when}, {st.files} files, {st.directories} directories, "
             f"{st.logical_bytes} bytes ({fetched} bytes of metadata fetched)",
             f"changes made on the old host after {when} are not in it"]
    lines += [f"note: {r}" for r in report + errors]
    return "\n".join(lines)


async def _take_over(vd: VolumeDir, cfg: VolumeConfig, keys: VolumeKeys, lay: Layout,
                     meta: MetaRepo, head: Head, sb: dict) -> None:
    """Become the writer: a higher epoch, published at once (a writer still running
    elsewhere sees it and stops)."""
    from fusefs.volume import Volume

    with meta.transaction():
        meta.set_info("writer_epoch", str(head.epoch + 1))
        meta.set_info("writer_id", os.urandom(8).hex())
    volume = Volume(cfg, keys, lay.stores, meta, EventLog(vd.events), state_dir=vd.path)
    try:
        assert volume.publisher is not None
        await volume.check_stores()
        await volume.publisher.import_retained(volume.reader, head, sb)
        await volume.publisher.publish(force=True)
    finally:
        if volume.publisher is not None:
            volume.publisher.close()


def recover(volume: str, urls: list[str], key_file: str, follower: bool) -> None:
    vd = VolumeDir(volume)
    if vd.is_volume():
        raise ConfigError(f"{vd.path} already holds a fusefs volume")
    if vd.path.exists() and (not vd.path.is_dir() or any(vd.path.iterdir())):
        raise ConfigError(f"{vd.path} exists and is not an empty directory")
    master = load_key_file(Path(key_file))
    created = not vd.path.exists()
    try:
        vd.path.mkdir(parents=True, mode=0o700, exist_ok=True)
        print(trio.run(_recover, vd, master, urls, follower))
    except BaseException:
        if created:
            import shutil

            shutil.rmtree(vd.path, ignore_errors=True)
        raise
