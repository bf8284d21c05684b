"""One benchmark task inside gdb: ``gdb -batch -nx -x bench/gdb_bench.py`` with BENCH_* variables.

The same script drives every peer (our stub, QEMU's gdbstub, udbserver), so the gdb side of each
number is identical; timing is ``time.perf_counter`` around the gdb commands only (start-up and
``target remote`` excluded). Results go to BENCH_OUT as one JSON object; an error becomes
``{"error": "<one line>"}`` there, so the caller can show it in a table cell.

Variables: BENCH_ELF (guest with symbols), BENCH_PORT, BENCH_ENTRY (the guest's entry: QEMU
starts in the BIOS, so a hardware breakpoint there comes first), BENCH_OUT, BENCH_TASK and its
parameters BENCH_STEPS, BENCH_HITS, BENCH_BUDGET (seconds a counted loop may take before it
stops early and reports how far it got; continue itself cannot be bounded here), BENCH_SYMBOLS
(0: no ``file``, gdb knows only the target's description; default 1: the guest's symbols).

Tasks:
* ``stepi``: BENCH_STEPS x ``stepi`` from the entry -> steps, seconds, gdb's own CPU seconds;
* ``cont``: continue to ``bench_spin_done`` (the spin loop) -> seconds; then one 1 MiB
  ``read_memory`` at 0x100000 -> seconds;
* ``stepcont``: continue to ``bench_spin_loop``, BENCH_STEPS x ``stepi`` in the loop (so its
  code is translated in step mode), then the continue to ``bench_spin_done`` -> seconds;
* ``hits``: a breakpoint on ``bench_spin_loop``, BENCH_HITS x ``continue`` -> hits, seconds;
* ``exit``: continue to ``guest_exit`` (the whole demo) -> seconds.

This file runs in gdb's own Python (not the venv): standard library only.
"""

from __future__ import annotations

import json
import os
import time

import gdb  # type: ignore[import-not-found]

MEM_ADDR = 0x100000
MEM_SIZE = 1 << 20


def _pc() -> int:
    return int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFF


def _symbol(name: str) -> int:
    return int(gdb.parse_and_eval(f"&{name}")) & 0xFFFFFFFF


def _continue_to(addr: int) -> float:
    """Set a breakpoint at ``addr``, continue, check the stop, delete it; the continue's seconds."""
    gdb.execute(f"break *{addr:#x}", to_string=True)
    t0 = time.perf_counter()
    gdb.execute("continue", to_string=True)
    dt = time.perf_counter() - t0
    gdb.execute("delete", to_string=True)
    if _pc() != addr:
        raise RuntimeError(f"stopped at {_pc():#x}, not at {addr:#x}")
    return dt


def _cpu() -> float:
    """gdb's own CPU time (user + system, all its threads) so far."""
    t = os.times()
    return t.user + t.system


def _repeat(command: str, n: int, budget: float) -> tuple[int, float, float]:
    """``command`` n times, or fewer once ``budget`` seconds passed: (times run, wall seconds,
    gdb's own CPU seconds)."""
    done = 0
    c0 = _cpu()
    t0 = time.perf_counter()
    while done < n:
        gdb.execute(command, to_string=True)
        done += 1
        if done % 50 == 0 and time.perf_counter() - t0 > budget:
            break
    return done, time.perf_counter() - t0, _cpu() - c0


def _to_entry(entry: int) -> None:
    """QEMU starts at the reset vector: run to the guest's entry on a hardware breakpoint."""
    if _pc() == entry:
        return
    gdb.execute(f"hbreak *{entry:#x}", to_string=True)
    gdb.execute("continue", to_string=True)
    gdb.execute("delete", to_string=True)
    if _pc() != entry:
        raise RuntimeError(f"did not reach the entry {entry:#x} (pc {_pc():#x})")


def run(env: dict[str, str]) -> dict[str, object]:
    task = env["BENCH_TASK"]
    budget = float(env.get("BENCH_BUDGET", "60"))
    steps = int(env.get("BENCH_STEPS", "2000"))
    symbols = env.get("BENCH_SYMBOLS", "1") != "0"
    for cmd in ("set pagination off", "set confirm off", "set height 0",
                f"file {env['BENCH_ELF']}" if symbols else "set architecture i386"):
        gdb.execute(cmd, to_string=True)
    gdb.execute(f"target remote 127.0.0.1:{env['BENCH_PORT']}", to_string=True)
    _to_entry(int(env["BENCH_ENTRY"], 0))
    res: dict[str, object] = {"task": task}
    if task == "stepi":
        done, dt, cpu = _repeat("stepi", steps, budget)
        res.update(steps=done, seconds=dt, gdb_cpu=cpu, pc=_pc(),
                   ecx=int(gdb.parse_and_eval("$ecx")))
    elif task == "cont":
        res["seconds"] = _continue_to(_symbol("bench_spin_done"))
        t0 = time.perf_counter()
        data = gdb.selected_inferior().read_memory(MEM_ADDR, MEM_SIZE)
        res["mem_seconds"] = time.perf_counter() - t0
        if len(data) != MEM_SIZE:
            raise RuntimeError(f"read {len(data)} bytes, not {MEM_SIZE}")
        res["mem_bytes"] = MEM_SIZE
    elif task == "stepcont":
        _continue_to(_symbol("bench_spin_loop"))
        done, _dt, _cpu_s = _repeat("stepi", steps, budget)
        if done < steps:
            raise RuntimeError(f"only {done} stepi in {budget:.0f} s")
        res.update(steps=done, seconds=_continue_to(_symbol("bench_spin_done")))
    elif task == "hits":
        hits = int(env.get("BENCH_HITS", "1000"))
        loop = _symbol("bench_spin_loop")
        gdb.execute(f"break *{loop:#x}", to_string=True)
        gdb.execute("continue", to_string=True)  # the first arrival is not timed
        done, dt, _cpu_s = _repeat("continue", hits, budget)
        if _pc() != loop:
            raise RuntimeError(f"stopped at {_pc():#x}, not at bench_spin_loop")
        res.update(hits=done, seconds=dt, eax=int(gdb.parse_and_eval("$eax")))
    elif task == "exit":
        res["seconds"] = _continue_to(_symbol("guest_exit"))
    else:
        raise RuntimeError(f"unknown task {task!r}")
    return res


def main() -> None:
    env = dict(os.environ)
    try:
        res = run(env)
    except (gdb.error, RuntimeError, KeyError, ValueError) as exc:
        res = {"error": " ".join(str(exc).split()) or type(exc).__name__}
    with open(env["BENCH_OUT"], "w") as f:
        json.dump(res, f)
    try:
        gdb.execute("disconnect", to_string=True)
    except gdb.error:
        pass


main()
