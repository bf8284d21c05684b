"""Linux's pv-ops as its VMI backend uses them: slots, the patch rule, what activate_vmi fills.

Pure: no gdb. The edge reads the kernel's own debug info (``struct paravirt_patch_template``
through gdb's types) into ``Member`` trees and the pv-op pointers into integers; this module
turns them into answers. Nothing here assumes a layout: ``PARAVIRT_PATCH(x)`` is
``offsetof(struct paravirt_patch_template, x) / sizeof(void *)`` and the struct changed from
release to release (2.6.24 to 2.6.36), so slot numbers always come from the guest's DWARF. What
is fixed is Linux's own code, quoted below as tables with their source:

- ``PATCHED_OPS``: the only slots ``vmi_patch()`` rewrites, and the VMI call whose relocation
  decides how. Every other ``.parainstructions`` site keeps its native code.
- ``OPS``: what ``activate_vmi()`` puts in each pv-op (the ROM entry itself, a ``vmi_*``
  wrapper that calls one, Linux's own code), and which VMI call that reaches.

Source: Linux 2.6.32.9, arch/x86/kernel/vmi_32.c (``vmi_patch``, ``activate_vmi``), upstream
commit fb116ae92b82543e0efe488d7032fa0a3f4ab20b of leemgs/OptimusOneKernel-KandroidCommunity
(the tree ../shared/linux was built from); the 2.6.24/25 name ``irq_enable_syscall_ret`` from
vmi-abi.md section 6.5 [L25].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vmigdb.abi import VmiCall

#: The struct whose pointer slots number the patch sites, and the pv-op objects Linux defines.
TEMPLATE = "paravirt_patch_template"

#: vmi_patch(): slot -> the VMI call patch_internal() asks get_reloc about. CALL_REL makes the
#: site ``call rel32`` to the entry, JUMP_REL ``jmp rel32``, NOP all NOPs, NONE leaves it.
PATCHED_OPS: dict[str, VmiCall] = {
    "pv_irq_ops.irq_disable": VmiCall.DisableInterrupts,
    "pv_irq_ops.irq_enable": VmiCall.EnableInterrupts,
    "pv_irq_ops.restore_fl": VmiCall.SetInterruptMask,
    "pv_irq_ops.save_fl": VmiCall.GetInterruptMask,
    "pv_cpu_ops.iret": VmiCall.IRET,
    "pv_cpu_ops.irq_enable_sysexit": VmiCall.SYSEXIT,
    "pv_cpu_ops.irq_enable_syscall_ret": VmiCall.SYSEXIT,  # its name in 2.6.24/25 [L25]
}

#: Values activate_vmi() stores in the two ops that "MUST always be patched": an unpatched site
#: jumps to a bad address instead of silently running native code.
POISON: dict[int, str] = {0xFEEDBAB0: "pv_cpu_ops.irq_enable_sysexit",
                          0x0BADBAB0: "pv_cpu_ops.iret"}


@dataclass(frozen=True)
class OpRule:
    """How activate_vmi() fills one pv-op, when get_reloc answers CALL_REL for its call.

    ``how``: ``fill`` (para_fill: the op is the ROM entry itself, "ABI compatible with VMI"),
    ``wrap`` (para_wrap or vmi_get_function: the op is Linux's ``wrapper``, which calls the
    entry), ``linux`` (Linux's own code that reaches the call through another op), ``patch``
    (never called: poisoned, the sites are patched). ``calls``: the VMI call(s), the PAE one
    second where a config switch picks it.
    """

    calls: tuple[VmiCall, ...]
    how: str
    wrapper: str = ""

    @property
    def call_names(self) -> str:
        return "/".join(c.name for c in self.calls)


def _fill(*calls: VmiCall) -> OpRule:
    return OpRule(calls, "fill")


def _wrap(wrapper: str, *calls: VmiCall) -> OpRule:
    return OpRule(calls, "wrap", wrapper)


C = VmiCall
#: activate_vmi() of 2.6.32, member by member (its para_fill / para_wrap / vmi_get_function
#: lines, in its order). Ops missing here stay native: read_msr/write_msr/rdpmc (trap and
#: emulate), halt (only safe_halt is VMI), read_cr4_safe, flush_tlb_others.
OPS: dict[str, OpRule] = {
    "pv_init_ops.patch": OpRule((), "linux", "vmi_patch"),
    "pv_cpu_ops.cpuid": _wrap("vmi_cpuid", C.CPUID),
    "pv_cpu_ops.clts": _fill(C.CLTS),
    "pv_cpu_ops.get_debugreg": _fill(C.GetDR),
    "pv_cpu_ops.set_debugreg": _fill(C.SetDR),
    "pv_cpu_ops.read_cr0": _fill(C.GetCR0),
    "pv_mmu_ops.read_cr2": _fill(C.GetCR2),
    "pv_mmu_ops.read_cr3": _fill(C.GetCR3),
    "pv_cpu_ops.read_cr4": _fill(C.GetCR4),
    "pv_cpu_ops.write_cr0": _fill(C.SetCR0),
    "pv_mmu_ops.write_cr2": _fill(C.SetCR2),
    "pv_mmu_ops.write_cr3": _fill(C.SetCR3),
    "pv_cpu_ops.write_cr4": _fill(C.SetCR4),
    "pv_irq_ops.save_fl": _fill(C.GetInterruptMask),
    "pv_irq_ops.restore_fl": _fill(C.SetInterruptMask),
    "pv_irq_ops.irq_disable": _fill(C.DisableInterrupts),
    "pv_irq_ops.irq_enable": _fill(C.EnableInterrupts),
    "pv_cpu_ops.wbinvd": _fill(C.WBINVD),
    "pv_cpu_ops.read_tsc": _fill(C.RDTSC),
    "pv_cpu_ops.load_tr_desc": _wrap("vmi_set_tr", C.SetTR),
    "pv_cpu_ops.set_ldt": _wrap("vmi_set_ldt", C.SetLDT),
    "pv_cpu_ops.load_gdt": _fill(C.SetGDT),
    "pv_cpu_ops.load_idt": _fill(C.SetIDT),
    "pv_cpu_ops.store_gdt": _fill(C.GetGDT),
    "pv_cpu_ops.store_idt": _fill(C.GetIDT),
    "pv_cpu_ops.store_tr": _fill(C.GetTR),
    "pv_cpu_ops.load_tls": OpRule((C.WriteGDTEntry,), "linux", "vmi_load_tls"),
    "pv_cpu_ops.write_ldt_entry": _wrap("vmi_write_ldt_entry", C.WriteLDTEntry),
    "pv_cpu_ops.write_gdt_entry": _wrap("vmi_write_gdt_entry", C.WriteGDTEntry),
    "pv_cpu_ops.write_idt_entry": _wrap("vmi_write_idt_entry", C.WriteIDTEntry),
    "pv_cpu_ops.load_sp0": _wrap("vmi_load_sp0", C.UpdateKernelStack),
    "pv_cpu_ops.set_iopl_mask": _fill(C.SetIOPLMask),
    "pv_cpu_ops.io_delay": _fill(C.IODelay),
    "pv_cpu_ops.start_context_switch": _wrap("vmi_start_context_switch", C.SetLazyMode),
    "pv_cpu_ops.end_context_switch": _wrap("vmi_end_context_switch", C.SetLazyMode),
    "pv_mmu_ops.lazy_mode.enter": _wrap("vmi_enter_lazy_mmu", C.SetLazyMode),
    "pv_mmu_ops.lazy_mode.leave": _wrap("vmi_leave_lazy_mmu", C.SetLazyMode),
    "pv_mmu_ops.flush_tlb_user": _wrap("vmi_flush_tlb_user", C.FlushTLB),
    "pv_mmu_ops.flush_tlb_kernel": _wrap("vmi_flush_tlb_kernel", C.FlushTLB),
    "pv_mmu_ops.flush_tlb_single": _fill(C.InvalPage),
    "pv_mmu_ops.set_pte": _wrap("vmi_set_pte", C.SetPxE, C.SetPxELong),
    "pv_mmu_ops.set_pte_at": _wrap("vmi_set_pte_at", C.SetPxE, C.SetPxELong),
    "pv_mmu_ops.set_pmd": _wrap("vmi_set_pmd", C.SetPxE, C.SetPxELong),
    "pv_mmu_ops.set_pte_atomic": _wrap("vmi_set_pte_atomic", C.UpdatePxELong),  # PAE
    "pv_mmu_ops.set_pud": _wrap("vmi_set_pud", C.SetPxELong),  # PAE
    "pv_mmu_ops.pte_clear": _wrap("vmi_pte_clear", C.SetPxELong),  # PAE
    "pv_mmu_ops.pmd_clear": _wrap("vmi_pmd_clear", C.SetPxELong),  # PAE
    "pv_mmu_ops.pte_update": _wrap("vmi_update_pte", C.UpdatePxE, C.UpdatePxELong),
    "pv_mmu_ops.pte_update_defer": _wrap("vmi_update_pte_defer", C.UpdatePxE, C.UpdatePxELong),
    "pv_mmu_ops.alloc_pte": _wrap("vmi_allocate_pte", C.AllocatePage),
    "pv_mmu_ops.alloc_pmd": _wrap("vmi_allocate_pmd", C.AllocatePage),
    "pv_mmu_ops.alloc_pmd_clone": _wrap("vmi_allocate_pmd_clone", C.AllocatePage),
    "pv_mmu_ops.release_pte": _wrap("vmi_release_pte", C.ReleasePage),
    "pv_mmu_ops.release_pmd": _wrap("vmi_release_pmd", C.ReleasePage),
    "pv_mmu_ops.pgd_free": _wrap("vmi_pgd_free", C.ReleasePage),
    "pv_mmu_ops.kmap_atomic_pte": _wrap("vmi_kmap_atomic_pte", C.SetLinearMapping),  # HIGHPTE
    "pv_cpu_ops.irq_enable_sysexit": OpRule((C.SYSEXIT,), "patch"),
    "pv_cpu_ops.irq_enable_syscall_ret": OpRule((C.SYSEXIT,), "patch"),
    "pv_cpu_ops.iret": OpRule((C.IRET,), "patch"),
    "pv_apic_ops.startup_ipi_hook": _wrap("vmi_startup_ipi_hook", C.SetInitialAPState),
    "pv_time_ops.sched_clock": _wrap("vmi_sched_clock", C.GetCycleCounter),
    "pv_irq_ops.safe_halt": _fill(C.Halt),
}
del C


# --- the slot layout, from a debugger's description of the template -----------------------------


@dataclass(frozen=True)
class Member:
    """One struct member as the guest's debug info describes it: name, byte offset within its
    parent, size, and its own members when it is a struct (the edge builds these from gdb's
    types; tests build them by hand)."""

    name: str
    offset: int
    size: int
    members: tuple[Member, ...] = ()


@dataclass(frozen=True)
class OpSlot:
    """One pv-op of the template: its slot (``PARAVIRT_PATCH``), name, the global object that
    holds it (Linux names each ``pv_*_ops`` object as its template member) and its byte offset
    in that object."""

    slot: int
    op: str
    object: str
    offset: int


def op_slots(template: Sequence[Member], pointer_size: int = 4) -> list[OpSlot]:
    """Every pointer of ``struct paravirt_patch_template`` (``template`` is its members, the
    pv_*_ops structs), in slot order.

    A struct that wraps a single pointer (Linux's ``struct paravirt_callee_save {func}``) is
    named by its own member name, as PARAVIRT_PATCH(pv_irq_ops.save_fl) names it; other nested
    structs (``pv_mmu_ops.lazy_mode``) give dotted names (``pv_mmu_ops.lazy_mode.enter``).
    """
    out: list[OpSlot] = []

    def walk(members: Sequence[Member], base: int, prefix: str, obj: Member) -> None:
        for m in members:
            name = f"{prefix}{m.name}"
            at = base + m.offset
            if len(m.members) > 1:
                walk(m.members, at, f"{name}.", obj)
            elif m.size == pointer_size and at % pointer_size == 0:
                out.append(OpSlot(at // pointer_size, name, obj.name, at - obj.offset))

    for obj in template:
        walk(obj.members or (obj,), obj.offset, f"{obj.name}." if obj.members else "", obj)
    return sorted(out, key=lambda s: s.slot)


def slot_layout(template: Sequence[Member], pointer_size: int = 4) -> dict[int, str]:
    """slot -> pv-op name (``pv_irq_ops.save_fl``): how a ``.parainstructions`` type reads."""
    return {s.slot: s.op for s in op_slots(template, pointer_size)}


# --- what a pv-op points to ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpState:
    """One pv-op now: its pointer, what that is, and the VMI call it reaches.

    ``kind``: ``rom entry`` (the ROM's entry of ``call``), ``rom`` (inside the ROM but not an
    entry), ``wrapper`` (a vmi_* function), ``nop`` (vmi_nop: a NOP relocation), ``poisoned``
    (activate_vmi's marker for ops whose sites must be patched), ``native`` (anything else),
    ``null``. ``consistent`` is False only when the pointer reaches a ROM entry of another call
    than the one Linux fills the op with.
    """

    op: str
    value: int
    symbol: str
    kind: str
    call: VmiCall | None
    rule: OpRule | None
    consistent: bool = True

    @property
    def call_names(self) -> str:
        if self.call is not None:
            return self.call.name
        return self.rule.call_names if self.rule is not None and self.rule.calls else ""


def classify_op(op: str, value: int, symbol: str, entries: Mapping[int, VmiCall],
                rom: tuple[int, int] | None = None) -> OpState:
    """What the pointer ``value`` of pv-op ``op`` is: ``symbol`` is the name gdb gives it
    (``vmi_set_pte_at``, ``native_read_cr0+0``), ``entries`` the live ROM's entry addresses and
    ``rom`` its (start, end) linear range."""
    rule = OPS.get(op)
    value &= 0xFFFFFFFF
    base = symbol.split("+")[0]
    if value == 0:
        return OpState(op, value, symbol, "null", None, rule)
    if value in POISON:
        return OpState(op, value, symbol, "poisoned", PATCHED_OPS.get(op), rule)
    if value in entries:
        call = entries[value]
        ok = rule is None or not rule.calls or call in rule.calls
        return OpState(op, value, symbol, "rom entry", call, rule, ok)
    if rom is not None and rom[0] <= value < rom[1]:
        return OpState(op, value, symbol, "rom", None, rule, False)
    if base == "vmi_nop":
        return OpState(op, value, symbol, "nop", None, rule)
    if base.startswith("vmi_"):
        return OpState(op, value, symbol, "wrapper", None, rule)
    return OpState(op, value, symbol, "native", None, rule)
