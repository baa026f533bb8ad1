"""The corruption catalogue (issue 3, "Done when" 1, 2 and 4).

A K=3/M=2 volume over 5 stores (64 KiB chunks) holds one 6-chunk file per damage case, a
donor file (whose objects get copied over other files' objects) and an untouched file. Every
case file was written twice (v1, then overwritten in place with v2) and the v1 shares were
saved, so old versions can be put back (rollback). The written state is saved; each test
restores it, damages shares while the volume is NOT mounted and mounts it fresh.

Damage kinds: bit flip, truncation, extension, deletion, swap of two objects within a store,
an object of another file copied over, rollback to the previous version, a forged checksum
(new bytes + their checksum written into meta.db), and a rolled-back share with a forged
checksum. A case applies one kind per store to the shares of every chunk on that store.

- 2 stores, heal on read: only data shares are damaged (a healthy read fetches those); every
  file reads bit-identical, `fusefs umount` waits for the background heals, and then an offline
  `scrub --no-repair` finds the volume healthy, every damaged object holds its exact original
  bytes again and an event names store, object, file and action "healed" for each.
- 2 stores, scrub: any share (parity too); `scrub --no-repair` reports exactly the damage per
  store and per file and changes nothing; the files read bit-identical; `scrub` repairs the
  rest; `scrub --no-repair` is healthy; every object holds its original bytes.
- 3 stores: reads fail with EIO, never a wrong or stale byte; events with action
  "unrecoverable" name the files; status lists them at risk; a repairing scrub exits 1 and
  changes no object.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import (
    KiB,
    Mounter,
    ShareLoc,
    Snapshot,
    Volume,
    assert_event_vocabulary,
    assert_ok,
    assert_tree,
    create_volume,
    forge_digest,
    rand_bytes,
    read_checked,
    read_events,
    run_fusefs,
    scrub_json,
    share_map,
    status_json,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

N_STORES = 5
K = 3
CHUNK = 64 * KiB
FILE_SIZE = 5 * CHUNK + 1000  # 6 chunks, the last one short

MISSING, CHECKSUM, AUTH = "missing", "checksum_mismatch", "authentication_failure"

# One kind per damaged store.
TWO_STORE_CASES: dict[str, tuple[str, str]] = {
    "bitflip": ("bitflip", "bitflip"),
    "truncate": ("truncate", "truncate"),
    "extend": ("extend", "extend"),
    "delete": ("delete", "delete"),
    "swap": ("swap", "swap"),
    "copy": ("copy", "copy"),
    "rollback": ("rollback", "rollback"),
    "forged": ("forged", "forged"),
    "mix-bitflip-delete": ("bitflip", "delete"),
    "mix-truncate-forged": ("truncate", "forged"),
    "mix-swap-extend": ("swap", "extend"),
    "mix-copy-rollback": ("copy", "rollback"),
    "mix-staleforged-delete": ("rollback_forged", "delete"),
}
THREE_STORE_CASES: dict[str, tuple[str, str, str]] = {
    "bitflip-truncate-delete": ("bitflip", "truncate", "delete"),
    "swap-copy-extend": ("swap", "copy", "extend"),
    "rollback": ("rollback", "rollback", "rollback"),
    "staleforged": ("rollback_forged", "rollback_forged", "rollback_forged"),
    "forged": ("forged", "forged", "forged"),
    "forged-delete-bitflip": ("forged", "delete", "bitflip"),
}
THREE_STORE_CHUNKS = range(1, 5)  # chunk 0 and 5 stay intact (an even count for swaps)


def two_rel(case: str) -> str:
    return f"two/{case}.bin"


def three_rel(case: str) -> str:
    return f"three/{case}.bin"


DONOR, INTACT = "donor.bin", "intact.bin"


class Pristine:
    """The written volume, the v1 shares of every case file, and a saved copy of it all."""

    def __init__(self, base: Path) -> None:
        self.vol = create_volume(base, "vol", chunk_size="64K", pack_below="0")
        assert int(status_json(self.vol.path)["chunk_size"]) == CHUNK
        cases = [two_rel(c) for c in TWO_STORE_CASES] + [three_rel(c) for c in THREE_STORE_CASES]
        v1 = {rel: rand_bytes(FILE_SIZE, f"v1:{rel}") for rel in cases}
        self.expected = {rel: rand_bytes(FILE_SIZE, f"v2:{rel}") for rel in cases}
        self.expected[DONOR] = rand_bytes(FILE_SIZE, DONOR)
        self.expected[INTACT] = rand_bytes(FILE_SIZE, INTACT)
        m = Mounter()
        try:
            mnt = m.mount(self.vol, base / "mnt-v1")
            (mnt / "two").mkdir()
            (mnt / "three").mkdir()
            for rel, data in [*v1.items(), (DONOR, self.expected[DONOR]),
                              (INTACT, self.expected[INTACT])]:
                (mnt / rel).write_bytes(data)
            m.umount(mnt)
            # the v1 shares, by file -> chunk -> (store, share number)
            self.old: dict[str, list[dict[tuple[str, int], bytes]]] = {}
            for path, chunks in share_map(self.vol).items():
                self.old[path] = [
                    {**{("store", s.store): s.file.read_bytes() for s in chunk},
                     **{("share", s.share): s.file.read_bytes() for s in chunk}}
                    for chunk in chunks
                ]
            mnt = m.mount(self.vol, base / "mnt-v2")
            for rel in cases:  # overwrite in place: same inode, new chunk versions
                with open(mnt / rel, "r+b") as f:
                    f.write(self.expected[rel])
            m.umount(mnt)
        finally:
            problems = m.cleanup()
        assert not problems, problems
        current = share_map(self.vol)
        for rel in cases:
            path = "/" + rel
            assert len(current[path]) == 6, f"{rel}: expected 6 chunks"
            for new, old in zip(current[path], self.old[path], strict=True):
                for s in new:
                    assert s.file.read_bytes() != old[("store", s.store)], "not rewritten?"
        self.snapshot = Snapshot(self.vol, base / "saved")

    def restore(self) -> Volume:
        return self.snapshot.restore()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("catalogue"))


# ------------------------------------------------------------------------------------------
# Damage
# ------------------------------------------------------------------------------------------


@dataclass
class Damaged:
    """One damaged share: where, how, what the read/scrub must call it, its original bytes."""

    case: str
    how: str
    kind: str  # expected event kind
    loc: ShareLoc
    original: bytes


@dataclass
class Damage:
    pristine: Pristine
    smap: dict[str, list[list[ShareLoc]]]
    done: list[Damaged] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(1234))

    def record(self, case: str, how: str, kind: str, loc: ShareLoc) -> None:
        self.done.append(Damaged(case, how, kind, loc, loc.file.read_bytes()))

    def apply(self, case: str, how: str, targets: list[ShareLoc]) -> None:
        """Damage TARGETS (shares of different chunks of one file, all on one store)."""
        vol = self.pristine.vol
        if how == "swap":  # swap pairs of objects within the store
            assert len(targets) >= 2, f"{case}: swap needs 2 objects on one store"
            for a, b in zip(targets[0::2], targets[1::2], strict=False):
                self.record(case, how, CHECKSUM, a)
                self.record(case, how, CHECKSUM, b)
                da, db = a.file.read_bytes(), b.file.read_bytes()
                a.file.write_bytes(db)
                b.file.write_bytes(da)
            return
        for loc in targets:
            data = loc.file.read_bytes()
            old = self.pristine.old[loc.path][loc.chunk]
            kind = CHECKSUM
            if how == "bitflip":
                new = bytearray(data)
                new[len(new) // 2] ^= 0x10
                self.record(case, how, kind, loc)
                loc.file.write_bytes(bytes(new))
            elif how == "truncate":
                self.record(case, how, kind, loc)
                loc.file.write_bytes(data[: len(data) // 2])
            elif how == "extend":
                self.record(case, how, kind, loc)
                loc.file.write_bytes(data + self.rng.randbytes(17))
            elif how == "delete":
                self.record(case, how, MISSING, loc)
                loc.file.unlink()
            elif how == "copy":  # the donor's object of the same chunk on the same store
                donor = self.smap["/" + DONOR][loc.chunk]
                src = next(s for s in donor if s.store == loc.store)
                self.record(case, how, kind, loc)
                shutil.copyfile(src.file, loc.file)
            elif how == "rollback":  # the v1 object of this chunk on this store
                self.record(case, how, kind, loc)
                loc.file.write_bytes(old[("store", loc.store)])
            elif how == "forged":  # new bytes and their checksum in meta.db
                self.record(case, how, AUTH, loc)
                forge_digest(vol, loc, self.rng.randbytes(len(data)))
            elif how == "rollback_forged":  # the v1 share of the same number, checksum forged
                self.record(case, how, AUTH, loc)
                forge_digest(vol, loc, old[("share", loc.share)])
            else:
                raise AssertionError(how)

    def by_case(self) -> dict[str, list[Damaged]]:
        out: dict[str, list[Damaged]] = collections.defaultdict(list)
        for d in self.done:
            out[d.case].append(d)
        return out


def choose_stores(chunks: list[list[ShareLoc]], n: int, eligible, rotate: int
                  ) -> tuple[int, ...]:
    """N stores on which the most chunks have an eligible share each (ties: rotate)."""
    combos = list(itertools.combinations(range(N_STORES), n))
    combos = combos[rotate % len(combos):] + combos[: rotate % len(combos)]

    def score(stores: tuple[int, ...]) -> int:
        return sum(all(eligible(on_store(c, s)) for s in stores) for c in chunks)

    return max(combos, key=score)


def on_store(chunk: list[ShareLoc], store: int) -> ShareLoc:
    return next(s for s in chunk if s.store == store)


def damage_two(pristine: Pristine, data_shares_only: bool) -> Damage:
    """Every 2-store case: one kind per store, on every chunk's eligible share there."""
    dmg = Damage(pristine, share_map(pristine.vol))

    def eligible(loc: ShareLoc) -> bool:
        return loc.share < K or not data_shares_only

    for n, (case, kinds) in enumerate(TWO_STORE_CASES.items()):
        chunks = dmg.smap["/" + two_rel(case)]
        stores = choose_stores(chunks, 2, eligible, n)
        both = [c for c in chunks if all(eligible(on_store(c, s)) for s in stores)]
        # a chunk has 3 data shares on 3 of 5 stores: 6 chunks guarantee 2 stores holding data
        # shares of >= 2 common chunks, so every kind (and every swap) finds its targets
        assert len(both) >= 2, case
        for store, how in zip(stores, kinds, strict=True):
            targets = [on_store(c, store) for c in chunks if eligible(on_store(c, store))]
            dmg.apply(case, how, targets)
    for d in dmg.done:
        assert d.loc.share < K or not data_shares_only
    per_chunk = collections.Counter((d.loc.path, d.loc.chunk) for d in dmg.done)
    assert max(per_chunk.values()) <= 2
    return dmg


