"""Guest memory: the PC's physical map in Unicorn, and access to it for debuggers and hooks.

Physical map: RAM from 0 to ``ram_size``, except the VMI ROM's pages at 0xC0000 (when there is
a ROM), mapped read-only (READ|EXEC) with a write-protect hook that drops guest writes as
shadow ROM does. The rest of 0xA0000-0xFFFFF (VGA memory, option and BIOS ROM space) is RAM
that reads as zeros, so ROM, DMI, MP and ACPI scans find nothing but their own absence. The
E820 map a loader hands over says which of it the guest may use. Accesses outside RAM stop
the run with StopReason.FAULT.

Virtual accesses for the debugger walk the guest's page tables in memory (QEMU's gdbstub does
the same), not Unicorn's TLB: after a guest changes a PTE without invlpg, the debugger already
sees the new mapping. Hooks read through the CPU's TLB instead (``read_cpu``): right there and
several times cheaper.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import (
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
)
from unicorn import x86_const as X

from vmigdb import pagetable, x86
from vmigdb.stub.machine.stops import MemoryFault

ROM_BASE = 0xC0000
PAGE = 0x1000


def pages(addr: int, size: int) -> list[tuple[int, int]]:
    """Split [addr, addr+size) at 4 KiB page boundaries."""
    out = []
    addr &= 0xFFFFFFFF
    while size > 0:
        n = min(size, PAGE - (addr & (PAGE - 1)))
        out.append((addr, n))
        addr = (addr + n) & 0xFFFFFFFF
        size -= n
    return out


class Memory:
    """RAM and ROM in Unicorn, and every way the machine's users read and write them."""

    ROM_BASE = ROM_BASE

    def __init__(self, uc: Uc, ram_size: int, rom: bytes | None,
                 cpu_read: Callable[[int, int], bytes | None]) -> None:
        """``cpu_read(va, n)``: n bytes of one page through the CPU's TLB, or None."""
        self.uc = uc
        self._cpu_read = cpu_read
        self.ram_size = ram_size
        self.rom = rom
        rom_len = (len(rom) + PAGE - 1) & ~(PAGE - 1) if rom else 0  # 0: rom_end == ROM_BASE
        self.rom_end = ROM_BASE + rom_len
        #: Page translations while the CPU is stopped (gdb reads the same pages many times per
        #: stop); dropped whenever the CPU runs or the debugger writes registers or memory.
        self.xlate: dict[int, int | None] = {}
        self.in_emu = False  # set by the CPU around emu_start: hooks must not use the cache
        self._map()

    def _regions(self) -> list[tuple[int, int, int]]:
        if not self.rom:
            return [(0, self.ram_size, UC_PROT_ALL)]
        return [(0, ROM_BASE, UC_PROT_ALL),
                (ROM_BASE, self.rom_end - ROM_BASE, UC_PROT_READ | UC_PROT_EXEC),
                (self.rom_end, self.ram_size - self.rom_end, UC_PROT_ALL)]

    def _map(self) -> None:
        for base, size, prot in self._regions():
            self.uc.mem_map(base, size, prot)
        if self.rom:
            self.uc.mem_write(ROM_BASE, self.rom)  # host writes ignore protection

    def clear(self) -> None:
        """All RAM back to zeros and the ROM to its image: fresh mappings, so untouched RAM
        costs no host memory."""
        for base, size, _prot in self._regions():
            self.uc.mem_unmap(base, size)
        self._map()
        self.xlate.clear()

    def is_rom(self, pa: int) -> bool:
        return ROM_BASE <= pa < self.rom_end

    def regions(self) -> list[tuple[int, int, str]]:
        """(start, length, "ram" | "rom") for the memory map."""
        return [(base, size, "rom" if prot & UC_PROT_ALL != UC_PROT_ALL else "ram")
                for base, size, prot in self._regions()]

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    # --- physical ------------------------------------------------------------------------------
    def is_backed(self, pa: int, size: int) -> bool:
        return 0 <= pa and pa + size <= self.ram_size

    def read_phys(self, addr: int, size: int) -> bytes:
        if not self.is_backed(addr, size):
            raise MemoryFault(addr if addr >= self.ram_size or addr < 0 else self.ram_size)
        return bytes(self.uc.mem_read(addr, size))

    def write_phys(self, addr: int, data: bytes) -> None:
        if not self.is_backed(addr, len(data)):
            raise MemoryFault(addr)
        self.xlate.clear()  # the write may change a page table
        self.uc.mem_write(addr, data)
        if self.uc.reg_read(X.UC_X86_REG_CR0) & x86.CR0_PG:
            self.uc.ctl_flush_tb()  # the code's virtual address is unknown: drop everything
        elif data:
            self.uc.ctl_remove_cache(addr, addr + len(data))

    def load(self, addr: int, data: bytes) -> None:
        """A loader's write (boot images): no checks beyond RAM, no cache to mind."""
        if not self.is_backed(addr, len(data)):
            raise MemoryFault(addr)
        self.uc.mem_write(addr, data)

    # --- virtual -------------------------------------------------------------------------------
    def translate(self, va: int) -> int | None:
        """Guest-virtual to physical through the current page tables; None if unmapped."""
        va &= 0xFFFFFFFF
        if self.in_emu:  # a hook: the guest may have changed its tables since the last one
            return self._translate(va)
        page, offset = va & ~(PAGE - 1), va & (PAGE - 1)
        if page not in self.xlate:
            self.xlate[page] = self._translate(page)
        pa = self.xlate[page]
        return None if pa is None else pa + offset

    def _translate(self, va: int) -> int | None:
        if not self.uc.reg_read(X.UC_X86_REG_CR0) & x86.CR0_PG:
            return va
        return self.walk(va)

    def walk(self, va: int) -> int | None:
        """Supervisor view of a mapping. Unicorn's vmem calls check access at the current CPL,
        so while the guest runs in ring 3 they refuse kernel pages (IDT, kernel data) that the
        CPU delivering an interrupt, and a debugger, may read."""
        uc = self.uc
        if not uc.reg_read(X.UC_X86_REG_CR0) & x86.CR0_PG:
            return None
        mode = pagetable.Mode.from_regs(uc.reg_read(X.UC_X86_REG_CR3),
                                        uc.reg_read(X.UC_X86_REG_CR4), uc.msr_read(x86.MSR_EFER))
        try:
            mapping = pagetable.walk(self.read_phys, mode, va)
        except MemoryFault:
            return None
        return None if mapping is None else mapping.translate(va)

    def read_virt(self, addr: int, size: int) -> bytes:
        """Read through the guest's page tables (identity while paging is off); MemoryFault."""
        out = []
        for va, n in pages(addr, size):
            pa = self.translate(va)
            if pa is None or not self.is_backed(pa, n):
                raise MemoryFault(va)
            out.append(bytes(self.uc.mem_read(pa, n)))
        return b"".join(out)

    def read_cpu(self, addr: int, size: int) -> bytes:
        """Read as the CPU would now, through Unicorn's TLB: for hooks (the tracer, exception
        delivery), where this is both right and several times cheaper than a table walk."""
        if (addr & 0xFFF) + size <= 0x1000:  # the usual case: one page, one call
            data = self._cpu_read(addr, size)
            if data is not None:
                return data
        out = []
        for va, n in pages(addr, size):
            data = self._cpu_read(va, n)
            if data is None:  # refused at the current CPL (ring 3 reading kernel pages)
                pa = self.walk(va)
                if pa is None or not self.is_backed(pa, n):
                    raise MemoryFault(va)
                data = bytes(self.uc.mem_read(pa, n))
            out.append(data)
        return b"".join(out)

    def read_cpu_or_none(self, addr: int, size: int) -> bytes | None:
        try:
            return self.read_cpu(addr, size)
        except MemoryFault:
            return None

    def write_virt(self, addr: int, data: bytes) -> None:
        """Debugger write: also writes the ROM; invalidates translated code; MemoryFault."""
        targets = []
        off = 0
        for va, n in pages(addr, len(data)):
            pa = self.translate(va)
            if pa is None or not self.is_backed(pa, n):
                raise MemoryFault(va)
            targets.append((pa, data[off:off + n]))
            off += n
        self.xlate.clear()  # the write may change a page table
        for pa, chunk in targets:
            self.uc.mem_write(pa, chunk)  # host writes ignore protection: ROM too
        if data:
            self.uc.ctl_remove_cache(addr, addr + len(data))

    def write_virt_data(self, addr: int, data: bytes) -> bool:
        """A guest-side data write (interrupt frames): no TB invalidation; False if unmapped."""
        targets = []
        off = 0
        for va, n in pages(addr, len(data)):
            pa = self.translate(va)
            if pa is None or not self.is_backed(pa, n) or self.is_rom(pa):
                return False
            targets.append((pa, data[off:off + n]))
            off += n
        self.xlate.clear()
        for pa, chunk in targets:
            self.uc.mem_write(pa, chunk)
        return True
