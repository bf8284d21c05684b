"""``vmi trace ...`` and ``vmi profile``: record ROM calls and show them (portable breakpoints or
the stub), with each call's Linux context (its caller, its task) where the guest has one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import gdb
import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from vmigdb import context
from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.abi import VmiCall
from vmigdb.commands import target, tracesource
from vmigdb.commands.vmi import ArgParser, complete_options, guarded, write
from vmigdb.errors import VmiError
from vmigdb.views.console import fit_columns
from vmigdb.views.trace import call_counts, render_profile, render_trace

_ACTIONS = ("start", "stop", "clear", "status", "save")


def source_or_fail() -> tracesource.TraceSource:
    src = tracesource.current(create=False)
    if src is None:
        src = tracesource.current()
    if src is None:
        raise VmiError("no trace events yet: `vmi trace start`, then continue the guest")
    return src


def events_or_fail() -> Sequence[tr.Event]:
    src = source_or_fail()
    events = src.events()
    if not events and getattr(src, "closed", False):
        raise VmiError("no trace events: the connection closed before any were fetched "
                       "(the stub keeps them; vmi trace fetches them while connected)")
    if not events:
        raise VmiError("no trace events yet: `vmi trace start`, then continue the guest")
    return events


def parse_calls(text: str, parser: ArgParser) -> list[VmiCall]:
    """Call names as abi.py spells them; a wrong one fails with the command's usage."""
    return [parser.call_name(name.strip()) for name in text.split(",")]


# --- the calls' Linux context ------------------------------------------------------------------


def name(addr: int) -> str:
    """gdb's ``function+offset`` for an address ('' when none)."""
    return target.symbolize(addr) if addr else ""


_first_calls: dict[int, bool] = {}


def first_call(addr: int) -> bool:
    """Whether the return address ``addr`` directly follows its function's first instruction, a
    call (``arch_enter_lazy_mmu_mode``: ``call *pv_mmu_ops...``): the code is read from the
    guest (or from vmlinux once the target is gone), the rule is ``context.is_first_call``."""
    if addr not in _first_calls:
        func, _, off = name(addr).partition("+")
        offset = int(off) if off.isdigit() else 0
        code = b""
        if func and 2 <= offset <= 7:
            try:
                code = gdb.selected_inferior().read_memory(addr - offset, offset).tobytes()
            except (gdb.error, gdb.MemoryError):
                code = b""
        _first_calls[addr] = context.is_first_call(code)
    return _first_calls[addr]


def call_context(src: tracesource.TraceSource
                 ) -> tuple[context.CallContext, context.TaskNames] | None:
    """The source's call context and task names, when its calls have any."""
    ctx = getattr(src, "context", None)
    tasks = getattr(src, "tasks", None)
    if ctx is None or tasks is None or not len(ctx):
        return None
    return ctx, tasks


def caller_text(ret: int, frame: int) -> str:
    """The caller as a row shows it: the return address's function+offset, and for a call
    Linux's vmi_* glue made, the glue's caller after it (``vmi_set_pte_at+60 <- copy_pte_range``)."""
    here = name(ret) or f"{ret:#x}"
    if context.function_of(here) in context.GLUE:
        above = context.function_of(name(frame)) if frame else ""
        here += f" <- {above or '?'}"
    return here


def describer(ctx: context.CallContext, tasks: context.TaskNames):
    def describe(e: tr.RomCall) -> tuple[str, str]:
        row = ctx.at(e.seq)
        if row is None:
            return (name(e.site + 5) or f"{e.site + 5:#x}") if e.site else "-", ""
        return caller_text(int(row["ret"]), int(row["frame"])), tasks.label(int(row["task"]),
                                                                          e.seq)
    return describe


def select_rows(rows: np.ndarray, tasks: context.TaskNames, *, task: str | None = None,
                caller: str | None = None, calls: Sequence[VmiCall] | None = None
                ) -> np.ndarray:
    """The context rows of the calls a ``--task``/``--caller``/``--call`` filter keeps.
    ``--task PID|COMM``: the call's task had that pid or comm when it made the call.
    ``--caller FUNC``: the call's kernel caller is FUNC (the function holding the return
    address, or past Linux's vmi_* glue the glue's caller), or FUNC is the glue itself."""
    keep = np.ones(len(rows), bool)
    if calls:
        keep &= np.isin(rows["call"], [int(c) for c in calls])
    if task:
        keep &= tasks.mask(task, rows["task"], rows["seq"])
    if caller:
        pairs = np.unique(np.stack((rows["ret"], rows["frame"]), axis=1)[keep], axis=0)
        hit = [(r, f) for r, f in pairs.tolist()
               if caller in context.kernel_caller(r, f, name)]
        if hit:
            want = np.array(hit, np.uint32)
            key = rows["ret"].astype(np.uint64) << np.uint64(32) | rows["frame"]
            wanted = want[:, 0].astype(np.uint64) << np.uint64(32) | want[:, 1]
            keep &= np.isin(key, wanted)
        else:
            keep[:] = False
    return rows[keep]


