"""The ROM's symbols and unwind information in real gdb on the demo guest, on vmigdb's stub and
on QEMU: vmigdb places them where the guest calls the ROM (a RAM copy for rom=copy, found
through the guest's vmi.base once it is set; PAGE_OFFSET + phys for rom=inplace), so
``break vmi_GetCR0`` stops in the entry, ``bt`` walks from the ROM into the guest's frames and
``finish`` returns to the caller. (tests/test_linux_commands.py does the same on Linux.)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import Built
from targets import start_qemu, start_stub

from vmigdb import mi, rominfo
from vmigdb.abi import VmiCall


def _session(built: Built, kind: str, cmdline: str, work: Path,
             steps: list[tuple[str, str]]) -> dict[str, str]:
    start = start_stub if kind == "stub" else start_qemu
    t = start(built.guest, built.rom, cmdline, work)
    try:
        argv = [mi.GDB, "-nx", "-batch", "-x", str(built.repo / "vmigdb.py"), "-ex",
                "set width 200", "-ex", f"file {built.guest}", "-ex",
                f"target remote 127.0.0.1:{t.port}"]
        for name, command in steps:
            argv += ["-ex", f"echo \\n@@{name}@@\\n", "-ex", command]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, "NO_COLOR": "1"})
    finally:
        t.stop()
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    parts = re.split(r"^@@(\w+)@@$", r.stdout, flags=re.MULTILINE)
    out = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    out["_serial"] = t.serial.read_bytes().decode(errors="replace")
    return out


@pytest.mark.parametrize("kind", ["stub", "qemu"])
def test_rom_symbols_follow_the_copy_and_unwind(built: Built, kind: str,
                                                tmp_path: Path) -> None:
    info = rominfo.parse_rom(built.rom.read_bytes())
    s = _session(built, kind, "rom=copy", tmp_path, [
        ("brk", "break test_control_registers"), ("run", "continue"),
        ("where", "vmi symbols"),
        ("bp", "break vmi_GetCR0"), ("hit", "continue"),
        ("bt", "bt"), ("xi", "x/2i $pc"), ("up", "up"), ("down", "down"),
        ("finish", "finish"), ("after", "bt 1"),
    ])
    base = int(re.search(r"calling it at (0x[0-9a-f]+)", s["_serial"])[1], 16)
    entry = base + info.call_table[VmiCall.GetCR0]
    # Loaded once the guest set vmi.base (the copy), not where the scan first found the ROM.
    assert f"at {base:#x} (the guest's vmi.base)" in s["where"]
    assert f"Breakpoint 2 at {entry:#x}" in s["bp"]
    frames = re.findall(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\w+)", s["bt"], re.MULTILINE)
    names = [f for _n, f in frames]
    assert names[0] == "vmi_GetCR0" and "test_control_registers" in names[1:3], s["bt"]
    assert names[-2:] == ["kmain", "_start"], s["bt"]
    assert f"{entry:#x} <vmi_GetCR0>:" in s["xi"] and "<vmi_GetCR0+3>:\tret" in s["xi"]
    assert "in pv_read_cr0" in s["up"] or "test_control_registers" in s["up"]
    # finish: back in the guest, right after the indirect call through pv_cpu_ops.read_cr0.
    assert re.search(r"^#0\s+0x[0-9a-f]+ in (pv_read_cr0|test_control_registers)", s["after"],
                     re.MULTILINE), s["after"]


def test_rom_symbols_in_place_at_page_offset(built: Built, tmp_path: Path) -> None:
    info = rominfo.parse_rom(built.rom.read_bytes())
    s = _session(built, "stub", "rom=inplace", tmp_path, [
        ("brk", "break test_irq_flags"), ("run", "continue"),
        ("where", "vmi symbols"), ("rom", "vmi rom"),
    ])
    assert "at 0xc00c0000 (the guest's vmi.base)" in s["where"]
    entry = 0xC00C0000 + info.call_table[VmiCall.SetPxE]
    assert re.search(rf"SetPxE vmi_SetPxE\s+│\s+{entry:#x}", s["rom"]), s["rom"]
