"""Serve the benchmark guest to gdb through udbserver (bet4it/udbserver) on vmigdb's machine.

``python -m bench.udb_launch GUEST ROM CMDLINE PORT``: builds ``Machine.from_files`` for the same
guest, ROM and command line as our stub (so the same multiboot state, ROM mapping and devices),
then hands ``machine.uc`` to udbserver. udbserver 0.3.0 only installs hooks: with ``start_addr``
it waits for gdb inside a code hook at that address, and the caller runs ``emu_start`` itself;
the gdb conversation then happens inside Unicorn callbacks. The machine's own hooks (ports,
exceptions, ROM write protection) stay installed and keep working under it.
"""

from __future__ import annotations

import sys

from vmigdb.stub.machine import UNTIL, Machine


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m bench.udb_launch GUEST ROM CMDLINE PORT", file=sys.stderr)
        return 2
    guest, rom, cmdline, port = argv
    # The bench extra: imported here, so a usage error needs no udbserver.
    from udbserver import udbserver

    machine = Machine.from_files(guest, rom=rom, cmdline=cmdline)
    out = sys.stdout.buffer

    def serial(data: bytes) -> None:
        out.write(data)
        out.flush()

    machine.on_serial = serial
    entry = machine.reg_read("eip")
    udbserver(machine.uc, port=int(port), start_addr=entry)
    print(f"udbserver armed at {entry:#x} on port {port}", file=sys.stderr, flush=True)
    machine.uc.emu_start(entry, UNTIL, 0, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
