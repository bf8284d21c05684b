"""PCI configuration mechanism #1 with QEMU's pc chipset functions: the i440FX host bridge,
the PIIX3 ISA bridge and the PIIX3 IDE function (stub/native/pci.c keeps their configuration
spaces; stub/native/ide.c is the IDE function, with no drives).

The values are QEMU's for these functions: Linux's PCI probe finds a bus, names the chips,
applies their quirks ("Limiting direct PCI/PCI transfers", "PIIX3: Enabling Passive Release"),
assigns the IDE function's bus-master BAR and binds ata_piix, as it does on QEMU.
"""

from __future__ import annotations

import struct

from vmigdb.stub.machine.native import ffi, lib

PORTS = {lib.VM_DEV_PCI: tuple(range(0xCF8, 0xD00)),
         lib.VM_DEV_IDE: (*range(0x1F0, 0x1F8), 0x3F6, *range(0x170, 0x178), 0x376)}
IDE_DEVFN = 0x09  # 00:01.1
BMDMA_BAR, BMDMA_SIZE = 0x20, 16
SUBSYSTEM = (0x1AF4, 0x1100)  # QEMU's subsystem IDs


def _function(vendor: int, device: int, revision: int, class_code: int, header: int,
              extra: dict[int, int], writable: tuple[tuple[int, int], ...],
              io_bar: tuple[int, int] | None = None) -> tuple[bytes, bytes]:
    config = bytearray(256)
    struct.pack_into("<HH", config, 0, vendor, device)
    struct.pack_into("<I", config, 8, revision | class_code << 8)
    config[0x0E] = header
    struct.pack_into("<HH", config, 0x2C, *SUBSYSTEM)
    for off, value in extra.items():
        config[off] = value
    wmask = bytearray(256)
    wmask[0x04], wmask[0x05] = 0xFF, 0x07  # command
    wmask[0x0D] = 0xFF  # latency timer
    for start, end in writable:
        for off in range(start, end):
            wmask[off] = 0xFF
    if io_bar is not None:  # an I/O BAR: its size bits read back 0, bit 0 (I/O space) is 1
        offset, size = io_bar
        struct.pack_into("<I", wmask, offset, ~(size - 1) & 0xFFFFFFFC)
    return bytes(config), bytes(wmask)


#: (devfn, config, write mask) of every function on bus 0.
FUNCTIONS = (
    (0x00, *_function(0x8086, 0x1237, 0x02, 0x060000, 0x00,  # i440FX: PAM and SMRAM registers
                      {0x06: 0x00, 0x72: 0x02}, ((0x50, 0x60), (0x72, 0x73)))),
    (0x08, *_function(0x8086, 0x7000, 0x00, 0x060100, 0x80,  # PIIX3 ISA bridge: PIRQ routing
                      {0x04: 0x07, 0x06: 0x00, 0x07: 0x02, 0x4C: 0x4D, 0x4E: 0x03,
                       0x60: 0x80, 0x61: 0x80, 0x62: 0x80, 0x63: 0x80, 0x69: 0x02,
                       0x70: 0x80, 0x76: 0x0C, 0x77: 0x0C, 0x78: 0x02, 0xA0: 0x08,
                       0xA8: 0x0F}, ((0x4C, 0x80), (0xA0, 0xB0)))),
    # PIIX3 IDE (QEMU's piix_ide_reset): legacy mode (prog-if 0x80), BAR 4 the bus-master
    # registers (16 I/O ports, bit 0 set), IDE timing registers writable and zero (no drive
    # decode enabled, so Linux probes no drive).
    (IDE_DEVFN, *_function(0x8086, 0x7010, 0x00, 0x010180, 0x00,
                           {0x06: 0x80, 0x07: 0x02, BMDMA_BAR: 0x01}, ((0x40, 0x48),),
                           io_bar=(BMDMA_BAR, BMDMA_SIZE))),
)


def reset(vm) -> None:
    lib.vm_pci_reset(vm)
    for devfn, config, wmask in FUNCTIONS:
        lib.vm_pci_add(vm, devfn, ffi.from_buffer(config), ffi.from_buffer(wmask))
    for i in range(lib.VM_PCI_FUNCTIONS):
        f = vm.pci.fn[i]
        if f.devfn == IDE_DEVFN:
            f.io_bar, f.io_owner, f.io_size = BMDMA_BAR, lib.VM_DEV_BMDMA, BMDMA_SIZE
            vm.ide.function = i


def info(vm) -> list[tuple[str, str]]:
    rows = []
    for i in range(lib.VM_PCI_FUNCTIONS):
        f = vm.pci.fn[i]
        if f.devfn == 0xFF:
            continue
        vendor, device = struct.unpack("<HH", bytes(f.config[0:4]))
        ids = f"{vendor:04x}:{device:04x} class {f.config[0x0B]:02x}{f.config[0x0A]:02x}"
        rows.append((f"00:{f.devfn >> 3:02x}.{f.devfn & 7}", ids))
    return rows
