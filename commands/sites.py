"""``vmi sites`` and ``vmi decode ADDR``: the patch sites and what the patcher made of them."""

from __future__ import annotations

import gdb
from rich.console import Group
from rich.text import Text

from vmigdb import decode, pvops, sites
from vmigdb.abi import VmiCall
from vmigdb.commands import target
from vmigdb.commands.vmi import ArgParser, complete_options, guarded, write
from vmigdb.errors import GuestImageError, VmiError
from vmigdb.views.sites import SiteRow, render_entry, render_site, render_sites

_MAX_SPAN = 1 << 20  # the largest .parainstructions section read from memory


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


#: Sites closer than this share one memory read (Linux's 889 sites span 6 MiB of text).
_CLUSTER = 4096


def _current_bytes(records: list[sites.Site]) -> dict[int, bytes]:
    """What memory holds at every site, read in clusters of nearby sites (one round trip each)
    rather than one read per site."""
    out: dict[int, bytes] = {}
    ordered = sorted(records, key=lambda s: s.addr)
    i = 0
    while i < len(ordered):
        lo = ordered[i].addr
        hi = lo + ordered[i].len
        j = i + 1
        while j < len(ordered) and ordered[j].addr - hi < _CLUSTER:
            hi = max(hi, ordered[j].addr + ordered[j].len)
            j += 1
        try:
            blob = target.read(lo, hi - lo)
        except gdb.MemoryError:  # a hole in the cluster: site by site, zeros where unmapped
            for s in ordered[i:j]:
                out[s.addr] = target.read_or_zeros(s.addr, s.len)
        else:
            for s in ordered[i:j]:
                out[s.addr] = blob[s.addr - lo:s.addr - lo + s.len]
        i = j
    return out


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


def init_text() -> tuple[int, int] | None:
    """Linux's init sections (``__init_begin``-``__init_end``), freed and reused after boot."""
    lo, hi = target.lookup_address("&__init_begin"), target.lookup_address("&__init_end")
    return (lo, hi) if lo is not None and hi is not None and lo < hi else None


def relocation_of(roms: list[target.LocatedRom]) -> sites.Relocation | None:
    """get_reloc's answers of the ROM the guest calls (None when no ROM is found: Linux then
    runs natively and every site keeps its native code)."""
    rom = next((r for r in roms if r.active), None)
    if rom is None:
        return None
    return lambda call: (rom.info.relocation(call), rom.entry_of(call))


def build_rows(records: list[sites.Site], elf: sites.ElfImage | None,
               entries: dict[int, VmiCall], roms: list[target.LocatedRom]) -> list[SiteRow]:
    """Each record with its symbol, the file's and memory's code, Linux's rule and the
    verdict."""
    now = _current_bytes(records)
    layout = target.slot_layout()
    relocation = relocation_of(roms)
    init = init_text()
    rows = []
    for s in records:
        original = elf.read(s.addr, s.len) if elf is not None else None
        state = sites.classify(s, now[s.addr], original, entries)
        exp = sites.expect(s, layout, relocation)
        in_init = init is not None and init[0] <= s.addr < init[1]
        verdict = sites.judge(state, exp, in_init=in_init)
        orig_insns = tuple(decode.disassemble(original, s.addr)) if original else ()
        rows.append(SiteRow(s, site_symbol(s.addr), orig_insns, state, exp, verdict))
    return rows


class VmiSites(gdb.Command):
    """List every VMI patch site: its pv-op, what Linux's rule makes of it, and what it holds.

Usage: vmi sites [--memory] [--call NAME] [--op TEXT] [--wrong]

Reads the .parainstructions records of the guest's ELF (the file gdb loaded; --memory reads
them from guest memory between __start_parainstructions and __stop_parainstructions instead).
A record's type is a pv-op slot, PARAVIRT_PATCH(op), named from the guest's debug info (struct
paravirt_patch_template). Linux's vmi_patch() rewrites only the interrupt-flag ops, iret and
irq_enable_sysexit: with the live ROM's get_reloc answer CALL_REL such a site must be a call to
that entry; every other site keeps its native code. Each row: site, symbol, the rule
("pv_irq_ops.save_fl -> GetInterruptMask (CALL_REL) at 0xc00c0640"), the native instructions
of the file, the instructions in memory, and the verdict (ok, WRONG; freed for init text Linux
released after boot). --call keeps the sites that lead to a VMI call, --op those whose pv-op
name contains TEXT, --wrong only the sites judged WRONG.
Example: vmi sites        vmi sites --call GetInterruptMask        vmi sites --wrong"""

    def __init__(self) -> None:
        super().__init__("vmi sites", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi sites", add_help=False)
        self.parser.add_argument("--memory", action="store_true",
                                 help="read the records from guest memory")
        self.parser.add_argument("--call", help="only sites leading to this VMI call")
        self.parser.add_argument("--op", help="only sites whose pv-op name contains this")
        self.parser.add_argument("--wrong", action="store_true", help="only WRONG sites")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, calls=("--call",))

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        call = self.parser.call_name(args.call) if args.call else None
        target.require_target()
        records, elf, where = load_sites(args.memory)
        layout = target.slot_layout()
        if call is not None:
            records = [s for s in records if call in sites.calls_of(s, layout)]
        if args.op:
            records = [s for s in records if args.op in s.op(layout)]
        entries, roms, note = rom_entries()
        rows = build_rows(records, elf, entries, roms)
        if args.wrong:
            rows = [r for r in rows if r.verdict == "WRONG"]
        parts = [render_sites(rows, title=f"{len(rows)} patch sites from {where}")]
        if not layout:
            parts.append(Text(f"no struct {pvops.TEMPLATE} in the symbols: types shown as "
                              "slot numbers, every site judged against native code"))
        if note:
            parts.append(Text(note))
        write(Group(*parts))


class VmiDecode(gdb.Command):
    """Explain one patch site or one ROM entry.

Usage: vmi decode ADDR

ADDR (any gdb expression; a function name means its address) inside a patch site: the record,
its pv-op and Linux's rule for it, the native code from the file, the code in memory now, the
verdict and the ROM entry it calls, with that call's ABI. ADDR inside a ROM entry:
the call, where its arguments and results are, and the entry's whole body (capstone). Any other
address holding a direct call into a ROM entry: which call that is.
Example: vmi decode 0x100080        vmi decode $pc        vmi decode native_save_fl"""

    def __init__(self) -> None:
        super().__init__("vmi decode", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi decode", add_help=False)
        self.parser.add_argument("addr", help="address (gdb expression)")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, expression=True)

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
            row = build_rows([site], elf, entries, roms)[0]
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
    return Group(head, render_entry(call, entry, body, target.symbolize))
