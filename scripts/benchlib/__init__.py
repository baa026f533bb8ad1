"""The fusefs benchmark's code; scripts/bench is its command line and describes what it runs.

    config     fixed parameters (K/M, I/O sizes, timeouts), Sizes, BenchError, log and warn
    sysutil    the mount table, syncfs, the page cache, processes
    workloads  the workloads, the same code for every system, and the table's rows
    systems    raw, fusefs and the peers (passthru, gocryptfs, securefs, fusefs-s3)
    runner     Bench: the rounds of workloads on every system, the samples
    report     medians, targets, the table, the JSON file
    main       checks, the temp dir, cleanup on any exit, the exit status

This package is not part of fusefs and does not import it.
"""

from __future__ import annotations

import importlib.util

# Whether this interpreter imports fusefs: then the default fusefs command is
# `python -m fusefs` (main.default_fusefs_cmd).
FUSEFS_IMPORTABLE = importlib.util.find_spec("fusefs") is not None
