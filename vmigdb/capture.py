"""``vmigdb capture``: run a guest under gdb with vmigdb loaded and write its VMI trace to a file.

The driver starts the target (vmigdb's stub, or ``qemu-system-i386`` with its gdbstub), starts
gdb over MI (``vmigdb.mi``: tokens, no fixed waits) and connects with ``target
extended-remote`` (so the stub still answers ``monitor`` after the guest exits). gdb stays in
control throughout: the user's gdb script, breakpoints and ``--until`` work as at a prompt.

The two targets record differently. On the stub (the fast path) the stub writes the trace file
itself (``monitor vmi trace file``): its C hooks record each ROM call, a writer thread decodes
and compresses them into a version 2 trace (``vmigdb.tracefile``), and no event crosses the gdb
connection. Tracing starts before the guest's first instruction, so a Linux capture holds every
ROM call from reset; ``--until calls=N`` is the stub's call limit, which stops the guest at the
next call. With the kernel's symbols (``--symbols vmlinux``), each event also carries the
current task, named by pid and comm. On QEMU (the portable path) gdb records at breakpoints; the
driver pulls the events with ``-vmi-trace-events`` as the guest runs (MI async mode) and writes
them itself. QEMU closes the socket when the guest exits, without a ``W`` packet (shared
reference qemu-reference.md G6): that is the exit, and the guest's code comes from QEMU's status
(``vmigdb.debugexit``).

Either way the file ends with an end record saying how the capture ended, and a capture killed
at any moment leaves the batches written so far readable. Children (target, gdb) are started
with PR_SET_PDEATHSIG, so they die with the capture even when it is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from vmigdb.tracefile import TraceFileWriter

from vmigdb import elf, mi, resources, targets
from vmigdb import trace as tr
from vmigdb.errors import GuestImageError, VmiError

TARGETS = ("stub", "qemu")
#: The loader gdb sources: the repository's ``vmigdb.py`` next to the package.
LOADER = resources.gdb_script()
#: Events asked for per ``-vmi-trace-events`` (one MI line each; ~150 bytes per event).
PULL_CHUNK = 5000
#: Seconds between progress updates (the stub) or pulls (QEMU) while the guest runs.
POLL_SECONDS = {"stub": 0.5, "qemu": 0.25}
START_TIMEOUT = 30.0
#: gdb reads a Linux vmlinux's DWARF in ~6 s of CPU; its index cache makes later loads ~1 s.
GDB_OPTIONS = ("-iex", "set index-cache enabled on")


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
    initrd: Path | None = None  # a Linux guest's initramfs
    memory: int | None = None  # MiB of RAM (default: the target's, 128)
    symbols: Path | None = None  # the ELF with the guest's symbols (a bzImage's vmlinux)

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
    bytes: int = 0  # of trace file written (the stub's path counts events only at the end)


@dataclass(frozen=True)
class Result:
    """How a capture ended."""

    #: "exited" (the guest ended), "until" (the condition was met), "failed" (the guest or its
    #: target), "timeout", "error" (the capture's own failure: the trace file could not be written)
    status: str
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
    """The ELF entry point: where both targets start the guest (the multiboot entry)."""
    try:
        return elf.entry(path)
    except GuestImageError as e:
        raise CaptureError(f"{path}: {e}") from None


def default_rom() -> Path:
    return resources.rom()


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
        _keep_console(rec, self.console)

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
        return _ended(rec, self.target, self.until_bp, self.cfg.until, self.console, interrupting)


class _EventWriter:
    """The portable path's events, as they are pulled, into a version 2 trace file (numpy
    and Arrow are imported for this path only: the stub's path writes in the stub)."""

    def __init__(self, writer: TraceFileWriter) -> None:
        self.file = writer
        self._held: list[tr.Event] = []
        self.count = 0

    def add(self, event: tr.Event) -> None:
        self._held.append(event)
        self.count += 1

    def flush(self) -> None:
        from vmigdb import events as ev

        if self._held:
            self.file.add(ev.from_events(self._held))
            self._held.clear()
        self.file.flush()

    def close(self, **end: object) -> None:
        self.flush()
        self.file.close(**end)


