"""What the daemon does for `fusefs version ...` and `fusefs fingerprint` (control socket).

Paths come from the client relative to the mount's root, already free of symlinks, `.` and
`..` (the client resolved them through the mount); they are looked up in the metadata, the
live tree's or, under `.fusefs/versions/NAME/`, a version's.

Creating a version: every file open for writing is flushed first (a version shows what was
written before it was taken), then the tree's rows are copied in one transaction (atomic:
on the trio thread nothing else runs meanwhile), its fingerprint is computed from the copy
(immutable, so no race), and the result is made durable and published as a metadata
snapshot, so followers and `recover` see it without waiting for the next interval.
"""

from __future__ import annotations

import logging
import stat
import time

from fusefs.errors import FsError, FusefsError
from fusefs.meta.repo import ROOT_INODE
from fusefs.meta.versions import VersionRow
from fusefs.treedigest import Progress, TreeDigester
from fusefs.versionfs import (
    CONTROL_NAME,
    MAX_VERSION_ID,
    VERSIONS_INO,
    VERSIONS_NAME,
    VersionedFileSystem,
)

log = logging.getLogger(__name__)

NAME_MAX = 255


def check_name(name: str) -> bytes:
    raw = name.encode(errors="surrogateescape")
    if not raw or len(raw) > NAME_MAX or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        raise FusefsError(f"{name!r} is not a usable version name (1-255 bytes, no '/', "
                          "not '.' or '..')")
    return raw


class Versioning:
    def __init__(self, fs: VersionedFileSystem) -> None:
        self.fs = fs
        self.versions = fs.versions
        self.digester = TreeDigester(fs.meta, fs.volume)

    def _writable(self) -> None:
        if self.fs.read_only or self.fs.volume.fenced:
            raise FusefsError("this mount is read-only (--read-only, a follower, or another "
                              "host took over): versions are made and deleted on the writer")

    def resolve(self, path: str) -> tuple[int | None, int, int]:
        """(version id or None for the live tree, inode, mode) of a path inside the mount."""
        parts = [p.encode(errors="surrogateescape") for p in path.split("/") if p]
        vid: int | None = None
        ino = ROOT_INODE
        if parts[:1] == [CONTROL_NAME]:
            if len(parts) < 3 or parts[1] != VERSIONS_NAME:
                raise FusefsError(f"{path}: not a tree (name a version: "
                                  ".fusefs/versions/NAME)")
            found = self.versions.by_name(parts[2])
            if found is None:
                raise FusefsError(f"no version named {parts[2].decode(errors='replace')!r}")
            vid, ino, parts = found.id, found.root, parts[3:]
        mode = stat.S_IFDIR
        for name in parts:
            if vid is None:
                row = self.fs.meta.lookup_inode(ino, name)
            else:
                row = self.versions.lookup_inode(vid, ino, name)
            if row is None:
                raise FusefsError(f"{path}: no such file or directory in the volume")
            ino, mode = row.id, row.mode
        return vid, ino, mode

    async def fingerprint(self, path: str, *, verify: bool = False,
                          progress: Progress | None = None) -> dict:
        """From the metadata; with `verify`, also recomputed from every byte read through
        the verified read path: "fingerprint" is then the recomputed value, "recorded" the
        metadata's, "mismatches" the chunks whose bytes differ from their record."""
        vid, ino, mode = self.resolve(path)
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise FusefsError(f"{path}: neither a directory nor a regular file")
        recorded = await self.digester.digest(ino, vid)
        if not verify:
            return recorded.as_dict()
        read = await self.digester.digest(ino, vid, verify=True, progress=progress)
        return {**read.as_dict(), "recorded": recorded.digest.hex(), "verified": True}

    async def version_fingerprint(self, version: VersionRow) -> bytes:
        """A version's fingerprint: recorded at creation (computed now if a crash came
        between its creation and that)."""
        if version.fingerprint is not None:
            return version.fingerprint
        got = await self.digester.digest(version.root, version.id)
        if self.versions.by_id(version.id) is not None and self.fs.volume.healer.writes:
            self.versions.set_fingerprint(version.id, got.digest)
        return got.digest

    async def create(self, name: str, path: str) -> dict:
        raw = check_name(name)
        self._writable()
        vid, ino, mode = self.resolve(path)
        if vid is not None:
            raise FusefsError(f"{path} is inside a version: versions are taken of the "
                              "live tree")
        if not stat.S_ISDIR(mode):
            raise FusefsError(f"{path} is not a directory: a version is a directory tree")
        if self.versions.by_name(raw) is not None:
            raise FusefsError(f"a version named {name!r} exists already")
        for fd in list(self.fs.files.values()):
            try:
                await fd.flush(durable=False)
            except FsError as e:  # the writer of that file is told at its close too
                raise FusefsError(f"an open file could not be written ({e}): no version "
                                  "was taken") from None
        if self.versions.by_name(raw) is not None:  # created meanwhile, by another client
            raise FusefsError(f"a version named {name!r} exists already")
        source = b"/" + path.strip("/").encode(errors="surrogateescape")
        version = self.versions.create(raw, ino, source, time.time_ns())
        if version.id > MAX_VERSION_ID:
            self.versions.delete(version.id)
            raise FusefsError("this volume has used up its version ids")
        got = await self.digester.digest(version.root, version.id)
        self.versions.set_fingerprint(version.id, got.digest)
        await self.fs.volume.make_durable()
        published = await self._publish()
        return {"name": name, "fingerprint": got.digest.hex(), "files": got.files,
                "directories": got.directories, "bytes": got.bytes,
                "source": source.decode(errors="surrogateescape"), "published": published}

    async def list(self) -> list[dict]:
        out = []
        for v in self.versions.all():
            out.append({"name": v.name.decode(errors="surrogateescape"),
                        "fingerprint": (await self.version_fingerprint(v)).hex(),
                        "source": v.source.decode(errors="surrogateescape"),
                        "created_ns": v.created_ns})
        return out

    async def delete(self, name: str) -> dict:
        raw = check_name(name)
        self._writable()
        found = self.versions.by_name(raw)
        if found is None:
            raise FusefsError(f"no version named {name!r}")
        busy = self.fs.open_in_version(found.id)
        if busy:
            raise FusefsError(f"version {name!r} is in use ({busy} open files)")
        self.versions.delete(found.id)
        if self.fs.invalidate_entry is not None:
            await self.fs.invalidate_entry(VERSIONS_INO, raw)
        await self.fs.volume.make_durable()
        return {"name": name, "published": await self._publish()}

    async def _publish(self) -> bool | str:
        """Publish a snapshot now (True), or say why not; the change stays either way."""
        publisher = self.fs.volume.publisher
        if publisher is None:
            return "this mount does not publish snapshots"
        try:
            await publisher.publish()
        except FusefsError as e:
            log.warning("metadata snapshot after a version change not published: %s", e)
            return str(e)
        return True
