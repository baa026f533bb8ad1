"""Unit tests of fusefs.codec: erasure coding, sealing/opening chunks, checksums and keys.

Pure and synchronous: no stores, no SQLite, no trio.
"""

from __future__ import annotations

import os
import random
import stat
import sys
import threading
from itertools import combinations
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fusefs.codec import chunk, erasure, isal
from fusefs.codec.checksum import DIGEST_LEN, digest
from fusefs.codec.keys import KEY_LEN, VolumeKeys, create_key_file, load_key_file
from fusefs.errors import KeyFileError

MiB = 1 << 20
K, M = 3, 2
N = K + M


def payload_of(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


def as_bytes(shares) -> list[bytes]:
    return [bytes(s) for s in shares]


# ------------------------------------------------------------------------------------------
# erasure
# ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, params=["isal", "zfec"])
def erasure_backend(request, monkeypatch) -> str:
    """Every codec test runs with both implementations of the GF(2^8) arithmetic."""
    if request.param == "isal" and not isal.available:
        pytest.skip("libisal (Debian/Ubuntu: libisal2) is not installed")
    monkeypatch.setattr(erasure, "backend", request.param)
    return request.param


def test_isal_is_there_where_the_install_script_ran() -> None:
    """CI installs libisal2: there the fast path must really be tested, not skipped."""
    if os.environ.get("CI"):
        assert isal.available


@pytest.mark.parametrize("k,m", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (10, 4)])
def test_isal_computes_zfecs_exact_shares(k: int, m: int) -> None:
    """Same parity bytes and same rebuilt data shares as zfec, for every size class of
    ISA-L's kernels (their SIMD widths and tails) and every k-subset."""
    if not isal.available:
        pytest.skip("libisal is not installed")
    import zfec

    for size in (1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 4097):
        data = [payload_of(size, seed=size + j) for j in range(k)]
        expected = [bytes(p) for p in zfec.Encoder(k, k + m).encode(data, list(range(k, k + m)))]
        dests = [bytearray(payload_of(size, seed=99)) for _ in range(m)]  # overwritten
        isal.parity(data, k, m, list(range(k, k + m)), dests)
        assert [bytes(d) for d in dests] == expected, f"parity, size {size}"
        every = data + expected
        for nums in combinations(range(k + m), k):
            lost = [i for i in range(k) if i not in nums]
            rebuilt = [bytearray(size) for _ in lost]
            isal.recover([every[i] for i in nums], nums, k, m, lost, rebuilt)
            assert [bytes(r) for r in rebuilt] == [data[i] for i in lost], f"{nums}, {size}"


@pytest.mark.parametrize("k,m", [(3, 2), (1, 1), (2, 3), (4, 0), (5, 1)])
@pytest.mark.parametrize("length_of", [
    pytest.param(lambda k: 0, id="0"),
    pytest.param(lambda k: 1, id="1"),
    pytest.param(lambda k: k - 1, id="k-1"),
    pytest.param(lambda k: k, id="k"),
    pytest.param(lambda k: k + 1, id="k+1"),
    pytest.param(lambda k: MiB + 17, id="1MiB+17"),
])
def test_erasure_round_trip_lengths(k: int, m: int, length_of) -> None:
    length = length_of(k)
    payload = payload_of(length, seed=length)
    shares = erasure.encode(payload, k, m)

    assert len(shares) == k + m
    size = erasure.share_size(length, k)
    assert size == max(1, -(-length // k))
    assert {len(s) for s in shares} == {size}
    # systematic: the data shares are the zero-padded payload itself
    assert b"".join(as_bytes(shares[:k])) == payload + bytes(k * size - length)

    subsets = list(combinations(range(k + m), k))
    if length > 4096:
        subsets = subsets[:3] + subsets[-3:]  # large payloads: a few subsets keep it fast
    for subset in subsets:
        got = erasure.decode({i: shares[i] for i in subset}, k, m, length)
        assert got == payload, f"subset {subset}"


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 1000, 64 * 1024 + 5])
def test_erasure_every_k_subset_k3_m2(length: int) -> None:
    payload = payload_of(length, seed=7)
    shares = erasure.encode(payload, K, M)
    for subset in combinations(range(N), K):
        # any insertion order of the mapping must give the same result
        for order in (subset, tuple(reversed(subset))):
            got = erasure.decode({i: shares[i] for i in order}, K, M, length)
            assert got == payload, f"subset {order}"


