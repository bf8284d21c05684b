"""Tracing the real Linux guest (shared/linux) on vmigdb's stub, with real gdb: issue 10, items
4-6 (the QEMU side is tests/test_linux_qemu_trace.py).

One boot serves the file (``boot``): gdb connects at the kernel's entry, ``vmi trace start``
there, and the guest runs to the end of its workload; the guest's exit is reported as a stop
first, so the trace stays inspectable. On the way, the workload's first fork round (from the
first ``sys_fork`` to the second: the child maps, writes, mprotects and unmaps 64 pages and
exits, the parent waits) is the *window*: there gdb counts hits of breakpoints on Linux's
``vmi_*`` wrappers and on two ROM entries, a count independent of the tracer. Then:

- the whole boot's trace is complete (gdb holds as many ROM call events as the stub's own call
  counter counted, nothing lost) and every call has its task (pid and comm; Linux's
  ``current_task`` points at init_task from the first instruction, so no call lacks one) and its
  caller (a function of vmlinux, as ``nm`` reads it);
- ``vmi profile`` over the window counts what the breakpoints counted;
- ``vmi trace --task`` and ``--caller`` keep exactly the calls the unfiltered data attributes to
  that task (at the time: the kernel reuses task structs) or kernel function;
- ``vmi batches`` shows the guest's lazy-MMU sections with their task and opener path;
- ``vmi trace status`` tells the stub's numbers after gdb disconnects and a gdb reconnects;
- ``monitor reset`` starts a fresh trace that gdb follows.

The last two change the shared session (a cleared trace, a reset machine): they come last in
the file, and pytest runs a file's tests in order.
"""

from __future__ import annotations

import bisect
import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import Built, Linux
from targets import Target, start_stub

from vmigdb import abi, rawtrace
from vmigdb import trace as tr
from vmigdb.context import (
    CONTEXT,
    GLUE,
    RawCalls,
    TaskNames,
    is_first_call,
    opener_path,
)
from vmigdb.mi import Gdb

REPO = Path(__file__).resolve().parent.parent
APPEND = "console=ttyS0"
ENTRY = 0x100000  # the bzImage's 32-bit entry (startup_32): where the stub's machine starts
#: Linux's vmi_* wrappers (arch/x86/kernel/vmi_32.c) that make exactly one ROM call each, and
#: the ROM entries (symbols vmigdb loads at PAGE_OFFSET + 0xC0000) of two calls Linux makes
#: straight from its own code. Each is hit at most a few hundred times in the window.
WRAPPERS = {"vmi_set_pte_at": "SetPxE", "vmi_set_pmd": "SetPxE", "vmi_update_pte": "UpdatePxE",
            "vmi_update_pte_defer": "UpdatePxE", "vmi_enter_lazy_mmu": "SetLazyMode",
            "vmi_leave_lazy_mmu": "SetLazyMode", "vmi_flush_tlb_user": "FlushTLB",
            "vmi_allocate_pte": "AllocatePage", "vmi_release_pte": "ReleasePage"}
ROM_ENTRIES = {"vmi_InvalPage": "InvalPage", "vmi_GetCR2": "GetCR2"}
#: A helper that only calls the glue (``call *pv_mmu_ops.lazy_mode.enter; ret``): not who
#: opened a lazy-MMU section, its caller is.
TRAMPOLINES = {"arch_enter_lazy_mmu_mode", "arch_leave_lazy_mmu_mode"}

