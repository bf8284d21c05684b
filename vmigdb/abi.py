"""The VMI 3.0 ABI as Linux 2.6.21-2.6.36 used it, as data.

This module is the one source of truth for VMI names, numbers and calling conventions: the ROM's
assembler constants and the guest's C constants are generated from it (``render_asm_header``,
``render_c_header``), and the tracer, decoder and views read it. Facts and their sources are in
``shared/reference/vmi-abi.md``; section numbers below refer to that file.

The last part, "vmigdb identity ROM", is not VMI: it is the contract between our ROM, our machine
and our tracer (the flush port and the layout of the PTE batch the ROM announces on it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag


class VmiCall(IntEnum):
    """VMI 3.0 call numbers: the argument of ``get_reloc`` (vmi-abi.md section 3.1)."""

    CPUID = 0
    WRMSR = 1
    RDMSR = 2
    SetGDT = 3
    SetLDT = 4
    SetIDT = 5
    SetTR = 6
    GetGDT = 7
    GetLDT = 8
    GetIDT = 9
    GetTR = 10
    WriteGDTEntry = 11
    WriteLDTEntry = 12
    WriteIDTEntry = 13
    UpdateKernelStack = 14
    SetCR0 = 15
    SetCR2 = 16
    SetCR3 = 17
    SetCR4 = 18
    GetCR0 = 19
    GetCR2 = 20
    GetCR3 = 21
    GetCR4 = 22
    WBINVD = 23
    SetDR = 24
    GetDR = 25
    RDPMC = 26
    RDTSC = 27
    CLTS = 28
    EnableInterrupts = 29
    DisableInterrupts = 30
    GetInterruptMask = 31
    SetInterruptMask = 32
    IRET = 33
    SYSEXIT = 34
    Halt = 35
    Reboot = 36
    Shutdown = 37
    SetPxE = 38
    SetPxELong = 39
    UpdatePxE = 40
    UpdatePxELong = 41
    MachineToPhysical = 42
    PhysicalToMachine = 43
    AllocatePage = 44
    ReleasePage = 45
    InvalPage = 46
    FlushTLB = 47
    SetLinearMapping = 48
    SetIOPLMask = 61
    SetInitialAPState = 62
    APICWrite = 63
    APICRead = 64
    IODelay = 65
    GetCycleFrequency = 66
    GetCycleCounter = 67
    SetAlarm = 68
    CancelAlarm = 69
    GetWallclockTime = 70
    WallclockUpdated = 71
    SetLazyMode = 73


#: One past the highest call number: the length of a table indexed by call number.
VMI_CALL_TABLE_LEN = max(VmiCall) + 1


class VmiRelocation(IntEnum):
    """``struct vmi_relocation_info.type`` (section 3.3)."""

    NONE = 0
    CALL_REL = 1
    JUMP_REL = 2
    NOP = 3


# --- ROM header (section 2) -------------------------------------------------------------------

VMI_SIGNATURE = 0x696D5663  # "cVmi" little-endian
ROM_SIGNATURE = 0xAA55  # bytes 55 AA
VMI_API_REV_MAJOR = 3
VMI_API_REV_MINOR = 0
PCI_VENDOR_ID_VMWARE = 0x15AD
PCI_DEVICE_ID_VMWARE_VMI = 0x0801
ROM_SCAN_START = 0xC0000
ROM_SCAN_END = 0xE0000
ROM_SCAN_STEP = 2048
ROM_BLOCK = 512  # rom_length unit
ACCEPTED_LICENSES = ("GPL", "GPL v2")


@dataclass(frozen=True)
class Field:
    """One field of a packed C structure: name, byte offset, size in bytes."""

    name: str
    offset: int
    size: int


#: ``struct vrom_header`` (packed, 144 bytes).
VROM_HEADER: tuple[Field, ...] = (
    Field("rom_signature", 0x00, 2),
    Field("rom_length", 0x02, 1),
    Field("rom_entry", 0x03, 4),
    Field("rom_pad0", 0x07, 1),
    Field("vrom_signature", 0x08, 4),
    Field("api_version_min", 0x0C, 1),
    Field("api_version_maj", 0x0D, 1),
    Field("jump_slots", 0x0E, 1),
    Field("reserved1", 0x0F, 1),
    Field("virtual_top", 0x10, 4),
    Field("reserved2", 0x14, 2),
    Field("license_offs", 0x16, 2),
    Field("pci_header_offs", 0x18, 2),
    Field("pnp_header_offs", 0x1A, 2),
    Field("rom_pad3", 0x1C, 4),
    Field("reserved", 0x20, 96),
    Field("vmi_init", 0x80, 8),
    Field("get_reloc", 0x88, 8),
)
VROM_HEADER_SIZE = 144

#: ``struct pci_header`` (packed, 24 bytes): the "PCIR" option-ROM data structure.
PCI_HEADER: tuple[Field, ...] = (
    Field("sig", 0, 4),
    Field("vendorID", 4, 2),
    Field("deviceID", 6, 2),
    Field("vpdData", 8, 2),
    Field("size", 10, 2),
    Field("rev", 12, 1),
    Field("class", 13, 1),
    Field("subclass", 14, 1),
    Field("interface", 15, 1),
    Field("chunks", 16, 2),
    Field("rom_version_min", 18, 1),
    Field("rom_version_maj", 19, 1),
    Field("codetype", 20, 1),
    Field("lastRom", 21, 1),
    Field("reserved", 22, 2),
)
PCI_HEADER_SIZE = 24

#: ``struct pnp_header`` (packed, 18 bytes).
PNP_HEADER: tuple[Field, ...] = (
    Field("sig", 0, 4),
    Field("rev", 4, 1),
    Field("size", 5, 1),
    Field("next", 6, 2),
    Field("res", 8, 2),
    Field("devID", 10, 4),
    Field("manufacturer_offset", 14, 2),
    Field("product_offset", 16, 2),
)
PNP_HEADER_SIZE = 18


def field(table: tuple[Field, ...], name: str) -> Field:
    """Look a field up by name in one of the layout tables above."""
    for f in table:
        if f.name == name:
            return f
    raise KeyError(name)


def packed(table: tuple[Field, ...]) -> struct.Struct:
    """The little-endian struct of a layout table of consecutive u32 fields, in field order
    (unpacking gives one int per field)."""
    at = 0
    for f in table:
        if (f.offset, f.size) != (at, 4):
            raise ValueError(f"{f.name}: not a u32 right after the field before it")
        at += 4
    return struct.Struct(f"<{len(table)}I")


# --- Page-table, flush and lazy-mode constants (section 5) -------------------------------------

VMI_PAGE_PT = 0x01
VMI_PAGE_PD = 0x02
VMI_PAGE_PDP = 0x04
VMI_PAGE_PML4 = 0x08
VMI_PAGE_NORMAL = 0x00
VMI_PAGE_PAE = 0x10  # Allocate/ReleasePage
VMI_PAGE_CLONE = 0x20  # AllocatePage
VMI_PAGE_ZEROED = 0x40  # AllocatePage
VMI_PAGE_CURRENT_AS = 0x10  # PTE updates
VMI_PAGE_DEFER = 0x20  # PTE updates
VMI_PAGE_VA_MASK = 0xFFFFF000
VMI_PAGE_L1 = VMI_PAGE_PT | VMI_PAGE_ZEROED
VMI_PAGE_L2 = VMI_PAGE_PD | VMI_PAGE_ZEROED

VMI_FLUSH_TLB = 0x01
VMI_FLUSH_GLOBAL = 0x02

VMI_LAZY_MODE_OFF = 0x00
VMI_LAZY_MMU_UPDATES = 0x01
VMI_LAZY_CPU_STATE = 0x02

VMI_LINEAR_MAP_SLOTS = 4

#: Bits of the flags word of a PTE update call (SetPxE, SetPxELong, UpdatePxE, UpdatePxELong).
PTE_UPDATE_FLAG_BITS: tuple[tuple[int, str], ...] = (
    (VMI_PAGE_PT, "PT"),
    (VMI_PAGE_PD, "PD"),
    (VMI_PAGE_PDP, "PDP"),
    (VMI_PAGE_PML4, "PML4"),
    (VMI_PAGE_CURRENT_AS, "CURRENT_AS"),
    (VMI_PAGE_DEFER, "DEFER"),
)

#: Bits of the flags word of AllocatePage / ReleasePage.
ALLOC_FLAG_BITS: tuple[tuple[int, str], ...] = (
    (VMI_PAGE_PT, "PT"),
    (VMI_PAGE_PD, "PD"),
    (VMI_PAGE_PDP, "PDP"),
    (VMI_PAGE_PML4, "PML4"),
    (VMI_PAGE_PAE, "PAE"),
    (VMI_PAGE_CLONE, "CLONE"),
    (VMI_PAGE_ZEROED, "ZEROED"),
)

FLUSH_FLAG_BITS: tuple[tuple[int, str], ...] = (
    (VMI_FLUSH_TLB, "TLB"),
    (VMI_FLUSH_GLOBAL, "GLOBAL"),
)

LAZY_MODE_NAMES: dict[int, str] = {
    VMI_LAZY_MODE_OFF: "OFF",
    VMI_LAZY_MMU_UPDATES: "MMU",
    VMI_LAZY_CPU_STATE: "CPU",
}


# --- Calling conventions (section 4) ------------------------------------------------------------


class Clobbers(IntFlag):
    """What a ROM call may change besides its results."""

    FLAGS = 1
    EAX = 2
    ECX = 4
    EDX = 8
    MEMORY = 16
    STANDARD = FLAGS | EAX | ECX | EDX


#: Where an argument lives at the ROM entry: a register, or a dword on the stack above the
#: return address (``stack0`` is ``[esp+4]`` at entry, ``stack1`` is ``[esp+8]``).
ARG_LOCATIONS = ("eax", "edx", "ecx", "stack0", "stack1", "stack2", "stack3", "stack4")


@dataclass(frozen=True)
class Arg:
    """One argument of a ROM call: its name, where it is passed, and how to decode it.

    ``kind`` names a decoder (``vmigdb.decode``): u32, va, pa, pfn, selector, msr, cr0, cr3,
    cr4, pte, pte_hi, ptep, pte_flags, alloc_flags, flush_flags, lazy_mode, eflags, iopl_mask,
    dtr_ptr, dt_base, index, desc_lo, desc_hi, dr, leaf, count, slot, reboot.
    """

    name: str
    loc: str
    kind: str = "u32"


@dataclass(frozen=True)
class CallSpec:
    """One VMI call: arguments, results, clobbers and the native instruction it stands for."""

    call: VmiCall
    args: tuple[Arg, ...] = ()
    results: tuple[str, ...] = ()
    clobbers: Clobbers = Clobbers.STANDARD
    native: str = ""
    returns: bool = True  # IRET and SYSEXIT never return to the caller

    @property
    def name(self) -> str:
        return self.call.name


_A = Arg
_FLAGS_ONLY = Clobbers.FLAGS
_STD_MEM = Clobbers.STANDARD | Clobbers.MEMORY

CALLS: dict[VmiCall, CallSpec] = {
    s.call: s
    for s in (
        CallSpec(VmiCall.CPUID, (_A("leaf", "eax", "leaf"), _A("subleaf", "ecx")),
                 ("eax", "ebx", "ecx", "edx"), _FLAGS_ONLY, "cpuid"),
        CallSpec(VmiCall.WRMSR, (_A("msr", "ecx", "msr"), _A("lo", "eax"), _A("hi", "edx")),
                 (), _STD_MEM, "wrmsr"),
        CallSpec(VmiCall.RDMSR, (_A("msr", "ecx", "msr"),), ("eax", "edx"), Clobbers.STANDARD,
                 "rdmsr"),
        CallSpec(VmiCall.SetGDT, (_A("desc", "eax", "dtr_ptr"),), (), _STD_MEM, "lgdt"),
        CallSpec(VmiCall.SetLDT, (_A("sel", "eax", "selector"),), (), _STD_MEM, "lldt"),
        CallSpec(VmiCall.SetIDT, (_A("desc", "eax", "dtr_ptr"),), (), _STD_MEM, "lidt"),
        CallSpec(VmiCall.SetTR, (_A("sel", "eax", "selector"),), (), _STD_MEM, "ltr"),
        CallSpec(VmiCall.GetGDT, (_A("desc", "eax", "dtr_ptr"),), (), _STD_MEM, "sgdt"),
        CallSpec(VmiCall.GetLDT, (), ("eax",), Clobbers.STANDARD, "sldt"),
        CallSpec(VmiCall.GetIDT, (_A("desc", "eax", "dtr_ptr"),), (), _STD_MEM, "sidt"),
        CallSpec(VmiCall.GetTR, (), ("eax",), Clobbers.STANDARD, "str"),
        CallSpec(VmiCall.WriteGDTEntry,
                 (_A("table", "eax", "dt_base"), _A("entry", "edx", "index"),
                  _A("lo", "ecx", "desc_lo"), _A("hi", "stack0", "desc_hi")),
                 (), _STD_MEM, "mov"),
        CallSpec(VmiCall.WriteLDTEntry,
                 (_A("table", "eax", "dt_base"), _A("entry", "edx", "index"),
                  _A("lo", "ecx", "desc_lo"), _A("hi", "stack0", "desc_hi")),
                 (), _STD_MEM, "mov"),
        CallSpec(VmiCall.WriteIDTEntry,
                 (_A("table", "eax", "dt_base"), _A("entry", "edx", "index"),
                  _A("lo", "ecx", "desc_lo"), _A("hi", "stack0", "desc_hi")),
                 (), _STD_MEM, "mov"),
        CallSpec(VmiCall.UpdateKernelStack, (_A("tss", "eax"), _A("esp0", "edx", "va")),
                 (), _STD_MEM, "mov"),
        CallSpec(VmiCall.SetCR0, (_A("value", "eax", "cr0"),), (), Clobbers.STANDARD,
                 "mov %cr0"),
        CallSpec(VmiCall.SetCR2, (_A("value", "eax", "va"),), (), Clobbers.STANDARD,
                 "mov %cr2"),
        CallSpec(VmiCall.SetCR3, (_A("value", "eax", "cr3"),), (), _STD_MEM, "mov %cr3"),
        CallSpec(VmiCall.SetCR4, (_A("value", "eax", "cr4"),), (), Clobbers.STANDARD,
                 "mov %cr4"),
        CallSpec(VmiCall.GetCR0, (), ("eax",), Clobbers.STANDARD, "mov %cr0"),
        CallSpec(VmiCall.GetCR2, (), ("eax",), Clobbers.STANDARD, "mov %cr2"),
        CallSpec(VmiCall.GetCR3, (), ("eax",), Clobbers.STANDARD, "mov %cr3"),
        CallSpec(VmiCall.GetCR4, (), ("eax",), Clobbers.STANDARD, "mov %cr4"),
        CallSpec(VmiCall.WBINVD, (), (), Clobbers.STANDARD, "wbinvd"),
        CallSpec(VmiCall.SetDR, (_A("num", "eax", "dr"), _A("value", "edx")), (),
                 Clobbers.STANDARD, "mov %drN"),
        CallSpec(VmiCall.GetDR, (_A("num", "eax", "dr"),), ("eax",), Clobbers.STANDARD,
                 "mov %drN"),
        CallSpec(VmiCall.RDPMC, (_A("counter", "ecx"),), ("eax", "edx"), Clobbers.STANDARD,
                 "rdpmc"),
        CallSpec(VmiCall.RDTSC, (), ("eax", "edx"), Clobbers.STANDARD, "rdtsc"),
        CallSpec(VmiCall.CLTS, (), (), Clobbers.STANDARD, "clts"),
        CallSpec(VmiCall.EnableInterrupts, (), (), _FLAGS_ONLY, "sti"),
        CallSpec(VmiCall.DisableInterrupts, (), (), _FLAGS_ONLY, "cli"),
        CallSpec(VmiCall.GetInterruptMask, (), ("eax",), _FLAGS_ONLY, "pushf; pop"),
        CallSpec(VmiCall.SetInterruptMask, (_A("mask", "eax", "eflags"),), (), _FLAGS_ONLY,
                 "push; popf"),
        CallSpec(VmiCall.IRET, (), (), Clobbers.STANDARD, "iret", returns=False),
        CallSpec(VmiCall.SYSEXIT, (_A("eip", "edx", "va"), _A("esp", "ecx", "va")), (),
                 Clobbers.STANDARD, "sti; sysexit", returns=False),
        CallSpec(VmiCall.Halt, (), (), Clobbers.STANDARD, "sti; hlt"),
        CallSpec(VmiCall.Reboot, (_A("how", "eax", "reboot"),), (), Clobbers.STANDARD,
                 "out 0x64"),
        CallSpec(VmiCall.Shutdown, (), (), Clobbers.STANDARD, "out 0xf4"),
        CallSpec(VmiCall.SetPxE,
                 (_A("pte", "eax", "pte"), _A("ptep", "edx", "ptep"),
                  _A("flags", "ecx", "pte_flags")),
                 (), _STD_MEM, "mov"),
        CallSpec(VmiCall.SetPxELong,
                 (_A("pte", "eax", "pte"), _A("pte_hi", "edx", "pte_hi"),
                  _A("ptep", "ecx", "ptep"), _A("flags", "stack0", "pte_flags")),
                 (), _STD_MEM, "mov; mov"),
        CallSpec(VmiCall.UpdatePxE, (_A("ptep", "eax", "ptep"), _A("flags", "edx", "pte_flags")),
                 (), _STD_MEM, "invlpg"),
        CallSpec(VmiCall.UpdatePxELong,
                 (_A("ptep", "eax", "ptep"), _A("flags", "edx", "pte_flags")),
                 (), _STD_MEM, "invlpg"),
        CallSpec(VmiCall.MachineToPhysical, (_A("mfn", "eax", "pfn"),), ("eax",)),
        CallSpec(VmiCall.PhysicalToMachine, (_A("pfn", "eax", "pfn"),), ("eax",)),
        CallSpec(VmiCall.AllocatePage,
                 (_A("pfn", "eax", "pfn"), _A("flags", "edx", "alloc_flags"),
                  _A("clone_pfn", "ecx", "pfn"), _A("start", "stack0", "index"),
                  _A("count", "stack1", "count")),
                 (), _STD_MEM, ""),
        CallSpec(VmiCall.ReleasePage, (_A("pfn", "eax", "pfn"), _A("flags", "edx", "alloc_flags")),
                 (), _STD_MEM, ""),
        CallSpec(VmiCall.InvalPage, (_A("va", "eax", "va"),), (), _STD_MEM, "invlpg"),
        CallSpec(VmiCall.FlushTLB, (_A("flags", "eax", "flush_flags"),), (), _STD_MEM,
                 "mov %cr3"),
        CallSpec(VmiCall.SetLinearMapping,
                 (_A("slot", "eax", "slot"), _A("va", "edx", "va"), _A("pages", "ecx", "count"),
                  _A("pfn", "stack0", "pfn")),
                 (), Clobbers.STANDARD, ""),
        CallSpec(VmiCall.SetIOPLMask, (_A("mask", "eax", "iopl_mask"),), (), Clobbers.STANDARD,
                 "pushf; popf"),
        CallSpec(VmiCall.SetInitialAPState, (_A("state", "eax", "va"), _A("apic_id", "edx")), ()),
        CallSpec(VmiCall.APICWrite, (_A("reg", "eax"), _A("value", "edx")), ()),
        CallSpec(VmiCall.APICRead, (_A("reg", "eax"),), ("eax",)),
        CallSpec(VmiCall.IODelay, (), (), Clobbers.STANDARD, "out 0x80"),
        CallSpec(VmiCall.GetCycleFrequency, (), ("eax", "edx")),
        CallSpec(VmiCall.GetCycleCounter, (_A("which", "eax"),), ("eax", "edx")),
        CallSpec(VmiCall.SetAlarm,
                 (_A("flags", "eax"), _A("expiry_lo", "edx"), _A("expiry_hi", "ecx"),
                  _A("period_lo", "stack0"), _A("period_hi", "stack1")), ()),
        CallSpec(VmiCall.CancelAlarm, (_A("flags", "eax"),), ("eax",)),
        CallSpec(VmiCall.GetWallclockTime, (), ("eax", "edx")),
        CallSpec(VmiCall.WallclockUpdated, (), ("eax",)),
        CallSpec(VmiCall.SetLazyMode, (_A("mode", "eax", "lazy_mode"),), (), _STD_MEM, ""),
    )
}

#: The jump points in the header, called like functions (section 2).
VMI_INIT_OFFSET = field(VROM_HEADER, "vmi_init").offset
GET_RELOC_OFFSET = field(VROM_HEADER, "get_reloc").offset


# --- vmigdb identity ROM ------------------------------------------------------------------------
# Not VMI: our ROM's contract with our machine, tracer and guest.

#: Calls the identity ROM implements (get_reloc answers CALL_REL); every other call answers NONE.
#: The timer calls answer NONE so a Linux VMI kernel keeps its native timers.
IDENTITY_ROM_CALLS: frozenset[VmiCall] = frozenset(
    VmiCall[n]
    for n in (
        "CPUID", "WRMSR", "RDMSR", "SetGDT", "SetLDT", "SetIDT", "SetTR", "GetGDT", "GetLDT",
        "GetIDT", "GetTR", "WriteGDTEntry", "WriteLDTEntry", "WriteIDTEntry", "UpdateKernelStack",
        "SetCR0", "SetCR2", "SetCR3", "SetCR4", "GetCR0", "GetCR2", "GetCR3", "GetCR4", "WBINVD",
        "SetDR", "GetDR", "RDPMC", "RDTSC", "CLTS", "EnableInterrupts", "DisableInterrupts",
        "GetInterruptMask", "SetInterruptMask", "IRET", "SYSEXIT", "Halt", "Reboot", "Shutdown",
        "SetPxE", "SetPxELong", "UpdatePxE", "UpdatePxELong", "AllocatePage", "ReleasePage",
        "InvalPage", "FlushTLB", "SetLinearMapping", "SetIOPLMask", "IODelay", "SetLazyMode",
    )
)

#: The ROM announces each batch flush with one ``outl %eax, (%dx)`` on this port, EAX holding
#: the linear address of the batch (``struct vmi_batch`` below). QEMU ignores the port.
ROM_FLUSH_PORT = 0x5E0
#: ``vmi_init`` announces itself with one ``outl %eax, (%dx)`` on this port, EAX holding the
#: ROM's linear base address (2 KiB aligned) ORed with 1 when its state is writable (batching on).
#: That is how the machine and the tracer find a ROM the guest copied to RAM.
ROM_INIT_PORT = 0x5E4
ROM_INIT_BATCHED = 0x1

#: vmigdb's own fields in ``vrom_header.reserved`` (Linux never reads them): where the per-call
#: entry table and the writable state sit in the image, so tools find entries without running it.
VMIGDB_HEADER: tuple[Field, ...] = (
    Field("call_table_offs", 0x20, 2),  # u16 offsets of each call's entry, 0 = not implemented
    Field("state_offs", 0x22, 2),  # offset of the writable state (struct vmi_batch first)
    Field("vmigdb_magic", 0x24, 4),  # ROM_VMIGDB_MAGIC
)
ROM_VMIGDB_MAGIC = 0x62646776  # "vgdb"

#: Number of queue entries; a deferred update that finds the queue full flushes it first.
ROM_QUEUE_LEN = 128


class FlushTrigger(IntEnum):
    """Why the ROM flushed its PTE queue (``vmi_batch.trigger``)."""

    SetLazyMode = 1  # SetLazyMode leaving lazy MMU mode
    FlushTLB = 2
    InvalPage = 3
    SetCR3 = 4
    QueueFull = 5
    Ordering = 6  # an undeferred PTE update arrived while updates were queued


class TlbAction(IntEnum):
    """The single TLB action that ends a flush (``vmi_batch.tlb_action``)."""

    NONE = 0  # the trigger itself flushes (FlushTLB, SetCR3)
    INVLPG = 1  # one invlpg per queued VA (VAs known, at most ROM_INVLPG_MAX of them)
    FULL = 2  # reload CR3


#: A flush invalidates page by page only when it has at most this many VAs, all known.
ROM_INVLPG_MAX = 16

#: ``struct vmi_batch``: the header the flush port points to, followed by ``count`` entries.
VMI_BATCH: tuple[Field, ...] = (
    Field("magic", 0, 4),  # ROM_BATCH_MAGIC
    Field("seq", 4, 4),  # batch number, from 1
    Field("count", 8, 4),  # entries in this batch
    Field("trigger", 12, 4),  # FlushTrigger
    Field("tlb_action", 16, 4),  # TlbAction
    Field("lazy_mode", 20, 4),  # the ROM's lazy mode when the flush started
)
VMI_BATCH_SIZE = 24
VMI_BATCH_HEADER = packed(VMI_BATCH)
ROM_BATCH_MAGIC = 0x68637462  # "btch"

#: ``struct vmi_batch_entry``: one queued update, applied in queue order.
VMI_BATCH_ENTRY: tuple[Field, ...] = (
    Field("ptep", 0, 4),  # linear address of the entry
    Field("flags", 4, 4),  # the call's flags word, plus the ENTRY_* bits below
    Field("lo", 8, 4),  # new value (low dword); unused for an UpdatePxE notification
    Field("hi", 12, 4),  # new high dword (SetPxELong)
)
VMI_BATCH_ENTRY_SIZE = 16
VMI_BATCH_ENTRY_STRUCT = packed(VMI_BATCH_ENTRY)
#: Bits the ROM ORs into an entry's flags word (free in the VMI PTE-update flags).
ENTRY_LONG = 0x400  # a 64-bit (PAE) update: write hi then lo
ENTRY_NOTIFY = 0x800  # UpdatePxE(Long): the guest already wrote the entry; only invalidate


# --- Header generation ------------------------------------------------------------------------


def _constants() -> list[tuple[str, int, str]]:
    """(name, value, comment) for every constant shared with assembler and C."""
    out: list[tuple[str, int, str]] = []
    for c in VmiCall:
        out.append((f"VMI_CALL_{c.name}", int(c), ""))
    out.append(("VMI_CALL_TABLE_LEN", VMI_CALL_TABLE_LEN, "entries in a per-call table"))
    for r in VmiRelocation:
        out.append((f"VMI_RELOCATION_{r.name}", int(r), ""))
    scalars = (
        "VMI_SIGNATURE", "ROM_SIGNATURE", "VMI_API_REV_MAJOR", "VMI_API_REV_MINOR",
        "PCI_VENDOR_ID_VMWARE", "PCI_DEVICE_ID_VMWARE_VMI", "ROM_SCAN_START", "ROM_SCAN_END",
        "ROM_SCAN_STEP", "ROM_BLOCK", "VROM_HEADER_SIZE", "PCI_HEADER_SIZE", "PNP_HEADER_SIZE",
        "VMI_PAGE_PT", "VMI_PAGE_PD", "VMI_PAGE_PDP", "VMI_PAGE_PML4", "VMI_PAGE_NORMAL",
        "VMI_PAGE_PAE", "VMI_PAGE_CLONE", "VMI_PAGE_ZEROED", "VMI_PAGE_CURRENT_AS",
        "VMI_PAGE_DEFER", "VMI_PAGE_VA_MASK", "VMI_PAGE_L1", "VMI_PAGE_L2", "VMI_FLUSH_TLB",
        "VMI_FLUSH_GLOBAL", "VMI_LAZY_MODE_OFF", "VMI_LAZY_MMU_UPDATES", "VMI_LAZY_CPU_STATE",
        "VMI_LINEAR_MAP_SLOTS", "ROM_FLUSH_PORT", "ROM_INIT_PORT", "ROM_INIT_BATCHED",
        "ROM_VMIGDB_MAGIC", "ROM_QUEUE_LEN", "ROM_INVLPG_MAX", "VMI_BATCH_SIZE",
        "ROM_BATCH_MAGIC", "VMI_BATCH_ENTRY_SIZE", "ENTRY_LONG", "ENTRY_NOTIFY",
    )
    g = globals()
    out += [(n, g[n], "") for n in scalars]
    for prefix, table in (
        ("VROM", VROM_HEADER),
        ("PCI", PCI_HEADER),
        ("PNP", PNP_HEADER),
        ("VMIGDB", VMIGDB_HEADER),
        ("BATCH", VMI_BATCH),
        ("BATCH_ENTRY", VMI_BATCH_ENTRY),
    ):
        for f in table:
            out.append((f"{prefix}_{f.name.upper()}", f.offset, f"{f.size} byte(s)"))
    for t in FlushTrigger:
        out.append((f"FLUSH_TRIGGER_{t.name}", int(t), ""))
    for a in TlbAction:
        out.append((f"TLB_ACTION_{a.name}", int(a), ""))
    for c in sorted(IDENTITY_ROM_CALLS):
        out.append((f"ROM_IMPLEMENTS_{c.name}", 1, ""))
    return out


_BANNER = "Generated from vmigdb/abi.py by `python -m vmigdb.rom header`: do not edit."


def render_asm_header() -> str:
    """The constants as GNU as ``.equ`` lines, for ``rom/vmi_rom.S``."""
    lines = [f"/* {_BANNER} */"]
    for name, value, comment in _constants():
        tail = f"  /* {comment} */" if comment else ""
        lines.append(f".equ {name}, {value:#x}{tail}")
    return "\n".join(lines) + "\n"


def render_c_header() -> str:
    """The constants as C ``#define`` lines, for the guest."""
    lines = [f"/* {_BANNER} */", "#ifndef VMI_ABI_H", "#define VMI_ABI_H"]
    for name, value, comment in _constants():
        tail = f"  /* {comment} */" if comment else ""
        lines.append(f"#define {name} {value:#x}u{tail}")
    lines.append("static const char *const vmi_call_names[VMI_CALL_TABLE_LEN] __attribute__((unused)) = {")
    for c in VmiCall:
        lines.append(f'    [{int(c)}] = "{c.name}",')
    lines.append("};")
    lines.append("#endif")
    return "\n".join(lines) + "\n"
