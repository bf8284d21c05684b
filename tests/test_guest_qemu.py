"""The demo guest on QEMU, the reference machine: it finds the real ROM, patches itself, runs
every VMI call the identity ROM implements (bar Halt, Reboot, Shutdown and RDPMC) and a lazy-MMU
page-table workload, and checks every effect itself. Copy mode must batch and its flush count
must match the ROM's own counter; in-place mode must not batch.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import Built, run_qemu

from vmigdb import abi, decode, sites
from vmigdb.abi import VmiCall

SUMMARY = re.compile(
    r"^summary: mode=(?P<mode>\w+) batched=(?P<batched>\d+) sites=(?P<sites>\d+) "
    r"patched=(?P<patched>\d+) calls=(?P<calls>\d+) deferred=(?P<deferred>\d+) "
    r"flushes=(?P<flushes>\d+)$", re.MULTILINE)
#: Calls the guest deliberately does not run: they stop or reset the machine (Halt needs a
#: wake-up interrupt), or fault under TCG (RDPMC: QEMU raises #UD).
NOT_RUN = {VmiCall.Halt, VmiCall.Reboot, VmiCall.Shutdown, VmiCall.RDPMC}
#: ``call *disp32`` (FF /2 with a 32-bit displacement): Linux's PVOP_CALL site.
INDIRECT_CALL = b"\xff\x15"


def exit_codes(repo: Path) -> dict[str, int]:
    """EXIT_* from guest/exitcodes.h, so the tests never restate them."""
    text = (repo / "guest" / "exitcodes.h").read_text()
    return {m[1]: int(m[2], 16) for m in re.finditer(r"#define (EXIT_\w+)\s+(0x[0-9a-f]+)", text)}


def boot(built: Built, cmdline: str, rom: bool = True) -> tuple[int | None, str]:
    code, text = run_qemu(built.guest, built.rom if rom else None, cmdline, timeout=60)
    return code, text


def summary(text: str) -> dict[str, str]:
    m = SUMMARY.search(text)
    assert m, f"no summary line in the serial output:\n{text}"
    return m.groupdict()


def calls_line(text: str) -> str:
    m = re.search(r"^calls: (.*)$", text, re.MULTILINE)
    assert m, f"no calls line in the serial output:\n{text}"
    return m[1]


def expect_ok(code: int | None, text: str) -> None:
    assert code == 0 and "result: ok" in text, f"guest exit code {code}; serial:\n{text}"


@pytest.fixture(scope="module")
def copy_run(built: Built) -> str:
    code, text = boot(built, "rom=copy")
    expect_ok(code, text)
    return text


@pytest.fixture(scope="module")
def inplace_run(built: Built) -> str:
    code, text = boot(built, "rom=inplace")
    expect_ok(code, text)
    return text


def test_copy_mode_batches(copy_run: str) -> None:
    s = summary(copy_run)
    assert s["mode"] == "copy" and s["batched"] == "1"
    assert int(s["deferred"]) > 0 and int(s["flushes"]) > 0, copy_run
    # The copy is called through its lowmem alias, and the ROM's own flush counter agrees
    # with the guest's prediction.
    assert re.search(r"^vmi: rom=copy: \d+ bytes copied to phys 0x[0-9a-f]+, calling it at "
                     r"0xc0[0-9a-f]{6}$", copy_run, re.MULTILINE), copy_run
    m = re.search(r"^vmi: rom batch seq=(\d+), model predicts (\d+)$", copy_run, re.MULTILINE)
    assert m and m[1] == m[2] == s["flushes"], copy_run


def test_inplace_mode_does_not_batch(inplace_run: str) -> None:
    s = summary(inplace_run)
    assert (s["mode"], s["batched"], s["deferred"], s["flushes"]) == ("inplace", "0", "0", "0")
    # -nodefaults puts the ROM at 0xC0000; Linux calls it through PAGE_OFFSET + phys.
    assert "vmi: rom=inplace: calling the ROM at 0xc00c0000" in inplace_run
    assert "vmi: rom batch seq=0, model predicts 0" in inplace_run


def _records(built: Built, tmp_path: Path) -> list[tuple[int, int, int, bytes]]:
    """(addr, type, len, native bytes) of every .parainstructions record of guest.elf."""
    raw = tmp_path / "pi.bin"
    subprocess.run(["objcopy", "-O", "binary", "-j", ".parainstructions", str(built.guest),
                    str(raw)], check=True)
    data = raw.read_bytes()
    assert data and len(data) % 8 == 0
    text = sites.ElfImage(built.guest.read_bytes())
    out = []
    for off in range(0, len(data), 8):
        addr = int.from_bytes(data[off:off + 4], "little")
        out.append((addr, data[off + 4], data[off + 5], text.read(addr, data[off + 5])))
    return out


def test_both_modes_make_the_same_calls(built: Built, copy_run: str, inplace_run: str,
                                        tmp_path: Path) -> None:
    a, b = summary(copy_run), summary(inplace_run)
    # Linux's vmi_patch rule: the sites holding native code inline (the interrupt-flag ops,
    # iret, irq_enable_sysexit) become ROM calls; the pv-op call sites ("call *op") stay.
    inline = [r for r in _records(built, tmp_path) if r[3][:2] != INDIRECT_CALL]
    assert int(a["sites"]) == len(_records(built, tmp_path)) > int(a["patched"]) == len(inline) > 0
    m = re.search(r"^vmi: patch sites=(\d+) call=(\d+) nop=0 native=(\d+)$", copy_run,
                  re.MULTILINE)
    assert m and int(m[1]) == int(m[2]) + int(m[3]) and m[2] == a["patched"], copy_run
    assert (a["sites"], a["patched"], a["calls"]) == (b["sites"], b["patched"], b["calls"])
    assert calls_line(copy_run) == calls_line(inplace_run)


def test_every_implemented_call_is_exercised(copy_run: str) -> None:
    counts = {name: int(n) for name, n in (w.split("=") for w in calls_line(copy_run).split())}
    assert all(n > 0 for n in counts.values())
    missing = {c.name for c in abi.IDENTITY_ROM_CALLS - NOT_RUN} - counts.keys()
    assert not missing, f"calls never made: {sorted(missing)}"
    assert sum(counts.values()) == int(summary(copy_run)["calls"])


def test_logged_calls_for_cross_checks(copy_run: str) -> None:
    for leaf in (0, 1):
        assert re.search(rf"^cpuid leaf=0x{leaf:x} -> eax=0x[0-9a-f]+ ebx=0x[0-9a-f]+ "
                         r"ecx=0x[0-9a-f]+ edx=0x[0-9a-f]+$", copy_run, re.MULTILINE), copy_run
    setpxe = re.findall(r"^setpxe pte=(0x[0-9a-f]+) ptep=(0x[0-9a-f]+) flags=(0x[0-9a-f]+)$",
                        copy_run, re.MULTILINE)
    assert len(setpxe) == len(re.findall(r"^pt n=\d+ ok", copy_run, re.MULTILINE)) > 0
    flags = int(setpxe[0][2], 16)
    want = abi.VMI_PAGE_PT | abi.VMI_PAGE_CURRENT_AS | abi.VMI_PAGE_DEFER
    assert flags & ~abi.VMI_PAGE_VA_MASK == want
    assert int(setpxe[0][1], 16) >= 0xC0000000  # ptep through the lowmem map, as Linux
    assert len(re.findall(r"^setcr3 0x[0-9a-f]+ \([AB]\)$", copy_run, re.MULTILINE)) >= 3


def test_stress_repeats_the_workload(built: Built, copy_run: str) -> None:
    code, text = boot(built, "rom=copy stress=3")
    expect_ok(code, text)
    one, three = summary(copy_run), summary(text)
    base = (int(one["deferred"]), int(one["flushes"]))
    # Everything the workload does repeats exactly; the rest of the boot happens once.
    assert (int(three["deferred"]), int(three["flushes"])) == (3 * base[0], 3 * base[1])


def test_no_rom_is_a_clean_failure(built: Built) -> None:
    code, text = boot(built, "rom=copy", rom=False)
    assert code == exit_codes(built.repo)["EXIT_NO_ROM"], text
    assert "result: fail" in text


def test_rdpmc_faults_under_tcg(built: Built) -> None:
    """Why RDPMC is not in the run list: through the ROM it raises #UD (vector 6) on QEMU."""
    code, text = boot(built, "rdpmc=1")
    assert code == exit_codes(built.repo)["EXIT_EXCEPTION_BASE"] + 6, text
    assert "exception vector=6" in text


