"""Seal a plaintext chunk into verified shares, and open shares back into plaintext.

Byte format of one chunk version (see docs/format.md):
  nonce      = oid[:12]                      (oid: 16 random bytes per chunk version)
  ad         = volume_id(16) | file_id(16) | index(u64 BE) | version(u64 BE)
  ciphertext = AES-256-GCM(file key, nonce, plaintext, ad)   (plaintext + 16-byte tag)
  shares     = zfec(k, k+m) of ciphertext zero-padded to k * ceil(len/k)
  digests    = xxh3-128 of each share, kept in the metadata, never in the stores
Binding index and version into `ad` makes a share moved to another file or position, or
rolled back to an older version, fail authentication even if an attacker fixes checksums.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fusefs.codec import erasure
from fusefs.codec.checksum import digest

TAG_LEN = 16
_AD = struct.Struct(">16s16sQQ")


class AuthenticationFailed(Exception):
    """No k-subset of the checksum-valid shares decrypts: the shares were forged."""


@dataclass(frozen=True, slots=True)
class ChunkId:
    """What the associated data binds: which volume, file, position and version."""

    volume_id: bytes
    file_id: bytes
    index: int
    version: int

    def associated_data(self) -> bytes:
        return _AD.pack(self.volume_id, self.file_id, self.index, self.version)


def sealed_length(plain_len: int) -> int:
    """Ciphertext length (plaintext + GCM tag) of a chunk."""
    return plain_len + TAG_LEN


def seal(
    aead: AESGCM, cid: ChunkId, oid: bytes, plain: bytes | memoryview, k: int, m: int
) -> tuple[list[erasure.Buffer], list[bytes]]:
    """Encrypt and erasure-code one chunk; return its n shares and their digests."""
    ct = aead.encrypt(oid[:12], plain, cid.associated_data())
    shares = erasure.encode(ct, k, m)
    return shares, [digest(s) for s in shares]


def open_(
    aead: AESGCM,
    cid: ChunkId,
    oid: bytes,
    plain_len: int,
    shares: Mapping[int, erasure.Buffer],
    k: int,
    m: int,
    all_subsets: bool = True,
) -> tuple[bytes, list[int]]:
    """Rebuild and decrypt a chunk from checksum-valid shares.

    Tries the preferred k shares first (the data shares when present: no decode), then every
    other k-subset (unless `all_subsets` is false), so a share whose checksum was forged is
    outvoted. Returns the plaintext and
    the share numbers proven bad: shares that do not re-encode from the winning subset.
    """
    ad = cid.associated_data()
    length = sealed_length(plain_len)
    nums = sorted(shares)
    if len(nums) < k:
        raise AuthenticationFailed(f"only {len(nums)} of {k} shares available")
    first = tuple(nums[:k])
    subsets = [first]
    if all_subsets:
        subsets += [c for c in combinations(nums, k) if c != first]
    for attempt, subset in enumerate(subsets):
        ct = erasure.decode({i: shares[i] for i in subset}, k, m, length)
        try:
            plain = aead.decrypt(oid[:12], ct, ad)
        except InvalidTag:
            continue
        if attempt == 0 and len(nums) == k:
            return plain, []
        # The winning subset is good; any other share must re-encode to the same bytes.
        expected = erasure.encode(ct, k, m)
        bad = [i for i in nums if bytes(shares[i]) != bytes(expected[i])]
        return plain, bad
    raise AuthenticationFailed("no subset of shares authenticates")
