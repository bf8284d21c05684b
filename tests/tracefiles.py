"""Real trace files for the tests: the demo guest run on vmigdb's machine with the in-stub
tracer writing a version 2 file (as ``vmigdb capture`` does through the stub), and the events
of a file of either version as objects."""

from __future__ import annotations

from pathlib import Path

from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.stub.machine import Machine, StopReason
from vmigdb.stub.vmitrace import VmiTracer
from vmigdb.tracefile import open_trace


def record(guest: Path, rom: Path, out: Path, cmdline: str = "rom=copy") -> str:
    """Run the demo guest to its exit with its trace going to ``out``; its COM1 text."""
    m = Machine.from_files(str(guest), rom=str(rom), cmdline=cmdline)
    serial: list[bytes] = []
    m.on_serial = serial.append
    t = VmiTracer(m)
    t.open_file(out, guest=str(guest), symbols=str(guest), target="stub", cmdline=cmdline)
    t.start()
    stop = m.run()
    while stop.reason in (StopReason.BREAKPOINT, StopReason.HOOK):
        stop = m.run()
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0, stop
    t.close_file(status="exited", guest_code=0)
    return b"".join(serial).decode().replace("\r", "")


def chunk_of(path: Path, partial: bool = False) -> ev.Chunk:
    with open_trace(path) as tf:
        return ev.concat(list(tf.chunks(partial=partial)))


def events_of(path: Path, partial: bool = False) -> list[tr.Event]:
    return list(ev.to_events(chunk_of(path, partial)))
