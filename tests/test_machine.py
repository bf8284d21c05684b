"""The emulated machine without a socket: loader, devices, exceptions, memory, run control.

Every guest here is GNU as source in tests/asm, assembled and linked by the ``progs`` fixture;
the ROM is tests/asm/testrom.S (a minimal VMI-shaped option ROM) with its checksum byte set.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_qemu

from vmigdb.errors import GuestImageError, RomError
from vmigdb.stub.machine import Machine, MemoryFault, StopReason

ASM = Path(__file__).parent / "asm"
REPO = Path(__file__).resolve().parent.parent
PROGRAMS = ("basic", "spin", "halt", "triple", "romwrite", "faults", "nomultiboot", "sysenter",
            "cpuid", "smc", "pae")


def _run(*cmd: object) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("asm")
    out: dict[str, Path] = {}
    for name in PROGRAMS:
        _run("as", "--32", "-I", ASM, "-o", d / f"{name}.o", ASM / f"{name}.S")
        _run("ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o", d / f"{name}.elf",
             d / f"{name}.o")
        out[name] = d / f"{name}.elf"
    _run("as", "--64", "-I", ASM, "-o", d / "basic64.o", ASM / "basic.S")
    _run("ld", "-m", "elf_x86_64", "-Ttext=0x100000", "-e", "_start", "-o", d / "basic64.elf",
         d / "basic64.o")
    out["basic64"] = d / "basic64.elf"
    _run("as", "--32", "-o", d / "testrom.o", ASM / "testrom.S")
    _run("ld", "-m", "elf_i386", "-Ttext=0", "--oformat", "binary", "-o", d / "testrom.raw",
         d / "testrom.o")
    rom = bytearray((d / "testrom.raw").read_bytes())
    rom[-1] = -sum(rom[:-1]) & 0xFF  # the option-ROM checksum byte
    (d / "testrom.bin").write_bytes(rom)
    out["rom"] = d / "testrom.bin"
    return out


def symbols(elf: Path) -> dict[str, int]:
    text = subprocess.run(["nm", str(elf)], check=True, capture_output=True, text=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in text.splitlines())
            if len(p) == 3}


def boot(progs: dict[str, Path], name: str, cmdline: str = "") -> Machine:
    return Machine.from_files(str(progs[name]), rom=str(progs["rom"]), cmdline=cmdline)


def u32(m: Machine, va: int) -> int:
    return struct.unpack("<I", m.read_virt(va, 4))[0]


# --- loader and entry state ----------------------------------------------------------------------
def test_multiboot_entry_state_is_qemus(progs):
    m = boot(progs, "basic", cmdline="rom=copy stress=2")
    sym = symbols(progs["basic"])
    regs = {n: m.reg_read(n) for n in ("eax", "ebx", "eip", "eflags", "cr0", "cr3", "cr4", "cs",
                                       "ds", "es", "ss", "fs", "gs", "idtr_base", "idtr_limit",
                                       "gdtr_limit", "efer")}
    assert regs == {"eax": 0x2BADB002, "ebx": 0x9500, "eip": sym["_start"], "eflags": 0x2,
                    "cr0": 0x11, "cr3": 0, "cr4": 0, "cs": 0x08, "ds": 0x10, "es": 0x10,
                    "ss": 0x10, "fs": 0x10, "gs": 0x10, "idtr_base": 0, "idtr_limit": 0x3FF,
                    "gdtr_limit": 0x27, "efer": 0}
    flags, mem_lower, mem_upper, _boot, cmdline = struct.unpack("<5I", m.read_phys(0x9500, 20))
    assert flags & 0x5 == 0x5
    assert (mem_lower, mem_upper) == (639, 129920)  # what QEMU -m 128 with SeaBIOS reports
    text = m.read_phys(cmdline, 200).split(b"\0")[0].decode()
    assert text == f"{progs['basic']} rom=copy stress=2"  # QEMU: kernel path, space, -append
    assert m.read_phys(0xC0000, 2) == b"\x55\xaa"
    assert ("rom" in [r[2] for r in m.regions()]) and m.regions()[1][0] == 0xC0000


def test_every_register_name_reads(progs):
    m = boot(progs, "basic")
    names = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags", "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4", "efer", "gdtr_base", "gdtr_limit", "idtr_base", "idtr_limit", "ldtr", "tr", "fs_base", "gs_base", "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop", "mxcsr"]
    names += [f"st{i}" for i in range(8)] + [f"xmm{i}" for i in range(8)]
    values = {n: m.reg_read(n) for n in names}
    assert values["gdtr_base"] == 0x9000 and values["fs_base"] == 0 and values["gs_base"] == 0
    m.reg_write("xmm3", 0x0123456789ABCDEF_FEDCBA9876543210)
    assert m.reg_read("xmm3") == 0x0123456789ABCDEF_FEDCBA9876543210
    m.reg_write("st0", 0x3FFF_8000000000000000)  # 1.0
    assert m.reg_read("st0") == 0x3FFF_8000000000000000
    m.reg_write("ds", 0x18)  # the 16-bit data descriptor: the hidden part reloads
    assert m.reg_read("ds") == 0x18
    with pytest.raises(ValueError):
        m.reg_write("ds", 0x30)  # beyond the GDT limit
    with pytest.raises(KeyError):
        m.reg_read("rip")


def test_register_file_equals_one_by_one_reads(progs):
    """gdb's ``g`` reply comes from one batch read: every register must read as reg_read does,
    including x87 registers under a rotated stack top and a loaded LDT/TR selector."""
    from vmigdb.stub.target import REGISTERS

    m = boot(progs, "basic")
    m.reg_write("fstat", 5 << 11)  # TOP = 5: st(i) is physical register (5 + i) mod 8
    for i in range(8):
        m.reg_write(f"st{i}", (0x4000 + i) << 64 | 0x8000000000000000 | i)
        m.reg_write(f"xmm{i}", (i + 1) * 0x0101010101010101_0202020202020202)
    for n, v in {"eax": 0x11223344, "ebp": 0x8000, "cr2": 0xDEAD000, "mxcsr": 0x1FA0,
                 "fctrl": 0x27F, "gdtr_limit": 0x3F, "idtr_base": 0x7000}.items():
        m.reg_write(n, v)
    file = m.register_file()
    for reg in REGISTERS:
        assert file[reg.name] == m.reg_read(reg.name), reg.name
    assert file["st2"] == (0x4002 << 64) | 0x8000000000000002
    assert file["xmm7"] == 8 * 0x0101010101010101_0202020202020202


# --- devices -------------------------------------------------------------------------------------
def test_serial_output_and_debug_exit(progs):
    m = boot(progs, "basic")
    out: list[bytes] = []
    m.on_serial = out.append
    stop = m.run()
    assert b"".join(out) == b"hello from basic\n"
    assert stop.reason is StopReason.EXIT
    assert (stop.exit_code, stop.qemu_status) == (0x21, 0x43)
    assert u32(m, symbols(progs["basic"])["loops"]) == 3


def test_port_observer_sees_outs_and_can_stop(progs):
    m = boot(progs, "basic")
    seen: list[tuple[int, int, int]] = []
    m.add_port_observer(0x3F8, lambda mm, port, size, value: seen.append((port, size, value)))
    m.run()
    assert bytes(v for _p, _s, v in seen) == b"hello from basic\n"
    assert {(p, s) for p, s, _v in seen} == {(0x3F8, 1)}
    m2 = boot(progs, "basic")
    m2.add_port_observer(0x3F8, lambda *a: True)
    assert m2.run().reason is StopReason.HOOK


# --- exceptions ----------------------------------------------------------------------------------
def test_faults_are_delivered_through_the_guest_idt(progs):
    """#PF, #DE, int3, #PF, #PF, #UD, int $0x80 in a row: each with its own vector (without the
    old_exception reset the second would be #DF and the third a triple fault)."""
    m = boot(progs, "faults")
    stop = m.run()
    assert (stop.reason, stop.exit_code) == (StopReason.EXIT, 7)
    log = [struct.unpack("<4I", m.read_phys(0x300000 + 16 * i, 16)) for i in range(7)]
    assert [(v, e) for v, e, _cr2, _eip in log] == [
        (14, 0), (0, 0), (3, 0), (14, 2), (14, 0), (6, 0), (0x80, 0)]
    assert [log[i][2] for i in (0, 3, 4)] == [0x280000, 0x280010, 0x280020]  # CR2
    sym = symbols(progs["faults"])
    assert log[2][3] == sym["r2"] + 1  # int3 pushes the next instruction
    assert log[6][3] == sym["done"]  # int $0x80 too
    assert log[1][3] == sym["r2"] - 2  # #DE pushes the faulting divl


