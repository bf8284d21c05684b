"""Multiboot v1 loading of an ELF32 kernel, as QEMU's ``-kernel`` does it (no Unicorn here).

``plan`` returns what to write (segments at their physical addresses, the multiboot info block,
the command line, the GDT) and the entry state QEMU leaves (EAX the bootloader magic, EBX the
info block, paging off, interrupts off), so the parsing and the bad-input messages can be
tested on bytes alone.

Layout in low RAM, chosen to look like QEMU's (mbi at 0x9500 as QEMU puts it):
    0x9000  GDT: null, flat code 0x08, flat data 0x10, 16-bit code 0x18, 16-bit data 0x20
            (5 entries, limit 0x27 like QEMU's multiboot GDT)
    0x9500  struct multiboot_info (flags MEM|CMDLINE)
The command line goes where QEMU's multiboot loader puts it: at the first page boundary after
the kernel's highest loaded byte (``LoadPlan.cmdline_addr``), so guest code that keeps the
pointer in a register sees the same value on both machines.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmigdb import elf
from vmigdb.errors import GuestImageError
from vmigdb.stub.machine.boot import BootImage

MULTIBOOT_MAGIC = 0x1BADB002  # in the kernel's header
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002  # in EAX at entry
MULTIBOOT_SEARCH = 8192  # the header must sit in the first 8 KiB, 4-byte aligned
MBI_FLAG_MEM = 1 << 0
MBI_FLAG_CMDLINE = 1 << 2

GDT_ADDR = 0x9000
GDT_LIMIT = 0x27
MBI_ADDR = 0x9500
MAX_CMDLINE = 0x1000
SEABIOS_RESERVED_KIB = 128
#: QEMU leaves ESP wherever its option ROM had it; multiboot leaves it undefined. Ours points
#: below the multiboot data so a guest that pushes before setting its own stack still works.
ENTRY_ESP = 0x8000
MEM_LOWER_KIB = 639  # what QEMU reports (640 KiB minus the EBDA)
ROM_WINDOW = (0xA0000, 0xF0000)  # VGA memory and option ROMs (the VMI ROM at 0xC0000)

#: Flat 4 GiB descriptors. 0x08 ring-0 code 32-bit, 0x10 ring-0 data 32-bit, then 16-bit code
#: and data as QEMU's multiboot stub has them.
GDT_ENTRIES = (
    0x0000000000000000,
    0x00CF9B000000FFFF,
    0x00CF93000000FFFF,
    0x00009B000000FFFF,
    0x000093000000FFFF,
)


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes  # file bytes
    memsz: int  # >= len(data); the rest is bss, zeroed


@dataclass(frozen=True)
class LoadPlan:
    entry: int
    segments: tuple[Segment, ...]
    header_offset: int  # where the multiboot header was found
    header_flags: int

    @property
    def cmdline_addr(self) -> int:
        """Page-aligned end of the loaded image, as QEMU places its multiboot buffer."""
        end = max(s.paddr + s.memsz for s in self.segments)
        return (end + 0xFFF) & ~0xFFF


def parse(image: bytes) -> LoadPlan:
    """Check an ELF32 multiboot kernel (read with pyelftools: vmigdb.elf) and list what to
    load. GuestImageError on bad input."""
    f = elf.parse(image)
    if f.elfclass != 32 or not f.little_endian or f["e_machine"] != "EM_386":
        raise GuestImageError("not a 32-bit x86 ELF")
    header = _find_header(image)
    if header is None:
        raise GuestImageError("no multiboot header in the first 8 KiB")
    off, flags = header
    h = f.header
    if h.e_phnum == 0 or h.e_phentsize < 32 or h.e_phoff + h.e_phnum * h.e_phentsize > len(image):
        raise GuestImageError("ELF program headers are missing or truncated")
    segs = []
    for i, seg in enumerate(elf.segments(f)):
        p_offset, p_filesz, p_memsz = seg["p_offset"], seg["p_filesz"], seg["p_memsz"]
        if seg["p_type"] != "PT_LOAD" or p_memsz == 0:
            continue
        if p_offset + p_filesz > len(image) or p_filesz > p_memsz:
            raise GuestImageError(f"ELF segment {i} is truncated")
        segs.append(Segment(seg["p_paddr"], image[p_offset:p_offset + p_filesz], p_memsz))
    if not segs:
        raise GuestImageError("ELF has no loadable segment")
    return LoadPlan(h.e_entry, tuple(segs), off, flags)


def _find_header(image: bytes) -> tuple[int, int] | None:
    limit = min(len(image), MULTIBOOT_SEARCH) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", image, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    return None


def command_line(kernel_path: str, append: str) -> bytes:
    """What QEMU passes: the -kernel path as given, a space, the -append text."""
    raw = f"{kernel_path} {append}".encode() + b"\0"
    if len(raw) > MAX_CMDLINE:
        raise GuestImageError(f"command line longer than {MAX_CMDLINE - 1} bytes")
    return raw


def boot_info(ram_size: int, cmdline_addr: int) -> bytes:
    """struct multiboot_info with mem_lower/mem_upper and the command line pointer."""
    # QEMU + SeaBIOS report usable RAM above 1 MiB from e820, where SeaBIOS keeps the top
    # 128 KiB of RAM for itself (measured: -m 32/64/128 give 31616/64384/129920 KiB).
    mem_upper = max(0, (ram_size >> 10) - 1024 - SEABIOS_RESERVED_KIB)
    mbi = bytearray(88)
    struct.pack_into("<IIII", mbi, 0, MBI_FLAG_MEM | MBI_FLAG_CMDLINE, MEM_LOWER_KIB,
                     mem_upper, 0)
    struct.pack_into("<I", mbi, 16, cmdline_addr)
    return bytes(mbi)


def gdt() -> bytes:
    return b"".join(struct.pack("<Q", e) for e in GDT_ENTRIES)


def plan(image: bytes, *, name: str, cmdline: str, ram_size: int) -> BootImage:
    """The multiboot boot plan; ``name`` is the kernel path QEMU puts first on the command line."""
    p = parse(image)
    raw_cmd = command_line(name, cmdline)
    for seg in p.segments:
        if seg.paddr < 0x1000 or seg.paddr + seg.memsz > ram_size or (
                seg.paddr < ROM_WINDOW[1] and seg.paddr + seg.memsz > ROM_WINDOW[0]):
            raise GuestImageError(f"ELF segment at {seg.paddr:#x} (+{seg.memsz:#x}) is "
                                  f"outside RAM or overlaps the ROM")
    if p.cmdline_addr + len(raw_cmd) > ram_size:
        raise GuestImageError("the kernel image leaves no RAM for the command line")
    blobs = [(s.paddr, s.data) for s in p.segments]
    blobs += [(GDT_ADDR, gdt()), (MBI_ADDR, boot_info(ram_size, p.cmdline_addr)),
              (p.cmdline_addr, raw_cmd)]
    regs = {"eax": MULTIBOOT_BOOTLOADER_MAGIC, "ebx": MBI_ADDR, "ecx": 0, "edx": 0, "esi": 0,
            "edi": 0, "ebp": 0, "esp": ENTRY_ESP, "eflags": 0x2}
    return BootImage(kind="multiboot", blobs=tuple(blobs), entry=p.entry, regs=regs,
                     gdt=(GDT_ADDR, GDT_LIMIT), code_selector=0x08, data_selector=0x10,
                     summary={"entry": f"{p.entry:#x}", "command line": raw_cmd[:-1].decode(
                         errors="replace"), "info block": f"{MBI_ADDR:#x}"})
