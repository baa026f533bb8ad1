"""A volume's configuration (`fusefs.toml`): its id, K and M, chunk and segment size, the
store URLs and the key check; the limits that make a configuration usable; size parsing.

Where the file lives and how a volume directory is used is `volumedir`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusefs.errors import ConfigError

FORMAT = 4  # what init makes. 2: chunks encrypted in segments (segment_size) under the
#             file key; 3: under a key per chunk version, the nonce being the segment number;
#             4: as 3, and shares smaller than `pack_below` appended to pack objects
FORMATS = (2, 3, 4)  # what this fusefs reads and writes
PACK_FORMAT = 4  # the first format with pack objects
DEFAULT_PACK_BELOW = 256 << 10  # shares smaller than this go into packs (format 4): a
#                                small file's 5 share files cost 5 creates and renames (ext4
#                                inode allocation was ~20% of a small-file write), 5 PUTs on
#                                S3; bigger shares are written with O_DIRECT as objects of
#                                their own (stores/local.py DIRECT_MIN), where a pack gains
#                                nothing. `init --pack-below 0` turns packs off
MAX_PACK_BELOW = 1 << 30
DEFAULT_PACK_SIZE = 16 << 20  # a pack is sealed once this big: compaction copies at most
#                               half of it to free one, scrub reads one per request
MIN_PACK_SIZE, MAX_PACK_SIZE = 64 << 10, 1 << 30
CONFIG_NAME = "fusefs.toml"
MIN_CHUNK = 64 << 10
MAX_CHUNK = 64 << 20
DEFAULT_CHUNK = 4 << 20  # 4 MiB: a quarter of the share objects (and opens, S3 requests) of
#                          1 MiB; seq. cold read +30%, degraded +20% (measured); random reads
#                          fetch only their segments, so they do not pay for bigger chunks
DEFAULT_SNAPSHOT_INTERVAL = 60.0  # seconds: the most a host loss costs of metadata changes
MIN_SEGMENT = 4 << 10
DEFAULT_SEGMENT = 64 << 10  # AEAD unit inside a chunk: a random 128 KiB read fetches and
#                             authenticates 2-3 segments, not the whole chunk


@dataclass(frozen=True)
class VolumeConfig:
    volume_id: str  # 32 hex digits
    data_shares: int
    parity_shares: int
    chunk_size: int
    stores: list[str]
    key_check: str
    format: int = FORMAT
    write_quorum: int = 0  # stores that must take a share for a write to succeed; 0: k + 1
    segment_size: int = DEFAULT_SEGMENT  # bytes of plaintext per AEAD segment
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL  # seconds between metadata
    #                                  snapshots published to the stores while changes come
    #                                  in; 0: only at unmount and on demand
    gc_grace: float = -1.0  # seconds shares replaced or deleted stay in the stores after a
    #                         snapshot without them is published (followers may still read
    #                         them); negative: 3 snapshot intervals
    pack_below: int = 0  # format 4: shares smaller than this (bytes) are appended to pack
    #                      objects; 0: none are (a config that does not say packs nothing:
    #                      `init` writes DEFAULT_PACK_BELOW unless told otherwise)
    pack_size: int = DEFAULT_PACK_SIZE  # bytes at which a pack is sealed (format 4)
    role: str = "writer"  # this volume directory's role: "writer", or "follower" (mounted
    #                       read-only from the writer's snapshots; never writes the stores)

    @property
    def grace(self) -> float:
        """Effective gc grace: a follower polls every interval, so three intervals after a
        snapshot without some data is published no follower still reads it."""
        if self.gc_grace >= 0:
            return self.gc_grace
        return 3 * self.snapshot_interval

    @property
    def packs(self) -> bool:
        """Whether small shares are written into pack objects (format 4)."""
        return self.format >= PACK_FORMAT and self.pack_below > 0

    @property
    def n_shares(self) -> int:
        return self.data_shares + self.parity_shares

    @property
    def quorum(self) -> int:
        """Effective write quorum: k + 1 by default (one failure more is survivable)."""
        return self.write_quorum or min(self.n_shares, self.data_shares + 1)

    @property
    def volume_id_bytes(self) -> bytes:
        return bytes.fromhex(self.volume_id)


def validate(cfg: VolumeConfig) -> None:
    """Raise ConfigError when the parameters cannot describe a working volume."""
    if cfg.data_shares < 1:
        raise ConfigError("--data-shares must be at least 1")
    if cfg.parity_shares < 0:
        raise ConfigError("--parity-shares must not be negative")
    if cfg.n_shares > 255:
        raise ConfigError("at most 255 shares per chunk")
    if cfg.n_shares > len(cfg.stores):
        raise ConfigError(f"{cfg.data_shares} data + {cfg.parity_shares} parity shares need "
                          f"{cfg.n_shares} stores, but {len(cfg.stores)} were given")
    if cfg.write_quorum and not cfg.data_shares <= cfg.write_quorum <= cfg.n_shares:
        raise ConfigError(f"write quorum must be between {cfg.data_shares} and {cfg.n_shares}")
    if not MIN_CHUNK <= cfg.chunk_size <= MAX_CHUNK:
        raise ConfigError(f"chunk size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
    if not MIN_SEGMENT <= cfg.segment_size <= cfg.chunk_size:
        raise ConfigError(f"segment size must be between {MIN_SEGMENT} bytes and the chunk "
                          f"size ({cfg.chunk_size})")
    if cfg.snapshot_interval < 0:
        raise ConfigError("snapshot_interval must not be negative (0: no periodic snapshots)")
    if not 0 <= cfg.pack_below <= MAX_PACK_BELOW:
        raise ConfigError(f"pack_below must be between 0 and {MAX_PACK_BELOW} bytes")
    if not MIN_PACK_SIZE <= cfg.pack_size <= MAX_PACK_SIZE:
        raise ConfigError(f"pack size must be between {MIN_PACK_SIZE} and {MAX_PACK_SIZE} "
                          "bytes")
    if cfg.role not in ("writer", "follower"):
        raise ConfigError(f"role must be writer or follower, not {cfg.role!r}")
    try:
        if len(bytes.fromhex(cfg.volume_id)) != 16:
            raise ValueError
    except ValueError:
        raise ConfigError("volume id in the config is malformed") from None


def parse_size(text: str) -> int:
    """Parse '1048576', '1M', '1MiB', '512k' into bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    try:
        return int(t) * mult
    except ValueError:
        raise ConfigError(f"cannot parse size {text!r} (examples: 1048576, 1M, 4MiB)") from None