def test_triple_fault_stops_with_one_line(progs):
    m = boot(progs, "triple")
    stop = m.run()
    assert stop.reason is StopReason.TRIPLE_FAULT
    assert (stop.vector, stop.pc) == (0, symbols(progs["triple"])["div_here"])
    assert stop.message.startswith("triple fault: #DE at eip ")
    assert "\n" not in stop.message


def test_step_into_exception_lands_on_handler(progs):
    m = boot(progs, "faults")
    sym = symbols(progs["faults"])
    m.add_breakpoint(sym["r1"] - 5)  # the faulting `movl HOLE, %eax`
    assert m.run().reason is StopReason.BREAKPOINT
    stop = m.step()
    assert (stop.reason, stop.pc) == (StopReason.STEP, sym["h_14"])
    assert m.reg_read("cr2") == 0x280000


def test_stops_do_not_disturb_cr2_or_later_faults(progs):
    """Unicorn's end-of-run TB invalidation must not leak a hidden #PF (CR2, old_exception)."""
    m = boot(progs, "faults")
    sym = symbols(progs["faults"])
    m.add_breakpoint(sym["paging_on"])
    m.add_breakpoint(sym["events"])
    m.run()
    m.reg_write("cr2", 0x1111)
    assert m.run().pc == sym["events"]
    assert m.step().pc == sym["events"] + 10
    assert m.reg_read("cr2") == 0x1111
    assert m.run().exit_code == 7


