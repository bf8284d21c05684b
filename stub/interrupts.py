"""Protected-mode exception and interrupt delivery through the guest's IDT, done by the host.

Unicorn calls its INTR hook instead of QEMU's ``do_interrupt``, so nothing is pushed or
vectored unless we do it. This follows the SDM's protected-mode path for 32-bit interrupt and
trap gates: read the gate, push EFLAGS, CS, EIP (and the error code for 8, 10-14, 17), clear IF
for an interrupt gate, clear TF/NT/RF, load CS:EIP. A gate whose code segment is more
privileged than the current CPL switches to the TSS's SS0:ESP0 and pushes SS:ESP first (the
ring-3 ``int $0x80`` path). Segment bases of SS and the TSS stack are taken as flat (0), as
every guest here uses them. Task gates and 16-bit gates are not supported: delivery fails,
which escalates to #DF like any other delivery failure.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmigdb.stub.machine import Machine

#: Vectors that push an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})
VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                17: "#AC", 18: "#MC", 19: "#XM"}
_IF, _TF, _NT, _RF, _VM = 1 << 9, 1 << 8, 1 << 14, 1 << 16, 1 << 17
_INTERRUPT_GATE32, _TRAP_GATE32 = 0xE, 0xF


class DeliveryError(Exception):
    """The CPU could not deliver the event (on hardware: #GP/#NP/#PF during delivery)."""


def vector_name(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector}")


def deliver(m: Machine, vector: int, error_code: int | None, return_eip: int) -> int:
    """Deliver one event; return the handler's address. DeliveryError if it cannot be."""
    _sel, idt_base, idt_limit, _flags = m.uc_reg_tuple("idtr")
    if vector * 8 + 7 > idt_limit:
        raise DeliveryError(f"vector {vector} is beyond the IDT limit {idt_limit:#x}")
    gate = _read(m, idt_base + vector * 8, 8, "IDT entry")
    lo, hi = struct.unpack("<II", gate)
    if not hi & (1 << 15):
        raise DeliveryError(f"IDT gate {vector} is not present")
    gtype = (hi >> 8) & 0x1F
    if gtype not in (_INTERRUPT_GATE32, _TRAP_GATE32):
        raise DeliveryError(f"IDT gate {vector} has unsupported type {gtype:#x}")
    target_sel = lo >> 16
    target_eip = (lo & 0xFFFF) | (hi & 0xFFFF0000)
    cs_desc = _descriptor(m, target_sel)
    if not cs_desc[1] & (1 << 15) or not cs_desc[1] & (1 << 11):
        raise DeliveryError(f"IDT gate {vector} selector {target_sel:#x} is not a present "
                            "code segment")
    target_cpl = (cs_desc[1] >> 13) & 3
    cs = m.reg_read("cs")
    cpl = cs & 3
    eflags = m.reg_read("eflags")
    esp = m.reg_read("esp")
    frame = [eflags, cs, return_eip]
    new_ss = None
    if target_cpl < cpl:
        _sel, tss_base, tss_limit, _f = m.uc_reg_tuple("tr")
        if tss_limit < 9:
            raise DeliveryError("inward interrupt with no usable TSS")
        esp0, ss0 = struct.unpack("<IH", _read(m, tss_base + 4, 6, "TSS"))
        frame = [m.reg_read("ss"), esp] + frame
        new_ss, esp = ss0, esp0
    if error_code is not None:
        frame.append(error_code)
    esp = (esp - 4 * len(frame)) & 0xFFFFFFFF
    data = struct.pack(f"<{len(frame)}I", *reversed(frame))
    if not m.write_virt_data(esp, data):
        raise DeliveryError(f"stack at {esp:#x} is not mapped")
    if new_ss is not None:
        m.force_cpl0()
        m.reg_write("ss", new_ss)
    eflags &= ~(_TF | _NT | _RF | _VM)
    if gtype == _INTERRUPT_GATE32:
        eflags &= ~_IF
    m.reg_write("cs", target_sel)
    m.reg_write("esp", esp)
    m.reg_write("eflags", eflags)
    m.uc_set_eip(target_eip)
    return target_eip


def _read(m: Machine, va: int, size: int, what: str) -> bytes:
    data = m.read_cpu_or_none(va, size)
    if data is None:
        raise DeliveryError(f"{what} at {va:#x} is not mapped")
    return data


def _descriptor(m: Machine, selector: int) -> tuple[int, int]:
    if selector & 4:
        raise DeliveryError(f"selector {selector:#x} is in the LDT (not supported)")
    _s, base, limit, _f = m.uc_reg_tuple("gdtr")
    if (selector & ~7) + 7 > limit or selector & ~7 == 0:
        raise DeliveryError(f"selector {selector:#x} is outside the GDT")
    lo, hi = struct.unpack("<II", _read(m, base + (selector & ~7), 8, "GDT entry"))
    return lo, hi
