"""Per-share checksums: xxh3-128.

Not cryptographic: it tells fast *which* share is damaged. Authenticity comes from the
AES-GCM tag of each segment (`codec.chunk`), checked on the reassembled ciphertext.
"""

from __future__ import annotations

import xxhash

DIGEST_LEN = 16


def digest(data: bytes | memoryview) -> bytes:
    """Return the 16-byte xxh3-128 digest of `data`."""
    return xxhash.xxh3_128_digest(data)
