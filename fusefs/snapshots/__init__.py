"""Metadata snapshots in the stores: publishing (writer), reading (recover, followers)."""
