"""Port 0x80, port 0x92, the DMA controllers and isa-debug-exit (stub/native/misc.c)."""

from __future__ import annotations

from vmigdb import debugexit
from vmigdb.stub.machine.native import lib

DEBUG_EXIT = debugexit.IOBASE  # where QEMU's reference command line puts isa-debug-exit
DEBUG_EXIT_PORTS = tuple(range(DEBUG_EXIT, DEBUG_EXIT + debugexit.IOSIZE))
DMA_PORTS = (*range(0x10), *range(0x81, 0x90), *range(0xC0, 0xE0))
PORTS = {lib.VM_DEV_DEBUG_EXIT: DEBUG_EXIT_PORTS, lib.VM_DEV_DELAY: (0x80,),
         lib.VM_DEV_PORT92: (0x92,), lib.VM_DEV_DMA: DMA_PORTS}


def info(vm) -> list[tuple[str, str]]:
    return [("port 0x92", f"{vm.misc.port92:02x}"),
            ("port accesses", str(vm.port_accesses)), ("IRQs raised", str(vm.irqs_raised))]
