"""What the vmi commands need from whatever gdb is connected to: memory, registers, physical
reads, symbols, and where the VMI ROM is.

Every function here works on any gdb target (QEMU's gdbstub, vmigdb's stub, a JTAG probe): it
uses only gdb's memory and register reads, plus QEMU's ``Qqemu.PhyMemMode`` packet when the
target answers it (vmigdb's stub does too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import gdb

from vmigdb import abi, pvops, rominfo, x86
from vmigdb.abi import VmiCall
from vmigdb.errors import RomError, VmiError

#: Linux i386's default PAGE_OFFSET: the kernel's linear map of low physical memory, through
#: which Linux scans for the ROM and calls it in place (0xC0000 -> 0xC00C0000).
PAGE_OFFSET = 0xC0000000
#: Guest variables that hold the ROM's linear address once the guest has chosen it: Linux's
#: ``vmi_rom`` (arch/x86/kernel/vmi_32.c) and the demo guest's ``vmi.base`` (a RAM copy).
GUEST_ROM_POINTERS = ("vmi_rom", "vmi.base")
#: How gdb words a remote target that went away (the stub was killed, the socket closed).
GONE = ("Remote connection closed", "Remote communication error", "Target disconnected",
        "not being run", "No registers")


def gone(e: gdb.error) -> bool:
    """Whether ``e`` says the target went away (not that one request failed)."""
    return any(m in str(e) for m in GONE)



class TargetGone(VmiError):
    """No live target: never connected, or the connection closed (QEMU exits that way)."""


def require_target() -> gdb.Inferior:
    inf = gdb.selected_inferior()
    if inf.pid == 0 or not inf.threads():
        raise TargetGone("vmi: no live target (connect with `target remote HOST:PORT`; "
                         "QEMU closes the connection when the guest exits)")
    return inf


def read(addr: int, size: int) -> bytes:
    """Linear memory, as the CPU sees it now; gdb.MemoryError when unmapped."""
    return require_target().read_memory(addr & 0xFFFFFFFF, size).tobytes()


def read_or_zeros(addr: int, size: int) -> bytes:
    """Linear memory, with zeros where it cannot be read (a scan over holes)."""
    try:
        return read(addr, size)
    except gdb.MemoryError:
        return bytes(size)


def register(name: str) -> int | None:
    """A register of the selected frame as an unsigned 32/64-bit value, or None if the target
    has no such register (QEMU has cr0-cr4 and efer; other stubs may not)."""
    require_target()
    try:
        value = gdb.selected_frame().read_register(name)
    except (ValueError, gdb.error):
        return None
    bits = value.type.sizeof * 8
    return int(value) & ((1 << bits) - 1)


def paging_enabled() -> bool | None:
    cr0 = register("cr0")
    return None if cr0 is None else bool(cr0 & x86.CR0_PG)


# --- symbols -------------------------------------------------------------------------------------

_symbol_cache: dict[int, str] = {}


def symbolize(addr: int) -> str:
    """``function+offset`` from gdb's symbols (``info symbol``), '' when none; cached."""
    if addr in _symbol_cache:
        return _symbol_cache[addr]
    try:
        text = gdb.execute(f"info symbol {addr:#x}", to_string=True).strip()
    except gdb.error:
        text = ""
    name = ""
    if text and not text.startswith("No symbol"):
        head = text.split(" in section ")[0]
        name = head.replace(" + ", "+")
    _symbol_cache[addr] = name
    return name


def source_line(addr: int) -> str:
    """``file:line`` of an address when gdb has line info, else ''."""
    sal = gdb.find_pc_line(addr)
    if sal.symtab is None or not sal.line:
        return ""
    return f"{sal.symtab.filename}:{sal.line}"


def lookup_address(expr: str) -> int | None:
    """The value of a guest expression as an address, or None if it does not evaluate."""
    try:
        return int(gdb.parse_and_eval(expr)) & 0xFFFFFFFF
    except (gdb.error, RuntimeError, TypeError, ValueError):
        return None


# --- the guest's types ----------------------------------------------------------------------------

_template_cache: dict[str, tuple[pvops.Member, ...] | None] = {}


