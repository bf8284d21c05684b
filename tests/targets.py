"""Start the two gdb targets the tests compare: vmigdb's stub and QEMU's gdbstub.

Both are real processes on 127.0.0.1 with ephemeral ports; readiness is polled with a deadline,
and ``stop`` ends each by its pid.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VMIGDB = Path(sys.executable).with_name("vmigdb")


@dataclass
class Target:
    """A running gdb target: its process, its port, and where its guest's serial output goes."""

    proc: subprocess.Popen[bytes]
    port: int
    serial: Path
    kind: str

    def stop(self) -> int | None:
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> int | None:
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


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"target exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


def start_stub(guest: Path, rom: Path, cmdline: str, tmp: Path) -> Target:
    """``vmigdb serve --port 0``: the port comes from the stub's 'listening on' line."""
    serial = tmp / "stub-serial.log"
    err = tmp / "stub-stderr.log"
    proc = subprocess.Popen(
        [str(VMIGDB), "serve", str(guest), "--rom", str(rom), "--cmdline", cmdline, "--port", "0"],
        stdout=serial.open("wb"), stderr=err.open("wb"), cwd=ROOT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on [\d.]+:(\d+)", err.read_text())
        if m:
            return Target(proc, int(m.group(1)), serial, "stub")
        if proc.poll() is not None:
            raise RuntimeError(f"stub exited: {err.read_text()}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("stub did not start listening")


def start_qemu(guest: Path, rom: Path, cmdline: str, tmp: Path) -> Target:
    """QEMU stopped at reset (-S) with its gdbstub on a free port (the reference machine)."""
    serial = tmp / "qemu-serial.log"
    port = free_port()
    proc = subprocess.Popen(
        ["qemu-system-i386", "-m", "64", "-nodefaults", "-accel", "tcg,thread=single", "-nographic",
         "-no-reboot", "-display", "none", "-monitor", "none", "-serial", f"file:{serial}",
         "-kernel", str(guest), "-option-rom", str(rom),
         "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-append", cmdline,
         "-gdb", f"tcp:127.0.0.1:{port}", "-S"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
    )
    _wait_listening(port, proc, time.monotonic() + 20)
    return Target(proc, port, serial, "qemu")
