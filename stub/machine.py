"""The emulated PC a VMI guest runs on: Unicorn i386 plus the few devices a multiboot guest needs.

Only ``stub/`` imports unicorn. The RSP server and the tracer reach the machine through the
methods of ``Machine`` below (registers, memory, step, run until a stop, break- and watchpoints,
per-address hooks), so the protocol can be tested against a fake and the machine without a
socket. Nothing happens inside a Unicorn hook except recording and stopping.

Memory map: RAM from 0 to ``ram_size`` except the ROM's pages at 0xC0000, which are mapped
read-only (READ|EXEC) with a write-protect hook that drops guest writes as shadow ROM does.
The VGA hole 0xA0000-0xBFFFF is plain RAM (no device is emulated there); the rest of the
0xC0000-0xFFFFF area past the ROM is RAM too, so a ROM scan finds exactly one signature.
Accesses outside RAM and ROM (APIC, PCI holes) stop the run with StopReason.FAULT.

Devices, on I/O ports (one UC_HOOK_INSN each for IN and OUT, a dictionary lookup per access):
COM1 at 0x3F8 (THR writes go to ``on_serial``; LSR reads 0x60; DLAB, loopback and the
scratch/line/modem control registers behave enough for Linux-style probing), isa-debug-exit at
0xF4-0xF7 (stops with StopReason.EXIT; ``Stop.exit_code`` is the value written, QEMU's process
status would be ``Stop.qemu_status`` = (value << 1) | 1), port 0x80 (ignored). Other ports read
all ones and ignore writes. Observers added with ``add_port_observer`` see every ``out`` to their
port; one that returns True stops the run (StopReason.HOOK).

Unicorn cannot leave a translation block from an I/O hook, so a stop requested by an ``out``
(exit, observer) takes effect at the end of the current block; I/O after the exit is ignored.

Run control: ``run`` is one ``emu_start`` in exits mode with no exit (``until`` ignored: the
end-of-run invalidation of ``until-1`` would raise a hidden #PF that overwrites CR2), no
timeout and no count, so code runs at Unicorn's full speed; breakpoints and code hooks are single-address
UC_HOOK_CODE hooks (one per address, shared). ``step`` uses count=1 and flushes the translation
cache once when coming from run mode (Unicorn does not single-step warm code otherwise).
Watchpoints are physical memory hooks; Unicorn aborts the instruction when a memory hook stops
emulation (the store is already done), so a hit restores the old bytes and re-executes that one
instruction with count=1: the stop is reported after the access, with the store visible, exactly
once.

Halting: ``hlt`` ends ``emu_start`` without any hook; it is recognised by the byte before EIP.
With IF=0 the machine can never wake; with IF=1 it could, but there is no interrupt source
(no PIT, no PIC), so both stop with StopReason.HALT (different messages), and the machine stays
halted until the pc is written or the machine is reset.

Registers (``reg_read``/``reg_write`` by name): eax ecx edx ebx esp ebp esi edi eip eflags,
cs ss ds es fs gs (a write reloads the hidden descriptor from the GDT; a bad selector raises
ValueError), cr0 cr2 cr3 cr4 (a write flushes the TLB), efer (MSR 0xC0000080), gdtr_base
gdtr_limit idtr_base idtr_limit, ldtr tr (selectors; a write loads base/limit from the GDT),
fs_base gs_base (the hidden segment bases; read-only), and for the x87/SSE feature st0-st7
(80-bit values as ints: bytes 0-7 the mantissa, 8-9 sign and exponent, ST(i) relative to TOP),
fctrl fstat ftag fiseg fioff foseg fooff fop, xmm0-xmm7 (128-bit ints), mxcsr. ftag is the full
16-bit tag word as Unicorn keeps it.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_PROT,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_PROT,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from vmigdb import pagetable
from vmigdb.errors import GuestImageError, RomError
from vmigdb.stub import multiboot, uc_ctypes
from vmigdb.stub.interrupts import (
    ERROR_CODE_VECTORS,
    DeliveryError,
    deliver,
    vector_name,
)


class StopReason(enum.Enum):
    """Why ``Machine.run`` or ``Machine.step`` returned."""

    STEP = "step"  # one instruction executed
    BREAKPOINT = "breakpoint"  # reached an address added with add_breakpoint (not executed)
    WATCHPOINT = "watchpoint"  # an access matched a watchpoint; reported after the access
    INTERRUPTED = "interrupted"  # interrupt() was called from another thread
    HOOK = "hook"  # a hook callback asked to stop (returned True)
    EXIT = "exit"  # the guest wrote isa-debug-exit; exit_code is the value written
    HALT = "halt"  # hlt: with IF=0 the machine can never wake; IF=1 has no interrupt source
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
        """QEMU's process exit status for the same isa-debug-exit write: (value << 1) | 1."""
        return None if self.exit_code is None else ((self.exit_code << 1) | 1) & 0xFF


class MemoryFault(Exception):
    """A virtual address is not mapped (or a physical one is outside RAM and ROM)."""

    def __init__(self, addr: int) -> None:
        self.addr = addr
        super().__init__(f"cannot access memory at {addr:#x}")


#: A per-address code hook: called before the instruction at its address executes, with the
#: machine; returning True stops the run with StopReason.HOOK.
CodeHook = Callable[["Machine"], bool]
#: An I/O-port observer: (machine, port, size, value); returning True stops the run (HOOK).
PortObserver = Callable[["Machine", int, int, int], "bool | None"]

ROM_BASE = 0xC0000
PAGE = 0x1000
UNTIL = 0xFFFFFFFF  # ignored (exits mode, no exits): a real `until` is costly and unreliable
COM1 = 0x3F8
DEBUG_EXIT = 0xF4  # isa-debug-exit,iobase=0xf4,iosize=4
DEBUG_EXIT_PORTS = range(DEBUG_EXIT, DEBUG_EXIT + 4)
POST_PORT = 0x80
EFER = 0xC0000080
_IF = 1 << 9
_HLT = 0xF4
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
_WATCH_SLACK = 7  # memory hooks match the access's start address: widen to catch overlaps

