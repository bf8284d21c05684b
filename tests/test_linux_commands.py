"""The vmi commands on the real Linux guest (shared/linux), with real gdb, on both targets:
vmigdb's stub and QEMU booting the README's command line (SeaBIOS places our ROM with
``-option-rom``). Each test boots Linux to the workload's first fork (``do_fork`` from a user
stack) and then:

- ``vmi sites`` judges all 889 ``.parainstructions`` sites by Linux's own rule (slots named
  from vmlinux's DWARF, get_reloc's answers from the live ROM) with no false WRONG, keeps every
  address whole at 80 columns, and flags sites mis-patched on purpose from gdb;
- ``vmi pvops`` names what every pv_*_ops member points to;
- the ROM is a first-class citizen: its symbols and CFI are loaded where Linux calls it
  (PAGE_OFFSET + 0xC0000), ``break vmi_SetPxE`` stops in the entry during the fork, ``bt``
  shows the ROM frames then Linux's down to ``system_call``, ``up``, ``x/i`` and ``finish``
  work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Built, Linux
from targets import Target, start_qemu_linux, start_stub

from vmigdb import pvops, rominfo, sites
from vmigdb.abi import VmiCall
from vmigdb.mi import Gdb

REPO = Path(__file__).resolve().parent.parent
APPEND = "console=ttyS0"
ROM_BASE = 0xC00C0000  # PAGE_OFFSET + 0xC0000: where Linux calls the ROM it found at 0xC0000
TARGETS = ("stub", "qemu")


@dataclass
class Session:
    target: Target
    gdb: Gdb
    info: rominfo.RomInfo


@pytest.fixture(scope="module")
def vmlinux_sites(linux: Linux) -> tuple[list[sites.Site], tuple[int, int]]:
    """The kernel's patch-site records and its init text (freed after boot)."""
    elf = sites.ElfImage(linux.vmlinux.read_bytes())
    names = {n: v for v, _s, n in elf.symbols() if n in ("__init_begin", "__init_end")}
    return sites.sites_from_elf(elf), (names["__init_begin"], names["__init_end"])


@pytest.fixture(params=TARGETS)
def at_user_fork(request: pytest.FixtureRequest, built: Built, linux: Linux,
                 tmp_path: Path) -> Iterator[Session]:
    """Linux on one target, stopped in do_fork of the workload's first fork; gdb has vmigdb."""
    if request.param == "stub":
        t = start_stub(linux.bzimage, built.rom, APPEND, tmp_path, initrd=linux.initrd)
    else:
        t = start_qemu_linux(linux.bzimage, linux.initrd, built.rom, APPEND, tmp_path)
    g = Gdb(["-x", str(REPO / "vmigdb.py")], cwd=str(REPO), timeout=60)
    try:
        g.console("set width 200")
        g.connect(str(linux.vmlinux), t.port, timeout=120)
        g.ok('-break-insert -c "stack_start != 0" do_fork')
        stopped = g.resume(timeout=600)
        assert stopped["payload"]["frame"]["func"] == "do_fork", stopped
        g.ok("-break-delete")
        yield Session(t, g, rominfo.parse_rom(built.rom.read_bytes()))
    finally:
        g.close()
        t.stop()


def _functions(g: Gdb) -> list[str]:
    return [f.get("func", "??") for f in g.ok("-stack-list-frames").payload["stack"]]


def _layout(g: Gdb) -> dict[int, str]:
    """The slot layout vmigdb reads from vmlinux's types, from the running session."""
    text = g.console("python import json; from vmigdb.commands import target; "
                     "print('@@' + json.dumps(target.slot_layout()))").text
    return {int(k): v for k, v in json.loads(text.split("@@", 1)[1]).items()}


def _entry(info: rominfo.RomInfo, call: VmiCall) -> int:
    off = info.call_table[call]
    assert off
    return ROM_BASE + off


def _whole(addr: int, text: str) -> bool:
    """``addr`` appears in ``text`` as a whole hex word (not cut, not part of a longer one)."""
    return re.search(rf"(?<![0-9a-fx]){addr:#x}(?![0-9a-f])", text) is not None


