"""The trace commands' QEMU side on the real Linux guest (shared/linux), with real gdb and
vmigdb.py: QEMU boots it as the guest's README does (SeaBIOS places our ROM with
``-option-rom``), gdb traces by breakpoints there (the portable path); vmigdb's stub records in
the machine (the fast path).

1. From the first instruction: gdb connects to QEMU at the reset vector, before SeaBIOS has
   placed the ROM. ``vmi trace start`` arms itself at the kernel's vmi_init, and the trace then
   holds the boot's ROM calls from the ROM's initialisation on: the ROM's announcement, then
   what activate_vmi does, in order: apply_paravirt rewrites every ``.parainstructions`` site
   with interrupts saved, disabled and restored around each (three calls a site: its
   text_poke_early, inlined), then vmi_bringup maps low memory (SetLinearMapping). The window
   ends at vmi_bringup's return: 2,668 calls, 3,558 events, about 10 s of breakpoint round
   trips on QEMU (the boot to rest_init alone is ~94,000 events, minutes).
2. Ctrl-C, as a terminal sends it (SIGINT to gdb), stops a traced continue on QEMU as it stops
   an untraced one: a stop with SIGINT. The latency is printed, not asserted (bench/gdb_paths.py
   has it as a row).
3. One fork of the workload, do_fork's entry to its return, traced on QEMU (portable path) and
   on the stub (fast path): QEMU's trace keeps every ROM call with its task and caller, and
   ``vmigdb diff`` finds the two saved traces equivalent, with these exclusions and controls:

   - the timer: QEMU's clock is the host's, and the portable path stops the guest a
     millisecond or more per ROM call, so where the stub's deterministic clock ticks once in
     the fork, QEMU's ticks several times (and owes the ticks of the stop at do_fork). Ticks
     run handlers, make the forking task reschedule in cond_resched (and run other tasks),
     and split copy_pte_range's loop where it polls need_resched: the same work in more
     pieces, which no exclusion of events can undo. So QEMU's window runs with the 8259A's
     IRQ0 masked (``monitor o``; restored after), and both traces are saved with
     ``--no-interrupts``, which leaves out the calls of interrupt handlers (each ending with an
     IRET to kernel mode) and what they caused: on the stub that is its one tick's handler.
   - memory: SeaBIOS leaves Linux other memory than vmigdb's machine (its own e820 map and
     tables), so the same fork gets other page frames, and its page tables other kernel
     addresses: ``vmigdb diff --renumber-pages`` compares page numbers by their order of first
     use in each trace.
   - address-space randomisation: user stack and mmap bases come from the kernel's entropy
     pool, which interrupt timing stirs, and decide which page-table entries the fork copies
     (their offsets within the table, the addresses in UpdatePxE's flags): both guests boot
     with ``norandmaps``.
   - RDTSC's results (the machines' clocks): ``vmigdb diff`` ignores them unless --strict.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import Built, Linux
from targets import Target, start_qemu_linux, start_stub

from vmigdb import context, sites
from vmigdb import trace as tr
from vmigdb.abi import VmiCall
from vmigdb.mi import Gdb

REPO = Path(__file__).resolve().parent.parent
APPEND = "console=ttyS0"
#: The fork comparison's command line (see the module docstring: address-space randomisation).
FORK_APPEND = "console=ttyS0 norandmaps"
CONTEXT_SCRIPT = Path(__file__).parent / "gdbscripts" / "trace_context.py"
ROM_BASE = 0xC00C0000  # PAGE_OFFSET + 0xC0000: where Linux calls the ROM it found at 0xC0000
PIC1_DATA = 0x21  # the master 8259A's interrupt mask register


def _gdb() -> Gdb:
    g = Gdb(["-x", str(REPO / "vmigdb.py")], cwd=str(REPO), timeout=60)
    g.console("set width 200")
    return g


def _calls_with_context(g: Gdb) -> list[list]:
    """[seq, call, task, caller, frame function, flags] of every ROM call of the trace."""
    text = g.console(f"source {CONTEXT_SCRIPT}", timeout=120).text
    return json.loads(text.split("@@", 1)[1])


def _status(g: Gdb) -> dict[str, str]:
    text = g.console("vmi trace status").text
    return dict(m.groups() for m in re.finditer(r"^ (\w+)\s+(.*?)\s*$", text, re.MULTILINE))


def _to_first_user_fork(g: Gdb) -> None:
    """Continue to the workload's first fork (do_fork from a user stack), breakpoint deleted."""
    g.ok('-break-insert -c "stack_start != 0" do_fork')
    stopped = g.resume(timeout=300)
    assert stopped["payload"]["frame"]["func"] == "do_fork", stopped
    g.ok("-break-delete")


