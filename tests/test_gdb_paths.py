"""Both trace paths, on both machines, record the same ROM calls from the guest's entry.

The acceptance item: the first 500 ROM calls of the demo guest (rom=copy) come out the same
through the fast path on vmigdb's stub, the portable path on vmigdb's stub (``--portable``) and
the portable path on QEMU's gdbstub. Each session starts the trace at the guest's entry (QEMU:
at reset, before the firmware), before the ROM is known: the fast path's stub hooks the ROM when
vmi_init announces it; the portable path watches the guest's ROM pointer (``vmi.base``) and
hooks the copy when the guest stores it. Compared per call: name, entry, site, arguments, and
the results of its return.

The one allowed difference: RDTSC's results. They are the time-stamp counter, and each machine
has its own clock (QEMU's counts from its start, the stub's from the host), so they differ
between runs and machines; for them the test checks only that each path saw them, with the
same registers, and that the counter did not go back between the two reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import Built
from targets import start_qemu, start_stub
from test_gdb_commands import _copy_base, gdb_session, serial_text

from vmigdb import abi
from vmigdb import trace as tr
from vmigdb.abi import VmiCall

N_CALLS = 500
UNTIL = Path(__file__).parent / "gdbscripts" / "trace_until_calls.py"
#: Results that are the machine's clock, not a function of the guest's run (see the docstring).
CLOCK_CALLS = {"RDTSC"}


def _trace_from_entry(built: Built, kind: str, mode: str, tmp: Path) -> tuple[
        dict[str, str], list[tr.Event], str]:
    """Trace from the guest's entry until N_CALLS ROM calls are recorded: (gdb output by step,
    the saved events, the guest's serial log)."""
    tmp.mkdir()
    saved = tmp / "trace.jsonl"
    t = (start_stub if kind == "stub" else start_qemu)(built.guest, built.rom, "rom=copy", tmp)
    try:
        s = gdb_session(built, t.port, [
            ("pc", "info registers eip"),
            ("start", f"vmi trace start {mode}".strip()),
            ("inserted", "show breakpoint always-inserted"),
            # A breakpoint hit a few times a run: continue from one hit to the next until the
            # trace holds N_CALLS calls (a call's return comes right after it, so it is in too).
            ("brk", "break pv_flush_tlb"),
            ("n", f"set $until_calls = {N_CALLS}"),
            ("until", f"source {UNTIL}"),
            ("status", "vmi trace status"),
            ("save", f"vmi trace save {saved}"),
            ("stop", "vmi trace stop"),
            ("after", "show breakpoint always-inserted"),
        ])
    finally:
        t.stop()
    assert "@@stops" in s["until"], s["_all"][-3000:]
    return s, tr.read_trace(saved).events, serial_text(t)


def _first_calls(events: list[tr.Event]) -> list[tuple[tr.RomCall, tr.RomReturn | None]]:
    returns = {e.call_seq: e for e in events if isinstance(e, tr.RomReturn)}
    calls = [e for e in events if isinstance(e, tr.RomCall)]
    assert len(calls) >= N_CALLS
    return [(c, returns.get(c.seq)) for c in calls[:N_CALLS]]


def test_first_500_rom_calls_agree_on_both_paths_and_machines(built: Built,
                                                               tmp_path: Path) -> None:
    runs = {
        "fast path, stub": _trace_from_entry(built, "stub", "", tmp_path / "fast"),
        "portable path, stub": _trace_from_entry(built, "stub", "--portable", tmp_path / "ps"),
        "portable path, QEMU": _trace_from_entry(built, "qemu", "--portable", tmp_path / "pq"),
    }
    s_fast, _, _ = runs["fast path, stub"]
    assert "recording (stub path)" in s_fast["start"]
    assert "ROM not initialised yet; 0 events kept" in s_fast["start"]
    assert re.search(r"source\s+stub", s_fast["status"])
    for name in ("portable path, stub", "portable path, QEMU"):
        s, _, _ = runs[name]
        assert "recording (portable path)" in s["start"], name
        if "QEMU" in name:  # at reset SeaBIOS has not placed the ROM: armed at the entry
            assert "armed at the guest's entry point" in s["start"], s["start"]
        else:  # the stub maps the ROM from the first instruction
            assert "watching vmi.base: a ROM the guest copies is hooked when set" in s["start"]
        # The portable path keeps gdb's breakpoints inserted while it traces (a hit then
        # costs no removal and re-insertion of every hook), and gives the setting back.
        assert "mode is on" in s["inserted"] and "mode is off" in s["after"], (s["inserted"],
                                                                              s["after"])
        assert re.search(r"source\s+portable", s["status"]) and \
            re.search(r"errors\s+0\b", s["status"]), s["status"]
    # QEMU starts at the reset vector (the firmware has not run), the stub at the kernel entry:
    # both well before vmi_init.
    assert "0xfff0" in runs["portable path, QEMU"][0]["pc"]
    assert "_start" in runs["fast path, stub"][0]["pc"]

    tables = {}
    for name, (_s, events, serial) in runs.items():
        base, _phys = _copy_base(serial)
        # The trace ran before vmi_init: the ROM's announcement is its first event.
        assert isinstance(events[0], tr.RomInit), (name, events[0])
        assert events[0].base == base and events[0].batched, name
        pairs = _first_calls(events)
        for call, ret in pairs:
            spec = abi.CALLS[VmiCall[call.call]]
            assert base <= call.entry < base + 0x2000, (name, call)
            # Calls with result registers return with them; the others get no return event.
            if spec.returns and spec.results:
                assert ret is not None and set(ret.results) == set(spec.results), (name, call)
            else:
                assert ret is None, (name, call, ret)
        tables[name] = pairs

    reference = tables["fast path, stub"]
    names = [c.call for c, _ in reference]
    assert names.count("SetPxE") > 100 and "CPUID" in names and "SetCR3" in names
    assert sum(r is not None for _, r in reference) >= 20
    for name, pairs in tables.items():
        clock = []
        for i, ((a, ra), (b, rb)) in enumerate(zip(reference, pairs, strict=True)):
            assert (b.call, b.entry, b.site, b.args) == (a.call, a.entry, a.site, a.args), \
                (name, i, a, b)
            if a.call in CLOCK_CALLS:  # the documented exception: the machine's clock
                assert ra is not None and rb is not None and set(ra.results) == set(rb.results)
                clock.append(rb.results["eax"] | rb.results["edx"] << 32)
                continue
            assert (rb.results if rb else None) == (ra.results if ra else None), (name, i, a)
        assert len(clock) == 2 and clock[0] <= clock[1], (name, clock)
