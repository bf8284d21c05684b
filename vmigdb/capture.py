"""``vmigdb capture``: run a guest under gdb with vmigdb loaded and stream its VMI trace to a file.

The driver starts the target (vmigdb's stub, or ``qemu-system-i386`` with its gdbstub), starts
gdb over MI (``vmigdb.mi``: tokens, no fixed waits), sources ``vmigdb.py``, connects with
``target extended-remote`` (so the stub still answers ``monitor`` after the guest exits), runs to
the guest's ELF entry point (the ROM is in place there on both targets), starts ``vmi trace`` and
lets the guest run. Events are pulled with the ``-vmi-trace-events SINCE`` MI command and
appended to the output as they arrive, flushed after every pull, so a killed capture leaves a
valid prefix; a finished one ends with an end record saying how it ended.

Pulling differs by path. The portable path (QEMU) records inside gdb, so gdb answers while the
guest runs (MI async mode). The stub records in the machine and gdb can only ask it while the
target is stopped, so the driver interrupts it every poll, pulls, and continues. QEMU closes the
socket when the guest exits, without a ``W`` packet (shared reference qemu-reference.md G6): that
is the exit, and the guest's code comes from QEMU's status, ``(code << 1) | 1``.

Children (target, gdb) are started with PR_SET_PDEATHSIG, so they die with the capture even
when it is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import vmigdb
from vmigdb import mi, targets
from vmigdb import trace as tr
from vmigdb.errors import VmiError

TARGETS = ("stub", "qemu")
#: The loader gdb sources: the repository's ``vmigdb.py`` next to the package.
LOADER = Path(vmigdb.__file__).resolve().parent.parent / "vmigdb.py"
#: Events asked for per ``-vmi-trace-events`` (one MI line each; ~150 bytes per event).
PULL_CHUNK = 5000
#: Seconds between pulls while the guest runs, by target. The stub must be interrupted for a
#: pull (its events are fetched with ``monitor``, which needs a stopped target), so it is asked
#: less often: the demo guest's whole traced run takes under a second there.
POLL_SECONDS = {"stub": 1.0, "qemu": 0.25}
START_TIMEOUT = 30.0


class CaptureError(VmiError):
    """The capture could not be set up: bad input, a target or gdb that would not start."""


# --- what to capture -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Until:
    """When the capture ends: the guest's exit, after N ROM calls, or at a gdb location."""

    kind: str  # "exit", "calls", "location"
    calls: int = 0
    location: str = ""

    @classmethod
    def parse(cls, text: str) -> Until:
        text = text.strip()
        if text in ("", "exit"):
            return cls("exit")
        if text.startswith("calls="):
            try:
                n = int(text[6:], 0)
            except ValueError:
                n = 0
            if n < 1:
                raise CaptureError(f"--until {text}: calls=N needs a positive number")
            return cls("calls", calls=n)
        return cls("location", location=text)

    def __str__(self) -> str:
        return {"exit": "exit", "calls": f"calls={self.calls}"}.get(self.kind, self.location)


@dataclass(frozen=True)
class Config:
    """One capture: the guest, the target, when to stop, where the trace goes."""

    guest: Path
    output: Path
    rom: Path | None = None
    cmdline: str = ""
    target: str = "stub"
    until: Until = field(default_factory=lambda: Until("exit"))
    gdb_script: Path | None = None
    timeout: float | None = None  # seconds of guest run time before giving up
    serial: Path | None = None  # where the guest's COM1 output goes (default: discarded)
    poll: float | None = None  # seconds between pulls (default: POLL_SECONDS by target)

    @property
    def poll_seconds(self) -> float:
        return self.poll if self.poll is not None else POLL_SECONDS[self.target]


@dataclass(frozen=True)
class Progress:
    """What a progress display shows after each pull."""

    events: int
    calls: int
    seconds: float
    state: str  # "starting", "running", "finishing"


