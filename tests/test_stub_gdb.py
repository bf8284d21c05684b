"""Acceptance of vmigdb's gdb remote stub: real gdb 13.1 over MI (vmigdb.mi) against a real
``vmigdb serve`` process on the demo guest and the real ROM, both built from source.

Each test starts its own stub (a fresh machine costs ~0.3 s), so no test depends on another's
state or order. Source lines and addresses are looked up at test time (the guest's sources, its
ELF symbols and ``.parainstructions`` records, its COM1 log), never hard-coded.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Built
from targets import Target, start_qemu, start_stub

from vmigdb import abi, elf, pvops, rominfo, x86
from vmigdb import trace as tr
from vmigdb.mi import Gdb, GdbMiError, quote

PARA_RECORD = struct.Struct("<IBBH")  # Linux's paravirt_patch_site: addr, type, len, clobbers
CALL_REL32 = 0xE8


# --- helpers -----------------------------------------------------------------------------------


def source_line(built: Built, rel: str, text: str, nth: int = 0) -> int:
    """1-based number of the ``nth`` line of ``rel`` whose stripped text is ``text``."""
    lines = (built.repo / rel).read_text().splitlines()
    hits = [i + 1 for i, ln in enumerate(lines) if ln.strip() == text]
    assert len(hits) > nth, f"{text!r} not found in {rel}"
    return hits[nth]


def symbols(elf: Path) -> dict[str, tuple[int, int]]:
    """name -> (address, size) from ``nm -S`` (only symbols with a size)."""
    out = subprocess.run(["nm", "-S", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    syms = {}
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) == 4:
            syms[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return syms


def serial_text(t: Target) -> str:
    return t.serial.read_bytes().decode(errors="replace").replace("\r", "")


def wait_serial(t: Target, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """Poll the guest's COM1 log until ``pattern`` appears (deadline, no bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, serial_text(t))
        if m:
            return m
        assert time.monotonic() < deadline, f"{pattern!r} not in serial:\n{serial_text(t)}"
        time.sleep(0.01)


def frame_line(stopped: dict) -> tuple[str, int] | None:
    """(file, line) of a ``*stopped`` record's frame, if gdb knows it."""
    frame = stopped["payload"].get("frame") or {}
    if "line" not in frame:
        return None
    return frame.get("file", ""), int(frame["line"])


def stopped_addr(stopped: dict) -> int:
    return int(stopped["payload"]["frame"]["addr"], 16)


def break_at(g: Gdb, location: str) -> int:
    """Insert a breakpoint; returns its address."""
    bkpt = g.ok(f"-break-insert {location}").payload["bkpt"]
    return int(bkpt["addr"], 16)


def run_to(g: Gdb, location: str) -> dict:
    """Break at ``location``, continue, and require a breakpoint hit there (bp deleted)."""
    bkpt = g.ok(f"-break-insert {location}").payload["bkpt"]
    stopped = g.resume()
    assert stopped["payload"].get("reason") == "breakpoint-hit", stopped
    assert stopped_addr(stopped) == int(bkpt["addr"], 16), stopped
    g.ok(f"-break-delete {bkpt['number']}")
    return stopped


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def stubs(built: Built, tmp_path: Path) -> Iterator[Callable[[str], Target]]:
    """Start ``vmigdb serve`` processes (one per call); all are ended in teardown."""
    started: list[Target] = []

    def start(cmdline: str = "rom=copy") -> Target:
        folder = tmp_path / f"stub{len(started)}"
        folder.mkdir()
        t = start_stub(built.guest, built.rom, cmdline, folder)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


@pytest.fixture
def gdbs(built: Built) -> Iterator[Callable[[], Gdb]]:
    """Start gdb processes (MI3); all are ended by pid in teardown, before the stubs."""
    started: list[Gdb] = []

    def start(mi_async: bool = False) -> Gdb:
        g = Gdb(mi_async=mi_async, cwd=str(built.repo))
        started.append(g)
        return g

    yield start
    for g in started:
        g.close()


