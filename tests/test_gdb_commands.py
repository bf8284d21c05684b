"""The ``vmi`` gdb commands in real gdb against QEMU's gdbstub (the portable path), on the demo
guest and the real ROM, checked against what the guest itself logs on COM1.

Each test runs one ``gdb -batch`` session on its own QEMU; ``echo`` markers split the output
per command. The guest is stopped at a breakpoint before it exits, because QEMU closes the
connection when the guest writes isa-debug-exit.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Built
from gdblayout import slot_layout
from targets import Target, start_qemu, start_stub

from vmigdb import abi, decode, pvops, rominfo, sites
from vmigdb import trace as tr
from vmigdb.abi import VmiCall
from vmigdb.mi import GDB

WIDTH = 250


def gdb_session(built: Built, port: int | None, steps: list[tuple[str, str]],
                timeout: float = 180, env: dict[str, str | None] | None = None,
                tracebacks: bool = False) -> dict[str, str]:
    """Run gdb with vmigdb.py on the guest, connected to ``port``; returns each step's output
    by name (``steps`` = (name, command)). ``env`` changes the environment (None removes a
    variable; NO_COLOR=1 is the default). Fails on any Python traceback unless ``tracebacks``
    (a session with ``set vmi debug on``)."""
    argv = [GDB, "-nx", "-batch", "-x", str(built.repo / "vmigdb.py"),
            "-ex", f"set width {WIDTH}", "-ex", "set confirm off", "-ex", f"file {built.guest}"]
    if port is not None:
        argv += ["-ex", f"target remote 127.0.0.1:{port}"]
    for name, command in steps:
        argv += ["-ex", f"echo \\n@@{name}@@\\n", "-ex", command]
    argv += ["-ex", "echo \\n@@end@@\\n"]
    environ = {**os.environ, "NO_COLOR": "1", "COLUMNS": str(WIDTH)}
    for k, v in (env or {}).items():
        if v is None:
            environ.pop(k, None)
        else:
            environ[k] = v
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=environ,
                       check=False)
    out = r.stdout + r.stderr
    if not tracebacks:
        assert "Traceback" not in out and "Python Exception" not in out, out[-5000:]
    # stderr (error lines) is not interleaved with stdout: attribute it by running order.
    parts = re.split(r"^@@(\w+)@@$", r.stdout, flags=re.MULTILINE)
    sections = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    sections["_stderr"] = r.stderr
    sections["_all"] = out
    return sections


def error_lines(sections: dict[str, str]) -> list[str]:
    return [ln for ln in sections["_stderr"].splitlines() if ln.strip()]


def serial_text(t: Target) -> str:
    return t.serial.read_bytes().decode(errors="replace").replace("\r", "")


@pytest.fixture
def qemu_copy(built: Built, tmp_path: Path) -> Iterator[Target]:
    t = start_qemu(built.guest, built.rom, "rom=copy", tmp_path)
    yield t
    t.stop()


def _copy_base(serial: str) -> tuple[int, int]:
    """(linear base the guest calls its ROM copy at, the copy's physical address)."""
    m = re.search(r"copied to phys (0x[0-9a-f]+), calling it at (0x[0-9a-f]+)", serial)
    assert m, serial
    return int(m[2], 16), int(m[1], 16)


def test_rom_sites_decode_pte_and_usage(built: Built, qemu_copy: Target) -> None:
    info = rominfo.parse_rom(built.rom.read_bytes())
    elf = sites.ElfImage(built.guest.read_bytes())
    records = sites.sites_from_elf(elf)
    setpxe = info.call_table[VmiCall.SetPxE]
    s = gdb_session(built, qemu_copy.port, [
        ("brk", "break test_irq_flags"), ("run", "continue"),
        ("rom", "vmi rom"),
        ("sites", "vmi sites"),
        ("decode_site", f"vmi decode {records[0].addr:#x}"),
        ("decode_entry", f"vmi decode vmi.base+{setpxe:#x}"),
        ("pte_rom", "vmi pte vmi.base"),
        ("pte_hole", "vmi pte 0x3ffc0000"),
        ("bad_pte", "vmi pte"),
        ("bad_rom", "vmi rom --insns x"),
        ("bad_call", "vmi trace --call Nope"),
        ("bad_batches", "vmi batches --bogus"),
    ])
    base, copy_phys = _copy_base(serial_text(qemu_copy))

    rom = s["rom"]
    assert "'cVmi' (VMI)" in rom and "55 aa (option ROM)" in rom
    assert re.search(r"API version\s+3\.0", rom) and re.search(r"ROM version\s+\d+\.\d+", rom)
    assert "'GPL v2'" in rom and "15ad:0801" in rom
    assert f"{base:#x}" in rom and "copy in RAM (the guest's vmi.base)" in rom
    assert "BAD" not in rom and re.search(r"checksum\s+(ok|live copy)", rom)
    assert "in place (Linux's scan through PAGE_OFFSET + phys)" in rom and "0xc00c0000" in rom
    assert rom.count("CALL_REL") == len(abi.IDENTITY_ROM_CALLS)
    for call, off in info.call_table.items():
        if off:
            native = abi.CALLS[call].native or "-"
            assert re.search(rf"{call.name} vmi_{call.name}\s+│\s+{base + off:#x}\s+│ "
                             rf"CALL_REL.*│ {re.escape(native)}", rom), call
    assert "cpuid; ret" in rom and "lgdt [eax]; ret" in rom

    text = s["sites"]
    layout = slot_layout(built.guest)
    relocation = rom_relocation(info, base)
    assert f"{len(records)} patch sites" in text and len(records) == 38
    patched = [r for r in records if sites.expect(r, layout, relocation).patched]
    assert (f"sites=38 call={len(patched)} native={38 - len(patched)}; slots vmi_patch "
            f"rewrites: {len(patched)}; Linux's rule: ok=38 WRONG=0") in text
    for rec in records:
        native = sites.describe_insns(decode.disassemble(elf.read(rec.addr, rec.len), rec.addr))
        exp = sites.expect(rec, layout, relocation)
        line = next(ln for ln in text.splitlines() if f"│ {rec.addr:#x} │" in ln)
        assert exp.describe() in line and native in line, line
        if exp.patched:  # the ROM entry of the call vmi_patch asked get_reloc about
            entry = base + info.call_table[pvops.PATCHED_OPS[rec.op(layout)]]
            assert exp.target == entry and f"call {entry:#x}" in line, line
        else:
            assert "unchanged" in line, line
        assert line.rstrip().endswith("ok │"), line

    first = records[0]
    assert sites.expect(first, layout, relocation).describe() in s["decode_site"]
    assert "native (ELF)" in s["decode_site"] and "verdict" in s["decode_site"]
    assert "Linux's rule" in s["decode_site"]
    assert f"{base + setpxe:#x} is the SetPxE entry" in s["decode_entry"]
    assert "pte in eax (pte), ptep in edx (ptep), flags in ecx (pte_flags)" in \
        s["decode_entry"]

    assert f"{base:#x} -> phys {copy_phys:#x}" in s["pte_rom"]
    assert "Qqemu.PhyMemMode" in s["pte_rom"] and "PDE" in s["pte_rom"]
    assert "0x3ffc0000 is not mapped" in s["pte_hole"]

    errors = error_lines(s)
    assert "usage: vmi pte [--cr3 CR3] [--pae | --no-pae] va" in errors
    assert any(e.startswith("usage: vmi rom") for e in errors)
    assert any(e.startswith("vmi trace: unknown VMI call 'Nope'") for e in errors), errors
    assert any(e.startswith("usage: vmi batches") for e in errors)


def rom_relocation(info: rominfo.RomInfo, base: int) -> sites.Relocation:
    """get_reloc's answers of the ROM at ``base``, as the live ROM's call table gives them."""
    return lambda call: (info.relocation(call), base + info.call_table[call]
                         if info.call_table.get(call) else None)


def _hex(m: re.Match[str], group: str) -> int:
    return int(m[group], 16)


def test_trace_span_matches_the_guest_log(built: Built, qemu_copy: Target,
                                          tmp_path: Path) -> None:
    saved = tmp_path / "span.jsonl"
    s = gdb_session(built, qemu_copy.port, [
        ("brk", "break vmi_activate"), ("run", "continue"),
        ("start", "vmi trace start"),
        ("brk2", "break pt_workload"), ("run2", "continue"),
        ("brk3", "break pv_inval_page"), ("run3", "continue"),  # in the first lazy regions
        ("status", "vmi trace status"),
        ("all", "vmi trace --all"),
        ("setpxe", "vmi trace 3 --call SetPxE"),
        ("batch1", "vmi batch 1"),
        ("save", f"vmi trace save {saved}"),
    ])
    serial = serial_text(qemu_copy)
    base, _ = _copy_base(serial)
    assert "recording (portable path)" in s["start"] and "watching vmi.base" in s["start"]
    assert re.search(r"source\s+portable", s["status"]) and re.search(r"errors\s+0", s["status"])
    events = tr.read_trace(saved).events
    assert isinstance(events[0], tr.RomInit) and events[0].base == base and events[0].batched
    calls = [e for e in events if isinstance(e, tr.RomCall)]
    returns = {e.call_seq: e for e in events if isinstance(e, tr.RomReturn)}
    assert all(base <= c.entry < base + 0x2000 for c in calls)

    # CPUID: arguments and results equal the guest's own log line.
    for m in re.finditer(r"^cpuid leaf=(?P<leaf>0x[0-9a-f]+) -> eax=(?P<eax>0x[0-9a-f]+) "
                         r"ebx=(?P<ebx>0x[0-9a-f]+) ecx=(?P<ecx>0x[0-9a-f]+) "
                         r"edx=(?P<edx>0x[0-9a-f]+)$", serial, re.MULTILINE):
        call = next(c for c in calls if c.call == "CPUID" and c.args["leaf"] == _hex(m, "leaf"))
        assert returns[call.seq].results == {r: _hex(m, r) for r in ("eax", "ebx", "ecx", "edx")}
    assert sum(c.call == "CPUID" for c in calls) == 2

    # SetCR3: the value the guest logged before calling it.
    m = re.search(r"^setcr3 (0x[0-9a-f]+) \(A\)$", serial, re.MULTILINE)
    assert m
    cr3 = next(c for c in calls if c.call == "SetCR3")
    assert cr3.args == {"value": int(m[1], 16)}
    row = next(ln for ln in s["all"].splitlines() if re.match(rf"│\s+{cr3.seq} │", ln))
    assert "SetCR3" in row and "pv_write_cr3" in row

    # SetPxE: the first deferred update is the one the guest logged.
    m = re.search(r"^setpxe pte=(0x[0-9a-f]+) ptep=(0x[0-9a-f]+) flags=(0x[0-9a-f]+)$", serial,
                  re.MULTILINE)
    assert m
    pxe = next(c for c in calls if c.call == "SetPxE" and c.args["flags"] & abi.VMI_PAGE_DEFER)
    assert pxe.args == {"pte": int(m[1], 16), "ptep": int(m[2], 16), "flags": int(m[3], 16)}
    flags = int(m[3], 16)
    assert f"flags={flags:#x} (PT CURRENT_AS DEFER va={flags & 0xFFFFF000:#x})" in s["all"]
    assert "leaf=0x0 (vendor)" in s["all"] and f"value={cr3.args['value']:#x} (pgdir=" in s["all"]
    assert "pv_set_pxe" in s["setpxe"] and "VMI trace: 3 of" in s["setpxe"]

    # The batch that applied it: old 0 -> the logged PTE, P and RW newly set.
    assert f"ptep={int(m[2], 16):#x}  0x0 -> {int(m[1], 16):#x}  +P +RW" in s["batch1"]
    assert "trigger SetLazyMode" in s["batch1"] and "TLB action INVLPG" in s["batch1"]


def test_batches_over_a_whole_run(built: Built, qemu_copy: Target, tmp_path: Path) -> None:
    svg, html, saved = tmp_path / "b.svg", tmp_path / "b.html", tmp_path / "run.jsonl"
    traced = ("SetLazyMode", "SetCR3", "InvalPage", "FlushTLB")
    s = gdb_session(built, qemu_copy.port, [
        ("brk", "break vmi_activate"), ("run", "continue"),
        ("start", f"vmi trace start --calls {','.join(traced)}"),
        ("brk2", "break guest_exit"), ("run2", "continue"),
        ("batches", f"vmi batches --chart --svg {svg} --html {html}"),
        ("save", f"vmi trace save {saved}"),
        ("del", "delete"), ("run3", "continue"),
        ("gone", "vmi rom"),
        ("after", "vmi batches"),
    ])
    serial = serial_text(qemu_copy)
    m = re.search(r"^summary: .* deferred=(\d+) flushes=(\d+)$", serial, re.MULTILINE)
    assert m, serial
    deferred, flushes = int(m[1]), int(m[2])
    text = s["batches"]
    assert f"batches={flushes} deferred updates={deferred} exits saved={deferred - flushes}" \
        in text
    m = re.search(r"^pt flushes by trigger: (.*)$", serial, re.MULTILINE)
    assert m
    guest = dict(w.split("=") for w in m[1].split())
    words = {"lazy": "SetLazyMode", "flushtlb": "FlushTLB", "invalpage": "InvalPage",
             "setcr3": "SetCR3", "full": "QueueFull", "ordering": "Ordering"}
    for word, name in words.items():
        if int(guest[word]):
            assert f"{name}={guest[word]}" in text, name
    assert "batch sizes" in text and "65-128" in text
    assert svg.read_text().lstrip().startswith("<svg") and "batches=" in svg.read_text()
    assert "<html" in html.read_text() and f"deferred updates={deferred}" in html.read_text()

    # Each flush follows the traced call that triggered it.
    events = tr.read_trace(saved).events
    last_call: tr.RomCall | None = None
    seen = 0
    for e in events:
        if isinstance(e, tr.RomCall):
            last_call = e
        elif isinstance(e, tr.BatchFlush) and e.trigger in traced:
            assert last_call is not None and last_call.call == e.trigger, e
            seen += 1
    assert seen == sum(int(guest[w]) for w in ("lazy", "flushtlb", "invalpage", "setcr3"))

    # The guest exits, QEMU closes the connection: one line, and the trace stays readable.
    assert "Remote connection closed" in s["_all"]
    gone = [ln for ln in error_lines(s) if "no live target" in ln]
    assert len(gone) == 1 and gone[0].startswith("vmi: no live target")
    assert f"deferred updates={deferred}" in s["after"]


def test_target_without_a_rom(built: Built, tmp_path: Path) -> None:
    t = start_qemu(built.guest, None, "rom=copy", tmp_path)
    port = t.port
    try:
        s = gdb_session(built, port, [
            ("brk", "break vmi_probe"), ("run", "continue"),
            ("rom", "vmi rom"),
            ("sites", "vmi sites"),
        ])
    finally:
        t.stop()
    errors = error_lines(s)
    assert any(e.startswith("no VMI ROM found") for e in errors), errors
    # No ROM: Linux runs natively, so every site keeps its native code, and that is right.
    assert s["sites"].count("unchanged") == 38
    assert "sites=38 native=38;" in s["sites"] and "Linux's rule: ok=38 WRONG=0" in s["sites"]
    assert "no VMI ROM found" in s["sites"]


def test_inplace_rom_is_found_where_linux_calls_it(built: Built, tmp_path: Path) -> None:
    t = start_qemu(built.guest, built.rom, "rom=inplace", tmp_path)
    try:
        s = gdb_session(built, t.port, [
            ("brk", "break test_irq_flags"), ("run", "continue"),
            ("rom", "vmi rom"), ("sites", "vmi sites --call GetInterruptMask"),
        ])
    finally:
        t.stop()
    info = rominfo.parse_rom(built.rom.read_bytes())
    assert "in place (Linux's scan through PAGE_OFFSET + phys); the guest's vmi.base" in s["rom"]
    assert re.search(r"0xc00c0000 │ 0xc0000 .* active", s["rom"])
    entry = 0xC00C0000 + info.call_table[VmiCall.GetInterruptMask]
    assert f"pv_irq_ops.save_fl -> GetInterruptMask (CALL_REL) at {entry:#x}" in s["sites"]
    assert f"call {entry:#x}" in s["sites"] and "WRONG=0" in s["sites"]


def test_commands_without_a_target(built: Built) -> None:
    s = gdb_session(built, None, [
        ("help", "help vmi"), ("rom", "vmi rom"), ("trace", "vmi trace"),
        ("status", "vmi trace status"), ("debug", "show vmi debug"),
    ])
    for name in ("rom", "symbols", "trace", "sites", "pvops", "decode", "batches", "batch",
                 "pte"):
        assert f"vmi {name} -- " in s["help"], name
    errors = error_lines(s)
    assert any(e.startswith("vmi: no live target") for e in errors), errors
    assert any(e.startswith("no trace events yet") for e in errors), errors
    assert "vmi trace: not started" in s["status"]
    assert "vmi debug is off." in s["debug"]


# --- vmigdb's stub: the fast path, and the portable path agreeing with it -----------------------


def _stub_span(built: Built, tmp_path: Path, mode: str, saved: Path) -> dict[str, str]:
    tmp_path.mkdir()
    t = start_stub(built.guest, built.rom, "rom=copy", tmp_path)
    try:
        return gdb_session(built, t.port, [
            ("brk", "break vmi_activate"), ("run", "continue"),
            ("start", f"vmi trace start {mode}".strip()),
            ("brk2", "break pt_workload"), ("run2", "continue"),
            ("status", "vmi trace status"),
            ("save", f"vmi trace save {saved}"),
        ])
    finally:
        t.stop()


def test_fast_and_portable_paths_record_the_same_events(built: Built, tmp_path: Path) -> None:
    fast, portable = tmp_path / "fast.jsonl", tmp_path / "portable.jsonl"
    s_fast = _stub_span(built, tmp_path / "a", "", fast)
    s_port = _stub_span(built, tmp_path / "b", "--portable", portable)
    assert re.search(r"source\s+stub", s_fast["status"]), s_fast["status"]
    assert re.search(r"source\s+portable", s_port["status"]), s_port["status"]
    a, b = tr.read_trace(fast).events, tr.read_trace(portable).events
    assert len(a) == len(b) > 100
    for x, y in zip(a, b, strict=True):
        if isinstance(x, tr.RomReturn) and x.call == "RDTSC":  # the clock moved on
            assert isinstance(y, tr.RomReturn) and y.call == "RDTSC"
            continue
        assert x == y


def test_fast_path_batches_over_a_whole_run(built: Built, tmp_path: Path) -> None:
    t = start_stub(built.guest, built.rom, "rom=copy", tmp_path)
    try:
        s = gdb_session(built, t.port, [
            ("brk", "break vmi_activate"), ("run", "continue"),
            ("start", "vmi trace start"),
            ("brk2", "break guest_exit"), ("run2", "continue"),
            ("batches", "vmi batches"),
            ("trace", "vmi trace 5 --call SetLazyMode"),
        ])
    finally:
        t.stop()
    serial = serial_text(t)
    m = re.search(r"^summary: .* calls=(\d+) deferred=(\d+) flushes=(\d+)$", serial, re.MULTILINE)
    assert m, serial
    calls, deferred, flushes = int(m[1]), int(m[2]), int(m[3])
    assert "the stub records in the machine" in s["start"]
    assert f"batches={flushes} deferred updates={deferred}" in s["batches"]
    assert f", {calls} ROM calls" in s["trace"] and "mode=0x0 (OFF)" in s["trace"]


# --- output: colour, width, one write per view --------------------------------------------------

SCRIPTS = Path(__file__).parent / "gdbscripts"
ANSI = "\x1b["


@pytest.fixture
def stub_copy(built: Built, tmp_path: Path) -> Iterator[Target]:
    t = start_stub(built.guest, built.rom, "rom=copy", tmp_path)
    yield t
    t.stop()


def _views(built: Built, t: Target, env: dict[str, str | None],
           steps: list[tuple[str, str]]) -> dict[str, str]:
    return gdb_session(built, t.port, [("brk", "break test_cpuid"), ("run", "continue"),
                                       *steps], env=env)


def test_colour_follows_the_settings_and_no_color(built: Built, tmp_path: Path) -> None:
    """-batch is plain (gdb's style is off); auto stays plain on a pipe even with style on;
    ``set vmi color on`` forces ANSI colour; NO_COLOR wins over it; off is plain."""
    steps = [("batch", "vmi sites"),
             ("style_on", "set style enabled on"), ("auto_pipe", "vmi sites"),
             ("on", "set vmi color on"), ("forced", "vmi sites"), ("show", "show vmi color"),
             ("off", "set vmi color off"), ("plain", "vmi sites"),
             ("bad", "set vmi color sometimes")]
    results = {}
    for no_color in (None, "1"):
        d = tmp_path / f"nc{no_color}"
        d.mkdir()
        t = start_stub(built.guest, built.rom, "rom=copy", d)
        try:
            results[no_color] = _views(built, t, {"NO_COLOR": no_color}, steps)
        finally:
            t.stop()
    free, no_color = results[None], results["1"]
    for s in (free, no_color):
        assert "38 patch sites" in s["batch"] and ANSI not in s["batch"]
        assert "38 patch sites" in s["auto_pipe"] and ANSI not in s["auto_pipe"]
        assert "vmi color is on." in s["show"]
        assert ANSI not in s["plain"] and "38 patch sites" in s["plain"]
        assert 'Undefined item: "sometimes".' in error_lines(s)
    assert ANSI in free["forced"] and "38 patch sites" in free["forced"]
    assert ANSI not in no_color["forced"] and "38 patch sites" in no_color["forced"]


def _gdb_on_a_terminal(built: Built, port: int, commands: list[str]) -> str:
    """Run gdb (not -batch) with a pseudo-terminal as its terminal, so gdb styles its output
    as it would for a user; returns everything it wrote."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm"
    argv = [GDB, "-nx", "-q", "-x", str(built.repo / "vmigdb.py"), "-ex", "set height 0",
            "-ex", "set width 200", "-ex", "set confirm off", "-ex", f"file {built.guest}",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        argv += ["-ex", c]
    argv += ["-ex", "detach", "-ex", "quit"]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal closed: gdb is gone
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"gdb still running: {out[-2000:]!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(master)
    return out.decode(errors="replace").replace("\r", "")


def test_colour_auto_follows_gdb_style_on_a_terminal(built: Built, stub_copy: Target) -> None:
    text = _gdb_on_a_terminal(built, stub_copy.port, [
        "echo @@styled\\n", "vmi rom", "set style enabled off", "echo @@plain\\n", "vmi rom",
        "echo @@end\\n"])
    assert "Traceback" not in text
    styled = text.split("@@styled\n")[1].split("@@plain\n")[0]
    plain = text.split("@@plain\n")[1].split("@@end\n")[0]
    sgr = re.compile(r"\x1b\[[0-9;]*m")
    assert "'cVmi' (VMI)" in sgr.sub("", styled) and "'cVmi' (VMI)" in plain
    assert len(sgr.findall(styled)) > 10, styled[:2000]
    assert not sgr.findall(plain), plain[:2000]


def test_width_follows_gdb_and_each_view_is_one_write(built: Built, stub_copy: Target) -> None:
    s = _views(built, stub_copy, {}, [
        ("wide", "vmi sites"),
        ("w60", "set width 60"),
        ("sites60", "vmi sites"), ("rom60", "vmi rom"), ("pte60", "vmi pte $pc"),
        ("w80", "set width 80"),
        ("count", f"source {SCRIPTS / 'count_writes.py'}"),
        ("rom_writes", "python count_writes('vmi rom')"),
        ("sites_writes", "python count_writes('vmi sites')"),
        ("pte_writes", "python count_writes('vmi pte $pc')"),
    ])
    assert max(len(ln) for ln in s["wide"].splitlines()) > 60  # (so 60 is a real limit)
    for name in ("sites60", "rom60", "pte60"):
        lines = s[name].splitlines()
        assert len(lines) > 5 and max(len(ln) for ln in lines) <= 60, (name, s[name])
    assert "38 patch sites" in s["sites60"] and "VMI ROM" in s["rom60"]
    assert "@@writes vmi rom 1" in s["rom_writes"] and "'cVmi' (VMI)" in s["rom_writes"]
    assert "@@writes vmi sites 1" in s["sites_writes"]
    assert "@@writes vmi pte $pc 1" in s["pte_writes"]
    for name in ("rom_writes", "sites_writes"):
        assert max(len(ln) for ln in s[name].splitlines()) <= 80


# --- wrong arguments, a lost connection, tracebacks --------------------------------------------

#: (command, the start of its usage line): every command shows its usage for wrong arguments.
BAD_ARGUMENTS = [
    ("vmi trace --call NOSUCH", "usage: vmi trace "),
    ("vmi trace start --calls SetPxE,NOSUCH", "usage: vmi trace start "),
    ("vmi trace start --bogus", "usage: vmi trace start "),
    ("vmi trace save", "usage: vmi trace save "),
    ("vmi trace stop now", "usage: vmi trace stop|clear|status"),
    ("vmi trace many", "usage: vmi trace "),
    ("vmi batch x", "usage: vmi batch "),
    ("vmi batch", "usage: vmi batch "),
    ("vmi batches --svg", "usage: vmi batches "),
    ("vmi pte", "usage: vmi pte "),
    ("vmi pte 0x1000 --cr3 nosuchsymbol", "usage: vmi pte "),
    ("vmi decode", "usage: vmi decode "),
    ("vmi decode nosuchsymbol", "usage: vmi decode "),
    ("vmi rom junk", "usage: vmi rom "),
    ("vmi rom --insns x", "usage: vmi rom "),
    ("vmi sites --bogus", "usage: vmi sites "),
]


def test_wrong_arguments_print_the_usage_of_every_command(built: Built,
                                                           stub_copy: Target) -> None:
    s = _views(built, stub_copy, {}, [(f"bad{i}", cmd) for i, (cmd, _) in
                                      enumerate(BAD_ARGUMENTS)])
    errors = error_lines(s)
    usages = [e for e in errors if e.startswith("usage: ")]
    assert len(usages) == len(BAD_ARGUMENTS), errors
    for (cmd, usage), line in zip(BAD_ARGUMENTS, usages, strict=True):
        assert line.startswith(usage), (cmd, line)
        # The line after the usage says what was wrong, named by the command.
        why = errors[errors.index(line) + 1]
        assert why.startswith(usage[len("usage: "):].split(" [")[0].split("|")[0].strip()), \
            (cmd, why)
    # Every error line is a usage or its reason: nothing else went wrong.
    assert len(errors) == 2 * len(BAD_ARGUMENTS), errors
    assert any("unknown VMI call 'NOSUCH'" in e for e in errors)
    assert any("cannot evaluate 'x'" in e for e in errors)


def test_a_lost_connection_gives_one_line(built: Built, stub_copy: Target) -> None:
    s = gdb_session(built, stub_copy.port, [
        ("start", "vmi trace start"), ("brk", "break test_cpuid"), ("run", "continue"),
        ("before", "vmi trace 2"),
        ("pid", f"set $target_pid = {stub_copy.proc.pid}"),
        ("kill", f"source {SCRIPTS / 'kill_target.py'}"),
        ("lost", "vmi trace"),
        ("kept", "vmi trace 3"),
        ("rom", "vmi rom"),
    ])
    assert "VMI trace: 2 of" in s["before"]
    errors = error_lines(s)
    assert len(errors) == 2, errors
    # gdb words it by how it noticed: a reset on sending, or end of file on reading.
    assert re.match(r"vmi: the target is gone \((Remote communication error|Remote connection "
                    r"closed)", errors[0]), errors
    assert errors[1].startswith("vmi: no live target"), errors
    # The events fetched before the connection went stay readable.
    assert "VMI trace: 3 of" in s["kept"]


def test_a_lost_connection_before_any_trace_gives_one_line(built: Built,
                                                           stub_copy: Target) -> None:
    s = _views(built, stub_copy, {}, [
        ("pid", f"set $target_pid = {stub_copy.proc.pid}"),
        ("kill", f"source {SCRIPTS / 'kill_target.py'}"),
        ("lost", "vmi trace"),
        ("status", "vmi trace status"),
    ])
    errors = error_lines(s)
    assert len(errors) == 1 and errors[0].startswith("vmi: "), errors
    assert "gone" in errors[0] or "no live target" in errors[0]


def test_tracebacks_only_with_vmi_debug(built: Built) -> None:
    quiet = gdb_session(built, None, [("rom", "vmi rom"), ("bad", "vmi pte")])
    assert "Traceback" not in quiet["_all"]
    loud = gdb_session(built, None, [("debug", "set vmi debug on"), ("rom", "vmi rom")],
                       tracebacks=True)
    assert "Traceback (most recent call last)" in loud["_stderr"]
    assert "TargetGone" in loud["_stderr"]
    assert any(e.startswith("vmi: no live target") for e in error_lines(loud))
