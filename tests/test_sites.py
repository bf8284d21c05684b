"""Patch sites (vmigdb.sites) on the real guest: records from its ELF, their pv-op slots named
from its debug info (real gdb reads the layout, tests/gdblayout.py), originals from the file,
and what the real ROM's patcher made of them in a running machine (vmigdb's Unicorn machine,
stopped right after the guest patched itself), judged by Linux's own rule.
"""

from __future__ import annotations

import pytest
from conftest import Built
from gdblayout import op_slots

from vmigdb import abi, decode, pvops, rominfo, sites
from vmigdb.abi import VmiCall, VmiRelocation
from vmigdb.stub.machine import Machine, StopReason
from vmigdb.stub.vmitrace import VmiTracer
from vmigdb.views.console import render_text
from vmigdb.views.sites import SiteRow, render_rom_entries, render_site, render_sites

#: The native instruction the ELF holds inline at the sites vmi_patch rewrites (capstone's
#: mnemonics); every other site is Linux's PVOP_CALL, an indirect call through its pv-op.
NATIVE_FIRST = {
    "pv_irq_ops.irq_disable": "cli", "pv_irq_ops.irq_enable": "sti",
    "pv_irq_ops.save_fl": "pushfd", "pv_irq_ops.restore_fl": "push",
    "pv_cpu_ops.iret": "iretd", "pv_cpu_ops.irq_enable_sysexit": "sti",
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


@pytest.fixture(scope="module")
def layout(built: Built) -> dict[int, str]:
    return {o.slot: o.op for o in op_slots(built.guest)}


def relocation(info: rominfo.RomInfo, base: int) -> sites.Relocation:
    return lambda call: (info.relocation(call), base + info.call_table[call]
                         if info.call_table.get(call) else None)


def test_records_from_the_elf(elf: sites.ElfImage, layout: dict[int, str]) -> None:
    records = sites.sites_from_elf(elf)
    sec = elf.section(sites.SECTION)
    assert sec is not None and len(records) == sec.size // sites.RECORD.size == 38
    assert all(s.len >= 5 for s in records)
    # Every type is a slot of the guest's struct paravirt_patch_template.
    assert all(s.type in layout for s in records)
    assert set(pvops.PATCHED_OPS) & {s.op(layout) for s in records} == set(NATIVE_FIRST)
    # The records agree with the section bounds the guest's patcher uses.
    names = {n: v for v, _s, n in elf.symbols()}
    assert names[sites.START_SYMBOL] == sec.addr
    assert names[sites.STOP_SYMBOL] == sec.addr + sec.size
    assert sites.parse_records(elf.read(sec.addr, sec.size)) == records


def test_originals_are_the_native_instructions(built: Built, elf: sites.ElfImage,
                                               layout: dict[int, str]) -> None:
    """Inline native code at the slots vmi_patch rewrites; elsewhere an indirect call through
    exactly the pv-op the record's slot names (so PARAVIRT_PATCH and the call agree)."""
    slots = {o.slot: o for o in op_slots(built.guest)}
    objects = {n: v for v, _s, n in elf.symbols()}
    for s in sites.sites_from_elf(elf):
        original = elf.read(s.addr, s.len)
        body, pad = sites.split_padding(decode.disassemble(original, s.addr))
        assert body, s
        op = s.op(layout)
        if op in NATIVE_FIRST:
            assert body[0].mnemonic == NATIVE_FIRST[op], (s, op, body)
        else:
            assert [i.mnemonic for i in body] == ["call"] and original[:2] == b"\xff\x15"
            o = slots[s.type]
            assert int.from_bytes(original[2:6], "little") == objects[o.object] + o.offset, op
        assert sum(i.size for i in body) + pad == s.len
        state = sites.classify(s, original, original)
        assert state.kind == "native" and state.reloc is abi.VmiRelocation.NONE
        assert elf.symbolize(s.addr), s  # every site lies in a named function


def test_patched_sites_follow_linux_rule(built: Built, elf: sites.ElfImage,
                                         layout: dict[int, str],
                                         patched: tuple[Machine, int]) -> None:
    m, base = patched
    info = rominfo.parse_rom(built.rom.read_bytes())
    entries = sites.entry_map(base, info.call_table)
    rows = []
    for s in sites.sites_from_elf(elf):
        now = m.read_virt(s.addr, s.len)
        original = elf.read(s.addr, s.len)
        state = sites.classify(s, now, original, entries)
        exp = sites.expect(s, layout, relocation(info, base))
        assert sites.judge(state, exp) == "ok", (s, state, exp)
        if exp.patched:
            call = pvops.PATCHED_OPS[s.op(layout)]
            assert state.kind == "call" and exp.reloc is VmiRelocation.CALL_REL
            assert state.target == exp.target == base + info.call_table[call]
            assert state.target_call == call
            assert state.insns[0].mnemonic == "call"
            ev = sites.to_event(0, s, state)
            assert ev.reloc == "CALL_REL" and ev.target == state.target and ev.type == s.type
            assert exp.describe() == (f"{s.op(layout)} -> {call.name} (CALL_REL) at "
                                      f"{state.target:#x}")
        else:
            assert state.kind == "native" and now == original
            assert exp.describe() == f"{s.op(layout)}: left native by vmi_patch"
        rows.append(SiteRow(s, elf.symbolize(s.addr), tuple(decode.disassemble(original,
                                                                               s.addr)),
                            state, exp, sites.judge(state, exp)))
    patched_n = sum(1 for r in rows if r.expected.patched)
    assert patched_n == 15
    text = render_text(render_sites(rows), width=250)
    assert (f"sites=38 call={patched_n} native={38 - patched_n}; slots vmi_patch rewrites: "
            f"{patched_n}; Linux's rule: ok=38 WRONG=0") in text
    cli = base + info.call_table[VmiCall.DisableInterrupts]
    assert f"pv_irq_ops.irq_disable -> DisableInterrupts (CALL_REL) at {cli:#x}" in text
    detail = render_text(render_site(rows[0]), width=120)
    assert "Linux's rule" in detail and rows[0].expected.op in detail and "verdict" in detail


def test_a_mispatched_site_is_wrong(built: Built, elf: sites.ElfImage, layout: dict[int, str],
                                    patched: tuple[Machine, int]) -> None:
    """A patched slot calling another call's entry, a native slot turned into a call, a
    patched slot left native, foreign bytes: each is WRONG, by the rule alone."""
    _m, base = patched
    info = rominfo.parse_rom(built.rom.read_bytes())
    entries = sites.entry_map(base, info.call_table)
    records = sites.sites_from_elf(elf)
    irq = next(s for s in records if s.op(layout) == "pv_irq_ops.irq_disable")
    other = next(s for s in records if not sites.expect(s, layout, None).patched)
    wrong_entry = base + info.call_table[VmiCall.EnableInterrupts]

    def call_to(site: sites.Site, dest: int) -> bytes:
        rel = (dest - site.addr - 5) & 0xFFFFFFFF
        return b"\xe8" + rel.to_bytes(4, "little") + b"\x90" * (site.len - 5)

    for site, now in ((irq, call_to(irq, wrong_entry)), (other, call_to(other, wrong_entry)),
                      (irq, elf.read(irq.addr, irq.len)), (irq, b"\xcc" * irq.len)):
        state = sites.classify(site, now, elf.read(site.addr, site.len), entries)
        exp = sites.expect(site, layout, relocation(info, base))
        assert sites.judge(state, exp) == "WRONG", (site, state.kind)
        assert sites.judge(state, exp, in_init=True) == "freed"


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
    # Linux pads with the NOPs its CPU prefers (add_nops): a call then a 2-byte NOP is a call.
    padded = b"\xe8\0\0\0\0" + (b"\x66\x90" if s.len == 7 else b"\x90" * (s.len - 5))
    assert sites.classify(s, padded, elf.read(s.addr, s.len)).kind == "call"
    other = elf.read(s.addr + s.len, s.len)  # the code after the site: not a patcher's output
    assert sites.classify(s, other, elf.read(s.addr, s.len)).kind in ("modified", "native")
