"""Find the ROM's announcement points by reading its code with capstone (no gdb here).

The identity ROM tells the machine about itself with ``outl %eax, (%dx)`` on two ports
(abi.ROM_INIT_PORT when vmi_init runs, abi.ROM_FLUSH_PORT for each batch flush). QEMU ignores
those ports, so the portable tracer breaks on the ``out`` instructions themselves. They are found
by following the code from the ROM's entry points (direct calls and jumps included) and keeping
each ``out dx, eax`` whose previous instruction loaded the port into EDX. Following the code,
rather than sweeping the image, keeps the header, strings and tables from being read as code.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from vmigdb import decode

#: Instructions after which the straight-line walk stops.
_ENDS = {"ret", "retf", "iretd", "iret", "sysexit", "jmp", "hlt", "ud2"}


def _target(insn: decode.Insn) -> int | None:
    if insn.mnemonic == "call" or insn.mnemonic.startswith("j") or insn.mnemonic == "loop":
        try:
            return int(insn.op_str, 16)
        except ValueError:
            return None  # indirect
    return None


def reachable(image: bytes, base: int, starts: Iterable[int], limit: int = 4096
              ) -> list[decode.Insn]:
    """Instructions reachable from ``starts`` (linear addresses in the image at ``base``)."""
    seen: dict[int, decode.Insn] = {}
    todo = [s for s in starts if base <= s < base + len(image)]
    while todo and len(seen) < limit:
        addr = todo.pop()
        while base <= addr < base + len(image) and addr not in seen:
            insns = decode.disassemble(image[addr - base:addr - base + 16], addr, 1)
            if not insns:
                break
            insn = insns[0]
            seen[addr] = insn
            t = _target(insn)
            if t is not None and t not in seen:
                todo.append(t)
            if insn.mnemonic in _ENDS:
                break
            addr += insn.size
    return [seen[a] for a in sorted(seen)]


def port_outs(insns: list[decode.Insn], port: int) -> list[int]:
    """Addresses of ``out dx, eax`` right after ``mov edx, port`` (the ROM's announcements)."""
    out = []
    for prev, insn in itertools.pairwise(insns):
        if (insn.mnemonic == "out" and insn.op_str == "dx, eax"
                and prev.address + prev.size == insn.address
                and prev.mnemonic == "mov" and prev.op_str.startswith("edx, ")):
            try:
                value = int(prev.op_str[5:], 16)
            except ValueError:
                continue
            if value == port:
                out.append(insn.address)
    return out