def test_sysexit_to_ring_3_and_sysenter_back(progs):
    """Linux's system-call return trip: SYSEXIT to ring 3, SYSENTER back to the kernel entry
    with the CS, SS and ESP the MSRs name (Unicorn's own SYSENTER only stepped over itself)."""
    m = boot(progs, "sysenter")
    sym = symbols(progs["sysenter"])
    m.add_breakpoint(sym["user_code"])
    stop = m.run()
    assert (stop.reason, stop.pc) == (StopReason.BREAKPOINT, sym["user_code"])
    assert (m.reg_read("cs"), m.reg_read("ss"), m.reg_read("eax")) == (0x1B, 0x23, 0x1234)
    m.add_breakpoint(sym["sysenter_entry"])
    stop = m.run()
    assert (stop.reason, stop.pc) == (StopReason.BREAKPOINT, sym["sysenter_entry"])
    assert (m.reg_read("cs"), m.reg_read("ss")) == (0x08, 0x10)
    assert not m.reg_read("eflags") & 0x200  # IF cleared
    assert m.run().exit_code == 0x50
    code, _serial = run_qemu(progs["sysenter"], None)
    assert code == 0x50  # QEMU runs the same trip to the same end


def test_code_rewritten_through_another_address_runs_new(progs):
    """Data pages get TLB entries that cannot execute (their stores take the fast path); a page
    code is fetched from must lose every such entry at once, or a rewrite through another
    virtual address would leave stale translated code running (tests/asm/smc.S)."""
    m = boot(progs, "smc")
    assert m.run().exit_code == 57
    assert m.vm.code_page_flushes > 0 and m.vm.tlb_fills > 0  # the machine's walk did it
    code, _serial = run_qemu(progs["smc"], None)
    assert code == 57


def test_pae_paging_as_qemu(progs):
    """The machine's own page walk under PAE: 2 MiB and 4 KiB pages, not-present and
    reserved-bit faults with QEMU's error codes and CR2, accessed and dirty bits
    (tests/asm/pae.S checks itself; 63 = every check held)."""
    m = boot(progs, "pae")
    assert m.run().exit_code == 63
    code, _serial = run_qemu(progs["pae"], None)
    assert code == 63


def test_cpuid_answers_as_qemus_qemu32_without_apic(progs):
    """The machine's CPU is QEMU's qemu32 with no local APIC (the machine has none): every leaf
    as `qemu-system-i386 -cpu qemu32,-apic` answers it."""
    m = boot(progs, "cpuid")
    out: list[bytes] = []
    m.on_serial = out.append
    assert m.run().exit_code == 0x10
    ours = b"".join(out).decode()
    code, theirs = run_qemu(progs["cpuid"], None)
    theirs = theirs[theirs.index("00000000 00000000 "):]  # after SeaBIOS's banner
    assert code == 0x10 and ours == theirs
    leaf1 = next(line.split() for line in ours.splitlines() if line.startswith("00000001"))
    assert not int(leaf1[5], 16) & (1 << 9)  # no APIC


