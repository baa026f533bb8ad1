"""Seal a plaintext chunk into verified shares, and open shares back into plaintext.

Byte format of one chunk version (see docs/format.md):
  segments   = the plaintext cut into `seg`-byte pieces (the last one shorter; >= 1 segment)
  nonce(j)   = nonce_id[:8] | j (u32 BE)
  ad(j)      = volume_id(16) | file_id(16) | index(u64 BE) | version(u64 BE) | j (u32 BE)
  ciphertext = AES-256-GCM(key, nonce(j), segment j, ad(j)) for every j, concatenated
               (each segment + its 16-byte tag)
The caller picks key and nonce_id by the volume's format (`layout.Layout.cipher`): format 2
encrypts every chunk of a file under the file key with nonce_id = the chunk version's random
oid; format 3 encrypts each chunk version under its own key (derived from the file key and
the oid), so nonce_id is zero and the nonce is the segment number alone.
  shares     = zfec(k, k+m) of ciphertext zero-padded to k * ceil(len/k)
  digests    = xxh3-128 of each share, kept in the metadata, never in the stores
Binding index and version into `ad` makes a share moved to another file or position, or
rolled back to an older version, fail authentication even if an attacker fixes checksums.
Segments let a small read of a big chunk fetch and authenticate only the bytes it needs
(`segment_span`, `open_segments`): the data shares are plain slices of the ciphertext.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fusefs.codec import erasure
from fusefs.codec.buffers import page_aligned_slots, uninitialized
from fusefs.codec.checksum import digest

TAG_LEN = 16
_AD = struct.Struct(">16s16sQQ")
_U32 = struct.Struct(">I")
# Shares this big are sealed into page-aligned buffers of their own, so a local store writes
# them with O_DIRECT straight from there (stores/local.py); smaller ones are views of one
# contiguous ciphertext buffer.
ALIGNED_SHARES_FROM = 64 * 1024


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


def segment_count(plain_len: int, seg: int) -> int:
    return max(1, -(-plain_len // seg))


def sealed_length(plain_len: int, seg: int) -> int:
    """Ciphertext length (plaintext + one GCM tag per segment) of a chunk."""
    return plain_len + TAG_LEN * segment_count(plain_len, seg)


def encrypt_into(aead: AESGCM, cid: ChunkId, nonce_id: bytes, plain: bytes | memoryview, seg: int,
                 out: bytearray) -> None:
    """Encrypt every segment of `plain` into `out` (at least sealed_length bytes)."""
    ad, prefix = cid.associated_data(), nonce_id[:8]
    view, dest = memoryview(plain), memoryview(out)
    pos = 0
    for j in range(segment_count(len(plain), seg)):
        piece = view[j * seg : (j + 1) * seg]
        end = pos + len(piece) + TAG_LEN
        aead.encrypt_into(prefix + _U32.pack(j), piece, ad + _U32.pack(j), dest[pos:end])
        pos = end


def decrypt_segments(aead: AESGCM, cid: ChunkId, nonce_id: bytes, ct: bytes | memoryview,
                     first: int, plain_len: int, seg: int) -> bytearray:
    """Plaintext of the whole segments held by `ct`, the first of which is segment `first`,
    decrypted into one new buffer (no per-segment copies; callers never modify it).

    Raises InvalidTag when any segment does not authenticate (or `ct` is cut short).
    """
    ad, prefix = cid.associated_data(), nonce_id[:8]
    view = memoryview(ct)
    sizes = []
    pos, j = 0, first
    while pos < len(view):
        size = min(seg, plain_len - j * seg)
        if size < 0:
            raise InvalidTag
        sizes.append(size)
        pos += size + TAG_LEN
        j += 1
    out = uninitialized(sum(sizes))  # every byte is decrypted into, or we raise
    dest = memoryview(out)
    pos = at = 0
    for j, size in enumerate(sizes, first):
        end = pos + size + TAG_LEN
        if end > len(view):
            raise InvalidTag
        aead.decrypt_into(prefix + _U32.pack(j), view[pos:end], ad + _U32.pack(j),
                          dest[at : at + size])
        pos, at = end, at + size
    return out


def seal(
    aead: AESGCM, cid: ChunkId, nonce_id: bytes, plain: bytes | memoryview, k: int, m: int, seg: int
) -> tuple[list[erasure.Buffer], list[bytes]]:
    """Encrypt and erasure-code one chunk; return its n shares and their digests."""
    length = sealed_length(len(plain), seg)
    size = erasure.share_size(length, k)
    if size < ALIGNED_SHARES_FROM:
        shares = erasure.encode_padded(encrypt_padded(aead, cid, nonce_id, plain, k, seg), k, m)
    else:
        shares = page_aligned_slots(k + m, size)
        _encrypt_into_shares(aead, cid, nonce_id, plain, seg, shares[:k], length)
        erasure.encode_into(shares[:k], k, m, shares[k:])
    return shares, [digest(s) for s in shares]


def _encrypt_into_shares(aead: AESGCM, cid: ChunkId, nonce_id: bytes, plain: bytes | memoryview,
                         seg: int, data: list[memoryview], length: int) -> None:
    """`encrypt_into`, with the padded ciphertext cut into the k separate buffers `data`
    (the same bytes as the slices of `encrypt_padded`). A segment that straddles two shares
    is encrypted aside and split: one per share boundary."""
    ad, prefix = cid.associated_data(), nonce_id[:8]
    view, size = memoryview(plain), len(data[0])
    pos = 0
    for j in range(segment_count(len(plain), seg)):
        piece = view[j * seg : (j + 1) * seg]
        end = pos + len(piece) + TAG_LEN
        first, last = pos // size, (end - 1) // size
        nonce, aad = prefix + _U32.pack(j), ad + _U32.pack(j)
        if first == last:
            at = pos - first * size
            aead.encrypt_into(nonce, piece, aad, data[first][at : at + end - pos])
        else:
            ct = aead.encrypt(nonce, piece, aad)
            done = 0
            for i in range(first, last + 1):
                a = max(pos, i * size) - i * size
                b = min(end, (i + 1) * size) - i * size
                data[i][a:b] = ct[done : done + b - a]
                done += b - a
        pos = end
    # The zero padding, explicitly. It is all in the last share: size >= k here, so the
    # k * size - length < k padding bytes fit in it.
    tail = length - (len(data) - 1) * size
    data[-1][tail:] = bytes(size - tail)


def encrypt_padded(aead: AESGCM, cid: ChunkId, nonce_id: bytes, plain: bytes | memoryview, k: int,
                   seg: int) -> bytearray:
    """The ciphertext zero-padded to k equal data shares: what zfec encodes (seal) and what a
    heal slices or re-encodes lost shares from."""
    length = sealed_length(len(plain), seg)
    padded = uninitialized(k * erasure.share_size(length, k))
    encrypt_into(aead, cid, nonce_id, plain, seg, padded)  # fills [0, length)
    padded[length:] = bytes(len(padded) - length)  # the zero padding, explicitly
    return padded


def open_span(aead: AESGCM, cid: ChunkId, nonce_id: bytes, ct: bytes | memoryview, span: Span,
              want: int, plain_len: int, seg: int) -> bytes | None:
    """The `want` plaintext bytes a ranged read asked for, from the ciphertext of `span`;
    None when it is short or any segment does not authenticate."""
    if len(ct) != span.ct_end - span.ct_start:
        return None
    try:
        plain = decrypt_segments(aead, cid, nonce_id, ct, span.first, plain_len, seg)
    except InvalidTag:
        return None
    return plain[span.skip : span.skip + want]


def open_(
    aead: AESGCM,
    cid: ChunkId,
    nonce_id: bytes,
    plain_len: int,
    shares: Mapping[int, erasure.Buffer],
    k: int,
    m: int,
    seg: int,
    all_subsets: bool = True,
) -> tuple[bytearray, list[int]]:
    """Rebuild and decrypt a chunk from checksum-valid shares.

    Tries the preferred k shares first (the data shares when present: no decode), then every
    other k-subset (unless `all_subsets` is false), so a share whose checksum was forged is
    outvoted. Returns the plaintext and the share numbers proven bad: shares that do not
    re-encode from the winning subset.
    """
    length = sealed_length(plain_len, seg)
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
            plain = decrypt_segments(aead, cid, nonce_id, ct, 0, plain_len, seg)
        except InvalidTag:
            continue
        if attempt == 0 and len(nums) == k:
            return plain, []
        # The winning subset is good; any other share must re-encode to the same bytes.
        expected = erasure.encode(ct, k, m)
        bad = [i for i in nums if bytes(shares[i]) != bytes(expected[i])]
        return plain, bad
    raise AuthenticationFailed("no subset of shares authenticates")


def open_in_place(
    aead: AESGCM,
    cid: ChunkId,
    nonce_id: bytes,
    plain_len: int,
    shares: Mapping[int, erasure.Buffer],
    padded: memoryview,
    k: int,
    m: int,
    seg: int,
) -> tuple[bytearray, memoryview | None, list[int]]:
    """Decrypt a chunk from checksum-valid shares whose data shares already sit in their
    slots of `padded` (k slots of share size): lost data shares are decoded into their
    slots, so the ciphertext is contiguous without a copy.

    Returns the plaintext, the authenticated padded ciphertext (None when it had to come
    from another k-subset: `padded` then holds forged bytes) and the shares proven forged
    (shares beyond the first k that do not re-encode from them). When the first k shares do
    not authenticate, every k-subset is tried (`open_`); raises AuthenticationFailed when
    none does.
    """
    try:
        erasure.fill_missing(shares, k, m, padded)
        plain = decrypt_segments(aead, cid, nonce_id, padded[: sealed_length(plain_len, seg)], 0,
                                 plain_len, seg)
    except InvalidTag:
        plain, forged = open_(aead, cid, nonce_id, plain_len, shares, k, m, seg)
        return plain, None, forged
    extra = sorted(shares)[k:]
    if not extra:
        return plain, padded, []
    expected = erasure.regenerate_padded(padded, k, m, extra)
    return plain, padded, [i for i in extra if bytes(shares[i]) != bytes(expected[i])]


@dataclass(frozen=True, slots=True)
class Span:
    """Where the plaintext bytes [start, end) of a chunk live in its ciphertext."""

    first: int  # first segment
    ct_start: int  # ciphertext bytes [ct_start, ct_end) hold the segments
    ct_end: int
    skip: int  # plaintext bytes of the first segment before `start`

    def pieces(self, share_size: int) -> list[tuple[int, int, int]]:
        """(data share, offset, length) reads that together give ct[ct_start:ct_end]."""
        out = []
        pos = self.ct_start
        while pos < self.ct_end:
            share, off = divmod(pos, share_size)
            n = min(share_size - off, self.ct_end - pos)
            out.append((share, off, n))
            pos += n
        return out


def segment_span(start: int, end: int, plain_len: int, seg: int) -> Span:
    """The whole segments covering plaintext [start, end) of a `plain_len`-byte chunk."""
    first, last = start // seg, (max(end, start + 1) - 1) // seg
    ct_end = min((last + 1) * (seg + TAG_LEN), sealed_length(plain_len, seg))
    return Span(first, first * (seg + TAG_LEN), ct_end, start - first * seg)
