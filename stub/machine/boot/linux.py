"""The Linux boot protocol 2.x for a bzImage, entered at its 32-bit entry as GRUB and QEMU do.

Sources: the kernel's Documentation/x86/boot.txt and zero-page.txt, arch/x86/boot/header.S;
shared/reference/linux-pc.md section 1 has what 2.6.32 reads and the traps (an E820 map of fewer
than two entries is thrown away; type_of_loader 0 drops the initrd; the decompressor reads
kernel_alignment from the zero page and uses its scratch field as a stack).

Layout in RAM (QEMU's -kernel puts the real-mode part at 0x10000 and the command line at
0x20000; the 32-bit protocol needs only the zero page there):
    0x10000  boot_params (the zero page): the setup header copied from the image, the E820
             map, the command line and initrd pointers, type_of_loader
    0x20000  the command line (the kernel copies 2048 bytes from here, whatever its length)
    0x30000  a GDT with __BOOT_CS 0x10 and __BOOT_DS 0x18, flat
    0x100000 the protected-mode kernel (the decompressor; it moves itself to 16 MiB)
    top      the initrd, page aligned, below initrd_addr_max and the top of RAM
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from vmigdb.errors import GuestImageError
from vmigdb.stub.machine.boot import BootImage

ZERO_PAGE = 0x10000
CMDLINE_ADDR = 0x20000
CMDLINE_COPY = 2048  # COMMAND_LINE_SIZE: the kernel copies this much from cmd_line_ptr
GDT_ADDR = 0x30000
KERNEL_ADDR = 0x100000
BOOT_CS, BOOT_DS = 0x10, 0x18
#: null, null, then __BOOT_CS and __BOOT_DS (4 GiB flat, ring 0), as boot.txt requires.
GDT = (0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)
LOADER_TYPE = 0xFF  # "undefined" boot loader (boot.txt): not one with an assigned ID
LOADED_HIGH = 0x01
E820_RAM, E820_RESERVED = 1, 2
HOLE = (0xA0000, 0x100000)  # VGA memory and BIOS ROMs: reserved, as the map says


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header the loader needs (offsets from boot.txt)."""

    setup_sects: int
    syssize: int
    version: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    cmdline_size: int
    hardware_subarch: int
    payload_offset: int
    payload_length: int
    pref_address: int
    init_size: int
    header_end: int  # the header is bytes 0x1F1 .. header_end of the file

    @property
    def pm_offset(self) -> int:
        return (self.setup_sects + 1) * 512

    @property
    def needs(self) -> int:
        """Bytes of RAM the kernel occupies while it decompresses and runs, from 0."""
        if self.version >= 0x20A and self.init_size:
            return self.pref_address + self.init_size
        return KERNEL_ADDR + self.syssize * 16 * 4  # protocol < 2.10: a decompression guess


def parse_header(data: bytes) -> SetupHeader:
    """Check a bzImage's setup header; GuestImageError with one line on anything wrong."""
    if len(data) < 0x264 or data[0x1FE:0x200] != b"\x55\xaa" or data[0x202:0x206] != b"HdrS":
        raise GuestImageError("not a Linux bzImage (no boot sector signature or HdrS header)")

    def u8(off: int) -> int:
        return data[off]

    def u16(off: int) -> int:
        return struct.unpack_from("<H", data, off)[0]

    def u32(off: int) -> int:
        return struct.unpack_from("<I", data, off)[0]

    version = u16(0x206)
    if version < 0x200 or version >= 0x300:
        raise GuestImageError(f"unsupported boot protocol {version >> 8}.{version & 0xFF:02d}")
    if version < 0x202:
        raise GuestImageError(f"boot protocol {version >> 8}.{version & 0xFF:02d} is too old "
                              "(2.02 or newer passes the command line by address)")
    loadflags = u8(0x211)
    if not loadflags & LOADED_HIGH:
        raise GuestImageError("a zImage (loaded low), not a bzImage: vmigdb loads bzImages")
    setup_sects = u8(0x1F1) or 4
    header_end = 0x202 + u8(0x201)
    syssize = u32(0x1F4)
    pm_offset = (setup_sects + 1) * 512
    if pm_offset >= len(data):
        raise GuestImageError("truncated bzImage: no protected-mode kernel after the setup "
                              f"code ({len(data)} bytes)")
    if syssize == 0 or pm_offset + syssize * 16 > len(data) + 15:
        raise GuestImageError(f"truncated bzImage: the header says {pm_offset + syssize * 16} "
                              f"bytes, the file has {len(data)}")
    h = SetupHeader(
        setup_sects=setup_sects, syssize=syssize, version=version, loadflags=loadflags,
        code32_start=u32(0x214), initrd_addr_max=u32(0x22C) if version >= 0x203 else 0x37FFFFFF,
        kernel_alignment=u32(0x230) if version >= 0x205 else 0,
        relocatable=bool(u8(0x234)) if version >= 0x205 else False,
        cmdline_size=u32(0x238) if version >= 0x206 else 255,
        hardware_subarch=u32(0x23C) if version >= 0x207 else 0,
        payload_offset=u32(0x248) if version >= 0x208 else 0,
        payload_length=u32(0x24C) if version >= 0x208 else 0,
        pref_address=struct.unpack_from("<Q", data, 0x258)[0] if version >= 0x20A else 0,
        init_size=u32(0x260) if version >= 0x20A else 0,
        header_end=header_end)
    if h.code32_start != KERNEL_ADDR:
        raise GuestImageError(f"code32_start is {h.code32_start:#x}; a bzImage runs from "
                              f"{KERNEL_ADDR:#x}")
    if h.hardware_subarch != 0:
        raise GuestImageError(f"hardware_subarch {h.hardware_subarch} is not a PC")
    _check_payload(data, h)
    return h