@pytest.fixture
def session(built: Built, stubs, gdbs) -> tuple[Target, Gdb]:
    """A stub on ``rom=copy`` and one gdb connected to it, stopped at the guest's entry."""
    t = stubs("rom=copy")
    g = gdbs()
    stopped = g.connect(str(built.guest), t.port)
    entry = elf.entry(built.guest)
    assert stopped_addr(stopped) == entry
    return t, g


# --- the acceptance list -------------------------------------------------------------------------


def test_connect_and_break_on_source_line(built: Built, session) -> None:
    _t, g = session
    line = source_line(built, "guest/kmain.c", "vmi_activate();")
    addr = break_at(g, f"guest/kmain.c:{line}")
    stopped = g.resume()
    assert stopped["payload"]["reason"] == "breakpoint-hit"
    assert frame_line(stopped) == ("guest/kmain.c", line)
    assert stopped["payload"]["frame"]["func"] == "kmain"
    assert g.value("$eip") == addr == stopped_addr(stopped)


def _sites(g: Gdb) -> list[tuple[int, int, int, int]]:
    """The guest's .parainstructions records, read through gdb from the loaded image."""
    start = g.value("(unsigned)&__start_parainstructions")
    stop = g.value("(unsigned)&__stop_parainstructions")
    raw = g.read_memory(start, stop - start)
    return [PARA_RECORD.unpack_from(raw, off) for off in range(0, len(raw), PARA_RECORD.size)]


def test_step_into_patched_site_through_rom_and_back(built: Built, session) -> None:
    t, g = session
    func, size = symbols(built.guest)["test_irq_flags"]
    run_to(g, "test_irq_flags")
    in_func = sorted(s for s in _sites(g) if func <= s[0] < func + size)
    assert in_func, "test_irq_flags has no .parainstructions site"
    site, call_type, site_len, _clobbers = in_func[0]
    assert site_len >= 5

    stopped = run_to(g, f"*{site:#x}")
    assert stopped_addr(stopped) == site
    code = g.read_memory(site, site_len)
    assert code[0] == CALL_REL32, f"site {site:#x} not patched: {code.hex()}"
    assert code[5:] == b"\x90" * (site_len - 5)  # NOP fill after the call
    rom_entry = (site + 5 + struct.unpack_from("<i", code, 1)[0]) & 0xFFFFFFFF

    m = re.search(r"(\d+) bytes copied to phys (0x[0-9a-f]+), calling it at (0x[0-9a-f]+)",
                  serial_text(t))
    assert m, serial_text(t)
    rom_size, rom_base = int(m[1]), int(m[3], 16)
    assert rom_base <= rom_entry < rom_base + rom_size
    # The record's type is a pv-op slot, PARAVIRT_PATCH(op): gdb computes each patched op's
    # slot from the guest's own struct, and the site's names the VMI call vmi_patch used.
    slots = {g.value(f"(unsigned)&((struct paravirt_patch_template *)0)->{op} / "
                     "sizeof(void *)"): op for op in pvops.PATCHED_OPS if op.count(".") == 1
             and not op.endswith("syscall_ret")}
    call = pvops.PATCHED_OPS[slots[call_type]]
    assert rominfo.parse_rom(built.rom.read_bytes()).call_table[call] == rom_entry - rom_base, call
    rom_info = json.loads(g.console("monitor vmi rom").text)
    assert rom_info["base"] == rom_base

    esp0 = g.value("$esp")
    stopped = g.resume("-exec-step-instruction")
    assert stopped["payload"]["reason"] == "end-stepping-range"
    assert g.value("$eip") == stopped_addr(stopped) == rom_entry
    assert g.value("$esp") == esp0 - 4
    assert g.value("*(unsigned *)$esp") == site + 5  # the call's return address

    steps = 1
    while g.value("$eip") != site + 5:
        eip = g.value("$eip")
        assert rom_base <= eip < rom_base + rom_size, f"left the ROM at {eip:#x}"
        g.resume("-exec-step-instruction")
        steps += 1
        assert steps < 200, "never returned from the ROM"
    assert g.value("$esp") == esp0
    assert g.value("$cs") & 3 == 0  # still ring 0
    if call is abi.VmiCall.DisableInterrupts:
        assert not g.value("$eflags") & 0x200, "the cli site left IF set"
    # The guest still runs correctly after the stepping: on to its next check.
    line = source_line(built, "guest/kmain.c", "test_control_registers();")
    g.ok(f"-break-insert guest/kmain.c:{line}")
    assert frame_line(g.resume()) == ("guest/kmain.c", line)
    assert "irq: cli/sti/save/restore sites ok" in serial_text(t)


