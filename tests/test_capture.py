"""``vmigdb capture`` with real processes: vmigdb's stub, QEMU's gdbstub, gdb and the Linux guest.

On the stub the stub writes the trace itself (a version 2 file, vmigdb.tracefile); on QEMU gdb
records at breakpoints and the driver writes. What is compared between the two targets: the
first 300 ROM calls of the demo guest (``--until calls=300``), because QEMU's portable path costs
~2 ms per hit; their events must be the same, RDTSC's results (the clock) and the stub's clock
and task columns aside. A whole run is captured on the stub, and a whole Linux boot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Built, Linux

from vmigdb import abi
from vmigdb import events as ev
from vmigdb import tracefile as tf

VMIGDB = Path(sys.executable).with_name("vmigdb")
ENV = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}


def vmigdb(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMIGDB), *args], capture_output=True, text=True, env=ENV,
                          check=False, timeout=timeout, stdin=subprocess.DEVNULL)


def capture(guest: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                         dict]:
    """Run a capture (not on a terminal: one JSON line on stdout) and parse that line."""
    r = vmigdb("capture", str(guest), "-o", str(out), *args)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout + r.stderr
    return r, json.loads(lines[0])


def read(path: Path, partial: bool = False) -> tuple[tf.TraceFile, ev.Chunk]:
    f = tf.open_trace(path)
    return f, ev.concat(list(f.chunks(partial=partial)))


def calls_of(c: ev.Chunk) -> int:
    return int((c["kind"] == ev.Kind.CALL).sum())


def test_stub_and_qemu_captures_are_equivalent(built: Built, tmp_path: Path) -> None:
    stub, qemu = tmp_path / "stub.vmt", tmp_path / "qemu.vmt"
    for target, out in (("stub", stub), ("qemu", qemu)):
        r, summary = capture(built.guest, out, "--rom", str(built.rom), "--target", target,
                             "--cmdline", "rom=copy", "--until", "calls=300")
        assert r.returncode == 0, r.stderr
        assert summary["status"] == "until" and summary["calls"] == 300, summary
        assert summary["source"] == ("stub" if target == "stub" else "portable")
    fa, a = read(stub)
    fb, b = read(qemu)
    assert fa.end is not None and fa.end["status"] == "until" and fa.end["calls"] == 300
    assert fa.header["target"] == "stub" and fb.header["target"] == "qemu"
    assert calls_of(a) == 300 and a["kind"][0] == ev.Kind.ROM_INIT
    # The stub traces from the first instruction, QEMU from the guest's entry: both start at
    # vmi_init, which comes after the entry.
    assert len(a) == len(b)
    clock_read = (b["kind"] == ev.Kind.RETURN) & (b["call"] == abi.VmiCall.RDTSC)
    assert clock_read.any()
    for name in ev.EVENT.names:
        if name in ("clock", "task"):
            continue  # the stub's virtual clock and task; QEMU's trace has neither
        same = a[name] == b[name]
        if name in ("a0", "a1"):  # RDTSC's results: the clock, which differs run to run
            same |= clock_read
        assert same.all(), (name, np.flatnonzero(~same)[:5])
    assert (a["clock"][1:] >= a["clock"][:-1]).all() and a["clock"][-1] > 0
    assert not b["clock"].any()


def test_whole_run_on_the_stub_and_a_prefix_until_a_symbol(built: Built, tmp_path: Path) -> None:
    full, part, serial = tmp_path / "full.vmt", tmp_path / "part.vmt", tmp_path / "com1"
    r, summary = capture(built.guest, full, "--rom", str(built.rom), "--serial", str(serial))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert summary["status"] == "exited" and summary["guest_code"] == 0 and summary["ok"]
    f, t = read(full)
    assert f.end is not None and f.end["events"] == len(t) == summary["events"]
    assert (f.end["status"], f.end["guest_code"]) == ("exited", 0)
    import re

    m = re.search(r"^summary: .* calls=(\d+) deferred=(\d+) flushes=(\d+)$",
                  serial.read_text().replace("\r", ""), re.MULTILINE)
    assert m
    flushes = t["kind"] == ev.Kind.FLUSH
    assert (calls_of(t), int(t["a1"][flushes].sum()), int(flushes.sum())) == tuple(
        map(int, m.groups()))
    assert summary["calls"] == f.end["calls"] == calls_of(t)

    script = tmp_path / "script.gdb"
    script.write_text("break vmi_activate\n")  # a stop the capture passes through
    r, summary = capture(built.guest, part, "--rom", str(built.rom), "--until", "pt_workload",
                         "--gdb-script", str(script))
    assert r.returncode == 0 and summary["status"] == "until", summary
    assert summary["message"] == "reached pt_workload"
    _, p = read(part)
    assert 50 < len(p) < len(t)
    for name in ev.EVENT.names:  # a prefix of the whole run, the same to the clock
        assert (p[name] == t[name][:len(p)]).all(), name


def _capture_linux(linux: Linux, built: Built, out: Path, serial: Path
                   ) -> tuple[subprocess.CompletedProcess[str], dict]:
    return capture(linux.bzimage, out, "--rom", str(built.rom), "--initrd", str(linux.initrd),
                   "--append", "console=ttyS0", "--symbols", str(linux.vmlinux), "--serial",
                   str(serial))


def test_a_whole_linux_boot_keeps_every_rom_call(linux: Linux, built: Built,
                                                 tmp_path: Path) -> None:
    """From reset to the workload's end: as many calls in the file as the stub counted, each
    event stamped with the virtual clock and the current task, tasks named. A second capture
    gives the same trace, clock values and all (the machine's time is virtual)."""
    out, serial = tmp_path / "linux.vmt", tmp_path / "com1"
    r, summary = _capture_linux(linux, built, out, serial)
    assert r.returncode == 0, r.stderr
    assert summary["status"] == "exited" and summary["guest_code"] == 0, summary
    assert "VMIGDB-INIT: done" in serial.read_text(errors="replace")
    f, t = read(out)
    assert f.end is not None and f.end["lost"] == 0
    assert calls_of(t) == f.end["calls"] == summary["calls"] > 500_000
    assert (t["kind"][:1] == ev.Kind.ROM_INIT).all()  # nothing called the ROM before vmi_init
    assert (np.diff(t["clock"].astype(np.int64)) >= 0).all()
    named = {comm for _pid, comm in f.tasks.values()}
    assert {"swapper", "init", "kthreadd"} <= named
    assert f.tasks[int(t["task"][-1])][1] in named
    assert (t["task"][1:] != 0).all()  # vmi_init comes before any record names a task
    assert f.header["symbols"] == str(linux.vmlinux.resolve())

    again = tmp_path / "again.vmt"
    r, _ = _capture_linux(linux, built, again, tmp_path / "com1-again")
    assert r.returncode == 0, r.stderr
    g, u = read(again)
    assert len(u) == len(t) and g.tasks == f.tasks
    for name in ev.EVENT.names:
        assert (u[name] == t[name]).all(), name
    assert (u.entries == t.entries).all()
    assert serial.read_bytes() == (tmp_path / "com1-again").read_bytes()


def test_a_slow_reader_loses_nothing(built: Built, tmp_path: Path) -> None:
    """The trace goes to a FIFO that a slow reader drains: the guest waits for it, and every
    call the stub counted is in what the reader got."""
    from vmigdb.stub.machine import Machine, StopReason
    from vmigdb.stub.vmitrace import VmiTracer

    fifo, got = tmp_path / "trace.fifo", tmp_path / "got.vmt"
    os.mkfifo(fifo)

    def drain() -> None:
        with open(fifo, "rb") as src, open(got, "wb") as dst:
            while chunk := src.read(4 << 10):
                dst.write(chunk)
                time.sleep(0.01)  # ~400 KB/s of compressed trace: ~5x slower than it comes

    reader = threading.Thread(target=drain)
    reader.start()
    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="stress=40")
    t = VmiTracer(m)
    t.open_file(fifo, queue_bytes=1 << 20)
    t.start()
    stop = m.run()
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0
    answer = t.close_file(status="exited")
    reader.join(60)
    assert answer["error"] is None and answer["wait_seconds"] > 0, answer  # the guest waited
    f, c = read(got)
    assert f.end is not None and calls_of(c) == t.calls == f.end["calls"] > 100_000


