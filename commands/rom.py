"""``vmi rom [ADDR]``: the VMI ROM as the guest sees it, found through gdb memory reads."""

from __future__ import annotations

import gdb
from rich.console import Group
from rich.text import Text

from vmigdb import abi, romsyms
from vmigdb.commands import romcode, target
from vmigdb.commands.vmi import ArgParser, complete_options, guarded, write
from vmigdb.views.rom import render_rom
from vmigdb.views.sites import render_locations, render_rom_entries


def announcements(rom: target.LocatedRom) -> dict[str, list[int]]:
    """The ROM's ``out`` announcements (flush, init), found in its code."""
    starts = [rom.address + off for off in rom.info.call_table.values() if off]
    starts += [rom.address + abi.VMI_INIT_OFFSET, rom.address + abi.GET_RELOC_OFFSET]
    code = romcode.reachable(rom.image, rom.address, starts)
    return {"flush": romcode.port_outs(code, abi.ROM_FLUSH_PORT),
            "init": romcode.port_outs(code, abi.ROM_INIT_PORT)}


class VmiRom(gdb.Command):
    """Find the VMI ROM in the guest and show its header and call table.

Usage: vmi rom [ADDR] [--insns N]

Without ADDR, scans 0xc0000-0xe0000 in 2 KiB steps as Linux does, through the guest's
linear map (PAGE_OFFSET + phys when paging is on) and at the physical address, and follows the
guest's own ROM pointer (Linux's vmi_rom, the demo guest's vmi.base) to a copy in RAM. ADDR
(any gdb expression) shows the ROM at that linear address instead.
Shows the header, API and ROM versions, licence, PCI IDs, and each implemented call's entry
with its symbol (vmi_<Call>: `vmi symbols` loads them, then `break vmi_SetPxE`), relocation,
first instructions (capstone) and the native instruction it stands for. --insns N (N >= 1)
shows N instructions of each body.
Example: vmi rom        vmi rom 0xc00c0000        vmi rom vmi.base --insns 8"""

    def __init__(self) -> None:
        super().__init__("vmi rom", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi rom", add_help=False)
        self.parser.add_argument("addr", nargs="?", help="linear address of a ROM")
        self.parser.add_argument("--insns", type=int, default=4,
                                 help="instructions of each entry body to show")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, expression=True)

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        self.parser.count(args.insns, "--insns")
        addr = self.parser.number(args.addr) & 0xFFFFFFFF if args.addr else None
        target.require_target()
        roms = target.locate_roms(addr)
        rom = roms[0]
        ann = announcements(rom)
        vsig = abi.field(abi.VROM_HEADER, "vrom_signature")
        sig = rom.image[vsig.offset:vsig.offset + vsig.size].decode("ascii", "replace")
        signatures = (f"signatures: {rom.image[0]:02x} {rom.image[1]:02x} (option ROM), "
                      f"{sig!r} (VMI) at {rom.address:#x}")
        notes = [signatures]
        for what, addrs in ann.items():
            if addrs:
                notes.append(f"{what} announcement (out on port "
                             f"{abi.ROM_FLUSH_PORT if what == 'flush' else abi.ROM_INIT_PORT:#x})"
                             f" at {', '.join(f'{a:#x}' for a in addrs)}")
        header = render_rom(rom.info, live_copy=rom.how.startswith("copy in RAM")).renderables[0]
        parts = [render_locations([(r.address, r.how, r.phys, r.active) for r in roms]),
                 header]
        if rom.info.call_table:
            parts.append(render_rom_entries(rom.address, rom.info, rom.image,
                                            max_insns=args.insns,
                                            symbols=romsyms.entry_symbol))
        else:
            parts.append(Text("no vmigdb call table: entries are known only by calling "
                              "get_reloc"))
        parts += [Text(n) for n in notes]
        write(Group(*parts))