def _check_payload(data: bytes, h: SetupHeader) -> None:
    """A gzip payload (protocol 2.08+) must inflate and pass its CRC: the decompressor would
    otherwise fail silently (it prints nowhere without a screen) and halt."""
    if not h.payload_length:
        return
    start = h.pm_offset + h.payload_offset
    payload = data[start:start + h.payload_length]
    if len(payload) != h.payload_length:
        raise GuestImageError("truncated bzImage: its compressed kernel is cut short")
    if payload[:2] != b"\x1f\x8b":
        return  # bzip2, lzma: the decompressor checks those itself
    try:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        d.decompress(payload)
        d.flush()
        ok = d.eof
    except zlib.error as e:
        raise GuestImageError(f"corrupt bzImage: its compressed kernel does not inflate ({e})"
                              ) from None
    if not ok:
        raise GuestImageError("corrupt bzImage: its compressed kernel ends early")


def e820_map(ram_size: int) -> list[tuple[int, int, int]]:
    """RAM below 640 KiB, the 0xA0000-0xFFFFF hole reserved, RAM from 1 MiB to the top."""
    return [(0, HOLE[0], E820_RAM), (HOLE[0], HOLE[1] - HOLE[0], E820_RESERVED),
            (HOLE[1], ram_size - HOLE[1], E820_RAM)]


def plan(data: bytes, *, cmdline: str, initrd: bytes | None, ram_size: int) -> BootImage:
    h = parse_header(data)
    if ram_size < h.needs:
        raise GuestImageError(f"this kernel needs at least {-(-h.needs // (1 << 20))} MiB of "
                              f"RAM to boot; the machine has {ram_size >> 20} MiB")
    raw_cmd = cmdline.encode()
    if len(raw_cmd) > min(h.cmdline_size, CMDLINE_COPY - 1):
        raise GuestImageError(f"command line longer than the kernel's {h.cmdline_size} bytes")
    zero = bytearray(4096)
    zero[0x1F1:h.header_end] = data[0x1F1:h.header_end]
    zero[0x210] = LOADER_TYPE
    struct.pack_into("<I", zero, 0x228, CMDLINE_ADDR)
    struct.pack_into("<I", zero, 0x1E0, (ram_size - HOLE[1]) >> 10)  # alt_mem_k (E801)
    entries = e820_map(ram_size)
    zero[0x1E8] = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", zero, 0x2D0 + 20 * i, addr, size, kind)
    blobs = [(KERNEL_ADDR, data[h.pm_offset:h.pm_offset + h.syssize * 16])]
    initrd_addr = 0
    if initrd is not None:
        top = min(h.initrd_addr_max + 1, ram_size)
        initrd_addr = (top - len(initrd)) & ~0xFFF
        if initrd_addr < h.needs:
            raise GuestImageError(f"the initrd ({len(initrd)} bytes) does not fit in "
                                  f"{ram_size >> 20} MiB of RAM above the kernel")
        struct.pack_into("<II", zero, 0x218, initrd_addr, len(initrd))
        blobs.append((initrd_addr, initrd))
    blobs += [(ZERO_PAGE, bytes(zero)), (CMDLINE_ADDR, raw_cmd.ljust(CMDLINE_COPY, b"\0")),
              (GDT_ADDR, b"".join(struct.pack("<Q", d) for d in GDT))]
    regs = {"esi": ZERO_PAGE, "ebp": 0, "edi": 0, "ebx": 0, "eax": 0, "ecx": 0, "edx": 0,
            "esp": ZERO_PAGE, "eflags": 0x2}
    return BootImage(
        kind="linux", blobs=tuple(blobs), entry=h.code32_start, regs=regs,
        gdt=(GDT_ADDR, len(GDT) * 8 - 1), code_selector=BOOT_CS, data_selector=BOOT_DS,
        summary={"protocol": f"{h.version >> 8}.{h.version & 0xFF:02d}",
                 "kernel": f"{h.syssize * 16} bytes at {KERNEL_ADDR:#x}",
                 "zero page": f"{ZERO_PAGE:#x}", "command line": cmdline,
                 "initrd": f"{len(initrd)} bytes at {initrd_addr:#x}" if initrd else "none",
                 "e820": ", ".join(f"{a:#x}+{s:#x} {'RAM' if k == 1 else 'reserved'}"
                                   for a, s, k in entries)})
