"""The direct read API survives the damage the mount survives (issue 14, "Done when" 2).

A K=3/M=2 volume over 5 stores is written through a real mount and unmounted; then store 0
is emptied and every object of store 1 corrupted. The direct API must return the right
bytes of every file, record the damage in the volume's event log (`fusefs status` shows
it), do so from 4 DataLoader worker processes at once, and, when a mount of the volume
runs, hand the damage to it, which heals it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from helpers import (
    KiB,
    Mounter,
    Snapshot,
    Volume,
    assert_event_vocabulary,
    create_volume,
    rand_bytes,
    read_events,
    share_map,
    status_json,
    wait_until,
)
from test_mount_degraded import corrupt_store, empty_store  # the damage the mount survives

import fusefs
from fusefs.codec.checksum import digest

CHUNK = 64 * KiB
EMPTIED, CORRUPTED = 0, 1


class Damaged:
    """A written volume, its files, and a saved copy of its undamaged state."""

    def __init__(self, base: Path) -> None:
        # share objects: store 1's damage flips bytes of whole objects, which would miss
        # small members of a pack (test_mount_packs damages packs)
        self.vol = create_volume(base, "vol", chunk_size=CHUNK, pack_below="0")
        self.files = {f"/train/c{i % 3}/img{i:03d}.bin": rand_bytes(1 + (i * 997) % 40_000, i)
                      for i in range(120)}
        self.files["/big.bin"] = rand_bytes(5 * CHUNK + 7, "big")
        m = Mounter()
        try:
            mnt = m.mount(self.vol, base / "mnt")
            for path, data in self.files.items():
                (mnt / path[1:]).parent.mkdir(parents=True, exist_ok=True)
                (mnt / path[1:]).write_bytes(data)
            m.umount(mnt)
        finally:
            problems = m.cleanup()
        assert not problems, problems
        self.saved = Snapshot(self.vol, base / "saved")

    def damage(self) -> Volume:
        """The saved state, then store 0 emptied and store 1 corrupted."""
        vol = self.saved.restore()
        (vol.path / "events.jsonl").unlink(missing_ok=True)
        empty_store(vol, EMPTIED)
        corrupt_store(vol, CORRUPTED)
        return vol


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Damaged:
    return Damaged(tmp_path_factory.mktemp("direct-damage"))


def damage_events(vol: Volume) -> list[dict]:
    events = read_events(vol)
    assert_event_vocabulary(events)
    return [e for e in events if e["kind"] in ("missing", "checksum_mismatch")]


def test_two_damaged_stores_right_bytes_and_events_recorded(damaged: Damaged,
                                                            capfd) -> None:
    vol = damaged.damage()
    direct = fusefs.open_volume(vol.path, key_file=vol.key)
    capfd.readouterr()
    for path, data in damaged.files.items():
        assert direct.read_bytes(path) == data, path
    lines = capfd.readouterr().err.splitlines()  # one line, not one per bad share
    assert len(lines) == 1 and lines[0].startswith("fusefs: warning: volume ") and \
        str(vol.path / "events.jsonl") in lines[0], lines[:3]
    events = damage_events(vol)
    assert {e["action"] for e in events} == {"reported"}
    assert all("direct read API" in e["detail"] and "fusefs scrub" in e["detail"]
               for e in events)
    found = {(e["store"], e["object"], e["kind"], e["file"]) for e in events}
    assert found == expected_findings(vol)
    assert len(found) == len(events)  # each bad share once
    for path in damaged.files:  # read again: the same damage is not recorded twice
        assert direct.read_bytes(path) == damaged.files[path]
    assert len(damage_events(vol)) == len(events)
    by_store = status_json(vol.path)["events"]["by_store"]
    for si, kind in ((EMPTIED, "missing"), (CORRUPTED, "checksum_mismatch")):
        assert by_store[vol.store_url(si)] == {kind: sum(f[0] == vol.store_url(si)
                                                         for f in found)}


def expected_findings(vol: Volume, paths: set[str] | None = None
                      ) -> set[tuple[str, str, str, str]]:
    """(store, object, kind, file) of each bad share a read meets: the read asks for the K
    data shares, then parity shares in order until K are good, so a bad parity share it
    did not need goes unnoticed (scrub finds it)."""
    kinds = {EMPTIED: "missing", CORRUPTED: "checksum_mismatch"}
    out = set()
    for path, chunks in share_map(vol).items():
        for shares in chunks if paths is None or path in paths else ():
            good = 0
            for s in shares:
                if good == vol.k:
                    break
                if s.store in kinds:
                    out.add((vol.store_url(s.store), s.name, kinds[s.store], path))
                else:
                    good += 1
    return out


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 2 cores
def test_four_dataloader_workers_read_the_damaged_volume(damaged: Damaged) -> None:
    torch = pytest.importorskip("torch")
    vol = damaged.damage()
    ds = fusefs.FileDataset(vol.path, "/train", key_file=vol.key, targets=True,
                            transform=digest)
    assert ds.classes == ["c0", "c1", "c2"] and len(ds) == 120
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=4,
                                         collate_fn=list,
                                         generator=torch.Generator().manual_seed(0))
    seen = {}
    for batch in loader:
        for got, target in batch:
            seen.setdefault(got, []).append(target)
    expected = {digest(data): int(p.split("/")[2][1:]) for p, data in damaged.files.items()
                if p.startswith("/train/")}
    assert {d: t[0] for d, t in seen.items()} == expected
    assert all(len(t) == 1 for t in seen.values())  # each file once per epoch
    events = damage_events(vol)
    pids = {e["detail"].split("(pid ")[1].split(")")[0] for e in events}
    assert str(os.getpid()) not in pids and len(pids) == 4, pids  # every worker found some
    found = {(e["store"], e["object"], e["kind"], e["file"]) for e in events}
    assert found == expected_findings(vol, {p for p in damaged.files if p.startswith("/t")})


def test_damage_found_beside_a_mount_is_healed_by_the_mount(damaged: Damaged,
                                                            mounted) -> None:
    vol = damaged.damage()
    mnt = mounted(vol)
    direct = fusefs.open_volume(vol.path, key_file=vol.key)
    for path, data in damaged.files.items():
        assert direct.read_bytes(path) == data, path
    reported = [e for e in damage_events(vol) if e["action"] == "reported"]
    assert reported and all("handed to the mount" in e["detail"] for e in reported)
    met = {(store, name) for store, name, _, _ in expected_findings(vol)}
    bad = [s for chunks in share_map(vol).values() for chunk in chunks for s in chunk
           if (vol.store_url(s.store), s.name) in met]  # what a read meets (and heals)

    def healed() -> bool:
        return all(s.file.is_file() and digest(s.file.read_bytes()) == s.digest for s in bad)

    want = {(vol.store_url(s.store), s.name) for s in bad}

    def recorded() -> bool:
        return want <= {(e["store"], e["object"]) for e in damage_events(vol)
                        if e["action"] == "healed"}

    assert wait_until(healed, 60), "the mount did not heal what the direct API found"
    assert wait_until(recorded, 10), "the mount's heals are not in the event log"
    assert all(direct.read_bytes(p) == d for p, d in damaged.files.items())
    assert mnt.is_dir()


def test_a_read_only_mount_does_not_take_the_damage(damaged: Damaged, mounted) -> None:
    """A read-only mount writes nothing: it says so, and the event says scrub repairs."""
    vol = damaged.damage()
    mounted(vol, None, "--read-only")
    direct = fusefs.open_volume(vol.path, key_file=vol.key)
    path = "/big.bin"
    assert direct.read_bytes(path) == damaged.files[path]
    events = [e for e in damage_events(vol) if "direct read API" in (e.get("detail") or "")]
    assert events and all("the mount did not take it" in e["detail"] and
                          "fusefs scrub" in e["detail"] for e in events)


def test_a_dead_mount_s_socket_is_asked_once(damaged: Damaged) -> None:
    """A socket left by a killed daemon refuses the connection: the reader goes on, does
    not ask again for a while, and its events say that scrub repairs the damage."""
    vol = damaged.damage()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(vol.path / "fusefs.sock"))  # bound, never listening: refused
    try:
        direct = fusefs.open_volume(vol.path, key_file=vol.key)
        for path, data in damaged.files.items():
            assert direct.read_bytes(path) == data, path
    finally:
        sock.close()
        (vol.path / "fusefs.sock").unlink()
    details = [e["detail"] for e in damage_events(vol)]
    asked = [d for d in details if "could not be asked" in d]
    assert len(set(asked)) == 1 and "fusefs scrub" in asked[0]
    assert all("did not answer lately" in d for d in details if d not in asked)
