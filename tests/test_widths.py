"""Output that reads at 80 and 120 columns, pages whole rows, pipes plain, and commands that
check their arguments, complete and list their settings.

- Pure: the layout rules of ``vmigdb.views.console`` (hex words stay whole when a table is
  squeezed; ``paginate`` never lets a pager split a row).
- Real gdb on vmigdb's stub and the demo guest: every vmi view at 80 and 120 columns keeps every
  hex value of its wide rendering whole and fits the width; gdb at a pseudo-terminal, typed at
  like a user with ``set height``, pages the long tables so that no page starts inside a row;
  ``pipe vmi ... | cat`` is plain text while the terminal gets colour; wrong counts are errors,
  a function name is an address, call names, options and symbols complete, ``show vmi`` lists
  every setting.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Built
from gdblayout import slot_layout
from rich.table import Table
from rich.text import Text
from targets import Target, start_stub

from vmigdb import pvops, sites
from vmigdb.abi import VmiCall
from vmigdb.mi import GDB
from vmigdb.views.console import (
    add_hex_column,
    add_prose_column,
    fit_columns,
    paginate,
    render_text,
)

HEX = re.compile(r"0x[0-9a-f]+")
PAGER = "--Type <RET> for more, q to quit, c to continue without paging--"
SGR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _continues_row(line: str) -> bool:
    """A table line that continues the row above it: a left rule, then a blank first cell."""
    if not line or line[0] not in "│┃":
        return False
    rest = line[1:]
    end = min((rest.find(c) for c in "│┃" if c in rest), default=len(rest))
    return not rest[:end].strip()


def _whole(word: str, text: str) -> bool:
    return re.search(rf"(?<![0-9a-fx]){re.escape(word)}(?![0-9a-f])", text) is not None


# --- pure: the layout rules -----------------------------------------------------------------------


def _table(rows: int) -> Table:
    t = Table(title="sites")
    t.add_column("#", justify="right", no_wrap=True)
    add_hex_column(t, "site")
    add_prose_column(t, "what")
    add_prose_column(t, "code")
    for n in range(rows):
        t.add_row(str(n), f"{0xC1000000 + 7 * n:#x}",
                  Text(f"pv_irq_ops.save_fl -> GetInterruptMask (CALL_REL) at {0xC00C0640:#x}"),
                  Text(f"call dword ptr cs:[{0xC1606448 + n:#x}]; nop x{n % 3}"))
    return fit_columns(t)


@pytest.mark.parametrize("width", [60, 79, 119])
def test_hex_words_stay_whole_when_a_table_is_squeezed(width: int) -> None:
    wide = render_text(_table(12), width=250)
    narrow = render_text(_table(12), width=width)
    assert max(len(ln) for ln in narrow.splitlines()) <= width
    words = {w.strip("[];,") for w in HEX.findall(wide)}
    assert words and all(_whole(w, narrow) for w in words)
    # The prose did wrap (several lines per row), so the check above means something.
    assert sum(1 for ln in narrow.splitlines() if _continues_row(ln)) >= 12


@pytest.mark.parametrize("page", [5, 9, 23])
def test_paginate_never_splits_a_row(page: int) -> None:
    text = render_text(_table(30), width=60)
    paged = paginate(text, page)
    lines = paged.splitlines()
    # Same content, only blank lines added; no page starts inside a row.
    assert [ln for ln in lines if ln.strip()] == [ln for ln in text.splitlines() if ln.strip()]
    for start in range(page, len(lines), page):
        assert not _continues_row(lines[start]), (start, lines[start - 1:start + 1])
    assert paginate(text, 0) == text  # no pager: untouched


def test_nop_padding_and_pvop_slots() -> None:
    """Linux pads with the NOPs its CPU prefers; a single-pointer struct names its slot."""
    site = sites.Site(0x1000, 43, 7, 0)
    for pad in (b"\x66\x90", b"\x89\xf6", b"\x90\x90"):
        call = b"\xe8\x00\x00\x00\x00" + pad
        assert sites.classify(site, call, b"\xff\x15" + bytes(5)).kind == "call"
    assert sites.classify(site, b"\xe8\0\0\0\0\x89\xfe", None).kind == "unverified"
    M = pvops.Member
    template = (M("pv_init_ops", 0, 4, (M("patch", 0, 4),)),
                M("pv_irq_ops", 4, 8, (M("save_fl", 0, 4, (M("func", 0, 4),)),
                                       M("safe_halt", 4, 4))),
                M("pv_mmu_ops", 12, 8, (M("lazy_mode", 0, 8, (M("enter", 0, 4),
                                                              M("leave", 4, 4))),)))
    assert pvops.slot_layout(template) == {0: "pv_init_ops.patch", 1: "pv_irq_ops.save_fl",
                                           2: "pv_irq_ops.safe_halt",
                                           3: "pv_mmu_ops.lazy_mode.enter",
                                           4: "pv_mmu_ops.lazy_mode.leave"}
    layout = pvops.slot_layout(template)
    relocation = lambda call: (sites.VmiRelocation.CALL_REL, 0xC00C0640)
    exp = sites.expect(sites.Site(0x1000, 1, 6, 0), layout, relocation)
    assert exp.call is VmiCall.GetInterruptMask and exp.kind == "call"
    assert sites.expect(sites.Site(0x1000, 2, 6, 0), layout, relocation).kind == "native"
    state = pvops.classify_op("pv_mmu_ops.set_pte_at", 0xC00C06B0, "vmi_SetPxE",
                              {0xC00C06B0: VmiCall.SetPxE})
    assert state.kind == "rom entry" and state.consistent
    wrong = pvops.classify_op("pv_cpu_ops.read_cr0", 0xC00C06B0, "vmi_SetPxE",
                              {0xC00C06B0: VmiCall.SetPxE})
    assert not wrong.consistent


# --- real gdb on the demo guest -------------------------------------------------------------------


@pytest.fixture
def stub(built: Built, tmp_path: Path) -> Iterator[Target]:
    t = start_stub(built.guest, built.rom, "rom=copy", tmp_path)
    yield t
    t.stop()


def _batch(built: Built, port: int, steps: list[tuple[str, str]],
           timeout: float = 300) -> dict[str, str]:
    """gdb -batch with vmigdb on the demo guest; each step's stdout by name, plus errors."""
    argv = [GDB, "-nx", "-batch", "-x", str(built.repo / "vmigdb.py"), "-ex", "set confirm off",
            "-ex", f"file {built.guest}", "-ex", f"target remote 127.0.0.1:{port}"]
    for name, command in steps:
        argv += ["-ex", f"echo \\n@@{name}@@\\n", "-ex", command]
    argv += ["-ex", "echo \\n@@end@@\\n"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["NO_COLOR"] = "1"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                       check=False)
    assert "Traceback" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-4000:]
    parts = re.split(r"^@@(\w+)@@$", r.stdout, flags=re.MULTILINE)
    out = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    out["_stderr"] = r.stderr
    return out