#: gdb-side accessors: the data the commands show, read from the same objects they read.
PROBE = r'''
import json
from collections import Counter

import numpy as np

from vmigdb import context
from vmigdb import events as vt_ev
from vmigdb.commands import trace as vt_trace
from vmigdb.commands import tracesource as vt_source


def vt_src():
    src = vt_source.current(create=False)
    src.events()  # fetched up to now
    return src


def vt_label(src, task, seq):
    named = src.tasks.get(task, seq) if task else None
    return list(named) if named else None


def vt_facts():
    src = vt_src()
    events = src.events()
    rows = src.context.rows
    calls = [c["seq"][c["kind"] == vt_ev.Kind.CALL] for c in events.chunks]
    calls = np.concatenate(calls) if calls else np.zeros(0, np.uint64)
    zero = rows["seq"][rows["task"] == 0]
    some = rows["seq"][rows["task"] != 0]
    pairs, counts = np.unique(np.stack((rows["ret"], rows["frame"]), axis=1), axis=0,
                              return_counts=True)
    unknown = Counter()  # calls through the glue whose own caller the tracer did not see
    for (ret, frame), n in zip(pairs.tolist(), counts.tolist()):
        caller, via = context.kernel_caller(ret, frame, vt_trace.name)
        if via and caller == "?":
            unknown[via] += n
    tasks = sorted(set(rows["task"].tolist()))
    return {
        "status": src.status(), "events": len(events), "call_events": len(calls),
        "rows": len(rows), "rows_are_the_calls": bool(np.array_equal(calls, rows["seq"])),
        "zero_task": len(zero), "last_zero_task": int(zero.max()) if len(zero) else None,
        "first_task": int(some.min()) if len(some) else None,
        "names": {str(t): src.tasks._by_task.get(t, []) for t in tasks},
        "rets": {str(r): vt_trace.name(r) for r in np.unique(rows["ret"]).tolist()},
        "unknown_glue_callers": dict(unknown),
        "batch_flushes": sum(int(np.count_nonzero(c["kind"] == vt_ev.Kind.FLUSH))
                             for c in events.chunks),
    }


def vt_rows(first, last):
    """The calls with first <= seq <= last: seq, call, task, ret, frame, pid, comm."""
    src = vt_src()
    out = []
    for r in src.context.between(first, last).tolist():
        seq, call, task, ret, frame = (int(v) for v in r[:5])
        out.append([seq, vt_ev.CALL_NAMES.get(call, str(call)), task, ret, frame,
                    vt_label(src, task, seq)])
    return out


def vt_sections():
    src = vt_src()
    secs = context.lazy_sections(src.events(), src.context, vt_trace.name,
                                 first_call=vt_trace.first_call)
    return [{"seq": s.seq, "end": s.end_seq, "task": vt_label(src, s.task, s.seq),
             "path": list(s.path), "deferred": s.deferred, "immediate": s.immediate,
             "trigger": s.trigger} for s in secs]


def vt_history(pid):
    """The names of the task struct(s) that pid had, and the calls labelled with that pid."""
    src = vt_src()
    rows = src.context.rows
    ptrs = [t for t, h in src.tasks._by_task.items() if any(p == pid for _s, p, _c in h)]
    by_call = Counter()
    for ptr in ptrs:
        mine = rows[rows["task"] == ptr]
        for seq, call in zip(mine["seq"].tolist(), mine["call"].tolist()):
            if src.tasks.get(ptr, seq)[0] == pid:
                by_call[vt_ev.CALL_NAMES.get(call, str(call))] += 1
    return {"names": [n for p in ptrs for n in src.tasks._by_task[p]],
            "calls": sum(by_call.values()), "by_call": dict(by_call)}


def vt_held():
    """What this gdb holds: events, call events, the first seq, the context rows."""
    src = vt_source.current(create=False)
    events = src.events()
    calls = sum(int(np.count_nonzero(c["kind"] == vt_ev.Kind.CALL)) for c in events.chunks)
    first = int(events.chunks[0]["seq"][0]) if len(events) else None
    return {"events": len(events), "calls": calls, "first": first, "rows": len(src.context),
            "kind": type(src).__name__}
'''


@dataclass
class Boot:
    target: Target
    gdb: Gdb
    first_stop: int  # where gdb found the machine on connecting
    started: str  # what `vmi trace start` said
    at_fork: dict[str, object]  # the stub's `monitor vmi trace status` at the first sys_fork
    window: tuple[int, int]  # seqs [first, end) of the first fork round
    window_calls: int  # ROM calls the stub's counter counted in the window
    hits: dict[str, int]  # breakpoint hits in the window, by wrapper or ROM entry
    exit_said: str  # the stub's console text at the exit stop
    at_exit: dict[str, object]  # the stub's `monitor vmi trace status` there


def _stub_status(g: Gdb) -> dict[str, object]:
    """The stub's own trace status (its JSON line; vmigdb may print a note before it)."""
    text = g.console("monitor vmi trace status").text
    return json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])