def guest_kind(path: Path) -> str:
    """``elf`` (a multiboot guest) or ``bzimage`` (Linux); CaptureError for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x206)
    except OSError as e:
        raise CaptureError(f"cannot read guest {path}: {e.strerror}") from None
    if head[:4] == b"\x7fELF":
        return "elf"
    if len(head) == 0x206 and head[0x1FE:0x200] == b"\x55\xaa" and head[0x202:] == b"HdrS":
        return "bzimage"
    raise CaptureError(f"{path} is neither a multiboot ELF32 guest nor a Linux bzImage")


def capture(cfg: Config, on_progress: Callable[[Progress], None] | None = None) -> Result:
    """Run one capture (see the module docstring); CaptureError when it cannot be set up."""
    if cfg.target not in TARGETS:
        raise CaptureError(f"unknown target {cfg.target!r} (stub or qemu)")
    kind = guest_kind(cfg.guest)
    rom = cfg.rom or default_rom()
    if not rom.is_file():
        raise CaptureError(f"cannot read ROM {rom}" + ("" if cfg.rom else " (build it with "
                                                          "`make rom`)"))
    for what, path in (("gdb script", cfg.gdb_script), ("symbols", cfg.symbols),
                       ("initrd", cfg.initrd)):
        if path is not None and not path.is_file():
            raise CaptureError(f"cannot read {what} {path}")
    if cfg.initrd is not None and kind != "bzimage":
        raise CaptureError("--initrd needs a Linux bzImage guest")
    if not LOADER.is_file():
        raise CaptureError(f"vmigdb.py not found at {LOADER}")
    _check_writable(cfg.output)
    with tempfile.TemporaryDirectory(prefix="vmigdb-capture-") as tmp:
        if cfg.target == "stub":
            return _capture_stub(cfg, kind, rom, Path(tmp), on_progress)
        return _capture_portable(cfg, kind, rom, Path(tmp), on_progress)


def _check_writable(path: Path) -> None:
    """Fail here, in one line, rather than in the stub. A FIFO is not opened: its reader
    would see the end of the file when this check closes it."""
    if path.is_fifo():
        return
    try:
        with open(path, "wb"):
            pass
    except OSError as e:
        raise CaptureError(f"cannot write {path}: {e.strerror}") from None


def _header(cfg: Config, rom: Path) -> dict[str, object]:
    symbols = cfg.symbols or (cfg.guest if guest_kind(cfg.guest) == "elf" else None)
    return {"producer": "vmigdb capture", "target": cfg.target,
            "guest": str(cfg.guest.resolve()), "rom": str(rom.resolve()),
            "cmdline": cfg.cmdline, "until": str(cfg.until),
            "symbols": str(symbols.resolve()) if symbols else None,
            "initrd": str(cfg.initrd.resolve()) if cfg.initrd else None}


# --- the fast path: the stub writes the file ------------------------------------------------------


class _StubRun:
    """A capture on vmigdb's stub: gdb drives, the stub records and writes."""

    def __init__(self, cfg: Config, gdb: mi.Gdb, target: targets.Target,
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.cfg = cfg
        self.gdb = gdb
        self.target = target
        self.on_progress = on_progress
        self.start = time.monotonic()
        self.until_bp: str | None = None
        self.console: list[str] = []
        self.notes: list[str] = []

    def monitor(self, command: str) -> dict:
        """A ``monitor vmi ...`` command's JSON answer; CaptureError with its message if not."""
        try:
            text = self.gdb.console(f"monitor {command}").text
        except mi.GdbMiError as e:
            raise CaptureError(f"the stub refused `monitor {command}`: "
                               f"{_one_line(str(e))}") from None
        try:
            value = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise CaptureError(f"`monitor {command}`: {_one_line(text) or 'no answer'}")
        return value

    def progress(self, state: str) -> None:
        if self.on_progress is not None:
            try:
                size = self.cfg.output.stat().st_size
            except OSError:
                size = 0
            self.on_progress(Progress(0, 0, time.monotonic() - self.start, state, size))

    def prepare(self, header: dict[str, object], symbols: Path | None,
                loading: int | None) -> None:
        """Connect and set the stub up. ``loading``: the token of the symbol load gdb began
        while the stub started."""
        gdb, cfg = self.gdb, self.cfg
        if loading is not None:
            res = gdb.result(loading, timeout=300)
            if res.message == "error":
                raise CaptureError(f"--symbols {symbols}: {_one_line(res.error)}")
        if cfg.gdb_script is not None:  # the capture itself needs no vmi commands in gdb
            _load_vmigdb(gdb)
        _connect(gdb, self.target, cfg.target)
        spec = {"path": str(cfg.output.resolve()), **header}
        opened = self.monitor(f"vmi trace file {json.dumps(spec)}")
        if "file" not in opened:
            raise CaptureError("the stub did not open the trace file")
        if symbols is not None:
            self._tasks()
        if cfg.until.kind == "calls":
            self.monitor(f"vmi trace limit {cfg.until.calls}")
        self.monitor("vmi trace start")
        if cfg.gdb_script is not None:
            try:
                gdb.console(f"source {cfg.gdb_script}")
            except mi.GdbMiError as e:
                raise CaptureError(f"--gdb-script: {_one_line(str(e))}") from None
        self.until_bp = _until_breakpoint(gdb, cfg.until)
        gdb.pending.clear()

    def _tasks(self) -> None:
        """Linux: stamp events with the current task (``current_task``, per cpu) and name
        tasks by ``task_struct.pid`` and ``.comm``, at the addresses the symbols give."""
        def value(expr: str) -> int | None:
            try:
                res = self.gdb.ok(f"-data-evaluate-expression "
                                  f"{mi.quote(f'(unsigned long)({expr})')}")
                return int(res.payload["value"].split()[0], 0)
            except (mi.GdbMiError, ValueError, IndexError):
                return None

        var = value("&per_cpu__current_task")
        if var is None:
            var = value("&current_task")
        if var is None:
            return  # not a Linux kernel's symbols: events carry no task
        offset = value("&__per_cpu_offset") or 0
        pid_at = value("&((struct task_struct *)0)->pid")
        comm_at = value("&((struct task_struct *)0)->comm")
        names = f" {pid_at:#x} {comm_at:#x}" if pid_at is not None and comm_at is not None else ""
        self.monitor(f"vmi trace task {var:#x} {offset:#x}{names}")
        self.notes.append("events carry the current task" + (", named" if names else ""))

    def loop(self) -> tuple[str, int | None, str]:
        """Run the guest to its end, the until condition or the timeout."""
        cfg, gdb = self.cfg, self.gdb
        self.start = time.monotonic()
        _resume(gdb)
        interrupting = False
        while True:
            rec = gdb.take(cfg.poll_seconds)
            if rec is None:
                elapsed = time.monotonic() - self.start
                self.progress("running")
                if cfg.timeout is not None and elapsed > cfg.timeout and not interrupting:
                    gdb.cmd("-exec-interrupt")
                    interrupting = True
                continue
            if not (mi.is_stopped(rec) or mi.connection_closed(rec)):
                _keep_console(rec, self.console)
                continue
            if interrupting:
                return "timeout", None, f"the guest ran longer than {cfg.timeout:g} s"
            ended = _ended(rec, self.target, self.until_bp, cfg.until, self.console)
            if ended is None and _is_sigtrap(rec):
                st = self.monitor("vmi trace status")
                if st.get("limit_hit"):
                    return "until", None, f"{cfg.until.calls} ROM calls"
                where = ((rec.get("payload") or {}).get("frame") or {}).get("addr", "?")
                ended = ("failed", None, f"the guest stopped with SIGTRAP at {where}")
            if ended is not None:
                return ended
            _resume(gdb)  # a stop of the user's script: the capture passes through


def _capture_stub(cfg: Config, kind: str, rom: Path, tmp: Path,
                  on_progress: Callable[[Progress], None] | None) -> Result:
    symbols = cfg.symbols or (cfg.guest if kind == "elf" else None)
    target: targets.Target | None = None
    gdb: mi.Gdb | None = None
    try:
        try:  # gdb starts and reads the symbols while the stub starts
            gdb = mi.Gdb(GDB_OPTIONS, timeout=START_TIMEOUT)
            loading = (gdb.send(f"-file-exec-and-symbols {mi.quote(str(symbols))}")
                       if symbols is not None else None)
            target = targets.start_stub(cfg.guest, rom, cfg.cmdline, tmp, serial=cfg.serial,
                                        initrd=cfg.initrd, memory_mib=cfg.memory)
        except VmiError as e:
            raise CaptureError(str(e)) from None
        run = _StubRun(cfg, gdb, target, on_progress)
        run.progress("starting")
        run.prepare(_header(cfg, rom), symbols, loading)
        try:
            status, code, message = run.loop()
        except VmiError as e:  # gdb or the target failed under the run
            status, code, message = "failed", None, f"the capture failed: {e}"
        seconds = time.monotonic() - run.start
        run.progress("finishing")
        end = {"status": status, "guest_code": code, "message": message,
               "seconds": round(seconds, 3), "target": "stub", "until": str(cfg.until)}
        try:
            closed = run.monitor(f"vmi trace file close {json.dumps(end)}")
        except CaptureError as e:
            return Result("failed", 0, 0, seconds, "stub", code, f"the capture failed: {e}",
                          str(cfg.output), tuple(run.notes))
        calls = int(closed.get("calls", 0))
        if closed.get("error"):  # the capture's fault (a full disk), not the guest's
            status, message = "error", str(closed["error"])
        return Result(status, int(closed.get("events", 0)), calls, seconds, "stub", code,
                      message, str(cfg.output), tuple(run.notes))
    finally:
        if gdb is not None:
            gdb.close()
        if target is not None:
            target.stop()


# --- the portable path: gdb records, the driver writes ------------------------------------------


def _capture_portable(cfg: Config, kind: str, rom: Path, tmp: Path,
                      on_progress: Callable[[Progress], None] | None) -> Result:
    from vmigdb.tracefile import TraceFileWriter

    try:
        file = TraceFileWriter(cfg.output, clock="none", **_header(cfg, rom))
    except OSError as e:
        raise CaptureError(f"cannot write {cfg.output}: {e.strerror}") from None
    writer = _EventWriter(file)
    target: targets.Target | None = None
    gdb: mi.Gdb | None = None
    try:
        try:
            if kind == "elf":
                target = targets.start_qemu(cfg.guest, rom, cfg.cmdline, tmp, serial=cfg.serial)
            else:
                target = targets.start_qemu_linux(cfg.guest, cfg.initrd, rom, cfg.cmdline, tmp,
                                                  serial=cfg.serial,
                                                  memory_mib=cfg.memory or 128)
            gdb = mi.Gdb(GDB_OPTIONS, timeout=START_TIMEOUT)
            run = _Run(cfg, gdb, target, writer, on_progress)
            run._progress("starting")
            source, notes = _prepare(run, elf_entry(cfg.guest) if kind == "elf" else None,
                                     cfg.symbols or (cfg.guest if kind == "elf" else None))
        except VmiError as e:
            writer.close(status="error", guest_code=None, message=str(e), seconds=0)
            raise CaptureError(str(e)) from None
        try:
            status, code, message = run.loop()
            run._progress("finishing")
            run.pull()
            if run.cut and status != "until":  # the N-th call came before the guest's end
                status, message = "until", f"{cfg.until.calls} ROM calls ({message} later)"
        except VmiError as e:  # gdb or the target failed under the run
            status, code, message = "failed", None, f"the capture failed: {e}"
        if run.errors:
            notes = (*notes, (f"{run.errors} trace hits failed to record (last: "
                              f"{run.last_error})"))
        seconds = time.monotonic() - run.start
        result = Result(status, writer.count, run.calls, seconds, source, code, message,
                        str(cfg.output), notes)
        writer.close(status=status, guest_code=code, message=message,
                     seconds=round(seconds, 3))
        return result
    except OSError as e:
        file.abort()
        raise CaptureError(f"cannot write {cfg.output}: {e.strerror or e}") from None
    finally:
        if gdb is not None:
            gdb.close()
        if target is not None:
            target.stop()


def _load_vmigdb(gdb: mi.Gdb) -> None:
    gdb.console(f"source {LOADER}")
    have = gdb.ok("-info-gdb-mi-command vmi-trace-events").payload or {}
    if (have.get("command") or {}).get("exists") != "true":
        raise CaptureError("gdb could not load vmigdb.py (is vmigdb installed for gdb's "
                           "Python? see `gdb -x vmigdb.py`)")


def _connect(gdb: mi.Gdb, target: targets.Target, name: str) -> None:
    try:
        gdb.ok(f"-target-select extended-remote 127.0.0.1:{target.port}")
    except mi.GdbMiError as e:
        raise CaptureError(f"gdb could not connect to the {name}: "
                           f"{_one_line(str(e))}") from None
    gdb.pending.clear()  # the *stopped of the connection


def _until_breakpoint(gdb: mi.Gdb, until: Until) -> str | None:
    if until.kind != "location":
        return None
    try:
        return gdb.ok(f"-break-insert {until.location}").payload["bkpt"]["number"]
    except mi.GdbMiError as e:
        raise CaptureError(f"--until {until.location}: {_one_line(str(e))}") from None


def _resume(gdb: mi.Gdb) -> None:
    res = gdb.cmd("-exec-continue")
    if res.message not in ("running", "done"):
        raise CaptureError(f"gdb could not resume the guest: {res.error}")


def _keep_console(rec: mi.Record, console: list[str]) -> None:
    if rec.get("type") in ("console", "target") and rec.get("payload"):
        console.append(rec["payload"])


def _is_sigtrap(rec: mi.Record) -> bool:
    p = rec.get("payload") or {}
    return p.get("reason") == "signal-received" and p.get("signal-name") == "SIGTRAP"


#: The console line vmigdb's stub prints with the stop it reports at the guest's exit (a T05,
#: as gdb's ``catch exit`` would stop; the next continue would end the guest with ``W``).
_STUB_EXIT = re.compile(r"the guest exited with code (0x[0-9a-fA-F]+)")


def _ended(rec: mi.Record, target: targets.Target, until_bp: str | None, until: Until,
           console: list[str], interrupting: bool = False
           ) -> tuple[str, int | None, str] | None:
    """What a stop means: the end (status, code, message), or None to go on. vmigdb's stub
    stops at the guest's exit first (SIGTRAP, the code in its console line): that is the end,
    with the guest left at its exit while the trace file is closed."""
    if mi.connection_closed(rec):  # QEMU: the guest wrote isa-debug-exit (or QEMU died)
        try:
            target.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        code = target.guest_code()
        if code is None:
            return "failed", None, (f"the target closed the connection without an exit "
                                    f"code (status {target.proc.poll()})")
        return "exited", code, f"the guest exited with code {code:#x}"
    p = rec.get("payload") or {}
    reason = p.get("reason", "")
    if reason == "signal-received" and p.get("signal-name") == "SIGTRAP":
        said = _STUB_EXIT.findall("".join(console))
        if said and target.kind == "stub":
            code = int(said[-1], 16)
            return "exited", code, f"the guest exited with code {code:#x}"
    if reason == "exited-normally":
        return "exited", 0, "the guest exited with code 0x0"
    if reason == "exited":
        code = int(p.get("exit-code", "0"), 8)  # MI prints the exit code in octal
        return "exited", code, f"the guest exited with code {code:#x}"
    if reason == "exited-signalled":
        return "failed", None, f"the target ended with {p.get('signal-name', 'a signal')}"
    if reason == "breakpoint-hit" and until_bp is not None and p.get("bkptno") == until_bp:
        return "until", None, f"reached {until.location}"
    if reason == "signal-received" and p.get("signal-name") != "SIGTRAP" and not (
            interrupting and p.get("signal-name") == "SIGINT"):
        said = " ".join("".join(console).split())
        return "failed", None, (f"the guest stopped with {p.get('signal-name', '?')} at "
                                f"{(p.get('frame') or {}).get('addr', '?')}"
                                + (f": {said}" if said else ""))
    return None


def _prepare(run: _Run, entry: int | None, symbols: Path | None
             ) -> tuple[str, tuple[str, ...]]:
    """The portable path: load vmigdb, connect, run to the entry point (the ROM is in place
    there), source the user's script, start tracing, set the until breakpoint. Returns (trace
    source, notes from ``vmi trace start``)."""
    gdb, cfg = run.gdb, run.cfg
    _load_vmigdb(gdb)
    if symbols is not None:
        gdb.ok(f"-file-exec-and-symbols {mi.quote(str(symbols))}", timeout=300)
    _connect(gdb, run.target, cfg.target)
    pc = int(gdb.ok("-data-evaluate-expression $pc").payload["value"].split()[0], 0)
    if entry is not None and pc != entry:
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
    run.until_bp = _until_breakpoint(gdb, cfg.until)
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
