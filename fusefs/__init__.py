"""fusefs: a transparent, self-healing, encrypted FUSE filesystem for machine-learning data."""

__version__ = "0.1.0"