#: Every vmi view (the trace ones after a traced run of the page-table workload).
VIEWS = [
    ("rom", "vmi rom"), ("sites", "vmi sites"), ("pvops", "vmi pvops"),
    ("decode_site", "vmi decode {iret_site:#x}"), ("decode_entry", "vmi decode vmi_SetPxE"),
    ("pte", "vmi pte vmi.base"), ("trace", "vmi trace 40"), ("status", "vmi trace status"),
    ("batches", "vmi batches --chart"), ("batch", "vmi batch 1"),
]


def test_every_view_keeps_hex_whole_at_80_and_120_columns(built: Built, stub: Target) -> None:
    layout = slot_layout(built.guest)
    iret = next(r for r in sites.sites_from_elf(sites.ElfImage(built.guest.read_bytes()))
                if r.op(layout) == "pv_cpu_ops.iret")
    steps = [("b1", "break vmi_activate"), ("r1", "continue"), ("start", "vmi trace start"),
             ("b2", "break pt_workload_summary"), ("r2", "continue")]
    for width in (250, 120, 80):
        steps.append((f"w{width}", f"set width {width}"))
        steps += [(f"{name}_{width}", command.format(iret_site=iret.addr))
                  for name, command in VIEWS]
    s = _batch(built, stub.port, steps)
    for name, _command in VIEWS:
        wide = s[f"{name}_250"]
        words = set(HEX.findall(wide))
        assert words, (name, wide)
        for width in (120, 80):
            text = s[f"{name}_{width}"]
            assert max(len(ln) for ln in text.splitlines()) < width, (name, width, text)
            cut = sorted(w for w in words if not _whole(w, text))
            assert not cut, (name, width, cut, text)
    # Views that wrap at 80 columns really did (the checks above are not vacuous).
    assert any(_continues_row(ln) for ln in s["sites_80"].splitlines())
    assert any(_continues_row(ln) for ln in s["rom_80"].splitlines())
    assert s["_stderr"].strip() == "", s["_stderr"]


