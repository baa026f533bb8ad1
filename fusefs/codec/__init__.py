"""Pure, synchronous transforms between plaintext chunks and store shares.

Nothing here does I/O or knows about stores, SQLite or FUSE; every function is safe to run
in a worker thread (zfec and AES-GCM release the GIL on large inputs).
"""
