"""Page-table walks over page tables laid out in a bytearray (data, not machine code)."""

from __future__ import annotations

import struct

from vmigdb import pagetable as pt
from vmigdb.pagetable import PTE_A, PTE_D, PTE_G, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US


class Phys:
    def __init__(self, size: int = 0x40000) -> None:
        self.mem = bytearray(size)
        self.reads = 0

    def read(self, addr: int, n: int) -> bytes:
        self.reads += 1
        return bytes(self.mem[addr : addr + n])

    def put32(self, addr: int, value: int) -> None:
        struct.pack_into("<I", self.mem, addr, value)

    def put64(self, addr: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, addr, value)


def two_level() -> Phys:
    m = Phys()
    pd, table = 0x10000, 0x11000
    m.put32(pd + 4 * (0xC0000000 >> 22), table | PTE_P | PTE_RW)
    for i in range(3):  # C0000000..C0002FFF -> 0x5000.., kernel RW
        m.put32(table + 4 * i, (0x5000 + i * 0x1000) | PTE_P | PTE_RW | PTE_A)
    m.put32(table + 4 * 4, 0x9000 | PTE_P | PTE_D)  # C0004000 read-only, hole at C0003000
    m.put32(pd + 4 * 1, 0x00800000 | PTE_P | PTE_RW | PTE_US | PTE_PS | PTE_G)  # 4 MiB at 0x400000
    return m


def test_two_level_walk() -> None:
    m = two_level()
    mode = pt.Mode.from_regs(cr3=0x10000, cr4=pt.CR4_PSE)
    t = pt.walk(m.read, mode, 0xC0001234)
    assert t is not None and t.translate(0xC0001234) == 0x6234 and t.size == 0x1000
    assert t.writable and not t.user
    assert [name for name, _, _ in t.entries] == ["PDE", "PTE"]
    assert pt.walk(m.read, mode, 0xC0003000) is None
    big = pt.walk(m.read, mode, 0x0055AA00)
    assert big is not None and big.size == 0x400000 and big.translate(0x0055AA00) == 0x0095AA00
    assert big.user and big.writable
    assert pt.walk(m.read, mode, 0x10000000) is None
    # without CR4.PSE the PS bit is ignored and the entry is a table pointer
    assert pt.walk(m.read, pt.Mode(cr3=0x10000, pse=False), 0x00400000) is None


def test_info_mem_and_tlb_render_like_qemu() -> None:
    m = two_level()
    mode = pt.Mode.from_regs(cr3=0x10000, cr4=pt.CR4_PSE)
    assert pt.render_info_mem(pt.mappings(m.read, mode)) == (
        "0000000000400000-0000000000800000 0000000000400000 urw\n"
        "00000000c0000000-00000000c0003000 0000000000003000 -rw\n"
        "00000000c0004000-00000000c0005000 0000000000001000 -r-\n"
    )
    tlb = pt.render_info_tlb(pt.mappings(m.read, mode)).splitlines()
    assert tlb[0] == "0000000000400000: 0000000000800000 -GP----UW"
    assert tlb[1] == "00000000c0000000: 0000000000005000 ----A---W"
    assert tlb[-1] == "00000000c0004000: 0000000000009000 ---D-----"
    assert len(tlb) == 5


def test_pae_walk_with_nx_and_2m_pages() -> None:
    m = Phys()
    pdpt, pd, table = 0x20000, 0x21000, 0x22000
    m.put64(pdpt + 8 * 3, pd | PTE_P)
    m.put64(pd + 8 * 0, table | PTE_P | PTE_RW)
    m.put64(table + 8 * 1, 0x7000 | PTE_P | PTE_RW | PTE_NX)
    m.put64(pd + 8 * 1, 0x1_0020_0000 | PTE_P | PTE_PS)  # 2 MiB above 4 GiB
    mode = pt.Mode.from_regs(cr3=pdpt, cr4=pt.CR4_PAE, efer=pt.EFER_NXE)
    small = pt.walk(m.read, mode, 0xC0001008)
    assert small is not None and small.translate(0xC0001008) == 0x7008
    assert small.nx and small.writable
    assert [name for name, _, _ in small.entries] == ["PDPTE", "PDE", "PTE"]
    big = pt.walk(m.read, mode, 0xC0312345)
    assert big is not None and big.size == 0x200000 and big.translate(0xC0312345) == 0x1_0031_2345
    assert not big.writable
    assert pt.walk(m.read, mode, 0x00001000) is None
    maps = list(pt.mappings(m.read, mode))
    assert [(x.va, x.size) for x in maps] == [(0xC0001000, 0x1000), (0xC0200000, 0x200000)]
    # NX only counts when EFER.NXE is set
    assert not pt.walk(m.read, pt.Mode(cr3=pdpt, pae=True), 0xC0001008).nx
    assert pt.qemu_flags(maps[0].entry) == "X-------W"


def test_flag_names() -> None:
    assert pt.pte_flag_names(PTE_P | PTE_RW | PTE_NX) == ["P", "RW", "NX"]
