"""The report: medians, the targets and their verdicts, the table on stdout, the JSON file.

Every figure is the median of its samples (the RSS has one: the maximum over the daemons).
A ratio is against raw ("degraded": against fusefs's healthy read) and is judged as printed,
to 2 decimals. `report()` prints the header, the table, the S3-backed volume's line, the
errors of fusefs's log and the warnings, and writes --json PATH with every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .config import REPO, WARNINGS, K, M, MiB, N
from .systems import FusefsS3
from .workloads import WORKLOADS

if TYPE_CHECKING:
    from .runner import Bench

# key -> (minimum ratio to raw, how the target reads); "degraded" is against the healthy read.
TARGETS = {
    "write": (0.9 * K / N, f">= {0.9 * K / N:.2f} (0.9 x K/N)"),
    "read": (0.45, ">= 0.45"),
    "random": (0.5, ">= 0.50"),
    "small_read": (0.55, ">= 0.55"),
    "walk_cold": (0.4, ">= 0.40"),
    "walk_warm": (0.4, ">= 0.40"),
    "degraded": (0.8, ">= 0.80 x healthy"),
    "rss": (400.0, "<= 400 MiB"),
}


def medians(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {key: {name: statistics.median(v) for name, v in per.items() if v}
            for key, per in samples.items()}


def judge(med: dict[str, dict[str, float]]) -> dict[str, dict]:
    """key -> {"target": text, "ratio": fusefs's ratio or None, "pass": True/False/None}."""
    out = {}
    for key, (limit, text) in TARGETS.items():
        value = med[key].get("fusefs")
        if key == "rss":
            ratio, ok = None, (value <= limit if value is not None else None)
        else:
            ref = med["read" if key == "degraded" else key].get(
                "fusefs" if key == "degraded" else "raw")
            ratio = value / ref if value is not None and ref else None
            # judged as printed (2 decimals), so that a "0.40" never reads as a FAIL
            ok = round(ratio, 2) >= round(limit, 2) if ratio is not None else None
        out[key] = {"target": text, "ratio": ratio, "pass": ok}
    return out


def table(med: dict[str, dict[str, float]], verdicts: dict[str, dict], systems: list[str]) -> str:
    """One row per workload; raw, fusefs, then two columns (figure, ratio) per other system."""
    peers = [name for name in systems if name not in ("raw", "fusefs")]
    head = ["workload", "unit", "raw", "fusefs", "fusefs/raw"]
    for p in peers:
        head += [p, f"{p}/raw"]
    head += ["target", "result"]
    rows = [head]
    for key, label, unit in WORKLOADS:
        per = med[key]
        raw = per.get("raw")
        if key == "degraded":
            raw = med["read"].get("raw")  # a raw directory has no store to lose
        row = [label, unit, fmt(raw), fmt(per.get("fusefs"))]
        row.append(fmt_ratio(per.get("fusefs"), raw))
        for p in peers:
            row += [fmt(per.get(p)), fmt_ratio(per.get(p), raw)]
        v = verdicts.get(key)
        if v is None:
            row += ["-", "-"]
        else:
            text = v["target"]
            if key == "degraded" and v["ratio"] is not None:
                text += f" ({v['ratio']:.2f})"
            row += [text, {True: "ok", False: "FAIL", None: "-"}[v["pass"]]]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    numeric = set(range(2, len(head) - 2))
    lines = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 1000 else f"{v:.1f}"


def fmt_ratio(v: float | None, ref: float | None) -> str:
    return f"{v / ref:.2f}" if v is not None and ref else "-"


def git_describe() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def report(bench: Bench, a: argparse.Namespace, fstype: str, source: str,
           elapsed: float) -> dict[str, dict]:
    """Print the report on stdout and write --json PATH; the verdicts, for --strict."""
    med = medians(bench.samples)
    verdicts = judge(med)
    fslog = bench.fusefs.log_summary() if bench.fusefs else {}
    drop = "page cache dropped" if bench.cache.enabled else "page cache NOT dropped"
    remount = "" if a.no_remount else ", fresh mount"
    print(f"fusefs benchmark: K={K} M={M} over {N} stores on {source} ({fstype}); "
          f"{bench.sizes.describe()}")
    print(f"median of {a.repeat}; {drop}{remount} before cold phases; {os.cpu_count()} CPUs; "
          f"{elapsed:.0f} s")
    print()
    print(table(med, verdicts, [sy.name for sy in bench.systems]))
    s3 = bench.s3_figures
    if s3:
        local = med.get("write", {}).get("fusefs"), med.get("read", {}).get("fusefs")
        print(f"S3-backed volume ({FusefsS3.S3_STORES} of {N} stores in buckets of a moto "
              f"server over loopback; {bench.notes['s3']['size'] // MiB} MiB file): "
              f"write + fsync {s3['write']:.1f} MB/s, cold read {s3['read']:.1f} MB/s "
              f"(local stores: {local[0] or 0:.1f} and {local[1] or 0:.1f} MB/s)")
    counts = fslog.get("counts", {})
    if counts.get("ERROR") or counts.get("CRITICAL") or counts.get("Traceback"):
        print()
        print(f"fusefs.log: {counts}")
        for line in fslog.get("first_errors", []):
            print(f"    {line}")
    if WARNINGS:
        print()
        for w in WARNINGS:
            print(f"warning: {w}")
    sys.stdout.flush()
    if a.json:
        doc = json_doc(bench, a, fstype, source, elapsed, med, verdicts, fslog)
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
    return verdicts


def json_doc(bench: Bench, a: argparse.Namespace, fstype: str, source: str, elapsed: float,
             med: dict, verdicts: dict, fslog: dict) -> dict:
    """What --json PATH holds: the configuration, the machine, every sample, the verdicts."""
    return {
        "config": {"k": K, "m": M, "stores": N, "repeat": a.repeat, "quick": a.quick,
                   "drop_caches": bench.cache.enabled, "remount_cold": not a.no_remount,
                   **bench.sizes.as_dict()},
        "environment": {"kernel": platform.release(), "cpus": os.cpu_count(),
                        "python": platform.python_version(), "filesystem": fstype,
                        "device": source, "git": git_describe(),
                        "fusefs_command": a.fusefs_cmd},
        "systems": [sy.name for sy in bench.systems],
        "units": {key: unit for key, _, unit in WORKLOADS},
        "samples": bench.samples,
        "medians": med,
        "targets": verdicts,
        "fusefs_log": fslog,
        "notes": bench.notes,
        "warnings": WARNINGS,
        "elapsed_s": elapsed,
    }
