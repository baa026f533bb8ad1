"""Allow `python -m fusefs`."""

from fusefs.cli import main

raise SystemExit(main())