def test_read_and_write_every_register_class(built: Built, session) -> None:
    t, g = session
    run_to(g, "test_iret")  # after test_descriptor_tables: LDT and TR are loaded

    # general registers, eip, eflags
    saved = {r: g.value(f"${r}") for r in ("eax", "ebx", "ecx", "edx", "esi", "edi", "eip")}
    for i, reg in enumerate(("eax", "ebx", "ecx", "edx", "esi", "edi")):
        g.console(f"set ${reg} = {0x11111111 * (i + 1):#x}")
    for i, reg in enumerate(("eax", "ebx", "ecx", "edx", "esi", "edi")):
        assert g.value(f"${reg}") == 0x11111111 * (i + 1), reg
    g.console(f"set $eip = {saved['eip'] + 1:#x}")
    assert g.value("$eip") == saved["eip"] + 1
    flags = g.value("$eflags")
    g.console(f"set $eflags = {flags ^ 1:#x}")  # toggle CF
    assert g.value("$eflags") == flags ^ 1
    for reg, value in saved.items():
        g.console(f"set ${reg} = {value:#x}")
    g.console(f"set $eflags = {flags:#x}")
    g.console("maint flush register-cache")  # re-read from the stub, not gdb's cache
    assert {r: g.value(f"${r}") for r in saved} == saved
    assert g.value("$eflags") == flags

    # segment registers: the same flat selector reloads; a bad one is refused, gdb goes on
    ds = g.value("$ds")
    g.console(f"set $ds = {ds:#x}")
    res = g.cmd('-interpreter-exec console "set $ds = 0xfff8"')
    assert res.message == "error" and "ds" in res.error, res.record
    g.console("maint flush register-cache")
    assert g.value("$ds") == ds
    assert g.value("$cs") == 0x08 and g.value("$eip") == saved["eip"]

    # x87
    g.console("set $st0 = 1.5")
    g.console("set $fctrl = 0x27f")
    g.console("maint flush register-cache")
    assert g.evaluate("$st0") == "1.5"
    assert g.value("$fctrl") == 0x27F

    # SSE
    g.console("set $xmm0.v4_int32 = {1, 2, 3, 4}")
    g.console("set $mxcsr = 0x1fa0")
    g.console("maint flush register-cache")
    assert g.evaluate("$xmm0.v4_int32") == "{1, 2, 3, 4}"
    assert g.value("$xmm0.uint128") == (4 << 96) | (3 << 64) | (2 << 32) | 1
    assert g.value("$mxcsr") == 0x1FA0

    # system registers (read; writes where the guest does not care)
    syms = symbols(built.guest)
    assert g.value("$cr0") & (x86.CR0_PG | x86.CR0_PE) == x86.CR0_PG | x86.CR0_PE
    assert g.value("$cr3") == syms["swapper_pg_dir"][0]
    assert g.value("$cr4") == g.value("$cr4")  # readable
    assert g.value("$efer") & ~0xD01 == 0
    assert g.value("$gdtr_base") == syms["gdt"][0]
    assert g.value("$gdtr_limit") == syms["gdt"][1] - 1
    assert g.value("$idtr_base") == syms["idt"][0]
    assert g.value("$idtr_limit") == syms["idt"][1] - 1
    m = re.search(r"SetLDT (0x[0-9a-f]+), SetTR (0x[0-9a-f]+)", serial_text(t))
    assert m, serial_text(t)
    assert g.value("$ldtr") == int(m[1], 16) != 0
    assert g.value("$tr") == int(m[2], 16) != 0
    g.console("set $cr2 = 0x12345678")
    g.console("maint flush register-cache")
    assert g.value("$cr2") == 0x12345678
    cr0_text = g.console("p $cr0").text
    assert "PE" in cr0_text and "PG" in cr0_text  # the flags type from target.xml

    regs = g.registers("x")
    for name in ("eax", "eip", "eflags", "ds", "st0", "fctrl", "xmm0", "mxcsr", "cr0", "cr3",
                 "efer", "gdtr_base", "idtr_limit", "ldtr", "tr"):
        assert name in regs and regs[name] and "unavailable" not in regs[name], name
    assert int(regs["cr2"], 16) == 0x12345678
    # and gdb still drives the machine
    stopped = g.resume("-exec-step-instruction")
    assert stopped["payload"]["reason"] == "end-stepping-range"


