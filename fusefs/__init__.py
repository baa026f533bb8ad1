"""fusefs: a transparent, self-healing, encrypted FUSE filesystem for machine-learning data."""

__version__ = "0.1.0"


def fingerprint(path: str, *, verify: bool = False) -> str:
    """The content fingerprint (64 hex digits) of a directory tree or file: from the
    metadata inside a fusefs mount, by reading it anywhere else; the same value for the same
    content either way (docs/format.md, "Fingerprints"). For training code to log next to
    the model. `verify` (in a mount) re-reads every byte and raises FusefsError when
    anything differs from what the metadata records."""
    from fusefs.errors import FusefsError
    from fusefs.pathdigest import fingerprint as of_path

    got = of_path(path, verify=verify)
    if got.get("mismatches") or got.get("recorded", got["fingerprint"]) != got["fingerprint"]:
        raise FusefsError(f"{path}: the bytes read differ from what the metadata records")
    return got["fingerprint"]