_SIMPLE = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eflags", "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4", "mxcsr"]}
_SIMPLE.update({"fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW,
                "ftag": X.UC_X86_REG_FPTAG, "fiseg": X.UC_X86_REG_FCS,
                "fioff": X.UC_X86_REG_FIP, "foseg": X.UC_X86_REG_FDS,
                "fooff": X.UC_X86_REG_FDP, "fop": X.UC_X86_REG_FOP})
_SIMPLE.update({f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(8)})
_GPR32 = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in (
    "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags")}
_SEGMENTS = {"cs", "ss", "ds", "es", "fs", "gs"}
_TABLES = {"gdtr": X.UC_X86_REG_GDTR, "idtr": X.UC_X86_REG_IDTR, "ldtr": X.UC_X86_REG_LDTR,
           "tr": X.UC_X86_REG_TR}
#: register_file(): what one raw batch read holds, as (name, byte offset, bytes or "mmr"
#: for a descriptor-table register or "fp" for a physical x87 register).
_FILE_IDS: tuple[int, ...] = (
    *_GPR32.values(), *(_SIMPLE[n] for n in _SIMPLE if n not in _GPR32),
    *(getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)), *_TABLES.values())
_FILE_PLAN: tuple[tuple[str, int, int | str], ...] = tuple(
    (name, uc_ctypes.RAW_SLOT * i,
     "mmr" if name in _TABLES else "fp" if name[:2] == "fp" else
     16 if name.startswith("xmm") else 2 if name in _SEGMENTS else 4)
    for i, name in enumerate((*_GPR32, *(n for n in _SIMPLE if n not in _GPR32),
                              *(f"fp{i}" for i in range(8)), *_TABLES)))
_FILE_FP0 = next(off for name, off, _kind in _FILE_PLAN if name == "fp0")
_UC_ERRORS = {
    UC_ERR_FETCH_UNMAPPED: "instruction fetch from unmapped memory",
    UC_ERR_READ_UNMAPPED: "read of unmapped memory",
    UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
    UC_ERR_FETCH_PROT: "instruction fetch from protected memory",
    UC_ERR_READ_PROT: "read of protected memory",
    UC_ERR_WRITE_PROT: "write to protected memory",
    UC_ERR_INSN_INVALID: "invalid instruction",
}
_UNMAPPED_KIND = {UC_MEM_READ_UNMAPPED: "read of", UC_MEM_WRITE_UNMAPPED: "write to",
                  UC_MEM_FETCH_UNMAPPED: "instruction fetch from"}


def repo_root() -> Path:
    """The repository: the parent of the ``stub`` folder this file lives in."""
    return Path(__file__).resolve().parent.parent


def default_rom_path() -> Path:
    return repo_root() / "build" / "vmi_rom.bin"


def check_rom_image(data: bytes) -> None:
    """RomError unless ``data`` is an option ROM (55 AA, byte sum 0). Uses vmigdb.rominfo's
    fuller check when that module provides one."""
    try:
        from vmigdb import rominfo  # written by a sibling; optional
        check = getattr(rominfo, "check_rom", None)
    except ImportError:
        check = None
    if check is not None:
        check(data)
        return
    if len(data) < 3 or data[0] != 0x55 or data[1] != 0xAA:
        raise RomError("not an option ROM (no 55 AA signature)")
    size = data[2] * 512
    if size == 0 or size > len(data):
        raise RomError(f"ROM length byte says {size} bytes but the image has {len(data)}")
    total = sum(data[:size]) & 0xFF
    if total:
        raise RomError(f"bad ROM checksum (sum {total:#04x})")


class _Site:
    """Everything hooked at one code address: one Unicorn hook serves all of it."""

    __slots__ = ("breakpoint", "handle", "hooks")

    def __init__(self) -> None:
        self.handle: int | None = None
        self.breakpoint = False
        self.hooks: dict[int, CodeHook] = {}


@dataclass(frozen=True)
class _HookHandle:
    va: int
    ident: int


@dataclass
class _CHook:
    """A C code hook: re-added (to run last) when a Python hook joins its address."""

    fn: int
    user_data: int
    handle: int


@dataclass
class _Watch:
    va: int
    length: int
    kind: str
    pieces: list[tuple[int, int, int]]  # (pa, length, va) per physical page
    handles: list[int]