def _py(g: Gdb, expr: str, timeout: float = 300) -> object:
    """The value of a Python expression in gdb, as JSON."""
    text = g.console(f"python print('@@' + json.dumps({expr}))", timeout=timeout).text
    return json.loads(text.split("@@", 1)[1])


@pytest.fixture(scope="module")
def boot(built: Built, linux: Linux, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Boot]:
    work = tmp_path_factory.mktemp("linux-trace")
    t = start_stub(linux.bzimage, built.rom, APPEND, work, initrd=linux.initrd)
    g = Gdb(["-x", str(REPO / "vmigdb.py")], cwd=str(REPO), timeout=120)
    try:
        g.console("set width 250")
        stopped = g.connect(str(linux.vmlinux), t.port, timeout=120)
        first_stop = int(stopped["payload"]["frame"]["addr"], 16)
        probe = work / "probe.py"
        probe.write_text(PROBE)
        g.console(f"source {probe}")
        started = g.console("vmi trace start").text

        # The window: the workload's first fork round, from one sys_fork to the next (only
        # user space forks through sys_fork; kernel threads call do_fork directly).
        g.ok("-break-insert sys_fork")
        assert g.resume(timeout=600)["payload"]["frame"]["func"] == "sys_fork"
        before = _stub_status(g)
        counted = {}
        for where in (*WRAPPERS, *ROM_ENTRIES):
            bkpt = g.ok(f"-break-insert {where}").payload["bkpt"]
            g.ok(f"-break-after {bkpt['number']} 1000000")  # count, do not stop
            counted[bkpt["number"]] = where
        assert g.resume(timeout=600)["payload"]["frame"]["func"] == "sys_fork"
        after = _stub_status(g)
        table = g.ok("-break-list").payload["BreakpointTable"]["body"]
        hits = {counted[b["number"]]: int(b["times"]) for b in table if b["number"] in counted}
        assert set(hits) == set(counted.values())
        g.ok("-break-delete")

        g.resume(timeout=600)  # to the guest's exit, reported as a stop
        said = "".join(r.get("payload") or "" for r in g.history if r.get("type") == "target")
        yield Boot(t, g, first_stop, started, before, (before["next_seq"], after["next_seq"]),
                   after["calls"] - before["calls"], hits, said, _stub_status(g))
    finally:
        g.close()
        t.stop()


@pytest.fixture(scope="module")
def functions(linux: Linux) -> tuple[list[int], list[tuple[int, int, str]]]:
    """vmlinux's functions as ``nm`` reads them (not gdb): starts, and (start, end, name)."""
    out = subprocess.run(["nm", "-S", "--defined-only", str(linux.vmlinux)], check=True,
                         capture_output=True, text=True).stdout
    funcs = []
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) == 4 and parts[2] in "Tt" and int(parts[1], 16):
            start = int(parts[0], 16)
            funcs.append((start, start + int(parts[1], 16), parts[3]))
    funcs.sort()
    return [f[0] for f in funcs], funcs


def _function_at(functions: tuple[list[int], list[tuple[int, int, str]]], addr: int) -> str:
    starts, funcs = functions
    i = bisect.bisect_right(starts, addr) - 1
    return funcs[i][2] if i >= 0 and funcs[i][0] <= addr < funcs[i][1] else ""


