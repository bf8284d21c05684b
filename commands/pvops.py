"""``vmi pvops``: every pv_*_ops member, what it points to, and the VMI call that is.

The layout comes from the guest's debug info (``target.template``); the slots, Linux's rules and
the classification of each pointer are the core's (``vmigdb.pvops``).
"""

from __future__ import annotations

import struct

import gdb
from rich.console import Group
from rich.text import Text

from vmigdb import pvops
from vmigdb.commands import target
from vmigdb.commands.sites import rom_entries
from vmigdb.commands.target import pointer_size, require_template, template
from vmigdb.commands.vmi import ArgParser, complete_options, guarded, write
from vmigdb.views.pvops import render_pvops


def read_ops(members: tuple[pvops.Member, ...]) -> list[tuple[pvops.OpSlot, int]]:
    """Every pv-op with its current pointer value, one memory read per ops object (an object
    the kernel does not define, such as pv_lock_ops without PARAVIRT_SPINLOCKS, has none)."""
    size = pointer_size()
    fmt = "<I" if size == 4 else "<Q"
    slots = pvops.op_slots(members, size)
    objects = {m.name: m for m in members}
    blobs: dict[str, bytes] = {}
    for name, m in objects.items():
        addr = target.lookup_address(f"&{name}")
        if addr is None:
            continue
        blobs[name] = target.read(addr, m.size)
    out = []
    for s in slots:
        blob = blobs.get(s.object)
        if blob is None:
            continue
        (value,) = struct.unpack_from(fmt, blob, s.offset)
        out.append((s, value))
    return out


class VmiPvops(gdb.Command):
    """List every pv_*_ops member: where it points, and the VMI call that reaches.

Usage: vmi pvops [--object NAME] [--call NAME]

The members come from the guest's debug info (struct paravirt_patch_template: each member's
slot is the type its .parainstructions sites carry). For each: its slot, the pointer, gdb's
symbol for it, what it is (a ROM entry, a vmi_* wrapper Linux installs, vmi_nop, the poisoned
marker of an op whose sites must be patched, or native code) and the VMI call it reaches (the
entry's own call, or the one activate_vmi() wraps). A ROM entry of another call than the one
Linux fills the op with is flagged WRONG.
Example: vmi pvops        vmi pvops --object pv_mmu_ops        vmi pvops --call SetPxE"""

    def __init__(self) -> None:
        super().__init__("vmi pvops", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi pvops", add_help=False)
        self.parser.add_argument("--object", help="only this pv_*_ops object")
        self.parser.add_argument("--call", help="only members reaching this VMI call")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, calls=("--call",),
                                choices={"--object": _object_names})

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        if args.call:
            self.parser.call_name(args.call)
        target.require_target()
        members = require_template()
        if args.object and args.object not in {m.name for m in members}:
            self.parser.error(f"no pv-op object {args.object!r} (the template has "
                              f"{', '.join(m.name for m in members)})")
        entries, roms, note = rom_entries()
        active = next((r for r in roms if r.active), None)
        span = (active.address, active.address + active.info.length) if active else None
        states = []
        for s, value in read_ops(members):
            if args.object and s.object != args.object:
                continue
            symbol = target.symbolize(value) if value else ""
            state = pvops.classify_op(s.op, value, symbol, entries, span)
            if args.call and args.call not in state.call_names.split("/"):
                continue
            states.append((s.slot, state))
        parts = [render_pvops(states, title=f"{len(states)} pv-ops (struct "
                                            f"{pvops.TEMPLATE} slots)")]
        missing = [m.name for m in members if target.lookup_address(f"&{m.name}") is None
                   and (not args.object or m.name == args.object)]
        if missing:
            parts.append(Text(f"not in this kernel (its template has them, no object does): "
                              f"{', '.join(missing)}"))
        if note:
            parts.append(Text(note))
        write(Group(*parts))


def _object_names() -> list[str]:
    members = template()
    return [m.name for m in members] if members else []
