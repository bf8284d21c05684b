"""Argument decoding and capstone decoding."""

from __future__ import annotations

from asmutil import assemble

from vmigdb import abi, decode


def test_cr0_and_cr4_bits() -> None:
    assert decode.describe("cr0", 0x80010011) == "PE ET WP PG"
    assert decode.describe("cr4", 0x90) == "PSE PGE"


def test_pte_and_flags_words() -> None:
    assert decode.describe("pte", 0x00123067) == "pfn=0x123 P RW US A D"
    flags = abi.VMI_PAGE_PT | abi.VMI_PAGE_CURRENT_AS | abi.VMI_PAGE_DEFER | 0x40000000
    assert decode.describe("pte_flags", flags) == "PT CURRENT_AS DEFER va=0x40000000"
    assert decode.describe("flush_flags", 3) == "TLB GLOBAL"
    assert decode.describe("lazy_mode", 1) == "MMU"
    assert decode.describe("msr", 0x174) == "IA32_SYSENTER_CS"
    assert decode.describe("selector", 0x2B) == "GDT[5] RPL3"


def test_capstone_call_target() -> None:
    code = assemble("call 0x2000\nnop\nnop\nret", base=0x1000)
    insns = decode.disassemble(code, 0x1000)
    assert [i.mnemonic for i in insns] == ["call", "nop", "nop", "ret"]
    assert decode.call_target(insns[0]) == 0x2000
    assert decode.disassemble_until_ret(code, 0x1000)[-1].mnemonic == "ret"