def test_cr2_is_what_the_guest_wrote_as_on_qemu_and_reset_clears_it(
        built: Built, stubs, gdbs, tmp_path: Path) -> None:
    """At ``pt_workload_summary`` the last CR2 write is the guest's own (``pv_write_cr2``
    0x12345678, read back through the ROM), made after its ring-3 ``int $0x80`` round trip and
    its page-fault tests. Our machine once reported the address of a hidden fault of its own
    there (``tss+4``, from reading the TSS through the CPU); QEMU is the reference. ``monitor
    reset`` then clears it, as a power-on does."""
    seen = {}
    for kind in ("qemu", "stub"):
        if kind == "qemu":
            t = start_qemu(built.guest, built.rom, "rom=copy", tmp_path)
        else:
            t = stubs("rom=copy")
        try:
            g = gdbs()
            g.connect(str(built.guest), t.port)
            run_to(g, "pt_workload_summary")
            seen[kind] = g.value("$cr2")
        finally:
            if kind == "qemu":
                t.stop()
    assert seen == {"qemu": 0x12345678, "stub": 0x12345678}
    assert "CR2=12345678" in g.console("monitor info registers").text
    g.console("monitor reset")
    g.console("maint flush register-cache")
    assert g.value("$cr2") == 0
    assert "CR2=00000000" in g.console("monitor info registers").text


def test_watchpoint_on_pte(built: Built, session) -> None:
    t, g = session
    # The first SetPxE of the page-table workload, right after the guest logged its pte/ptep.
    line = source_line(built, "guest/ptwork.c", "pv_set_pxe(pte, ptep(&as_a, i), flags_defer(i));")
    bkpt = g.ok(f"-break-insert guest/ptwork.c:{line}").payload["bkpt"]
    stopped = g.resume()
    # (the frame gdb shows may be an inlined callee such as flags_defer: optimised code)
    assert stopped["payload"]["reason"] == "breakpoint-hit"
    assert stopped["payload"]["bkptno"] == bkpt["number"]
    m = wait_serial(t, r"setpxe pte=(0x[0-9a-f]+) ptep=(0x[0-9a-f]+)")
    pte, ptep = int(m[1], 16), int(m[2], 16)
    g.ok("-break-delete")
    assert g.value(f"*(unsigned int *){ptep:#x}") == 0

    wpt = g.ok(f"-break-watch {quote(f'*(unsigned int *){ptep:#x}')}").payload["wpt"]
    stopped = g.resume()
    p = stopped["payload"]
    assert p["reason"] == "watchpoint-trigger", stopped
    assert p["wpt"]["number"] == wpt["number"]
    assert int(p["value"]["old"]) == 0
    assert int(p["value"]["new"]) == pte
    assert g.value(f"*(unsigned int *){ptep:#x}") == pte  # the store is visible at the stop