def damage_three(pristine: Pristine) -> Damage:
    dmg = Damage(pristine, share_map(pristine.vol))
    for n, (case, kinds) in enumerate(THREE_STORE_CASES.items()):
        chunks = dmg.smap["/" + three_rel(case)]
        stores = list(itertools.combinations(range(N_STORES), 3))[n % 10]
        for store, how in zip(stores, kinds, strict=True):
            dmg.apply(case, how, [on_store(chunks[c], store) for c in THREE_STORE_CHUNKS])
    per_chunk = collections.Counter((d.loc.path, d.loc.chunk) for d in dmg.done)
    assert set(per_chunk.values()) == {3}, per_chunk
    return dmg


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------


def case_of(path: str) -> str:
    return path.rsplit("/", 1)[1].removesuffix(".bin")


def check_restored(vol: Volume, dmg: Damage) -> None:
    """Every damaged object holds its exact original bytes; every checksum is the original."""
    now = share_map(vol)
    bad = collections.defaultdict(list)
    for d in dmg.done:
        try:
            data = d.loc.file.read_bytes()
        except FileNotFoundError:
            data = None
        if data != d.original:
            state = "missing" if data is None else f"{len(data)} bytes, not the original"
            bad[d.case].append(f"{d.how} chunk {d.loc.chunk} share {d.loc.share} "
                               f"store s{d.loc.store}: {state}")
        cur = now[d.loc.path][d.loc.chunk][d.loc.share]
        if cur.name != d.loc.name:
            bad[d.case].append(f"chunk {d.loc.chunk} was rewritten (new object name)")
        elif cur.digest != dmg.smap[d.loc.path][d.loc.chunk][d.loc.share].digest:
            bad[d.case].append(f"{d.how} chunk {d.loc.chunk} share {d.loc.share}: "
                               "recorded checksum is not the original one")
    assert not bad, "damaged objects not restored to their exact bytes:\n" + "\n".join(
        f"  {case}: {'; '.join(msgs[:4])}" for case, msgs in sorted(bad.items()))


