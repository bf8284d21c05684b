"""``monitor ...`` commands (gdb's qRcmd): a table from command words to handlers.

The server hex-decodes the command line and calls ``MonitorTable.dispatch``; a handler writes text
through the context and raises ``MonitorError`` for a user mistake. The server prints that message
(a ``MemoryFault`` too) and still answers ``OK``, as QEMU's gdbstub does (its HMP prints the error,
the reply is ``OK``): gdb 13 shows an ``E`` reply as "Protocol error with Rcmd" after the message.
Nothing from the wire is evaluated: numbers are parsed with ``int(text, 0)``. ``default_table``
holds the machine's commands; the tracer adds ``vmi trace``, ``vmi trace dump`` and ``vmi rom``
with ``MonitorTable.register`` (stub/vmitrace.py ``register_monitor``). Names and output formats
follow QEMU's HMP where it has the command (``info registers``, ``info mem``, ``info tlb``, ``x``,
``xp``, ``info cpus``, ``system_reset``), so the same scripts can read both targets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vmigdb import pagetable, x86
from vmigdb.decode import CR0_BITS, CR4_BITS, EFER_BITS, EFLAGS_BITS, bit_names
from vmigdb.errors import VmiError

from .machine import MachineInterface, MemoryFault
from .target import ADDRESS_SPACE


class MonitorError(VmiError):
    """A monitor command was used wrongly; the message is shown to the gdb user."""


class MonitorContext(Protocol):
    """What a handler may use: the machine, the memory mode, and the console."""

    machine: MachineInterface
    phys_mode: bool

    def write(self, text: str) -> None: ...


Handler = Callable[[MonitorContext, str], None]


@dataclass(frozen=True)
class MonitorCommand:
    words: tuple[str, ...]
    handler: Handler
    help: str  # one line
    usage: str = ""


class MonitorTable:
    """Commands by their words (``("info", "registers")``); the longest matching prefix wins."""

    def __init__(self) -> None:
        self._commands: dict[tuple[str, ...], MonitorCommand] = {}

    def register(self, name: str, handler: Handler, help: str, usage: str = "") -> None:
        words = tuple(name.split())
        self._commands[words] = MonitorCommand(words, handler, help, usage)

    def commands(self) -> list[MonitorCommand]:
        return sorted(self._commands.values(), key=lambda c: c.words)

    def dispatch(self, ctx: MonitorContext, line: str) -> None:
        line = _split_format(line)
        words = line.split()
        if not words:
            raise MonitorError("empty monitor command; try 'monitor help'")
        for n in range(len(words), 0, -1):
            cmd = self._commands.get(tuple(words[:n]))
            if cmd:
                rest = line.strip()
                for w in words[:n]:
                    rest = rest[len(w):].lstrip()
                cmd.handler(ctx, rest)
                return
        prefix = [c for c in self.commands() if c.words[0] == words[0]]
        if prefix:
            names = ", ".join(" ".join(c.words) for c in prefix)
            raise MonitorError(f"unknown command '{line.strip()}'; did you mean: {names}")
        raise MonitorError(f"unknown command '{words[0]}'; try 'monitor help'")


# --- helpers ---------------------------------------------------------------------------------------


def _split_format(line: str) -> str:
    """``x/4xw ADDR`` as ``x /4xw ADDR``: QEMU's HMP ends a command name at a slash too."""
    text = line.strip()
    first = text.split(maxsplit=1)[0] if text else ""
    cut = first.find("/", 1)
    return text if cut < 0 else f"{text[:cut]} {text[cut:]}"


def _reg(machine: MachineInterface, name: str) -> int | None:
    try:
        return machine.reg_read(name)
    except (KeyError, ValueError):
        return None


def parse_number(text: str) -> int:
    """``0x..``, ``0o..``, ``0b..`` or decimal; never an expression."""
    try:
        return int(text, 0)
    except ValueError:
        raise MonitorError(f"not a number: {text!r}") from None