def test_erasure_decode_more_than_k_shares() -> None:
    payload = payload_of(1001)
    shares = erasure.encode(payload, K, M)
    for size in (K + 1, N):
        for subset in combinations(range(N), size):
            assert erasure.decode({i: shares[i] for i in subset}, K, M, 1001) == payload


def test_erasure_decode_twice_from_the_same_dict() -> None:
    """zfec reorders the block list it is given in place; reusing inputs must stay safe."""
    payload = payload_of(3 * 4096 + 11, seed=3)
    shares = erasure.encode(payload, K, M)
    for subset in combinations(range(N), K):
        given = {i: shares[i] for i in subset}
        before = {i: bytes(v) for i, v in given.items()}
        first = erasure.decode(given, K, M, len(payload))
        second = erasure.decode(given, K, M, len(payload))
        assert first == payload, f"subset {subset}"
        assert second == payload, f"subset {subset} (second decode)"
        assert {i: bytes(v) for i, v in given.items()} == before, "inputs were modified"
        assert sorted(given) == list(subset)


def test_erasure_inputs_as_bytearray_and_memoryview() -> None:
    payload = payload_of(5000, seed=9)
    from_bytes = as_bytes(erasure.encode(payload, K, M))
    assert as_bytes(erasure.encode(bytearray(payload), K, M)) == from_bytes
    big = b"xx" + payload + b"yy"
    assert as_bytes(erasure.encode(memoryview(big)[2:-2], K, M)) == from_bytes
    given = {3: memoryview(from_bytes[3]), 1: bytearray(from_bytes[1]), 4: from_bytes[4]}
    assert erasure.decode(given, K, M, len(payload)) == payload


def test_erasure_decode_needs_k_shares() -> None:
    shares = erasure.encode(b"abcdef", K, M)
    with pytest.raises(ValueError):
        erasure.decode({0: shares[0], 4: shares[4]}, K, M, 6)


@pytest.mark.parametrize("length", [0, 1, 17, 3 * 1024 + 2, MiB + 17])
def test_regenerate_gives_exactly_the_original_shares(length: int) -> None:
    payload = payload_of(length, seed=11)
    original = as_bytes(erasure.encode(payload, K, M))
    for r in range(1, N + 1):
        for wanted in combinations(range(N), r):
            fresh = erasure.regenerate(payload, K, M, list(wanted))
            assert sorted(fresh) == list(wanted)
            for i in wanted:
                assert bytes(fresh[i]) == original[i], f"share {i} of {wanted}"
            if length > 4096:
                break  # large payloads: one subset per size is enough


@pytest.mark.parametrize("length", [1, 3 * 1024 + 2])
def test_fill_missing_rebuilds_lost_data_slots_for_every_subset(length: int) -> None:
    """The degraded read path: present data shares sit in their slots, lost slots hold
    junk; after fill_missing the buffer is the padded payload, whichever k shares were
    given (and the given list is not reused: zfec reorders it in place)."""
    payload = payload_of(length, seed=13)
    shares = as_bytes(erasure.encode(payload, K, M))
    size = len(shares[0])
    padded = b"".join(shares[:K])
    for subset in combinations(range(N), K):
        buf = bytearray(b"\xee" * (K * size))
        for i in subset:
            if i < K:
                buf[i * size : (i + 1) * size] = shares[i]
        given = {i: shares[i] for i in subset}
        erasure.fill_missing(given, K, M, memoryview(buf))
        assert bytes(buf) == padded, f"subset {subset}"
        assert given == {i: shares[i] for i in subset}
    with pytest.raises(ValueError, match="need 3 shares"):
        erasure.fill_missing({0: shares[0], 4: shares[4]}, K, M, memoryview(bytearray(K * size)))


