"""Which store holds share i of a chunk.

Shares of a chunk go to n = k + m distinct stores. The starting store rotates with the chunk's
random oid, so data shares (the ones a healthy read fetches) spread evenly over all stores
instead of leaving the parity stores idle. The result is recorded in the metadata, so a later
change of this rule (or rebalancing) never loses track of existing shares.
"""

from __future__ import annotations


def place(oid: bytes, n_shares: int, n_stores: int) -> bytes:
    """Return n_shares store indexes (one byte each), share i -> store result[i]."""
    if n_shares > n_stores:
        raise ValueError("more shares than stores")
    start = int.from_bytes(oid[:4], "big") % n_stores
    return bytes((start + i) % n_stores for i in range(n_shares))
