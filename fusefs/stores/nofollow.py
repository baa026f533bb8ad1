"""Opening a path below a store root without following any symlink (see `local`'s
"Containment"): one openat2(2) with RESOLVE_NO_SYMLINKS where the kernel has it, else one
component at a time with O_NOFOLLOW; and replacing, unlinking and sweeping names in a
directory opened that way without following a symlink at the name."""

from __future__ import annotations

import ctypes
import os
import platform
import stat

_libc = ctypes.CDLL(None, use_errno=True)

# openat2(2) (Linux 5.6): the whole path walk in one syscall, refusing every symlink. The
# path is absolute (the root's resolved path, see LocalStore._resolve): RESOLVE_BENEATH
# would need an fd of the root, which keeps pointing at a store directory that was removed,
# replaced or mounted over. Without symlinks and with hex names (no ".."), the walk cannot
# leave the root anyway.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
_AT_FDCWD = -100
RESOLVE_NO_SYMLINKS = 0x04  # any symlink on the path (its last component too): ELOOP


class _OpenHow(ctypes.Structure):
    """struct open_how of openat2(2)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_void_p, ctypes.c_size_t, use_errno=True)(("syscall", _libc))
_HOW_SIZE = ctypes.sizeof(_OpenHow)
_hows: dict[tuple[int, int], _OpenHow] = {}  # kept alive: the syscall gets their addresses


def how(flags: int, mode: int) -> int:
    """The address of an open_how for these flags, refusing symlinks anywhere."""
    h = _hows.get((flags, mode))
    if h is None:
        h = _hows.setdefault((flags, mode), _OpenHow(flags | os.O_CLOEXEC, mode,
                                                     RESOLVE_NO_SYMLINKS))
    return ctypes.addressof(h)


def openat2(path: str, flags: int, mode: int = 0) -> int:
    fd = _syscall(_SYS_OPENAT2, _AT_FDCWD, path.encode("utf-8", "surrogateescape"),
                  how(flags, mode), _HOW_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def raw_openat2(path: bytes, how_addr: int) -> int:
    """The syscall itself, for a store's hot path: an fd, or -1 (the error in
    ctypes.get_errno())."""
    return _syscall(_SYS_OPENAT2, _AT_FDCWD, path, how_addr, _HOW_SIZE)


def _probe_openat2() -> bool:
    """Whether openat2 works here (old kernels: ENOSYS; some seccomp filters: EPERM)."""
    if _SYS_OPENAT2 is None:
        return False
    try:
        os.close(openat2("/", os.O_PATH | os.O_DIRECTORY))
    except OSError:
        return False
    return True


OPENAT2 = _probe_openat2()  # tests turn it off to run the per-component fallback


def open_walk(base: str, rel: str, flags: int, mode: int = 0) -> int:
    """The fallback for kernels without openat2: the root as it is, then every component
    below it relative to the previous directory fd, none followed if it is a symlink."""
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if not rel:
        try:
            return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=fd)
        finally:
            os.close(fd)
    *dirs, last = rel.split("/")
    try:
        for part in dirs:
            # O_NOFOLLOW | O_DIRECTORY: a symlink fails with ENOTDIR, never opens its target
            sub = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = sub
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    finally:
        os.close(fd)


def replace_in(parent: int, tmp: str, name: str) -> None:
    """Rename tmp over name in the directory `parent`. A symlink there is replaced itself,
    never its target; an empty directory in the way (damage) is removed first."""
    try:
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except IsADirectoryError:
        os.rmdir(name, dir_fd=parent)  # only an empty one; anything else fails the put
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)


def unlink_regular(parent: int, name: str) -> None:
    """Unlink name in `parent` if it is a regular file (what `list` reports); a missing
    one is fine. (Swapped for something else meanwhile: unlinkat removes that name, never
    what a symlink points to.)"""
    try:
        if stat.S_ISREG(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass


def remove_stale(dirfd: int, prefix: str, cutoff: float, skip: set[str]) -> int:
    """Unlink the regular files in `dirfd` named `prefix`* (temporaries), not in `skip`
    (being written) and last written before `cutoff`; how many. Nothing else is stat'ed."""
    removed = 0
    with os.scandir(dirfd) as entries:
        for e in entries:
            if not e.name.startswith(prefix) or e.name in skip:
                continue
            try:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    os.unlink(e.name, dir_fd=dirfd)
                    removed += 1
            except FileNotFoundError:
                pass  # gone meanwhile
    return removed