@dataclass(frozen=True)
class Result:
    """How a capture ended."""

    status: str  # "exited" (the guest ended), "until" (the condition was met), "failed", "timeout"
    events: int
    calls: int
    seconds: float  # from the start of the guest run to the last event written
    source: str  # "stub" or "portable"
    guest_code: int | None = None  # the value the guest wrote to isa-debug-exit
    message: str = ""
    output: str = ""
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The guest did not fail: it exited with code 0, or the condition was met first."""
        return self.status == "until" or (self.status == "exited" and self.guest_code == 0)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {"status": self.status, "ok": self.ok, "guest_code": self.guest_code,
                "events": self.events, "calls": self.calls, "seconds": round(self.seconds, 3),
                "events_per_second": round(self.events_per_second, 1), "source": self.source,
                "message": self.message, "output": self.output}


def elf_entry(path: Path) -> int:
    """The ELF32 entry point: where both targets start the guest (the multiboot entry)."""
    try:
        head = path.read_bytes()[:0x1C]
    except OSError as e:
        raise CaptureError(f"cannot read guest {path}: {e.strerror}") from None
    if len(head) < 0x1C or head[:4] != b"\x7fELF" or head[4] != 1:
        raise CaptureError(f"{path} is not an ELF32 guest")
    return struct.unpack_from("<I", head, 0x18)[0]


def default_rom() -> Path:
    return LOADER.parent / "build" / "vmi_rom.bin"


def _one_line(text: str) -> str:
    """gdb's messages can span lines; the CLI prints one."""
    return " ".join(text.split())


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


# --- the driver ------------------------------------------------------------------------------------