def test_sites_follow_linux_rule_and_a_mispatch_is_flagged(
        at_user_fork: Session, vmlinux_sites: tuple[list[sites.Site], tuple[int, int]]) -> None:
    g, info = at_user_fork.gdb, at_user_fork.info
    records, (init_lo, init_hi) = vmlinux_sites
    layout = _layout(g)
    assert layout and all(s.type in layout for s in records)
    g.console("set width 400")  # one line per row
    text = g.console("vmi sites", timeout=600).text
    assert f"{len(records)} patch sites from the ELF file's .parainstructions" in text
    patched = [s for s in records if s.op(layout) in pvops.PATCHED_OPS]
    in_init = [s for s in records if init_lo <= s.addr < init_hi]
    m = re.search(r"^sites=(\d+) .*; slots vmi_patch rewrites: (\d+); Linux's rule: "
                  r"ok=(\d+) WRONG=(\d+)(?: freed=(\d+))?", text, re.MULTILINE)
    assert m, text[-3000:]
    assert (int(m[1]), int(m[2]), int(m[4])) == (len(records), len(patched), 0)
    assert int(m[3]) + int(m[5] or 0) == len(records) and int(m[5] or 0) <= len(in_init)
    # Every patched site outside init text is a call to its call's entry in the live ROM.
    save_fl = _entry(info, VmiCall.GetInterruptMask)
    assert f"pv_irq_ops.save_fl -> GetInterruptMask (CALL_REL) at {save_fl:#x}" in text
    assert f"call {save_fl:#x}" in text
    iret = next(s for s in records if s.op(layout) == "pv_cpu_ops.iret")
    line = next(ln for ln in text.splitlines() if f"│ {iret.addr:#x} │" in ln)
    assert f"pv_cpu_ops.iret -> IRET (CALL_REL) at {_entry(info, VmiCall.IRET):#x}" in line
    assert re.search(r"│ ok\s+│$", line.rstrip()), line

    # At 80 columns the table folds, and every site address stays whole.
    g.console("set width 80")
    narrow = g.console("vmi sites", timeout=600).text
    assert max(len(ln) for ln in narrow.splitlines()) < 80
    cut = [s for s in records if not _whole(s.addr, narrow)]
    assert not cut, [hex(s.addr) for s in cut[:5]]
    g.console("set width 400")

    # Mis-patch two sites from gdb: a patched IRQ site now calls the next entry (another
    # call's), a site vmi_patch leaves native gets its first byte overwritten.
    a = next(s for s in patched if not init_lo <= s.addr < init_hi
             and s.op(layout) == "pv_irq_ops.save_fl")
    b = next(s for s in records if s not in patched and not init_lo <= s.addr < init_hi)
    rel_low = g.value(f"*(unsigned char *){a.addr + 1:#x}")
    g.console(f"set {{unsigned char}}{a.addr + 1:#x} = {(rel_low + 0x10) & 0xFF:#x}")
    g.console(f"set {{unsigned char}}{b.addr:#x} = 0x90")
    wrong = g.console("vmi sites --wrong", timeout=600).text
    assert "2 patch sites" in wrong and "WRONG=2" in wrong, wrong[-2000:]
    assert _whole(a.addr, wrong) and _whole(b.addr, wrong)
    detail = g.console(f"vmi decode {a.addr:#x}").text
    assert "WRONG" in detail and f"pv_irq_ops.save_fl -> GetInterruptMask (CALL_REL) at " \
        f"{save_fl:#x}" in detail
    assert f"call {save_fl + 0x10:#x}" in detail


