"""Stub benchmarks (issue 3): our stub, QEMU's gdbstub and udbserver, one run, one gdb script.

Every peer serves the same guest (build/guest.elf, ``spin=N`` for the loop rows) and ROM, and
bench/gdb_bench.py drives it with the same gdb commands; udbserver runs over our own Machine, so
only the stub differs between it and ours. Rows:

1. ``stepi`` rate: 2000 ``stepi`` from the guest entry (gdb's Python loop).
2. continue to ``bench_spin_done`` over ~100 M instructions of the guest's spin loop, against
   raw Unicorn running the same loop on our Machine with no stub (``Machine.run`` to a
   breakpoint, no gdb).
3. breakpoint round trip: a breakpoint in the loop, 1000 ``continue``.
4. 1 MiB ``read_memory`` of guest RAM at 0x100000.
5. the continue of (2) after 1000 ``stepi``: a machine that stayed in step mode (or kept step
   hooks) would be slower here than in (2).
6. the demo guest from entry to ``guest_exit``: tracer off (every peer) and on (our stub only,
   ``vmigdb serve --trace``; off and on interleaved, best of 5).

Best of 3 for our stub and QEMU; udbserver runs once with time budgets, because its stepping
slows every later run down (gdb-remote-protocol.md §3.2). A peer that fails shows
"failed: <why>" in its cell. Issue 3's targets are checked in the last column.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from bench.peers import (
    PeerFailed,
    Target,
    gdb_task,
    start_ours,
    start_qemu,
    start_udbserver,
)
from vmigdb import decode
from vmigdb.sites import ElfImage
from vmigdb.stub.machine.boot import multiboot
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "build" / "guest.elf"
ROM = ROOT / "build" / "vmi_rom.bin"

#: What gdb 13 sends per stepi to our stub (vCont;s, m pc,1, qXfer:threads, m pc,1).
STEPI_PACKETS = 4
SPIN = 50_000_000  # loop iterations: with 2 instructions each, ~100 M instructions
STEPS = 2000
STEPS_BEFORE_CONT = 1000
HITS = 1000
REPEAT = 3
TRACER_REPEAT = 5  # the tracer rows are cheap and their ratio is a target: more runs
SLOW_BUDGET = 15.0  # seconds a counted gdb loop may take on a slow peer before stopping early
NO_SLOWDOWN = 1.25  # "no slowdown after stepping": within run-to-run noise of (2)

Start = Callable[[Path, Path, str, Path], Target]
PEERS: dict[str, Start] = {"ours": start_ours, "QEMU": start_qemu, "udbserver": start_udbserver}
#: udbserver runs once: its runs are slow and (after stepping) slower still.
RUNS = {"ours": REPEAT, "QEMU": REPEAT, "udbserver": 1}


@dataclass(frozen=True)
class Guest:
    """The benchmark's view of the guest image: entry and the symbols the rows stop at."""

    entry: int
    spin_loop: int
    spin_done: int
    guest_exit: int
    insns_per_iter: int

    @classmethod
    def load(cls, path: Path) -> Guest:
        image = path.read_bytes()
        elf = ElfImage(image)
        syms = {name: value for value, _size, name in elf.symbols()}
        loop = syms["bench_spin_loop"]
        return cls(multiboot.parse(image).entry, loop, syms["bench_spin_done"],
                   syms["guest_exit"], _loop_length(elf, loop))


def _loop_length(elf: ElfImage, loop: int) -> int:
    """Instructions from the loop label to the jump back to it, as capstone decodes the file."""
    for n, insn in enumerate(decode.disassemble(elf.read(loop, 64), loop), start=1):
        if insn.mnemonic.startswith("j") and insn.op_str == hex(loop):
            return n
    raise RuntimeError(f"no jump back to bench_spin_loop ({loop:#x}) in the guest")


@dataclass
class Cell:
    """One table cell: the shown text and, for ratios, a speed (higher is better)."""

    text: str
    speed: float | None = None
    data: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return self.speed is not None


def _failed(exc: Exception) -> Cell:
    return Cell(f"failed: {exc}")


def _runs(g: Guest, peer: str, task: str, cmdline: str, timeout: float,
          repeat: int | None = None, trace: bool = False,
          **params: object) -> list[dict[str, object]]:
    """Fresh target + one gdb run, ``repeat`` times (default: RUNS[peer]); stops at the first
    failure. PeerFailed if no run succeeded."""
    results: list[dict[str, object]] = []
    for _ in range(repeat or RUNS[peer]):
        with tempfile.TemporaryDirectory(prefix="vmigdb-bench-") as d:
            tmp = Path(d)
            try:
                if trace:
                    target = start_ours(GUEST, ROM, cmdline, tmp, trace=True)
                else:
                    target = PEERS[peer](GUEST, ROM, cmdline, tmp)
            except PeerFailed:
                if results:
                    break
                raise
            try:
                results.append(gdb_task(target, task, GUEST, g.entry, tmp,
                                        timeout=timeout, **params))
            except PeerFailed:
                if results:
                    break
                raise
            finally:
                target.stop()
    return results