class _Run:
    """One capture in progress: gdb, the target, the writer, and the pull/stop bookkeeping."""

    def __init__(self, cfg: Config, gdb: mi.Gdb, target: targets.Target, writer: tr.TraceWriter,
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.cfg = cfg
        self.gdb = gdb
        self.target = target
        self.writer = writer
        self.on_progress = on_progress
        self.next_seq = 0
        self.calls = 0
        self.cut = False  # calls=N: the (N+1)-th call was seen, later events are dropped
        self.start = time.monotonic()
        self.until_bp: str | None = None
        self.console: list[str] = []  # what the target printed (a fault's message)
        self.errors = 0
        self.last_error = ""

    # --- pulling ------------------------------------------------------------------------------
    def pull(self) -> None:
        """Every event gdb can give now, appended and flushed (one flush per MI answer)."""
        while True:
            res = self.gdb.ok(f"-vmi-trace-events {self.next_seq} {PULL_CHUNK}")
            p = res.payload or {}
            self.next_seq = int(p.get("next", self.next_seq))
            self.errors = int(p.get("errors", 0) or 0)
            self.last_error = p.get("last_error", "") or ""
            text = p.get("lines", "")
            if text:
                self._add(text)
                self.writer.flush()
            self._progress("running")
            if p.get("more") != "1" or self.cut:
                return

    def _add(self, text: str) -> None:
        limit = self.cfg.until.calls if self.cfg.until.kind == "calls" else None
        for n, line in enumerate(text.splitlines(), 1):
            if self.cut:
                return
            try:
                event = tr.event_from_json(json.loads(line))
            except (json.JSONDecodeError, ValueError) as e:
                raise CaptureError(f"gdb sent a bad trace line ({n} of the batch): {e}") from None
            if isinstance(event, tr.RomCall):
                if limit is not None and self.calls >= limit:
                    self.cut = True
                    return
                self.calls += 1
            self.writer.add(event)

    def _progress(self, state: str) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(self.writer.count, self.calls,
                                      time.monotonic() - self.start, state))

    # --- running ------------------------------------------------------------------------------
    def resume(self) -> None:
        res = self.gdb.cmd("-exec-continue")
        if res.message not in ("running", "done"):
            raise CaptureError(f"gdb could not resume the guest: {res.error}")

    def wait_stop(self, timeout: float) -> mi.Record:
        """The next ``*stopped`` (or connection close), keeping console text."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.gdb.take(max(deadline - time.monotonic(), 0.0))
            if rec is None:
                raise CaptureError(f"the target did not stop within {timeout:g} s")
            if mi.is_stopped(rec) or mi.connection_closed(rec):
                return rec
            self._keep_console(rec)

    def _keep_console(self, rec: mi.Record) -> None:
        if rec.get("type") in ("console", "target") and rec.get("payload"):
            self.console.append(rec["payload"])

    def interrupt(self) -> mi.Record:
        """Stop a running guest (the stub's Ctrl-C) and return the stop it reports (the guest
        may have ended meanwhile: then that is the stop)."""
        self.gdb.cmd("-exec-interrupt")
        return self.wait_stop(START_TIMEOUT)

    def loop(self) -> tuple[str, int | None, str]:
        """Run the guest until it ends or the condition is met: (status, guest code, message).
        On return the stub's target is stopped (its events can be pulled); QEMU may run on."""
        self.start = time.monotonic()
        self.resume()
        next_poll = self.start + self.cfg.poll_seconds
        while True:
            rec = self.gdb.take(max(next_poll - time.monotonic(), 0.0))
            if rec is not None and not (mi.is_stopped(rec) or mi.connection_closed(rec)):
                self._keep_console(rec)
                continue
            interrupting = False
            if rec is None:  # time to pull
                next_poll = time.monotonic() + self.cfg.poll_seconds
                if self.target.kind == "stub":
                    interrupting = True
                    rec = self.interrupt()
                else:
                    self.pull()
            if rec is not None:
                ended = self._stopped(rec, interrupting)
                if ended is not None:
                    return ended
                self.pull()
            if self.cut:
                return "until", None, f"{self.cfg.until.calls} ROM calls"
            if self.cfg.timeout is not None and time.monotonic() - self.start > self.cfg.timeout:
                return "timeout", None, f"the guest ran longer than {self.cfg.timeout:g} s"
            if rec is not None:
                self.resume()

    def _stopped(self, rec: mi.Record, interrupting: bool) -> tuple[str, int | None, str] | None:
        """What a stop means: the end (status, code, message), or None to pull and go on."""
        if mi.connection_closed(rec):  # QEMU: the guest wrote isa-debug-exit (or QEMU died)
            try:
                self.target.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            code = self.target.guest_code()
            if code is None:
                return "failed", None, (f"the target closed the connection without an exit "
                                        f"code (status {self.target.proc.poll()})")
            return "exited", code, f"the guest exited with code {code:#x}"
        p = rec.get("payload") or {}
        reason = p.get("reason", "")
        if reason == "exited-normally":
            return "exited", 0, "the guest exited with code 0x0"
        if reason == "exited":
            code = int(p.get("exit-code", "0"), 8)  # MI prints the exit code in octal
            return "exited", code, f"the guest exited with code {code:#x}"
        if reason == "exited-signalled":
            return "failed", None, f"the target ended with {p.get('signal-name', 'a signal')}"
        if reason == "breakpoint-hit" and p.get("bkptno") == self.until_bp:
            return "until", None, f"reached {self.cfg.until.location}"
        if reason == "signal-received" and not (interrupting and p.get("signal-name") == "SIGINT"):
            said = " ".join("".join(self.console).split())
            return "failed", None, (f"the guest stopped with {p.get('signal-name', '?')} at "
                                    f"{(p.get('frame') or {}).get('addr', '?')}"
                                    + (f": {said}" if said else ""))
        return None