def _saved(path: Path) -> tuple[dict, list[tr.Event]]:
    t = tr.read_trace(path)
    return t.meta, t.events


def _diff(a: Path, b: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmigdb.cli", "diff", str(a), str(b),
                           "--regions", "3", *options], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "NO_COLOR": "1"})


# --- what --no-interrupts leaves out (pure) -------------------------------------------------------


def _rows(*calls: tuple[int, int, int]) -> np.ndarray:
    """Context rows of calls (esp, task, flags), seq 0, 1, 2..."""
    out = np.zeros(len(calls), context.CONTEXT)
    for i, (esp, task, flags) in enumerate(calls):
        out[i]["seq"], out[i]["esp"], out[i]["task"], out[i]["flags"] = i, esp, task, flags
    return out


def test_interrupt_rows_stop_at_the_interrupted_code() -> None:
    """What a QEMU fork showed: copy_process called into dup_mm (calls deep on the stack), came
    back, and a tick interrupted it there. The handler's calls lie below the registers the entry
    code saved under the CPU's frame (44 bytes below the IRET's return address); the calls
    copy_process's callees made just before, from above them, are the interrupted code's."""
    iret = 0xC7845EDC
    k, q, ik = 0, context.IRQ_KNOWN, context.IRET_KERNEL
    rows = _rows((0xC7845DFC, 1, k),  # __alloc_pages_nodemask, from dup_mm: deeper
                 (0xC7845EC0, 1, k),  # kmem_cache_alloc, from copy_process: just above
                 (0xC7845E30, 1, k), (0xC7845D80, 1, k),  # the tick's handler
                 (iret, 1, ik))
    assert context.interrupt_rows(rows).tolist() == [False, False, True, True, True]
    # The deeper call last: from stack pointers alone it is taken for the handler's; where the
    # kernel's interrupt state was read, not.
    blind = rows[[1, 0, 2, 3, 4]]
    assert context.interrupt_rows(blind).tolist() == [False, True, True, True, True]
    known = blind.copy()
    known["flags"] = [q, q, q | context.IRQ, q | context.IRQ, q | ik]
    assert context.interrupt_rows(known).tolist() == [False, False, True, True, True]
    # Another task's calls, and calls at or above the saved registers, end the walk.
    rows = _rows((0xC7845D00, 2, k), (0xC7845E00, 1, k), (iret, 1, ik),
                 (iret - 44, 1, k), (0xC7845E00, 1, k), (iret, 1, ik))
    assert context.interrupt_rows(rows).tolist() == [False, True, True, False, True, True]


# --- 1. from the first instruction ---------------------------------------------------------------