def test_regenerate_from_a_decoded_payload() -> None:
    """Repair path: decode from survivors, regenerate the lost shares, bytes must match."""
    payload = payload_of(10_000, seed=12)
    original = as_bytes(erasure.encode(payload, K, M))
    for lost in combinations(range(N), M):
        survivors = {i: original[i] for i in range(N) if i not in lost}
        rebuilt = erasure.decode(survivors, K, M, len(payload))
        fresh = erasure.regenerate(rebuilt, K, M, list(lost))
        assert {i: bytes(v) for i, v in fresh.items()} == {i: original[i] for i in lost}


# ------------------------------------------------------------------------------------------
# checksum
# ------------------------------------------------------------------------------------------


def test_digest_is_16_bytes_and_type_independent() -> None:
    data = payload_of(100_000, seed=1)
    d = digest(data)
    assert len(d) == DIGEST_LEN == 16
    assert digest(memoryview(data)) == d
    assert digest(bytearray(data)) == d
    assert digest(data[:-1] + bytes([data[-1] ^ 1])) != d
    assert digest(b"") != digest(b"\0")


# ------------------------------------------------------------------------------------------
# chunk seal / open_
# ------------------------------------------------------------------------------------------

VOLUME_ID = bytes(range(16))
FILE_ID = bytes(range(16, 32))


def make_aead(seed: int = 0) -> AESGCM:
    return AESGCM(random.Random(seed).randbytes(32))


def cid_of(**changes) -> chunk.ChunkId:
    base = {"volume_id": VOLUME_ID, "file_id": FILE_ID, "index": 3, "version": 2}
    base.update(changes)
    return chunk.ChunkId(**base)


SEG = 64 * 1024
OID = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.mark.parametrize("k,m", [(3, 2), (2, 1), (5, 3), (1, 1)])
@pytest.mark.parametrize("length", [
    3 * 64 * 1024, 3 * 64 * 1024 + 5, 4 * MiB - 1, 4 * MiB, 9 * 64 * 1024 + 17])
def test_big_shares_are_page_aligned_and_the_same_bytes(k: int, m: int, length: int) -> None:
    """Shares of at least ALIGNED_SHARES_FROM are sealed into page-aligned buffers of their
    own (segments straddling two shares split): byte for byte what slicing one contiguous
    ciphertext gives."""
    from fusefs.codec.buffers import address

    aead, plain = make_aead(), payload_of(length, seed=length + k)
    shares, _ = chunk.seal(aead, cid_of(), OID, plain, k, m, SEG)
    contiguous = chunk.encrypt_padded(aead, cid_of(), OID, plain, k, SEG)
    assert as_bytes(shares) == as_bytes(erasure.encode_padded(contiguous, k, m))
    if len(shares[0]) >= chunk.ALIGNED_SHARES_FROM:
        assert all(address(s) % 4096 == 0 for s in shares)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 1000, 64 * 1024, MiB + 17])
