"""Start the two gdb targets vmigdb compares: its own stub (``vmigdb serve``) and QEMU's gdbstub.

One place for the reference command lines, so capture, the demo, the benchmarks and the tests
all run the same machines: QEMU as shared/reference/qemu-reference.md section 5 recommends
(single-threaded TCG for exact breakpoint counts, 128 MiB and no local APIC like vmigdb's
machine, stopped at reset with ``-S``), our stub with ``--port 0`` and the port read from its "listening on" line. Children
die with the process that started them, so a killed capture or test leaves nothing running.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmigdb import debugexit
from vmigdb.errors import VmiError
from vmigdb.mi import die_with_parent

QEMU = "qemu-system-i386"
#: The real VMI guest's kernel, in ../shared/linux (or $VMIGDB_LINUX_DIR).
LINUX_KERNEL = "bzImage-2.6.32.9-vmi"
LINUX_VMLINUX = "vmlinux-2.6.32.9-vmi"
#: vmigdb's PC has no local APIC (its CPUID says so): the reference CPU says the same.
QEMU_CPU = ("-cpu", "qemu32,-apic")
DEBUG_EXIT = debugexit.QEMU_DEVICE
START_TIMEOUT = 20.0


class TargetError(VmiError):
    """A target process could not be started or did not start listening."""


@dataclass
class Target:
    """A running gdb target process, the port it listens on, its log and the guest's COM1 file."""

    kind: str  # "stub" | "qemu"
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    serial: Path

    def guest_code(self) -> int | None:
        """QEMU only: the guest's isa-debug-exit value from QEMU's exit status, if it ended so."""
        return debugexit.guest_code(self.proc.poll())

    def stop(self) -> int | None:
        return stop_process(self.proc)


def linux_dir() -> Path | None:
    """The Linux guest's folder: ``$VMIGDB_LINUX_DIR``, else ``shared/linux`` beside the
    checkout (as CI has it); None when its kernel is not there."""
    env = os.environ.get("VMIGDB_LINUX_DIR")
    d = Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "linux"
    return d if (d / LINUX_KERNEL).is_file() else None


def unpacked_vmlinux(linux: Path, into: Path) -> Path:
    """The Linux guest's vmlinux (debug info, 136 MB; shipped xz-packed), unpacked once into
    the folder ``into`` and again only when the packed file is newer."""
    vmlinux = into / LINUX_VMLINUX
    packed = linux / f"{LINUX_VMLINUX}.xz"
    if not vmlinux.is_file() or vmlinux.stat().st_mtime < packed.stat().st_mtime:
        into.mkdir(parents=True, exist_ok=True)
        part = vmlinux.with_suffix(".part")
        with open(part, "wb") as out:
            subprocess.run(["xz", "-dc", str(packed)], stdout=out, check=True)
        part.rename(vmlinux)
    return vmlinux


