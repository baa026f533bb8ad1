"""Uninitialised byte buffers for the data path.

`bytearray(n)` zero-fills, but share reads and decryption overwrite every byte of their
buffer anyway: on sequential reads of 4 MiB chunks that memset was ~8% of the daemon's CPU
(perf). CPython's `PyByteArray_FromStringAndSize(NULL, n)` leaves the bytes as they are;
other interpreters get `bytearray(n)`.

Never let a byte of such a buffer leave the process unwritten: it may hold old heap data
(another file's plaintext). Callers fill every byte or zero what they do not fill.
"""

from __future__ import annotations

import ctypes
import sys

if sys.implementation.name == "cpython":
    _new = ctypes.pythonapi.PyByteArray_FromStringAndSize
    _new.restype = ctypes.py_object
    _new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)

    def uninitialized(n: int) -> bytearray:
        """A bytearray of n bytes whose contents are undefined (see the module docstring)."""
        return _new(None, n)

else:  # pragma: no cover - other interpreters

    def uninitialized(n: int) -> bytearray:
        return bytearray(n)


PAGE = 4096


def address(buf: bytearray | memoryview) -> int | None:
    """Where a writable buffer's bytes start in memory; None for read-only ones."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except (TypeError, ValueError):  # read-only (bytes), or empty
        return None


def page_aligned_slots(count: int, size: int) -> list[memoryview]:
    """`count` uninitialised buffers of `size` bytes, each starting on a page boundary, cut
    from one allocation: a store can write them with O_DIRECT without copying them."""
    stride = -(-size // PAGE) * PAGE
    raw = uninitialized(count * stride + PAGE)
    start = address(raw)
    skip = (-start) % PAGE if start is not None else 0
    view = memoryview(raw)
    return [view[skip + i * stride : skip + i * stride + size] for i in range(count)]
