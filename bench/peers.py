"""The three gdb targets the stub benchmark compares, and one gdb run of bench/gdb_bench.py.

* ``ours``: ``vmigdb serve GUEST --port 0`` (``--trace`` for the tracer); the port comes from its
  "listening on" line.
* ``qemu``: qemu-system-i386 stopped at reset (``-S``) with its gdbstub on a free port, with the
  reference settings (-m 64 -nodefaults, single-threaded TCG; qemu-reference.md §5).
* ``udbserver``: bench/udb_launch.py, udbserver 0.3.0 over vmigdb's own machine.

Every wait polls with a deadline; every process is ended by its pid. A peer that cannot start or
answer raises ``PeerFailed`` with one line, which the table shows in that peer's cell. Ours and
QEMU start through vmigdb.targets, the one place that knows their command lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmigdb import targets
from vmigdb.errors import VmiError
from vmigdb.mi import GDB
from vmigdb.targets import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
GDB_SCRIPT = Path(__file__).resolve().parent / "gdb_bench.py"
START_TIMEOUT = 20.0


class PeerFailed(Exception):
    """A peer did not start, did not answer in time, or the gdb script reported an error."""


@dataclass
class Target:
    """A running gdb target: its process, its port, and where its stderr goes."""

    proc: subprocess.Popen[bytes]
    port: int
    kind: str
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)

    def last_words(self) -> str:
        """The last line the target wrote to stderr, to explain a failure."""
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise PeerFailed(f"exited with status {proc.returncode}: "
                             f"{lines[-1] if lines else 'no output'}")
        time.sleep(0.02)
    stop_process(proc)
    raise PeerFailed(f"no {pattern!r} within {START_TIMEOUT:.0f} s")


def _from(start: Callable[[], targets.Target], kind: str) -> Target:
    try:
        t = start()
    except VmiError as e:
        raise PeerFailed(str(e)) from None
    return Target(t.proc, t.port, kind, t.log)


def start_ours(guest: Path, rom: Path, cmdline: str, tmp: Path, trace: bool = False) -> Target:
    return _from(lambda: targets.start_stub(guest, rom, cmdline, tmp, trace=trace), "ours")


def start_qemu(guest: Path, rom: Path, cmdline: str, tmp: Path) -> Target:
    return _from(lambda: targets.start_qemu(guest, rom, cmdline, tmp), "qemu")


def start_udbserver(guest: Path, rom: Path, cmdline: str, tmp: Path) -> Target:
    log = tmp / "udb.err"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.udb_launch", str(guest), str(rom), cmdline, str(port)],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=ROOT)
    # udbserver binds its port inside the entry hook, right after printing this line; gdb's
    # connection retry covers the gap. Connecting to test readiness would use up its only
    # connection.
    _wait_for_line(proc, log, r"Waiting for a GDB connection")
    return Target(proc, port, "udbserver", log)


def gdb_task(target: Target, task: str, guest: Path, entry: int, tmp: Path, *,
             timeout: float, prefix: Sequence[str] = (), **params: object) -> dict[str, object]:
    """Run bench/gdb_bench.py against ``target`` (gdb started under ``prefix``, e.g. taskset);
    its JSON result, or PeerFailed."""
    out = tmp / f"{target.kind}-{task}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_TASK": task, "BENCH_PORT": str(target.port),
           "BENCH_ELF": str(guest), "BENCH_ENTRY": hex(entry), "BENCH_OUT": str(out)}
    env.update({f"BENCH_{k.upper()}": str(v) for k, v in params.items()})
    try:
        r = subprocess.run([*prefix, GDB, "-batch", "-nx", "-x", str(GDB_SCRIPT)], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PeerFailed(f"no result within {timeout:.0f} s") from None
    except OSError as exc:
        raise PeerFailed(f"cannot run gdb: {exc.strerror}") from None
    if not out.is_file():
        err = r.stderr.decode(errors="replace").strip().splitlines()
        why = err[-1] if err else target.last_words() or f"gdb exit status {r.returncode}"
        raise PeerFailed(why)
    res = json.loads(out.read_text())
    if "error" in res:
        words = target.last_words()
        raise PeerFailed(f"{res['error']}" + (f" ({words})" if target.proc.poll() is not None
                                              and words else ""))
    return res
