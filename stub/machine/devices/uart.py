"""The 16550A UART on COM1 (stub/native/uart.c)."""

from __future__ import annotations

from vmigdb.stub.machine.native import lib

COM1 = 0x3F8
IRQ = 4
PORTS = {lib.VM_DEV_COM1: tuple(range(COM1, COM1 + 8))}


def info(vm) -> list[tuple[str, str]]:
    s = vm.com1
    regs = (f"ier={s.ier:02x} iir={s.iir:02x} lcr={s.lcr:02x} mcr={s.mcr:02x} lsr={s.lsr:02x} "
            f"msr={s.msr:02x} fcr={s.fcr:02x} divisor={s.divider}")
    return [("COM1", regs), ("receive FIFO", f"{s.rx_count} bytes"),
            ("IRQ", f"{s.irq} {'high' if s.irq_level else 'low'}")]