def test_arguments_completion_and_settings(built: Built, stub: Target) -> None:
    s = _batch(built, stub.port, [
        ("brk", "break test_cpuid"), ("run", "continue"),
        ("zero", "vmi trace 0"), ("negative", "vmi trace -5"), ("insns", "vmi rom --insns -1"),
        ("function", "vmi decode test_cpuid"),
        ("c_call", "complete vmi trace --call SetP"),
        ("c_calls", "complete vmi trace start --calls SetCR3,InvalP"),
        ("c_option", "complete vmi sites --w"),
        ("c_action", "complete vmi trace st"),
        ("c_symbol", "complete vmi decode test_cp"),
        ("c_object", "complete vmi pvops --object pv_m"),
        ("show", "show vmi"),
    ])
    errors = [ln for ln in s["_stderr"].splitlines() if ln.strip()]
    assert "vmi trace: N (rows to show) must be at least 1, not 0" in errors
    assert "vmi trace: N (rows to show) must be at least 1, not -5" in errors
    assert "vmi rom: --insns must be at least 1, not -1" in errors
    # A function name is its address: test_cpuid is neither a site nor in the ROM.
    nm = subprocess.run(["nm", str(built.guest)], capture_output=True, text=True,
                        check=True).stdout
    fn = next(int(ln.split()[0], 16) for ln in nm.splitlines() if ln.endswith(" test_cpuid"))
    assert f"{fn:#x} is neither a patch site nor inside a VMI ROM" in errors, errors
    assert s["c_call"].split() == ["vmi", "trace", "--call", "SetPxE", "vmi", "trace",
                                   "--call", "SetPxELong"]
    assert "vmi trace start --calls SetCR3,InvalPage" in s["c_calls"]
    assert "vmi sites --wrong" in s["c_option"]
    assert s["c_action"].split() == ["vmi", "trace", "start", "vmi", "trace", "status",
                                     "vmi", "trace", "stop"]
    assert "vmi decode test_cpuid" in s["c_symbol"]
    assert s["c_object"].strip() == "vmi pvops --object pv_mmu_ops"
    shown = dict(ln.split(":", 1) for ln in s["show"].splitlines() if ln.strip())
    assert set(shown) == {"vmi color", "vmi debug", "vmi rom-elf", "vmi rom-symbols"}
    assert "vmi color is auto." in shown["vmi color"]
    assert "vmi_rom.elf" in shown["vmi rom-elf"]


# --- real gdb at a terminal ----------------------------------------------------------------------