def stop_process(proc: subprocess.Popen[bytes]) -> int | None:
    """End a child by its pid: terminate, then kill if it does not go within 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_argv(guest: Path, rom: Path | None, cmdline: str, serial: Path,
              gdb_port: int | None = None) -> list[str]:
    """The reference QEMU command line; with ``gdb_port`` its gdbstub waits at reset."""
    argv = [QEMU, "-m", "128", *QEMU_CPU, "-nodefaults", "-accel", "tcg,thread=single", "-nographic",
            "-no-reboot", "-display", "none", "-monitor", "none", "-serial", f"file:{serial}",
            "-kernel", str(guest), "-device", DEBUG_EXIT, "-append", cmdline]
    if rom is not None:
        argv += ["-option-rom", str(rom)]
    if gdb_port is not None:
        argv += ["-gdb", f"tcp:127.0.0.1:{gdb_port}", "-S"]
    return argv


#: QEMU's clock for the Linux comparison: 8 ns per instruction as vmigdb's machine
#: (stub/native/vm.h VM_NS_PER_TICK), the RTC on the virtual clock from the same date.
QEMU_LINUX_TIME = ("-icount", "shift=3,sleep=off", "-rtc", "base=2026-01-01T00:00:00,clock=vm")


def qemu_linux_argv(kernel: Path, initrd: Path | None, cmdline: str, rom: Path | None,
                    memory_mib: int, serial: Path, work: Path, firmware: Path) -> list[str]:
    """QEMU booting a Linux bzImage the way vmigdb's machine does, so their logs can be
    compared line by line: the same boot blobs at the same addresses (vmigdb's own loader
    writes them, ``-device loader`` places them), a firmware that only enters the kernel
    (tests/firmware/boot32.S: no ACPI, MP, DMI or PCI BIOS tables, which SeaBIOS would add),
    the pc machine without ACPI and HPET, no local APIC, the VMI ROM at 0xC0000, and
    deterministic time (QEMU_LINUX_TIME)."""
    from vmigdb.stub.machine.boot import linux

    plan = linux.plan(kernel.read_bytes(), cmdline=cmdline,
                      initrd=initrd.read_bytes() if initrd else None, ram_size=memory_mib << 20)
    argv = [QEMU, "-nodefaults", "-accel", "tcg,thread=single", "-M", "pc,acpi=off,hpet=off",
            *QEMU_CPU, "-m", str(memory_mib), "-bios", str(firmware), "-display", "none",
            "-no-reboot", "-monitor", "none", "-serial", f"file:{serial}", "-device", DEBUG_EXIT,
            *QEMU_LINUX_TIME]
    for i, (addr, data) in enumerate(plan.blobs):
        blob = work / f"boot-blob-{i}.bin"
        blob.write_bytes(data)
        argv += ["-device", f"loader,file={blob},addr={addr:#x},force-raw=on"]
    if rom is not None:
        argv += ["-device", f"loader,file={rom},addr=0xc0000,force-raw=on"]
    return argv


def qemu_linux_rom_argv(kernel: Path, initrd: Path | None, cmdline: str, rom: Path | None,
                        serial: Path, gdb_port: int | None = None,
                        memory_mib: int = 128) -> list[str]:
    """QEMU booting a Linux bzImage as ../shared/linux/README.md does, the ROM as an option ROM
    that SeaBIOS places at 0xC0000 (``-option-rom``), with the reference CPU of ``qemu_argv``;
    with ``gdb_port`` its gdbstub waits at reset. Unlike ``qemu_linux_argv`` this is the
    machine a user runs (firmware, BIOS tables), not one made to match vmigdb's boot line for
    line: the gdb commands must work on both."""
    argv = [QEMU, "-nodefaults", "-accel", "tcg,thread=single", "-m", str(memory_mib),
            *QEMU_CPU, "-display", "none", "-no-reboot", "-monitor", "none",
            "-serial", f"file:{serial}", "-device", DEBUG_EXIT, "-kernel", str(kernel),
            "-append", cmdline]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    if rom is not None:
        argv += ["-option-rom", str(rom)]
    if gdb_port is not None:
        argv += ["-gdb", f"tcp:127.0.0.1:{gdb_port}", "-S"]
    return argv


def _spawn(argv: list[str], stdout: Path, stderr: Path) -> subprocess.Popen[bytes]:
    try:
        with open(stdout, "wb") as out, open(stderr, "ab") as err:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    preexec_fn=die_with_parent)  # noqa: PLW1509
    except OSError as e:
        raise TargetError(f"cannot start {argv[0]}: {e.strerror}") from None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def start_stub(guest: Path, rom: Path, cmdline: str, work: Path, *,
               serial: Path | None = None, trace: bool = False,
               initrd: Path | None = None, memory_mib: int | None = None) -> Target:
    """``vmigdb serve --port 0`` in a child; the guest waits at its entry for gdb."""
    log = work / "stub.log"
    serial = serial or work / "stub-serial.log"
    argv = [sys.executable, "-m", "vmigdb.cli", "serve", str(guest), "--rom", str(rom),
            "--cmdline", cmdline, "--port", "0"] + (["--trace"] if trace else [])
    if initrd is not None:
        argv += ["--initrd", str(initrd)]
    if memory_mib is not None:
        argv += ["-m", str(memory_mib)]
    start = log.stat().st_size if log.exists() else 0  # the log is appended to: read this run's
    proc = _spawn(argv, serial, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        m = re.search(r"listening on [\d.]+:(\d+)", text)
        if m:
            return Target("stub", proc, int(m.group(1)), log, serial)
        if proc.poll() is not None:
            raise TargetError(f"the stub did not start: {_last_line(text)}")
        time.sleep(0.02)
    stop_process(proc)
    raise TargetError("the stub did not start listening")


def start_qemu(guest: Path, rom: Path | None, cmdline: str, work: Path, *,
               serial: Path | None = None) -> Target:
    """QEMU stopped at reset with its gdbstub on a free port (a multiboot guest)."""
    serial = serial or work / "qemu-serial.log"
    port = free_port()
    return _start_qemu(qemu_argv(guest, rom, cmdline, serial, gdb_port=port), port, work,
                       serial)


def start_qemu_linux(kernel: Path, initrd: Path | None, rom: Path | None, cmdline: str,
                     work: Path, *, serial: Path | None = None,
                     memory_mib: int = 128) -> Target:
    """QEMU booting a Linux bzImage (``qemu_linux_rom_argv``), stopped at reset with its
    gdbstub on a free port."""
    serial = serial or work / "qemu-serial.log"
    port = free_port()
    argv = qemu_linux_rom_argv(kernel, initrd, cmdline, rom, serial, gdb_port=port,
                               memory_mib=memory_mib)
    return _start_qemu(argv, port, work, serial)


def _start_qemu(argv: list[str], port: int, work: Path, serial: Path) -> Target:
    if shutil.which(QEMU) is None:
        raise TargetError(f"{QEMU} not found (install qemu-system-x86)")
    log = work / "qemu.log"
    proc = _spawn(argv, log, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetError(f"QEMU did not start: {_last_line(log.read_text(errors='replace'))}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Target("qemu", proc, port, log, serial)
        except OSError:
            time.sleep(0.02)
    stop_process(proc)
    raise TargetError(f"QEMU's gdbstub did not listen on port {port}")
