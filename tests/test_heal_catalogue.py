"""The corruption catalogue (issue 3, "Done when" 1, 2 and 4; issue 17, "Done when" 1).

A K=3/M=2 volume over 5 stores (64 KiB chunks) holds one 6-chunk file per damage case, a
donor file (whose shares get copied over other files' shares) and an untouched file. Every
case file was written twice (v1, then overwritten in place with v2) and the v1 shares were
saved, so old versions can be put back (rollback). The written state is saved; each test
restores it, damages shares while the volume is NOT mounted and mounts it fresh.

The three catalogue tests run over two layouts of the same files: "objects" (`--pack-below
0`: each share an object of its own) and "packs" (`--pack-below 256K`: every share a member
of a pack, a byte range of one pack object per store and mount). A damage kind hits the
bytes of one share: the whole object, or the member's range inside its pack.

Damage kinds: bit flip, truncation, extension, deletion, swap of two shares within a store
(members: the bytes their ranges have in common), another file's share copied over, rollback
to the previous version, a forged checksum (new bytes + their checksum written into meta.db),
and a rolled-back share with a forged checksum. A case applies one kind per store to the
shares of every chunk on that store. Truncation, extension and deletion act on a whole
object: for packs they are pack-level damage, hitting every member in or after the cut (or
none, for an extension), so the per-file cases using them run over objects only and
`test_pack_level_damage` covers them over packs with expectations from the share map (damage
to packs on more than M stores: tests/test_mount_packs.py).

- 2 stores, heal on read: only data shares are damaged (a healthy read fetches those); every
  file reads bit-identical, `fusefs umount` waits for the background heals, and then an offline
  `scrub --no-repair` finds the volume healthy, every damaged share holds its exact original
  bytes again (an object in place; a member rewritten elsewhere, its pack left as it was) and
  an event names store, object, file and action "healed" for each.
- 2 stores, scrub: any share (parity too); `scrub --no-repair` reports exactly the damaged
  shares (per store, per file and by event: nothing else, so a flipped byte in a pack costs only
  the member it hits) and changes nothing; the files read bit-identical; `scrub` repairs the
  rest; `scrub --no-repair` is healthy; every share holds its original bytes.
- 3 stores: reads fail with EIO, never a wrong or stale byte; events with action
  "unrecoverable" name the files; status lists them at risk; a repairing scrub exits 1 and
  changes no object.
- Packs only: damage to whole packs (above), bytes flipped astride two members' boundary
  (both damaged) or inside dead members (nothing damaged); and the same damage compacted
  before it is found (compaction copies members unverified: it must stay findable and
  healable).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import (
    KiB,
    Mounter,
    Result,
    ShareLoc,
    Snapshot,
    Volume,
    assert_event_vocabulary,
    assert_ok,
    assert_tree,
    create_volume,
    forge_digest,
    pack_objects,
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
    "mix-swap-staleforged": ("swap", "rollback_forged"),
}
THREE_STORE_CASES: dict[str, tuple[str, str, str]] = {
    "bitflip-truncate-delete": ("bitflip", "truncate", "delete"),
    "swap-copy-extend": ("swap", "copy", "extend"),
    "rollback": ("rollback", "rollback", "rollback"),
    "staleforged": ("rollback_forged", "rollback_forged", "rollback_forged"),
    "forged": ("forged", "forged", "forged"),
    "forged-delete-bitflip": ("forged", "delete", "bitflip"),
    "bitflip-swap-copy": ("bitflip", "swap", "copy"),
}
THREE_STORE_CHUNKS = range(1, 5)  # chunk 0 and 5 stay intact (an even count for swaps)

LAYOUTS = {"objects": "0", "packs": "256K"}  # layout -> `init --pack-below` (explicit: the
#                                              tests mean the same under either default)
WHOLE_OBJECT = {"truncate", "extend", "delete"}  # for a member: damage to its whole pack
KindsT = TypeVar("KindsT", tuple[str, str], tuple[str, str, str])


def cases(layout: str, table: dict[str, KindsT]) -> dict[str, KindsT]:
    """The cases of TABLE that apply to LAYOUT (over packs: those hitting members only)."""
    return {case: kinds for case, kinds in table.items()
            if layout == "objects" or not WHOLE_OBJECT & set(kinds)}


def two_rel(case: str) -> str:
    return f"two/{case}.bin"


def three_rel(case: str) -> str:
    return f"three/{case}.bin"


DONOR, INTACT = "donor.bin", "intact.bin"


class Pristine:
    """The written volume, the v1 shares of every case file, and a saved copy of it all."""

    def __init__(self, base: Path, layout: str) -> None:
        self.layout = layout
        self.two = cases(layout, TWO_STORE_CASES)
        self.three = cases(layout, THREE_STORE_CASES)
        self.vol = create_volume(base, "vol", chunk_size="64K", pack_below=LAYOUTS[layout])
        assert int(status_json(self.vol.path)["chunk_size"]) == CHUNK
        cases_ = [two_rel(c) for c in TWO_STORE_CASES] + [three_rel(c) for c in THREE_STORE_CASES]
        v1 = {rel: rand_bytes(FILE_SIZE, f"v1:{rel}") for rel in cases_}
        self.expected = {rel: rand_bytes(FILE_SIZE, f"v2:{rel}") for rel in cases_}
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
            self.v1 = share_map(self.vol)  # (over packs: members that will be dead)
            self.old: dict[str, list[dict[tuple[str, int], bytes | None]]] = {}
            for path, chunks in self.v1.items():
                self.old[path] = [
                    {**{("store", s.store): s.read() for s in chunk},
                     **{("share", s.share): s.read() for s in chunk}}
                    for chunk in chunks
                ]
            mnt = m.mount(self.vol, base / "mnt-v2")
            for rel in cases_:  # overwrite in place: same inode, new chunk versions
                with open(mnt / rel, "r+b") as f:
                    f.write(self.expected[rel])
            m.umount(mnt)
        finally:
            problems = m.cleanup()
        assert not problems, problems
        current = share_map(self.vol)
        shares = [s for chunks in current.values() for c in chunks for s in c]
        assert all(s.packed == (layout == "packs") for s in shares), f"not all {layout}"
        for rel in cases_:
            path = "/" + rel
            assert len(current[path]) == 6, f"{rel}: expected 6 chunks"
            for new, old in zip(current[path], self.old[path], strict=True):
                for s in new:
                    assert s.read() != old[("store", s.store)], "not rewritten?"
        self.snapshot = Snapshot(self.vol, base / "saved")

    def restore(self) -> Volume:
        return self.snapshot.restore()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Pristine]:
    """Each layout's volume, written once for the module (the packs one serves two
    fixtures)."""
    made: dict[str, Pristine] = {}

    def get(layout: str) -> Pristine:
        if layout not in made:
            made[layout] = Pristine(tmp_path_factory.mktemp(f"catalogue-{layout}"), layout)
        return made[layout]

    return get


@pytest.fixture(scope="module", params=list(LAYOUTS))
def pristine(request: pytest.FixtureRequest, built: Callable[[str], Pristine]) -> Pristine:
    return built(request.param)


# ------------------------------------------------------------------------------------------
# Damage
# ------------------------------------------------------------------------------------------


@dataclass
class Damaged:
    """One damaged share: where, how, what the read/scrub must call it, its original bytes
    and what it held once damaged (None: gone)."""

    case: str
    how: str
    kind: str  # expected event kind
    loc: ShareLoc
    original: bytes
    damaged: bytes | None = None


@dataclass
class Damage:
    pristine: Pristine
    smap: dict[str, list[list[ShareLoc]]]
    done: list[Damaged] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(1234))

    def record(self, case: str, how: str, kind: str, loc: ShareLoc) -> None:
        original = loc.read()
        assert original is not None, f"{case}: {loc.obj} damaged twice?"
        self.done.append(Damaged(case, how, kind, loc, original))

    def apply(self, case: str, how: str, targets: list[ShareLoc]) -> None:
        """Damage TARGETS (shares of different chunks of one file, all on one store)."""
        vol = self.pristine.vol
        if how == "swap":  # swap pairs of shares within the store
            assert len(targets) >= 2, f"{case}: swap needs 2 shares on one store"
            for a, b in zip(targets[0::2], targets[1::2], strict=False):
                self.record(case, how, CHECKSUM, a)
                self.record(case, how, CHECKSUM, b)
                da, db = a.read() or b"", b.read() or b""
                if a.packed:  # members keep their ranges: swap the bytes they have in common
                    n = min(len(da), len(db))
                    da, db = da[:n], db[:n]
                a.write(db)
                b.write(da)
            return
        for loc in targets:
            data = loc.read()
            assert data is not None
            assert not (loc.packed and how in WHOLE_OBJECT), f"{how}: not a member's damage"
            old = self.pristine.old[loc.path][loc.chunk]
            kind = CHECKSUM
            if how == "bitflip":
                new = bytearray(data)
                new[len(new) // 2] ^= 0x10
                self.record(case, how, kind, loc)
                loc.write(bytes(new))
            elif how == "truncate":
                self.record(case, how, kind, loc)
                loc.write(data[: len(data) // 2])
            elif how == "extend":
                self.record(case, how, kind, loc)
                loc.write(data + self.rng.randbytes(17))
            elif how == "delete":
                self.record(case, how, MISSING, loc)
                loc.file.unlink()
            elif how == "copy":  # the donor's share of the same chunk on the same store
                donor = self.smap["/" + DONOR][loc.chunk]
                src = next(s for s in donor if s.store == loc.store).read()
                assert src is not None and len(src) == len(data)
                self.record(case, how, kind, loc)
                loc.write(src)
            elif how == "rollback":  # the v1 share of this chunk on this store
                self.record(case, how, kind, loc)
                v1 = old[("store", loc.store)]
                assert v1 is not None and len(v1) == len(data)
                loc.write(v1)
            elif how == "forged":  # new bytes and their checksum in meta.db
                self.record(case, how, AUTH, loc)
                forge_digest(vol, loc, self.rng.randbytes(len(data)))
            elif how == "rollback_forged":  # the v1 share of the same number, checksum forged
                self.record(case, how, AUTH, loc)
                v1 = old[("share", loc.share)]
                assert v1 is not None
                forge_digest(vol, loc, v1)
            else:
                raise AssertionError(how)

    def seal(self) -> Damage:
        """Note what every damaged share holds now (a healed member's pack must keep it)."""
        for d in self.done:
            d.damaged = d.loc.read()
            assert d.damaged != d.original, f"{d.case}: {d.how} changed nothing"
        return self

    def by_case(self) -> dict[str, list[Damaged]]:
        out: dict[str, list[Damaged]] = collections.defaultdict(list)
        for d in self.done:
            out[d.case].append(d)
        return out


def choose_stores(chunks: list[list[ShareLoc]], n: int, eligible: Callable[[ShareLoc], bool],
                  rotate: int) -> tuple[int, ...]:
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

    for n, (case, kinds) in enumerate(pristine.two.items()):
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
    return dmg.seal()


def damage_three(pristine: Pristine) -> Damage:
    dmg = Damage(pristine, share_map(pristine.vol))
    for case, kinds in pristine.three.items():
        n = list(THREE_STORE_CASES).index(case)  # the same stores in either layout
        chunks = dmg.smap["/" + three_rel(case)]
        stores = list(itertools.combinations(range(N_STORES), 3))[n % 10]
        for store, how in zip(stores, kinds, strict=True):
            dmg.apply(case, how, [on_store(chunks[c], store) for c in THREE_STORE_CHUNKS])
    per_chunk = collections.Counter((d.loc.path, d.loc.chunk) for d in dmg.done)
    assert set(per_chunk.values()) == {3}, per_chunk
    return dmg.seal()


PACK_DAMAGE = {0: "truncate", 1: "delete", 2: "extend", 3: "flip-dead"}  # store -> what is
#                                                        done to every pack on it


def damage_packs(pristine: Pristine) -> Damage:
    """Whole-pack damage on 4 stores (every chunk keeps K good shares): the members it hits
    are computed from the share map. A truncation at a member's start (the first pack of
    the store) or in its middle (the others): that member is missing or short (checksum
    mismatch), every member after it missing; the two bytes astride a boundary of two
    members: both; a deleted pack: every member missing; an extended pack, or bytes flipped
    in the dead members of a pack (v1 shares, replaced): none."""
    vol = pristine.vol
    dmg = Damage(pristine, share_map(vol))
    shares = [s for chunks in dmg.smap.values() for c in chunks for s in c]
    dead = [s for chunks in pristine.v1.values() for c in chunks for s in c
            if s not in shares]
    flipped = 0
    for pack in pack_objects(vol):
        how = PACK_DAMAGE.get(pack.store)
        members = sorted((s for s in shares if s.file == pack.file), key=lambda s: s.offset)
        if how is None or not members:
            continue
        case = f"pack-{how}"
        if how == "truncate":
            mid = members[len(members) // 2]
            assert mid.length is not None
            first = pack.id == min(p.id for p in pack_objects(vol) if p.store == pack.store)
            cut = mid.offset + (0 if first else mid.length // 2)
            for s in members:
                assert s.length is not None
                if s.offset + s.length > cut:
                    dmg.record(case, how, MISSING if s.offset >= cut else CHECKSUM, s)
            os.truncate(pack.file, cut)
            # and, before the cut, two bytes flipped astride two adjacent members' boundary
            a, b = next((a, b) for a, b in zip(members, members[1:], strict=False)
                        if a.offset + (a.length or 0) == b.offset)
            assert b.offset + (b.length or 0) <= cut, "no adjacent members before the cut"
            dmg.record("pack-boundary", "bitflip", CHECKSUM, a)
            dmg.record("pack-boundary", "bitflip", CHECKSUM, b)
            with open(pack.file, "r+b") as f:
                f.seek(b.offset - 1)
                edge = f.read(2)
                f.seek(b.offset - 1)
                f.write(bytes(x ^ 0x01 for x in edge))
        elif how == "delete":
            for s in members:
                dmg.record(case, how, MISSING, s)
            pack.file.unlink()
        elif how == "extend":
            with open(pack.file, "ab") as f:
                f.write(dmg.rng.randbytes(17))
        else:
            live = {(s.offset, s.length) for s in members}
            for s in dead:
                if s.file == pack.file:
                    assert (s.offset, s.length) not in live
                    data = s.read()
                    assert data is not None and s.length is not None
                    s.write(data[: s.length // 2] + bytes([data[s.length // 2] ^ 0x10]))
                    flipped += 1
    assert flipped > 0, "no dead member to flip a byte in"
    assert {d.loc.store for d in dmg.done} == {
        si for si, how in PACK_DAMAGE.items() if how in ("truncate", "delete")}
    per_chunk = collections.Counter((d.loc.path, d.loc.chunk) for d in dmg.done)
    assert max(per_chunk.values()) == 2
    return dmg.seal()


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------


def case_of(path: str) -> str:
    return path.rsplit("/", 1)[1].removesuffix(".bin")


def check_restored(vol: Volume, dmg: Damage) -> None:
    """Every damaged share, where its chunk row now names it, holds its exact original bytes
    under its original checksum. An object is rewritten in place (same name); a member is
    rewritten elsewhere and its pack never written again (it holds the damage until it is
    deleted)."""
    now = share_map(vol)
    bad = collections.defaultdict(list)
    for d in dmg.done:
        cur = now[d.loc.path][d.loc.chunk][d.loc.share]
        what = f"{d.how} chunk {d.loc.chunk} share {d.loc.share} store s{d.loc.store}"
        data = cur.read()
        if data != d.original:
            state = "missing" if data is None else f"{len(data)} bytes, not the original"
            bad[d.case].append(f"{what}: {state}")
        if cur.digest != d.loc.digest:
            bad[d.case].append(f"{what}: recorded checksum is not the original one")
        if d.loc.packed:
            if (cur.file, cur.offset) == (d.loc.file, d.loc.offset):
                bad[d.case].append(f"{what}: the member was not moved")
            if d.loc.file.exists() and d.loc.read() != d.damaged:  # (or emptied, deleted)
                bad[d.case].append(f"{what}: its pack was written in place")
        elif cur.name != d.loc.name:
            bad[d.case].append(f"{what}: rewritten (new object name)")
    assert not bad, "damaged shares not restored to their exact bytes:\n" + "\n".join(
        f"  {case}: {'; '.join(msgs[:4])}" for case, msgs in sorted(bad.items()))


def check_untouched(vol: Volume, dmg: Damage) -> None:
    """Every share no damage hit is still where it was: nothing else was healed."""
    hit = {(d.loc.path, d.loc.chunk, d.loc.share) for d in dmg.done}
    now = share_map(vol)
    moved = [f"{s.path} chunk {s.chunk} share {s.share}"
             for path, chunks in dmg.smap.items() for c in chunks for s in c
             if (path, s.chunk, s.share) not in hit
             and now[path][s.chunk][s.share] != s]
    assert not moved, f"undamaged shares moved: {moved[:5]}"


def check_reported(vol: Volume, dmg: Damage) -> None:
    """The "reported" events name exactly the damaged shares (store, object, file, kind):
    damage costs only the shares it hits (for a pack: the members in the damaged bytes)."""
    got = {(e["kind"], e["store"], e["object"], e.get("file"))
           for e in read_events(vol) if e["action"] == "reported"}
    want = {(d.kind, vol.store_url(d.loc.store), d.loc.obj, d.loc.path) for d in dmg.done}
    assert got == want, (f"reported but not damaged: {sorted(got - want)[:4]}; "
                         f"damaged but not reported: {sorted(want - got)[:4]}")


def check_events(vol: Volume, dmg: Damage, action: str) -> list[dict]:
    """An event with the right kind, store, object, file and ACTION for every damaged share."""
    events = read_events(vol)
    assert_event_vocabulary(events)
    have = {(e["kind"], e["store"], e["object"], e.get("file"), e["action"]) for e in events}
    missing = collections.defaultdict(list)
    for d in dmg.done:
        want = (d.kind, vol.store_url(d.loc.store), d.loc.obj, d.loc.path, action)
        if want not in have:
            similar = [e for e in events if e["object"] == d.loc.obj]
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


def check_no_repair_report(vol: Volume, dmg: Damage, res: Result, report: dict) -> None:
    """`scrub --no-repair` found exactly the damage, per store and per file."""
    assert res.returncode == 1 and not report["healthy"], res.describe()
    want = expected_counts(vol, dmg)
    got = {s["url"]: {k: s[k] for k in (MISSING, CHECKSUM, AUTH)} for s in report["stores"]}
    assert got == want, f"scrub --no-repair counts per store:\n got {got}\nwant {want}"
    for s in report["stores"]:
        assert s["state"] == "ok" and s["repaired"] == 0 and s["orphans"] == 0, s
        assert s["shares_checked"] > 0
    assert report["chunks"] == sum(len(c) for c in dmg.smap.values())
    damaged_paths = {d.loc.path for d in dmg.done}
    assert set(report["damaged_files"]) == damaged_paths, sorted(report["damaged_files"])
    assert report["unrecoverable_files"] == []
    for path, problems in report["damaged_files"].items():
        n = sum(d.loc.path == path for d in dmg.done)
        assert len(problems) == n and all(isinstance(p, str) for p in problems), (path, problems)
    check_reported(vol, dmg)


def check_repairing_scrub(res: Result, report: dict) -> None:
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert report["unrecoverable_files"] == [] and report["queued_repairs"] == 0
    assert sum(s["repaired"] for s in report["stores"]) >= 1
    for s in report["stores"]:
        found = s[MISSING] + s[CHECKSUM] + s[AUTH]
        assert s["repaired"] == found and s["queued"] == 0, s


def check_healthy(res: Result, report: dict) -> None:
    """`scrub --no-repair` found nothing: no damage, and no orphan (a heal names its copy)."""
    assert res.returncode == 0 and report["healthy"], res.describe()
    assert report["damaged_files"] == {} and report["queued_repairs"] == 0
    for s in report["stores"]:
        assert s[MISSING] + s[CHECKSUM] + s[AUTH] == 0 and s["orphans"] == 0, s


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def test_two_stores_heal_on_read(pristine: Pristine, tmp_path: Path, mounter: Mounter) -> None:
    vol = pristine.restore()
    dmg = damage_two(pristine, data_shares_only=True)
    assert {d.case for d in dmg.done} == set(pristine.two)
    kinds = {"bitflip", "swap", "copy", "rollback", "forged", "rollback_forged"}
    if pristine.layout == "objects":
        kinds |= WHOLE_OBJECT
    assert {d.how for d in dmg.done} == kinds
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, pristine.expected)  # every file, bit-identical
    mounter.umount(mnt)  # waits for the background heals

    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert report["healthy"] and res.returncode == 0, (
        "after heal-on-read and umount the volume is not healthy: "
        f"damaged files {sorted(report['damaged_files'])}; " + res.describe())
    check_healthy(res, report)
    check_restored(vol, dmg)
    check_untouched(vol, dmg)
    check_events(vol, dmg, "healed")
    st = check_status_counts(vol, dmg, "healed")
    assert st["repairs_queued"] == 0 and st["files_at_risk"] == [], st

    mnt = mounter.mount(vol, tmp_path / "mnt")  # and it all reads right once more
    assert_tree(mnt, pristine.expected)
    mounter.umount(mnt)


def test_two_stores_scrub_repairs(pristine: Pristine, tmp_path: Path, mounter: Mounter) -> None:
    vol = pristine.restore()
    dmg = damage_two(pristine, data_shares_only=False)
    assert any(d.loc.share >= K for d in dmg.done), "parity shares should be damaged too"
    assert {d.loc.path for d in dmg.done} == {"/" + two_rel(c) for c in pristine.two}
    before = {d.loc.file: (d.loc.file.read_bytes() if d.loc.file.exists() else None)
              for d in dmg.done}
    mnt = mounter.mount(vol, tmp_path / "mnt")

    # --no-repair: exactly the damage, per store, per file and by event; nothing changes
    res, report = scrub_json(mnt, "--no-repair")
    check_no_repair_report(vol, dmg, res, report)
    for f, data in before.items():
        now = f.read_bytes() if f.exists() else None
        assert now == data, f"scrub --no-repair changed {f}"
    check_events(vol, dmg, "reported")

    assert_tree(mnt, pristine.expected)  # every file, bit-identical

    res, report = scrub_json(mnt)
    check_repairing_scrub(res, report)
    res, report = scrub_json(mnt, "--no-repair")
    check_healthy(res, report)
    check_restored(vol, dmg)
    mounter.umount(mnt)

    events = check_events(vol, dmg, "healed")
    healed_by = {e["object"] for e in events if e["action"] == "healed"}
    assert healed_by >= {d.loc.obj for d in dmg.done}
    check_restored(vol, dmg)  # the recorded checksums survived the unmount
    check_untouched(vol, dmg)
    check_status_counts(vol, dmg, "healed")
    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    check_healthy(res, report)
    mnt = mounter.mount(vol, tmp_path / "mnt")  # the chunk rows name the healed copies
    assert_tree(mnt, pristine.expected)
    mounter.umount(mnt)


def test_three_stores_eio_and_events(pristine: Pristine, tmp_path: Path,
                                     mounter: Mounter) -> None:
    vol = pristine.restore()
    dmg = damage_three(pristine)
    damaged = {"/" + three_rel(c) for c in pristine.three}
    mnt = mounter.mount(vol, tmp_path / "mnt")

    outcome = {}
    for case in pristine.three:
        rel = three_rel(case)
        p = mnt / rel
        assert os.stat(p).st_size == FILE_SIZE
        # any byte returned must be the right v2 byte: never a wrong or stale (v1) one
        outcome[case] = read_checked(p, pristine.expected[rel], block=CHUNK)
        if outcome[case] == "eio":
            outcome[case] = read_checked(p, pristine.expected[rel], block=CHUNK)
    assert outcome == dict.fromkeys(pristine.three, "eio"), (
        f"with 3 of 5 shares damaged every read must fail with EIO: {outcome}")
    others = {rel: d for rel, d in pristine.expected.items() if "/" + rel not in damaged}
    assert_tree(mnt, others, exact=False)

    events = read_events(vol)
    assert_event_vocabulary(events)
    unrec = [e for e in events if e.get("action") == "unrecoverable"]
    named = {e.get("file") for e in unrec}
    assert named >= damaged, f"no 'unrecoverable' event names {sorted(damaged - named)}"
    assert named <= damaged, f"unrecoverable events for undamaged files: {named - damaged}"
    bad_names = {(vol.store_url(d.loc.store), d.loc.obj) for d in dmg.done}
    for path in damaged:
        mine = [e for e in unrec if e.get("file") == path]
        for e in mine:
            assert e["chunk"] in THREE_STORE_CHUNKS, e
            shares = dmg.smap[path][e["chunk"]]
            assert (e["store"], e["object"]) in {(vol.store_url(s.store), s.obj)
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
    for case in pristine.three:
        rel = three_rel(case)
        assert read_checked(mnt / rel, pristine.expected[rel], block=CHUNK) == "eio", rel
    mounter.umount(mnt)
    assert_ok(run_fusefs("status", vol.path))


def test_pack_level_damage(built: Callable[[str], Pristine], tmp_path: Path,
                           mounter: Mounter) -> None:
    """Truncation, deletion and extension of whole packs and flipped bytes in dead members
    (on 4 stores; a chunk loses at most 2 shares): an offline `scrub --no-repair` reports
    exactly the members computed from the share map and nothing else; every file reads
    bit-identical; `scrub` heals the rest into new members; then the volume is healthy,
    every other member stayed where it was and a fresh mount reads it all."""
    pristine = built("packs")
    vol = pristine.restore()
    dmg = damage_packs(pristine)
    assert {d.how for d in dmg.done} == {"truncate", "delete", "bitflip"}
    assert {d.kind for d in dmg.done if d.how == "truncate"} == {MISSING, CHECKSUM}

    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)  # offline
    check_no_repair_report(vol, dmg, res, report)

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, pristine.expected)  # heals the data shares on the way
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    mounter.umount(mnt)

    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    check_healthy(res, report)
    check_restored(vol, dmg)
    check_untouched(vol, dmg)
    check_events(vol, dmg, "healed")
    check_status_counts(vol, dmg, "healed")
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, pristine.expected)
    mounter.umount(mnt)


def by_share(vol: Volume, action: str) -> set[tuple[str, str, str, int]]:
    """(kind, store, file, chunk) of the events with ACTION: one share each (a chunk has one
    share per store), wherever compaction moved it."""
    return {(e["kind"], e["store"], e["file"], e["chunk"])
            for e in read_events(vol) if e["action"] == action}


def test_damaged_packs_survive_compaction(built: Callable[[str], Pristine], tmp_path: Path,
                                         mounter: Mounter) -> None:
    """`fusefs compact` over the pack-level damage (the v1 packs are mostly dead, so all
    compacted): it copies whole members as they are (damaged ones stay damaged, found and
    healed at their copy), leaves those the pack no longer holds for the heal and keeps their
    pack; nothing is lost and no damage is hidden."""
    pristine = built("packs")
    vol = pristine.restore()
    dmg = damage_packs(pristine)
    packs = pack_objects(vol)
    candidates = {p.file for p in packs if 0 < p.live < p.size / 2}
    gone = {d.loc for d in dmg.done if d.how in ("truncate", "delete")}
    left = [d for d in dmg.done if d.loc.file in candidates and d.loc in gone]
    assert candidates and left and any(d.loc.file in candidates for d in dmg.done
                                       if d.loc not in gone), "compaction would prove little"

    res = assert_ok(run_fusefs("compact", vol.path, "--key-file", vol.key, "--json"))
    report = json.loads(res.stdout)
    assert report["left"] == len(left), report
    assert report["packs"] == len(candidates - {d.loc.file for d in left}), report
    assert {p.file for p in pack_objects(vol)} >= {d.loc.file for d in left}

    want = {(d.kind, vol.store_url(d.loc.store), d.loc.path, d.loc.chunk) for d in dmg.done}
    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    assert res.returncode == 1 and by_share(vol, "reported") == want, res.describe()
    assert {s["url"]: {k: s[k] for k in (MISSING, CHECKSUM, AUTH)} for s in report["stores"]
            } == expected_counts(vol, dmg)

    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, pristine.expected)
    res, report = scrub_json(mnt)
    assert res.returncode == 0 and report["healthy"], res.describe()
    mounter.umount(mnt)
    assert by_share(vol, "healed") == want
    res, report = scrub_json(vol.path, "--no-repair", "--key-file", vol.key)
    check_healthy(res, report)
    check_restored(vol, dmg)
    mnt = mounter.mount(vol, tmp_path / "mnt")
    assert_tree(mnt, pristine.expected)
    mounter.umount(mnt)
