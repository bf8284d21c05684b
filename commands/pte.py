"""``vmi pte VA [--cr3 X]``: walk the guest's page tables for one address."""

from __future__ import annotations

import gdb

from vmigdb import pagetable
from vmigdb.commands import target
from vmigdb.commands.vmi import ArgParser, complete_options, guarded, write
from vmigdb.errors import VmiError
from vmigdb.views.pte import render_walk, walk_levels


class VmiPte(gdb.Command):
    """Walk the guest's page tables for one virtual address and decode every level.

Usage: vmi pte VA [--cr3 X] [--pae | --no-pae]

Reads CR3/CR4 (and EFER) from the target, or takes --cr3 (e.g. another address space's page
directory). Tables are read physically: with QEMU's Qqemu.PhyMemMode packet where the target
has it (QEMU, vmigdb's stub), else through the guest's identity map (paging off) or its linear
map of low memory at PAGE_OFFSET. Shows each level's entry address, value and flags, and the
physical address VA maps to.
VA is any gdb expression (a function name means its address).
Example: vmi pte 0xc00c0000        vmi pte $pc        vmi pte 0x3ffc0000 --cr3 0x10c000"""

    def __init__(self) -> None:
        super().__init__("vmi pte", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi pte", add_help=False)
        self.parser.add_argument("va", help="virtual address (gdb expression)")
        self.parser.add_argument("--cr3", help="page-table base instead of the CPU's CR3")
        g = self.parser.add_mutually_exclusive_group()
        g.add_argument("--pae", action="store_true", default=None, help="PAE tables")
        g.add_argument("--no-pae", dest="pae", action="store_false", help="2-level tables")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, expression=True)

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        va = self.parser.number(args.va) & 0xFFFFFFFF
        target.require_target()
        cr3 = self.parser.number(args.cr3) if args.cr3 else target.register("cr3")
        if cr3 is None:
            raise VmiError("the target has no cr3 register: give --cr3")
        cr4 = target.register("cr4") or 0
        efer = target.register("efer") or 0
        mode = pagetable.Mode.from_regs(cr3, cr4, efer)
        if args.pae is not None:
            mode = pagetable.Mode(cr3=cr3, pae=args.pae, pse=mode.pse, nxe=mode.nxe)
        if target.paging_enabled() is False and not args.cr3:
            gdb.write("note: paging is off (CR0.PG=0): linear = physical; walking CR3 anyway\n")
        with target.physical_reader() as (read_phys, how):
            try:
                levels, mapping = walk_levels(read_phys, mode, va)
            except gdb.MemoryError as e:
                raise VmiError(f"cannot read the page tables ({how}): {e}") from None
        write(render_walk(va, mode, levels, mapping, how, target.symbolize))