def events_between(events: Sequence[tr.Event], first: int | None, last: int | None
                   ) -> Iterator[tr.Event]:
    """The events with first <= seq <= last; over the stub's columns, only the chunks that
    hold them are turned into objects."""
    lo = -1 if first is None else first
    hi = (1 << 64) if last is None else last
    if isinstance(events, ev.EventList):
        for chunk in events.chunks:
            seqs = chunk["seq"]
            if not len(seqs) or int(seqs[-1]) < lo or int(seqs[0]) > hi:
                continue
            yield from ev.to_events(chunk.select((seqs >= lo) & (seqs <= hi)))
        return
    for e in events:
        if lo <= e.seq <= hi:
            yield e


def counts_by_call(events: Sequence[tr.Event]) -> dict[str, int]:
    """ROM calls by name, most first (over columns for the stub's events)."""
    if not isinstance(events, ev.EventList):
        return call_counts(events)
    total = np.zeros(256, np.int64)
    for chunk in events.chunks:
        calls = chunk["call"][chunk["kind"] == ev.Kind.CALL]
        total += np.bincount(calls, minlength=256)
    named = {ev.CALL_NAMES.get(c, str(c)): int(n) for c, n in enumerate(total.tolist()) if n}
    return dict(sorted(named.items(), key=lambda kv: (-kv[1], kv[0])))


