"""A hostile store (issue 12, "Done when" 3): symlinks planted at every level of one store.

A K=3/M=2 volume over 5 local stores is written once and unmounted; its state is saved. Each
test restores it, plants symlinks into store 1 while the volume is NOT mounted, mounts it,
reads every file, scrubs and unmounts. Throughout, the directory outside the store that the
symlinks point to is watched with inotify (the daemon must not even open anything there) and
its snapshot (names, bytes, mtimes) must not change:

- object names (and the marker) -> an outside copy of the object itself (valid bytes), an
  outside file, an outside directory, nowhere (dangling): every file reads back bit-identical
  from the other stores, and the volume heals each share into a regular file with its exact
  original bytes: the link is replaced, never written through;
- a fan-out directory, or `objects` itself, -> an outside copy: never traversed, every file
  reads back; writes into it are refused with an event naming the symlink, so the repairs
  stay queued and scrub reports the store; once the admin removes the link, scrub rebuilds
  every share of the store.
"""

from __future__ import annotations

import collections
import ctypes
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest
from helpers import (
    KiB,
    MiB,
    Mounter,
    Snapshot,
    Volume,
    assert_event_vocabulary,
    assert_tree,
    copy_in,
    create_volume,
    read_events,
    scrub_json,
    share_map,
    snapshot_shares,
    status_json,
    tree_layout,
    write_tree,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

VICTIM = 1  # the store the symlinks are planted in
MARKER = "fusefs-store"


class Pristine:
    """A written volume and a saved copy of its directory and stores."""

    def __init__(self, base: Path) -> None:
        # share objects: symlinks are planted per object name and each object is expected
        # back as a regular file with its own bytes
        self.vol = create_volume(base, "vol", pack_below="0")
        cs = int(status_json(self.vol.path)["chunk_size"])
        self.layout = tree_layout([0, 1, 4095, 4097, 64 * KiB + 3, MiB + 1, 2 * cs + 17,
                                   3 * cs])
        src = base / "src"
        self.expected = write_tree(src, self.layout, seed="hostile")
        copy_in(self.vol, src, base / "mnt-write")
        self.snapshot = Snapshot(self.vol, base / "saved")

    def restore(self) -> Volume:
        return self.snapshot.restore()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("hostile"))


# ------------------------------------------------------------------------------------------
# Watching the outside directory
# ------------------------------------------------------------------------------------------

