"""x86 facts the machine, the stub and the commands share: control-register and EFLAGS bits,
MSR numbers, and segment descriptors as the CPU reads them (Intel SDM Vol. 3A, chapters 3, 5
and 6). One place for each; the display tables (names of bits) live in ``vmigdb.decode``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CR0_PE = 1 << 0
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_SMEP = 1 << 20
EFER_NXE = 1 << 11
EFLAGS_TF = 1 << 8
EFLAGS_IF = 1 << 9
EFLAGS_NT = 1 << 14
EFLAGS_RF = 1 << 16
EFLAGS_VM = 1 << 17
MSR_SYSENTER_CS = 0x174
MSR_SYSENTER_ESP = 0x175
MSR_SYSENTER_EIP = 0x176
MSR_EFER = 0xC0000080
#: Exceptions that push an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})
VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                17: "#AC", 18: "#MC", 19: "#XM"}
GATE_INTERRUPT32, GATE_TRAP32 = 0xE, 0xF


def vector_name(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector}")


@dataclass(frozen=True)
class Descriptor:
    """An 8-byte GDT/LDT entry as the CPU caches it: base, limit (scaled by G), and the
    attribute bits as QEMU prints them (the high dword & 0x00F0FF00)."""

    base: int
    limit: int
    flags: int

    @classmethod
    def decode(cls, raw: bytes) -> Descriptor:
        lo, hi = struct.unpack("<II", raw)
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0x000F0000)
        if hi & 0x00800000:
            limit = (limit << 12) | 0xFFF
        return cls(base, limit, hi & 0x00F0FF00)

    @property
    def present(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def dpl(self) -> int:
        return (self.flags >> 13) & 3

    @property
    def is_code(self) -> bool:
        return bool(self.flags & 0x1000) and bool(self.flags & 0x800)

    @property
    def system_type(self) -> int:
        return (self.flags >> 8) & 0xF

    def kind(self) -> str:
        if not self.flags & 0x1000:  # system descriptor
            return {0x2: "LDT", 0x9: "TSS32-avl", 0xB: "TSS32-busy", 0xC: "CallGate32",
                    0xE: "IntGate32", 0xF: "TrapGate32"}.get(self.system_type, "system")
        bits = "32" if self.flags & 0x400000 else "16"
        a = "A" if self.flags & 0x100 else "-"
        if self.flags & 0x800:
            return (f"CS{bits} [{'C' if self.flags & 0x400 else '-'}"
                    f"{'R' if self.flags & 0x200 else '-'}{a}]")
        return (f"DS{bits} [{'E' if self.flags & 0x400 else '-'}"
                f"{'W' if self.flags & 0x200 else '-'}{a}]")


@dataclass(frozen=True)
class Gate:
    """An IDT entry: target selector and offset, type, DPL, present."""

    selector: int
    offset: int
    type: int
    dpl: int
    present: bool

    @classmethod
    def decode(cls, raw: bytes) -> Gate:
        lo, hi = struct.unpack("<II", raw)
        return cls(selector=lo >> 16, offset=(lo & 0xFFFF) | (hi & 0xFFFF0000),
                   type=(hi >> 8) & 0x1F, dpl=(hi >> 13) & 3, present=bool(hi & 0x8000))