def test_trace_from_reset_on_qemu_holds_the_boot_from_vmi_init(built: Built, linux: Linux,
                                                               tmp_path: Path) -> None:
    t = start_qemu_linux(linux.bzimage, linux.initrd, built.rom, APPEND, tmp_path)
    g = _gdb()
    try:
        g.connect(str(linux.vmlinux), t.port, timeout=120)
        assert g.value("$pc") == 0xFFF0 and g.value("$cs") == 0xF000  # the reset vector
        vmi_init = g.value("(unsigned long)&vmi_init")
        start = g.console("vmi trace start").text
        assert "recording (portable path)" in start, start
        assert f"armed at the kernel's vmi_init ({vmi_init:#x})" in start, start
        assert "no VMI ROM found" not in start, start
        assert _status(g)["armed_at"] == f"the kernel's vmi_init ({vmi_init:#x})"
        g.ok("-break-insert vmi_bringup")
        stopped = g.resume(timeout=300)
        assert stopped["payload"]["frame"]["func"] == "vmi_bringup", stopped
        g.ok("-break-delete")
        g.resume("-exec-finish", timeout=60)
        status = _status(g)
        assert (status["errors"], status["armed_at"], status["rom_bases"]) == \
            ("0", "None", f"['{ROM_BASE:#x}']"), status
        calls = _calls_with_context(g)
        saved = tmp_path / "boot.jsonl"
        g.console(f"vmi trace save {saved}")
        shown = g.console("vmi trace 2").text
    finally:
        g.close()
        t.stop()

    _header, events = _saved(saved)
    # The ROM's announcement first: nothing before vmi_init was recorded, nothing after missed.
    assert isinstance(events[0], tr.RomInit), events[0]
    assert (events[0].seq, events[0].base, events[0].batched) == (0, ROM_BASE, False)
    n = len(sites.sites_from_elf(sites.ElfImage(linux.vmlinux.read_bytes())))
    assert n == 889
    names = [c[1] for c in calls]
    assert names == ["GetInterruptMask", "DisableInterrupts", "SetInterruptMask"] * n + \
        ["SetLinearMapping"], names[:6] + names[-4:]
    # apply_paravirt: text_poke_early saves the flags (interrupts are off: activate_vmi runs
    # with them disabled), disables, copies, restores, site after site; all in the boot task.
    returns = {e.call_seq: e for e in events if isinstance(e, tr.RomReturn)}
    pokes = [c for c in calls if c[1] == "GetInterruptMask"]
    assert all(returns[c[0]].results == {"eax": 0} for c in pokes)
    assert {c[4] for c in calls[:-1]} == {"apply_paravirt"}, {c[4] for c in calls[:-1]}
    assert {c[2] for c in calls} == {"0 swapper"}
    last = next(e for e in events if isinstance(e, tr.RomCall) and e.call == "SetLinearMapping")
    assert (last.args["slot"], last.args["va"], last.args["pfn"]) == (0, 0xC0000000, 0)
    assert calls[-1][3].startswith("vmi_bringup+"), calls[-1]
    assert "SetLinearMapping" in shown and "vmi_bringup+" in shown and "0 swapper" in shown


# --- 3. one fork, both paths (and 2., Ctrl-C, in the same QEMU session) -------------------------


@dataclass
class Fork:
    """One fork of the workload traced from do_fork's entry to its return."""

    target: Target
    gdb: Gdb
    start: str  # what `vmi trace start` answered
    calls: list[list]  # [seq, call, task, caller, frame function, flags] per ROM call
    child: int  # do_fork's result
    full: Path  # `vmi trace save`
    quiet: Path  # `vmi trace save --no-interrupts`


def _trace_a_fork(t: Target, g: Gdb, tmp: Path, name: str, before=None, after=None) -> Fork:
    _to_first_user_fork(g)
    if before is not None:
        before()
    start = g.console("vmi trace start").text
    stopped = g.resume("-exec-finish", timeout=300)
    assert stopped["payload"]["frame"]["func"] == "sys_fork", stopped
    if after is not None:
        after()
    child = g.value("$eax")
    calls = _calls_with_context(g)
    full, quiet = tmp / f"{name}.jsonl", tmp / f"{name}-quiet.jsonl"
    g.console(f"vmi trace save {full}")
    g.console(f"vmi trace save {quiet} --no-interrupts")
    return Fork(t, g, start, calls, child, full, quiet)


def _port(g: Gdb, port: int) -> int:
    """A byte from an I/O port of QEMU's machine (its monitor's ``i``)."""
    m = re.search(r"= (0x[0-9a-f]+)", g.console(f"monitor i /b {port:#x}").text)
    assert m, f"monitor i /b {port:#x}"
    return int(m[1], 16)