def _best(results: list[dict[str, object]], key: str = "seconds") -> dict[str, object]:
    return min(results, key=lambda r: float(r[key]))


# --- the rows ------------------------------------------------------------------------------------
def row_stepi(g: Guest, peer: str) -> Cell:
    budget = SLOW_BUDGET if peer == "udbserver" else 120.0
    try:
        runs = _runs(g, peer, "stepi", "", timeout=budget + 60, steps=STEPS, budget=budget)
    except PeerFailed as exc:
        return _failed(exc)
    best = max(runs, key=lambda r: int(r["steps"]) / float(r["seconds"]))
    rate = int(best["steps"]) / float(best["seconds"])
    note = "" if int(best["steps"]) == STEPS else f" ({best['steps']} in {SLOW_BUDGET:.0f}s)"
    return Cell(f"{rate:.0f}/s{note}", rate, best)


Runs = list[dict[str, object]]


def _interleaved(g: Guest, peer: str, spin: str,
                 jobs: dict[str, tuple[str, float, dict[str, object]]],
                 extra: Callable[[], None] | None = None) -> dict[str, Runs | PeerFailed]:
    """Rounds of one run per job (task, timeout, gdb parameters), RUNS[peer] rounds, plus
    ``extra()`` each round: rows compared with each other share the machine's load of the
    moment. A job that fails stops; its runs so far count, else its error is returned."""
    runs: dict[str, Runs] = {name: [] for name in jobs}
    errors: dict[str, PeerFailed] = {}
    for _ in range(RUNS[peer]):
        for name, (task, timeout, params) in jobs.items():
            if name in errors:
                continue
            try:
                runs[name] += _runs(g, peer, task, spin, timeout, repeat=1, **params)
            except PeerFailed as exc:
                errors[name] = exc
        if extra is not None:
            extra()
    return {name: runs[name] or errors[name] for name in jobs}


def row_continue(g: Guest, runs: Runs | PeerFailed) -> tuple[Cell, Cell]:
    """(continue over the loop, 1 MiB read) from the same runs."""
    if isinstance(runs, PeerFailed):
        return _failed(runs), _failed(runs)
    best = _best(runs)
    secs = float(best["seconds"])
    rate = g.insns_per_iter * SPIN / secs / 1e6
    mem = _best(runs, "mem_seconds")
    mem_rate = int(mem["mem_bytes"]) / float(mem["mem_seconds"]) / 1e6
    return (Cell(f"{secs:.3f}s {rate:.0f}M/s", rate, best),
            Cell(f"{float(mem['mem_seconds']):.3f}s {mem_rate:.1f}MB/s", mem_rate, mem))


def raw_run(g: Guest, spin: str) -> float:
    """Raw Unicorn on our Machine: the same loop from the entry to bench_spin_done, no stub;
    seconds, or RuntimeError if it stops anywhere else."""
    from vmigdb.stub.machine import Machine, StopReason

    m = Machine.from_files(str(GUEST), rom=str(ROM), cmdline=spin)
    m.add_breakpoint(g.spin_done)
    t0 = time.perf_counter()
    stop = m.run()
    dt = time.perf_counter() - t0
    if stop.reason is not StopReason.BREAKPOINT or stop.pc != g.spin_done:
        raise RuntimeError(f"stopped with {stop.reason.value} at {stop.pc:#x}")
    return dt


_ECHO = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while (d := s.recv(4096)):
    s.sendall(d)
"""


def loopback_round_trip(n: int = 2000) -> float:
    """Seconds per round trip of a small packet between two processes over loopback TCP (an
    echo in a child Python): what any stub pays per packet before doing any work."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        child = subprocess.Popen([sys.executable, "-c", _ECHO, str(srv.getsockname()[1])])
        try:
            conn, _ = srv.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                msg = b"$m1052ea,1#58"
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        conn.sendall(msg)
                        conn.recv(4096)
                    best = min(best, (time.perf_counter() - t0) / n)
        finally:
            child.kill()
            child.wait()
    return best


