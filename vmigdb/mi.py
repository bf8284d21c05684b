"""Drive a real gdb over MI with pygdbmi, one token per command, no fixed waits.

Why tokens: pygdbmi's ``write()`` waits 0.2 s for "more output" after every command (shared
reference unicorn-facts.md section 5). Here each command carries a numeric token, is written
with ``read_response=False``, and the reader polls (``select`` + ``get_gdb_response`` with no
wait) until the result record with that token arrives: a command costs what gdb needs (~0.3 ms).

Async records (``*stopped``, ``=thread-group-exited``, the "Remote connection closed" log line)
are queued in arrival order for the caller (``take``, ``wait_stopped``). gdb is started by this
module (not by pygdbmi), so it can be told to die with its parent: a capture killed with SIGKILL
leaves no gdb behind. ``capture`` and the tests both drive gdb through this one class; ``GDB``
is the one place the gdb binary is named.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import select
import signal
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pygdbmi.IoManager import IoManager

from vmigdb.errors import VmiError

#: The gdb every part of vmigdb starts (capture, the demo, the tests, the bench).
GDB = "gdb"
_PR_SET_PDEATHSIG = 1
#: Records kept for error messages (``GdbMiError`` shows the last of them).
_HISTORY = 60

Record = dict[str, Any]


class GdbMiError(VmiError):
    """gdb did not answer in time, died, or answered ``^error`` where success was required."""


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGKILL them when the process that started them dies
    (Linux PR_SET_PDEATHSIG), so a killed capture cannot leave a target or gdb running."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the caller's process group still works
        pass


@dataclass
class Result:
    """A command's result record and the text gdb printed while running it: ``console`` holds
    the console and target streams (CLI output, ``monitor`` replies), ``log`` gdb's own
    messages (warnings, errors)."""

    record: Record
    console: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return self.record.get("message") or ""  # done, running, connected, error, exit

    @property
    def payload(self) -> Any:
        return self.record.get("payload")

    @property
    def text(self) -> str:
        """What the command printed (console and target streams)."""
        return "".join(self.console)

    @property
    def output(self) -> str:
        """Everything gdb printed for the command, its log stream included."""
        return self.text + "".join(self.log)

    @property
    def error(self) -> str:
        return (self.payload or {}).get("msg", "") if self.message == "error" else ""


class Gdb:
    """One gdb process speaking MI3. ``mi_async`` (the default) accepts commands while the
    target runs; without it gdb behaves as at a terminal (SIGINT to gdb interrupts the target).
    """

    def __init__(self, args: Sequence[str] = (), *, gdb: str = GDB, timeout: float = 20.0,
                 mi_async: bool = True, cwd: str | None = None) -> None:
        # The settings go on the command line, not as MI commands after the start: the
        # constructor then returns at once, and the caller starts a target while gdb starts.
        settings = ["confirm off", "pagination off", "width 0", "height 0"]
        if mi_async:
            settings.append("mi-async on")
        early = [a for setting in settings for a in ("-iex", f"set {setting}")]
        argv = [gdb, "--nx", "--quiet", "--interpreter=mi3", *early, *args]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0, cwd=cwd,
                                         preexec_fn=die_with_parent)  # noqa: PLW1509
        except OSError as e:
            raise GdbMiError(f"cannot start {gdb}: {e.strerror}") from None
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self._io = IoManager(self.proc.stdin, self.proc.stdout, self.proc.stderr, 0)
        self._fds = [self.proc.stdout.fileno(), self.proc.stderr.fileno()]
        self._tokens = itertools.count(1)
        self.timeout = timeout
        #: async and stream records not consumed by a command, in arrival order
        self.pending: deque[Record] = deque()
        #: the last records seen, for error messages
        self.history: deque[Record] = deque(maxlen=_HISTORY)

    # --- plumbing ------------------------------------------------------------------------------
    def poll(self, wait: float = 0.0) -> list[Record]:
        """Records available within ``wait`` seconds (none if nothing came)."""
        ready, _, _ = select.select(self._fds, [], [], max(wait, 0.0))
        if not ready:
            return []
        records = self._io.get_gdb_response(timeout_sec=0, raise_error_on_timeout=False)
        if not records and self.proc.poll() is not None:
            raise GdbMiError(f"gdb exited with status {self.proc.returncode}")
        self.history.extend(records)
        return records

    def tail(self) -> str:
        """The last records gdb sent, one per line (for a failure message)."""
        return "\n".join(repr(r) for r in self.history)

    def send(self, command: str) -> int:
        """Write one MI command with a fresh token; returns the token (no waiting)."""
        token = next(self._tokens)
        try:
            self._io.write(f"{token}{command}", timeout_sec=self.timeout, read_response=False)
        except (OSError, ValueError):
            raise GdbMiError(f"gdb is gone (status {self.proc.poll()})") from None
        return token

    def result(self, token: int, timeout: float | None = None) -> Result:
        """Wait for the result record carrying ``token``; stream text seen meanwhile is
        collected into it, and every other record (those after it too) is queued in
        ``pending``."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        out = Result({})
        while True:
            records = self.poll(deadline - time.monotonic())
            for i, rec in enumerate(records):
                if rec["type"] == "result" and rec.get("token") == token:
                    out.record = rec
                    self.pending.extend(records[i + 1:])  # e.g. the *stopped after ^running
                    return out
                if rec["type"] in ("console", "target"):
                    out.console.append(rec.get("payload") or "")
                elif rec["type"] == "log":
                    out.log.append(rec.get("payload") or "")
                self.pending.append(rec)
            if time.monotonic() >= deadline:
                raise GdbMiError(f"gdb gave no answer to command {token} within {limit:g} s; "
                                 f"last records:\n{self.tail()}")

    def cmd(self, command: str, timeout: float | None = None) -> Result:
        return self.result(self.send(command), timeout)

    def ok(self, command: str, timeout: float | None = None) -> Result:
        """Like ``cmd``, but ``^error`` raises GdbMiError with gdb's message."""
        res = self.cmd(command, timeout)
        if res.message == "error":
            raise GdbMiError(res.error or f"{command}: failed")
        return res

    def console(self, line: str, timeout: float | None = None) -> Result:
        """A CLI command through MI (``-interpreter-exec console``); ``^error`` raises."""
        return self.ok(f"-interpreter-exec console {quote(line)}", timeout)

    def take(self, wait: float = 0.0) -> Record | None:
        """The next queued async record, waiting up to ``wait`` seconds for one."""
        deadline = time.monotonic() + wait
        while not self.pending:
            new = self.poll(deadline - time.monotonic())
            self.pending.extend(new)
            if not new and time.monotonic() >= deadline:
                return None
        return self.pending.popleft()

    def drain(self) -> list[Record]:
        """Records that are already there, without waiting (also queued in ``pending``)."""
        new = self.poll(0.0)
        self.pending.extend(new)
        return new

    def wait_stopped(self, timeout: float | None = None) -> Record:
        """The next ``*stopped`` record; the records queued before it are consumed with it."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            rec = self.take(max(deadline - time.monotonic(), 0.0))
            if rec is None:
                raise GdbMiError(f"no *stopped within {limit:g} s; last records:\n"
                                 f"{self.tail()}")
            if is_stopped(rec):
                return rec

    def close(self) -> None:
        """End gdb by its pid (kill: a driver has what it needs; gdb owes nothing)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    # --- conveniences --------------------------------------------------------------------------
    def resume(self, command: str = "-exec-continue", timeout: float | None = None) -> Record:
        """A run command (continue, stepi, ...) and the ``*stopped`` it ends with; a
        ``*stopped`` still queued from before is dropped first, so it cannot pass for this
        one."""
        self.drain()
        self.pending = deque(r for r in self.pending if not is_stopped(r))
        res = self.cmd(command, timeout)
        if res.message not in ("running", "done"):
            raise GdbMiError(f"{command!r} failed: {res.error or res.record}")
        return self.wait_stopped(timeout)

    def connect(self, elf: str, port: int, timeout: float | None = None,
                host: str = "127.0.0.1") -> Record:
        """``file ELF`` and ``target remote HOST:PORT``; returns the ``*stopped`` gdb reports
        on connecting."""
        self.ok(f"-file-exec-and-symbols {quote(elf)}")
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.ok(f"-target-select remote {address}", timeout)
        return self.wait_stopped(timeout)

    def evaluate(self, expr: str) -> str:
        return self.ok(f"-data-evaluate-expression {quote(expr)}").payload["value"]

    def value(self, expr: str) -> int:
        """An integer expression's value (``$eip``, ``*(unsigned*)0x...``); ``output/x`` also
        works for registers of flags types, which refuse a C cast."""
        return int(self.console(f"output/x {expr}").text.strip(), 16)

    def read_memory(self, addr: int, length: int) -> bytes:
        payload = self.ok(f"-data-read-memory-bytes {addr:#x} {length}").payload
        return bytes.fromhex("".join(m["contents"] for m in payload["memory"]))

    def registers(self, fmt: str = "x") -> dict[str, str]:
        """All registers by name, formatted by gdb (``-data-list-register-values``)."""
        names = self.ok("-data-list-register-names").payload["register-names"]
        values = self.ok(f"-data-list-register-values {fmt}").payload["register-values"]
        return {names[int(v["number"])]: v["value"] for v in values if names[int(v["number"])]}

    def interrupt(self, use_signal: bool = False) -> None:
        """Stop the running target: ``-exec-interrupt`` (async mode), or SIGINT to gdb, which
        sends the remote its Ctrl-C byte (as at a terminal)."""
        if use_signal:
            os.kill(self.proc.pid, signal.SIGINT)
        else:
            self.ok("-exec-interrupt")


def quote(text: str) -> str:
    """An MI c-string argument."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def is_stopped(rec: Record) -> bool:
    return rec.get("type") == "notify" and rec.get("message") == "stopped"


def connection_closed(rec: Record) -> bool:
    """True for the records gdb gives when the remote closes the socket (QEMU at guest exit:
    no ``W`` packet, shared reference qemu-reference.md G6)."""
    return rec.get("type") == "log" and "Remote connection closed" in (rec.get("payload") or "")
