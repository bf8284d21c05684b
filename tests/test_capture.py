"""``vmigdb capture`` with real processes: vmigdb's stub, QEMU's gdbstub and gdb.

What is compared between the two targets: the first 300 ROM calls of the demo guest
(``--until calls=300``: every event before the 301st call), because QEMU's portable path costs
~2 ms per hit; ``vmigdb diff`` must find them equivalent, and differ under ``--strict`` only in
the RDTSC results (the documented clock values). A whole run is captured on the stub.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Built

from vmigdb import trace as tr
from vmigdb import tracediff

VMIGDB = Path(sys.executable).with_name("vmigdb")
ENV = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}


def vmigdb(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMIGDB), *args], capture_output=True, text=True, env=ENV,
                          check=False, timeout=timeout)


def capture(built: Built, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                          dict]:
    """Run a capture (not on a terminal: one JSON line on stdout) and parse that line."""
    r = vmigdb("capture", str(built.guest), "--rom", str(built.rom), "-o", str(out), *args)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout + r.stderr
    return r, json.loads(lines[0])


def test_stub_and_qemu_captures_are_equivalent(built: Built, tmp_path: Path) -> None:
    stub, qemu = tmp_path / "stub.jsonl", tmp_path / "qemu.jsonl"
    for target, out in (("stub", stub), ("qemu", qemu)):
        r, summary = capture(built, out, "--target", target, "--cmdline", "rom=copy",
                             "--until", "calls=300")
        assert r.returncode == 0, r.stderr
        assert summary["status"] == "until" and summary["calls"] == 300, summary
        assert summary["source"] == ("stub" if target == "stub" else "portable")
    a, b = tr.read_trace(stub), tr.read_trace(qemu)
    assert not a.truncated and a.end is not None and a.end["status"] == "until"
    assert a.meta["target"] == "stub" and b.meta["target"] == "qemu"
    calls = [e for e in a.events if isinstance(e, tr.RomCall)]
    assert len(calls) == 300 and isinstance(a.events[0], tr.RomInit)
    r = vmigdb("diff", str(stub), str(qemu))
    assert r.returncode == 0, r.stdout
    assert re.match(rf"equivalent: {len(a.events)} events each \(\d+ clock values ignored: "
                    r"results of RDTSC\)", r.stdout), r.stdout
    strict = tracediff.diff(a.events, b.events, strict=True)
    assert strict.first is not None and isinstance(strict.first.a, tr.RomReturn)
    assert strict.first.a.call == "RDTSC" and strict.first.fields == ("results",)
    assert vmigdb("diff", "--strict", str(stub), str(qemu)).returncode == 1


def test_whole_run_on_the_stub_and_a_prefix_until_a_symbol(built: Built, tmp_path: Path) -> None:
    full, part, serial = tmp_path / "full.jsonl", tmp_path / "part.jsonl", tmp_path / "com1"
    r, summary = capture(built, full, "--serial", str(serial))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert summary["status"] == "exited" and summary["guest_code"] == 0 and summary["ok"]
    t = tr.read_trace(full)
    assert t.end == {"type": "end", "events": len(t.events), "status": "exited",
                     "guest_code": 0, "message": "the guest exited with code 0x0",
                     "seconds": t.end["seconds"]}
    m = re.search(r"^summary: .* calls=(\d+) deferred=(\d+) flushes=(\d+)$",
                  serial.read_text().replace("\r", ""), re.MULTILINE)
    assert m
    calls = [e for e in t.events if isinstance(e, tr.RomCall)]
    flushes = [e for e in t.events if isinstance(e, tr.BatchFlush)]
    assert (len(calls), sum(f.count for f in flushes), len(flushes)) == tuple(map(int, m.groups()))
    assert summary["events"] == len(t.events) and summary["calls"] == len(calls)

    script = tmp_path / "script.gdb"
    script.write_text("break vmi_activate\n")  # a stop the capture passes through
    r, summary = capture(built, part, "--until", "pt_workload", "--gdb-script", str(script))
    assert r.returncode == 0 and summary["status"] == "until", summary
    assert summary["message"] == "reached pt_workload"
    p = tr.read_trace(part)
    d = tracediff.diff(p.events, t.events)
    assert d.first is not None and d.first.index == len(p.events) > 50 and d.first.a is None


def test_guest_failure_and_usage_errors(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    r, summary = capture(built, out, "--cmdline", "fault=pf")
    assert r.returncode == 1
    assert summary["status"] == "exited" and summary["guest_code"] >= 0x40
    assert r.stderr == f"vmigdb: the guest failed: {summary['message']}\n"
    assert tr.read_trace(out).end["guest_code"] == summary["guest_code"]

    cases = [
        (["capture", str(tmp_path / "nope.elf"), "-o", str(out)], "cannot read guest"),
        (["capture", str(built.guest), "-o", str(out), "--until", "calls=0"],
         "calls=N needs a positive number"),
        (["capture", str(built.guest), "-o", str(out), "--until", "no_such_function"],
         '--until no_such_function: Function "no_such_function" not defined.'),
        (["capture", str(built.guest), "-o", str(out), "--gdb-script", str(built.rom)],
         f"--gdb-script: {built.rom}:1: Error in sourced command file: Undefined command"),
        (["capture", str(built.guest), "-o", str(tmp_path / "no" / "dir.jsonl")],
         "cannot write"),
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


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_sigkill_leaves_a_readable_prefix(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(
        [str(VMIGDB), "capture", str(built.guest), "--rom", str(built.rom), "--target", "qemu",
         "--cmdline", "rom=copy", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\n") > 30:
                break
            assert proc.poll() is None, "the capture ended before it was killed"
            time.sleep(0.05)
        kids = _children(proc.pid)
        assert len(kids) == 2  # QEMU and gdb
        os.kill(proc.pid, signal.SIGKILL)  # the capture alone: its children must follow
        proc.wait(10)
        deadline = time.monotonic() + 10
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
    text = out.read_text()
    complete = text.count("\n") - 1  # header
    r = vmigdb("report", str(out))
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"vmigdb: warning: {out} is cut off "
                                                         f"after {complete} events")
    assert re.search(rf"^totals: {complete} events, ", r.stdout, re.MULTILINE)