def _still_running(g: Gdb, seconds: float) -> None:
    """Poll for ``seconds``: no ``*stopped`` may arrive (the guest is running its loop)."""
    try:
        stopped = g.wait_stopped(timeout=seconds)
    except GdbMiError:
        return
    raise AssertionError(f"the guest stopped on its own: {stopped}")


def test_ctrl_c_in_a_long_loop(built: Built, stubs, gdbs) -> None:
    """Interrupt, resume, interrupt again: each stop is SIGINT at a sane pc, and the guest's own
    checks still pass afterwards (an inexact stop corrupts it: Unicorn's cross-thread
    emu_stop used to leave a stale EIP, and resuming re-ran code)."""
    t = stubs("rom=copy stress=100000")
    latencies: dict[str, list[float]] = {}
    for use_signal in (True, False):  # SIGINT to gdb (sync MI), then -exec-interrupt (async)
        how = "SIGINT to gdb" if use_signal else "-exec-interrupt"
        g = gdbs(mi_async=not use_signal)
        g.connect(str(built.guest), t.port)
        for _cycle in range(4):
            g.drain()
            g.pending.clear()
            assert g.cmd("-exec-continue").message == "running"
            wait_serial(t, r"pt n=200 ok")  # the first workload pass is over: deep in the loop
            _still_running(g, 0.2)
            t0 = time.monotonic()
            g.interrupt(use_signal=use_signal)
            stopped = g.wait_stopped(timeout=2.0)
            latencies.setdefault(how, []).append(time.monotonic() - t0)
            assert stopped["payload"]["reason"] == "signal-received", stopped
            assert stopped["payload"]["signal-name"] == "SIGINT"
            assert g.value("$eip") == stopped_addr(stopped)
        g.ok("-target-detach")
        g.close()
    for how, values in latencies.items():
        print(f"Ctrl-C latency ({how}): " + ", ".join(f"{v * 1000:.1f}" for v in values) + " ms")
    # after eight interrupts the guest still runs correctly: the next pass starts and its
    # checks (PTE values, batch counts) hold
    g = gdbs()
    g.connect(str(built.guest), t.port)
    run_to(g, "pt_workload")
    run_to(g, "pt_workload")
    text = serial_text(t)
    assert "FAIL" not in text and "exception" not in text and "result:" not in text, text[-500:]
    assert t.proc.poll() is None


def test_detach_and_reconnect(built: Built, stubs, gdbs) -> None:
    t = stubs("rom=copy")
    g1 = gdbs()
    g1.connect(str(built.guest), t.port)
    run_to(g1, "test_cpuid")
    g1.resume("-exec-step-instruction")  # somewhere that is not a symbol start
    regs = {r: g1.value(f"${r}") for r in ("eip", "esp", "ebp", "eax", "ebx", "cr3", "eflags")}
    stack = g1.read_memory(regs["esp"], 64)
    code = g1.read_memory(regs["eip"], 32)
    cmdline = g1.read_memory(symbols(built.guest)["cmdline"][0], 64)
    g1.ok("-break-insert test_control_registers")  # gdb1's breakpoint must not outlive it
    g1.ok("-target-detach")
    g1.close()

    g2 = gdbs()
    stopped = g2.connect(str(built.guest), t.port)
    assert stopped_addr(stopped) == regs["eip"]
    assert {r: g2.value(f"${r}") for r in regs} == regs
    assert g2.read_memory(regs["esp"], 64) == stack
    assert g2.read_memory(regs["eip"], 32) == code
    assert g2.read_memory(symbols(built.guest)["cmdline"][0], 64) == cmdline
    stopped = run_to(g2, "pt_workload")
    assert stopped["payload"]["frame"]["func"] == "pt_workload"
    assert "cpuid leaf=" in serial_text(t)


