"""Protected-mode event delivery through the guest's IDT, and SYSENTER, done by the host.

Unicorn calls its INTR hook instead of QEMU's ``do_interrupt``, so nothing is pushed or
vectored unless we do it; external interrupts have no path into Unicorn at all. This follows
the SDM's protected-mode path for 32-bit interrupt and trap gates: read the gate, push EFLAGS,
CS, EIP (and the error code for 8, 10-14, 17), clear IF for an interrupt gate, clear TF/NT/RF,
load CS:EIP. A gate whose code segment is more privileged than the current CPL switches to the
TSS's SS0:ESP0 and pushes SS:ESP first (ring 3 interrupted, or ``int $0x80``). Segment bases of
SS and the TSS stack are taken as flat (0), as every guest here uses them. Task gates and
16-bit gates are not supported: delivery fails, which escalates to #DF like any other delivery
failure.

SYSENTER: Unicorn 2.1.4's helper only calls hooks and steps over the instruction (it is its
stand-in for user-mode syscalls), so a guest's SYSENTER never reached the kernel and ran on in
ring 3 two bytes later. ``sysenter`` does what the SDM says, and leaves EIP two bytes short
because the helper adds the instruction's length after its hooks.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vmigdb import x86

if TYPE_CHECKING:
    from vmigdb.stub.machine.cpu import Cpu

SYSENTER_LENGTH = 2  # what Unicorn's helper_sysenter adds to EIP after its hooks


class DeliveryError(Exception):
    """The CPU could not deliver the event (on hardware: #GP/#NP/#PF during delivery)."""


def deliver(cpu: Cpu, vector: int, error_code: int | None, return_eip: int) -> int:
    """Deliver one event; return the handler's address. DeliveryError if it cannot be."""
    regs = cpu.regs
    _sel, idt_base, idt_limit, _flags = regs.table("idtr")
    if vector * 8 + 7 > idt_limit:
        raise DeliveryError(f"vector {vector} is beyond the IDT limit {idt_limit:#x}")
    gate = x86.Gate.decode(_read(cpu, idt_base + vector * 8, 8, "IDT entry"))
    if not gate.present:
        raise DeliveryError(f"IDT gate {vector} is not present")
    if gate.type not in (x86.GATE_INTERRUPT32, x86.GATE_TRAP32):
        raise DeliveryError(f"IDT gate {vector} has unsupported type {gate.type:#x}")
    cs_desc = _descriptor(cpu, gate.selector)
    if not cs_desc.present or not cs_desc.is_code:
        raise DeliveryError(f"IDT gate {vector} selector {gate.selector:#x} is not a present "
                            "code segment")
    cs = regs.read("cs")
    cpl = cs & 3
    eflags = regs.read("eflags")
    esp = regs.read("esp")
    frame = [eflags, cs, return_eip]
    new_ss = None
    if cs_desc.dpl < cpl:
        _sel, tss_base, tss_limit, _f = regs.table("tr")
        if tss_limit < 9:
            raise DeliveryError("inward interrupt with no usable TSS")
        esp0, ss0 = struct.unpack("<IH", _read(cpu, tss_base + 4, 6, "TSS"))
        frame = [regs.read("ss"), esp] + frame
        new_ss, esp = ss0, esp0
    if error_code is not None:
        frame.append(error_code)
    esp = (esp - 4 * len(frame)) & 0xFFFFFFFF
    data = struct.pack(f"<{len(frame)}I", *reversed(frame))
    if not cpu.memory.write_virt_data(esp, data):
        raise DeliveryError(f"stack at {esp:#x} is not mapped")
    if new_ss is not None:
        regs.ctx.force_cpl0()
        regs.write("ss", new_ss)
    eflags &= ~(x86.EFLAGS_TF | x86.EFLAGS_NT | x86.EFLAGS_RF | x86.EFLAGS_VM)
    if gate.type == x86.GATE_INTERRUPT32:
        eflags &= ~x86.EFLAGS_IF
    regs.write("cs", gate.selector)
    regs.write("esp", esp)
    regs.write("eflags", eflags)
    regs.write("eip", gate.offset)
    return gate.offset


def sysenter(cpu: Cpu) -> bool:
    """SYSENTER as the SDM defines it (flat ring-0 CS from IA32_SYSENTER_CS, SS after it,
    ESP and EIP from their MSRs, VM/IF/RF cleared); False (the caller raises #GP) when
    IA32_SYSENTER_CS is 0."""
    uc = cpu.uc
    cs = uc.msr_read(x86.MSR_SYSENTER_CS) & 0xFFFC
    if cs == 0:
        return False
    esp = uc.msr_read(x86.MSR_SYSENTER_ESP) & 0xFFFFFFFF
    eip = uc.msr_read(x86.MSR_SYSENTER_EIP) & 0xFFFFFFFF
    eflags = cpu.regs.read("eflags") & ~(x86.EFLAGS_VM | x86.EFLAGS_IF | x86.EFLAGS_RF)
    cpu.regs.ctx.load_flat_ring0(cs, cs + 8)
    cpu.regs.write("esp", esp)
    cpu.regs.write("eflags", eflags)
    cpu.regs.write("eip", (eip - SYSENTER_LENGTH) & 0xFFFFFFFF)
    return True


def _read(cpu: Cpu, va: int, size: int, what: str) -> bytes:
    data = cpu.memory.read_cpu_or_none(va, size)
    if data is None:
        raise DeliveryError(f"{what} at {va:#x} is not mapped")
    return data


def _descriptor(cpu: Cpu, selector: int) -> x86.Descriptor:
    if selector & 4:
        raise DeliveryError(f"selector {selector:#x} is in the LDT (not supported)")
    _s, base, limit, _f = cpu.regs.table("gdtr")
    if (selector & ~7) + 7 > limit or selector & ~7 == 0:
        raise DeliveryError(f"selector {selector:#x} is outside the GDT")
    return x86.Descriptor.decode(_read(cpu, base + (selector & ~7), 8, "GDT entry"))
