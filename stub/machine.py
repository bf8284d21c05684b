"""The emulated PC a VMI guest runs on: Unicorn i386 plus the few devices a multiboot guest needs.

Only ``stub/`` imports unicorn. The RSP server and the tracer reach the machine through the
methods of ``Machine`` below (registers, memory, step, run until a stop, break- and watchpoints,
per-address hooks), so the protocol can be tested against a fake and the machine without a
socket. Nothing happens inside a Unicorn hook except recording and stopping.

INTERFACE SKELETON: the types and signatures here are the contract; the implementation is
being written (issue 2).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class StopReason(enum.Enum):
    """Why ``Machine.run`` or ``Machine.step`` returned."""

    STEP = "step"  # one instruction executed
    BREAKPOINT = "breakpoint"  # reached an address added with add_breakpoint (not executed)
    WATCHPOINT = "watchpoint"  # an access matched a watchpoint; reported after the access
    INTERRUPTED = "interrupted"  # interrupt() was called from another thread
    HOOK = "hook"  # a hook callback asked to stop (returned True)
    EXIT = "exit"  # the guest wrote isa-debug-exit; exit_code is QEMU's (value << 1) | 1
    HALT = "halt"  # hlt with IF=0: the machine can never wake
    TRIPLE_FAULT = "triple_fault"  # the guest's exception delivery failed twice
    FAULT = "fault"  # emulation error the guest cannot handle (e.g. fetch from unmapped RAM)


@dataclass(frozen=True)
class Stop:
    """A stop: the reason plus what the stub needs to report it."""

    reason: StopReason
    pc: int
    exit_code: int | None = None  # EXIT
    watch_addr: int | None = None  # WATCHPOINT: the watched VA that was accessed
    watch_kind: str | None = None  # WATCHPOINT: "watch" | "rwatch" | "awatch"
    vector: int | None = None  # FAULT/TRIPLE_FAULT: the exception vector, if any
    message: str = ""  # one line for a human


class MemoryFault(Exception):
    """A virtual address is not mapped (or a physical one is outside RAM and ROM)."""

    def __init__(self, addr: int) -> None:
        self.addr = addr
        super().__init__(f"cannot access memory at {addr:#x}")


#: A per-address code hook: called before the instruction at its address executes, with the
#: machine; returning True stops the run with StopReason.HOOK.
CodeHook = Callable[["Machine"], bool]
#: An I/O-port observer: (machine, port, size, value).
PortObserver = Callable[["Machine", int, int, int], None]


class Machine:
    """A Unicorn i386 PC: RAM, the VMI ROM read-only at 0xC0000, COM1, isa-debug-exit, port 0x80.

    Registers by name: eax ecx edx ebx esp ebp esi edi eip eflags cs ss ds es fs gs, cr0 cr2
    cr3 cr4 efer, gdtr_base gdtr_limit idtr_base idtr_limit ldtr tr, fs_base gs_base.
    """

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_files(cls, guest_elf: str, rom: str | None = None, cmdline: str = "",
                   ram_size: int = 64 << 20) -> "Machine":
        """Load a multiboot ELF and a ROM image (default: the built ROM); raise GuestImageError
        or RomError (vmigdb.errors) with one clear line on bad input."""
        raise NotImplementedError

    def reset(self) -> None:
        """Back to the multiboot entry state with RAM reloaded (monitor ``reset``)."""
        raise NotImplementedError

    # --- registers and memory ------------------------------------------------------------------
    def reg_read(self, name: str) -> int:
        raise NotImplementedError

    def reg_write(self, name: str, value: int) -> None:
        """A segment selector write reloads the hidden descriptor; a CR write changes paging."""
        raise NotImplementedError

    def read_virt(self, addr: int, size: int) -> bytes:
        """Read through the guest's page tables (identity while paging is off); MemoryFault."""
        raise NotImplementedError

    def write_virt(self, addr: int, data: bytes) -> None:
        """Debugger write: also writes the ROM; invalidates translated code; MemoryFault."""
        raise NotImplementedError

    def read_phys(self, addr: int, size: int) -> bytes:
        raise NotImplementedError

    def write_phys(self, addr: int, data: bytes) -> None:
        raise NotImplementedError

    def translate(self, va: int) -> int | None:
        """Guest-virtual to physical through the current page tables; None if unmapped."""
        raise NotImplementedError

    def regions(self) -> list[tuple[int, int, str]]:
        """(start, length, "ram" | "rom") for the memory map."""
        raise NotImplementedError

    # --- run control ---------------------------------------------------------------------------
    def step(self) -> Stop:
        """Execute exactly one instruction (delivering an exception counts as one)."""
        raise NotImplementedError

    def run(self) -> Stop:
        """Run until a breakpoint, watchpoint, hook stop, interrupt(), guest exit or machine stop.
        A breakpoint at the current pc does not stop the run before it executes."""
        raise NotImplementedError

    def interrupt(self) -> None:
        """Thread-safe: make a running ``run`` return StopReason.INTERRUPTED soon."""
        raise NotImplementedError

    # --- break-, watchpoints and hooks -------------------------------------------------------------
    def add_breakpoint(self, va: int) -> None:
        raise NotImplementedError

    def remove_breakpoint(self, va: int) -> None:
        raise NotImplementedError

    def add_watchpoint(self, va: int, length: int, kind: str) -> None:
        """kind: "watch" (write), "rwatch" (read), "awatch" (either)."""
        raise NotImplementedError

    def remove_watchpoint(self, va: int, length: int, kind: str) -> None:
        raise NotImplementedError

    def add_code_hook(self, va: int, hook: CodeHook) -> object:
        """A per-address hook (never a whole-range one); returns a handle for remove_code_hook."""
        raise NotImplementedError

    def remove_code_hook(self, handle: object) -> None:
        raise NotImplementedError

    def add_port_observer(self, port: int, observer: PortObserver) -> None:
        """Observe guest ``out`` to a port (the ROM's flush and init ports)."""
        raise NotImplementedError

    # --- devices -----------------------------------------------------------------------------
    #: Called with each chunk of bytes the guest writes to COM1.
    on_serial: Callable[[bytes], None] | None = None
