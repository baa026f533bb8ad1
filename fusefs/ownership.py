"""Which volume a store belongs to, and claiming a store that lost its marker.

Every store holds a marker naming its volume, so one store can never serve two volumes. A
store whose marker is gone was emptied or replaced (an empty directory at the same URL), or
was refilled by heals before anyone claimed it: it is claimed again when every object in it
is one this volume expects there. Anything else is refused: it may be someone else's data.
"""

from __future__ import annotations

from fusefs.codec.keys import VolumeKeys
from fusefs.meta.repo import MetaRepo
from fusefs.stores.base import Store


def owned_names(meta: MetaRepo, keys: VolumeKeys, si: int) -> set[str]:
    """Object names the metadata places on store `si` (current and garbage versions)."""
    return {keys.object_name(oid, i)
            for oid, where in meta.all_versions()
            for i, s in enumerate(where) if s == si}


async def ownership_problem(store: Store, si: int, volume_id: str, keys: VolumeKeys,
                            meta: MetaRepo, claim: bool) -> str | None:
    """None when `store` belongs to the volume (after claiming it, if `claim` and it lost
    its marker); otherwise why it cannot be used."""
    marker = await store.read_marker()
    if marker is not None:
        if marker.get("volume") == volume_id:
            return None
        return f"belongs to another volume ({marker.get('volume', 'unknown')})"
    names = set(await store.list())
    if names and not names <= owned_names(meta, keys, si):
        return "holds objects but no fusefs marker"
    if not claim:
        return "emptied or replaced (no marker)"
    await store.write_marker(volume_id)
    return None
