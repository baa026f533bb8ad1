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
