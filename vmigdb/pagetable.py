"""x86 page-table walks (2-level 32-bit with PSE, and PAE) over a ``read_phys(addr, n)`` callable.

Pure: no gdb, no unicorn. The same walker serves the stub's ``monitor info mem``/``info tlb``, a gdb
command reading physical memory through the target, and offline reports. A walk reads whole table
pages at once (one ``read_phys`` of 4 KiB per table) because through gdb every call is a round trip.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmigdb.x86 import CR4_PAE, CR4_PSE, EFER_NXE

ReadPhys = Callable[[int, int], bytes]

PAGE_SIZE = 0x1000

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7  # in a directory entry; PAT in a 4 KiB PTE
PTE_G = 1 << 8
PTE_NX = 1 << 63  # PAE only, honoured when EFER.NXE

#: PTE flag bits, (bit, name): the one table renderers read.
PTE_FLAG_BITS: tuple[tuple[int, str], ...] = (
    (0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"), (7, "PS"),
    (8, "G"), (63, "NX"),
)


def pte_flag_names(entry: int) -> list[str]:
    return [name for bit, name in PTE_FLAG_BITS if entry >> bit & 1]


def qemu_flags(entry: int) -> str:
    """QEMU ``info tlb`` flag column: X G P D A C T U W (``-`` when clear)."""
    return "".join(
        ch if entry & mask else "-"
        for ch, mask in (("X", PTE_NX), ("G", PTE_G), ("P", PTE_PS), ("D", PTE_D), ("A", PTE_A),
                         ("C", PTE_PCD), ("T", PTE_PWT), ("U", PTE_US), ("W", PTE_RW))
    )


@dataclass(frozen=True)
class Mode:
    """What the walk needs from the control registers."""

    cr3: int
    pae: bool = False
    pse: bool = True
    nxe: bool = False

    @classmethod
    def from_regs(cls, cr3: int, cr4: int, efer: int = 0) -> Mode:
        return cls(cr3=cr3, pae=bool(cr4 & CR4_PAE), pse=bool(cr4 & CR4_PSE),
                   nxe=bool(efer & EFER_NXE))


@dataclass(frozen=True)
class Mapping:
    """One present leaf: ``size`` bytes at ``va`` map to ``pa``.

    ``entry`` is the leaf entry; writable/user/nx are the effective rights (AND/OR over levels).
    ``entries`` lists (level name, physical address of the entry, entry value) from the top.
    """

    va: int
    pa: int
    size: int
    entry: int
    writable: bool
    user: bool
    nx: bool
    entries: tuple[tuple[str, int, int], ...]

    def translate(self, va: int) -> int:
        return self.pa + (va - self.va)


def _table(read_phys: ReadPhys, base: int, count: int, wide: bool) -> tuple[int, ...]:
    need = count * (8 if wide else 4)
    data = read_phys(base, need)
    if len(data) < need:  # a reader that stops at the end of RAM: the rest is "not present"
        data = bytes(data).ljust(need, b"\0")
    return struct.unpack(f"<{count}{'Q' if wide else 'I'}", data)


def _pse36(pde: int) -> int:
    """Physical base of a 4 MiB page, with PSE-36/40 high bits (PDE bits 13-20 -> PA 32-39)."""
    return (pde & 0xFFC00000) | (((pde >> 13) & 0xFF) << 32)


def walk(read_phys: ReadPhys, mode: Mode, va: int) -> Mapping | None:
    """Translate one virtual address; None when a level is not present."""
    va &= 0xFFFFFFFF
    if mode.pae:
        pdpt_base = mode.cr3 & 0xFFFFFFE0
        i3 = va >> 30
        pdpte = _table(read_phys, pdpt_base + 8 * i3, 1, True)[0]
        entries: list[tuple[str, int, int]] = [("PDPTE", pdpt_base + 8 * i3, pdpte)]
        if not pdpte & PTE_P:
            return None
        pd_base = pdpte & 0x000FFFFFFFFFF000
        i2 = (va >> 21) & 0x1FF
        pde = _table(read_phys, pd_base + 8 * i2, 1, True)[0]
        entries.append(("PDE", pd_base + 8 * i2, pde))
        if not pde & PTE_P:
            return None
        if pde & PTE_PS:
            base = va & ~0x1FFFFF
            return _leaf(mode, base, pde & 0x000FFFFFFFE00000, 0x200000, pde, entries)
        pt_base = pde & 0x000FFFFFFFFFF000
        i1 = (va >> 12) & 0x1FF
        pte = _table(read_phys, pt_base + 8 * i1, 1, True)[0]
        entries.append(("PTE", pt_base + 8 * i1, pte))
        if not pte & PTE_P:
            return None
        return _leaf(mode, va & ~0xFFF, pte & 0x000FFFFFFFFFF000, PAGE_SIZE, pte, entries)
    pd_base = mode.cr3 & 0xFFFFF000
    i2 = va >> 22
    pde = _table(read_phys, pd_base + 4 * i2, 1, False)[0]
    entries = [("PDE", pd_base + 4 * i2, pde)]
    if not pde & PTE_P:
        return None
    if pde & PTE_PS and mode.pse:
        return _leaf(mode, va & ~0x3FFFFF, _pse36(pde), 0x400000, pde, entries)
    pt_base = pde & 0xFFFFF000
    i1 = (va >> 12) & 0x3FF
    pte = _table(read_phys, pt_base + 4 * i1, 1, False)[0]
    entries.append(("PTE", pt_base + 4 * i1, pte))
    if not pte & PTE_P:
        return None
    return _leaf(mode, va & ~0xFFF, pte & 0xFFFFF000, PAGE_SIZE, pte, entries)


def _leaf(mode: Mode, va: int, pa: int, size: int, entry: int,
          entries: list[tuple[str, int, int]]) -> Mapping:
    # The PDPTE of legacy PAE carries no RW/US bits: only directory and table entries count.
    levels = [e for name, _, e in entries if name != "PDPTE"]
    writable = all(e & PTE_RW for e in levels)
    user = all(e & PTE_US for e in levels)
    nx = mode.nxe and any(e & PTE_NX for e in levels)
    return Mapping(va, pa, size, entry, writable, user, nx, tuple(entries))


def mappings(read_phys: ReadPhys, mode: Mode) -> Iterator[Mapping]:
    """Every present leaf in virtual-address order (reads each table once)."""
    if mode.pae:
        pdpt_base = mode.cr3 & 0xFFFFFFE0
        for i3, pdpte in enumerate(_table(read_phys, pdpt_base, 4, True)):
            if not pdpte & PTE_P:
                continue
            pd_base = pdpte & 0x000FFFFFFFFFF000
            e3 = ("PDPTE", pdpt_base + 8 * i3, pdpte)
            for i2, pde in enumerate(_table(read_phys, pd_base, 512, True)):
                if not pde & PTE_P:
                    continue
                va2 = (i3 << 30) | (i2 << 21)
                e2 = ("PDE", pd_base + 8 * i2, pde)
                if pde & PTE_PS:
                    yield _leaf(mode, va2, pde & 0x000FFFFFFFE00000, 0x200000, pde, [e3, e2])
                    continue
                pt_base = pde & 0x000FFFFFFFFFF000
                for i1, pte in enumerate(_table(read_phys, pt_base, 512, True)):
                    if pte & PTE_P:
                        yield _leaf(mode, va2 | (i1 << 12), pte & 0x000FFFFFFFFFF000, PAGE_SIZE,
                                    pte, [e3, e2, ("PTE", pt_base + 8 * i1, pte)])
        return
    pd_base = mode.cr3 & 0xFFFFF000
    for i2, pde in enumerate(_table(read_phys, pd_base, 1024, False)):
        if not pde & PTE_P:
            continue
        va2 = i2 << 22
        e2 = ("PDE", pd_base + 4 * i2, pde)
        if pde & PTE_PS and mode.pse:
            yield _leaf(mode, va2, _pse36(pde), 0x400000, pde, [e2])
            continue
        pt_base = pde & 0xFFFFF000
        for i1, pte in enumerate(_table(read_phys, pt_base, 1024, False)):
            if pte & PTE_P:
                yield _leaf(mode, va2 | (i1 << 12), pte & 0xFFFFF000, PAGE_SIZE, pte,
                            [e2, ("PTE", pt_base + 4 * i1, pte)])


@dataclass(frozen=True)
class Range:
    """Contiguous virtual range with the same effective rights (QEMU ``info mem`` line)."""

    start: int
    end: int
    user: bool
    writable: bool
    nx: bool


def ranges(maps: Iterator[Mapping]) -> Iterator[Range]:
    """Merge adjacent mappings with equal rights (physical contiguity does not matter)."""
    cur: Range | None = None
    for m in maps:
        if cur and cur.end == m.va and (cur.user, cur.writable, cur.nx) == (m.user, m.writable, m.nx):
            cur = Range(cur.start, m.va + m.size, cur.user, cur.writable, cur.nx)
            continue
        if cur:
            yield cur
        cur = Range(m.va, m.va + m.size, m.user, m.writable, m.nx)
    if cur:
        yield cur


def render_info_mem(maps: Iterator[Mapping]) -> str:
    """QEMU's ``info mem`` format: ``start-end size urw`` in 16 hex digits."""
    return "".join(
        f"{r.start:016x}-{r.end:016x} {r.end - r.start:016x} "
        f"{'u' if r.user else '-'}r{'w' if r.writable else '-'}\n"
        for r in ranges(maps)
    )


def render_info_tlb(maps: Iterator[Mapping]) -> str:
    """QEMU's ``info tlb`` format: one line per leaf, ``va: pa XGPDACTUW``."""
    return "".join(f"{m.va:016x}: {m.pa:016x} {qemu_flags(m.entry)}\n" for m in maps)