@pytest.fixture(scope="module")
def qemu_fork(built: Built, linux: Linux, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Fork]:
    """The fork on QEMU, its timer masked for the window (see the module docstring); the
    session stays open for the Ctrl-C test."""
    tmp = tmp_path_factory.mktemp("qemu-fork")
    t = start_qemu_linux(linux.bzimage, linux.initrd, built.rom, FORK_APPEND, tmp)
    g = _gdb()
    try:
        g.connect(str(linux.vmlinux), t.port, timeout=120)
        mask: list[int] = []

        def timer_off() -> None:
            mask.append(_port(g, PIC1_DATA))
            g.console(f"monitor o /b {PIC1_DATA:#x} {mask[0] | 1:#x}")
            assert _port(g, PIC1_DATA) == mask[0] | 1

        def timer_on() -> None:
            g.console(f"monitor o /b {PIC1_DATA:#x} {mask[0]:#x}")

        yield _trace_a_fork(t, g, tmp, "qemu-fork", timer_off, timer_on)
    finally:
        g.close()
        t.stop()


@pytest.fixture(scope="module")
def stub_fork(built: Built, linux: Linux, tmp_path_factory: pytest.TempPathFactory) -> Fork:
    tmp = tmp_path_factory.mktemp("stub-fork")
    t = start_stub(linux.bzimage, built.rom, FORK_APPEND, tmp, initrd=linux.initrd)
    g = _gdb()
    try:
        g.connect(str(linux.vmlinux), t.port, timeout=120)
        return _trace_a_fork(t, g, tmp, "stub-fork")
    finally:
        g.close()
        t.stop()


def test_a_fork_on_qemu_keeps_every_call_with_task_and_caller(qemu_fork: Fork) -> None:
    f = qemu_fork
    assert "recording (portable path)" in f.start
    assert f"hooked the ROM at {ROM_BASE:#x}" in f.start, f.start
    header, events = _saved(f.full)
    assert header["source"] == "portable"
    calls = [e for e in events if isinstance(e, tr.RomCall)]
    assert [c[0] for c in f.calls] == [c.seq for c in calls]  # each call has its context row
    assert {c[2] for c in f.calls} == {"1 init"}, {c[2] for c in f.calls}
    assert all(c[3] and not c[3].startswith("0x") for c in f.calls), \
        [c for c in f.calls if not c[3] or c[3].startswith("0x")][:3]
    # The page-table work comes through Linux's glue, and each such call names who called it.
    pte = [c for c in f.calls if c[1] in ("SetPxE", "UpdatePxE", "AllocatePage",
                                           "SetLinearMapping", "SetLazyMode")]
    assert len(pte) > 40 and all(" <- " in c[3] and "?" not in c[3] for c in pte), pte[:3]
    count = {name: sum(c[1] == name for c in f.calls) for name in ("SetPxE", "UpdatePxE",
                                                                   "AllocatePage", "FlushTLB")}
    assert count["SetPxE"] >= 20 and count["UpdatePxE"] >= 10 and count["AllocatePage"] >= 4
    assert count["FlushTLB"] == 1  # fork flushes the parent's TLB once, after the copy
    # With its timer masked QEMU took no interrupt in the window: nothing to exclude.
    quiet_header, quiet = _saved(f.quiet)
    assert quiet_header["excluded"]["interrupt_calls"] == 0 and len(quiet) == len(events)
    assert not any(e.call == "IRET" for e in calls)


def test_a_fork_on_qemu_and_on_the_stub_are_the_same_calls(qemu_fork: Fork,
                                                           stub_fork: Fork) -> None:
    q, s = qemu_fork, stub_fork
    assert "recording (stub path)" in s.start
    # The stub's clock ticked once in the fork: its handler is what --no-interrupts leaves out.
    header, quiet = _saved(s.quiet)
    _, full = _saved(s.full)
    excluded = header["excluded"]
    assert excluded["interrupt_calls"] > 0 and excluded["events"] == len(full) - len(quiet)
    assert sum(isinstance(e, tr.RomCall) and e.call == "IRET" for e in full) == 1
    print(f"\nfork window: QEMU portable {len(_saved(q.full)[1])} events; stub fast "
          f"{len(full)} events, {len(quiet)} once its timer interrupt's "
          f"{excluded['events']} are left out")

    same = _diff(s.quiet, q.quiet, "--renumber-pages")
    assert same.returncode == 0, same.stdout[-4000:] + same.stderr
    assert "equivalent" in same.stdout and "counted the same in both" in same.stdout
    # Each exclusion is needed: the stub's tick, and the page numbers.
    with_tick = _diff(s.full, q.quiet, "--renumber-pages")
    assert with_tick.returncode == 1 and "IRET" in with_tick.stdout, with_tick.stdout[-2000:]
    frames = _diff(s.quiet, q.quiet)
    assert frames.returncode == 1 and "fields args differ" in frames.stdout, frames.stdout[-2000:]
    assert "AllocatePage" in frames.stdout


