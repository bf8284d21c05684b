"""``make bench``: run every benchmark and print its table: the machine against QEMU (whole demo
runs), the gdb stubs (ours, QEMU's gdbstub, udbserver) driven by the same gdb script, stepi
against its ceiling (a null C stub) with where our stub's time goes, the trace paths (fast on our
stub, portable on QEMU), capture throughput through both targets, and report/diff/export on
traces at scale."""

from __future__ import annotations

import sys

from bench import analysis, capture, ceiling, gdb_paths, linux, machine, stubs


def main() -> int:
    status = 0
    for part in (machine, linux, stubs, ceiling, gdb_paths, capture, analysis):
        status = part.main() or status
    return status


if __name__ == "__main__":
    sys.exit(main())
