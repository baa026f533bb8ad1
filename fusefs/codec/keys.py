"""The master key file and every key derived from it.

One 256-bit master key per volume, kept outside the stores. Sub-keys come from HKDF-SHA256
with the volume id as salt and a named label as info, so no two purposes share a key:
  - "fusefs file key" + file id -> the key of one file. Format 2 encrypts with it directly,
    a segment's nonce being the first 8 bytes of its chunk version's random oid followed by
    the 32-bit segment number: nonces under one file key repeat only if two versions of its
    chunks draw the same 64 random bits (the birthday bound reaches 2^-32 after ~93,000
    versions of one file's chunks);
  - "fusefs chunk key" + oid (HKDF of the file key) -> format 3: the key of one chunk
    version, used once per segment with the segment number as the nonce, so a nonce can
    never repeat under a key;
  - "fusefs object names"        -> keyed BLAKE2b for opaque object names;
  - "fusefs key check"           -> a check value stored in the volume config, so a wrong
    key is refused at mount before anything is read or written;
  - "fusefs store marker"        -> HMAC-SHA256 key of the stores' markers, so a store's
    marker proves which volume and which store index it belongs to;
  - "fusefs snapshot names"      -> HMAC-SHA256 key naming metadata snapshot objects (a
    block by its content, a superblock by its epoch and sequence number);
  - "fusefs head"                -> AES-256-GCM key of the head (the newest snapshot's
    name, replicated in every store).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fusefs.errors import KeyFileError, warn

KEY_LEN = 32
_FILE_KEY_CACHE = 4096  # AESGCM objects kept; derivation costs ~10 us, a cache hit ~0.2 us
_CHUNK_KEY_CACHE = 1024  # chunk-version keys kept: random reads come back to the same chunks
_PACK_NAME_CACHE = 4096  # pack names kept (a pack holds thousands of shares: few are in use)


def create_key_file(path: Path) -> bytes:
    """Write a new random master key to `path` (mode 0600, hex text) and return it."""
    key = os.urandom(KEY_LEN)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise KeyFileError(f"cannot create key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def warn_if_exposed(path: Path) -> None:
    """One warning line when the key file's group or others may read or write it.

    A warning, not a refusal: a key on a read-only secret mount may be 0444 and still be
    where the admin wants it. Called once the key is accepted (a bad key's error says all).
    Execute bits give nothing away and do not count.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    loose = mode & 0o066
    if not loose:
        return
    can = " and ".join(v for bits, v in ((0o044, "read"), (0o022, "changed")) if loose & bits)
    who = " and ".join(w for bits, w in ((0o060, "its group"), (0o006, "other users"))
                       if loose & bits)
    warn(f"key file {path} can be {can} by {who} (mode {mode:04o}); chmod 600 {path}")


def load_key_file(path: Path) -> bytes:
    """Read a master key: 64 hex digits (whitespace ignored) or 32 raw bytes."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    text = raw.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            pass
    if len(raw) == KEY_LEN:
        return raw
    raise KeyFileError(f"key file {path} does not hold a 256-bit key (64 hex digits)")


def _hkdf(master: bytes, salt: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=label).derive(master)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869) with SHA-256: the pseudorandom key of `ikm`."""
    return hmac.digest(salt, ikm, "sha256")


def _expand(prk: bytes, info: bytes) -> bytes:
    """HKDF-Expand for one 32-byte output: HMAC(prk, info || 0x01). With `_extract` this is
    exactly `_hkdf`, but the extract step of a key used for many derivations (the master
    key, a file key) is done once, and the expand is one HMAC call (~2 us instead of ~4 us
    for a new HKDF object: a cold read of a small file derives a file and a chunk key)."""
    return hmac.digest(prk, info + b"\x01", "sha256")


class _FileKey:
    """One file's key, its extract for chunk keys (format 3) and its AES-GCM (format 2)."""

    __slots__ = ("key", "prk", "_aead")

    def __init__(self, key: bytes, volume_id: bytes) -> None:
        self.key = key
        self.prk = _extract(volume_id, key)
        self._aead: AESGCM | None = None

    @property
    def aead(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self.key)
        return self._aead


class VolumeKeys:
    """Keys of one volume, derived once from the master key and the volume id."""

    def __init__(self, master: bytes, volume_id: bytes) -> None:
        self._master = master
        self._volume_id = volume_id
        self._name_key = _hkdf(master, volume_id, b"fusefs object names")
        self.check_value = _hkdf(master, volume_id, b"fusefs key check").hex()
        self._marker_key = _hkdf(master, volume_id, b"fusefs store marker")
        self._snapshot_key = _hkdf(master, volume_id, b"fusefs snapshot names")
        self.head_aead = AESGCM(_hkdf(master, volume_id, b"fusefs head"))
        self._master_prk = _extract(volume_id, master)
        self._file_keys: OrderedDict[bytes, _FileKey] = OrderedDict()
        self._chunk_aeads: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._lock = threading.Lock()  # worker threads (fast read path) share the caches
        self._pack_names: dict[bytes, str] = {}

    def matches(self, check_value: str) -> bool:
        """True when this key produced `check_value` (constant-time compare)."""
        return hmac.compare_digest(self.check_value, check_value)

    def _file_key(self, file_id: bytes) -> _FileKey:
        """One file's key (LRU-cached)."""
        with self._lock:
            found = self._file_keys.get(file_id)
            if found is not None:
                self._file_keys.move_to_end(file_id)
                return found
        found = _FileKey(_expand(self._master_prk, b"fusefs file key" + file_id),
                         self._volume_id)
        with self._lock:
            self._file_keys[file_id] = found
            if len(self._file_keys) > _FILE_KEY_CACHE:
                self._file_keys.popitem(last=False)
        return found

    def file_aead(self, file_id: bytes) -> AESGCM:
        """The AES-256-GCM instance of one file (format 2)."""
        return self._file_key(file_id).aead

    def chunk_aead(self, file_id: bytes, oid: bytes) -> AESGCM:
        """The AES-256-GCM instance of one chunk version (format 3; LRU-cached by oid)."""
        with self._lock:
            aead = self._chunk_aeads.get(oid)
            if aead is not None:
                self._chunk_aeads.move_to_end(oid)
                return aead
        aead = AESGCM(_expand(self._file_key(file_id).prk, b"fusefs chunk key" + oid))
        with self._lock:
            self._chunk_aeads[oid] = aead
            if len(self._chunk_aeads) > _CHUNK_KEY_CACHE:
                self._chunk_aeads.popitem(last=False)
        return aead

    def marker_mac(self, store_index: int) -> str:
        """The MAC (64 hex digits) a store marker of this volume carries for its index."""
        msg = b"fusefs-store\0" + self._volume_id + store_index.to_bytes(4, "big")
        return hmac.new(self._marker_key, msg, hashlib.sha256).hexdigest()

    def snapshot_oid(self, *parts: bytes) -> bytes:
        """The 16-byte id of a metadata snapshot object (a keyed hash of what defines it)."""
        return hmac.new(self._snapshot_key, b"".join(parts), hashlib.sha256).digest()[:16]

    def object_name(self, oid: bytes, share: int) -> str:
        """Opaque 32-hex-digit name of share `share` of chunk version `oid`.

        Keyed, so names of one chunk's shares cannot be linked across stores by an observer.
        """
        h = hashlib.blake2b(oid + bytes([share]), key=self._name_key, digest_size=16)
        return h.hexdigest()

    def pack_name(self, pid: bytes) -> str:
        """Opaque 32-hex-digit name of the pack object `pid` (16 random bytes, format 4).

        The same keyed hash as share names over a longer input ("pack" and the pid, 20
        bytes; a share's input is 17), so a pack name looks like any share name and the
        two can never coincide."""
        found = self._pack_names.get(pid)
        if found is None:
            found = hashlib.blake2b(b"pack" + pid, key=self._name_key,
                                    digest_size=16).hexdigest()
            if len(self._pack_names) >= _PACK_NAME_CACHE:
                self._pack_names.clear()
            self._pack_names[pid] = found
        return found
