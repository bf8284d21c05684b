"""The real Linux guest (shared/linux: 2.6.32.9 with CONFIG_VMI) on vmigdb's machine.

It boots to its workload with the VMI ROM and without it, at 128 MiB, 512 MiB and 1 GiB (high
memory); without an initrd it ends at the kernel's panic with a clear non-zero end; two runs
print byte-identical logs (timestamps included); and its log is QEMU's line for line.

QEMU is run as vmigdb's machine is built (vmigdb.targets.qemu_linux_argv): the same boot
blobs from vmigdb's loader, no BIOS tables, no local APIC, no ACPI or HPET, and the same
deterministic clock (8 ns per instruction, the RTC on the virtual clock). SeaBIOS, on the
README's command line, adds ACPI, MP, DMI and PCI BIOS tables and an I/O APIC, HPET and PM
timer that Linux describes at length; vmigdb's machine has no firmware, so that comparison
would be of firmware, not of the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Built, Linux

from vmigdb import debugexit
from vmigdb.targets import QEMU, qemu_linux_argv

APPEND = "console=ttyS0"
DONE = "VMIGDB-INIT: done forks=21 pages=1637 ok"
#: printk's timestamp, at the start of a line or after the byte the 8250 probe prints there.
TIMESTAMP = re.compile(r"^(\W?)\[ *\d+\.\d+\] ")
#: Lines left out of the comparison with QEMU, each with why it cannot be equal.
EXCLUDED = {
    # The kernel's stack high-water marks: how deep an interrupt nested at that moment, and
    # interrupts arrive at block boundaries here, at exact instruction counts in QEMU.
    "stack depth": re.compile(r"used greatest stack depth: \d+ bytes left$"),
}
#: Parts of lines normalised before comparing, each with why.
NORMALISED = (
    # the audit subsystem's timestamp (seconds.milliseconds since 1970)
    (re.compile(r"audit\(\d+\.\d+:(\d+)\)"), r"audit(T:\1)"),
    # address-space randomisation: mmap and stack bases come from the kernel's entropy pool,
    # which interrupt timing stirs
    (re.compile(r"segfault at [0-9a-f]+ (ip [0-9a-f]+) sp [0-9a-f]+"), r"segfault at A \1 sp S"),
)


def vmigdb_run(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vmigdb.cli", "run", *map(str, args)],
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                          check=False)


def boot(linux: Linux, *extra: object) -> subprocess.CompletedProcess[bytes]:
    return vmigdb_run(linux.bzimage, "--initrd", linux.initrd, "--append", APPEND, *extra)


def comparable(log: str) -> list[str]:
    """The log without its timestamps and excluded lines."""
    lines = []
    for line in log.replace("\r", "").splitlines():
        line = TIMESTAMP.sub(r"\1", line)
        if any(p.search(line) for p in EXCLUDED.values()):
            continue
        for pattern, replacement in NORMALISED:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return lines


@pytest.mark.parametrize("memory", [128, 512, 1024])
def test_linux_boots_to_its_workload(built: Built, linux: Linux, memory: int) -> None:
    r = boot(linux, "--rom", built.rom, "-m", memory)
    log = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (log[-2000:], r.stderr)
    assert "VMI: Found" in log and "Booting paravirtualized kernel on vmi" in log
    assert DONE in log
    highmem = int(re.search(r"(\d+)MB HIGHMEM available", log).group(1))
    assert (highmem > 0) == (memory > 896), log[:3000]


def test_linux_boots_natively_without_the_rom(linux: Linux) -> None:
    r = boot(linux, "--rom", "none")
    log = r.stdout.decode(errors="replace")
    assert r.returncode == 0 and DONE in log, log[-2000:]
    assert "Booting paravirtualized kernel on bare hardware" in log and "VMI: Found" not in log


def test_without_initrd_the_run_ends_at_the_kernels_panic(built: Built, linux: Linux) -> None:
    r = vmigdb_run(linux.bzimage, "--rom", built.rom, "--append", APPEND)
    log = r.stdout.decode(errors="replace")
    assert "VFS: Unable to mount root fs" in log
    assert r.returncode == 1
    panic = ("vmigdb: the guest kernel panicked: VFS: Unable to mount root fs on "
             "unknown-block(254,0)")
    assert r.stderr.decode().strip().splitlines() == [panic]


def test_two_runs_print_byte_identical_logs(built: Built, linux: Linux) -> None:
    a, b = (boot(linux, "--rom", built.rom) for _ in range(2))
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and DONE.encode() in a.stdout


def test_log_is_qemus_line_for_line(built: Built, linux: Linux, tmp_path: Path) -> None:
    ours = boot(linux, "--rom", built.rom)
    assert ours.returncode == 0
    serial = tmp_path / "qemu-serial.log"
    argv = qemu_linux_argv(linux.bzimage, linux.initrd, APPEND, built.rom, 128, serial,
                           tmp_path, REPO / "build" / "boot32.bin")
    assert argv[0] == QEMU
    q = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=300,
                       check=False)
    assert debugexit.guest_code(q.returncode) == 0, q.stderr
    theirs = serial.read_bytes().decode(errors="replace")
    a, b = comparable(ours.stdout.decode(errors="replace")), comparable(theirs)
    assert DONE in a
    if a != b:
        import difflib

        diff = "\n".join(difflib.unified_diff(b, a, "qemu", "vmigdb", lineterm="", n=1))
        pytest.fail(f"the logs differ:\n{diff}")


@pytest.mark.parametrize("case", ["truncated", "corrupt", "too-big-initrd", "memory-8",
                                  "memory-4000"])
def test_bad_input_gets_one_line_and_exit_2(linux: Linux, tmp_path: Path, case: str) -> None:
    kernel, extra = linux.bzimage, []
    data = linux.bzimage.read_bytes()
    if case == "truncated":
        kernel = tmp_path / "cut.bzImage"
        kernel.write_bytes(data[: len(data) // 2])
    elif case == "corrupt":
        kernel = tmp_path / "bad.bzImage"
        bad = bytearray(data)
        for off in range(0x10000, len(bad), 0x10000):  # inside the compressed kernel
            bad[off] ^= 0xFF
        kernel.write_bytes(bytes(bad))
    elif case == "too-big-initrd":
        big = tmp_path / "big.cpio"
        big.write_bytes(bytes(40 << 20))
        extra = ["--initrd", big, "-m", "32"]
    else:
        extra = ["-m", case.split("-")[1]]
    r = vmigdb_run(kernel, "--append", APPEND, *extra)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert {"truncated": "truncated bzImage", "corrupt": "corrupt bzImage",
            "too-big-initrd": "does not fit", "memory-8": "outside 16..3072",
            "memory-4000": "outside 16..3072"}[case] in lines[0]


def test_console_input_from_a_pipe_reaches_linux(linux: Linux, tmp_path: Path) -> None:
    """COM1's input comes from vmigdb's stdin: a line typed once /init waits for it arrives
    through the 8250's receive interrupt, the tty echoes it, /init reads it whole."""
    from linux.initramfs import build_echo_initramfs

    initrd = build_echo_initramfs(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "vmigdb.cli", "run", str(linux.bzimage),
                             "--initrd", str(initrd), "--append", APPEND],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = b""
        while b"ECHO: ready" not in seen:
            chunk = proc.stdout.read1(4096)
            assert chunk, seen[-2000:]
            seen += chunk
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (seen + rest).decode(errors="replace").replace("\r", "")
    assert "ECHO: ready\nhello\nECHO: got hello\n" in log
    assert proc.returncode == 6  # the line's length, hello and its newline