def test_the_whole_boot_is_traced_with_every_calls_task_and_caller(
        boot: Boot, functions: tuple[list[int], list[tuple[int, int, str]]]) -> None:
    """The trace started at the kernel's first instruction and ran to the workload's end: gdb
    holds every ROM call the stub counted, each with a task and a caller symbolized from
    vmlinux. A task is pid and comm as the kernel had them when the call was made (Linux's
    per-cpu current_task is init_task, "0 swapper", from the start: no call lacks a task, and
    the few a tracer might see before it exists must come before every call that has one)."""
    g = boot.gdb
    assert boot.first_stop == ENTRY
    assert "recording (stub path)" in boot.started and "carries its task" in boot.started
    assert "the guest exited with code 0x0" in boot.exit_said and "stopped at its exit" in \
        boot.exit_said
    serial = boot.target.serial.read_text(errors="replace")
    assert "VMIGDB-INIT: done forks=21 pages=1637 ok" in serial

    stub = boot.at_exit
    facts = _py(g, "vt_facts()")
    st = facts["status"]
    # Complete: every call the stub's hooks saw is an event gdb holds, with its context.
    assert stub["calls"] == facts["call_events"] == facts["rows"] == st["calls"] > 500_000
    assert facts["rows_are_the_calls"]
    assert stub["events"] == st["fetched"] == facts["events"] == stub["next_seq"]
    assert (stub["lost"], stub["dropped"], stub["resets"], stub["limit_hit"]) == (0, 0, 0, False)
    assert (st["lost_before_read"], st["kept_dropped"], st["calls_without_context"]) == (0, 0, 0)
    # The same numbers through the command.
    shown = g.console("vmi trace status").text
    assert re.search(rf"^ calls\s+{stub['calls']}\s*$", shown, re.MULTILINE), shown
    assert re.search(rf"^ fetched\s+{stub['events']}\s*$", shown, re.MULTILINE), shown
    assert re.search(r"^ calls_without_context\s+0\s*$", shown, re.MULTILINE), shown

    # Every call has a task, and every task a pid and a name.
    assert facts["zero_task"] <= 16
    if facts["zero_task"]:
        assert facts["last_zero_task"] < facts["first_task"]
    names = facts["names"]
    assert all(names.values()), [t for t, n in names.items() if not n]
    first = [(pid, comm) for _s, pid, comm in min(names.values(), key=lambda n: n[0][0])[:1]]
    assert first == [(0, "swapper")]
    seen = {(pid, comm) for history in names.values() for _s, pid, comm in history}
    assert (1, "init") in seen and (2, "kthreadd") in seen
    # The children the kernel logged as segfaulting (rounds r % 4 in (1, 2); the kernel
    # rate-limits these lines) are init tasks of the trace that read CR2 for a fault.
    segv = sorted({int(p) for p in re.findall(r"init\[(\d+)\]: segfault", serial)})
    assert len(segv) >= 5, segv
    for pid in segv:
        history = _py(g, f"vt_history({pid})")
        assert [n[1:] for n in history["names"]].count([pid, "init"]) == 1, history
        assert history["by_call"].get("GetCR2", 0) > 0, history

    # Every caller is a function of vmlinux (nm's ranges), named so by gdb too.
    rets = {int(r): n for r, n in facts["rets"].items()}
    unnamed = [f"{r:#x}" for r in rets if not _function_at(functions, r)]
    assert not unnamed, unnamed
    wrong = {f"{r:#x}": n for r, n in rets.items() if n.split("+")[0] != _function_at(functions, r)}
    assert not wrong, wrong
    # A call made through Linux's glue is attributed to the glue's caller, [EBP + 4] among the
    # six stack words the stub records. Three wrappers keep their frame further up (they save
    # three registers and push an argument or keep locals below it: EBP + 4 is past the sixth
    # word), so their calls name the glue and "?" past it: vmi_kmap_atomic_pte's
    # SetLinearMapping (3875 calls), vmi_cpuid's CPUID (30), vmi_set_ldt's SetLDT (1).
    unknown = facts["unknown_glue_callers"]
    assert set(unknown) <= {"vmi_kmap_atomic_pte", "vmi_cpuid", "vmi_set_ldt"}, unknown
    assert sum(unknown.values()) < facts["rows"] // 100
    assert st["tasks"] == "current_task (per cpu)" and st["tasks_named"] == len(names)


