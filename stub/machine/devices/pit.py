"""The 8254 interval timer and port 0x61 (stub/native/pit.c)."""

from __future__ import annotations

from vmigdb.stub.machine.native import NEVER, lib

PORTS = {lib.VM_DEV_PIT: (0x40, 0x41, 0x42, 0x43), lib.VM_DEV_SPEAKER: (0x61,)}


def info(vm) -> list[tuple[str, str]]:
    rows = []
    for i in range(3):
        c = vm.pit.ch[i]
        nxt = "never" if c.next_transition == NEVER else f"tick {c.next_transition}"
        state = (f"mode {c.mode} count {c.count} gate {c.gate} out {max(c.out, 0)} "
                 f"next change {nxt}")
        rows.append((f"channel {i}", state))
    return rows