class Terminal:
    """gdb at a pseudo-terminal of ``cols`` x ``rows``, typed at like a user: each command waits
    for the next ``(gdb)`` prompt, answering gdb's pager with RET and recording each page."""

    def __init__(self, argv: list[str], cols: int, rows: int) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in os.environ.items()
               if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        env["TERM"] = "xterm"
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.buffer = ""
        self.read_until_prompt(timeout=60)

    def _read(self, deadline: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            if not data:
                raise AssertionError(f"gdb closed its terminal: {self.buffer[-2000:]!r}")
            self.buffer += data.decode(errors="replace").replace("\r", "")

    def read_until_prompt(self, timeout: float = 120) -> list[str]:
        """Output up to the next (gdb) prompt, as the pages the pager showed."""
        deadline = time.monotonic() + timeout
        pages = []
        while True:
            plain = SGR.sub("", self.buffer)
            pager, prompt = plain.find(PAGER), plain.find("(gdb) ")
            if pager >= 0 and (prompt < 0 or pager < prompt):
                head, _, self.buffer = self._split(PAGER)
                pages.append(head)
                os.write(self.master, b"\r")
                continue
            if prompt >= 0:
                head, _, self.buffer = self._split("(gdb) ")
                pages.append(head)
                return pages
            assert time.monotonic() < deadline, f"no prompt: {self.buffer[-2000:]!r}"
            self._read(deadline)

    def _split(self, marker: str) -> tuple[str, str, str]:
        """Split the raw buffer at the first ``marker`` (matched without styles)."""
        plain = SGR.sub("", self.buffer)
        at = plain.index(marker)
        # Map the plain offset back to the raw buffer (styles are zero-width).
        raw, count = 0, 0
        while count < at:
            m = SGR.match(self.buffer, raw)
            if m:
                raw = m.end()
                continue
            raw += 1
            count += 1
        end = raw
        matched = 0
        while matched < len(marker):
            m = SGR.match(self.buffer, end)
            if m:
                end = m.end()
                continue
            end += 1
            matched += 1
        return self.buffer[:raw], marker, self.buffer[end:]

    def command(self, line: str, timeout: float = 120) -> list[str]:
        os.write(self.master, line.encode() + b"\r")
        return self.read_until_prompt(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def terminal(built: Built, stub: Target) -> Iterator[Terminal]:
    t = Terminal([GDB, "-nx", "-q", "-x", str(built.repo / "vmigdb.py"), "-ex",
                  "set confirm off", "-ex", f"file {built.guest}", "-ex",
                  f"target remote 127.0.0.1:{stub.port}"], cols=80, rows=24)
    try:
        t.command("break test_cpuid")
        t.command("continue", timeout=120)
        yield t
    finally:
        t.close()


@pytest.mark.parametrize("height", [24, 40])
def test_the_pager_never_splits_a_row(terminal: Terminal, height: int) -> None:
    terminal.command("set width 80")
    terminal.command(f"set height {height}")
    for view in ("vmi sites", "vmi rom", "vmi pvops"):
        pages = [SGR.sub("", p) for p in terminal.command(view)]
        assert len(pages) >= 2, (view, pages)  # the view is longer than a page: it paged
        for n, page in enumerate(pages):
            lines = page.split("\n")
            if n == 0:
                lines = lines[1:]  # the command line the terminal echoed
            elif lines and lines[0] == "":
                lines = lines[1:]  # the RET typed at the pager prompt
            if lines and lines[-1] == "":
                lines = lines[:-1]  # the page's last newline
            # A page never holds more than the pager's lines, and never starts inside a row.
            assert len(lines) <= height - 1, (view, n, lines)
            assert not _continues_row(lines[0] if lines else ""), (view, n, lines[:2])
        assert any(_continues_row(ln) for p in pages for ln in p.split("\n")), view


def test_pipe_is_plain_and_the_terminal_coloured(terminal: Terminal) -> None:
    terminal.command("set height 0")
    colour = re.compile(r"\x1b\[[0-9;]*m")  # styles (not readline's terminal modes)
    coloured = "".join(terminal.command("vmi rom"))
    assert colour.search(coloured) and "'cVmi' (VMI)" in SGR.sub("", coloured)
    piped = "".join(terminal.command("pipe vmi rom | cat"))
    assert not colour.search(piped), piped[:500]
    assert "'cVmi' (VMI)" in piped and "ROM entries at" in piped