def check_events(vol: Volume, dmg: Damage, action: str) -> list[dict]:
    """An event with the right kind, store, object, file and ACTION for every damaged share."""
    events = read_events(vol)
    assert_event_vocabulary(events)
    have = {(e["kind"], e["store"], e["object"], e.get("file"), e["action"]) for e in events}
    missing = collections.defaultdict(list)
    for d in dmg.done:
        want = (d.kind, vol.store_url(d.loc.store), d.loc.name, d.loc.path, action)
        if want not in have:
            similar = [e for e in events if e["object"] == d.loc.name]
            missing[d.case].append(f"{d.how} chunk {d.loc.chunk} share {d.loc.share}: "
                                   f"want {want[0]}/{action}, events of the object: "
                                   f"{[(e['kind'], e['action'], e.get('file')) for e in similar]}")
    assert not missing, f"no {action!r} event for these damaged shares:\n" + "\n".join(
        f"  {case}: {'; '.join(msgs[:3])}" for case, msgs in sorted(missing.items()))
    return events


def check_status_counts(vol: Volume, dmg: Damage, action: str) -> dict:
    st = status_json(vol.path)
    kinds = collections.Counter((vol.store_url(d.loc.store), d.kind) for d in dmg.done)
    by_store = st["events"]["by_store"]
    for (url, kind), n in kinds.items():
        assert by_store.get(url, {}).get(kind, 0) >= n, (
            f"status events.by_store[{url}][{kind}] < {n}: {by_store.get(url)}")
    assert st["events"]["by_action"].get(action, 0) >= len(dmg.done), st["events"]
    assert st["events"]["total"] >= len(dmg.done)
    assert st["events"]["last"] is not None
    return st


