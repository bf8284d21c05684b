"""A small token-based driver for real gdb over MI (pygdbmi), for the stub's acceptance tests.

Why tokens: pygdbmi's default ``write()`` waits 0.2 s for "more output" after every command
(shared reference unicorn-facts.md section 5). Here each command carries a numeric token, is
written with ``read_response=False``, and we poll (``select`` + ``get_gdb_response(timeout_sec=0)``)
until the result record with that token arrives, so a command costs what gdb needs, not 200 ms.

Async records (``*stopped``, ``*running``, ``=...``) are kept in arrival order; ``wait_stopped``
consumes them up to the next ``*stopped`` with a deadline. ``close()`` ends gdb by its pid.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from pygdbmi.gdbcontroller import GdbController
from targets import stop_process

GDB = "/usr/bin/gdb"

Record = dict[str, Any]


class GdbMiError(AssertionError):
    """gdb did not answer in time, or answered ``^error`` where success was required."""


@dataclass
class Result:
    """A command's result record and the console/log text gdb printed while running it."""

    record: Record
    console: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)  # remote ``O`` output (monitor commands)

    @property
    def message(self) -> str:
        return self.record["message"]  # done, running, connected, error, exit

    @property
    def payload(self) -> Any:
        return self.record.get("payload")

    @property
    def text(self) -> str:
        """Everything gdb printed for the command: console, target (monitor) and log streams."""
        return "".join(self.console) + "".join(self.target) + "".join(self.log)

    @property
    def error(self) -> str:
        return (self.payload or {}).get("msg", "") if self.message == "error" else ""


