"""One place per fact (issue 12 items 17-19): the facts that were written several times are read
from their one module, and the dead names stay gone.

The rules themselves are tested where they live (QEMU's exit status, the ELF entry); the source
scans are there so that a new copy of a fact shows up as a failing test, not in a later review.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, Built

from vmigdb import debugexit, elf, x86
from vmigdb.errors import GuestImageError
from vmigdb.stub.machine import Stop, StopReason
from vmigdb.stub.machine.boot import multiboot

#: Our Python: the packages, the tests, the bench and the loader (not other engineers' build/).
SOURCES = [p for d in ("vmigdb", "stub", "rom", "commands", "tests", "bench")
           for p in sorted((REPO / d).rglob("*.py"))] + [REPO / "vmigdb.py", REPO / "setup.py"]


def _lines(pattern: str, exclude: tuple[str, ...] = ()) -> list[str]:
    rx = re.compile(pattern)
    hits = []
    for path in SOURCES:
        rel = path.relative_to(REPO).as_posix()
        if rel in exclude or rel == "tests/test_one_place.py":
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if rx.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    return hits


# --- 17: one MI driver, one gdb -------------------------------------------------------------------


def test_one_mi_driver_and_the_gdb_binary_named_once() -> None:
    assert not (REPO / "tests" / "gdbmi.py").exists()
    assert _lines(r"^\s*(from gdbmi|import gdbmi)\b") == []
    assert _lines(r"""["']/usr/bin/gdb["']|\[\s*["']gdb["']\s*,""",
                  exclude=("vmigdb/mi.py",)) == []


# --- 18: facts written several times ---------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 0x21, 0x7F])
def test_qemu_exit_status_round_trip(value: int) -> None:
    status = debugexit.qemu_status(value)
    assert status & 1 and debugexit.guest_code(status) == value
    assert Stop(StopReason.EXIT, 0, exit_code=value).qemu_status == status


@pytest.mark.parametrize("status", [None, 0, 2, -9])
def test_qemu_ended_another_way(status: int | None) -> None:
    assert debugexit.guest_code(status) is None


def test_the_exit_rule_and_cr0_bits_are_not_restated() -> None:
    assert _lines(r"<< 1\) \| 1|>> 1 if|status >> 1", exclude=("vmigdb/debugexit.py",)) == []
    assert _lines(r"isa-debug-exit,iobase", exclude=("vmigdb/debugexit.py",)) == []
    assert _lines(r"0x8000000[01]\b", exclude=("tests/test_devices.py",
                                               "stub/machine/native.py")) == []
    assert x86.CR0_PG == 1 << 31 and x86.CR0_PE == 1


def test_descriptors_are_decoded_in_x86_only() -> None:
    assert _lines(r"<< 16\) \| \(hi & 0xFF000000\)|\(hi & 0xFF\) << 16",
                  exclude=("vmigdb/x86.py",)) == []
    d = x86.Descriptor.decode((0x00CF9A000000FFFF).to_bytes(8, "little"))
    assert (d.base, d.limit, d.is_code, d.dpl) == (0, 0xFFFFFFFF, True, 0)


def test_elf_entry_is_read_with_pyelftools(built: Built, tmp_path: Path) -> None:
    image = built.guest.read_bytes()
    assert elf.entry(built.guest) == multiboot.parse(image).entry
    assert elf.entry(built.guest) == elf.parse(image).header.e_entry
    assert _lines(r"\[24:28\]|unpack_from\(\"<I+\", \w+, (0x18|24)\)",
                  exclude=("vmigdb/capture.py",)) == []  # capture.py: its owner's change
    with pytest.raises(GuestImageError, match="not an ELF"):
        elf.parse(b"MZ" + bytes(60))
    with pytest.raises(GuestImageError, match="cannot read"):
        elf.entry(tmp_path / "missing")


# --- 19: dead code -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["_is_resume", "vmem_translate", "POST_PORT", "RegWrite",
                                  "check_rom_image", "written by a sibling",
                                  r"^PC = BY_NAME"])
def test_dead_names_stay_gone(name: str) -> None:
    assert _lines(name if name.startswith("^") else re.escape(name)) == []
