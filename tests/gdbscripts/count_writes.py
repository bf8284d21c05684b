"""Sourced inside a gdb session with vmigdb.py: defines ``count_writes(command)``, which runs a
gdb command with ``gdb.write`` wrapped and prints ``@@writes COMMAND N`` (N = gdb.write calls
the command made), so a test can check that each view is written in one piece."""

import gdb


def count_writes(command: str) -> int:
    original = gdb.write
    calls = []

    def counting(text, *args, **kwargs):
        calls.append(text)
        return original(text, *args, **kwargs)

    gdb.write = counting
    try:
        gdb.execute(command)
    finally:
        gdb.write = original
    gdb.write(f"@@writes {command} {len(calls)}\n")
    return len(calls)