def test_kill_then_reconnect(built: Built, stubs, gdbs) -> None:
    t = stubs("rom=copy")
    entry = elf.entry(built.guest)
    g1 = gdbs()
    g1.connect(str(built.guest), t.port)
    run_to(g1, "test_cpuid")
    res = g1.console("kill")
    assert res.message == "done"
    assert g1.cmd("-data-evaluate-expression $eip").message == "error"  # no process any more
    assert t.proc.poll() is None

    g2 = gdbs()
    stopped = g2.connect(str(built.guest), t.port)
    assert stopped_addr(stopped) == entry  # kill reset the machine
    run_to(g2, "test_cpuid")
    assert serial_text(t).count("vmigdb demo guest") == 2  # the guest booted twice
    assert t.proc.poll() is None


def test_guest_exit_is_a_stop_then_the_end(built: Built, stubs, gdbs) -> None:
    """The guest's exit stops first, as gdb's `catch exit` would (the code in the stub's
    console line, the machine still there); the next continue ends it ("exited normally")."""
    t = stubs("rom=inplace")
    g = gdbs()
    g.connect(str(built.guest), t.port)
    g.console("monitor vmi trace on")
    stopped = g.resume(timeout=60)
    p = stopped["payload"]
    assert (p["reason"], p["signal-name"]) == ("signal-received", "SIGTRAP"), stopped
    said = "".join(r.get("payload") or "" for r in g.history if r.get("type") == "target")
    assert "the guest exited with code 0x0 (QEMU status 1): stopped at its exit" in said, said
    # Still inspectable: registers, memory, symbols, the trace the stub kept.
    assert g.value("$eip") == stopped_addr(stopped)
    assert "guest_exit" in g.console("info symbol $eip").text
    status = json.loads(g.console("monitor vmi trace status").text)
    assert status["calls"] > 0 and status["events"] > 0
    stopped = g.resume(timeout=60)
    assert stopped["payload"]["reason"] == "exited-normally", stopped
    assert serial_text(t).rstrip().endswith("result: ok")
    assert t.proc.poll() is None
    # The stub serves the next gdb from a fresh machine.
    g2 = gdbs()
    entry = elf.entry(built.guest)
    assert stopped_addr(g2.connect(str(built.guest), t.port)) == entry


def test_second_gdb_is_refused(built: Built, session, gdbs) -> None:
    t, g1 = session
    eip = g1.value("$eip")
    g2 = gdbs()
    g2.ok(f"-file-exec-and-symbols {built.guest}")
    res = g2.cmd(f"-target-select remote 127.0.0.1:{t.port}", timeout=20)
    assert res.message == "error"
    assert "another gdb is already connected" in res.error + res.output, res
    # the first gdb is unaffected
    assert g1.value("$eip") == eip
    stopped = run_to(g1, "test_irq_flags")
    assert stopped["payload"]["frame"]["func"] == "test_irq_flags"
    # once it detaches, the second one gets in and sees the same state
    g1.ok("-target-detach")
    stopped = g2.connect(str(built.guest), t.port)
    assert stopped["payload"]["frame"]["func"] == "test_irq_flags"


def test_monitor_vmi_trace(built: Built, session) -> None:
    _t, g = session
    status = json.loads(g.console("monitor vmi trace on").text)
    assert status["enabled"] is True
    run_to(g, "guest_exit")
    status = json.loads(g.console("monitor vmi trace status").text)
    assert status["events"] > 0 and status["dropped"] == 0
    lines = g.console("monitor vmi trace dump 0 5").text.splitlines()
    assert len(lines) == 6 and json.loads(lines[5]) == {"type": "more", "next": 5}
    events = [tr.event_from_json(json.loads(ln)) for ln in lines[:5]]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert isinstance(events[0], tr.RomInit)
