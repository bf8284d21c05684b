"""The ABI tables agree with themselves and with what Linux's headers fix (vmi-abi.md)."""

from __future__ import annotations

import itertools
import re

from vmigdb import abi


def test_call_numbers_match_linux() -> None:
    assert abi.VmiCall.CPUID == 0
    assert abi.VmiCall.SetLinearMapping == 48
    assert abi.VmiCall.SetIOPLMask == 61
    assert abi.VmiCall.IODelay == 65
    assert abi.VmiCall.WallclockUpdated == 71
    assert abi.VmiCall.SetLazyMode == 73
    numbers = {int(c) for c in abi.VmiCall}
    assert numbers == set(range(49)) | set(range(61, 72)) | {73}


def test_every_call_has_a_spec_with_valid_locations() -> None:
    assert set(abi.CALLS) == set(abi.VmiCall)
    for spec in abi.CALLS.values():
        locs = [a.loc for a in spec.args]
        assert len(set(locs)) == len(locs), spec.name
        assert all(loc in abi.ARG_LOCATIONS for loc in locs), spec.name
        assert all(r in ("eax", "ebx", "ecx", "edx") for r in spec.results), spec.name


def test_regparm3_order_for_pte_calls() -> None:
    set_pxe = [(a.name, a.loc) for a in abi.CALLS[abi.VmiCall.SetPxE].args]
    assert set_pxe == [("pte", "eax"), ("ptep", "edx"), ("flags", "ecx")]
    long_ = [(a.name, a.loc) for a in abi.CALLS[abi.VmiCall.SetPxELong].args]
    assert long_ == [("pte", "eax"), ("pte_hi", "edx"), ("ptep", "ecx"), ("flags", "stack0")]


def test_interrupt_calls_clobber_flags_only() -> None:
    for name in ("EnableInterrupts", "DisableInterrupts", "GetInterruptMask",
                 "SetInterruptMask", "CPUID"):
        assert abi.CALLS[abi.VmiCall[name]].clobbers == abi.Clobbers.FLAGS


def test_vrom_header_is_linux_layout() -> None:
    fields = abi.VROM_HEADER
    assert sum(f.size for f in fields) == abi.VROM_HEADER_SIZE == 144
    for a, b in itertools.pairwise(fields):
        assert a.offset + a.size == b.offset, (a, b)
    assert abi.VMI_INIT_OFFSET == 0x80 and abi.GET_RELOC_OFFSET == 0x88
    assert abi.field(abi.VROM_HEADER, "license_offs").offset == 0x16
    assert sum(f.size for f in abi.PCI_HEADER) == abi.PCI_HEADER_SIZE
    assert sum(f.size for f in abi.PNP_HEADER) == abi.PNP_HEADER_SIZE


def test_vmigdb_fields_sit_inside_reserved() -> None:
    reserved = abi.field(abi.VROM_HEADER, "reserved")
    for f in abi.VMIGDB_HEADER:
        assert reserved.offset <= f.offset and f.offset + f.size <= reserved.offset + reserved.size


def test_identity_rom_answers_none_for_timers() -> None:
    for n in range(66, 72):
        assert abi.VmiCall(n) not in abi.IDENTITY_ROM_CALLS
    assert abi.VmiCall.IRET in abi.IDENTITY_ROM_CALLS
    assert abi.VmiCall.SYSEXIT in abi.IDENTITY_ROM_CALLS


def test_generated_headers_carry_every_call() -> None:
    asm = abi.render_asm_header()
    c = abi.render_c_header()
    for call in abi.VmiCall:
        assert re.search(rf"^\.equ VMI_CALL_{call.name}, {int(call):#x}$", asm, re.MULTILINE)
        assert re.search(rf"^#define VMI_CALL_{call.name} {int(call):#x}u$", c, re.MULTILINE)
    assert f".equ ROM_FLUSH_PORT, {abi.ROM_FLUSH_PORT:#x}" in asm