def _lookup(machine: MachineInterface, selector: int) -> x86.Descriptor | None:
    """Read the descriptor a selector names from the GDT (or the LDT) through virtual memory."""
    if selector & 4:
        ldtr = _reg(machine, "ldtr")
        if not ldtr:
            return None
        ldt = _lookup(machine, ldtr)
        if ldt is None:
            return None
        table, limit = ldt.base, ldt.limit
    else:
        table, limit = _reg(machine, "gdtr_base") or 0, _reg(machine, "gdtr_limit") or 0
    index = selector & ~7
    if index == 0 and not selector & 4 or index + 7 > limit:
        return None
    try:
        return x86.Descriptor.decode(machine.read_virt(table + index, 8))
    except MemoryFault:
        return None


def render_registers(machine: MachineInterface) -> str:
    """QEMU-like ``info registers``: GPRs, flags, segments with their descriptors, tables, CRs."""

    def r(name: str) -> int:
        v = _reg(machine, name)
        return 0 if v is None else v

    out = []
    out.append(f"EAX={r('eax'):08x} EBX={r('ebx'):08x} ECX={r('ecx'):08x} EDX={r('edx'):08x}")
    out.append(f"ESI={r('esi'):08x} EDI={r('edi'):08x} EBP={r('ebp'):08x} ESP={r('esp'):08x}")
    efl = r("eflags")
    out.append(f"EIP={r('eip'):08x} EFL={efl:08x} [{' '.join(bit_names(efl, EFLAGS_BITS))}] "
               f"CPL={r('cs') & 3} IOPL={(efl >> 12) & 3}")
    cr0 = r("cr0")
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"):
        sel = r(name)
        label = {"ldtr": "LDT", "tr": "TR"}.get(name, name.upper())
        seg = _lookup(machine, sel) if cr0 & x86.CR0_PE else None
        if seg is None:
            base = sel << 4 if not cr0 & x86.CR0_PE and name not in ("ldtr", "tr") else 0
            if name == "fs" and _reg(machine, "fs_base") is not None:
                base = r("fs_base")
            if name == "gs" and _reg(machine, "gs_base") is not None:
                base = r("gs_base")
            out.append(f"{label:<3}={sel:04x} {base:08x} (no descriptor)")
        else:
            out.append(f"{label:<3}={sel:04x} {seg.base:08x} {seg.limit:08x} {seg.flags:08x} "
                       f"DPL={seg.dpl} {seg.kind()}{'' if seg.present else ' not-present'}")
    out.append(f"GDT=     {r('gdtr_base'):08x} {r('gdtr_limit'):08x}")
    out.append(f"IDT=     {r('idtr_base'):08x} {r('idtr_limit'):08x}")
    cr4, efer = r("cr4"), r("efer")
    out.append(f"CR0={cr0:08x} CR2={r('cr2'):08x} CR3={r('cr3'):08x} CR4={cr4:08x}")
    out.append(f"CR0 [{' '.join(bit_names(cr0, CR0_BITS))}] CR4 [{' '.join(bit_names(cr4, CR4_BITS))}]")
    out.append(f"EFER={efer:016x} [{' '.join(bit_names(efer, EFER_BITS))}]")
    fpu = [(n, _reg(machine, n)) for n in ("fctrl", "fstat", "ftag", "mxcsr")]
    if any(v is not None for _, v in fpu):
        out.append(" ".join(f"{n.upper()}={'-' if v is None else format(v, '08x')}" for n, v in fpu))
    return "\n".join(out) + "\n"


def _paging_mode(machine: MachineInterface) -> pagetable.Mode | None:
    cr0 = _reg(machine, "cr0") or 0
    if not cr0 & x86.CR0_PG:
        return None
    return pagetable.Mode.from_regs(_reg(machine, "cr3") or 0, _reg(machine, "cr4") or 0,
                                    _reg(machine, "efer") or 0)


def _safe_read_phys(machine: MachineInterface) -> pagetable.ReadPhys:
    """Tables outside RAM read as zero (not present) instead of aborting the whole dump."""

    def read(addr: int, n: int) -> bytes:
        try:
            return machine.read_phys(addr, n)
        except MemoryFault:
            return bytes(n)

    return read


# --- the commands ------------------------------------------------------------------------------------


def cmd_info_registers(ctx: MonitorContext, args: str) -> None:
    ctx.write(render_registers(ctx.machine))


def _render_mappings(ctx: MonitorContext, render: Callable[[list], str]) -> None:
    """QEMU's answer to ``info mem``/``info tlb`` with paging off, else ``render`` of every
    mapping."""
    mode = _paging_mode(ctx.machine)
    if mode is None:
        ctx.write("PG disabled\n")
        return
    ctx.write(render(pagetable.mappings(_safe_read_phys(ctx.machine), mode)))


