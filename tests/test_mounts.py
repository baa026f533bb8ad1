"""The one mount-table reader (fusefs.mounts): escaped fields, optional fields, lookups."""

from __future__ import annotations

from pathlib import Path

from fusefs.mounts import mounted_at, parse_mountinfo

SAMPLE = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:45 / /mnt/with\\040space rw,nosuid,nodev,relatime shared:7 master:3 - "
    "fuse.fusefs /var/lib/my\\040vol rw,user_id=0,group_id=0\n"
    "41 22 0:46 / /mnt/back\\134slash rw - tmpfs tmpfs rw\n"
    "garbage line without separator\n"
)


def test_fields_are_unescaped_and_optional_fields_skipped() -> None:
    mounts = parse_mountinfo(SAMPLE)
    assert [m.mountpoint for m in mounts] == ["/", "/mnt/with space", "/mnt/back\\slash"]
    fuse = mounts[1]
    assert (fuse.device, fuse.fstype, fuse.source) == ("0:45", "fuse.fusefs", "/var/lib/my vol")
    assert mounts[0].root == "/"


def test_mounted_at_finds_the_root_and_nothing_for_a_plain_directory(tmp_path: Path) -> None:
    root = mounted_at("/")
    assert root is not None and root.mountpoint == "/"
    assert mounted_at(tmp_path) is None