def test_hlt_with_interrupts_off_and_on(progs):
    m = boot(progs, "halt")
    sym = symbols(progs["halt"])
    stop = m.run()
    assert (stop.reason, stop.pc) == (StopReason.HALT, sym["_start"] + 2)
    assert "never wake" in stop.message
    assert m.run() == stop  # it stays halted
    m.reg_write("eip", sym["sti_halt"])
    stop = m.run()
    assert stop.reason is StopReason.HALT
    assert "interrupts enabled and no interrupt source" in stop.message


# --- memory --------------------------------------------------------------------------------------
def test_rom_is_read_only_to_the_guest_not_the_debugger(progs):
    m = boot(progs, "romwrite")
    stop = m.run()
    assert (stop.reason, stop.exit_code) == (StopReason.EXIT, 0)  # the guest's write was dropped
    assert m.read_virt(0xC0000, 4) == m.read_phys(0xC0000, 4)
    m.write_virt(0xC0100, b"\x11\x22\x33")
    assert m.read_virt(0xC0100, 3) == b"\x11\x22\x33"
    assert m.read_phys(0xC0100, 3) == b"\x11\x22\x33"


def test_virtual_memory_through_the_guest_page_tables(progs):
    m = boot(progs, "faults")
    sym = symbols(progs["faults"])
    m.add_breakpoint(sym["paging_on"])
    assert m.run().reason is StopReason.BREAKPOINT
    assert m.translate(0xC0000000) == 0x210000 and m.translate(0xC0001004) == 0x220004
    assert m.translate(0x280000) is None
    m.write_phys(0x210000, b"ABCD")
    assert m.read_virt(0xC0000000, 4) == b"ABCD"
    m.write_virt(0xC0000FFE, b"WXYZ")  # crosses to a page elsewhere in physical memory
    assert m.read_phys(0x210FFE, 2) == b"WX" and m.read_phys(0x220000, 2) == b"YZ"
    assert m.read_virt(0xC0000FFE, 4) == b"WXYZ"
    with pytest.raises(MemoryFault) as e:
        m.read_virt(0xC0001FFE, 4)  # the second page is not mapped
    assert e.value.addr == 0xC0002000
    with pytest.raises(MemoryFault):
        m.read_virt(0x280000, 1)
    with pytest.raises(MemoryFault):
        m.write_virt(0x280000, b"x")
    with pytest.raises(MemoryFault):
        m.read_phys(m.ram_size - 2, 4)  # beyond RAM


def test_translations_follow_every_change_while_stopped(progs):
    """Translations are cached while the CPU is stopped (gdb reads a page many times per stop):
    a debugger write to a PTE or to CR0, and the guest running, must each be seen at once."""
    from vmigdb import pagetable, x86

    m = boot(progs, "faults")
    sym = symbols(progs["faults"])
    m.add_breakpoint(sym["paging_on"])
    assert m.run().reason is StopReason.BREAKPOINT
    assert m.translate(0xC0000000) == 0x210000
    mode = pagetable.Mode.from_regs(m.reg_read("cr3"), m.reg_read("cr4"))
    _level, pte_addr, pte = pagetable.walk(m.read_phys, mode, 0xC0000000).entries[-1]
    m.write_phys(pte_addr, struct.pack("<I", (pte & 0xFFF) | 0x230000))
    assert m.translate(0xC0000010) == 0x230010
    m.write_virt(0xC0000000, b"abcd")  # lands in the page the PTE names now
    assert m.read_phys(0x230000, 4) == b"abcd"
    m.write_phys(pte_addr, struct.pack("<I", pte & ~1))  # not present
    assert m.translate(0xC0000000) is None
    m.write_phys(pte_addr, struct.pack("<I", pte))
    cr0 = m.reg_read("cr0")
    assert m.translate(0xC0000000) == 0x210000
    m.reg_write("cr0", cr0 & ~x86.CR0_PG)
    assert m.translate(0xC0000000) == 0xC0000000  # paging off: identity
    m.reg_write("cr0", cr0)
    assert m.translate(0xC0000000) == 0x210000


