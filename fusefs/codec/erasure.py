"""zfec erasure coding of one sealed chunk into K data + M parity shares.

The code is systematic: data shares are plain slices of the (zero-padded) ciphertext, so a
healthy read only concatenates. Shares are ceil(len/K) bytes; the true length is kept in the
metadata and used to strip the padding.

zfec defines the code; when ISA-L is installed (`isal`), its SIMD kernels compute the same
bytes about 15x faster. FUSEFS_ERASURE=zfec forces zfec (A/B measurements).

Trap: `zfec.Decoder.decode` reorders its input block list in place (even a tuple), but not
the share numbers, so reusing the same inputs silently returns wrong data; every call builds
fresh lists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import zfec

from fusefs.codec import isal
from fusefs.codec.buffers import uninitialized

Buffer = bytes | bytearray | memoryview

# "isal" or "zfec": which implementation does the GF(2^8) arithmetic (tests switch it)
backend = "isal" if isal.available and os.environ.get("FUSEFS_ERASURE") != "zfec" else "zfec"


def share_size(length: int, k: int) -> int:
    """Size of every share of a `length`-byte payload split into `k` data shares."""
    return max(1, -(-length // k))


def encode(payload: Buffer, k: int, m: int) -> list[Buffer]:
    """Split `payload` into k data shares and compute m parity shares (n = k + m in all)."""
    size = share_size(len(payload), k)
    return encode_padded(bytes(payload) + bytes(k * size - len(payload)), k, m)


def encode_padded(padded: Buffer, k: int, m: int) -> list[Buffer]:
    """`encode` of a payload already zero-padded to k * share_size: no copy of the data
    shares (they are views of `padded`, which must not change afterwards)."""
    size = len(padded) // k
    view = memoryview(padded)
    data = [view[i * size : (i + 1) * size] for i in range(k)]
    if m == 0:
        return list(data)
    return [*data, *_parity(data, k, m, range(k, k + m))]


def encode_into(data: Sequence[Buffer], k: int, m: int, parity: Sequence[Buffer]) -> None:
    """Compute the m parity shares of the k data shares into the buffers `parity`."""
    if backend == "isal":
        isal.parity(data, k, m, range(k, k + m), parity)
        return
    for dest, share in zip(parity, _parity(data, k, m, range(k, k + m)), strict=True):
        memoryview(dest)[:] = share


def _parity(data: Sequence[Buffer], k: int, m: int, wanted: Sequence[int]) -> list[Buffer]:
    """Parity shares `wanted` (each >= k) of the k equal-sized data shares."""
    if backend == "isal":
        out = [uninitialized(len(data[0])) for _ in wanted]
        isal.parity(data, k, m, wanted, out)
        return list(out)
    return list(zfec.Encoder(k, k + m).encode(tuple(data), tuple(wanted)))


def decode(shares: Mapping[int, Buffer], k: int, m: int, length: int) -> memoryview:
    """Rebuild the `length`-byte payload from any k shares (share number -> bytes).

    Returns a view, so stripping the padding costs no copy.
    """
    if len(shares) < k:
        raise ValueError(f"need {k} shares, got {len(shares)}")
    if all(i in shares for i in range(k)):
        return memoryview(b"".join(shares[i] for i in range(k)))[:length]
    size = len(next(iter(shares.values())))
    padded = memoryview(bytearray(k * size))
    for i in range(k):
        if i in shares:
            padded[i * size : (i + 1) * size] = shares[i]
    fill_missing(shares, k, m, padded)
    return padded[:length]


def fill_missing(shares: Mapping[int, Buffer], k: int, m: int, padded: memoryview) -> None:
    """Decode the data shares missing from `shares` into their slots of `padded` (k slots of
    share size, the present data shares already in theirs): the payload ends up contiguous
    with one copy of each lost share, not a copy of the whole payload."""
    size = len(padded) // k
    nums = sorted(shares)[:k]
    if len(nums) < k:
        raise ValueError(f"need {k} shares, got {len(nums)}")
    lost = [i for i in range(k) if i not in nums]
    if not lost:
        return
    blocks = [shares[i] for i in nums]  # fresh list: decode() reorders it in place
    if backend == "isal":  # straight into the slots: no copy of the rebuilt shares
        isal.recover(blocks, nums, k, m, lost, [padded[i * size : (i + 1) * size] for i in lost])
        return
    primary = zfec.Decoder(k, k + m).decode(blocks, list(nums))
    for i in lost:
        padded[i * size : (i + 1) * size] = primary[i]


def regenerate(payload: Buffer, k: int, m: int, wanted: Sequence[int]) -> dict[int, Buffer]:
    """Recompute the exact bytes of shares `wanted` from the full payload (for repair)."""
    size = share_size(len(payload), k)
    return regenerate_padded(bytes(payload) + bytes(k * size - len(payload)), k, m, wanted)


def regenerate_padded(padded: Buffer, k: int, m: int, wanted: Sequence[int]
                      ) -> dict[int, Buffer]:
    """`regenerate` from the zero-padded payload: data shares are slices, and only the
    wanted parity shares are computed (one parity costs half of encoding two)."""
    size = len(padded) // k
    view = memoryview(padded)
    data = tuple(view[i * size : (i + 1) * size] for i in range(k))
    out: dict[int, Buffer] = {i: data[i] for i in wanted if i < k}
    parity = sorted(i for i in wanted if i >= k)
    if parity:
        out.update(zip(parity, _parity(data, k, m, parity), strict=True))
    return out