def capture(cfg: Config, on_progress: Callable[[Progress], None] | None = None) -> Result:
    """Run one capture (see the module docstring); CaptureError when it cannot be set up."""
    if cfg.target not in TARGETS:
        raise CaptureError(f"unknown target {cfg.target!r} (stub or qemu)")
    entry = elf_entry(cfg.guest)
    rom = cfg.rom or default_rom()
    if not rom.is_file():
        raise CaptureError(f"cannot read ROM {rom}" + ("" if cfg.rom else " (build it with "
                                                          "`make rom`)"))
    if cfg.gdb_script is not None and not cfg.gdb_script.is_file():
        raise CaptureError(f"cannot read gdb script {cfg.gdb_script}")
    if not LOADER.is_file():
        raise CaptureError(f"vmigdb.py not found at {LOADER}")
    try:
        out = open(cfg.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise CaptureError(f"cannot write {cfg.output}: {e.strerror}") from None
    with out, tempfile.TemporaryDirectory(prefix="vmigdb-capture-") as tmp:
        writer = tr.TraceWriter(out, producer="vmigdb capture", target=cfg.target,
                                guest=str(cfg.guest.resolve()), rom=str(rom.resolve()),
                                cmdline=cfg.cmdline,
                                until=str(cfg.until))
        target: targets.Target | None = None
        gdb: mi.Gdb | None = None
        try:
            try:
                if cfg.target == "stub":
                    target = targets.start_stub(cfg.guest, rom, cfg.cmdline, Path(tmp),
                                                serial=cfg.serial)
                else:
                    target = targets.start_qemu(cfg.guest, rom, cfg.cmdline, Path(tmp),
                                                serial=cfg.serial)
                gdb = mi.Gdb(timeout=START_TIMEOUT)
                run = _Run(cfg, gdb, target, writer, on_progress)
                run._progress("starting")
                source, notes = _prepare(run, entry)
            except VmiError as e:
                writer.close(status="error", guest_code=None, message=str(e), seconds=0)
                raise
            try:
                status, code, message = run.loop()
                run._progress("finishing")
                run.pull()
                if run.cut and status != "until":  # the N-th call came before the guest's end
                    status, message = "until", f"{cfg.until.calls} ROM calls ({message} later)"
            except VmiError as e:  # gdb or the target failed under the run
                status, code, message = "failed", None, f"the capture failed: {e}"
            if run.errors:
                failed = f"{run.errors} trace hits failed to record (last: {run.last_error})"
                notes = (*notes, failed)
            seconds = time.monotonic() - run.start
            result = Result(status, writer.count, run.calls, seconds, source, code, message,
                            str(cfg.output), notes)
            writer.close(status=status, guest_code=code, message=message,
                         seconds=round(seconds, 3))
            return result
        finally:
            if gdb is not None:
                gdb.close()
            if target is not None:
                target.stop()


def _prepare(run: _Run, entry: int) -> tuple[str, tuple[str, ...]]:
    """Load vmigdb, connect, run to the entry point, source the user's script, start tracing,
    set the until breakpoint. Returns (trace source, notes from ``vmi trace start``)."""
    gdb, cfg = run.gdb, run.cfg
    gdb.console(f"source {LOADER}")
    have = gdb.ok("-info-gdb-mi-command vmi-trace-events").payload or {}
    if (have.get("command") or {}).get("exists") != "true":
        raise CaptureError("gdb could not load vmigdb.py (is vmigdb installed for gdb's "
                           "Python? see `gdb -x vmigdb.py`)")
    gdb.ok(f"-file-exec-and-symbols {mi.quote(str(cfg.guest))}")
    try:
        gdb.ok(f"-target-select extended-remote 127.0.0.1:{run.target.port}")
    except mi.GdbMiError as e:
        raise CaptureError(f"gdb could not connect to the {cfg.target}: "
                           f"{_one_line(str(e))}") from None
    gdb.pending.clear()  # the *stopped of the connection
    pc = int(gdb.ok("-data-evaluate-expression $pc").payload["value"].split()[0], 0)
    if pc != entry:
        gdb.ok(f"-break-insert -t *{entry:#x}")
        run.resume()
        stop = run.wait_stop(START_TIMEOUT)
        if (stop.get("payload") or {}).get("reason") != "breakpoint-hit":
            raise CaptureError(f"the guest did not reach its entry point {entry:#x}")
    if cfg.gdb_script is not None:
        try:
            gdb.console(f"source {cfg.gdb_script}")
        except mi.GdbMiError as e:
            raise CaptureError(f"--gdb-script: {_one_line(str(e))}") from None
    text = gdb.console("vmi trace start").text
    m = re.search(r"recording \((\w+) path\)", text)
    source = m.group(1) if m else "?"
    notes = tuple(ln.strip() for ln in text.splitlines()[1:] if ln.strip())
    if cfg.until.kind == "location":
        try:
            bp = gdb.ok(f"-break-insert {cfg.until.location}").payload["bkpt"]
        except mi.GdbMiError as e:
            raise CaptureError(f"--until {cfg.until.location}: {_one_line(str(e))}") from None
        run.until_bp = bp["number"]
    gdb.pending.clear()
    return source, notes


def result_line(result: Result) -> str:
    """The machine-readable summary: one JSON object."""
    return json.dumps(result.to_json())


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