def test_bad_outputs_and_usage_errors(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "t.vmt"
    r, summary = capture(built.guest, out, "--rom", str(built.rom), "--cmdline", "fault=pf")
    assert r.returncode == 1
    assert summary["status"] == "exited" and summary["guest_code"] >= 0x40
    assert r.stderr == f"vmigdb: the guest failed: {summary['message']}\n"
    assert read(out)[0].end["guest_code"] == summary["guest_code"]

    r, summary = capture(built.guest, Path("/dev/full"), "--rom", str(built.rom))
    assert r.returncode == 2 and summary["status"] == "error", summary
    assert r.stderr.splitlines() == [f"vmigdb: {summary['message']}"]
    assert "No space left on device" in r.stderr

    cases = [
        (["capture", str(tmp_path / "nope.elf"), "-o", str(out)], "cannot read guest"),
        (["capture", str(built.rom), "-o", str(out)], "neither a multiboot ELF32 guest nor"),
        (["capture", str(built.guest), "-o", str(out), "--until", "calls=0"],
         "calls=N needs a positive number"),
        (["capture", str(built.guest), "-o", str(out), "--until", "no_such_function"],
         '--until no_such_function: Function "no_such_function" not defined.'),
        (["capture", str(built.guest), "-o", str(out), "--gdb-script", str(built.rom)],
         f"--gdb-script: {built.rom}:1: Error in sourced command file: Undefined command"),
        (["capture", str(built.guest), "-o", str(tmp_path / "no" / "dir.vmt")],
         "cannot write"),
        (["capture", str(built.guest), "-o", str(out), "--initrd", str(built.rom)],
         "--initrd needs a Linux bzImage guest"),
        (["capture", str(built.guest), "-o", str(out), "--target", "kvm"], "invalid choice"),
    ]
    for argv, message in cases:
        r = vmigdb(*argv)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and message in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def test_sigkill_leaves_a_readable_prefix(built: Built, tmp_path: Path) -> None:
    """A capture killed mid-run: its stub, gdb and trace writer go with it, and the file holds
    every batch written before the kill (readable with --partial; cut without it)."""
    out = tmp_path / "killed.vmt"
    proc = subprocess.Popen(
        [str(VMIGDB), "capture", str(built.guest), "--rom", str(built.rom),
         "--cmdline", "stress=2000", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > 200_000:
                break
            assert proc.poll() is None, "the capture ended before it was killed"
            time.sleep(0.05)
        kids = _descendants(proc.pid)
        assert len(kids) >= 3  # the stub, gdb, the stub's trace writer
        os.kill(proc.pid, signal.SIGKILL)  # the capture alone: the rest must follow
        proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(k) for k in kids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
    f = tf.open_trace(out)
    try:
        list(f.chunks())
        raise AssertionError("a killed capture's file read as complete")
    except tf.TraceCutError as e:
        cut = e.events
    f, c = read(out, partial=True)
    assert f.end is None and len(c) == cut > 10_000
    assert (np.diff(c["seq"].astype(np.int64)) == 1).all()


@pytest.mark.parametrize("cmdline", ["spin=4000000000", "stress=5000"])
def test_the_timeout_is_enforced_and_the_file_stays_whole(built: Built, tmp_path: Path,
                                                          cmdline: str) -> None:
    """A guest that outlives ``--timeout`` (spinning without a ROM call, or calling the ROM
    without end) is stopped: status "timeout", exit 1, and a complete file up to the stop."""
    out = tmp_path / "t.vmt"
    r, summary = capture(built.guest, out, "--rom", str(built.rom), "--cmdline", cmdline,
                         "--timeout", "1")
    assert r.returncode == 1, r.stderr
    assert summary["status"] == "timeout" and summary["ok"] is False, summary
    assert "longer than 1 s" in summary["message"]
    f, c = read(out)
    assert f.end is not None and f.end["status"] == "timeout"
    assert calls_of(c) == f.end["calls"] == summary["calls"]