def _members(t: gdb.Type) -> tuple[pvops.Member, ...]:
    out = []
    for f in t.strip_typedefs().fields():
        if f.name is None or getattr(f, "bitpos", None) is None:
            continue
        ft = f.type.strip_typedefs()
        kids = _members(ft) if ft.code in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION) else ()
        out.append(pvops.Member(f.name, f.bitpos // 8, ft.sizeof, kids))
    return tuple(out)


def template() -> tuple[pvops.Member, ...] | None:
    """The members of the guest's ``struct paravirt_patch_template``, read from its debug info
    through gdb's types, or None when the loaded symbols have no such type. Cached until gdb
    loads other symbol files."""
    key = ",".join(o.filename or "" for o in gdb.objfiles())
    if key not in _template_cache:
        try:
            t = gdb.lookup_type(f"struct {pvops.TEMPLATE}")
        except gdb.error:
            _template_cache[key] = None
        else:
            _template_cache[key] = _members(t)
    return _template_cache[key]


def pointer_size() -> int:
    return gdb.lookup_type("void").pointer().sizeof


def slot_layout() -> dict[int, str]:
    """slot -> pv-op name from the guest's own types ({} when it has none)."""
    members = template()
    return pvops.slot_layout(members, pointer_size()) if members else {}


def require_template() -> tuple[pvops.Member, ...]:
    members = template()
    if not members:
        raise VmiError(f"no struct {pvops.TEMPLATE} in the loaded symbols: load the guest's "
                       "kernel with its debug info (`file vmlinux`)")
    return members


# --- physical memory -----------------------------------------------------------------------------


def _packet(text: str) -> str | None:
    """Send a raw packet; the reply text, or None when gdb cannot send it (not remote)."""
    try:
        out = gdb.execute(f"maint packet {text}", to_string=True)
    except gdb.error:
        return None
    marker = 'received: "'
    i = out.find(marker)
    if i < 0:
        return None
    return out[i + len(marker):].rstrip().rstrip('"')


@contextlib.contextmanager
def physical_reader() -> Iterator[tuple[Callable[[int, int], bytes], str]]:
    """(read_phys, how): physical reads for the duration of the block.

    QEMU (and vmigdb's stub) switch gdb's memory accesses to physical with ``Qqemu.PhyMemMode:1``;
    it is switched back in ``finally`` and gdb's memory cache flushed on both sides. A target
    without the packet is read through the guest's own mappings: linear = physical while paging
    is off, else Linux's linear map of low memory at PAGE_OFFSET.
    """
    require_target()
    mode = _packet("qqemu.PhyMemMode")
    if mode in ("0", "1") and _packet("Qqemu.PhyMemMode:1") == "OK":
        gdb.execute("maint flush dcache", to_string=True)
        try:
            yield read, "physical (Qqemu.PhyMemMode)"
        finally:
            _packet(f"Qqemu.PhyMemMode:{mode}")
            gdb.execute("maint flush dcache", to_string=True)
        return
    if paging_enabled() is False:
        yield read, "physical (paging is off: linear = physical)"
        return
    yield (lambda a, n: read(PAGE_OFFSET + a, n)), \
        f"through the guest's linear map at {PAGE_OFFSET:#x}"


# --- the ROM -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocatedRom:
    """A VMI ROM found in the guest: the linear address it is reached at and what it says."""

    address: int
    info: rominfo.RomInfo
    image: bytes
    how: str
    phys: int | None = None  # for a ROM found by the scan: its physical address
    active: bool = False  # the copy the guest calls (its pointer says so), or the only one

    def entries(self) -> dict[int, VmiCall]:
        return {self.address + off: call for call, off in self.info.call_table.items() if off}

    def entry_of(self, call: VmiCall) -> int | None:
        off = self.info.call_table.get(call)
        return self.address + off if off else None

    def contains(self, addr: int) -> bool:
        return self.address <= addr < self.address + self.info.length


def read_rom_at(addr: int, how: str) -> LocatedRom:
    """The ROM at a linear address; RomError (one line) when there is none."""
    try:
        head = read(addr, abi.VROM_HEADER_SIZE)
    except gdb.MemoryError:
        raise RomError(f"no VMI ROM at {addr:#x}: memory not readable") from None
    blocks = head[abi.field(abi.VROM_HEADER, "rom_length").offset]
    data = read_or_zeros(addr, max(blocks, 1) * abi.ROM_BLOCK)
    try:
        info = rominfo.parse_rom(data, verify_checksum=False)
    except RomError as e:
        raise RomError(f"no VMI ROM at {addr:#x}: {e}") from None
    return LocatedRom(addr, info, data[:info.length], how)


def locate_roms(addr: int | None = None) -> list[LocatedRom]:
    """Every VMI ROM the guest can reach, the active one first.

    With ``addr``: only the ROM there. Otherwise Linux's scan of 0xC0000-0xE0000 through the
    mapping the guest uses (PAGE_OFFSET + phys with paging on, identity too), plus the ROM the
    guest's own pointer names (a copy in RAM). Raises VmiError "no VMI ROM found" when none.
    """
    if addr is not None:
        return [replace(read_rom_at(addr, "at the given address"), active=True)]
    paging = paging_enabled()
    offsets = [0] if paging is False else [PAGE_OFFSET, 0]
    found: list[LocatedRom] = []
    for off in offsets:
        for rom in rominfo.find_roms(lambda a, n, o=off: read_or_zeros(o + a, n),
                                     verify_checksum=False):
            how = ("in place (Linux's scan through PAGE_OFFSET + phys)" if off
                   else "in place (scan at its physical address)")
            blocks = rom.info.length
            found.append(LocatedRom(off + rom.address, rom.info,
                                    read_or_zeros(off + rom.address, blocks), how, rom.address))
        if found:
            break
    pointer = guest_rom_pointer()
    if pointer is not None:
        expr, value = pointer
        match = next((r for r in found if r.address == value), None)
        if match is not None:
            found.remove(match)
            found.insert(0, replace(match, active=True, how=f"{match.how}; the guest's {expr}"))
        else:
            try:
                found.insert(0, replace(read_rom_at(value, ""), active=True,
                                        how=f"copy in RAM (the guest's {expr})"))
            except RomError:
                pass
    if not found:
        raise VmiError("no VMI ROM found (Linux's scan of 0xc0000-0xe0000"
                       + (" through PAGE_OFFSET and identity" if paging is not False else "")
                       + " found none, and no guest pointer names one); try `vmi rom ADDR`")
    if not any(r.active for r in found):
        found[0] = replace(found[0], active=True)
    return found


def guest_rom_pointer() -> tuple[str, int] | None:
    """(expression, value) of the first guest ROM pointer that is set."""
    for expr in GUEST_ROM_POINTERS:
        value = lookup_address(expr)
        if value:
            return expr, value
    return None


def guest_rom_pointer_expr() -> str | None:
    """The first guest ROM pointer expression that exists (set or not)."""
    for expr in GUEST_ROM_POINTERS:
        if lookup_address(expr) is not None:
            return expr
    return None


def find_rom(addr: int | None = None) -> LocatedRom:
    return locate_roms(addr)[0]
