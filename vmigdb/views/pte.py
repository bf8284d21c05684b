"""One page-table walk, level by level, with each entry's flags decoded.

``walk_levels`` runs ``vmigdb.pagetable.walk`` over a recording reader, so the levels shown are
exactly the entries the walker read (including the one that was not present) without restating
the walk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import decode, pagetable
from vmigdb.views.console import fit_columns


@dataclass(frozen=True)
class Level:
    name: str
    entry_addr: int  # physical address of the entry
    value: int


def walk_levels(read_phys: pagetable.ReadPhys, mode: pagetable.Mode, va: int
                ) -> tuple[list[Level], pagetable.Mapping | None]:
    """(entries read from the top, the mapping or None)."""
    reads: list[tuple[int, bytes]] = []

    def recording(addr: int, n: int) -> bytes:
        data = read_phys(addr, n)
        reads.append((addr, bytes(data)))
        return data

    mapping = pagetable.walk(recording, mode, va)
    names = ["PDPTE", "PDE", "PTE"] if mode.pae else ["PDE", "PTE"]
    levels = [Level(name, addr, int.from_bytes(data.ljust(8 if mode.pae else 4, b"\0"),
                                               "little"))
              for name, (addr, data) in zip(names, reads, strict=False)]
    return levels, mapping


def render_walk(va: int, mode: pagetable.Mode, levels: list[Level],
                mapping: pagetable.Mapping | None, how: str,
                symbolize: Callable[[int], str] | None = None) -> RenderableType:
    """The walk as a table (level, entry address, value, flags, next) and the result."""
    kind = "PAE" if mode.pae else "2-level" + (" +PSE" if mode.pse else "")
    t = Table(title=f"page walk of {va:#x} ({kind}, CR3={mode.cr3:#x}; reads {how})")
    t.add_column("level", no_wrap=True)
    t.add_column("entry at (phys)", no_wrap=True)
    t.add_column("value", no_wrap=True)
    t.add_column("flags")
    t.add_column("points to")
    width = 16 if mode.pae else 8
    for lv in levels:
        present = lv.value & 1
        if not present:
            target = Text("not present", style="red")
        elif lv.name != "PTE" and lv.value & pagetable.PTE_PS and lv.name != "PDPTE":
            target = Text("large page")
        else:
            mask = 0x000FFFFFFFFFF000 if mode.pae else 0xFFFFF000
            target = Text(f"{lv.value & mask:#x}")
        flags = " ".join(decode.bit_names(lv.value, decode.PTE_BITS)) or "-"
        t.add_row(lv.name, f"{lv.entry_addr:#x}", f"{lv.value:#0{width + 2}x}", flags, target)
    if mapping is None:
        last = levels[-1].name if levels else "CR3"
        result = Text(f"{va:#x} is not mapped (stops at the {last})", style="bold red")
    else:
        rights = ("W" if mapping.writable else "R") + ("U" if mapping.user else "S") + (
            " NX" if mapping.nx else "")
        name = symbolize(va) if symbolize else ""
        result = Text(f"{va:#x} -> phys {mapping.translate(va):#x} ({mapping.size // 1024} KiB "
                      f"page at {mapping.pa:#x}, {rights}){' ' + name if name else ''}",
                      style="bold")
    return Group(fit_columns(t), result)
