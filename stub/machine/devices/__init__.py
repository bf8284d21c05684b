"""The PC's devices, one module per device (QEMU's hw/ layout), each over its C model in
stub/native: what ports it answers (``PORTS``: owner -> ports), how it is set up at reset, and
what ``monitor info DEVICE`` shows (``info(vm)``: rows of name and value).
"""

from __future__ import annotations

from types import ModuleType

from vmigdb.stub.machine.devices import kbc, misc, pci, pic, pit, rtc, uart

#: Every device, by the name ``monitor info`` knows it under.
DEVICES: dict[str, ModuleType] = {"pic": pic, "pit": pit, "serial": uart, "rtc": rtc,
                                  "i8042": kbc, "pci": pci, "ports": misc}