def row_raw(g: Guest, times: list[float], error: str | None) -> Cell:
    if not times:
        return Cell(f"failed: {error}")
    best = min(times)
    rate = g.insns_per_iter * SPIN / best / 1e6
    return Cell(f"{best:.3f}s {rate:.0f}M/s", rate)


def row_hits(g: Guest, peer: str, spin: str) -> Cell:
    budget = SLOW_BUDGET if peer == "udbserver" else 60.0
    try:
        runs = _runs(g, peer, "hits", spin, timeout=budget + 60, hits=HITS, budget=budget)
    except PeerFailed as exc:
        return _failed(exc)
    best = min(runs, key=lambda r: float(r["seconds"]) / int(r["hits"]))
    per_hit = float(best["seconds"]) / int(best["hits"])
    note = "" if int(best["hits"]) == HITS else f" ({best['hits']} in {SLOW_BUDGET:.0f}s)"
    return Cell(f"{per_hit * 1000:.2f}ms{note}", 1 / per_hit, best)


def row_step_then_continue(g: Guest, runs: Runs | PeerFailed, fresh: Cell) -> Cell:
    if isinstance(runs, PeerFailed):
        return _failed(runs)
    best = _best(runs)
    secs = float(best["seconds"])
    rate = g.insns_per_iter * SPIN / secs / 1e6
    vs = f" ({fresh.speed / rate:.2f}x)" if fresh.ok else ""
    return Cell(f"{secs:.3f}s{vs}", rate, best)


def row_exit(g: Guest, peer: str, trace: bool = False) -> Cell:
    timeout = 45.0 if peer == "udbserver" else 90.0
    try:
        runs = _runs(g, peer, "exit", "", timeout=timeout, trace=trace)
    except PeerFailed as exc:
        return _failed(exc)
    best = _best(runs)
    secs = float(best["seconds"])
    return Cell(f"{secs * 1000:.0f}ms", 1 / secs, best)


def row_tracer(g: Guest) -> tuple[Cell, Cell]:
    """Our stub to guest_exit without and with ``--trace``: runs interleaved, best of
    TRACER_REPEAT each, so load that comes and goes hits both sides alike."""
    times: dict[bool, list[float]] = {False: [], True: []}
    errors: dict[bool, PeerFailed] = {}
    for _ in range(TRACER_REPEAT):
        for trace in (False, True):
            if trace in errors:
                continue
            try:
                res = _runs(g, "ours", "exit", "", timeout=90, repeat=1, trace=trace)[0]
            except PeerFailed as exc:
                errors[trace] = exc
                continue
            times[trace].append(float(res["seconds"]))
    cells = []
    for trace in (False, True):
        if not times[trace]:
            cells.append(_failed(errors[trace]))
            continue
        secs = min(times[trace])
        cells.append(Cell(f"{secs * 1000:.0f}ms", 1 / secs))
    return cells[0], cells[1]


# --- the table -----------------------------------------------------------------------------------
def _ratio(ours: Cell, other: Cell) -> str:
    if not (ours.ok and other.ok):
        return "-"
    return f"{ours.speed / other.speed:.2f}x"


def _target(met: bool | None, text: str) -> Text:
    if met is None:
        return Text(f"{text}: not measured", style="yellow")
    return Text(f"{text}: {'met' if met else 'NOT MET'}", style="green" if met else "bold red")


