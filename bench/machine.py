"""Machine benchmarks: the demo guest on vmigdb's machine against QEMU, in the same run.

Wall-clock times of whole guest runs (boot to isa-debug-exit), best of a few, with the ratio to
QEMU (TCG, single thread) on the same images. Numbers vary with machine load; ratios measured in
one run are what to compare.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from vmigdb.targets import qemu_argv
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "build" / "guest.elf"
ROM = ROOT / "build" / "vmi_rom.bin"
REPEAT = 3


def _best(fn: Callable[[], None], repeat: int = REPEAT) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _run_ours(cmdline: str, trace: bool = False) -> None:
    from vmigdb.stub.machine import Machine, StopReason

    m = Machine.from_files(str(GUEST), rom=str(ROM), cmdline=cmdline)
    tracer = None
    if trace:
        from vmigdb.stub.vmitrace import VmiTracer

        tracer = VmiTracer(m)
        tracer.start()
    stop = m.run()
    while stop.reason is not StopReason.EXIT:
        if stop.reason is not StopReason.HOOK:
            raise RuntimeError(f"guest stopped: {stop.reason.value} {stop.message}")
        stop = m.run()
    if stop.exit_code != 0:
        raise RuntimeError(f"guest failed with code {stop.exit_code}")


def _run_qemu(cmdline: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(qemu_argv(GUEST, ROM, cmdline, Path(d) / "serial.log"),
                           check=False, timeout=300, capture_output=True)
    if r.returncode != 1:
        raise RuntimeError(f"QEMU run failed with status {r.returncode}")


def main() -> int:
    console = make_console()
    table = Table(title="demo guest, boot to exit (wall clock, best of 3)")
    for col in ("workload", "vmigdb machine", "vmigdb + tracer", "QEMU TCG", "machine/QEMU"):
        table.add_column(col, justify="right" if col != "workload" else "left")
    have_qemu = shutil.which("qemu-system-i386") is not None
    for cmdline in ("rom=copy", "rom=inplace", "rom=copy stress=20"):
        ours = _best(lambda c=cmdline: _run_ours(c))
        traced = _best(lambda c=cmdline: _run_ours(c, trace=True))
        qemu = _best(lambda c=cmdline: _run_qemu(c)) if have_qemu else None
        table.add_row(
            cmdline, f"{ours * 1000:.0f} ms", f"{traced * 1000:.0f} ms ({traced / ours:.2f}x)",
            f"{qemu * 1000:.0f} ms" if qemu else "not installed",
            f"{ours / qemu:.2f}x" if qemu else "-",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
