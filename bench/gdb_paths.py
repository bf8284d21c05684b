"""The two trace paths of the gdb commands on the same guest run, and the loader's load time.

One whole rom=copy run of the demo guest (entry to ``guest_exit``) is traced three ways, each in
its own ``gdb -batch`` with ``vmigdb.py``: the fast path (vmigdb's stub records in C, gdb
fetches its raw log with ``qvmigdb.raw`` and decodes it), the portable path (internal gdb
breakpoints) on the same stub, and the portable path on QEMU's gdbstub. The clock runs inside
gdb from the ``continue`` to the last event in gdb's hands, so the fast path pays for its fetch
and decoding. A path's events per second are over what tracing costs it: that span less the
same target's untraced run. For the fast path that difference is small beside the guest's own
run time, which wanders with the machine's load, so it is measured in pairs in one session
(untraced run, ``monitor reset``, traced run and fetch) and the median pair is shown. Ratios
to the portable path on QEMU come from the same run; numbers vary with machine load, ratios are
what to compare. The event counts must agree (the paths record the same events), else the row
says so.

Beside them, the portable path on the real Linux guest under QEMU (shared/linux, booted as its
README does, SeaBIOS placing the ROM): gdb connects at reset, ``vmi trace start`` arms at the
kernel's vmi_init, and the clock runs from vmi_init to vmi_bringup (the ROM's initialisation and
apply_paravirt: 3,557 events, each call with its Linux context read), against the same window
untraced; and the workload's first fork, do_fork's entry to its return (copy_page_range's
lazy-MMU batches, the window of the issue's fork comparison). In the first session, Ctrl-C (SIGINT to gdb, as a terminal sends it) during a traced
continue of the boot, timed from the signal to gdb's stop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from vmigdb import targets
from vmigdb.mi import GDB, Gdb
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "build" / "guest.elf"
ROM = ROOT / "build" / "vmi_rom.bin"
LOADER = ROOT / "vmigdb.py"
REPEAT = 3
FAST_REPEAT = 7  # the untraced and fast-path runs take well under a second: more of them
VMLINUX = ROOT / "build" / "linux" / "vmlinux-2.6.32.9-vmi"
CTRL_C_TRIES = 5

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
hits = src.status().get("hits", 0) if src is not None else 0
print("@@" + json.dumps({"events": len(events), "calls": calls, "seconds": dt, "run": run,
                         "hits": hits}))
"""


#: Pairs in one gdb session on our stub: an untraced run, then a traced one with its fetch,
#: each from a ``monitor reset``. A pair shares the machine's mood of the moment, which separate
#: sessions do not: the guest's own run time wanders by more than the tracer costs.
_PAIRED = """
import json, os, time, gdb
from vmigdb import trace as tr
from vmigdb.commands import tracesource

def boot():
    gdb.execute("monitor reset", to_string=True)
    gdb.execute("maint flush register-cache", to_string=True)

pairs = []
for _ in range(int(os.environ["VMIGDB_PAIRS"])):
    boot()
    t0 = time.perf_counter()
    gdb.execute("continue", to_string=True)
    untraced = time.perf_counter() - t0
    boot()
    gdb.execute("vmi trace start", to_string=True)
    src = tracesource.current(create=False)
    have = len(src.events())
    t0 = time.perf_counter()
    gdb.execute("continue", to_string=True)
    run = time.perf_counter() - t0
    events = src.events()[have:]
    dt = time.perf_counter() - t0
    gdb.execute("vmi trace stop", to_string=True)
    pairs.append({"untraced": untraced, "run": run, "seconds": dt, "events": len(events),
                  "calls": sum(isinstance(e, tr.RomCall) for e in events)})
print("@@" + json.dumps(pairs))
"""