class VmiTrace(gdb.Command):
    """Trace VMI ROM calls without stopping the guest, and show the trace.

Usage:
  vmi trace start [--rom ADDR] [--calls NAME,...] [--no-returns] [--portable]
  vmi trace stop | clear | status
  vmi trace [N] [--call NAME] [--since SEQ] [--all] [--task NAME|PID] [--caller FUNC]
  vmi trace save FILE [--since SEQ] [--until SEQ] [--task NAME|PID] [--caller FUNC]
                      [--no-interrupts]

N is a positive number of rows; NAME a VMI call as abi.py spells it (Tab completes both calls
and options).
On vmigdb's stub the machine records (fast path, fetched as its raw log); on any other target
(QEMU) internal breakpoints on the ROM entries, return addresses and the ROM's flush
announcement record and resume (about 1.5 ms per hit on QEMU: trace short stretches, or limit
--calls). Started before the guest can reach its ROM (QEMU at reset) the portable path arms
itself at the kernel's vmi_init (the demo guest: its entry) and records from there; a ROM the
guest copies to RAM later is hooked when the guest stores its address. Ctrl-C stops a traced
continue at the next hit.
The table shows the last N rows (default 20): seq, call, arguments decoded by their ABI kind,
results, and where the call came from. On Linux (vmlinux loaded) each call shows its caller,
the return address as function+offset (exact for Linux's 5-byte `call rel32`, 6-byte
`call *pv_op` and 2-byte `call *%reg` alike; a call Linux's vmi_* glue made also names the
glue's caller), and its task (pid and comm, from the kernel's per-cpu current_task).
--task and --caller keep the calls of that task (pid or comm) or kernel caller (function).
`save` writes the JSON-lines trace (version 1), all of it or a selection; --no-interrupts
leaves out the calls made in interrupt handlers (those that end with an IRET back to kernel
mode) with everything they caused.
Example: vmi trace start; continue; vmi trace 50 --call SetPxE --task init"""

    def __init__(self) -> None:
        super().__init__("vmi trace", gdb.COMMAND_DATA)
        self.start_parser = ArgParser(prog="vmi trace start", add_help=False)
        self.start_parser.add_argument("--rom", help="hook the ROM at this linear address")
        self.start_parser.add_argument("--calls", help="only these calls (comma-separated)")
        self.start_parser.add_argument("--no-returns", action="store_true",
                                       help="do not record returns (half the hits)")
        self.start_parser.add_argument("--portable", action="store_true",
                                       help="use gdb breakpoints even on vmigdb's stub")
        self.show_parser = ArgParser(prog="vmi trace", add_help=False)
        self.show_parser.add_argument("n", nargs="?", type=int, default=20,
                                      help="rows to show (the last N)")
        self.show_parser.add_argument("--call", help="only calls of this name")
        self.show_parser.add_argument("--since", help="only events from this seq")
        self.show_parser.add_argument("--all", action="store_true", help="every row")
        self.show_parser.add_argument("--task", help="only calls of this task (pid or comm)")
        self.show_parser.add_argument("--caller", help="only calls from this kernel function")
        self.save_parser = ArgParser(prog="vmi trace save", add_help=False)
        self.save_parser.add_argument("file")
        self.save_parser.add_argument("--since", help="only events from this seq")
        self.save_parser.add_argument("--until", help="only events up to this seq")
        self.save_parser.add_argument("--task", help="only calls of this task (pid or comm)")
        self.save_parser.add_argument("--caller", help="only calls from this kernel function")
        self.save_parser.add_argument("--no-interrupts", action="store_true",
                                      help="leave out interrupt handlers' calls")
        self.simple_parser = ArgParser(prog="vmi trace stop|clear|status", add_help=False)

    def complete(self, text: str, word: str) -> object:
        tokens = text.split()
        action = tokens[0] if tokens and tokens[0] in _ACTIONS else None
        if action == "save" and len(tokens) - (0 if text[-1:].isspace() else 1) < 2:
            return gdb.COMPLETE_FILENAME
        parser = {"start": self.start_parser, "save": self.save_parser}.get(
            action or "", self.show_parser)
        return complete_options(parser, text, word, calls=("--calls", "--call"),
                                words=() if action else _ACTIONS)

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        argv = gdb.string_to_argv(arg)
        action = argv[0] if argv and argv[0] in _ACTIONS else None
        rest = argv[1:] if action else argv
        if action == "start":
            self._start(rest)
        elif action == "save":
            self._save(rest)
        elif action in ("stop", "clear", "status"):
            self.simple_parser.parse_args(rest)
            getattr(self, f"_{action}")()
        else:
            self._show(rest)

    def _start(self, argv: list[str]) -> None:
        self.dont_repeat()
        args = self.start_parser.parse_args(argv)
        rom = self.start_parser.number(args.rom) if args.rom else None
        calls = parse_calls(args.calls, self.start_parser) if args.calls else None
        target.require_target()
        src = tracesource.current(portable=args.portable)
        notes = src.start(rom, calls, not args.no_returns)
        lines = [f"vmi trace: recording ({src.kind} path)"] + notes
        gdb.write("\n".join(lines) + "\n")

    def _stop(self) -> None:
        src = tracesource.current(create=False)
        if src is None:
            raise VmiError("vmi trace: not started")
        if src.kind == "stub":
            target.require_target()
        src.stop()
        gdb.write(f"vmi trace: stopped ({len(src.events())} events kept)\n")

    def _clear(self) -> None:
        src = tracesource.current(create=False)
        if src is None:
            raise VmiError("vmi trace: not started")
        src.clear()
        gdb.write("vmi trace: cleared\n")

    def _status(self) -> None:
        src = tracesource.current(create=False)
        if src is None:
            gdb.write("vmi trace: not started\n")
            return
        events = src.events()  # fetched up to now, so "fetched" is what the target has
        st = src.status()
        if src is not tracesource.for_connection():
            st = {**st, "connection": "an earlier one (closed): its events are kept"}
        t = Table(show_header=False, box=None, title="vmi trace status")
        t.add_column("", style="bold", no_wrap=True)
        t.add_column("")
        for k, v in st.items():
            t.add_row(k, str(v))
        fit_columns(t)
        counts = counts_by_call(events)
        parts = [t]
        if counts:
            parts.append(Text("calls: " + " ".join(f"{k}={v}" for k, v in counts.items())))
        write(Group(*parts))

    def _filtered(self, parser: ArgParser, events: Sequence[tr.Event], task: str | None,
                  caller: str | None) -> set[int] | None:
        """The seqs a --task/--caller filter keeps (its calls and what they caused)."""
        if not task and not caller:
            return None
        have = call_context(source_or_fail())
        if have is None:
            parser.error("--task and --caller need each call's context: a Linux guest with "
                         "its vmlinux loaded (`file vmlinux`) before `vmi trace start`")
        ctx, tasks = have
        if task and not tasks.matching(task):
            raise VmiError(f"no task {task!r} in the trace (pid or comm; tasks named: "
                           f"{len(tasks)})")
        rows = select_rows(ctx.rows, tasks, task=task, caller=caller)
        if not len(rows):
            return set()
        # What a call owns comes after it: the events before the first one kept are not read.
        return context.owned_events(events_between(events, int(rows["seq"][0]), None),
                                    set(rows["seq"].tolist()))

    def _show(self, argv: list[str]) -> None:
        args = self.show_parser.parse_args(argv)
        if args.call:
            self.show_parser.call_name(args.call)
        self.show_parser.count(args.n, "N (rows to show)")
        since = self.show_parser.number(args.since) if args.since else None
        events = events_or_fail()
        only = self._filtered(self.show_parser, events, args.task, args.caller)
        have = call_context(source_or_fail())
        write(render_trace(events, last=None if args.all else args.n, call=args.call,
                           since=since, symbolize=target.symbolize if _alive() else None,
                           describe=describer(*have) if have else None, only=only))

    def _save(self, argv: list[str]) -> None:
        args = self.save_parser.parse_args(argv)
        first = self.save_parser.number(args.since) if args.since else None
        last = self.save_parser.number(args.until) if args.until else None
        all_events = events_or_fail()
        src = source_or_fail()
        events = list(events_between(all_events, first, last))
        meta: dict[str, object] = {}
        if args.task or args.caller:
            only = self._filtered(self.save_parser, events, args.task, args.caller) or set()
            events = [e for e in events if e.seq in only]
            meta["selection"] = {"task": args.task, "caller": args.caller}
        if args.no_interrupts:
            have = call_context(src)
            if have is None:
                self.save_parser.error("--no-interrupts needs each call's context (vmigdb's "
                                       "stub, or a portable trace with vmlinux loaded)")
            rows = have[0].between(first, last)
            irq = context.interrupt_rows(rows)
            drop = context.owned_events(events, set(rows["seq"][irq].tolist()))
            meta["excluded"] = {"interrupt_calls": int(irq.sum()), "events": len(drop),
                                "why": "calls made in interrupt handlers (each ending with "
                                       "an IRET back to kernel mode) and what they caused"}
            events = [e for e in events if e.seq not in drop]
        if first is not None or last is not None:
            meta["window"] = [first, last]
        try:
            with open(args.file, "w", encoding="utf-8") as f:
                tr.write_trace(f, events, source=src.kind, producer="vmigdb gdb commands",
                               **meta)
        except OSError as e:
            raise VmiError(f"cannot write {args.file}: {e.strerror}") from None
        gdb.write(f"vmi trace: {len(events)} events written to {args.file}\n")


