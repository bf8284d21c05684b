"""The 8259A interrupt controllers, master and slave, and the ELCR (stub/native/pic.c)."""

from __future__ import annotations

from vmigdb.stub.machine.native import lib

PORTS = {lib.VM_DEV_PIC: (0x20, 0x21, 0xA0, 0xA1), lib.VM_DEV_ELCR: (0x4D0, 0x4D1)}


def info(vm) -> list[tuple[str, str]]:
    rows = []
    for name, c in (("master", vm.pic.chip[0]), ("slave", vm.pic.chip[1])):
        state = (f"irr={c.irr:02x} isr={c.isr:02x} imr={c.imr:02x} base={c.irq_base:#04x} "
                 f"elcr={c.elcr:02x}{' auto-eoi' if c.auto_eoi else ''}"
                 f"{' init' if c.init_state else ''}")
        rows.append((name, state))
    rows.append(("INTR", "high" if vm.pic.output else "low"))
    return rows
