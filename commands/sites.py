"""``vmi sites`` and ``vmi decode ADDR``: the patch sites and what the patcher made of them."""

from __future__ import annotations

import gdb
from rich.console import Group
from rich.text import Text

from vmigdb import decode, sites
from vmigdb.abi import VmiCall
from vmigdb.commands import target
from vmigdb.commands.vmi import ArgParser, guarded, write
from vmigdb.errors import GuestImageError, VmiError
from vmigdb.views.sites import SiteRow, render_entry, render_site, render_sites

_MAX_SPAN = 1 << 20  # read all sites in one go when they lie within this span


def guest_elf() -> sites.ElfImage | None:
    """The first ELF gdb loaded that has a .parainstructions section (the guest kernel)."""
    for obj in gdb.objfiles():
        name = obj.filename
        if not name:
            continue
        try:
            with open(name, "rb") as f:
                elf = sites.ElfImage(f.read())
        except (OSError, GuestImageError):
            continue
        if elf.section(sites.SECTION) is not None:
            return elf
    return None


def load_sites(from_memory: bool = False) -> tuple[list[sites.Site], sites.ElfImage | None, str]:
    """(records, the guest's ELF if loaded, where the records came from)."""
    elf = guest_elf()
    if elf is not None and not from_memory:
        return sites.sites_from_elf(elf), elf, "the ELF file's .parainstructions"
    start = target.lookup_address(f"&{sites.START_SYMBOL}")
    stop = target.lookup_address(f"&{sites.STOP_SYMBOL}")
    if start is None or stop is None:
        raise VmiError("no .parainstructions: load the guest's symbols (`file guest.elf`) "
                       f"or give gdb {sites.START_SYMBOL}/{sites.STOP_SYMBOL}")
    if stop < start or stop - start > _MAX_SPAN:
        raise VmiError(f"bad .parainstructions bounds {start:#x}-{stop:#x}")
    data = target.read(start, stop - start) if stop > start else b""
    return sites.parse_records(data), elf, f"memory {start:#x}-{stop:#x}"


def _current_bytes(records: list[sites.Site]) -> dict[int, bytes]:
    if not records:
        return {}
    lo = min(s.addr for s in records)
    hi = max(s.addr + s.len for s in records)
    if hi - lo <= _MAX_SPAN:
        blob = target.read(lo, hi - lo)
        return {s.addr: blob[s.addr - lo:s.addr - lo + s.len] for s in records}
    return {s.addr: target.read_or_zeros(s.addr, s.len) for s in records}


def site_symbol(addr: int) -> str:
    """``function+off``, plus the inlined function the site came from when it differs."""
    name = target.symbolize(addr)
    try:
        block = gdb.block_for_pc(addr)
    except RuntimeError:
        block = None
    while block is not None and block.function is None:
        block = block.superblock
    inner = block.function.name if block is not None and block.function else ""
    if inner and not name.startswith(inner):
        return f"{name} ({inner})" if name else inner
    return name


def rom_entries() -> tuple[dict[int, VmiCall], list[target.LocatedRom], str]:
    """Entry address -> call over every ROM the guest can reach; a note when none is found."""
    try:
        roms = target.locate_roms()
    except VmiError as e:
        return {}, [], str(e)
    entries: dict[int, VmiCall] = {}
    for r in roms:
        entries.update(r.entries())
    return entries, roms, ""


def build_rows(records: list[sites.Site], elf: sites.ElfImage | None,
               entries: dict[int, VmiCall]) -> list[SiteRow]:
    now = _current_bytes(records)
    rows = []
    for s in records:
        original = elf.read(s.addr, s.len) if elf is not None else None
        state = sites.classify(s, now[s.addr], original, entries)
        orig_insns = tuple(decode.disassemble(original, s.addr)) if original else ()
        rows.append(SiteRow(s, site_symbol(s.addr), orig_insns, state))
    return rows


