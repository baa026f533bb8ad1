"""The fusefs benchmarks' code; scripts/bench and scripts/bench_pipeline are their command
lines and describe what they run.

    config     fixed parameters (K/M, I/O sizes, timeouts), Sizes, BenchError, log and warn
    sysutil    mounts (through fusefs.mounts), syncfs, the page cache, processes
    workloads  the workloads, the same code for every system, and the table's rows
    systems    raw, fusefs and the peers (passthru, gocryptfs, securefs, fusefs-s3)
    runner     Bench: the rounds of workloads on every system, the samples
    report     medians, targets, the table, the JSON file
    main       checks, the temp dir, cleanup on any exit, the exit status
    loader     the pipeline benchmark's images, dataset and epochs (a DataLoader or a pool)
    pipeline   Pipeline: its columns, cold and warm epochs, CPU and FUSE requests, report
    direct     its "direct" column: fusefs's direct read API opened in each worker

This package is not part of fusefs (nothing in fusefs imports it). It imports fusefs.mounts,
the project's mount-table reader: from the interpreter's fusefs when it has one (the venv, or
PYTHONPATH), else from this checkout.
"""

from __future__ import annotations

import importlib.util
import sys

from .config import REPO

# Whether this interpreter imports fusefs by itself, before the fallback below: then the
# default fusefs command is `python -m fusefs` (main.default_fusefs_cmd).
FUSEFS_IMPORTABLE = importlib.util.find_spec("fusefs") is not None
if not FUSEFS_IMPORTABLE:
    sys.path.append(str(REPO))  # fusefs/mounts.py needs nothing beyond the standard library
