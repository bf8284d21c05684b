"""The i8042 keyboard controller with a PS/2 keyboard and mouse (stub/native/kbc.c)."""

from __future__ import annotations

from vmigdb.stub.machine.native import lib

PORTS = {lib.VM_DEV_KBC: (0x60, 0x64)}
#: The controller command byte SeaBIOS leaves (keyboard interrupt, translation, mouse port off):
#: multiboot guests start after SeaBIOS on QEMU.
FIRMWARE_CTR = 0x61


def info(vm) -> list[tuple[str, str]]:
    k = vm.kbc
    return [("controller", f"status={k.status:02x} ctr={k.mode:02x} outport={k.outport:02x}"),
            ("queues", f"keyboard {k.kbd.count} bytes, mouse {k.aux.count} bytes"),
            ("mouse", f"type {k.aux_type}")]
