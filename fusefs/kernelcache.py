"""What the kernel may cache of a mount, and which requests it may stop sending.

A FUSE request costs a Python daemon tens of microseconds however little it does, and a
training loader opens every file of a dataset once per epoch. On a mount whose files cannot
change behind the kernel's back, most of those requests carry no information: this module
decides, in one place, how long names and attributes stay cached, whether FLUSH is answered
at all, and whether OPEN is (no-open mode). `mount` picks a policy, `fuse_ops` applies it.

Why each choice keeps invariant 1 (never stale bytes):
- writable mount: this daemon is the only writer of the volume (the volume lock), every
  change passes through the kernel, so its caches see it; timeouts stay short anyway
  (`DEFAULT`), and FLUSH/OPEN carry the close-to-open work (commit at close).
- read-only mount of a volume directory (not a follower): the metadata cannot change while it
  is mounted (the lock keeps every writer out; heals rewrite shares with the same bytes), so
  the kernel may cache names, attributes and pages for as long as it likes.
- follower: the metadata changes at each snapshot switch, and `mount._switched` then tells
  the kernel to forget every inode and name that changed (pages too). Long timeouts are
  right there; no-open is not, because an open file of a follower keeps reading the version
  it opened (the chunk map is pinned at OPEN and dropped at RELEASE).

Extended attributes: `ls -l` asks for two of every entry (security.selinux and
system.posix_acl_access), which the kernel never caches: two requests per entry, the cost
of a cold `ls -lR` (10,000 files: 20,063 GETXATTR against 42 READDIR). A read-only mount of
a volume without any extended attribute (none can appear while it is mounted) answers the
first GETXATTR and LISTXATTR with ENOSYS: the kernel then answers every later one itself
(EOPNOTSUPP: "no attributes here", which `ls`, `cp -a` and `tar` take as such). A follower
keeps them (a snapshot switch may bring attributes), as does a writable mount (POSIX).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SHORT_TIMEOUT = 10.0  # seconds: a writable mount (it was the only setting before)
LONG_TIMEOUT = 365 * 86400.0  # seconds: "until invalidated"; the kernel caps it anyway


@dataclass(frozen=True)
class KernelCache:
    name: str  # for the log: "default", "dataset", "dataset, no-open"
    entry_timeout: float
    attr_timeout: float
    flush: bool  # False: FLUSH is answered ENOSYS, and the kernel never sends it again
    open: bool  # False: OPEN is answered ENOSYS (no OPEN/RELEASE; reads come by inode)
    xattrs: bool = True  # False: GETXATTR and LISTXATTR are answered ENOSYS, never sent again


DEFAULT = KernelCache("default", SHORT_TIMEOUT, SHORT_TIMEOUT, flush=True, open=True)


def _env_off(name: str) -> bool:
    """An A/B switch: FUSEFS_<lever>=0 turns one lever of dataset mode off."""
    return os.environ.get(name, "").strip().lower() in ("0", "no", "false", "off")


def choose(*, read_only: bool, follower: bool, dataset: bool, read_by_inode: bool,
           has_xattrs: bool = True) -> KernelCache:
    """The policy of a mount. `read_by_inode`: the FUSE binding hands `read` the inode when
    there is no file handle (the patched pyfuse3, `patches/`), which no-open mode needs;
    `has_xattrs`: the volume holds an extended attribute somewhere (a version included)."""
    if not (read_only and dataset):
        return DEFAULT
    flush = _env_off("FUSEFS_NO_FLUSH")
    no_open = read_by_inode and not follower and not _env_off("FUSEFS_NO_OPEN")
    timeout = SHORT_TIMEOUT if _env_off("FUSEFS_LONG_TIMEOUTS") else LONG_TIMEOUT
    no_xattrs = not (has_xattrs or follower or _env_off("FUSEFS_NO_XATTR"))
    name = "dataset" + (", no-open" if no_open else "") + (", no xattrs" if no_xattrs else "")
    return KernelCache(name, timeout, timeout, flush=flush, open=not no_open,
                       xattrs=not no_xattrs)