def test_profile_counts_what_breakpoints_count(boot: Boot) -> None:
    """Over the first fork round, ``vmi profile`` counts per vmi_* wrapper (its "via" column)
    and per VMI call exactly the hits gdb counted on breakpoints at the wrappers and at the
    ROM's own entries, and in all the calls the stub's counter counted."""
    g = boot.gdb
    lo, end = boot.window
    assert sum(boot.hits.values()) > 300 and all(boot.hits.values()), boot.hits
    text = g.console(f"vmi profile --since {lo} --until {end - 1} --all").text
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in text.splitlines()
            if re.match(r"^│\s+\d+ │", ln)]
    assert rows and all(len(r) == 6 for r in rows), text
    via: Counter[str] = Counter()
    per_call: Counter[str] = Counter()
    for count, _of_call, _of_all, call, _caller, glue in rows:
        per_call[call] += int(count)
        if glue:
            via[glue] += int(count)
            assert WRAPPERS.get(glue, call) == call, (glue, call)
    for wrapper in WRAPPERS:
        assert via[wrapper] == boot.hits[wrapper], (wrapper, via[wrapper], boot.hits)
    for entry, call in ROM_ENTRIES.items():
        assert per_call[call] == boot.hits[entry], (call, per_call[call], boot.hits)
    assert sum(per_call.values()) == boot.window_calls
    assert f"{boot.window_calls} ROM calls counted" in text
    # The page faults' GetCR2 calls come from do_page_fault, and only from there.
    assert [r[:2] for r in rows if r[3] == "GetCR2"] == [[str(boot.hits["vmi_GetCR2"]),
                                                          "100.0%"]]
    assert [r[4] for r in rows if r[3] == "GetCR2"] == ["do_page_fault"]


def _owned(events: list[tr.Event], calls: set[int]) -> set[int]:
    """Seqs of the calls and of what belongs to them (their returns, the events up to the next
    call), as ``vmi trace save`` keeps them for a selection."""
    out: set[int] = set()
    owner = None
    for e in events:
        if isinstance(e, tr.RomCall):
            owner = e.seq
        if isinstance(e, tr.RomReturn):
            if e.call_seq in calls:
                out.add(e.seq)
        elif owner in calls:
            out.add(e.seq)
    return out


def _saved(g: Gdb, path: Path, args: str) -> list[tr.Event]:
    """``vmi trace save PATH ARGS``, read back."""
    said = g.console(f"vmi trace save {path} {args}").text
    assert f"events written to {path}" in said, said
    return tr.read_trace(path).events


def test_task_and_caller_filters_keep_what_the_unfiltered_data_says(
        boot: Boot, tmp_path: Path,
        functions: tuple[list[int], list[tuple[int, int, str]]]) -> None:
    """``--task PID|COMM`` keeps the calls whose task had that pid or comm when it made them
    (the kernel reuses a task struct for later tasks: a khelper's struct serves the workload's
    children later on); ``--caller FUNC`` the calls FUNC made, itself or through Linux's glue
    (the caller computed here from nm's function ranges, not gdb's)."""
    g = boot.gdb
    lo, end = boot.window
    rows = _py(g, f"vt_rows({lo}, {end - 1})")
    assert len(rows) == boot.window_calls
    assert all(r[5] for r in rows)
    by_pid = Counter(r[5][0] for r in rows)
    child = next(p for p, _n in by_pid.most_common() if p != 1)
    assert {tuple(r[5]) for r in rows if r[5][0] in (1, child)} == {(1, "init"),
                                                                    (child, "init")}
    window = f"--since {lo} --until {end - 1}"
    everything = _saved(g, tmp_path / "all.jsonl", window)
    assert sum(isinstance(e, tr.RomCall) for e in everything) == len(rows)

    def check(args: str, want: set[int]) -> list[tr.Event]:
        got = _saved(g, tmp_path / "sel.jsonl", f"{window} {args}")
        calls = {e.seq for e in got if isinstance(e, tr.RomCall)}
        assert calls == want, (args, len(calls), len(want))
        assert {e.seq for e in got} == _owned(everything, want)
        return got

    check(f"--task {child}", {r[0] for r in rows if r[5][0] == child})
    check("--task init", {r[0] for r in rows if r[5][1] == "init"})
    # Over the whole trace, --task follows the names at the time: the child's task struct
    # served khelpers earlier in the boot, whose calls are not the child's.
    history = _py(g, f"vt_history({child})")
    assert len(history["names"]) > 1 and history["names"][0][2] != "init", history
    profile = g.console(f"vmi profile --task {child} --all").text
    m = re.search(r"^(\d+) ROM calls counted of (\d+) traced", profile, re.MULTILINE)
    assert m and int(m[1]) == history["calls"] == by_pid[child], (profile[-300:], history)

    def caller_of(ret: int, frame: int) -> tuple[str, str]:
        f = _function_at(functions, ret)
        return (_function_at(functions, frame) or "?", f) if f in GLUE else (f, "")

    for func in ("do_page_fault", "pte_update", "vmi_set_pte_at"):
        want = {r[0] for r in rows if func in caller_of(r[3], r[4])}
        assert want, func
        check(f"--caller {func}", want)
    got = check(f"--task {child} --caller set_pte_at", {
        r[0] for r in rows if r[5][0] == child and "set_pte_at" in caller_of(r[3], r[4])})
    assert got

    # The table shows the same selection, each row with its task.
    text = g.console(f"vmi trace 30 --since {lo} --task {child}").text
    shown = [ln.split("│") for ln in text.splitlines() if re.match(r"^│\s+\d+ │", ln)]
    assert len(shown) == 30, text
    calls = [cells for cells in shown if not cells[2].startswith("   ")]  # not sub-events
    assert calls and all(cells[-2].strip() == f"{child} init" for cells in calls), text
    assert {int(cells[1]) for cells in calls} <= {r[0] for r in rows if r[5][0] == child}
    # An unknown task is an error, not an empty table.
    res = g.cmd('-interpreter-exec console "vmi trace --task no-such-task"')
    assert res.message == "error" and "no task 'no-such-task'" in res.error


