"""Capture throughput: ``vmigdb capture`` of the same guest run through vmigdb's stub and QEMU.

Events written per second of guest run (from the first ``continue`` to the end of the last
pull), for a whole demo-guest run, in one process so the two numbers share the machine's load.
The stub records in the machine and gdb fetches in bulk (fast path); QEMU is traced by gdb
breakpoints, one stop/resume round trip per hit (portable path). Both traces must come out
equivalent (``vmigdb.tracediff``), or the row says they do not.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from vmigdb import capture, targets, tracediff
from vmigdb import trace as tr
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "build" / "guest.elf"
ROM = ROOT / "build" / "vmi_rom.bin"
CMDLINE = "rom=copy"


def _capture(target: str, out: Path) -> capture.Result:
    cfg = capture.Config(guest=GUEST, output=out, rom=ROM, cmdline=CMDLINE, target=target)
    result = capture.capture(cfg)
    if not result.ok:
        raise RuntimeError(f"capture on the {target} failed: {result.message}")
    return result


def main() -> int:
    console = make_console()
    kinds = ["stub"] + (["qemu"] if shutil.which(targets.QEMU) else [])
    table = Table(title=f"vmigdb capture, demo guest ({CMDLINE}), whole run")
    for col in ("target", "path", "events", "ROM calls", "run time", "events/s", "vs stub"):
        table.add_column(col, justify="left" if col in ("target", "path") else "right")
    with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as d:
        results = {t: _capture(t, Path(d) / f"{t}.jsonl") for t in kinds}
        traces = {t: tr.read_trace(Path(d) / f"{t}.jsonl").events for t in kinds}
    stub = results["stub"]
    for t, r in results.items():
        ratio = f"{r.events_per_second / stub.events_per_second:.3f}x" if t != "stub" else "1x"
        table.add_row(t, r.source, str(r.events), str(r.calls), f"{r.seconds:.2f} s",
                      f"{r.events_per_second:,.0f}", ratio)
    console.print(table)
    if "qemu" in traces:
        d = tracediff.diff(traces["stub"], traces["qemu"])
        console.print("stub and QEMU traces: " + ("equivalent" if d.equivalent else
                                                  f"differ at event {d.first.index}"))
    else:
        console.print("QEMU: qemu-system-i386 not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
