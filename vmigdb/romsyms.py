"""The ROM's own symbols and unwind information, placed where the guest runs the ROM.

Pure: works on bytes and addresses. The ROM is linked at 0 (rom/vmi_rom.ld), so its ELF's
symbols are image offsets and one number places them: the linear address of the ROM the guest
calls. That address is a guest decision, and ``live_address`` states the rule; ``check_elf``
makes sure the ELF describes the image that is really there before gdb is told to trust its
symbols and CFI (a stale ELF would put every frame name and unwind rule off by a few bytes).

Entry names: rom/vmi_rom.S defines each call's body with its VMI_ENTRY macro, which names it
``vmi_<Call>`` with the call spelled as abi.py spells it (``vmi_SetPxE``); ``entry_symbol`` is
that rule, and tests/test_rom.py checks every entry of the built ELF against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmigdb.abi import VmiCall
from vmigdb.sites import ElfImage

#: The prefix rom/vmi_rom.S's VMI_ENTRY macro gives every call's body.
ENTRY_PREFIX = "vmi_"
#: Linux i386's PAGE_OFFSET: isa_bus_to_virt(phys) = PAGE_OFFSET + phys is where Linux calls a
#: ROM it found at physical ``phys`` (arch/x86/kernel/vmi_32.c probe_vmi_rom).
LINUX_PAGE_OFFSET = 0xC0000000
#: The guest pointer that says the guest is Linux (arch/x86/kernel/vmi_32.c: struct vrom_header
#: *vmi_rom), as opposed to the demo guest's vmi.base.
LINUX_ROM_POINTER = "vmi_rom"

_SHF_WRITE = 1
_SHF_ALLOC = 2
_SHT_NOBITS = 8


def entry_symbol(call: VmiCall) -> str:
    """The ROM's symbol for a call's entry (``vmi_SetPxE``): what ``break`` takes."""
    return f"{ENTRY_PREFIX}{call.name}"


@dataclass(frozen=True)
class Placement:
    """Where the ROM's symbols go and why (shown to the user)."""

    address: int
    why: str


def live_address(*, pointer: tuple[str, int] | None, found_at: int | None,
                 found_phys: int | None, pointer_exists: str | None = None) -> Placement | None:
    """The linear address the guest calls (or will call) its ROM at.

    ``pointer``: the guest's ROM pointer when set (expression, value): Linux's ``vmi_rom`` or
    the demo guest's ``vmi.base``; that is the answer. ``pointer_exists``: the pointer's
    expression when the guest has one but has not set it yet. ``found_at``/``found_phys``: the
    ROM a scan found (linear address it was read at, physical address). A Linux guest that has
    not found the ROM yet will call it at PAGE_OFFSET + phys (it scans through its linear map),
    even while paging is still off; any other guest is placed where the scan found the ROM.
    """
    if pointer is not None:
        expr, value = pointer
        return Placement(value, f"the guest's {expr}")
    if found_phys is not None and pointer_exists == LINUX_ROM_POINTER:
        return Placement(LINUX_PAGE_OFFSET + found_phys,
                         f"where Linux calls it: PAGE_OFFSET + {found_phys:#x}")
    if found_at is not None:
        return Placement(found_at, "where the scan found it")
    return None


def check_elf(elf: ElfImage, image: bytes) -> str | None:
    """None when the ELF's code and read-only data are the bytes of ``image`` (the ROM read
    from the guest), else one line saying where they differ. Writable sections (the ROM's
    state) and the checksum byte are not compared: they change at run time."""
    for s in elf.sections:
        if (not s.flags & _SHF_ALLOC or s.flags & _SHF_WRITE or s.type == _SHT_NOBITS
                or not s.size or s.name == ".checksum"):
            continue
        if s.addr + s.size > len(image):
            return f"section {s.name} ({s.addr:#x}+{s.size:#x}) lies past the ROM's end"
        want = elf.image[s.offset:s.offset + s.size]
        got = image[s.addr:s.addr + s.size]
        if want != got:
            at = next(i for i in range(s.size) if want[i] != got[i])
            return (f"section {s.name} differs at offset {s.addr + at:#x} "
                    f"(ELF {want[at]:#04x}, ROM {got[at]:#04x}): not this ROM's ELF")
    return None


def entry_symbols(elf: ElfImage) -> dict[str, int]:
    """Every ``vmi_<Call>`` entry symbol of the ROM's ELF and its offset."""
    names = {f"{ENTRY_PREFIX}{c.name}" for c in VmiCall}
    return {name: value for value, _size, name in elf.symbols() if name in names}
