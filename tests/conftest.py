"""Shared fixtures: the ROM and the demo guest built from source, and a QEMU runner.

``built`` runs ``make all`` in the repository once per session and returns the artefacts'
paths; ``run_qemu`` boots a multiboot ELF with an option ROM under QEMU (the reference machine,
with the settings shared/reference/qemu-reference.md recommends) and returns the guest's exit
code and its serial output.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmigdb.debugexit import guest_code
from vmigdb.targets import linux_dir, qemu_argv, unpacked_vmlinux

REPO = Path(__file__).resolve().parent.parent
#: CI (.ci/run, which sets VMIGDB_NO_SKIP=1; or any CI that sets CI) has every tool and the
#: Linux guest: there a missing one fails its tests instead of skipping them.
NO_SKIP = os.environ.get("VMIGDB_NO_SKIP", "1" if os.environ.get("CI") else "0") == "1"


def require(present: object, what: str) -> None:
    """Skip a test whose tool or guest is absent here; fail it where nothing may be absent."""
    if present:
        return
    if NO_SKIP:
        pytest.fail(f"{what}, and VMIGDB_NO_SKIP=1 says everything is here", pytrace=False)
    pytest.skip(what)


def _no_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped where nothing may skip (VMIGDB_NO_SKIP=1): {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """With VMIGDB_NO_SKIP=1 a skip from anywhere (a library, a marker) counts as a failure."""
    outcome = yield
    _no_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped as it is collected (``importorskip``, a
    module-level ``pytest.skip``)."""
    outcome = yield
    _no_skip(outcome.get_result())


@dataclass(frozen=True)
class Built:
    """Paths of the artefacts ``make all`` produces."""

    rom: Path
    guest: Path
    repo: Path = REPO


@dataclass(frozen=True)
class Linux:
    """The real VMI guest of shared/linux: kernel, initramfs, and vmlinux unpacked into build/."""

    dir: Path
    bzimage: Path
    initrd: Path
    vmlinux: Path


@pytest.fixture(scope="session")
def linux() -> Linux:
    """The Linux guest; vmlinux (debug info, 136 MB) is unpacked once into build/linux/."""
    d = linux_dir()
    require(d, "the Linux guest is not here (set VMIGDB_LINUX_DIR or put shared/linux beside "
               "the repository)")
    assert d is not None
    vmlinux = unpacked_vmlinux(d, REPO / "build" / "linux")
    return Linux(d, d / "bzImage-2.6.32.9-vmi", d / "initramfs-vmigdb.cpio.gz", vmlinux)


@pytest.fixture(scope="session")
def built() -> Built:
    """Build the ROM and the guest once (``make -C <repo> all``); fail with make's output."""
    r = subprocess.run(["make", "-C", str(REPO), "all"], check=False, capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.fail(f"make all failed ({r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)
    out = Built(rom=REPO / "build" / "vmi_rom.bin", guest=REPO / "build" / "guest.elf")
    assert out.rom.is_file() and out.guest.is_file()
    return out


class QemuTimeout(AssertionError):
    """QEMU did not exit in time; the message carries the serial output so far."""


def run_qemu(elf: Path, rom: Path | None, cmdline: str = "",
             timeout: float = 60.0) -> tuple[int | None, str]:
    """Boot ``elf`` (with ``rom`` as an option ROM, or none) and wait for it to exit.

    Returns (guest_code, serial_text): guest_code is the value the guest wrote to isa-debug-exit
    (None if QEMU ended any other way); serial_text is COM1's output with CRs removed. QEMU is
    killed if it outlives ``timeout`` seconds, and QemuTimeout is raised with the output so far.
    """
    with tempfile.TemporaryDirectory(prefix="vmigdb-qemu-") as d:
        serial = Path(d) / "serial.log"
        proc = subprocess.Popen(qemu_argv(elf, rom, cmdline, serial),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            text = _read(serial)
            raise QemuTimeout(f"QEMU still running after {timeout}s ({cmdline!r}); serial:\n"
                              f"{text}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = _read(serial)
    code = guest_code(proc.returncode)
    if code is not None:
        return code, text
    if out:
        text += "\n[qemu] " + out.decode(errors="replace")
    return None, text


def _read(path: Path) -> str:
    if not path.exists():
        return ""
    return path.read_bytes().decode(errors="replace").replace("\r", "")
