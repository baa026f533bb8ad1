"""Direct read API: read a volume's files from its volume directory, no mount needed.

    import fusefs
    vol = fusefs.open_volume("/var/lib/fusefs/ds", key_file="/etc/fusefs/ds.key")
    data = vol.read_bytes("/train/cat/001.jpg")
    with vol.open("/train/big.npy") as f: ...
    ds = fusefs.FileDataset(vol, "/train", suffixes=(".jpg",), targets=True)

Modules: `volume` (`DirectVolume`: paths, fork-safety, pickling), `file` (`DirectFile`),
`view` (one process's metadata, stores and read algorithm; damage reporting), `dataset`
(`FileDataset`, for PyTorch's DataLoader without importing torch). docs/training.md says
when to use it rather than the mount.
"""

from fusefs.direct.dataset import FileDataset
from fusefs.direct.file import DirectFile, FileChangedError
from fusefs.direct.volume import DirectVolume, open_volume

__all__ = ["DirectFile", "DirectVolume", "FileChangedError", "FileDataset", "open_volume"]