class VmiProfile(gdb.Command):
    """Count ROM calls by VMI call x kernel caller: who makes the most calls, and from where.

Usage: vmi profile [--call NAME,...] [--task NAME|PID] [--caller FUNC] [--since SEQ]
                   [--until SEQ] [--top N | --all]

From the trace's calls and their Linux context (a Linux guest with vmlinux loaded before `vmi
trace start`): each row is a VMI call and the kernel function that made it, with its count, its
share of that call's count and of all calls counted. A call Linux makes through its vmi_* glue
(vmi_set_pte_at and kin, which only pass the call on to the ROM) counts for the glue's caller,
and the "via" column names the glue. --top N shows the N largest rows (default 20).
Example: vmi profile --call SetPxE          vmi profile --task init --top 10"""

    def __init__(self) -> None:
        super().__init__("vmi profile", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi profile", add_help=False)
        self.parser.add_argument("--call", help="only these calls (comma-separated)")
        self.parser.add_argument("--task", help="only calls of this task (pid or comm)")
        self.parser.add_argument("--caller", help="only calls from this kernel function")
        self.parser.add_argument("--since", help="only calls from this seq")
        self.parser.add_argument("--until", help="only calls up to this seq")
        self.parser.add_argument("--top", help="rows to show (the largest N)")
        self.parser.add_argument("--all", action="store_true", help="every row")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, calls=("--call",))

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        calls = parse_calls(args.call, self.parser) if args.call else None
        top = self.parser.count(args.top, "--top") if args.top else 20
        first = self.parser.number(args.since) if args.since else None
        last = self.parser.number(args.until) if args.until else None
        src = source_or_fail()
        src.events()  # fetched up to now
        have = call_context(src)
        if have is None:
            raise VmiError("vmi profile needs each call's context: a Linux guest with its "
                           "vmlinux loaded (`file vmlinux`) before `vmi trace start`")
        ctx, tasks = have
        if args.task and not tasks.matching(args.task):
            raise VmiError(f"no task {args.task!r} in the trace (pid or comm)")
        rows = ctx.between(first, last)
        total = len(rows)
        rows = select_rows(rows, tasks, task=args.task, caller=args.caller, calls=calls)
        table = context.profile(rows, name)
        write(render_profile(table, top=None if args.all else top, total=total))


def _alive() -> bool:
    inf = gdb.selected_inferior()
    return inf.pid != 0