class VmiSites(gdb.Command):
    """List every VMI patch site: the native code, what memory holds now, where it goes.

Usage: vmi sites [--memory] [--call NAME]

Reads the .parainstructions records of the guest's ELF (the file gdb loaded; --memory reads
them from guest memory between __start_parainstructions and __stop_parainstructions instead).
For each site: address, symbol, VMI call (the record's type), length, clobbers, the original
native instructions from the file, the instructions in memory now (call into a ROM entry, NOPs
or unchanged native), the ROM entry it redirects to, and whether that is its own call's entry.
Example: vmi sites        vmi sites --call SetCR3"""

    def __init__(self) -> None:
        super().__init__("vmi sites", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi sites", add_help=False)
        self.parser.add_argument("--memory", action="store_true",
                                 help="read the records from guest memory")
        self.parser.add_argument("--call", help="only sites of this VMI call")

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        target.require_target()
        records, elf, where = load_sites(args.memory)
        if args.call:
            records = [s for s in records if s.call_name == args.call]
        entries, _roms, note = rom_entries()
        rows = build_rows(records, elf, entries)
        parts = [render_sites(rows, title=f"{len(rows)} patch sites from {where}")]
        if note:
            parts.append(Text(note))
        write(Group(*parts))


class VmiDecode(gdb.Command):
    """Explain one patch site or one ROM entry.

Usage: vmi decode ADDR

ADDR (any gdb expression) inside a patch site: the record, the native code from the file, the
code in memory now and the ROM entry it calls, with that call's ABI. ADDR inside a ROM entry:
the call, where its arguments and results are, and the entry's whole body (capstone). Any other
address holding a direct call into a ROM entry: which call that is.
Example: vmi decode 0x100080        vmi decode $pc"""

    def __init__(self) -> None:
        super().__init__("vmi decode", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi decode", add_help=False)
        self.parser.add_argument("addr", help="address (gdb expression)")

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        addr = self.parser.number(args.addr) & 0xFFFFFFFF
        target.require_target()
        entries, roms, note = rom_entries()
        try:
            records, elf, _where = load_sites()
        except VmiError:
            records, elf = [], None
        site = next((s for s in records if s.contains(addr)), None)
        if site is not None:
            row = build_rows([site], elf, entries)[0]
            body: list[decode.Insn] = []
            rom = next((r for r in roms if row.state.target and r.contains(row.state.target)),
                       None)
            if rom is not None:
                body = _entry_body(rom, row.state.target)
            write(render_site(row, body))
            return
        rom = next((r for r in roms if r.contains(addr)), None)
        if rom is not None:
            write(_describe_rom_address(rom, addr))
            return
        insns = decode.disassemble(target.read_or_zeros(addr, 16), addr, 1)
        if insns:
            dest = decode.call_target(insns[0])
            if dest is not None and dest in entries:
                call = entries[dest]
                rom = next(r for r in roms if r.contains(dest))
                write(Group(Text(f"{addr:#x}: {insns[0].text}: calls the ROM's {call.name} "
                                 f"entry (not a .parainstructions site: a pv-op call)"),
                            render_entry(call, dest, _entry_body(rom, dest), target.symbolize)))
                return
        raise VmiError(f"{addr:#x} is neither a patch site nor inside a VMI ROM"
                       + (f" ({note})" if note else ""))


def _entry_body(rom: target.LocatedRom, entry: int) -> list[decode.Insn]:
    off = entry - rom.address
    return decode.disassemble_until_ret(rom.image[off:off + 256], entry, 64)


def _describe_rom_address(rom: target.LocatedRom, addr: int):
    entries = sorted(rom.entries().items())
    below = [(a, c) for a, c in entries if a <= addr]
    if not below:
        return Text(f"{addr:#x} is in the ROM at {rom.address:#x} (offset "
                    f"{addr - rom.address:#x}), before the first call entry: header or "
                    "jump points")
    entry, call = below[-1]
    body = _entry_body(rom, entry)
    inside = entry == addr or any(i.address == addr for i in body)
    head = Text(f"{addr:#x} is the {call.name} entry of the ROM at {rom.address:#x}"
                if entry == addr else
                f"{addr:#x} is inside the {call.name} entry ({entry:#x}+{addr - entry:#x})"
                if inside else
                f"{addr:#x} is in the ROM at {rom.address:#x}, after the {call.name} entry "
                "(shared ROM code)")
    return Group(head, render_entry(call, entry, body))
