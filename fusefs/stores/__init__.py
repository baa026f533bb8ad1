"""Object stores: flat key -> bytes maps holding opaque, encrypted shares."""

from fusefs.stores.base import Store, open_store

__all__ = ["Store", "open_store"]