def test_ctrl_c_stops_a_traced_continue_on_qemu(qemu_fork: Fork) -> None:
    """SIGINT to gdb during a traced continue (the fork's child and the workload run on, the
    timer unmasked again): the continue ends with SIGINT, as an untraced one does; the trace
    is kept, and the next traced continue and Ctrl-C work the same."""
    g = qemu_fork.gdb
    latencies = []
    for _ in range(2):
        before = int(_status(g)["hits"])
        g.drain()
        g.pending.clear()
        assert g.cmd("-exec-continue").message == "running"
        time.sleep(1.0)  # the workload runs traced: ROM calls, each a breakpoint hit
        t0 = time.monotonic()
        os.kill(g.proc.pid, signal.SIGINT)
        stopped = g.wait_stopped(timeout=60)
        latencies.append(time.monotonic() - t0)
        assert stopped["payload"]["reason"] == "signal-received", stopped
        assert stopped["payload"]["signal-name"] == "SIGINT", stopped
        status = _status(g)
        assert int(status["hits"]) > before + 50 and status["enabled"] == "True", status
        assert status["errors"] == "0", status
    assert _status(g)["interrupted_by_ctrl_c"] == "2"
    print("\nCtrl-C latency during a traced continue on QEMU (SIGINT to gdb -> *stopped): "
          + ", ".join(f"{x * 1e3:.0f} ms" for x in latencies))
    # What --no-interrupts leaves out (interrupt_rows) against the kernel's own interrupt
    # state: in every interrupt of kernel code in the trace, the handler's calls exactly, not
    # the interrupted code's. From the stack pointers alone (the stub's case, no irq_regs)
    # every handler call is found too; calls the interrupted code made before from deeper
    # functions can be taken for the handler's (counted, printed).
    rows = _context_rows(g)
    irq = (rows["flags"] & context.IRQ) != 0
    found = context.interrupt_rows(rows)
    blind = rows.copy()
    blind["flags"] &= ~np.uint8(context.IRQ_KNOWN | context.IRQ)
    from_stack = context.interrupt_rows(blind)
    interrupts = over = 0
    for handler, before in _interrupts_of_kernel_code(rows, irq):
        assert found[handler].all() and not found[before].any(), (handler, before)
        assert from_stack[handler].all(), handler
        interrupts += 1
        over += int(from_stack[before].sum())
    assert interrupts, "no interrupt of kernel code in the window"
    print(f"{interrupts} interrupts of kernel code in {len(rows)} calls: --no-interrupts finds "
          f"their handlers exactly; from stack pointers alone, {over} calls of the "
          "interrupted code would be taken for the handlers'")


def _context_rows(g: Gdb) -> np.ndarray:
    text = g.console("python import json; from vmigdb.commands import tracesource; "
                     "r = tracesource.current(create=False).context.rows; "
                     "print('@@' + json.dumps([r[n].tolist() for n in r.dtype.names]))").text
    cols = json.loads(text.split("@@", 1)[1])
    out = np.zeros(len(cols[0]), context.CONTEXT)
    for name, col in zip(context.CONTEXT.names, cols, strict=True):
        out[name] = col
    return out


def _interrupts_of_kernel_code(rows: np.ndarray, irq: np.ndarray
                               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(the handler's calls, the calls before it) of each interrupt that returned to kernel
    code: the calls from one IRET to the next that ends with an IRET to kernel mode and holds
    calls made in an interrupt (an exception handler holds none; an IRET to user mode ends a
    system call or an interrupt of user code, which the events alone cannot tell apart)."""
    irets = np.flatnonzero(rows["call"] == int(VmiCall.IRET)).tolist()
    start = 0
    for end in irets:
        seg = np.arange(start, end)
        if rows["flags"][end] & context.IRET_KERNEL and irq[seg].any():
            first = int(seg[irq[seg]][0])
            yield np.r_[np.arange(first, end + 1)], np.arange(start, first)
        start = end + 1
