"""The MC146818 RTC and its CMOS memory (stub/native/rtc.c).

The CMOS bytes a BIOS leaves (memory sizes, equipment) are written as QEMU's pc_cmos_init
writes them, from the machine's RAM size.
"""

from __future__ import annotations

import datetime as dt

from vmigdb.stub.machine.native import lib

PORTS = {lib.VM_DEV_RTC: (0x70, 0x71)}
#: The default date at power-on: runs repeat exactly unless --rtc says otherwise.
DEFAULT_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def reset(vm, base: dt.datetime, ram_size: int) -> None:
    lib.vm_rtc_reset(vm, int(base.timestamp()))
    cmos = vm.rtc.cmos
    ext_kib = min(max(ram_size // 1024 - 1024, 0), 0xFFFF)
    above_16m = min(max((ram_size - (16 << 20)) // 65536, 0), 0xFFFF)
    values = {0x10: 0, 0x14: 0x06, 0x15: 640 & 0xFF, 0x16: 640 >> 8,
              0x17: ext_kib & 0xFF, 0x18: ext_kib >> 8, 0x30: ext_kib & 0xFF,
              0x31: ext_kib >> 8, 0x34: above_16m & 0xFF, 0x35: above_16m >> 8,
              0x5B: 0, 0x5C: 0, 0x5D: 0, 0x5F: 0}
    for reg, value in values.items():
        cmos[reg] = value


def info(vm) -> list[tuple[str, str]]:
    c = vm.rtc.cmos
    return [("registers", f"A={c[0x0A]:02x} B={c[0x0B]:02x} C={c[0x0C]:02x} D={c[0x0D]:02x}"),
            ("base", dt.datetime.fromtimestamp(vm.rtc.base_seconds + vm.rtc.offset_seconds,
                                               dt.UTC).isoformat())]