def test_seal_open_round_trip(length: int) -> None:
    aead = make_aead()
    plain = payload_of(length, seed=length)
    shares, digests = chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)

    assert len(shares) == N and len(digests) == N
    assert [digest(s) for s in shares] == digests
    assert {len(s) for s in shares} == {erasure.share_size(chunk.sealed_length(length, SEG), K)}
    assert chunk.sealed_length(length, SEG) == length + chunk.TAG_LEN * max(1, -(-length // SEG))
    # the shares hold ciphertext, not the plaintext
    if length >= 64:
        assert plain[:64] not in b"".join(as_bytes(shares))

    got, bad = chunk.open_(aead, cid_of(), OID, length, dict(enumerate(shares)), K, M, SEG)
    assert got == plain and bad == []
    subsets = list(combinations(range(N), K))
    if length > 4096:
        subsets = subsets[:2] + subsets[-2:]
    for subset in subsets:
        got, bad = chunk.open_(aead, cid_of(), OID, length, {i: shares[i] for i in subset},
                               K, M, SEG)
        assert got == plain, f"subset {subset}"
        assert bad == []


def test_seal_accepts_memoryview() -> None:
    aead = make_aead()
    plain = payload_of(3000)
    shares, _ = chunk.seal(aead, cid_of(), OID, memoryview(plain), K, M, SEG)
    got, _ = chunk.open_(aead, cid_of(), OID, 3000, {i: shares[i] for i in (0, 3, 4)}, K, M, SEG)
    assert got == plain


def test_seal_twice_with_other_oid_gives_other_shares() -> None:
    aead = make_aead()
    plain = payload_of(3000)
    a, _ = chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)
    b, _ = chunk.seal(aead, cid_of(), bytes(16), plain, K, M, SEG)
    assert all(bytes(x) != bytes(y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("field,value", [
    ("volume_id", bytes(16)),
    ("file_id", bytes(range(100, 116))),
    ("index", 4),
    ("version", 1),
    ("version", 3),
])
def test_open_fails_when_associated_data_differs(field: str, value) -> None:
    """A share moved to another volume, file, position or rolled back never authenticates."""
    aead = make_aead()
    plain = payload_of(5000, seed=5)
    shares, _ = chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)
    wrong = cid_of(**{field: value})
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, wrong, OID, len(plain), dict(enumerate(shares)), K, M, SEG)
    for subset in combinations(range(N), K):
        with pytest.raises(chunk.AuthenticationFailed):
            chunk.open_(aead, wrong, OID, len(plain), {i: shares[i] for i in subset}, K, M, SEG)


def test_open_fails_with_another_files_key() -> None:
    plain = payload_of(5000)
    shares, _ = chunk.seal(make_aead(1), cid_of(), OID, plain, K, M, SEG)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(make_aead(2), cid_of(), OID, len(plain), dict(enumerate(shares)), K, M, SEG)


def test_open_fails_with_another_oid() -> None:
    """The nonce comes from the oid: shares of another chunk version do not open."""
    aead = make_aead()
    plain = payload_of(5000)
    shares, _ = chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, cid_of(), bytes(16), len(plain), dict(enumerate(shares)), K, M, SEG)


def test_open_fails_with_shares_of_another_version() -> None:
    """Rollback: the complete share set of version 1 offered as version 2 is refused."""
    aead = make_aead()
    plain = payload_of(4000)
    old, _ = chunk.seal(aead, cid_of(version=1), OID, plain, K, M, SEG)
    new, _ = chunk.seal(aead, cid_of(version=2), bytes(range(16)), plain, K, M, SEG)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, cid_of(version=2), bytes(range(16)), len(plain),
                    dict(enumerate(old)), K, M, SEG)
    got, _ = chunk.open_(aead, cid_of(version=2), bytes(range(16)), len(plain),
                         dict(enumerate(new)), K, M, SEG)
    assert got == plain


def _tag_position(plain_len: int) -> tuple[int, int]:
    """(share, offset) of the last byte of the GCM tag."""
    length = chunk.sealed_length(plain_len, SEG)
    size = erasure.share_size(length, K)
    return divmod(length - 1, size)


@pytest.mark.parametrize("plain_len", [0, 1, 100, 4096])
def test_open_fails_when_tag_tampered_and_no_spare_shares(plain_len: int) -> None:
    aead = make_aead()
    plain = payload_of(plain_len)
    shares = as_bytes(chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)[0])
    share, offset = _tag_position(plain_len)
    assert share < K
    tampered = bytearray(shares[share])
    tampered[offset] ^= 0x01
    given = {i: shares[i] for i in range(K)}
    given[share] = bytes(tampered)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, cid_of(), OID, plain_len, given, K, M, SEG)


def test_open_with_too_few_shares() -> None:
    aead = make_aead()
    shares, _ = chunk.seal(aead, cid_of(), OID, b"abc", K, M, SEG)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, cid_of(), OID, 3, {0: shares[0], 1: shares[1]}, K, M, SEG)


def _forge(share: bytes, seed: int) -> bytes:
    return random.Random(seed).randbytes(len(share))