def test_debugger_write_to_code_takes_effect(progs):
    """Host writes never invalidate translated code by themselves."""
    m = boot(progs, "spin")
    sym = symbols(progs["spin"])
    m.write_virt(sym["iterations"], struct.pack("<I", 1))
    m.add_breakpoint(sym["counted"])
    assert m.run().reason is StopReason.BREAKPOINT
    m.reg_write("eip", sym["_start"])
    # Turn `addl $3, %eax` (83 c0 03) into `addl $7, %eax` in warm, translated code.
    assert m.read_virt(sym["count_loop"], 3) == b"\x83\xc0\x03"
    m.write_virt(sym["count_loop"] + 2, b"\x07")
    m.reg_write("eax", 0)
    assert m.run().reason is StopReason.BREAKPOINT
    assert m.reg_read("eax") == 7


# --- run control ---------------------------------------------------------------------------------
def test_breakpoint_hit_resume_and_remove(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    m.add_breakpoint(sym["loop_top"])
    pcs = []
    for _ in range(3):
        stop = m.run()
        pcs.append((stop.reason, stop.pc, m.reg_read("ecx")))
    assert pcs == [(StopReason.BREAKPOINT, sym["loop_top"], c) for c in (3, 2, 1)]
    m.remove_breakpoint(sym["loop_top"])
    assert m.run().reason is StopReason.EXIT


def test_gdbs_remove_step_insert_cycle(progs):
    """What gdb does at every breakpoint it continues from: remove all, step off, insert
    again, continue. The hook of a removed breakpoint stays idle meanwhile: it must neither stop
    the step nor survive as a breakpoint once removed for good."""
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    top = sym["loop_top"]
    m.add_breakpoint(top)
    assert m.run().pc == top
    for ecx in (2,):
        m.remove_breakpoint(top)
        assert m.step().reason is StopReason.STEP
        m.add_breakpoint(top)
        stop = m.run()
        assert (stop.reason, stop.pc, m.reg_read("ecx")) == (StopReason.BREAKPOINT, top, ecx)
    m.remove_breakpoint(top)
    assert m.run().reason is StopReason.EXIT  # the loop passes top once more (ecx 1)


def test_breakpoint_at_the_resume_pc_is_skipped_once(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    m.add_breakpoint(sym["_start"])  # where the run starts: executed, not reported
    m.add_breakpoint(sym["double_it"])
    stop = m.run()
    assert (stop.reason, stop.pc, m.reg_read("eax")) == (StopReason.BREAKPOINT,
                                                        sym["double_it"], 5)
    assert m.run().reason is StopReason.EXIT  # each reached once


def test_step_is_exact_through_call_and_ret(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    m.add_breakpoint(sym["printed"])
    assert m.run().reason is StopReason.BREAKPOINT  # warm code: the trap count=1 falls into
    esp = m.reg_read("esp")
    pcs = [m.step().pc for _ in range(4)]
    assert pcs == [sym["printed"] + 5, sym["double_it"], sym["double_it"] + 2, sym["after_call"]]
    assert m.reg_read("esp") == esp and m.reg_read("eax") == 10
    assert m.run().reason is StopReason.EXIT  # back to run mode after stepping


def test_watchpoint_reports_after_the_store(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    m.add_watchpoint(sym["watched"], 4, "watch")
    stop = m.run()
    assert (stop.reason, stop.pc) == (StopReason.WATCHPOINT, sym["after_store"])
    assert (stop.watch_addr, stop.watch_kind) == (sym["watched"], "watch")
    assert u32(m, sym["watched"]) == 0x1234  # the store is visible
    m.remove_watchpoint(sym["watched"], 4, "watch")
    assert m.run().reason is StopReason.EXIT


def test_watchpoint_on_read_modify_write_executes_it_once(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    m.add_watchpoint(sym["counter"] + 2, 1, "awatch")  # a byte inside the dword `addl` writes
    stop = m.run()
    assert (stop.reason, stop.pc) == (StopReason.WATCHPOINT, sym["after_add"])
    assert stop.watch_addr == sym["counter"] + 2
    assert u32(m, sym["counter"]) == 1
    assert m.run().reason is StopReason.EXIT
    assert u32(m, sym["counter"]) == 1


def test_read_watchpoint(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    m.add_watchpoint(sym["watched"], 4, "rwatch")
    stop = m.run()
    assert (stop.reason, stop.pc, stop.watch_kind) == (StopReason.WATCHPOINT, sym["after_load"],
                                                       "rwatch")
    assert m.reg_read("ebx") == 0x1234


def test_watchpoint_while_stepping(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    m.add_breakpoint(sym["before_store"])
    m.run()
    m.add_watchpoint(sym["watched"], 4, "watch")
    stop = m.step()
    assert (stop.reason, stop.pc, stop.watch_addr) == (StopReason.WATCHPOINT,
                                                       sym["after_store"], sym["watched"])


def test_code_hook_records_and_stops(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    seen: list[int] = []
    handle = m.add_code_hook(sym["double_it"], lambda mm: seen.append(mm.reg_read("eax")) or True)
    stop = m.run()
    assert (stop.reason, stop.pc, seen) == (StopReason.HOOK, sym["double_it"], [5])
    assert m.run().reason is StopReason.EXIT  # resuming does not run the hook twice
    assert seen == [5]
    m.remove_code_hook(handle)
    m.reset()
    assert m.run().reason is StopReason.EXIT and seen == [5]


def test_code_hook_and_breakpoint_share_an_address(progs):
    m = boot(progs, "basic")
    sym = symbols(progs["basic"])
    seen: list[int] = []
    m.add_code_hook(sym["loop_top"], lambda mm: seen.append(mm.reg_read("ecx")) and False)
    m.add_breakpoint(sym["loop_top"])
    reasons = [m.run().reason for _ in range(4)]
    assert reasons == [StopReason.BREAKPOINT] * 3 + [StopReason.EXIT]
    assert seen == [3, 2, 1]


def test_interrupt_from_another_thread_stops_an_endless_loop(progs):
    m = boot(progs, "spin")
    sym = symbols(progs["spin"])
    m.reg_write("eip", sym["forever"])
    result: list = []
    thread = threading.Thread(target=lambda: result.append(m.run()))
    thread.start()
    deadline = time.monotonic() + 10
    while not m.running and time.monotonic() < deadline:
        time.sleep(0.001)
    assert m.running
    m.interrupt()
    thread.join(10)
    assert not thread.is_alive()
    stop = result[0]
    assert stop.reason is StopReason.INTERRUPTED
    assert sym["forever"] <= stop.pc <= sym["forever"] + 3


# --- bad input -----------------------------------------------------------------------------------
def test_bad_guest_images(progs, tmp_path):
    junk = tmp_path / "junk.elf"
    junk.write_bytes(b"this is not an ELF file at all" * 4)
    rom = str(progs["rom"])
    cases = {junk: "neither a Linux bzImage nor a multiboot ELF", progs["basic64"]: "not a 32-bit x86 ELF",
             progs["nomultiboot"]: "no multiboot header"}
    for path, msg in cases.items():
        with pytest.raises(GuestImageError) as e:
            Machine.from_files(str(path), rom=rom)
        assert msg in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(GuestImageError):
        Machine.from_files(str(tmp_path / "missing.elf"), rom=rom)


def test_bad_rom_images(progs, tmp_path):
    good = progs["rom"].read_bytes()
    bad_sum = tmp_path / "sum.bin"
    bad_sum.write_bytes(good[:-1] + bytes([(good[-1] + 1) & 0xFF]))
    bad_sig = tmp_path / "sig.bin"
    bad_sig.write_bytes(b"\x00" + good[1:])
    for path, msg in ((bad_sum, "checksum"), (bad_sig, "not an option ROM"),
                      (tmp_path / "missing.bin", "cannot read ROM")):
        with pytest.raises(RomError) as e:
            Machine.from_files(str(progs["basic"]), rom=str(path))
        assert msg in str(e.value) and "\n" not in str(e.value)


def test_vmigdb_run_streams_serial_and_exits_with_the_guest_code(progs):
    proc = subprocess.run([sys.executable, "-m", "vmigdb.cli", "run", str(progs["basic"]),
                           "--rom", str(progs["rom"])], check=False, capture_output=True,
                          timeout=60)
    assert proc.stdout == b"hello from basic\n"
    assert proc.returncode == 0x21, proc.stderr


@pytest.mark.parametrize("mode", ["copy", "inplace"])
def test_demo_guest_passes_its_checks(built, mode):
    """The real ROM and demo guest (built by ``make all``): every check passes, exit code 0."""
    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline=f"rom={mode}")
    out: list[bytes] = []
    m.on_serial = out.append
    stop = m.run()
    while stop.reason is StopReason.HOOK:
        stop = m.run()
    text = b"".join(out).decode(errors="replace")
    assert (stop.reason, stop.exit_code) == (StopReason.EXIT, 0), (stop.message, text[-2000:])
    assert f"mode={mode}" in text and "result: ok" in text
