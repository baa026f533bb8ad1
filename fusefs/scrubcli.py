"""`fusefs scrub`: run a scrub in the mount daemon (mounted) or here (unmounted), show
progress (a bar on a terminal, plain lines elsewhere), print the report. Exit 0 when
healthy, 1 when damage remains."""

from __future__ import annotations

import argparse
import json
import sys

import trio

from fusefs.errors import ConfigError
from fusefs.progress import Progress
from fusefs.volumedir import VolumeDir, resolve_target


def scrub(args: argparse.Namespace) -> int:
    vd, mounted = resolve_target(args.target)
    rate = args.rate * 1e6 if args.rate else None
    if rate is not None and rate <= 0:
        raise ConfigError("--rate must be positive")
    # a bar on a terminal (not with --json), plain lines elsewhere (logs, CI)
    bar = Progress("scrub", "chunk", bar=sys.stderr.isatty() and not args.json)
    try:
        if mounted is not None:
            report = _scrub_mounted(vd, not args.no_repair, rate, bar)
        else:
            report = _scrub_offline(vd, args.key_file, not args.no_repair, rate, bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0 if report["healthy"] else 1


def _scrub_mounted(vd: VolumeDir, repair: bool, rate: float | None, bar) -> dict:
    from fusefs.control import ask

    return ask(vd.path, {"op": "scrub", "repair": repair, "rate": rate}, bar.update)


def _scrub_offline(vd: VolumeDir, key_file: str | None, repair: bool, rate: float | None,
                   bar) -> dict:
    from fusefs.offline import check_still_writer, offline_volume

    cfg, keys = vd.unlock(key_file)
    vd.log_here(to_stderr=False)
    vd.make_private()  # a directory left open by an older fusefs
    # A follower's directory only reads and reports: the writer owns the stores (it repairs,
    # and it alone knows which objects are its own).
    writer = cfg.role == "writer"
    repair = repair and writer
    with offline_volume(vd, cfg, keys, writable=writer) as volume:

        async def run() -> dict:
            await check_still_writer(volume, vd)
            if repair:
                await volume.recover_lost_writes()  # before garbage is collected
            report = await volume.scrubber(repair=repair, rate=rate,
                                           progress=bar.update).run()
            volume.close_packs()
            if repair:
                await volume.make_durable(wait_for_garbage=True)
            return report.as_dict()

        return trio.run(run)


def _print_report(r: dict) -> None:
    print(f"scrubbed {r['chunks']} chunks, {r['bytes_read'] / 1e6:.1f} MB in "
          f"{r['seconds']:.1f} s")
    for s in r["stores"]:
        problems = (f"missing {s['missing']}, corrupt {s['checksum_mismatch']}, "
                    f"forged {s['authentication_failure']}, "
                    f"unreachable {s['store_unreachable']}")
        print(f"  {s['url']}: {s['state']}; {s['shares_checked']} shares checked; {problems};"
              f" repaired {s['repaired']}, queued {s['queued']};"
              f" orphans {s['orphans']} (removed {s['orphans_removed']})")
    for path, problems in sorted(r["damaged_files"].items()):
        print(f"  damaged: {path}: {'; '.join(problems[:3])}"
              + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
    if r["queued_repairs"]:
        print(f"  {r['queued_repairs']} share repairs queued (a store is unavailable)")
    if r["healthy"]:
        print("healthy")
    else:
        n = len(r["unrecoverable_files"])
        print("damage remains" + (f"; {n} files unrecoverable: "
                                  + ", ".join(r["unrecoverable_files"][:10]) if n else ""))