@pytest.mark.parametrize("forged", range(K))
@pytest.mark.parametrize("given", [tuple(range(N)), (0, 1, 2, 3), (0, 1, 2, 4)])
def test_forged_share_in_preferred_subset_is_outvoted(forged: int, given: tuple) -> None:
    """open_ trusts its input's checksums; a forged share among k+1 or more is outvoted."""
    aead = make_aead()
    plain = payload_of(9000, seed=forged)
    shares = as_bytes(chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)[0])
    offered = {i: shares[i] for i in given}
    offered[forged] = _forge(shares[forged], forged)
    got, bad = chunk.open_(aead, cid_of(), OID, len(plain), offered, K, M, SEG)
    assert got == plain
    assert bad == [forged]


@pytest.mark.parametrize("forged", range(K, N))
def test_forged_share_outside_preferred_subset_is_reported(forged: int) -> None:
    """All n shares offered, a parity share forged: the docstring says open_ returns "the
    share numbers proven bad: shares that do not re-encode from the winning subset"."""
    aead = make_aead()
    plain = payload_of(9000, seed=forged)
    shares = as_bytes(chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)[0])
    offered = dict(enumerate(shares))
    offered[forged] = _forge(shares[forged], forged)
    got, bad = chunk.open_(aead, cid_of(), OID, len(plain), offered, K, M, SEG)
    assert got == plain
    assert bad == [forged]


def test_two_forged_shares_among_all_are_outvoted() -> None:
    aead = make_aead()
    plain = payload_of(9000, seed=2)
    shares = as_bytes(chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)[0])
    for forged in combinations(range(K), 2):
        offered = dict(enumerate(shares))
        for i in forged:
            offered[i] = _forge(shares[i], i)
        got, bad = chunk.open_(aead, cid_of(), OID, len(plain), offered, K, M, SEG)
        assert got == plain
        assert bad == list(forged)


def test_three_forged_shares_fail() -> None:
    aead = make_aead()
    plain = payload_of(9000, seed=2)
    shares = as_bytes(chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)[0])
    offered = dict(enumerate(shares))
    for i in (0, 1, 3):
        offered[i] = _forge(shares[i], i)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, cid_of(), OID, len(plain), offered, K, M, SEG)


def test_forged_share_with_exactly_k_shares_fails() -> None:
    aead = make_aead()
    plain = payload_of(9000)
    shares = as_bytes(chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)[0])
    offered = {i: shares[i] for i in range(K)}
    offered[1] = _forge(shares[1], 1)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, cid_of(), OID, len(plain), offered, K, M, SEG)


def test_open_preferred_subset_only() -> None:
    """all_subsets=False (the one-hop fast path): no outvoting, a forgery is an error."""
    aead = make_aead()
    plain = payload_of(9000, seed=4)
    shares = as_bytes(chunk.seal(aead, cid_of(), OID, plain, K, M, SEG)[0])
    got, bad = chunk.open_(aead, cid_of(), OID, len(plain), dict(enumerate(shares)), K, M, SEG,
                           all_subsets=False)
    assert (got, bad) == (plain, [])
    offered = dict(enumerate(shares))
    offered[0] = _forge(shares[0], 0)
    with pytest.raises(chunk.AuthenticationFailed):
        chunk.open_(aead, cid_of(), OID, len(plain), offered, K, M, SEG, all_subsets=False)


def test_associated_data_layout() -> None:
    """ad = volume_id(16) | file_id(16) | index(u64 BE) | version(u64 BE)."""
    ad = chunk.ChunkId(VOLUME_ID, FILE_ID, 0x0102, 0x0A0B).associated_data()
    assert ad == VOLUME_ID + FILE_ID + (0x0102).to_bytes(8, "big") + (0x0A0B).to_bytes(8, "big")


# ------------------------------------------------------------------------------------------
# keys
# ------------------------------------------------------------------------------------------


def test_create_key_file_writes_0600_hex(tmp_path: Path) -> None:
    path = tmp_path / "vol.key"
    old_umask = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        key = create_key_file(path)
    finally:
        os.umask(old_umask)
    assert len(key) == KEY_LEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.strip() == key.hex()
    assert len(text.strip()) == 64
    assert load_key_file(path) == key


def test_create_key_file_gives_new_keys(tmp_path: Path) -> None:
    assert create_key_file(tmp_path / "a") != create_key_file(tmp_path / "b")


