"""``vmigdb run``: the demo guest boots to completion on our machine in both ROM modes, with
the same serial summary QEMU gives, and bad input fails with one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Built, run_qemu
from test_guest_qemu import summary

VMIGDB = str(Path(sys.executable).with_name("vmigdb"))


def vmigdb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VMIGDB, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module", params=["copy", "inplace"])
def both(request: pytest.FixtureRequest, built: Built) -> tuple[str, str, str]:
    mode = request.param
    ours = vmigdb("run", str(built.guest), "--rom", str(built.rom), "--cmdline", f"rom={mode}")
    assert ours.returncode == 0, ours.stdout[-2000:] + ours.stderr
    code, qemu_text = run_qemu(built.guest, built.rom, f"rom={mode}")
    assert code == 0, qemu_text[-2000:]
    return mode, ours.stdout.replace("\r", ""), qemu_text


def test_guest_exits_zero_in_both_modes(both: tuple[str, str, str]) -> None:
    mode, ours, _ = both
    assert "result: ok" in ours
    assert summary(ours)["mode"] == ("copy" if mode == "copy" else "inplace")


def test_batched_when_copied_unbatched_in_place(both: tuple[str, str, str]) -> None:
    mode, ours, _ = both
    s = summary(ours)
    if mode == "copy":
        assert s["batched"] == "1" and int(s["deferred"]) > 0 and int(s["flushes"]) > 0
    else:
        assert s["batched"] == "0" and s["deferred"] == "0" and s["flushes"] == "0"


def test_same_serial_summary_as_qemu(both: tuple[str, str, str]) -> None:
    _, ours, qemu = both
    assert summary(ours) == summary(qemu)
    # The per-call counts line is machine-independent too.
    calls = [ln for ln in ours.splitlines() if ln.startswith("calls:")]
    assert calls and calls == [ln for ln in qemu.splitlines() if ln.startswith("calls:")]


def test_guest_failure_code_is_passed_through(built: Built) -> None:
    r = vmigdb("run", str(built.guest), "--rom", str(built.rom), "--cmdline", "fault=pf")
    assert r.returncode not in (0, 2), r.stdout[-500:]
    assert "Traceback" not in r.stderr


def _one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0].lower(), lines[0]
    assert "Traceback" not in r.stderr


def test_truncated_elf(built: Built, tmp_path: Path) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(built.guest.read_bytes()[:5000])
    _one_line_error(vmigdb("run", str(bad), "--rom", str(built.rom)), "truncated")


def test_elf_with_wild_program_header_offset(built: Built, tmp_path: Path) -> None:
    data = bytearray(built.guest.read_bytes())
    data[28:32] = (0x7FFFFFF0).to_bytes(4, "little")  # e_phoff
    bad = tmp_path / "bad.elf"
    bad.write_bytes(bytes(data))
    _one_line_error(vmigdb("run", str(bad), "--rom", str(built.rom)), "program headers")


def test_not_an_elf(built: Built, tmp_path: Path) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"hello world\n" * 100)
    _one_line_error(vmigdb("run", str(bad), "--rom", str(built.rom)),
                    "neither a linux bzimage nor a multiboot elf")


def test_non_multiboot_elf(built: Built, tmp_path: Path) -> None:
    elf = tmp_path / "plain.elf"
    src = tmp_path / "plain.S"
    src.write_text(".globl _start\n_start: hlt\n")
    subprocess.run(["as", "--32", "-o", tmp_path / "plain.o", src], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-o", elf, tmp_path / "plain.o"], check=True)
    _one_line_error(vmigdb("run", str(elf), "--rom", str(built.rom)), "multiboot")


def test_rom_with_bad_checksum(built: Built, tmp_path: Path) -> None:
    data = bytearray(built.rom.read_bytes())
    data[0x40] ^= 0x5A
    rom = tmp_path / "bad.bin"
    rom.write_bytes(bytes(data))
    _one_line_error(vmigdb("run", str(built.guest), "--rom", str(rom)), "checksum")


def test_rom_with_bad_signature(built: Built, tmp_path: Path) -> None:
    data = bytearray(built.rom.read_bytes())
    data[0:2] = b"MZ"
    rom = tmp_path / "bad.bin"
    rom.write_bytes(bytes(data))
    _one_line_error(vmigdb("run", str(built.guest), "--rom", str(rom)), "signature")


def test_missing_guest_file(built: Built, tmp_path: Path) -> None:
    _one_line_error(vmigdb("run", str(tmp_path / "nope.elf"), "--rom", str(built.rom)), "nope.elf")


def test_a_second_stub_in_the_same_folder_reports_its_own_port(built: Built,
                                                               tmp_path: Path) -> None:
    """start_stub appends to the folder's stub.log: the port it returns is this run's, and a
    gdb-less RSP connection to it reaches a live stub (not the first, stopped one)."""
    import socket

    from vmigdb import targets

    first = targets.start_stub(built.guest, built.rom, "", tmp_path)
    first.stop()
    second = targets.start_stub(built.guest, built.rom, "", tmp_path)
    try:
        assert second.port != first.port
        socket.create_connection(("127.0.0.1", second.port), timeout=5).close()
    finally:
        second.stop()