def test_pvops_name_every_member(at_user_fork: Session) -> None:
    g, info = at_user_fork.gdb, at_user_fork.info
    text = g.console("vmi pvops").text
    rows = {m[1]: m[2] for m in re.finditer(r"^│\s+\d+ │ (\S+)\s+│ (.*)$", text, re.MULTILINE)}
    layout = _layout(g)
    # Every member of every pv-op object the kernel defines; pv_lock_ops is in the template
    # but this kernel has no PARAVIRT_SPINLOCKS, so no such object.
    assert set(rows) == {op for op in layout.values() if not op.startswith("pv_lock_ops.")}
    assert "not in this kernel (its template has them, no object does): pv_lock_ops" in text
    # para_fill: the ROM entry itself; para_wrap / vmi_get_function: Linux's vmi_* wrapper.
    read_cr0 = rows["pv_cpu_ops.read_cr0"]
    assert f"{_entry(info, VmiCall.GetCR0):#x}" in read_cr0 and "vmi_GetCR0" in read_cr0
    assert "ROM entry: GetCR0" in read_cr0
    assert "vmi_set_pte_at" in rows["pv_mmu_ops.set_pte_at"]
    assert "Linux's wrapper -> SetPxE/SetPxELong" in rows["pv_mmu_ops.set_pte_at"]
    assert "Linux's wrapper -> SetLazyMode" in rows["pv_mmu_ops.lazy_mode.enter"]
    assert "poisoned: its sites must be patched (IRET)" in rows["pv_cpu_ops.iret"]
    assert "0xbadbab0" in rows["pv_cpu_ops.iret"]
    assert "native" in rows["pv_cpu_ops.read_msr"]  # MSRs trap and are emulated
    assert re.search(r"; WRONG=0$", text, re.MULTILINE)
    only = g.console("vmi pvops --call SetPxE").text
    assert "pv_mmu_ops.set_pte " in only and "pv_cpu_ops.read_cr0" not in only


def test_rom_frames_during_a_fork(at_user_fork: Session) -> None:
    g, info = at_user_fork.gdb, at_user_fork.info
    assert "at 0xc00c0000 (the guest's vmi_rom)" in g.console("vmi symbols").text
    setpxe = _entry(info, VmiCall.SetPxE)
    bkpt = g.ok("-break-insert vmi_SetPxE").payload["bkpt"]
    assert int(bkpt["addr"], 16) == setpxe
    stopped = g.resume(timeout=300)
    assert int(stopped["payload"]["frame"]["addr"], 16) == setpxe
    g.ok("-break-delete")
    funcs = _functions(g)
    assert funcs[0] == "vmi_SetPxE", funcs
    fork = funcs.index("do_fork")
    assert funcs[fork:fork + 3] == ["do_fork", "sys_fork", "system_call"], funcs
    # The ROM's caller is Linux's vmi_* wrapper (vmi_set_pte_at, vmi_set_pmd, ...), and every
    # frame between it and the fork is a named kernel function.
    assert funcs[1].startswith("vmi_set") and "??" not in funcs[:fork], funcs
    assert "<vmi_SetPxE>" in g.console("x/i $pc").text

    # Deeper: into rom_pte_update and past its pushes; gdb unwinds by the ROM's CFI.
    for _ in range(6):
        g.resume("-exec-step-instruction")
    assert _functions(g)[0] == "rom_pte_update"
    for _ in range(3):  # push %esi; push %ebx; pushf
        g.resume("-exec-step-instruction")
    funcs = _functions(g)
    assert funcs[:2] == ["rom_pte_update", "vmi_SetPxE"], funcs
    assert funcs[funcs.index("do_fork"):][:3] == ["do_fork", "sys_fork", "system_call"]
    assert "<rom_pte_update+" in g.console("x/i $pc").text
    assert "vmi_SetPxE" in g.console("up").text
    g.console("down")

    # finish: back into the entry, then into the kernel caller at its return address.
    frames = g.ok("-stack-list-frames").payload["stack"]
    stopped = g.resume("-exec-finish")
    assert stopped["payload"]["frame"]["func"] == "vmi_SetPxE", stopped
    assert int(stopped["payload"]["frame"]["addr"], 16) == int(frames[1]["addr"], 16)
    stopped = g.resume("-exec-finish")
    frame = stopped["payload"]["frame"]
    assert frame["func"] == frames[2]["func"] and frame["func"].startswith("vmi_set"), frame
    assert int(frame["addr"], 16) == int(frames[2]["addr"], 16)
    assert not setpxe <= g.value("$pc") < ROM_BASE + info.length
