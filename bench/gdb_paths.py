"""The two trace paths of the gdb commands on the same guest run, and the loader's load time.

One whole rom=copy run of the demo guest (entry to ``guest_exit``) is traced three ways, each in
its own ``gdb -batch`` with ``vmigdb.py``: the fast path (vmigdb's stub records, gdb fetches the
events with ``monitor vmi trace dump``), the portable path (internal gdb breakpoints) on the
same stub, and the portable path on QEMU's gdbstub. The clock runs inside gdb from the
``continue`` to the last event in gdb's hands, so the fast path pays for its fetch. Events per
second and the ratio to the portable path on QEMU come from the same run; numbers vary with
machine load, ratios are what to compare. The event counts must agree (the paths record the
same events), else the row says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from vmigdb import targets
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "build" / "guest.elf"
ROM = ROOT / "build" / "vmi_rom.bin"
LOADER = ROOT / "vmigdb.py"
GDB = "gdb"
REPEAT = 3

#: Runs inside gdb after ``vmi trace start``: the timed continue and the fetch.
_TIMED = """
import json, time, gdb
from vmigdb import trace as tr
from vmigdb.commands import tracesource
t0 = time.perf_counter()
gdb.execute("continue", to_string=True)
run = time.perf_counter() - t0
src = tracesource.current(create=False)
events = src.events() if src is not None else []
dt = time.perf_counter() - t0
calls = sum(isinstance(e, tr.RomCall) for e in events)
print("@@" + json.dumps({"events": len(events), "calls": calls, "seconds": dt, "run": run}))
"""


def trace_run(kind: str, mode: str) -> dict[str, float]:
    """One whole run on ``kind`` ('stub' or 'qemu'), traced by ``mode`` ('fast', 'portable'
    or '' for no trace: the guest's own run time); events, calls, seconds."""
    with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as d:
        tmp = Path(d)
        script = tmp / "timed.py"
        script.write_text(_TIMED)
        start = targets.start_stub if kind == "stub" else targets.start_qemu
        target = start(GUEST, ROM, "rom=copy", tmp)
        try:
            r = subprocess.run(
                [GDB, "-nx", "-batch", "-x", str(LOADER), "-ex", f"file {GUEST}",
                 "-ex", f"target remote 127.0.0.1:{target.port}",
                 "-ex", {"fast": "vmi trace start", "portable": "vmi trace start --portable",
                         "": "echo"}[mode],
                 "-ex", "break guest_exit", "-ex", f"source {script}"],
                capture_output=True, text=True, timeout=600, check=False,
                env={**os.environ, "NO_COLOR": "1"})
        finally:
            target.stop()
    m = re.search(r"^@@(\{.*\})$", r.stdout, re.MULTILINE)
    if not m:
        raise RuntimeError(f"gdb ({kind}, {mode or 'untraced'}) gave no result:\n"
                           f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(m[1])


def load_time(repeat: int = REPEAT) -> tuple[float, float]:
    """(plain ``gdb -nx -batch``, the same with ``-x vmigdb.py``): best wall time of each."""
    def best(argv: list[str]) -> float:
        t = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True, cwd=tempfile.gettempdir())
            t = min(t, time.perf_counter() - t0)
        return t

    plain = best([GDB, "-nx", "-batch", "-ex", "echo"])
    loaded = best([GDB, "-nx", "-batch", "-x", str(LOADER), "-ex", "help vmi"])
    return plain, loaded


def main() -> int:
    console = make_console(width=100)
    base = {"stub": trace_run("stub", ""), "qemu": trace_run("qemu", "")}
    runs = {
        "fast, stub": ("stub", trace_run("stub", "fast")),
        "portable, stub": ("stub", trace_run("stub", "portable")),
        "portable, QEMU": ("qemu", trace_run("qemu", "portable")),
    }
    _, reference = runs["portable, QEMU"]
    ref_rate = reference["events"] / reference["seconds"]
    ref_cost = (reference["seconds"] - base["qemu"]["seconds"]) / reference["events"]
    ref_rec = (reference["run"] - base["qemu"]["run"]) / reference["events"]
    table = Table(title="vmi trace: one whole rom=copy run of the demo guest (entry to "
                        "guest_exit)",
                  caption=f"untraced run: stub {base['stub']['run']:.2f} s, "
                          f"QEMU {base['qemu']['run']:.2f} s")
    table.add_column("path")
    table.add_column("events", justify="right")
    table.add_column("s", justify="right")
    table.add_column("events/s", justify="right")
    table.add_column("x QEMU", justify="right")
    table.add_column("µs/ev rec", justify="right")
    table.add_column("x QEMU", justify="right")
    table.add_column("µs/ev all", justify="right")
    table.add_column("x QEMU", justify="right")

    def ratio(ref: float, x: float) -> str:
        return f"{ref / x:.1f}" if x > 0 else "-"

    for name, (kind, r) in runs.items():
        rate = r["events"] / r["seconds"]
        rec = (r["run"] - base[kind]["run"]) / r["events"]
        cost = (r["seconds"] - base[kind]["seconds"]) / r["events"]
        same = r["events"] == reference["events"]
        table.add_row(name, f"{r['events']}" + ("" if same else " (differs!)"),
                      f"{r['seconds']:.2f}", f"{rate:,.0f}", f"{rate / ref_rate:.1f}",
                      f"{rec * 1e6:,.1f}", ratio(ref_rec, rec),
                      f"{cost * 1e6:,.1f}", ratio(ref_cost, cost))
    console.print(table)
    console.print("events/s: the whole span, guest run and fetch included. µs/ev: the "
                  "tracer's own cost per event over the untraced run; rec = recording only "
                  "(the continue), all = with the fetch of every event into gdb (the fast path "
                  "fetches with monitor vmi trace dump; the portable path holds them already).")

    plain, loaded = load_time()
    t2 = Table(title=f"gdb start (best of {REPEAT})")
    t2.add_column("command")
    t2.add_column("seconds", justify="right")
    t2.add_row("gdb -nx -batch", f"{plain:.3f}")
    t2.add_row("gdb -nx -batch -x vmigdb.py (help vmi)", f"{loaded:.3f}")
    t2.add_row("vmigdb.py load time", f"{loaded - plain:.3f}")
    console.print(t2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
