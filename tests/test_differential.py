"""The same guest and ROM under QEMU's gdbstub and ours, driven by the same gdb script: eip and the
general registers agree over the first 2000 ``stepi`` from the entry and at 20 breakpoints.

Intended difference, tested as such: the multiboot spec leaves ECX, EDX, ESP, EBP, ESI, EDI and
most of EFLAGS undefined at the entry, and QEMU's loader leaves its own values there while our
machine leaves zeros. The script copies QEMU's entry values into our stub (through gdb register
writes) before stepping; ``test_entry_state_differs_only_where_undefined`` pins that down.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Built
from targets import Target, start_qemu, start_stub

from vmigdb import elf
from vmigdb.mi import GDB

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "gdbscripts" / "stepi_trace.py"
STEPS = 2000
UNDEFINED_AT_ENTRY = ("ecx", "edx", "esp", "ebp", "esi", "edi", "eflags")
BREAK_SYMBOLS = (
    "console_init", "parse_cmdline", "desc_init_native", "paging_init", "vmi_probe",
    "vmi_activate", "get_reloc", "mm_activate", "test_irq_flags", "test_control_registers",
    "test_cpuid", "test_msr_tsc_dr", "test_descriptor_tables", "test_iret", "test_pxe_long",
    "test_sysexit", "pt_workload", "new_pt", "free_pt", "pt_workload_summary",
)


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (ln.split() for ln in out.splitlines())
            if len(parts) == 3}


def _drive(target: Target, entry: int, breaks: list[int], out: Path,
           set_regs: dict[str, int]) -> list[dict[str, int]]:
    env = {**os.environ, "VMIGDB_PORT": str(target.port), "VMIGDB_STEPS": str(STEPS),
           "VMIGDB_OUT": str(out), "VMIGDB_ENTRY": f"{entry:x}",
           "VMIGDB_BREAKS": ",".join(f"{b:x}" for b in breaks),
           "VMIGDB_SET": json.dumps(set_regs)}
    r = subprocess.run([GDB, "-nx", "-batch", "-x", str(SCRIPT)], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == STEPS + 1 + len(breaks), r.stdout[-2000:] + r.stderr[-2000:]
    return rows


@pytest.fixture(scope="module")
def traces(built: Built, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("diff")
    syms = _symbols(built.guest)
    breaks = [syms[s] for s in BREAK_SYMBOLS]
    entry = elf.entry(built.guest)
    qemu = start_qemu(built.guest, built.rom, "rom=copy", tmp)
    try:
        ref = _drive(qemu, entry, breaks, tmp / "qemu.jsonl", {})
    finally:
        qemu.stop()
    copied = {r: ref[0][r] for r in UNDEFINED_AT_ENTRY}
    stub = start_stub(built.guest, built.rom, "rom=copy", tmp)
    try:
        ours_raw_entry = _drive_entry_only(stub, entry, tmp / "entry.jsonl")
        ours = _drive(stub, entry, breaks, tmp / "stub.jsonl", copied)
    finally:
        stub.stop()
    return ref, ours, ours_raw_entry, breaks


def _drive_entry_only(target: Target, entry: int, out: Path) -> dict[str, int]:
    env = {**os.environ, "VMIGDB_PORT": str(target.port), "VMIGDB_STEPS": "0",
           "VMIGDB_OUT": str(out), "VMIGDB_ENTRY": f"{entry:x}", "VMIGDB_DETACH": "1"}
    subprocess.run([GDB, "-nx", "-batch", "-x", str(SCRIPT)], env=env, capture_output=True,
                   text=True, timeout=60, check=True)
    return json.loads(out.read_text().splitlines()[0])


def test_entry_state_differs_only_where_undefined(traces) -> None:
    ref, _, ours_entry, _ = traces
    for reg, value in ref[0].items():
        if reg in UNDEFINED_AT_ENTRY:
            continue
        assert ours_entry[reg] == value, reg
    assert ours_entry["eax"] == 0x2BADB002
    assert ours_entry["eflags"] & 0x200 == ref[0]["eflags"] & 0x200 == 0  # IF clear on both


def test_first_2000_stepi_agree(traces) -> None:
    ref, ours, _, _ = traces
    for a, b in zip(ref[: STEPS + 1], ours[: STEPS + 1], strict=True):
        assert a == b, {k: (hex(a[k]), hex(b[k])) for k in a if a[k] != b[k]}


def test_twenty_breakpoints_agree(traces) -> None:
    ref, ours, _, breaks = traces
    assert len(breaks) == 20
    for a, b in zip(ref[STEPS + 1:], ours[STEPS + 1:], strict=True):
        assert a["break"] == b["break"] == a["eip"] == b["eip"]
        assert a == b, {k: (hex(a[k]), hex(b[k])) for k in a if a[k] != b[k]}
