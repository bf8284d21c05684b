"""``make bench``: run every benchmark and print its table: the machine against QEMU (whole demo
runs), the gdb stubs (ours, QEMU's gdbstub, udbserver) driven by the same gdb script, the trace
paths (fast on our stub, portable on QEMU), and capture throughput through both targets."""

from __future__ import annotations

import sys

from bench import capture, gdb_paths, linux, machine, stubs


def main() -> int:
    status = 0
    for part in (machine, linux, stubs, gdb_paths, capture):
        status = part.main() or status
    return status


if __name__ == "__main__":
    sys.exit(main())
