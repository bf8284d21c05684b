"""vmigdb's emulated PC on Unicorn, as a package of parts (QEMU's split):

- ``cpu``: the Unicorn core, run control, break- and watchpoints, hooks, events, the clock's
  corrections; ``registers``: the registers by name;
- ``memory``: the physical map, translation, debugger and hook access;
- ``native`` and ``devices``: the C half (stub/native: the clock, the port bus, the 8259A,
  8254, 16550A, MC146818, i8042, PCI host and legacy ports) and its Python face;
- ``boot``: multiboot ELF and Linux bzImage loaders;
- ``pc``: the PC that assembles them; ``interface``: ``MachineInterface``, what the RSP server,
  the monitor and the tracer use.

``Machine`` is the PC.
"""

from vmigdb.stub.machine.cpu import UNTIL
from vmigdb.stub.machine.interface import MachineInterface
from vmigdb.stub.machine.memory import ROM_BASE
from vmigdb.stub.machine.pc import PC
from vmigdb.stub.machine.stops import (
    CodeHook,
    MemoryFault,
    PortObserver,
    Stop,
    StopReason,
    qemu_exit_status,
)

Machine = PC

__all__ = [
    "PC",
    "ROM_BASE",
    "UNTIL",
    "CodeHook",
    "Machine",
    "MachineInterface",
    "MemoryFault",
    "PortObserver",
    "Stop",
    "StopReason",
    "qemu_exit_status",
]