def test_batches_show_each_lazy_mmu_section_with_its_task_and_opener(boot: Boot,
                                                                     tmp_path: Path) -> None:
    """Linux calls the ROM in place, where its state is read-only: the identity ROM then
    applies every update at once and never batches (no flush in the whole trace). ``vmi
    batches`` shows the guest's own lazy-MMU sections instead (SetLazyMode(MMU) to leaving it):
    each with its task, the kernel function that opened it (past Linux's glue and the
    arch_enter_lazy_mmu_mode helper, which only calls the glue: copy_page_range in fork,
    unmap_vmas in munmap and exit, mprotect_fixup), its updates split into deferred (2.6.32 lets
    only UpdatePxE defer, and not in these sections) and immediate, and what flushed it
    (leaving lazy mode). The counts equal those from the window's calls, counted here."""
    g = boot.gdb
    lo, end = boot.window
    facts = _py(g, "vt_facts()")
    assert facts["batch_flushes"] == 0 and boot.at_exit["batched"] is False
    sections = _py(g, "vt_sections()")
    assert len(sections) > 300
    assert all(s["task"] and s["path"] and s["end"] is not None for s in sections)
    assert all(s["trigger"] == "left lazy mode (OFF)" for s in sections)
    openers = Counter(s["path"][0] for s in sections)
    assert not set(openers) & (TRAMPOLINES | GLUE), openers
    assert {"copy_page_range", "unmap_vmas", "mprotect_fixup"} <= set(openers), openers

    # The window's sections, from its calls: SetLazyMode(MMU) opens, SetLazyMode(OFF) closes,
    # the PTE calls between are the section's updates (deferred when they say VMI_PAGE_DEFER).
    events = _saved(g, tmp_path / "window.jsonl", f"--since {lo} --until {end - 1}")
    expect = []
    opened = None
    for e in events:
        if not isinstance(e, tr.RomCall):
            continue
        if e.call == "SetLazyMode":
            if e.args["mode"] == abi.VMI_LAZY_MMU_UPDATES and opened is None:
                opened = [e.seq, 0, 0]
            elif e.args["mode"] == abi.VMI_LAZY_MODE_OFF and opened is not None:
                expect.append(tuple(opened))
                opened = None
        elif opened is not None and e.call in ("SetPxE", "SetPxELong", "UpdatePxE",
                                               "UpdatePxELong"):
            opened[1 if e.args.get("flags", 0) & abi.VMI_PAGE_DEFER else 2] += 1
    mine = [s for s in sections if lo <= s["seq"] < end]
    assert [(s["seq"], s["deferred"], s["immediate"]) for s in mine] == expect
    assert len(expect) == 16 and sum(n for _s, _d, n in expect) > 100

    # The command shows them so: task, opener path, counts, trigger.
    text = g.console("vmi batches").text
    assert "the ROM did not batch" in text and f"lazy-MMU sections ({len(sections)})" in text
    table = {int(c[2]): [x.strip() for x in c[1:-1]] for c in
             (ln.split("│") for ln in text.splitlines() if re.match(r"^│\s+\d+ │", ln))}
    for s in mine:
        row = table[s["seq"]]
        assert row[2:] == [str(s["deferred"]), str(s["immediate"]),
                           f"{s['task'][0]} {s['task'][1]}", " <- ".join(s["path"]),
                           "left lazy mode (OFF)"], row
    fork = [s for s in mine if s["path"][0] == "copy_page_range"]
    assert fork and all(s["task"] == [1, "init"] for s in fork)  # the parent forks
    child = {tuple(s["task"]) for s in mine if s["path"][0] == "mprotect_fixup"}
    assert len(child) == 1 and next(iter(child))[0] > 1  # the child mprotects
    # --task keeps the child's sections.
    pid = next(iter(child))[0]
    only = g.console(f"vmi batches --sections --task {pid}").text
    rows = [ln for ln in only.splitlines() if re.match(r"^│\s+\d+ │", ln)]
    assert rows and all(f"│ {pid} init " in ln for ln in rows)
    assert len(rows) == sum(1 for s in sections if s["task"][0] == pid)