def expected_counts(vol: Volume, dmg: Damage) -> dict[str, dict[str, int]]:
    counts = {vol.store_url(i): dict.fromkeys((MISSING, CHECKSUM, AUTH), 0)
              for i in range(N_STORES)}
    for d in dmg.done:
        counts[vol.store_url(d.loc.store)][d.kind] += 1
    return counts


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def test_two_stores_heal_on_read(pristine: Pristine, tmp_path: Path, mounter: Mounter):
    vol = pristine.restore()
    dmg = damage_two(pristine, data_shares_only=True)
    assert {d.case for d in dmg.done} == set(TWO_STORE_CASES)
    assert {d.how for d in dmg.done} >= {"bitflip", "truncate", "extend", "delete", "swap",
                                         "copy", "rollback", "forged", "rollback_forged"}
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, pristine.expected)  # every file, bit-identical
    mounter.umount(mnt)  # waits for the background heals

    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert report["healthy"] and res.returncode == 0, (
        "after heal-on-read and umount the volume is not healthy: "
        f"damaged files {sorted(report['damaged_files'])}; " + res.describe())
    assert report["damaged_files"] == {} and report["queued_repairs"] == 0
    check_restored(vol, dmg)
    check_events(vol, dmg, "healed")
    st = check_status_counts(vol, dmg, "healed")
    assert st["repairs_queued"] == 0 and st["files_at_risk"] == [], st

    mnt = mounter.mount(vol, tmp_path / "mnt")  # and it all reads right once more
    assert_tree(mnt, pristine.expected)
    mounter.umount(mnt)


def test_two_stores_scrub_repairs(pristine: Pristine, tmp_path: Path, mounter: Mounter):
    vol = pristine.restore()
    dmg = damage_two(pristine, data_shares_only=False)
    assert any(d.loc.share >= K for d in dmg.done), "parity shares should be damaged too"
    damaged_paths = {"/" + two_rel(c) for c in TWO_STORE_CASES}
    before = {d.loc.file: (d.loc.file.read_bytes() if d.loc.file.exists() else None)
              for d in dmg.done}
    mnt = mounter.mount(vol, tmp_path / "mnt")

    # --no-repair: exactly the damage, per store and per file; nothing changes
    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 1 and not report["healthy"], res.describe()
    want = expected_counts(vol, dmg)
    got = {s["url"]: {k: s[k] for k in (MISSING, CHECKSUM, AUTH)} for s in report["stores"]}
    assert got == want, f"scrub --no-repair counts per store:\n got {got}\nwant {want}"
    for s in report["stores"]:
        assert s["state"] == "ok" and s["repaired"] == 0 and s["orphans"] == 0, s
        assert s["shares_checked"] > 0
    assert report["chunks"] == sum(len(c) for c in dmg.smap.values())
    assert set(report["damaged_files"]) == damaged_paths, sorted(report["damaged_files"])
    assert report["unrecoverable_files"] == []
    for path, problems in report["damaged_files"].items():
        n = sum(d.loc.path == path for d in dmg.done)
        assert len(problems) == n and all(isinstance(p, str) for p in problems), (path, problems)
    for f, data in before.items():
        now = f.read_bytes() if f.exists() else None
        assert now == data, f"scrub --no-repair changed {f}"
    check_events(vol, dmg, "reported")

    assert_tree(mnt, pristine.expected)  # every file, bit-identical

    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert report["unrecoverable_files"] == [] and report["queued_repairs"] == 0
    assert sum(s["repaired"] for s in report["stores"]) >= 1
    for s in report["stores"]:
        found = s[MISSING] + s[CHECKSUM] + s[AUTH]
        assert s["repaired"] == found and s["queued"] == 0, s

    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 0 and report["healthy"], res.describe()
    for s in report["stores"]:
        assert s[MISSING] + s[CHECKSUM] + s[AUTH] == 0, s
    check_restored(vol, dmg)
    mounter.umount(mnt)

    events = check_events(vol, dmg, "healed")
    healed_by = {e["object"] for e in events if e["action"] == "healed"}
    assert healed_by >= {d.loc.name for d in dmg.done}
    check_restored(vol, dmg)  # the recorded checksums survived the unmount
    check_status_counts(vol, dmg, "healed")
    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert res.returncode == 0, res.describe()


