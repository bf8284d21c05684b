"""Patch sites (vmigdb.sites) on the real guest: records from its ELF, originals from the file,
and what the real ROM's patcher made of them in a running machine (vmigdb's Unicorn machine,
stopped right after the guest patched itself).
"""

from __future__ import annotations

import pytest
from conftest import Built

from vmigdb import abi, decode, rominfo, sites
from vmigdb.abi import VmiCall
from vmigdb.stub.machine import Machine, StopReason
from vmigdb.stub.vmitrace import VmiTracer
from vmigdb.views.console import render_text
from vmigdb.views.sites import SiteRow, render_rom_entries, render_site, render_sites

#: Native instruction the ELF holds for each call the guest patches (capstone's mnemonics).
NATIVE_FIRST = {
    VmiCall.DisableInterrupts: "cli", VmiCall.EnableInterrupts: "sti",
    VmiCall.GetInterruptMask: "pushfd", VmiCall.SetInterruptMask: "push",
    VmiCall.GetCR0: "mov", VmiCall.SetCR0: "mov", VmiCall.GetCR2: "mov", VmiCall.SetCR2: "mov",
    VmiCall.GetCR3: "mov", VmiCall.SetCR3: "mov", VmiCall.GetCR4: "mov", VmiCall.SetCR4: "mov",
    VmiCall.CLTS: "clts", VmiCall.WBINVD: "wbinvd", VmiCall.RDTSC: "rdtsc",
    VmiCall.CPUID: "cpuid", VmiCall.IRET: "iretd", VmiCall.SYSEXIT: "sti",
}


@pytest.fixture(scope="module")
def elf(built: Built) -> sites.ElfImage:
    return sites.ElfImage(built.guest.read_bytes())


@pytest.fixture(scope="module")
def patched(built: Built, elf: sites.ElfImage) -> tuple[Machine, int]:
    """The guest on vmigdb's machine, stopped at test_irq_flags (after apply_paravirt);
    returns the machine and the ROM base vmi_init announced."""
    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="rom=copy")
    tracer = VmiTracer(m)
    tracer.start()
    stop_at = next(v for v, _s, n in elf.symbols() if n == "test_irq_flags")
    m.add_breakpoint(stop_at)
    for _ in range(1000):
        stop = m.run()
        tracer.service()
        if stop.reason is StopReason.BREAKPOINT:
            break
        assert stop.reason is StopReason.HOOK, stop
    assert stop.pc == stop_at
    assert tracer.rom_base is not None
    return m, tracer.rom_base


def test_records_from_the_elf(elf: sites.ElfImage) -> None:
    records = sites.sites_from_elf(elf)
    sec = elf.section(sites.SECTION)
    assert sec is not None and len(records) == sec.size // sites.RECORD.size == 38
    assert all(s.len == 5 for s in records)
    assert all(s.call in abi.IDENTITY_ROM_CALLS for s in records)
    # The records agree with the section bounds the guest's patcher uses.
    names = {n: v for v, _s, n in elf.symbols()}
    assert names[sites.START_SYMBOL] == sec.addr
    assert names[sites.STOP_SYMBOL] == sec.addr + sec.size
    assert sites.parse_records(elf.read(sec.addr, sec.size)) == records


def test_originals_are_the_native_instructions(elf: sites.ElfImage) -> None:
    for s in sites.sites_from_elf(elf):
        original = elf.read(s.addr, s.len)
        body, pad = sites.split_padding(decode.disassemble(original, s.addr))
        assert body, s
        assert body[0].mnemonic == NATIVE_FIRST[s.call], (s, body)
        assert sum(i.size for i in body) + pad == s.len
        state = sites.classify(s, original, original)
        assert state.kind == "native" and state.reloc is abi.VmiRelocation.NONE
        assert elf.symbolize(s.addr), s  # every site lies in a named function


def test_patched_sites_call_their_own_entries(built: Built, elf: sites.ElfImage,
                                              patched: tuple[Machine, int]) -> None:
    m, base = patched
    info = rominfo.parse_rom(built.rom.read_bytes())
    entries = sites.entry_map(base, info.call_table)
    rows = []
    for s in sites.sites_from_elf(elf):
        now = m.read_virt(s.addr, s.len)
        original = elf.read(s.addr, s.len)
        state = sites.classify(s, now, original, entries)
        assert state.kind == "call", (s, state)
        assert state.target == base + info.call_table[s.call]
        assert state.target_call == s.call and state.consistent
        assert [i.mnemonic for i in state.insns] == ["call"]
        ev = sites.to_event(0, s, state)
        assert ev.reloc == "CALL_REL" and ev.target == state.target and ev.type == s.type
        rows.append(SiteRow(s, elf.symbolize(s.addr), tuple(decode.disassemble(original,
                                                                               s.addr)), state))
    text = render_text(render_sites(rows), width=250)
    assert "sites=38 call=38; redirected to the entry of their own call: 38" in text
    assert f"call CPUID entry {base + info.call_table[VmiCall.CPUID]:#x}" in text
    detail = render_text(render_site(rows[0]), width=120)
    assert "redirects to" in detail and rows[0].site.call_name in detail


def test_rom_entries_view_disassembles_the_real_rom(built: Built) -> None:
    data = built.rom.read_bytes()
    info = rominfo.parse_rom(data)
    text = render_text(render_rom_entries(0xC00C0000, info, data), width=200)
    cpuid = 0xC00C0000 + info.call_table[VmiCall.CPUID]
    assert f"{cpuid:#x}" in text and "cpuid; ret" in text
    assert "lgdt [eax]; ret" in text  # memory operands survive rich markup
    assert "GetCycleFrequency" in text  # listed among the calls left native (NONE)


def test_unmodified_and_foreign_bytes(elf: sites.ElfImage) -> None:
    s = sites.sites_from_elf(elf)[0]
    nops = bytes([0x90]) * s.len  # what a NOP relocation leaves (no machine code encoded)
    assert sites.classify(s, nops, elf.read(s.addr, s.len)).kind == "nop"
    other = elf.read(s.addr + s.len, s.len)  # the code after the site: not a patcher's output
    assert sites.classify(s, other, elf.read(s.addr, s.len)).kind in ("modified", "native")
