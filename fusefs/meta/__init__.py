"""Volume metadata: the root of trust (names, attributes, chunk maps, share checksums)."""
