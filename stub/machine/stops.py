"""Why a run or a step ended, and the error for memory a debugger cannot reach."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmigdb.debugexit import qemu_status as qemu_exit_status


class StopReason(enum.Enum):
    """Why ``run`` or ``step`` returned."""

    STEP = "step"  # one instruction executed
    BREAKPOINT = "breakpoint"  # reached an address added with add_breakpoint (not executed)
    WATCHPOINT = "watchpoint"  # an access matched a watchpoint; reported after the access
    INTERRUPTED = "interrupted"  # interrupt() was called from another thread
    HOOK = "hook"  # a hook callback asked to stop (returned True)
    EXIT = "exit"  # the guest wrote isa-debug-exit; exit_code is the value written
    HALT = "halt"  # hlt that nothing can end: interrupts off, or no timer armed
    RESET = "reset"  # the guest asked for a reset (i8042 pulse, port 0x92) with no_reboot set
    ALARM = "alarm"  # the virtual clock reached the time set with set_alarm
    TRIPLE_FAULT = "triple_fault"  # the guest's exception delivery failed twice
    FAULT = "fault"  # emulation error the guest cannot handle (e.g. fetch from unmapped RAM)


@dataclass(frozen=True)
class Stop:
    """A stop: the reason plus what the stub needs to report it."""

    reason: StopReason
    pc: int
    exit_code: int | None = None  # EXIT: the value the guest wrote to isa-debug-exit
    watch_addr: int | None = None  # WATCHPOINT: the watched VA that was accessed
    watch_kind: str | None = None  # WATCHPOINT: "watch" | "rwatch" | "awatch"
    vector: int | None = None  # FAULT/TRIPLE_FAULT: the exception vector, if any
    message: str = ""  # one line for a human

    @property
    def qemu_status(self) -> int | None:
        """QEMU's process exit status for the same isa-debug-exit write (vmigdb.debugexit)."""
        return None if self.exit_code is None else qemu_exit_status(self.exit_code)


class MemoryFault(Exception):
    """A virtual address is not mapped (or a physical one is outside RAM and ROM)."""

    def __init__(self, addr: int) -> None:
        self.addr = addr
        super().__init__(f"cannot access memory at {addr:#x}")


#: A per-address code hook: called before the instruction at its address executes, with the
#: machine; returning True stops the run with StopReason.HOOK.
CodeHook = Callable[[Any], bool]
#: An I/O-port observer: (machine, port, size, value); returning True stops the run (HOOK).
PortObserver = Callable[[Any, int, int, int], "bool | None"]