def test_create_key_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "vol.key"
    key = create_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as exc:
        create_key_file(path)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == before
    assert load_key_file(path) == key


def test_create_key_file_refuses_existing_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "precious"
    path.write_text("do not touch\n")
    with pytest.raises(KeyFileError):
        create_key_file(path)
    assert path.read_text() == "do not touch\n"


@pytest.mark.parametrize("fmt", ["{}", "{}\n", "  {}  \n\n", "{UP}\n"])
def test_load_key_file_hex(tmp_path: Path, fmt: str) -> None:
    key = os.urandom(KEY_LEN)
    path = tmp_path / "k"
    path.write_text(fmt.format(key.hex(), UP=key.hex().upper()))
    assert load_key_file(path) == key


@pytest.mark.parametrize("key", [
    os.urandom(KEY_LEN),
    b" " + bytes(30) + b"\n",  # raw bytes that strip() would shorten
    b"0123456789abcdef" * 2,  # 32 raw bytes that happen to be hex digits
], ids=["random", "whitespace-edges", "hex-digits"])
def test_load_key_file_raw_32_bytes(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(key)
    assert load_key_file(path) == key


def test_load_key_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)
    assert str(path) in str(exc.value)
    assert "does not exist" in str(exc.value)


@pytest.mark.parametrize("content", [
    b"",
    b"not a key\n",
    b"z" * 64,  # 64 characters, not hex
    b"ab" * 31 + b"\n",  # 62 hex digits
    b"ab" * 33,  # 66 hex digits
    os.urandom(31),
    os.urandom(33),
], ids=["empty", "text", "64-non-hex", "62-hex", "66-hex", "31-raw", "33-raw"])
def test_load_key_file_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)
    assert str(path) in str(exc.value)
    assert "256-bit" in str(exc.value)