def test_three_stores_eio_and_events(pristine: Pristine, tmp_path: Path, mounter: Mounter):
    vol = pristine.restore()
    dmg = damage_three(pristine)
    damaged = {"/" + three_rel(c) for c in THREE_STORE_CASES}
    mnt = mounter.mount(vol, tmp_path / "mnt")

    outcome = {}
    for case in THREE_STORE_CASES:
        rel = three_rel(case)
        p = mnt / rel
        assert os.stat(p).st_size == FILE_SIZE
        # any byte returned must be the right v2 byte: never a wrong or stale (v1) one
        outcome[case] = read_checked(p, pristine.expected[rel], block=CHUNK)
        if outcome[case] == "eio":
            outcome[case] = read_checked(p, pristine.expected[rel], block=CHUNK)
    assert outcome == dict.fromkeys(THREE_STORE_CASES, "eio"), (
        f"with 3 of 5 shares damaged every read must fail with EIO: {outcome}")
    others = {rel: d for rel, d in pristine.expected.items() if not rel.startswith("three/")}
    assert_tree(mnt, others, exact=False)

    events = read_events(vol)
    assert_event_vocabulary(events)
    unrec = [e for e in events if e.get("action") == "unrecoverable"]
    named = {e.get("file") for e in unrec}
    assert named >= damaged, f"no 'unrecoverable' event names {sorted(damaged - named)}"
    assert named <= damaged, f"unrecoverable events for undamaged files: {named - damaged}"
    bad_names = {(vol.store_url(d.loc.store), d.loc.name) for d in dmg.done}
    for path in damaged:
        mine = [e for e in unrec if e.get("file") == path]
        for e in mine:
            assert e["chunk"] in THREE_STORE_CHUNKS, e
            shares = dmg.smap[path][e["chunk"]]
            assert (e["store"], e["object"]) in {(vol.store_url(s.store), s.name)
                                                 for s in shares}, e
            assert e["kind"] in (MISSING, CHECKSUM, AUTH), e
        assert any((e["store"], e["object"]) in bad_names for e in mine), (path, mine)

    st = status_json(mnt)
    assert set(st["files_at_risk"]) >= damaged, st["files_at_risk"]
    assert st["events"]["by_action"].get("unrecoverable", 0) >= len(damaged)

    snapshot = {s.file: s.file.read_bytes() if s.file.exists() else None
                for path in damaged for chunk in dmg.smap[path] for s in chunk}
    res, report = scrub_json(mnt, "--no-repair")
    assert res.returncode == 1 and sorted(report["unrecoverable_files"]) == sorted(damaged), (
        res.describe())
    res, report = scrub_json(mnt)  # a repairing scrub cannot fix it and must not touch it
    assert res.returncode == 1, res.describe()
    assert sorted(report["unrecoverable_files"]) == sorted(damaged), report
    assert set(report["damaged_files"]) >= damaged
    for f, data in snapshot.items():
        assert (f.read_bytes() if f.exists() else None) == data, f"scrub changed {f}"
    for case in THREE_STORE_CASES:
        rel = three_rel(case)
        assert read_checked(mnt / rel, pristine.expected[rel], block=CHUNK) == "eio", rel
    mounter.umount(mnt)
    assert_ok(run_fusefs("status", vol.path))