def measure(g: Guest) -> tuple[Table, list[str]]:
    spin = f"spin={SPIN}"
    rows: list[tuple[str, dict[str, Cell], Text | str]] = []
    notes: list[str] = []
    peers = list(PEERS)

    stepi = {p: row_stepi(g, p) for p in peers}
    o, q = stepi["ours"], stepi["QEMU"]
    rows.append((f"1 stepi x{STEPS}", stepi, _target(
        o.speed / q.speed >= 2 if o.ok and q.ok else None, ">= 2x QEMU")))

    # (2), (5) and, for ours, raw Unicorn in interleaved rounds: their ratios are targets.
    cont, mem, after = {}, {}, {}
    raw_times: list[float] = []
    raw_error: list[str] = []

    def raw_round() -> None:
        try:
            raw_times.append(raw_run(g, spin))
        except RuntimeError as exc:
            raw_error.append(str(exc))

    for p in peers:
        slow_peer = p == "udbserver"
        jobs = {"cont": ("cont", 90.0, {}),
                "stepcont": ("stepcont", 40.0 if slow_peer else 90.0,
                             {"steps": STEPS_BEFORE_CONT, "budget": SLOW_BUDGET})}
        got = _interleaved(g, p, spin, jobs, raw_round if p == "ours" else None)
        cont[p], mem[p] = row_continue(g, got["cont"])
        after[p] = row_step_then_continue(g, got["stepcont"], cont[p])
    raw = row_raw(g, raw_times, raw_error[0] if raw_error else None)
    o = cont["ours"]
    share = o.speed / raw.speed if o.ok and raw.ok else None
    insns = g.insns_per_iter * SPIN
    rows.append((f"2 continue {insns / 1e6:.0f}M insns", cont, _target(
        share >= 0.5 if share is not None else None,
        f">= 50% raw ({share:.0%})" if share is not None else ">= 50% raw")))
    rows.append(("  raw Unicorn, no stub", {"ours": raw}, ""))

    hits = {p: row_hits(g, p, spin) for p in peers}
    rows.append((f"3 bp hit round trip x{HITS}", hits, ""))
    rows.append(("4 read_memory 1 MiB", mem, ""))

    o = after["ours"]
    slow = cont["ours"].speed / o.speed if o.ok and cont["ours"].ok else None
    rows.append((f"5 (2) after {STEPS_BEFORE_CONT} stepi", after, _target(
        slow <= NO_SLOWDOWN if slow is not None else None, f"<= {NO_SLOWDOWN}x (2)")))

    off = {p: row_exit(g, p) for p in peers if p != "ours"}
    off["ours"], on = row_tracer(g)
    factor = off["ours"].speed / on.speed if on.ok and off["ours"].ok else None
    rows.append(("6 demo to guest_exit", off, ""))
    rows.append(("  with --trace", {"ours": on}, _target(
        factor <= 2 if factor is not None else None,
        f"<= 2x off ({factor:.2f}x)" if factor is not None else "<= 2x off")))

    table = Table(title="gdb stubs: same guest, same gdb script (wall clock)")
    table.add_column("measurement", no_wrap=True)
    for p in peers:
        table.add_column(p, justify="right")
    table.add_column("ours/QEMU", justify="right")
    table.add_column("ours/udb", justify="right")
    table.add_column("issue 3 target")
    for name, cells, target in rows:
        ours = cells.get("ours", Cell("-"))
        table.add_row(name, *(cells.get(p, Cell("n/a")).text for p in peers),
                      _ratio(ours, cells.get("QEMU", Cell("-"))),
                      _ratio(ours, cells.get("udbserver", Cell("-"))), target)

    ends = {p: c.data for p, c in stepi.items() if c.data}
    split = {p: (1e6 * float(d["seconds"]) / int(d["steps"]),
                 1e6 * float(d["gdb_cpu"]) / int(d["steps"])) for p, d in ends.items()}
    if split:
        notes.append("per stepi, wall = gdb's own CPU + the rest (stub and transport): " + ", ".join(
            f"{p} {wall:.0f} = {cpu:.0f} + {wall - cpu:.0f} us" for p, (wall, cpu) in split.items()))
    if "ours" in split and "QEMU" in split:
        budget = split["QEMU"][0] / 2 - split["ours"][1]
        bare = loopback_round_trip() * 1e6
        notes.append(f"2x QEMU's stepi rate leaves our stub and its {STEPI_PACKETS} round trips "
                     f"per stepi {budget:.0f} us ({budget / STEPI_PACKETS:.0f} us each) once gdb "
                     f"has had its CPU; a bare loopback round trip between two processes here "
                     f"takes {bare:.0f} us")
    if ends:
        notes.append("end of stepi (pc, ecx): " + ", ".join(
            f"{p} {int(d['pc']):#x} {int(d['ecx']):#x}" for p, d in ends.items()))
    counts = {p: c.data for p, c in hits.items() if c.data}
    if counts:
        notes.append("loop counter eax at the last hit (same hit count, same value expected): "
                     + ", ".join(f"{p} {int(d['eax'])} after {d['hits']} hits"
                                 for p, d in counts.items()))
    notes.append("ours/QEMU, ours/udb: our speed over theirs (>1: ours faster); (5) in "
                 "brackets: its time over (2)'s")
    notes.append(f"spin loop: {g.insns_per_iter} instructions per iteration x {SPIN} "
                 f"(guest cmdline spin={SPIN}); best of {REPEAT} for ours and QEMU, one run "
                 f"for udbserver with {SLOW_BUDGET:.0f} s budgets")
    return table, notes


def main() -> int:
    console = make_console()
    try:
        g = Guest.load(GUEST)
    except (OSError, KeyError, RuntimeError) as exc:
        console.print(f"stub benchmark: cannot use {GUEST}: {exc} (run `make all`)")
        return 2
    table, notes = measure(g)
    console.print(table)
    for line in notes:
        console.print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