def test_load_key_file_unreadable(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as exc:
        load_key_file(tmp_path)  # a directory
    assert str(tmp_path) in str(exc.value)


def test_volume_keys_matches() -> None:
    master = os.urandom(KEY_LEN)
    vid = os.urandom(16)
    check = VolumeKeys(master, vid).check_value
    assert len(bytes.fromhex(check)) == 32
    assert VolumeKeys(master, vid).matches(check)
    assert not VolumeKeys(os.urandom(KEY_LEN), vid).matches(check)
    assert not VolumeKeys(master, os.urandom(16)).matches(check)
    assert not VolumeKeys(master, vid).matches("")
    assert not VolumeKeys(master, vid).matches(check[:-1] + ("0" if check[-1] != "0" else "1"))


def test_file_aead_per_file_and_cached() -> None:
    keys = VolumeKeys(os.urandom(KEY_LEN), os.urandom(16))
    a, b = keys.file_aead(b"a" * 16), keys.file_aead(b"b" * 16)
    assert keys.file_aead(b"a" * 16) is a
    nonce = bytes(12)
    assert a.encrypt(nonce, b"x" * 32, None) != b.encrypt(nonce, b"x" * 32, None)
    # a fresh VolumeKeys from the same master derives the same file key
    same = VolumeKeys(keys._master, keys._volume_id).file_aead(b"a" * 16)
    assert same.decrypt(nonce, a.encrypt(nonce, b"y", None), None) == b"y"


def test_file_aead_from_many_threads() -> None:
    """The volume derives file keys in worker threads (the one-hop read path) while the trio
    thread does too; the LRU cache must survive concurrent use once it is full."""
    keys = VolumeKeys(os.urandom(KEY_LEN), os.urandom(16))
    file_ids = [os.urandom(16) for _ in range(5000)]  # more files than the cache holds
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(20_000):
                keys.file_aead(file_ids[rnd.randrange(len(file_ids))])
        except BaseException as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a loaded machine would
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == []


def test_object_names() -> None:
    keys = VolumeKeys(os.urandom(KEY_LEN), os.urandom(16))
    oids = [os.urandom(16) for _ in range(20)]
    names = set()
    for oid in oids:
        for share in range(8):
            name = keys.object_name(oid, share)
            assert len(name) == 32
            assert all(c in "0123456789abcdef" for c in name)
            assert oid.hex() not in name
            assert oid.hex()[:16] not in name and oid.hex()[16:] not in name
            assert keys.object_name(oid, share) == name  # deterministic
            names.add(name)
    assert len(names) == len(oids) * 8  # differ per share and per oid


def test_object_names_are_keyed() -> None:
    vid = os.urandom(16)
    master = os.urandom(KEY_LEN)
    oid = os.urandom(16)
    name = VolumeKeys(master, vid).object_name(oid, 0)
    assert VolumeKeys(master, vid).object_name(oid, 0) == name
    assert VolumeKeys(os.urandom(KEY_LEN), vid).object_name(oid, 0) != name
    assert VolumeKeys(master, os.urandom(16)).object_name(oid, 0) != name


def test_seal_pads_with_zeros_whatever_the_heap_held() -> None:
    """Shares are cut from a buffer that is not zero-filled up front: the padding must
    still be zeros (docs/format.md), never old heap bytes (another file's plaintext)."""
    aead = make_aead()
    for length in (1, 1000, 64 * 1024 + 1, 3 * 64 * 1024 + 5):
        junk = [bytearray(b"\xa5" * (1 << 20)) for _ in range(4)]
        del junk
        shares, _ = chunk.seal(aead, cid_of(), OID, payload_of(length), K, M, SEG)
        sealed = chunk.sealed_length(length, SEG)
        padded = b"".join(bytes(s) for s in shares[:K])
        assert padded[sealed:] == bytes(len(padded) - sealed), length
        assert erasure.encode(padded[:sealed], K, M)[K:] == shares[K:]


# ------------------------------------------------------------------------------------------
# formats: which key and nonce encrypt a chunk version
# ------------------------------------------------------------------------------------------


def _layout(fmt: int):
    from fusefs.config import MIN_CHUNK, VolumeConfig
    from fusefs.layout import Layout

    vid = bytes(range(16))
    keys = VolumeKeys(bytes(32), vid)
    cfg = VolumeConfig(vid.hex(), K, M, MIN_CHUNK, [f"/s{i}" for i in range(K + M)],
                       keys.check_value, format=fmt, segment_size=SEG)
    return Layout(cfg, keys, [])


def _ciphertext(fmt: int, oid: bytes, plain: bytes) -> bytes:
    lay = _layout(fmt)
    aead, nonce_id = lay.cipher(b"f" * 16, oid)
    cid = chunk.ChunkId(lay.volume_id, b"f" * 16, 0, 1)
    return bytes(chunk.encrypt_padded(aead, cid, nonce_id, plain, 1, SEG))


@pytest.mark.parametrize("fmt", [2, 3])
def test_two_versions_whose_oids_share_8_bytes(fmt: int) -> None:
    """Format 2 nonces are 8 bytes of the oid and the segment number under the file key:
    two versions whose oids agree in those bytes reuse the keystream (their ciphertexts XOR
    to their plaintexts' XOR). Format 3 keys each version by its whole oid: never."""
    a, b = os.urandom(SEG), os.urandom(SEG)
    oid1, oid2 = b"8 bytes!" + os.urandom(8), b"8 bytes!" + os.urandom(8)
    ca, cb = _ciphertext(fmt, oid1, a), _ciphertext(fmt, oid2, b)
    xor = bytes(x ^ y for x, y in zip(ca[:SEG], cb[:SEG], strict=True))
    reused = xor == bytes(x ^ y for x, y in zip(a, b, strict=True))
    assert reused == (fmt == 2)


def test_format_3_nonce_is_the_segment_number_under_a_key_per_version() -> None:
    lay = _layout(3)
    aead1, nonce1 = lay.cipher(b"f" * 16, b"1" * 16)
    aead2, nonce2 = lay.cipher(b"f" * 16, b"2" * 16)
    assert nonce1 == nonce2 == bytes(16)
    assert aead1 is not aead2
    assert lay.cipher(b"f" * 16, b"1" * 16)[0] is aead1  # cached: random reads reuse it
    assert _layout(2).cipher(b"f" * 16, b"1" * 16)[1] == b"1" * 16