def cmd_info_mem(ctx: MonitorContext, args: str) -> None:
    _render_mappings(ctx, pagetable.render_info_mem)


def cmd_info_tlb(ctx: MonitorContext, args: str) -> None:
    _render_mappings(ctx, pagetable.render_info_tlb)


#: QEMU's memory_dump units (``/NFS``: count, format letter, size letter).
DUMP_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}
DUMP_FORMATS = "xduoc"
MAX_DUMP_UNITS = 0x10000
#: monitor_printc's escapes for ``/c``.
_CHAR_ESCAPES = {ord("'"): "\\'", ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r"}


@dataclass(frozen=True)
class DumpRequest:
    """``x``/``xp`` arguments: ``count`` units of ``size`` bytes shown as ``letter`` from
    ``addr``."""

    count: int
    letter: str
    size: int
    addr: int


def parse_dump(name: str, args: str) -> DumpRequest:
    """``/NFS ADDR`` as QEMU's HMP reads it: N units (1), format x d u o c (x), size b h w g
    (w); ``c`` means bytes. MonitorError on a mistake."""
    fmt, addr_text = "", args.strip()
    if addr_text.startswith("/"):
        fmt, _, addr_text = addr_text[1:].partition(" ")
        addr_text = addr_text.strip()
    if not addr_text:
        raise MonitorError(f"usage: {name} /NFS ADDR  (e.g. {name} /4xw 0xc0000)")
    digits = len(fmt) - len(fmt.lstrip("0123456789"))
    count = int(fmt[:digits]) if digits else 1
    letter, size = "x", 4
    for ch in fmt[digits:]:
        if ch in DUMP_SIZES:
            size = DUMP_SIZES[ch]
        elif ch in DUMP_FORMATS:
            letter = ch
        else:
            raise MonitorError(f"{name}: unknown format letter {ch!r}")
    if count > MAX_DUMP_UNITS:
        raise MonitorError(f"{name}: count too large (at most {MAX_DUMP_UNITS})")
    addr = parse_number(addr_text)
    if addr < 0:
        raise MonitorError(f"{name}: not an address: {addr_text!r}")
    return DumpRequest(count, letter, 1 if letter == "c" else size, addr)


def _char_cell(v: int) -> str:
    """QEMU's monitor_printc: a quoted character, escaped when not printable."""
    if v in _CHAR_ESCAPES:
        return f"'{_CHAR_ESCAPES[v]}'"
    return f"'{chr(v)}'" if 32 <= v <= 126 else f"'\\x{v:02x}'"


def _dump_cell(v: int, letter: str, size: int) -> str:
    """One unit the way QEMU's memory_dump prints it (widths from the unit size)."""
    bits = 8 * size
    if letter == "x":
        return f"0x{v:0{bits // 4}x}"
    if letter == "c":
        return _char_cell(v)
    if letter == "o":
        return (f"0{v:o}" if v else "0").rjust(-(-bits // 3))
    if letter == "d" and size == 8 and v >> 63:
        v -= 1 << 64  # only the 64-bit unit is signed there: PRId64 of a uint64_t
    return str(v).rjust(-(-bits * 10 // 33))


def memory_dump(req: DumpRequest, read: Callable[[int, int], bytes], addr_digits: int) -> str:
    """QEMU's memory_dump: lines of 16 bytes (8 for byte units), each read on its own; an
    unreadable line ends the dump with "Cannot access memory" after its address."""
    out = []
    addr, remaining = req.addr, req.count * req.size
    line_size = 8 if req.size == 1 else 16
    while remaining > 0:
        n = min(remaining, line_size)
        prefix = f"{addr:0{addr_digits}x}:"
        try:
            data = read(addr, n)
        except MemoryFault:
            out.append(f"{prefix} Cannot access memory\n")
            break
        cells = [_dump_cell(int.from_bytes(data[i:i + req.size], "little"), req.letter, req.size)
                 for i in range(0, n, req.size)]
        out.append(prefix + "".join(f" {c}" for c in cells) + "\n")
        addr += n
        remaining -= n
    return "".join(out)


def _read_virtual(machine: MachineInterface) -> Callable[[int, int], bytes]:
    """Virtual reads that never leave the 32-bit space (the machine would wrap them)."""

    def read(addr: int, n: int) -> bytes:
        if addr + n > ADDRESS_SPACE:
            raise MemoryFault(max(addr, ADDRESS_SPACE))
        return machine.read_virt(addr, n)

    return read


def cmd_xp(ctx: MonitorContext, args: str) -> None:
    """``xp /NFS ADDR``: physical memory, addresses as 16 digits (QEMU's HWADDR_FMT_plx)."""
    ctx.write(memory_dump(parse_dump("xp", args), ctx.machine.read_phys, 16))


def cmd_x(ctx: MonitorContext, args: str) -> None:
    """``x /NFS ADDR``: virtual memory through the guest's page tables, addresses as 8 digits
    (QEMU's TARGET_FMT_lx for i386)."""
    ctx.write(memory_dump(parse_dump("x", args), _read_virtual(ctx.machine), 8))


def cmd_info_cpus(ctx: MonitorContext, args: str) -> None:
    """QEMU's ``info cpus``: the one CPU, current (``*``), and the host thread that runs it (the
    one answering: the machine runs in the thread that serves gdb)."""
    ctx.write(f"* CPU #0: thread_id={threading.get_native_id()}\n")


def cmd_info_device(ctx: MonitorContext, args: str) -> None:
    """``info pic|pit|serial|rtc|i8042|pci|ports|clock|boot``: the machine's own view."""
    topic = args.strip()
    try:
        rows = ctx.machine.info(topic)
    except KeyError:
        raise MonitorError(f"info: no topic {topic!r} (pic pit serial rtc i8042 pci ports "
                           "clock boot)") from None
    width = max((len(k) for k, _ in rows), default=0)
    ctx.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))


def cmd_reset(ctx: MonitorContext, args: str) -> None:
    ctx.machine.reset()
    ctx.write("machine reset to the entry state; gdb still shows cached registers until "
              "'maint flush register-cache' or the next stop\n")


def cmd_phys(ctx: MonitorContext, args: str) -> None:
    arg = args.strip().lower()
    if arg in ("on", "1"):
        ctx.phys_mode = True
    elif arg in ("off", "0"):
        ctx.phys_mode = False
    elif arg:
        raise MonitorError("usage: phys on|off")
    ctx.write(f"gdb memory accesses are {'PHYSICAL' if ctx.phys_mode else 'virtual'} "
              "(also Qqemu.PhyMemMode:1/0)\n")


def default_table() -> MonitorTable:
    """The machine's own commands, in a new table (``vmigdb serve`` adds the tracer's rows to it
    and hands it to the server, which dispatches every ``monitor`` line through it)."""
    table = MonitorTable()

    def cmd_help(ctx: MonitorContext, args: str) -> None:
        width = max(len(" ".join(c.words) + (" " + c.usage if c.usage else "")) for c in table.commands())
        ctx.write("".join(f"{(' '.join(c.words) + (' ' + c.usage if c.usage else '')):<{width}}  {c.help}\n"
                          for c in table.commands()))

    table.register("help", cmd_help, "list monitor commands")
    table.register("info registers", cmd_info_registers,
                   "full CPU state: GPRs, flags, segments with descriptors, GDT/IDT, CRs, EFER")
    table.register("info mem", cmd_info_mem, "mapped virtual ranges with rights (page-table walk)")
    table.register("info tlb", cmd_info_tlb, "every mapped page: va: pa flags (page-table walk)")
    for topic in ("pic", "pit", "serial", "rtc", "i8042", "pci", "ports", "clock", "boot"):
        table.register(f"info {topic}", cmd_info_device, f"the machine's {topic} state")
    table.register("info cpus", cmd_info_cpus, "the CPU and the host thread that runs it")
    table.register("x", cmd_x, "dump virtual memory (QEMU syntax)", "/NFS ADDR")
    table.register("xp", cmd_xp, "dump physical memory (QEMU syntax)", "/NFS ADDR")
    table.register("reset", cmd_reset, "reset the machine to its power-on state")
    table.register("system_reset", cmd_reset, "QEMU's name for reset")
    table.register("phys", cmd_phys, "gdb memory accesses use physical addresses (on) or virtual",
                   "on|off")
    return table
