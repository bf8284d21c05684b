"""gdb commands that `gdb -x vmigdb.py` adds (the `vmi` prefix)."""