class Machine:
    """A Unicorn i386 PC: RAM, the VMI ROM read-only at 0xC0000, COM1, isa-debug-exit, port 0x80.

    Registers by name: eax ecx edx ebx esp ebp esi edi eip eflags cs ss ds es fs gs, cr0 cr2
    cr3 cr4 efer, gdtr_base gdtr_limit idtr_base idtr_limit ldtr tr, fs_base gs_base, and
    st0-st7 fctrl fstat ftag fiseg fioff foseg fooff fop xmm0-xmm7 mxcsr (module docstring).
    """

    #: Called with each chunk of bytes the guest writes to COM1.
    on_serial: Callable[[bytes], None] | None = None

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_files(cls, guest_elf: str, rom: str | None = None, cmdline: str = "",
                   ram_size: int = 64 << 20) -> Machine:
        """Load a multiboot ELF and a ROM image (default: the built ROM); raise GuestImageError
        or RomError (vmigdb.errors) with one clear line on bad input."""
        rom_path = Path(rom) if rom is not None else default_rom_path()
        try:
            rom_data = rom_path.read_bytes()
        except OSError as e:
            hint = " (build it with `make rom`)" if rom is None else ""
            raise RomError(f"cannot read ROM {rom_path}: {e.strerror}{hint}") from None
        try:
            image = Path(guest_elf).read_bytes()
        except OSError as e:
            raise GuestImageError(f"cannot read guest {guest_elf}: {e.strerror}") from None
        return cls(image, rom_data, cmdline=multiboot.command_line(guest_elf, cmdline),
                   ram_size=ram_size)

    def __init__(self, image: bytes, rom: bytes, cmdline: bytes = b"\0",
                 ram_size: int = 64 << 20) -> None:
        """``image`` a multiboot ELF, ``rom`` an option ROM image, ``cmdline`` the NUL-ended
        multiboot command line (see multiboot.command_line)."""
        check_rom_image(rom)
        self._plan = multiboot.parse(image)
        if ram_size < (2 << 20) or ram_size % PAGE:
            raise GuestImageError("RAM size must be a multiple of 4 KiB and at least 2 MiB")
        self._rom = rom
        self._cmdline = cmdline
        self.ram_size = ram_size
        rom_len = (len(rom) + PAGE - 1) & ~(PAGE - 1)
        self._rom_end = ROM_BASE + rom_len
        for seg in self._plan.segments:
            if seg.paddr < 0x1000 or seg.paddr + seg.memsz > ram_size or (
                    seg.paddr < self._rom_end and seg.paddr + seg.memsz > ROM_BASE):
                raise GuestImageError(f"ELF segment at {seg.paddr:#x} (+{seg.memsz:#x}) is "
                                      f"outside RAM or overlaps the ROM")
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_32)
        # QEMU's default i386 CPU, so CPUID answers as on the reference machine (qemu32).
        uc.ctl_set_cpu_model(X.UC_CPU_X86_QEMU32)
        # Exits mode with no exits: `until` is ignored. Without it, every emu_start ends by
        # invalidating the TB at until-1, whose page walk raises a hidden #PF under paging that
        # overwrites CR2 and leaves old_exception set (the next real fault would become #DF).
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        self._ctx = uc_ctypes.ContextPeek(uc)
        uc.mem_map(0, ROM_BASE, UC_PROT_ALL)
        uc.mem_map(ROM_BASE, rom_len, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_map(self._rom_end, ram_size - self._rom_end, UC_PROT_ALL)
        self._lock = threading.Lock()
        self._running = False
        self._stopped = threading.Event()
        self._interrupt_req = False
        self._sites: dict[int, _Site] = {}
        self._idle_sites: set[int] = set()  # breakpoint removed, hook kept until a continue
        # Page translations while the CPU is stopped (gdb reads the same pages many times per
        # stop); dropped whenever the CPU runs or the debugger writes registers or memory.
        self._xlate: dict[int, int | None] = {}
        self._in_emu = False
        self._next_ident = 1
        self._watches: list[_Watch] = []
        self._port_observers: dict[int, list[PortObserver]] = {}
        self._services: list[Callable[[], None]] = []
        self._init_state()
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write_prot)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        # Ctrl-C stops at the next block boundary through a C block hook (see stub/runctl.c).
        self._hooks_lib = uc_ctypes.hooks_library()
        self._runctl = uc_ctypes.RunControl()
        self._c_hooks: dict[int, dict[int, _CHook]] = {}  # va -> ident -> C code hook
        self._c_services: list[Callable[[], None]] = []
        self._runctl_seen = 0  # runctl.stopped when the last interrupt was reported
        self._file_reader = uc_ctypes.raw_batch_reader(uc, _FILE_IDS)
        uc_ctypes.add_runctl_hook(uc, self._hooks_lib, self._runctl)
        self.reset()

    def _init_state(self) -> None:
        self._stop: tuple | None = None  # (reason, extras dict) set by hooks
        self._halted: Stop | None = None
        self._step_mode = False
        self._start_pc: int | None = None  # first arrival at the resume pc is special
        self._arrival_done: int | None = None  # hooks at this pc already ran (we stopped there)
        self._stepping = False
        self._watch_muted = False
        self._watch_hit: tuple | None = None
        self._exited = False
        self._lcr = 0
        self._mcr = 0
        self._scr = 0
        self._rbr: int | None = None

    def reset(self) -> None:
        """Back to the multiboot entry state with RAM reloaded (monitor ``reset``)."""
        uc = self.uc
        self._init_state()
        self._xlate.clear()
        zero = bytes(1 << 20)
        for base in range(0, ROM_BASE, len(zero)):
            uc.mem_write(base, zero[:min(len(zero), ROM_BASE - base)])
        for base in range(self._rom_end, self.ram_size, len(zero)):
            uc.mem_write(base, zero[:min(len(zero), self.ram_size - base)])
        uc.mem_write(ROM_BASE, self._rom)
        for seg in self._plan.segments:
            uc.mem_write(seg.paddr, seg.data)  # bss is already zero
        uc.mem_write(multiboot.GDT_ADDR, multiboot.gdt())
        cmdline_addr = self._plan.cmdline_addr
        if cmdline_addr + len(self._cmdline) > self.ram_size:
            raise GuestImageError("the kernel image leaves no RAM for the command line")
        uc.mem_write(multiboot.MBI_ADDR, multiboot.boot_info(self.ram_size, cmdline_addr))
        uc.mem_write(cmdline_addr, self._cmdline)
        # QEMU's multiboot entry state (qemu-reference.md section 2).
        uc.reg_write(X.UC_X86_REG_CR0, 0x11)
        uc.reg_write(X.UC_X86_REG_CR3, 0)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.msr_write(EFER, 0)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, multiboot.GDT_ADDR, multiboot.GDT_LIMIT, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        uc.reg_write(X.UC_X86_REG_CS, 0x08)
        for r in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS,
                  X.UC_X86_REG_GS):
            uc.reg_write(r, 0x10)
        for name in ("ecx", "edx", "esi", "edi", "ebp"):
            uc.reg_write(_SIMPLE[name], 0)
        uc.reg_write(X.UC_X86_REG_EAX, multiboot.MULTIBOOT_BOOTLOADER_MAGIC)
        uc.reg_write(X.UC_X86_REG_EBX, multiboot.MBI_ADDR)
        uc.reg_write(X.UC_X86_REG_ESP, multiboot.ENTRY_ESP)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        uc.reg_write(X.UC_X86_REG_EIP, self._plan.entry)
        uc.ctl_flush_tb()
        self._flush_tlb()

    # --- registers and memory ------------------------------------------------------------------
    def register_file(self) -> dict[str, int]:
        """The registers of gdb's ``g`` packet (``reg_read`` names, plus ldtr/tr base and limit)
        from one libunicorn call and one MSR read: gdb asks for all of them whenever the three
        expedited ones are not enough, and reading them one by one through the binding cost
        ~0.5 ms."""
        raw = self._file_reader()
        out: dict[str, int] = {}
        for name, off, kind in _FILE_PLAN:
            if kind == "fp":
                continue  # physical x87 registers: st(i) below
            if kind == "mmr":  # uc_x86_mmr: u16 selector, u64 base at 8, u32 limit at 16
                if name in ("ldtr", "tr"):
                    out[name] = int.from_bytes(raw[off:off + 2], "little")
                out[f"{name}_base"] = int.from_bytes(raw[off + 8:off + 16], "little") & 0xFFFFFFFF
                out[f"{name}_limit"] = int.from_bytes(raw[off + 16:off + 20], "little")
            else:
                out[name] = int.from_bytes(raw[off:off + kind], "little")
        out["efer"] = self.uc.msr_read(EFER)
        top = (out["fstat"] >> 11) & 7
        for i in range(8):  # st(i) is physical register (top + i) mod 8: u64 mantissa, u16 exp
            off = _FILE_FP0 + uc_ctypes.RAW_SLOT * ((top + i) & 7)
            out[f"st{i}"] = int.from_bytes(raw[off:off + 10], "little")
        return out

    def reg_read(self, name: str) -> int:
        reg = _GPR32.get(name)
        if reg is not None:
            return uc_ctypes.reg_read32(self.uc, reg)
        uc = self.uc
        reg = _SIMPLE.get(name)
        if reg is not None:
            return uc.reg_read(reg)
        if name == "eip":
            return uc.reg_read(X.UC_X86_REG_EIP)
        if name == "efer":
            return uc.msr_read(EFER)
        if name.startswith("st") and name[2:].isdigit() and int(name[2:]) < 8:
            top = (uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
            mant, exp = uc.reg_read(X.UC_X86_REG_FP0 + ((top + int(name[2:])) & 7))
            return mant | (exp << 64)
        if name == "fs_base":
            return uc.reg_read(X.UC_X86_REG_FS_BASE) & 0xFFFFFFFF
        if name == "gs_base":
            return self._ctx.gs_base()
        table, _, part = name.partition("_")
        if table in _TABLES:
            sel, base, limit, _flags = uc.reg_read(_TABLES[table])
            if part == "base":
                return base & 0xFFFFFFFF
            if part == "limit":
                return limit
            if not part and table in ("ldtr", "tr"):
                return sel
        raise KeyError(f"no register {name!r}")

    def reg_write(self, name: str, value: int) -> None:
        """A segment selector write reloads the hidden descriptor; a CR write changes paging."""
        uc = self.uc
        self._xlate.clear()
        value &= 0xFFFFFFFF if not name.startswith(("st", "xmm")) else (1 << 128) - 1
        if name == "eip":
            self.uc_set_eip(value)
            self._halted = None
            self._arrival_done = None
            return
        if name in _SEGMENTS:
            try:
                uc.reg_write(_SIMPLE[name], value & 0xFFFF)
            except UcError:
                raise ValueError(f"selector {value:#x} cannot be loaded into {name}") from None
            return
        reg = _SIMPLE.get(name)
        if reg is not None:
            uc.reg_write(reg, value)
            if name.startswith("cr"):
                self._flush_tlb()
                uc.ctl_flush_tb()
            return
        if name == "efer":
            uc.msr_write(EFER, value)
            self._flush_tlb()
            return
        if name.startswith("st") and name[2:].isdigit() and int(name[2:]) < 8:
            top = (uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
            uc.reg_write(X.UC_X86_REG_FP0 + ((top + int(name[2:])) & 7),
                         (value & ((1 << 64) - 1), (value >> 64) & 0xFFFF))
            return
        table, _, part = name.partition("_")
        if table in _TABLES:
            sel, base, limit, flags = uc.reg_read(_TABLES[table])
            if part == "base":
                uc.reg_write(_TABLES[table], (sel, value, limit, flags))
                return
            if part == "limit":
                uc.reg_write(_TABLES[table], (sel, base, value & 0xFFFFF, flags))
                return
            if not part and table in ("ldtr", "tr"):
                uc.reg_write(_TABLES[table], self._system_segment(value & 0xFFFF))
                return
        raise KeyError(f"no writable register {name!r}")

    def _system_segment(self, sel: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of an LDT or TSS descriptor, as lldt/ltr load it."""
        if sel & ~3 == 0:
            return (sel, 0, 0, 0)
        _s, gbase, glimit, _f = self.uc.reg_read(X.UC_X86_REG_GDTR)
        if (sel & ~7) + 7 > glimit:
            raise ValueError(f"selector {sel:#x} is outside the GDT")
        raw = self.read_virt(gbase + (sel & ~7), 8)
        lo, hi = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        if hi & (1 << 23):
            limit = (limit << 12) | 0xFFF
        return (sel, base, limit, hi & 0x00F0FF00)

    def uc_reg_tuple(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of gdtr/idtr/ldtr/tr (for interrupt delivery)."""
        return self.uc.reg_read(_TABLES[name])

    def uc_set_eip(self, value: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_EIP, value)

    def force_cpl0(self) -> None:
        self._ctx.force_cpl0()

    def _flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def read_virt(self, addr: int, size: int) -> bytes:
        """Read through the guest's page tables (identity while paging is off); MemoryFault."""
        out = []
        for va, n in _pages(addr, size):
            pa = self.translate(va)
            if pa is None or not self._is_backed(pa, n):
                raise MemoryFault(va)
            out.append(bytes(self.uc.mem_read(pa, n)))
        return b"".join(out)

    def read_cpu(self, addr: int, size: int) -> bytes:
        """Read as the CPU would now, through Unicorn's TLB: for hooks (the tracer, exception
        delivery), where this is both right and several times cheaper than a table walk."""
        if (addr & 0xFFF) + size <= 0x1000:  # the usual case: one page, one call
            data = uc_ctypes.vmem_read(self.uc, addr, size)
            if data is not None:
                return data
        out = []
        for va, n in _pages(addr, size):
            data = uc_ctypes.vmem_read(self.uc, va, n)
            if data is None:  # refused at the current CPL (ring 3 reading kernel pages)
                pa = self._walk(va)
                if pa is None or not self._is_backed(pa, n):
                    raise MemoryFault(va)
                data = bytes(self.uc.mem_read(pa, n))
            out.append(data)
        return b"".join(out)

    def read_cpu_or_none(self, addr: int, size: int) -> bytes | None:
        try:
            return self.read_cpu(addr, size)
        except MemoryFault:
            return None

    def write_virt(self, addr: int, data: bytes) -> None:
        """Debugger write: also writes the ROM; invalidates translated code; MemoryFault."""
        targets = []
        off = 0
        for va, n in _pages(addr, len(data)):
            pa = self.translate(va)
            if pa is None or not self._is_backed(pa, n):
                raise MemoryFault(va)
            targets.append((pa, data[off:off + n]))
            off += n
        self._xlate.clear()  # the write may change a page table
        for pa, chunk in targets:
            self.uc.mem_write(pa, chunk)  # host writes ignore protection: ROM too
        if data:
            self.uc.ctl_remove_cache(addr, addr + len(data))

    def write_virt_data(self, addr: int, data: bytes) -> bool:
        """A guest-side data write (interrupt frames): no TB invalidation; False if unmapped."""
        targets = []
        off = 0
        for va, n in _pages(addr, len(data)):
            pa = self.translate(va)
            if pa is None or not self._is_backed(pa, n) or ROM_BASE <= pa < self._rom_end:
                return False
            targets.append((pa, data[off:off + n]))
            off += n
        self._xlate.clear()
        for pa, chunk in targets:
            self.uc.mem_write(pa, chunk)
        return True

    def read_phys(self, addr: int, size: int) -> bytes:
        if not self._is_backed(addr, size):
            raise MemoryFault(addr if addr >= self.ram_size or addr < 0 else self.ram_size)
        return bytes(self.uc.mem_read(addr, size))

    def write_phys(self, addr: int, data: bytes) -> None:
        if not self._is_backed(addr, len(data)):
            raise MemoryFault(addr)
        self._xlate.clear()  # the write may change a page table
        self.uc.mem_write(addr, data)
        if self.reg_read("cr0") & 0x80000000:
            self.uc.ctl_flush_tb()  # the code's virtual address is unknown: drop everything
        elif data:
            self.uc.ctl_remove_cache(addr, addr + len(data))

    def _is_backed(self, pa: int, size: int) -> bool:
        return 0 <= pa and pa + size <= self.ram_size

    def translate(self, va: int) -> int | None:
        """Guest-virtual to physical through the current page tables; None if unmapped.

        A walk of the tables in memory, as QEMU's gdbstub does, not Unicorn's TLB: after a guest
        changes a PTE without invlpg the debugger already sees the new mapping."""
        va &= 0xFFFFFFFF
        if self._in_emu:  # a hook: the guest may have changed its tables since the last one
            return self._translate(va)
        page, offset = va & ~(PAGE - 1), va & (PAGE - 1)
        if page not in self._xlate:
            self._xlate[page] = self._translate(page)
        pa = self._xlate[page]
        return None if pa is None else pa + offset

    def _translate(self, va: int) -> int | None:
        if not self.uc.reg_read(X.UC_X86_REG_CR0) & 0x80000000:
            return va
        return self._walk(va)

    def _walk(self, va: int) -> int | None:
        """Supervisor view of a mapping. Unicorn's vmem calls check access at the current CPL,
        so while the guest runs in ring 3 they refuse kernel pages (IDT, kernel data) that the
        CPU delivering an interrupt, and a debugger, may read."""
        uc = self.uc
        if not uc.reg_read(X.UC_X86_REG_CR0) & 0x80000000:
            return None
        mode = pagetable.Mode.from_regs(uc.reg_read(X.UC_X86_REG_CR3),
                                        uc.reg_read(X.UC_X86_REG_CR4), uc.msr_read(EFER))
        try:
            mapping = pagetable.walk(self.read_phys, mode, va)
        except MemoryFault:
            return None
        return None if mapping is None else mapping.translate(va)

    def regions(self) -> list[tuple[int, int, str]]:
        """(start, length, "ram" | "rom") for the memory map."""
        return [(0, ROM_BASE, "ram"), (ROM_BASE, self._rom_end - ROM_BASE, "rom"),
                (self._rom_end, self.ram_size - self._rom_end, "ram")]

    # --- run control ---------------------------------------------------------------------------
    def step(self) -> Stop:
        """Execute exactly one instruction (delivering an exception counts as one)."""
        if self._halted is not None:
            return self._halted
        if not self._step_mode:
            self.uc.ctl_flush_tb()  # count=1 does not single-step warm code otherwise
            self._step_mode = True
        pc = self.reg_read("eip")
        self._stepping = True
        self._runctl.stepping = 1
        pending, self._runctl.stop = self._runctl.stop, 0  # a step always makes its step
        stopped = self._runctl.stopped
        err = self._emulate(pc, count=1)
        if self._runctl.stopped != stopped:  # a Ctrl-C landed inside the step: step again
            pending = 1
            err = self._emulate(pc, count=1)
        self._runctl.stop = pending or self._runctl.stop
        self._runctl.stepping = 0
        self._stepping = False
        self._c_service()
        stop = self._classify(err, stepping=True)
        self._run_services()
        if stop is not None:
            return stop
        eip = self.reg_read("eip")
        if eip == (pc + 1) & 0xFFFFFFFF and self._byte_at(pc) == _HLT:
            return self._halt(eip)
        return Stop(StopReason.STEP, eip)

    def run(self) -> Stop:
        """Run until a breakpoint, watchpoint, hook stop, interrupt(), guest exit or machine stop.
        A breakpoint at the current pc does not stop the run before it executes.

        Work a hook asked for with ``request_service`` runs between two ``emu_start`` calls and
        the run goes on: the caller never sees those pauses."""
        while True:
            stop = self._run_once()
            if stop is not None:
                return stop

    def request_service(self, work: Callable[[], None]) -> None:
        """From inside a hook: pause the run, call ``work`` outside Unicorn, then resume.

        Hooks may not add or remove hooks; this is how a tracer installs the hooks it finds it
        needs (the ROM's entries once vmi_init announces it, a return address)."""
        self._services.append(work)
        if not self._stepping:  # a step ends after its one instruction anyway
            self.uc.emu_stop()

    @property
    def runctl(self) -> uc_ctypes.RunControl:
        """Run control, for C hooks: they ask for a stop at the next block boundary or for a
        service call between runs through it (stub/hooks.h)."""
        return self._runctl

    def on_c_service(self, work: Callable[[], None]) -> None:
        """Call ``work`` between two emulations whenever a C hook set ``runctl.service``."""
        self._c_services.append(work)

    def _c_service(self) -> bool:
        rc = self._runctl
        if not rc.service:
            return False
        rc.service = 0
        with self._lock:
            if not self._interrupt_req:  # the stop (if one happened) was for the service only
                rc.stop = 0
                self._runctl_seen = rc.stopped
        for work in self._c_services:
            work()
        return True

    def _run_services(self) -> bool:
        if not self._services:
            return False
        work, self._services = self._services, []
        for w in work:
            w()
        return True

    def _run_once(self) -> Stop | None:
        if self._halted is not None:
            return self._halted
        with self._lock:
            if self._interrupt_req:
                self._interrupt_req = False
                self._runctl.stop = 0
                return Stop(StopReason.INTERRUPTED, self.reg_read("eip"),
                            message="interrupted")
            self._running = True
            self._stopped.clear()
        self._step_mode = False  # Unicorn flushes the cache itself when count goes back to 0
        self._drop_idle_sites()
        try:
            err = self._emulate(self.reg_read("eip"), count=0)
        finally:
            with self._lock:
                self._running = False
                self._stopped.set()
        c_serviced = self._c_service()
        stop = self._classify(err, stepping=False)
        serviced = self._run_services() or c_serviced
        if stop is not None:
            return stop
        if serviced:
            return None  # paused only for between-run work: go on
        eip = self.reg_read("eip")
        if self._byte_at((eip - 1) & 0xFFFFFFFF) == _HLT:
            return self._halt(eip)
        old = self._ctx.old_exception()
        why = "triple fault" if old == 8 else "no reason given"
        return Stop(StopReason.TRIPLE_FAULT if old == 8 else StopReason.FAULT, eip,
                    vector=old if old >= 0 else None,
                    message=f"Unicorn stopped the CPU at {eip:#x} ({why})")

    def interrupt(self) -> None:
        """Thread-safe: make a running ``run`` return StopReason.INTERRUPTED soon. Called while
        no run is active, it makes the next ``run`` return INTERRUPTED at once."""
        # Not uc_emu_stop() from this thread: that can leave the guest PC stale (runctl.c says
        # why). The C block hook stops the run itself at the next block boundary.
        with self._lock:
            self._interrupt_req = True
            self._runctl.stop = 1

    def _emulate(self, pc: int, count: int) -> UcError | None:
        self._stop = None
        self._watch_hit = None
        self._start_pc = pc if pc in self._sites else None
        self._ctx.clear_old_exception()
        self._xlate.clear()
        self._in_emu = True
        try:
            self.uc.emu_start(pc, UNTIL, 0, count)
        except UcError as e:
            return e
        finally:
            self._in_emu = False
        return None

    def _classify(self, err: UcError | None, stepping: bool) -> Stop | None:
        """Turn what the hooks recorded (or Unicorn's error) into a Stop; None if nothing did."""
        if self._watch_hit is not None:
            return self._finish_watch(stepping)
        if self._stop is not None:
            reason, extra = self._stop
            pc = extra.pop("pc", None)
            if reason is StopReason.INTERRUPTED:
                with self._lock:
                    self._interrupt_req = False
                    self._runctl.stop = 0
            if stepping and reason in (StopReason.BREAKPOINT, StopReason.HOOK):
                reason = StopReason.STEP  # the step completed; hooks at the new pc already ran
            return Stop(reason, self.reg_read("eip") if pc is None else pc, **extra)
        if (self._interrupt_req or self._runctl.stopped != self._runctl_seen) and not stepping:
            with self._lock:  # one stop answers every request made until now
                self._interrupt_req = False
                self._runctl.stop = 0
            self._runctl_seen = self._runctl.stopped
            return Stop(StopReason.INTERRUPTED, self.reg_read("eip"), message="interrupted")
        if err is not None:
            eip = self.reg_read("eip")
            what = self._unmapped or _UC_ERRORS.get(err.errno, str(err))
            self._unmapped = None
            return Stop(StopReason.FAULT, eip, message=f"{what} at eip {eip:#x}")
        return None

    def _halt(self, eip: int) -> Stop:
        if self.reg_read("eflags") & _IF:
            msg = f"hlt at {eip - 1:#x} with interrupts enabled and no interrupt source"
        else:
            msg = f"hlt at {eip - 1:#x} with interrupts disabled: the CPU can never wake"
        self._halted = Stop(StopReason.HALT, eip, message=msg)
        return self._halted

    def _byte_at(self, va: int) -> int | None:
        data = self.read_cpu_or_none(va, 1)
        return None if data is None else data[0]

    def _request_stop(self, reason: StopReason, **extra: object) -> None:
        if self._stop is None:
            self._stop = (reason, extra)
        self.uc.emu_stop()

    # --- break-, watchpoints and hooks -------------------------------------------------------------
    def add_breakpoint(self, va: int) -> None:
        self._site(va).breakpoint = True
        self._idle_sites.discard(va & 0xFFFFFFFF)

    def remove_breakpoint(self, va: int) -> None:
        """gdb removes every breakpoint at each stop and inserts them again before it resumes:
        a hook left with nothing to do stays until the next continue, so that cycle costs no
        hook_del/hook_add and no retranslation (a step over it runs its callback once)."""
        site = self._sites.get(va)
        if site is not None:
            site.breakpoint = False
            if not site.hooks:
                self._idle_sites.add(va)

    def _drop_idle_sites(self) -> None:
        for va in self._idle_sites:
            site = self._sites.get(va)
            if site is not None:
                self._maybe_drop_site(va, site)
        self._idle_sites.clear()

    def add_code_hook(self, va: int, hook: CodeHook) -> object:
        """A per-address hook (never a whole-range one); returns a handle for remove_code_hook."""
        ident = self._next_ident
        self._next_ident += 1
        self._site(va).hooks[ident] = hook
        return _HookHandle(va, ident)

    def remove_code_hook(self, handle: object) -> None:
        assert isinstance(handle, _HookHandle)
        site = self._sites.get(handle.va)
        if site is not None and site.hooks.pop(handle.ident, None) is not None:
            self._maybe_drop_site(handle.va, site)

    def add_c_code_hook(self, va: int, fn: int, user_data: int) -> object:
        """A per-address hook whose callback is C (``fn(uc, address, size, user_data)``): no
        Python on the hot path. It runs after the Python hooks at ``va``, so when one of those
        stops the run, the C hook runs once on the resume, not twice. Returns a handle."""
        va &= 0xFFFFFFFF
        ident = self._next_ident
        self._next_ident += 1
        hook = _CHook(fn, user_data, uc_ctypes.add_c_hook(self.uc, UC_HOOK_CODE, fn, user_data,
                                                          va, va))
        self._c_hooks.setdefault(va, {})[ident] = hook
        self.uc.ctl_remove_cache(va, va + 1)  # hooks added after translation never fire
        return _HookHandle(va, ident)

    def remove_c_code_hook(self, handle: object) -> None:
        assert isinstance(handle, _HookHandle)
        hooks = self._c_hooks.get(handle.va, {})
        hook = hooks.pop(handle.ident, None)
        if hook is not None:
            uc_ctypes.del_c_hook(self.uc, hook.handle)
        if not hooks:
            self._c_hooks.pop(handle.va, None)

    def _site(self, va: int) -> _Site:
        va &= 0xFFFFFFFF
        site = self._sites.get(va)
        if site is None:
            site = self._sites[va] = _Site()
            site.handle = self.uc.hook_add(UC_HOOK_CODE, self._on_code, site, va, va)
            for hook in self._c_hooks.get(va, {}).values():  # keep the C hooks after it
                uc_ctypes.del_c_hook(self.uc, hook.handle)
                hook.handle = uc_ctypes.add_c_hook(self.uc, UC_HOOK_CODE, hook.fn,
                                                   hook.user_data, va, va)
            self.uc.ctl_remove_cache(va, va + 1)  # hooks added after translation never fire
        return site

    def _maybe_drop_site(self, va: int, site: _Site) -> None:
        if not site.breakpoint and not site.hooks:
            del self._sites[va]
            self.uc.hook_del(site.handle)  # hook_del invalidates what it instrumented

    def add_watchpoint(self, va: int, length: int, kind: str) -> None:
        """kind: "watch" (write), "rwatch" (read), "awatch" (either)."""
        if kind not in ("watch", "rwatch", "awatch") or length <= 0:
            raise ValueError(f"bad watchpoint {kind} length {length}")
        pieces = []
        for pva, n in _pages(va, length):
            pa = self.translate(pva)
            if pa is None:
                raise MemoryFault(pva)
            pieces.append((pa, n, pva))
        types = {"watch": UC_HOOK_MEM_WRITE, "rwatch": UC_HOOK_MEM_READ,
                 "awatch": UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ}[kind]
        w = _Watch(va, length, kind, pieces, [])
        for pa, n, _pva in pieces:
            w.handles.append(self.uc.hook_add(types, self._on_watch, w,
                                              max(0, pa - _WATCH_SLACK), pa + n - 1))
        self._watches.append(w)

    def remove_watchpoint(self, va: int, length: int, kind: str) -> None:
        for w in self._watches:
            if (w.va, w.length, w.kind) == (va, length, kind):
                for h in w.handles:
                    self.uc.hook_del(h)
                self._watches.remove(w)
                return

    def add_port_observer(self, port: int, observer: PortObserver) -> None:
        """Observe guest ``out`` to a port (the ROM's flush and init ports)."""
        self._port_observers.setdefault(port, []).append(observer)

    # --- hooks (inside emu_start: record and stop only) ----------------------------------------
    def _on_code(self, uc: Uc, address: int, size: int, site: _Site) -> None:
        if address == self._start_pc:
            # First arrival at the resume pc: the breakpoint is skipped once, and hooks that
            # already ran when we stopped here do not run twice.
            self._start_pc = None
            if self._arrival_done == address:
                self._arrival_done = None
                return
            pending = len(self._services)
            for hook in list(site.hooks.values()):
                if hook(self) and not self._stepping:
                    self._arrival_done = address
                    self._request_stop(StopReason.HOOK, pc=address)
            if len(self._services) > pending:
                self._arrival_done = address  # resuming here must not run these hooks again
            return
        self._arrival_done = None
        stop = False
        pending = len(self._services)
        for hook in list(site.hooks.values()):
            stop = bool(hook(self)) or stop
        if len(self._services) > pending:
            self._arrival_done = address  # resuming here must not run these hooks again
        if site.breakpoint:
            self._arrival_done = address
            self._request_stop(StopReason.BREAKPOINT, pc=address)
        elif stop:
            self._arrival_done = address
            self._request_stop(StopReason.HOOK, pc=address)

    def _on_in(self, uc: Uc, port: int, size: int, _data: object) -> int:
        if COM1 <= port <= COM1 + 7:
            return self._com1_in(port - COM1)
        return _MASK.get(size, 0xFFFFFFFF)

    def _com1_in(self, reg: int) -> int:
        dlab = self._lcr & 0x80
        if reg == 0 and not dlab:
            value, self._rbr = (self._rbr or 0), None
            return value
        if reg == 2:
            return 0x01  # IIR: no interrupt pending
        if reg == 3:
            return self._lcr
        if reg == 4:
            return self._mcr
        if reg == 5:
            return 0x60 | (1 if self._rbr is not None else 0)  # THR empty, line idle
        if reg == 7:
            return self._scr
        return 0

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _data: object) -> None:
        if self._exited:
            return
        observers = self._port_observers.get(port)
        if observers is not None:
            for obs in observers:
                if obs(self, port, size, value):
                    self._request_stop(StopReason.HOOK)
        if COM1 <= port <= COM1 + 7:
            self._com1_out(port - COM1, value & 0xFF)
        elif port in DEBUG_EXIT_PORTS:
            self._exited = True
            code = value & _MASK.get(size, 0xFFFFFFFF)
            self._stop = None
            self._request_stop(StopReason.EXIT, exit_code=code,
                               pc=uc.reg_read(X.UC_X86_REG_EIP),
                               message=f"guest exit code {code:#x} (QEMU status "
                                       f"{((code << 1) | 1) & 0xFF})")

    def _com1_out(self, reg: int, value: int) -> None:
        dlab = self._lcr & 0x80
        if reg == 0 and not dlab:
            if self._mcr & 0x10:  # loopback: the byte comes back on RBR
                self._rbr = value
            elif self.on_serial is not None:
                self.on_serial(bytes((value,)))
        elif reg == 3:
            self._lcr = value
        elif reg == 4:
            self._mcr = value
        elif reg == 7:
            self._scr = value

    def _on_intr(self, uc: Uc, intno: int, _data: object) -> None:
        if self._stop is not None:
            return  # already stopping (a triple fault re-raising while Unicorn unwinds)
        err, is_int, next_eip = self._ctx.take_exception()
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        code = err if intno in ERROR_CODE_VECTORS and not is_int else None
        self._deliver(intno, code, next_eip if is_int else eip)

    def _on_invalid(self, uc: Uc, _data: object) -> bool:
        if self._stop is not None:
            return False
        self._deliver(6, None, uc.reg_read(X.UC_X86_REG_EIP))
        return self._stop is None

    def _deliver(self, vector: int, error_code: int | None, eip: int) -> None:
        try:
            deliver(self, vector, error_code, eip)
            return
        except DeliveryError as first:
            why = str(first)
        if vector != 8:
            try:
                deliver(self, 8, 0, eip)
                return
            except DeliveryError as second:
                why = f"{why}; then #DF: {second}"
        self._request_stop(StopReason.TRIPLE_FAULT, pc=eip, vector=vector,
                           message=f"triple fault: {vector_name(vector)} at eip {eip:#x} "
                                   f"could not be delivered ({why})")

    def _on_write_prot(self, uc: Uc, access: int, address: int, size: int, value: int,
                       _data: object) -> bool:
        # Guest write to the ROM: dropped, as shadow ROM does. Anything else stays an error.
        return ROM_BASE <= address < self._rom_end

    _unmapped: str | None = None

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int,
                     _data: object) -> bool:
        kind = _UNMAPPED_KIND.get(access, "access to")
        self._unmapped = f"{kind} unmapped physical address {address:#x}"
        return False

    def _on_watch(self, uc: Uc, access: int, address: int, size: int, value: int,
                  w: _Watch) -> None:
        if self._watch_muted or self._watch_hit is not None:
            return
        for pa, n, pva in w.pieces:
            if address < pa + n and address + size > pa:
                hit_va = pva + max(0, address - pa)
                old = bytes(uc.mem_read(address, size)) if access == UC_MEM_WRITE else None
                self._watch_hit = (w.kind, hit_va, address, old)
                if not self._stepping:
                    uc.emu_stop()  # aborts this instruction; _finish_watch re-executes it
                return

    def _finish_watch(self, stepping: bool) -> Stop:
        kind, va, pa, old = self._watch_hit
        self._watch_hit = None
        if not stepping:
            # Unicorn abandoned the instruction after its access: undo a store, then execute
            # the instruction once more with the watchpoints muted, so it completes exactly once.
            if old is not None:
                self.uc.mem_write(pa, old)
            pc = self.reg_read("eip")
            if not self._step_mode:
                self.uc.ctl_flush_tb()
                self._step_mode = True
            self._arrival_done = pc if pc in self._sites else None
            self._watch_muted = True
            self._stepping = True
            self._runctl.muted = self._runctl.stepping = 1  # C hooks here ran already
            try:
                err = self._emulate(pc, count=1)
            finally:
                self._runctl.muted = self._runctl.stepping = 0
                self._watch_muted = False
                self._stepping = False
            if self._stop is not None and self._stop[0] is StopReason.TRIPLE_FAULT:
                return self._classify(err, stepping=True)
        return Stop(StopReason.WATCHPOINT, self.reg_read("eip"), watch_addr=va, watch_kind=kind,
                    message=f"{kind} at {va:#x}")


def _pages(addr: int, size: int) -> list[tuple[int, int]]:
    """Split [addr, addr+size) at 4 KiB page boundaries."""
    out = []
    addr &= 0xFFFFFFFF
    while size > 0:
        n = min(size, PAGE - (addr & (PAGE - 1)))
        out.append((addr, n))
        addr = (addr + n) & 0xFFFFFFFF
        size -= n
    return out
