"""Capture: ``vmigdb capture`` against the untraced run of the same guest, in one process's run.

For each workload: the wall time of ``vmigdb run`` (no tracer, no gdb) and of ``vmigdb capture``
on the stub (gdb drives, the stub writes the trace file), their ratio (issue 11's goal: at most
2x), events per second, bytes per event on disk, and the peak RSS of each process of the capture
(the capture driver, gdb, the stub, the stub's trace writer), sampled from /proc (VmHWM). The
demo guest's ``stress`` at two lengths shows that memory does not grow with the trace. The
portable path (QEMU, gdb breakpoints) is timed on the demo guest's default run beside the stub.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from vmigdb import targets
from vmigdb.mi import GDB
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "build" / "guest.elf"
ROM = ROOT / "build" / "vmi_rom.bin"
VMIGDB = [sys.executable, "-m", "vmigdb.cli"]
REPEAT = 3


@dataclass
class Workload:
    name: str
    guest: Path
    args: list[str]
    symbols: Path | None = None


@dataclass
class Timed:
    seconds: float
    summary: dict
    rss: dict[str, int] = field(default_factory=dict)  # peak KiB by process kind


def _kind(cmdline: str) -> str | None:
    if "tracesink" in cmdline:
        return "writer"
    if " serve " in f" {cmdline} ":
        return "stub"
    if cmdline.startswith("gdb") or "/gdb " in cmdline:
        return "gdb"
    if " capture " in f" {cmdline} ":
        return "capture"
    return None


def _descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _sample(pid: int, peaks: dict[str, int], done: threading.Event) -> None:
    """Peak RSS (VmHWM) of the process tree of ``pid``, by kind, until ``done``."""
    while not done.is_set():
        for p in _descendants(pid):
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                status = Path(f"/proc/{p}/status").read_text()
            except OSError:
                continue
            kind = _kind(cmd)
            for line in status.splitlines():
                if kind and line.startswith("VmHWM:"):
                    peaks[kind] = max(peaks.get(kind, 0), int(line.split()[1]))
        done.wait(0.05)


def _timed(argv: list[str], sample: bool = False) -> Timed:
    peaks: dict[str, int] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=ROOT)
    done = threading.Event()
    sampler = threading.Thread(target=_sample, args=(proc.pid, peaks, done), daemon=True)
    if sample:
        sampler.start()
    out, err = proc.communicate()
    seconds = time.monotonic() - t0
    done.set()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:6])}... failed: {err.decode(errors='replace')}")
    lines = out.decode(errors="replace").strip().splitlines()
    summary = json.loads(lines[-1]) if sample and lines else {}
    return Timed(seconds, summary, peaks)


def _workloads() -> list[Workload]:
    loads = [Workload("demo stress=50", GUEST, ["--cmdline", "stress=50"]),
             Workload("demo stress=200", GUEST, ["--cmdline", "stress=200"])]
    d = targets.linux_dir()
    vmlinux = ROOT / "build" / "linux" / "vmlinux-2.6.32.9-vmi"
    if d is not None:
        loads.append(Workload("Linux boot + workload", d / "bzImage-2.6.32.9-vmi",
                              ["--initrd", str(d / "initramfs-vmigdb.cpio.gz"),
                               "--append", "console=ttyS0"],
                              vmlinux if vmlinux.is_file() else None))
    return loads


def main() -> int:
    console = make_console(width=150)
    table = Table(title="vmigdb capture (stub, fast path) against the untraced run, same machine")
    for col in ("workload", "run", "capture", "capture/run", "events", "events/s", "B/event",
                "peak RSS capture/gdb/stub/writer (MiB)"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as d:
        for w in _workloads():
            out = Path(d) / "trace.vmt"
            sym = ["--symbols", str(w.symbols)] if w.symbols else []
            if w.symbols:  # gdb's index cache: the first load of a vmlinux costs ~13 s once
                _timed([GDB, "-batch", "-nx", "-iex", "set index-cache enabled on", "-ex",
                        f"file {w.symbols}"])
            run_argv = [*VMIGDB, "run", str(w.guest), "--rom", str(ROM), *w.args]
            cap_argv = [*VMIGDB, "capture", str(w.guest), "--rom", str(ROM), "-o", str(out),
                        *w.args, *sym]
            runs, caps = [], []
            for _ in range(REPEAT):  # interleaved, so a noisy moment hits both alike
                runs.append(_timed(run_argv).seconds)
                caps.append(_timed(cap_argv).seconds)
            cap = _timed(cap_argv, sample=True)  # RSS and the summary, not timed
            run_s, cap_s = min(runs), min(caps)
            events = int(cap.summary.get("events", 0))
            size = out.stat().st_size
            rss = "/".join(f"{cap.rss.get(k, 0) / 1024:.0f}"
                           for k in ("capture", "gdb", "stub", "writer"))
            ratio = cap_s / run_s
            table.add_row(w.name, f"{run_s:.2f} s", f"{cap_s:.2f} s",
                          f"{ratio:.2f}x" + (" met" if ratio <= 2 else " NOT met"),
                          f"{events:,}", f"{events / cap_s:,.0f}",
                          f"{size / max(events, 1):.2f}", rss)
        console.print(table)
        console.print("capture/run: wall time of `vmigdb capture` over `vmigdb run` of the same "
                      f"guest (goal: at most 2x), each the best of {REPEAT} interleaved runs; "
                      "events/s over the capture's wall time; peak RSS from one more capture, "
                      "sampled from /proc every 50 ms (the sampler's CPU is kept out of the "
                      "timed runs)")
        if shutil.which(targets.QEMU):
            portable = _timed([*VMIGDB, "capture", str(GUEST), "--rom", str(ROM), "-o",
                               str(Path(d) / "q.vmt"), "--target", "qemu", "--cmdline",
                               "rom=copy"], sample=True)
            stub = _timed([*VMIGDB, "capture", str(GUEST), "--rom", str(ROM), "-o",
                           str(Path(d) / "s.vmt"), "--cmdline", "rom=copy"], sample=True)
            q, s = portable.summary, stub.summary
            console.print(f"demo guest rom=copy: stub {s['events']} events in "
                          f"{stub.seconds:.2f} s, QEMU (portable, gdb breakpoints) "
                          f"{q['events']} events in {portable.seconds:.2f} s: stub "
                          f"{portable.seconds / stub.seconds:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