def test_status_tells_the_stub_after_a_reconnect(boot: Boot, built: Built,
                                                 linux: Linux) -> None:
    """gdb disconnects; its trace stays readable and says the connection is gone. A fresh gdb
    connecting to the same stub takes the stub's trace up (status, views: the stub's numbers,
    fetched anew, not stale ones), clears it there, and leaves; the first gdb reconnects and
    shows the stub's cleared trace, not the events it had fetched before."""
    g = boot.gdb
    stub = _stub_status(g)
    held = _py(g, "vt_held()")
    assert held["events"] == stub["events"] > 0
    g.console("disconnect")
    closed = g.console("vmi trace status").text
    assert re.search(r"^ connected\s+False", closed, re.MULTILINE), closed
    assert re.search(rf"^ fetched\s+{stub['events']}\s*$", closed, re.MULTILINE), closed

    g2 = Gdb(["-x", str(REPO / "vmigdb.py")], cwd=str(REPO), timeout=120)
    try:
        g2.console("set width 250")
        g2.connect(str(linux.vmlinux), boot.target.port, timeout=120)  # the exit stop again
        g2.console(f"source {boot.target.log.parent / 'probe.py'}")
        text = g2.console("vmi trace status", timeout=300).text
        for key in ("events", "calls", "next_seq"):
            assert re.search(rf"^ {key}\s+{stub[key]}\s*$", text, re.MULTILINE), (key, text)
        assert re.search(rf"^ fetched\s+{stub['events']}\s*$", text, re.MULTILINE), text
        assert re.search(r"^ calls_without_context\s+0\s*$", text, re.MULTILINE), text
        again = _py(g2, "vt_held()")
        assert (again["events"], again["calls"], again["rows"]) == (
            stub["events"], stub["calls"], stub["calls"])
        g2.console("vmi trace clear")
        g2.console("disconnect")
    finally:
        g2.close()

    g.console(f"target remote 127.0.0.1:{boot.target.port}", timeout=120)
    now = _stub_status(g)
    assert now["events"] == 0 and now["calls"] == stub["calls"]
    text = g.console("vmi trace status").text
    assert re.search(r"^ events\s+0\s*$", text, re.MULTILINE), text
    assert re.search(r"^ fetched\s+0\s*$", text, re.MULTILINE), text
    assert "an earlier one" not in text
    assert _py(g, "vt_held()")["events"] == 0


def test_monitor_reset_starts_a_fresh_trace(boot: Boot) -> None:
    """``monitor reset`` on Linux: the stub's trace starts again (seq 0, call counter 0, the
    reset counted), gdb drops what it held and follows the new boot, each call with its
    context; the machine is deterministic, so the boot to the first sys_fork makes the same
    calls as the first time. (This gdb connected after the previous test cleared the trace:
    it decodes the stub's log from where the clear left it.)"""
    g = boot.gdb
    g.console("monitor reset")
    g.console("maint flush register-cache")
    assert g.value("$pc") == ENTRY
    fresh = _stub_status(g)
    assert (fresh["events"], fresh["calls"], fresh["next_seq"], fresh["resets"],
            fresh["enabled"]) == (0, 0, 0, 1, True)
    g.ok("-break-insert sys_fork")
    assert g.resume(timeout=600)["payload"]["frame"]["func"] == "sys_fork"
    g.ok("-break-delete")
    st = _stub_status(g)
    assert (st["events"], st["calls"], st["next_seq"]) == (
        boot.at_fork["events"], boot.at_fork["calls"], boot.window[0])
    held = _py(g, "vt_held()")
    assert (held["events"], held["calls"], held["rows"], held["first"]) == (
        st["events"], st["calls"], st["calls"], 0)
    text = g.console("vmi trace status").text
    assert re.search(rf"^ fetched\s+{st['events']}\s*$", text, re.MULTILINE), text
    assert re.search(r"^ resets\s+1\s*$", text, re.MULTILINE), text


