"""interrupt() from another thread (gdb's Ctrl-C) stops the run at an exact instruction
boundary: a program interrupted thousands of times ends exactly as an uninterrupted one.

This is the regression test for a Unicorn trap: uc_emu_stop() from another thread can leave EIP
stale between chained blocks, so resuming re-executed code (stub/runctl.c)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from conftest import Built

from vmigdb import trace as tr
from vmigdb.stub.machine import Machine, StopReason

ASM = Path(__file__).resolve().parent / "asm"


@pytest.fixture(scope="module")
def count_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("count")
    subprocess.run(["as", "--32", "-I", str(ASM), "-o", d / "count.o", ASM / "count.S"],
                   check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o",
                    d / "count.elf", d / "count.o"], check=True)
    return d / "count.elf"


def _run_interrupted(m: Machine, period: float) -> tuple[object, int]:
    done = threading.Event()

    def poke() -> None:
        while not done.wait(period):
            m.interrupt()

    t = threading.Thread(target=poke, daemon=True)
    t.start()
    interrupts = 0
    try:
        while True:
            stop = m.run()
            if stop.reason is not StopReason.INTERRUPTED:
                return stop, interrupts
            interrupts += 1
    finally:
        done.set()
        t.join()


@pytest.mark.parametrize("period", [0.002, 0.0003])
def test_interrupted_loop_counts_exactly(built: Built, count_elf: Path, period: float) -> None:
    m = Machine.from_files(str(count_elf), rom=str(built.rom))
    stop, interrupts = _run_interrupted(m, period)
    assert interrupts > 5
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0, stop
    assert m.reg_read("ebx") == 5_000_000


def test_interrupted_demo_guest_with_tracer_matches_an_uninterrupted_run(built: Built) -> None:
    from vmigdb.stub.vmitrace import VmiTracer

    def boot() -> tuple[Machine, VmiTracer, list[bytes]]:
        m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="rom=copy")
        out: list[bytes] = []
        m.on_serial = out.append
        t = VmiTracer(m)
        t.start()
        return m, t, out

    m, t, out = boot()
    assert m.run().exit_code == 0
    calm = list(t.events)
    m, t, out = boot()
    stop, interrupts = _run_interrupted(m, 0.001)
    assert interrupts > 5
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0, b"".join(out)[-300:]
    got = list(t.events)
    assert len(got) == len(calm)
    for a, b in zip(calm, got, strict=True):
        if isinstance(a, tr.RomReturn) and a.call == "RDTSC":
            continue  # RDTSC answers with the host clock
        assert a == b


def test_interrupt_before_a_run_stops_it_at_once(built: Built, count_elf: Path) -> None:
    m = Machine.from_files(str(count_elf), rom=str(built.rom))
    pc = m.reg_read("eip")
    m.interrupt()
    stop = m.run()
    assert stop.reason is StopReason.INTERRUPTED and stop.pc == pc
    assert m.step().reason is StopReason.STEP  # the request was used up