def _in_gdb(kind: str, script: str, first: str, what: str, **env: str) -> Any:
    """Start ``kind``'s target on the demo guest, run ``script`` in ``gdb -x vmigdb.py`` after
    ``first`` and a breakpoint on guest_exit; the JSON the script printed after ``@@``."""
    with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as d:
        tmp = Path(d)
        path = tmp / "bench_script.py"
        path.write_text(script)
        start = targets.start_stub if kind == "stub" else targets.start_qemu
        target = start(GUEST, ROM, "rom=copy", tmp)
        try:
            r = subprocess.run(
                [GDB, "-nx", "-batch", "-x", str(LOADER), "-ex", f"file {GUEST}",
                 "-ex", f"target remote 127.0.0.1:{target.port}", "-ex", first,
                 "-ex", "break guest_exit", "-ex", f"source {path}"],
                capture_output=True, text=True, timeout=600, check=False,
                env={**os.environ, "NO_COLOR": "1", **env})
        finally:
            target.stop()
    m = re.search(r"^@@(.*)$", r.stdout, re.MULTILINE)
    if not m:
        raise RuntimeError(f"gdb ({what}) gave no result:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(m[1])


def paired_runs(pairs: int) -> list[dict[str, float]]:
    """``pairs`` (untraced, fast-path traced) runs in one session on our stub."""
    return _in_gdb("stub", _PAIRED, "echo", "paired runs", VMIGDB_PAIRS=str(pairs))


def trace_run(kind: str, mode: str) -> dict[str, float]:
    """One whole run on ``kind`` ('stub' or 'qemu'), traced by ``mode`` ('fast', 'portable'
    or '' for no trace: the guest's own run time); events, calls, seconds."""
    first = {"fast": "vmi trace start", "portable": "vmi trace start --portable", "": "echo"}
    return _in_gdb(kind, _TIMED, first[mode], f"{kind}, {mode or 'untraced'}")


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


def _best(kind: str, modes: tuple[str, ...], repeat: int) -> dict[str, dict[str, float]]:
    """The fastest of ``repeat`` runs of each mode, the modes interleaved (one run of each per
    round): the untraced run and the traced one then see the same moods of a shared machine,
    and one-off stalls do not count."""
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(repeat):
        for mode in modes:
            runs[mode].append(trace_run(kind, mode))
    return {m: min(r, key=lambda x: x["seconds"]) for m, r in runs.items()}


def _vmlinux(linux: Path) -> Path:
    """vmlinux with its debug info, unpacked into build/linux/ as the tests do."""
    return targets.unpacked_vmlinux(linux, VMLINUX.parent)


def _linux_window(linux: Path, traced: bool) -> dict[str, Any]:
    """QEMU booting Linux from reset; the seconds from vmi_init to vmi_bringup, traced (the
    portable path, armed at reset) or not; traced, then the Ctrl-C latencies."""
    with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as d:
        t = targets.start_qemu_linux(linux / "bzImage-2.6.32.9-vmi",
                                     linux / "initramfs-vmigdb.cpio.gz", ROM, "console=ttyS0",
                                     Path(d))
        g = Gdb(["-x", str(LOADER)], cwd=d, timeout=120)
        try:
            g.connect(str(_vmlinux(linux)), t.port, timeout=120)
            if traced:
                g.console("vmi trace start")
            g.ok("-break-insert vmi_init")
            g.resume(timeout=600)
            g.ok("-break-delete")
            g.ok("-break-insert vmi_bringup")
            t0 = time.perf_counter()
            stopped = g.resume(timeout=600)
            seconds = time.perf_counter() - t0
            if stopped["payload"].get("frame", {}).get("func") != "vmi_bringup":
                raise RuntimeError(f"QEMU did not stop at vmi_bringup: {stopped}")
            g.ok("-break-delete")
            out: dict[str, Any] = {"seconds": seconds}
            if traced:
                out.update(_events_and_hits(g))
                out["ctrl_c"] = _ctrl_c_latencies(g)
            return out
        finally:
            g.close()
            t.stop()


def _events_and_hits(g: Gdb) -> dict[str, int]:
    """The trace's events and the portable tracer's breakpoint hits, from gdb's Python."""
    text = g.console("python from vmigdb.commands import tracesource; "
                     "s = tracesource.current(create=False); "
                     "print('@@%d %d' % (len(s.events()), s.status()['hits']))").text
    events, hits = text.split("@@", 1)[1].split()[:2]
    return {"events": int(events), "hits": int(hits)}


def _linux_fork(linux: Path, traced: bool) -> dict[str, Any]:
    """QEMU booting Linux to the workload's first fork (do_fork from a user stack); the seconds
    of do_fork's entry to its return (gdb's ``finish``), traced (the portable path started
    there) or not. The window the issue's fork comparison uses: copy_page_range's lazy-MMU
    batches, as a workload makes them."""
    with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as d:
        t = targets.start_qemu_linux(linux / "bzImage-2.6.32.9-vmi",
                                     linux / "initramfs-vmigdb.cpio.gz", ROM,
                                     "console=ttyS0 norandmaps", Path(d))
        g = Gdb(["-x", str(LOADER)], cwd=d, timeout=120)
        try:
            g.connect(str(_vmlinux(linux)), t.port, timeout=120)
            g.ok('-break-insert -c "stack_start != 0" do_fork')
            g.resume(timeout=600)
            g.ok("-break-delete")
            if traced:
                g.console("vmi trace start")
            t0 = time.perf_counter()
            stopped = g.resume("-exec-finish", timeout=600)
            seconds = time.perf_counter() - t0
            if stopped["payload"].get("frame", {}).get("func") != "sys_fork":
                raise RuntimeError(f"QEMU did not return to sys_fork: {stopped}")
            out: dict[str, Any] = {"seconds": seconds}
            if traced:
                out.update(_events_and_hits(g))
            return out
        finally:
            g.close()
            t.stop()


def _ctrl_c_latencies(g: Gdb) -> list[float]:
    """Seconds from SIGINT to gdb (as a terminal sends Ctrl-C) to the stop, each during a
    traced continue that has run half a second."""
    out = []
    for _ in range(CTRL_C_TRIES):
        g.drain()
        g.pending.clear()
        g.ok("-exec-continue")
        time.sleep(0.5)
        t0 = time.perf_counter()
        os.kill(g.proc.pid, signal.SIGINT)
        stopped = g.wait_stopped(timeout=60)
        out.append(time.perf_counter() - t0)
        if stopped["payload"].get("signal-name") != "SIGINT":
            raise RuntimeError(f"Ctrl-C did not stop the traced continue with SIGINT: {stopped}")
    return out


def linux_portable() -> dict[str, Any] | None:
    """The Linux window traced and untraced (``_linux_window``), or None without the guest."""
    linux = targets.linux_dir()
    if linux is None or shutil.which(targets.QEMU) is None:
        return None
    return {"untraced": _linux_window(linux, False), "traced": _linux_window(linux, True),
            "fork": {"untraced": _linux_fork(linux, False), "traced": _linux_fork(linux, True)}}


def _linux_rows(table: Table, lin: dict[str, Any], ref_rate: float | None,
                ref_span: float | None) -> None:
    _linux_row(table, "portable, QEMU, Linux", lin, ref_rate, ref_span)
    _linux_row(table, "portable, QEMU, Linux fork", lin["fork"], ref_rate, ref_span)


def _linux_row(table: Table, name: str, lin: dict[str, Any], ref_rate: float | None,
               ref_span: float | None) -> None:
    r = lin["traced"]
    cost = max(r["seconds"] - lin["untraced"]["seconds"], 1e-6)
    rate, span = r["events"] / cost, r["events"] / r["seconds"]
    table.add_row(name, f"{r['events']}",
                  f"{r['seconds']:.3f}", f"{cost:.3f}", f"{cost / r['events'] * 1e6:,.1f}",
                  _per_hit(cost, r), f"{rate:,.0f}",
                  f"{rate / ref_rate:.1f}" if ref_rate else "-", f"{span:,.0f}", f"{span / ref_span:.1f}" if ref_span else "-")


def _per_hit(cost: float, r: dict[str, Any]) -> str:
    """µs per breakpoint hit and events per hit: the portable path pays per hit, and a hit
    yields one event or, at a batched flush, one per page-table update."""
    hits = r.get("hits", 0)
    return f"{cost / hits * 1e6:,.0f} ({r['events'] / hits:.2f})" if hits else "-"


def _ctrl_c_table(lin: dict[str, Any]) -> Table:
    lat = sorted(lin["traced"]["ctrl_c"])
    t = Table(title="Ctrl-C during a traced continue (portable path, Linux under QEMU): SIGINT "
                    "to gdb until its stop")
    for name in ("tries", "min ms", "median ms", "max ms"):
        t.add_column(name, justify="right")
    t.add_row(str(len(lat)), f"{lat[0] * 1e3:.1f}", f"{lat[len(lat) // 2] * 1e3:.1f}",
              f"{lat[-1] * 1e3:.1f}")
    return t


def linux_main() -> int:
    """Only the Linux rows (``python -m bench.gdb_paths linux``)."""
    console = make_console(width=100)
    lin = linux_portable()
    if lin is None:
        console.print("Linux rows: shared/linux or QEMU not found (set VMIGDB_LINUX_DIR)")
        return 0
    table = Table(title="vmi trace, portable path: the Linux guest under QEMU")
    for name in ("path", "events", "span s", "tracer s", "µs/event", "µs/hit (events/hit)",
                 "events/s", "x QEMU", "span events/s", "x QEMU "):
        table.add_column(name, justify="left" if name == "path" else "right")
    _linux_rows(table, lin, None, None)
    console.print(table)
    console.print(f"Linux: from vmi_init to vmi_bringup (untraced "
                  f"{lin['untraced']['seconds']:.3f} s); Linux fork: the workload's first "
                  f"fork, do_fork to its return (untraced {lin['fork']['untraced']['seconds']:.3f}"
                  " s)")
    console.print(_ctrl_c_table(lin))
    return 0


def main() -> int:
    console = make_console(width=100)
    # The short runs (untraced, fast path) are repeated; the portable ones take 15-30 s each.
    pairs = paired_runs(FAST_REPEAT)
    costs = sorted(p["seconds"] - p["untraced"] for p in pairs)
    median = pairs[[p["seconds"] - p["untraced"] for p in pairs].index(costs[len(costs) // 2])]
    base = {"stub": {"seconds": median["untraced"]},
            "qemu": _best("qemu", ("",), FAST_REPEAT)[""]}
    runs = {
        "fast, stub": ("stub", median),
        "portable, stub": ("stub", trace_run("stub", "portable")),
        "portable, QEMU": ("qemu", trace_run("qemu", "portable")),
    }
    _, reference = runs["portable, QEMU"]
    table = Table(title="vmi trace: one whole rom=copy run of the demo guest (entry to "
                        "guest_exit), every event in gdb's hands",
                  caption=f"untraced run: stub {base['stub']['seconds']:.3f} s (the median "
                          f"pair of {FAST_REPEAT}), QEMU {base['qemu']['seconds']:.3f} s (best "
                          f"of {FAST_REPEAT})")
    for name in ("path", "events", "span s", "tracer s", "µs/event", "µs/hit (events/hit)",
                 "events/s", "x QEMU", "span events/s", "x QEMU "):
        table.add_column(name, justify="left" if name == "path" else "right")

    def cost(kind: str, r: dict[str, float]) -> float:
        return max(r["seconds"] - base[kind]["seconds"], 1e-6)

    ref_rate = reference["events"] / cost("qemu", reference)
    ref_span = reference["events"] / reference["seconds"]
    for name, (kind, r) in runs.items():
        rate = r["events"] / cost(kind, r)
        span = r["events"] / r["seconds"]
        same = r["events"] == reference["events"]
        table.add_row(name, f"{r['events']}" + ("" if same else " (differs!)"),
                      f"{r['seconds']:.3f}", f"{cost(kind, r):.3f}",
                      f"{cost(kind, r) / r['events'] * 1e6:,.1f}", _per_hit(cost(kind, r), r),
                      f"{rate:,.0f}",
                      f"{rate / ref_rate:.1f}", f"{span:,.0f}", f"{span / ref_span:.1f}")
    lin = linux_portable()
    if lin is not None:
        _linux_rows(table, lin, ref_rate, ref_span)
    console.print(table)
    if lin is not None:
        console.print(f"Linux rows: the Linux guest booted by QEMU, from vmi_init to "
                      f"vmi_bringup (the ROM's initialisation and apply_paravirt; untraced "
                      f"{lin['untraced']['seconds']:.3f} s), and the workload's first fork, "
                      f"do_fork's entry to its return (copy_page_range's lazy-MMU batches; "
                      f"untraced {lin['fork']['untraced']['seconds']:.3f} s). x "
                      "QEMU against the demo guest's portable path on QEMU above. Each Linux "
                      "call also reads its context (task, interrupt state, caller's frame). "
                      "The portable path pays per breakpoint hit (a stop, the registers, a "
                      "step over the breakpoint: µs/hit); the demo guest's hits yield more "
                      "events (a batched flush decodes into one per page-table update).")
        console.print(_ctrl_c_table(lin))
    else:
        console.print("Linux rows: shared/linux or QEMU not found (set VMIGDB_LINUX_DIR)")
    console.print("fast path: tracer cost per pair (traced span less the untraced run just "
                  "before it, same session): " + ", ".join(f"{c * 1e3:.0f}" for c in costs)
                  + " ms; the row shows the median pair")
    console.print("span: from the continue to the last event in gdb's Python (the fast path "
                  "fetches the stub's raw log with qvmigdb.raw and decodes it there; the "
                  "portable path holds its events already). tracer: the span less the same "
                  "target's untraced run, i.e. what tracing costs; events/s and x QEMU are "
                  "over that cost, the issue's comparison. Span events/s include the guest's "
                  "own run time, which caps the fast path's ratio at about the ratio of QEMU's "
                  "traced span to our untraced run.")

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
    sys.exit(linux_main() if sys.argv[1:] == ["linux"] else main())