# --- the rules behind it, without a guest ------------------------------------------------------


def test_task_names_follow_a_reused_task_struct() -> None:
    """A --task selection holds a task struct only while it had that pid or comm."""
    names = TaskNames()
    names.add(0xC791F340, 595, "khelper", 100)
    names.add(0xC791F340, 642, "init", 200)
    names.add(0xC781C000, 1, "swapper", 50)
    names.add(0xC781C000, 1, "init", 300)  # an exec renames
    task = np.array([0xC791F340] * 3 + [0xC781C000] * 2, np.uint32)
    seq = np.array([150, 200, 250, 60, 310], np.uint64)
    assert names.mask("init", task, seq).tolist() == [False, True, True, False, True]
    assert names.mask("642", task, seq).tolist() == [False, True, True, False, False]
    assert names.mask("595", task, seq).tolist() == [True, False, False, False, False]
    assert names.mask("1", task, seq).tolist() == [False, False, False, True, True]
    assert names.holds("khelper", 0xC791F340, 199) and not names.holds("khelper", 0xC791F340,
                                                                       200)
    assert names.matching("init") == {0xC791F340, 0xC781C000}


def test_a_helper_that_only_calls_the_glue_is_passed_over() -> None:
    """arch_enter_lazy_mmu_mode is ``call *pv_mmu_ops.lazy_mode.enter; ret``: the word above
    its return address is its own return address, into the function that opened the section."""
    assert is_first_call(bytes.fromhex("ff15806360c1"))  # call *0xc1606380
    assert is_first_call(bytes.fromhex("e812345678"))  # call rel32
    assert not is_first_call(bytes.fromhex("5589e5e8123456"))  # push %ebp; mov; call
    assert not is_first_call(bytes.fromhex("ff25806360c1"))  # jmp *, not a call
    syms = {0xC1018DF3: "vmi_enter_lazy_mmu+19", 0xC108B68F: "arch_enter_lazy_mmu_mode+6",
            0xC108C95D: "copy_page_range+379", 0xC108CDBA: "unmap_vmas+580"}
    row = np.zeros(1, CONTEXT)[0]
    row["ret"], row["frame"], row["above"] = 0xC1018DF3, 0xC108B68F, 0xC108C95D
    assert opener_path(row, (), syms.__getitem__) == ("arch_enter_lazy_mmu_mode",)
    first = {0xC108B68F}.__contains__
    assert opener_path(row, (), syms.__getitem__, first_call=first) == ("copy_page_range",)


def test_task_items_name_the_records_before_them() -> None:
    """RawCalls places each task item at the records item it follows (the drain whose
    records the stub named), so a struct named twice in one piece keeps both names apart."""
    def records(task: int, n: int) -> bytes:
        recs = np.zeros(n, rawtrace.RECORD)
        recs["call"] = int(abi.VmiCall.DisableInterrupts)
        recs["flags"] = rawtrace.STACK_OK
        recs["task"] = task
        return rawtrace.records_item(recs.tobytes())

    stream = (records(7, 3) + rawtrace.task_item(7, 642, b"init")
              + records(9, 2) + rawtrace.task_item(9, 1, b"init")
              + records(7, 4) + rawtrace.task_item(7, 644, b"init"))
    raw = RawCalls()
    rows, reset = raw.feed(stream[:50])  # in pieces: an item cut between two
    more, _ = raw.feed(stream[50:])
    assert not reset and len(rows) + len(more) == 9
    assert raw.named == [(7, 642, "init", 0, 3), (9, 1, "init", 3, 5), (7, 644, "init", 5, 9)]
