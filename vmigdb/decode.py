"""Decoding for people: ROM-call arguments by their ABI kind, and x86 code with capstone.

One table per fact (bit, name); renderers call ``describe`` and never restate the tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from vmigdb import abi, pagetable

CR0_BITS: tuple[tuple[int, str], ...] = (
    (0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"), (18, "AM"),
    (29, "NW"), (30, "CD"), (31, "PG"),
)
CR4_BITS: tuple[tuple[int, str], ...] = (
    (0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"),
    (7, "PGE"), (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (16, "FSGSBASE"), (17, "PCIDE"),
    (18, "OSXSAVE"), (20, "SMEP"), (21, "SMAP"),
)
EFLAGS_BITS: tuple[tuple[int, str], ...] = (
    (0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
    (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"), (20, "VIP"),
    (21, "ID"),
)
EFER_BITS: tuple[tuple[int, str], ...] = ((0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE"))
MXCSR_BITS: tuple[tuple[int, str], ...] = (
    (0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "DAZ"), (7, "IM"),
    (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"), (12, "PM"), (15, "FZ"),
)
#: x86 page-table entry bits (both levels, 2-level and PAE): the walker's own table.
PTE_BITS = pagetable.PTE_FLAG_BITS
MSR_NAMES: dict[int, str] = {
    0x10: "IA32_TIME_STAMP_COUNTER",
    0x1B: "IA32_APIC_BASE",
    0x174: "IA32_SYSENTER_CS",
    0x175: "IA32_SYSENTER_ESP",
    0x176: "IA32_SYSENTER_EIP",
    0x277: "IA32_PAT",
    0xC0000080: "IA32_EFER",
    0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE",
}


def bit_names(value: int, table: Iterable[tuple[int, str]]) -> list[str]:
    """Names of the set bits, in table order."""
    return [name for bit, name in table if value >> bit & 1]


def mask_names(value: int, table: Iterable[tuple[int, str]]) -> list[str]:
    """Names of the set masks of a (mask, name) table such as abi.PTE_UPDATE_FLAG_BITS."""
    return [name for mask, name in table if value & mask]


def describe_pte(value: int) -> str:
    """``0x00123067 pfn=0x123 P RW US A D`` style: frame and flags."""
    flags = bit_names(value, PTE_BITS)
    return f"pfn={value >> 12 & 0xFFFFFFFFFF:#x} " + (" ".join(flags) if flags else "-")


def describe_selector(sel: int) -> str:
    table = "LDT" if sel & 4 else "GDT"
    return f"{table}[{sel >> 3}] RPL{sel & 3}"


def describe(kind: str, value: int) -> str:
    """A human reading of one argument or result, by the ``Arg.kind`` names in abi.CALLS."""
    if kind == "cr0":
        return " ".join(bit_names(value, CR0_BITS)) or "-"
    if kind == "cr4":
        return " ".join(bit_names(value, CR4_BITS)) or "-"
    if kind == "cr3":
        return f"pgdir={value & ~0xFFF:#x}" + (" PWT" if value & 8 else "") + (
            " PCD" if value & 16 else "")
    if kind == "eflags":
        return "IF" if value & 0x200 else "-IF"
    if kind in ("pte", "pte_hi"):
        return describe_pte(value)
    if kind == "pte_flags":
        names = mask_names(value & 0xFFF & ~(abi.ENTRY_LONG | abi.ENTRY_NOTIFY),
                           abi.PTE_UPDATE_FLAG_BITS)
        if value & abi.VMI_PAGE_CURRENT_AS:
            names.append(f"va={value & abi.VMI_PAGE_VA_MASK:#x}")
        return " ".join(names) or "NORMAL"
    if kind == "alloc_flags":
        return " ".join(mask_names(value, abi.ALLOC_FLAG_BITS)) or "NORMAL"
    if kind == "flush_flags":
        return " ".join(mask_names(value, abi.FLUSH_FLAG_BITS)) or "-"
    if kind == "lazy_mode":
        return abi.LAZY_MODE_NAMES.get(value, "?")
    if kind == "selector":
        return describe_selector(value)
    if kind == "msr":
        return MSR_NAMES.get(value, "")
    if kind == "iopl_mask":
        return f"IOPL={value >> 12 & 3}"
    if kind == "dr":
        return f"DR{value}"
    if kind == "leaf":
        return {0: "vendor", 1: "features"}.get(value, "")
    return ""


# --- capstone ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Insn:
    """One decoded instruction."""

    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@lru_cache(maxsize=1)
def _cs():
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    md.detail = False
    return md


def disassemble(code: bytes, address: int, count: int = 0) -> list[Insn]:
    """Decode 32-bit x86; stops at the first byte capstone cannot decode."""
    return [Insn(i.address, i.size, i.mnemonic, i.op_str, bytes(i.bytes))
            for i in _cs().disasm(code, address, count)]


def disassemble_until_ret(code: bytes, address: int, limit: int = 64) -> list[Insn]:
    """A ROM entry's body: up to and including its first ret/iret/sysexit/jmp."""
    out: list[Insn] = []
    for insn in disassemble(code, address, limit):
        out.append(insn)
        if insn.mnemonic in ("ret", "iretd", "iret", "sysexit", "jmp", "retf", "lret"):
            break
    return out


def call_target(insn: Insn) -> int | None:
    """The destination of a direct ``call rel32``, else None."""
    if insn.mnemonic == "call" and insn.raw[:1] == b"\xe8" and insn.size == 5:
        rel = int.from_bytes(insn.raw[1:5], "little", signed=True)
        return (insn.address + 5 + rel) & 0xFFFFFFFF
    return None


def is_nop(insn: Insn) -> bool:
    """An instruction that does nothing, in any of the encodings patchers pad with: ``nop`` (one
    byte, ``66 90``, ``0f 1f /0``), and the generic NOPs Linux's add_nops() uses on CPUs without
    NOPL (``mov esi, esi``, ``lea esi, [esi]``, ``xchg reg, reg``)."""
    if insn.mnemonic == "nop":
        return True
    if insn.mnemonic in ("mov", "xchg", "lea"):
        parts = [p.strip() for p in insn.op_str.split(",")]
        if len(parts) == 2:
            a, b = parts
            return a == b.strip("[]") if insn.mnemonic == "lea" else a == b
    return False


def is_padding(code: bytes, address: int) -> bool:
    """True when ``code`` decodes entirely into NOPs (``is_nop``); True for no bytes."""
    insns = disassemble(code, address)
    return sum(i.size for i in insns) == len(code) and all(is_nop(i) for i in insns)