class Gdb:
    """One gdb process speaking MI3 (``gdb --nx --quiet --interpreter=mi3``)."""

    def __init__(self, *, mi_async: bool = False, cwd: str | None = None) -> None:
        self._ctrl = GdbController(command=[GDB, "--nx", "--quiet", "--interpreter=mi3"],
                                   time_to_check_for_additional_output_sec=0)
        proc = self._ctrl.gdb_process
        assert proc is not None
        self.proc: subprocess.Popen[bytes] = proc
        self._fds = [f for f in (proc.stdout, proc.stderr) if f is not None]
        self._tokens = itertools.count(100)
        self.pending: list[Record] = []  # async and stream records not yet consumed
        self.history: list[Record] = []  # everything, for failure messages
        self.mi_async = mi_async
        if cwd:
            self.ok(f"-environment-cd {cwd}")
        for setting in ("confirm off", "pagination off", "width 0", "height 0"):
            self.ok(f"-gdb-set {setting}")
        if mi_async:
            self.ok("-gdb-set mi-async on")

    # --- plumbing ------------------------------------------------------------------------------
    def _poll(self, until: float) -> list[Record]:
        """New records, waiting until some arrive or ``until`` (monotonic) passes."""
        remaining = max(0.0, until - time.monotonic())
        ready, _, _ = select.select(self._fds, [], [], remaining)
        if not ready:
            return []
        records = self._ctrl.get_gdb_response(timeout_sec=0, raise_error_on_timeout=False)
        self.history.extend(records)
        if not records and self.proc.poll() is not None:
            raise GdbMiError(f"gdb exited with status {self.proc.returncode}")
        return records

    def _tail(self, n: int = 30) -> str:
        return "\n".join(repr(r) for r in self.history[-n:])

    def send(self, text: str) -> int:
        """Write one MI command with a fresh token; returns the token (no waiting)."""
        token = next(self._tokens)
        self._ctrl.write(f"{token}{text}", read_response=False)
        return token

    def result(self, token: int, timeout: float = 10.0) -> Result:
        """Wait for the result record carrying ``token``; stream records seen meanwhile are
        collected into the result, async records are kept for ``wait_stopped``."""
        deadline = time.monotonic() + timeout
        out = Result({})
        # Stream records that arrived before (e.g. between two commands) belong to nobody.
        while True:
            records = self._poll(deadline)
            for i, rec in enumerate(records):
                if rec["type"] == "result" and rec.get("token") == token:
                    out.record = rec
                    self.pending.extend(records[i + 1:])  # e.g. the *stopped after ^running
                    return out
                if rec["type"] == "console":
                    out.console.append(rec["payload"] or "")
                elif rec["type"] == "log":
                    out.log.append(rec["payload"] or "")
                elif rec["type"] == "target":
                    out.target.append(rec["payload"] or "")
                self.pending.append(rec)
            if time.monotonic() >= deadline:
                raise GdbMiError(f"no result for token {token} within {timeout}s; last records:\n"
                                 f"{self._tail()}")

    def cmd(self, text: str, timeout: float = 10.0) -> Result:
        """Run one MI command (or ``-interpreter-exec console "..."``) and return its result."""
        return self.result(self.send(text), timeout)

    def ok(self, text: str, timeout: float = 10.0) -> Result:
        """Like ``cmd`` but the result must be ``^done``/``^running``/``^connected``."""
        res = self.cmd(text, timeout)
        if res.message == "error":
            raise GdbMiError(f"{text!r} failed: {res.error}\n{res.text}")
        return res

    def console(self, line: str, timeout: float = 10.0) -> Result:
        """A CLI command through MI (``-interpreter-exec console``); must not fail."""
        return self.ok(f"-interpreter-exec console {mi_quote(line)}", timeout)

    def wait_stopped(self, timeout: float = 10.0) -> Record:
        """The next ``*stopped`` async record (consumed with everything before it)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, rec in enumerate(self.pending):
                if rec["type"] == "notify" and rec["message"] == "stopped":
                    del self.pending[: i + 1]
                    return rec
            new = self._poll(deadline)
            self.pending.extend(new)
            if not new and time.monotonic() >= deadline:
                raise GdbMiError(f"no *stopped within {timeout}s; last records:\n{self._tail()}")

    def resume(self, text: str = "-exec-continue", timeout: float = 30.0) -> Record:
        """A run command (continue, stepi, ...) and the ``*stopped`` it ends with (an older
        unconsumed ``*stopped`` is dropped first, so it cannot be mistaken for this one)."""
        self.drain()
        self.pending = [r for r in self.pending if r.get("message") != "stopped"]
        res = self.cmd(text, timeout)
        if res.message not in ("running", "done"):
            raise GdbMiError(f"{text!r} failed: {res.error or res.record}")
        return self.wait_stopped(timeout)

    def drain(self) -> list[Record]:
        """Records that are already available, without waiting (also kept in ``pending``)."""
        new = self._poll(time.monotonic())
        self.pending.extend(new)
        return new

    # --- conveniences --------------------------------------------------------------------------
    def connect(self, elf: str, port: int, timeout: float = 20.0) -> Record:
        """``file ELF`` + ``target remote``; returns the ``*stopped`` gdb reports on connecting
        (it comes before ``^connected``)."""
        self.ok(f"-file-exec-and-symbols {mi_quote(elf)}")
        self.ok(f"-target-select remote 127.0.0.1:{port}", timeout)
        return self.wait_stopped(timeout)

    def evaluate(self, expr: str) -> str:
        return self.ok(f"-data-evaluate-expression {mi_quote(expr)}").payload["value"]

    def value(self, expr: str) -> int:
        """An integer expression's value (``$eip``, ``*(unsigned*)0x...``); ``output/x`` also
        works for registers of flags types, which refuse a C cast."""
        text = self.console(f"output/x {expr}").text.strip()
        return int(text, 16)

    def read_memory(self, addr: int, length: int) -> bytes:
        payload = self.ok(f"-data-read-memory-bytes {addr:#x} {length}").payload
        return bytes.fromhex("".join(m["contents"] for m in payload["memory"]))

    def registers(self, fmt: str = "x") -> dict[str, str]:
        """All registers by name, formatted by gdb (``-data-list-register-values``)."""
        names = self.ok("-data-list-register-names").payload["register-names"]
        values = self.ok(f"-data-list-register-values {fmt}").payload["register-values"]
        return {names[int(v["number"])]: v["value"] for v in values if names[int(v["number"])]}

    def interrupt(self, use_signal: bool = False) -> None:
        """Stop the running target: ``-exec-interrupt`` (async mode) or SIGINT to gdb, which
        makes gdb send the remote its Ctrl-C byte."""
        if use_signal:
            os.kill(self.proc.pid, signal.SIGINT)
        else:
            self.ok("-exec-interrupt")

    def close(self) -> None:
        """End gdb by its pid (terminate, then kill); the remote connection drops with it."""
        stop_process(self.proc)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def mi_quote(text: str) -> str:
    """An MI c-string argument."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def frame_line(stopped: Record) -> tuple[str, int] | None:
    """(file, line) of a ``*stopped`` record's frame, if gdb knows it."""
    frame = stopped["payload"].get("frame") or {}
    if "line" not in frame:
        return None
    return frame.get("file", ""), int(frame["line"])