IN_ALL_EVENTS = 0xFFF  # access, modify, attrib, close, open, moves, create, delete, self
IN_DONT_FOLLOW = 0x02000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Watch:
    """inotify on `top` and every directory below it: what anyone did there, opens and
    reads included."""

    def __init__(self, top: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs: dict[int, str] = {}
        # listed before watching: the walk's own directory reads would be events
        for dirpath in [d for d, _dirs, _files in os.walk(top)]:
            wd = libc.inotify_add_watch(self.fd, os.fsencode(dirpath),
                                        IN_ALL_EVENTS | IN_DONT_FOLLOW)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {dirpath}")
            self.dirs[wd] = dirpath

    def events(self) -> list[str]:
        out = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            at = 0
            while at < len(buf):
                wd, mask, _cookie, size = _EVENT.unpack_from(buf, at)
                name = buf[at + _EVENT.size : at + _EVENT.size + size].rstrip(b"\0")
                out.append(f"{self.dirs.get(wd, wd)}/{os.fsdecode(name)}: mask {mask:#x}")
                at += _EVENT.size + size

    def close(self) -> None:
        os.close(self.fd)


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry below top (symlinks not followed): kind, bytes or target, mtime."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            if p.is_symlink():
                what: object = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", p.read_bytes())
            else:
                what = ("dir",)
            out[str(p.relative_to(top))] = (what, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------
# Planting
# ------------------------------------------------------------------------------------------


def plant_names(vol: Volume, outside: Path) -> dict[Path, bytes]:
    """Every object of the store (and its marker) becomes a symlink out of it, four kinds
    in turn; returns the planted paths and their original bytes."""
    store = vol.stores[VICTIM]
    secret = outside / "secret"
    secret.write_bytes(b"an outside file: never to be read or written\n")
    (outside / "a-directory").mkdir()
    copies = outside / "copies"
    copies.mkdir()
    planted = {}
    for n, p in enumerate([*vol.objects(VICTIM), store / MARKER]):
        planted[p] = p.read_bytes()
        kind = n % 4
        if kind == 0:  # a copy of the object itself: reading it would even "work"
            target = copies / p.name
            shutil.copy2(p, target)
        else:
            target = [None, secret, outside / "a-directory", outside / f"dangling-{n}"][kind]
        p.unlink()
        p.symlink_to(target)
    assert len(planted) >= 8, "too few objects to plant every kind of symlink"
    return planted


def move_out(vol: Volume, outside: Path, rel: str) -> Path:
    """STORE/rel moves outside (its objects keep their bytes) and a symlink takes its place."""
    store = vol.stores[VICTIM]
    target = outside / rel.replace("/", "-")
    os.rename(store / rel, target)
    (store / rel).symlink_to(target)
    return store / rel


def busiest_fanout_dir(vol: Volume) -> str:
    counts = collections.Counter(p.parent.name for p in vol.objects(VICTIM))
    return f"objects/{counts.most_common(1)[0][0]}"


def expected_names(vol: Volume) -> set[str]:
    chunks = {s.name for chunks in share_map(vol).values() for c in chunks for s in c
              if s.store == VICTIM}
    return chunks | {name for si, name in snapshot_shares(vol) if si == VICTIM}


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


class Outside:
    """The outside directory, its snapshot and the watch over it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.before: dict[str, tuple] = {}
        self.watch: Watch | None = None

    def start(self) -> None:
        self.before = snapshot(self.path)
        self.watch = Watch(self.path)

    def assert_untouched(self, final: bool = True) -> None:
        """No event so far; when `final`, also the same snapshot (whose own reads are
        events: the watch ends here)."""
        assert self.watch is not None
        events = self.watch.events()
        assert not events, f"the daemon touched files outside the store: {events[:20]}"
        if final:
            self.watch.close()
            self.watch = None
            assert snapshot(self.path) == self.before, "files outside the store changed"


@pytest.fixture
def outside(tmp_path: Path):
    path = tmp_path / "outside"
    path.mkdir()
    out = Outside(path)
    yield out
    if out.watch is not None:
        out.watch.close()


def test_symlinked_objects_are_healed_as_regular_files(
        pristine: Pristine, tmp_path: Path, mounter: Mounter, outside: Outside):
    vol = pristine.restore()
    planted = plant_names(vol, outside.path)
    outside.start()

    mnt = mounter.mount(vol, tmp_path / "mnt")  # the marker "missing": the store is claimed
    assert_tree(mnt / "tree", pristine.expected)
    outside.assert_untouched(final=False)
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    mounter.umount(mnt)
    outside.assert_untouched()

    for p, data in planted.items():
        assert not p.is_symlink() and p.is_file(), f"{p} was not healed into a regular file"
        if p.name != MARKER:
            assert p.read_bytes() == data, f"{p} was healed with other bytes"
    url = vol.store_url(VICTIM)
    healed = {e["object"] for e in read_events(vol)
              if e["store"] == url and e["action"] == "healed"}
    assert {p.name for p in planted if p.name != MARKER} <= healed
    assert {p.name for p in vol.objects(VICTIM)} == expected_names(vol)
    assert_event_vocabulary(read_events(vol))


@pytest.mark.parametrize("level", ["fanout", "objects"])
def test_symlinked_directories_are_never_traversed(
        pristine: Pristine, tmp_path: Path, mounter: Mounter, outside: Outside, level: str):
    vol = pristine.restore()
    rel = busiest_fanout_dir(vol) if level == "fanout" else "objects"
    link = move_out(vol, outside.path, rel)
    outside.start()

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt / "tree", pristine.expected)
    outside.assert_untouched(final=False)
    res, report = scrub_json(mnt)
    assert not report["healthy"] and report["queued_repairs"] > 0, report
    url = vol.store_url(VICTIM)
    refusals = [e for e in read_events(vol) if e["store"] == url
                and f"{rel} is a symlink" in (e.get("detail") or "")]
    assert refusals, f"no event says {rel} of {url} is a symlink: {read_events(vol)}"
    assert link.is_symlink()
    outside.assert_untouched(final=False)

    link.unlink()  # the admin removes the link: now the shares can be rebuilt
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    mounter.umount(mnt)
    outside.assert_untouched()
    assert {p.name for p in vol.objects(VICTIM)} == expected_names(vol)
    assert_event_vocabulary(read_events(vol))
