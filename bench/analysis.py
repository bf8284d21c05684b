"""Trace analysis at scale: ``vmigdb report``, ``diff`` and ``export`` on version 2 traces of the
demo guest (``stress=50``) and of the Linux boot, each measured in one run.

Rows, per trace and length: the events, the bytes per event on disk, the wall time of
``report``, ``diff`` (the trace against a copy of itself: every event compared) and the exports,
as seconds and seconds per million events (issue 11's target: report and diff <= 5 s per million),
and the peak RSS of report and diff. Each trace is measured at its own length and at LONGER times
it (the same events repeated, seqs and clock carried on), so that the RSS shows whether it stays
put when the trace grows. Whole ``vmigdb`` processes (their ~0.5 s of start-up included), so the
numbers are what a user waits for.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from vmigdb import events as ev
from vmigdb.mi import GDB
from vmigdb.targets import linux_dir, unpacked_vmlinux
from vmigdb.tracefile import TraceFileWriter, open_trace
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "build" / "guest.elf"
ROM = ROOT / "build" / "vmi_rom.bin"
VMIGDB = Path(sys.executable).with_name("vmigdb")
LONGER = 8
TARGET = 5.0  # seconds per million events, report and diff
#: From System.map-2.6.32.9-vmi; task_struct's pid and comm offsets come from vmlinux.
CURRENT_TASK, PER_CPU_OFFSET = 0xC16DA48C, 0xC167AD80


#: Runs a command and prints its exit code and peak RSS. Why a go-between: a child's ru_maxrss
#: starts from the memory of the process it was forked from (Linux keeps the pre-exec high-water
#: mark), and this bench holds whole traces; forked from this small process, vmigdb's own peak
#: is what is measured.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _run(*args: str, ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one ``vmigdb`` process (its exit code one of
    ``ok``)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(VMIGDB), *args],
                       capture_output=True, text=True, check=False)
    secs = time.perf_counter() - t0
    code, rss = (int(x) for x in r.stdout.split())
    if code not in ok:
        raise RuntimeError(f"vmigdb {' '.join(args)}: exit {code}: {r.stderr[-500:]!r}")
    return secs, rss


def _demo(out: Path) -> None:
    from vmigdb.stub.machine import Machine, StopReason
    from vmigdb.stub.vmitrace import VmiTracer

    m = Machine.from_files(str(GUEST), rom=str(ROM), cmdline="stress=50")
    m.on_serial = lambda data: None
    t = VmiTracer(m)
    t.open_file(out, guest=str(GUEST), symbols=str(GUEST), target="stub", cmdline="stress=50")
    t.start()
    stop = m.run()
    while stop.reason is not StopReason.EXIT:
        stop = m.run()
    t.close_file(status="exited")


def _linux(out: Path, linux: Path) -> None:
    import re

    from vmigdb.stub.machine import StopReason
    from vmigdb.stub.machine.pc import PC
    from vmigdb.stub.vmitrace import VmiTracer

    vmlinux = unpacked_vmlinux(linux, ROOT / "build" / "linux")
    r = subprocess.run([GDB, "-nx", "-batch", "-ex", "print &((struct task_struct*)0)->pid",
                        "-ex", "print &((struct task_struct*)0)->comm", str(vmlinux)],
                       capture_output=True, text=True, check=True, timeout=600)
    pid_at, comm_at = (int(x, 16) for x in re.findall(r"\) (0x[0-9a-f]+)", r.stdout))
    m = PC.from_files(str(linux / "bzImage-2.6.32.9-vmi"), rom=str(ROM), cmdline="console=ttyS0",
                      initrd=str(linux / "initramfs-vmigdb.cpio.gz"))
    m.on_serial = lambda data: None
    t = VmiTracer(m)
    t.set_task(CURRENT_TASK, PER_CPU_OFFSET, pid_at, comm_at)
    t.open_file(out, guest=str(linux / "bzImage-2.6.32.9-vmi"), symbols=str(vmlinux),
                target="stub")
    t.start()
    stop = m.run()
    while stop.reason is not StopReason.EXIT:
        stop = m.run()
    t.close_file(status="exited")


def repeated(src: Path, out: Path, times: int) -> int:
    """``src``'s events ``times`` over as one trace (seqs, returns' links, flush entries and
    the clock carried on), written batch by batch; the events written."""
    with open_trace(src) as tf:
        chunks = list(tf.chunks())
        header, tasks = dict(tf.header), dict(tf.tasks)
    n = sum(len(c) for c in chunks)
    span = int(chunks[-1]["clock"][-1]) + 1 if chunks else 0
    header.pop("format", None)
    header.pop("version", None)
    w = TraceFileWriter(out, **header)
    for k in range(times):
        for c in chunks:
            cols = {name: col.copy() for name, col in c.cols.items()}
            cols["seq"] += k * n
            cols["link"] = np.where(cols["kind"] == ev.Kind.RETURN, cols["link"] + k * n,
                                    0).astype(np.uint64)
            cols["clock"] += k * span
            entries = c.entries.copy()
            entries["seq"] += k * n
            w.add(ev.Chunk(cols, entries), tasks=tasks if k == 0 else None)
    w.close(status="exited")
    return w.events


def clocks_changed(src: Path, out: Path) -> int:
    """``src`` with every RDTSC result one tick later (what another run reads); how many."""
    rdtsc = 27  # abi.VmiCall.RDTSC
    changed = 0
    with open_trace(src) as tf:
        header = {k: v for k, v in tf.header.items() if k not in ("format", "version")}
        w = TraceFileWriter(out, **header)
        for c in tf.chunks():
            cols = dict(c.cols)
            hit = (cols["kind"] == ev.Kind.RETURN) & (cols["call"] == rdtsc)
            cols["a0"] = np.where(hit, cols["a0"] + 1, cols["a0"]).astype(np.uint32)
            changed += int(hit.sum())
            w.add(ev.Chunk(cols, c.entries), tasks=dict(tf.tasks))
        w.close(status="exited")
    return changed




def main() -> int:
    console = make_console()
    table = Table(title="vmigdb report / diff / export on version 2 traces (whole processes; "
                        f"target: report and diff <= {TARGET:g} s per million events)")
    for col in ("trace", "events", "bytes/event", "report", "report s/M", "report RSS",
                "diff", "diff s/M", "diff RSS", "export parquet", "export jsonl",
                "export perfetto"):
        table.add_column(col, justify="left" if col == "trace" else "right")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as tmp:
        d = Path(tmp)
        sources = [("demo stress=50", d / "demo.vmt", _demo)]
        linux = linux_dir()
        if linux is not None:
            sources.append(("Linux boot", d / "linux.vmt",
                            lambda out: _linux(out, linux)))  # type: ignore[misc]
        for name, path, make in sources:
            make(path)
            longer = d / f"{path.stem}-x{LONGER}.vmt"
            repeated(path, longer, LONGER)
            for label, trace in ((name, path), (f"{name} ×{LONGER}", longer)):
                with open_trace(trace) as tf:
                    n = sum(len(c) for c in tf.chunks())
                size = trace.stat().st_size
                copy = d / "copy.vmt"
                copy.write_bytes(trace.read_bytes())
                rep, rep_rss = _run("report", str(trace))
                dif, dif_rss = _run("diff", str(trace), str(copy))
                exports = ["", "", ""]
                if trace == path:  # the exports once per trace: their time is per event
                    for i, fmt in enumerate(("parquet", "jsonl", "perfetto")):
                        out = d / f"out.{fmt}"
                        secs, _ = _run("export", str(trace), f"--{fmt}", str(out))
                        exports[i] = (f"{secs:.2f} s ({secs / n * 1e6:.2f} s/M, "
                                      f"{out.stat().st_size / n:.0f} B/ev)")
                        out.unlink()
                copy.unlink()
                per = 1e6 / n
                mark = {True: "", False: " (over)"}
                table.add_row(label, f"{n:,}", f"{size / n:.2f}", f"{rep:.2f} s",
                              f"{rep * per:.2f}{mark[rep * per <= TARGET]}",
                              f"{rep_rss / 1024:.0f} MiB", f"{dif:.2f} s",
                              f"{dif * per:.2f}{mark[dif * per <= TARGET]}",
                              f"{dif_rss / 1024:.0f} MiB", *exports)
            if make is not _demo:  # a diff with many differences: every clock reading
                other = d / "clocks.vmt"
                n_changed = clocks_changed(path, other)
                secs, rss = _run("diff", "--strict", str(path), str(other), ok=(1,))
                notes.append(f"{name}: diff --strict against a copy whose {n_changed:,} RDTSC "
                             f"results all differ: {secs:.2f} s, peak RSS {rss / 1024:.0f} MiB")
    if linux is None:
        console.print("Linux rows: shared/linux not found (set VMIGDB_LINUX_DIR)")
    console.print(table)
    for note in notes:
        console.print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