def test_patch_site_records(built: Built, tmp_path: Path) -> None:
    """Linux's 8-byte .parainstructions records: a pv-op slot as type, >= 5 bytes each. A site
    either holds its native instructions inline (the six slots vmi_patch rewrites) or is
    Linux's PVOP_CALL, an indirect call through a member of one of the pv_*_ops objects."""
    syms = {}
    for ln in subprocess.run(["nm", "-S", str(built.guest)], capture_output=True, text=True,
                             check=True).stdout.splitlines():
        parts = ln.split()
        if len(parts) == 4 and parts[3].startswith("pv_") and parts[3].endswith("_ops"):
            syms[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    assert {"pv_init_ops", "pv_cpu_ops", "pv_irq_ops", "pv_mmu_ops"} <= syms.keys()
    slots = sum(size for _addr, size in syms.values()) // 4
    natives = set()
    for addr, slot, length, native in _records(built, tmp_path):
        assert length >= 5 and addr >= 0x100000 and 0 <= slot < slots
        if native[:2] == INDIRECT_CALL:
            op = int.from_bytes(native[2:6], "little")
            assert any(a <= op < a + n for a, n in syms.values()), (hex(addr), hex(op))
        else:
            insns = decode.disassemble(native, addr)
            natives.add(insns[0].mnemonic)
    assert natives == {"cli", "sti", "pushfd", "push", "iretd"}


def test_multiboot_header_in_first_8k(built: Built) -> None:
    data = built.guest.read_bytes()[:8192]
    magic = (0x1BADB002).to_bytes(4, "little")
    off = data.find(magic)
    assert off >= 0 and off % 4 == 0
    words = [int.from_bytes(data[off + 4 * i:off + 4 * i + 4], "little") for i in range(3)]
    assert sum(words) & 0xFFFFFFFF == 0


def test_page_fault_is_reported(built: Built) -> None:
    """fault=pf reads the never-mapped page 0: the #PF handler prints CR2 and exits 0x40+14."""
    code, text = boot(built, "fault=pf")
    assert code == exit_codes(built.repo)["EXIT_EXCEPTION_BASE"] + 14, text
    assert re.search(r"^exception vector=14 error=0x0 eip=0x[0-9a-f]+ cs=0x8 eflags=0x[0-9a-f]+ "
                     r"cr2=0x0$", text, re.MULTILINE), text
