"""``vmi trace ...``: record ROM calls and show them (portable breakpoints or the stub)."""

from __future__ import annotations

import gdb
from rich.console import Group
from rich.table import Table
from rich.text import Text

from vmigdb import trace as tr
from vmigdb.abi import VmiCall
from vmigdb.commands import target, tracesource
from vmigdb.commands.vmi import ArgParser, guarded, write
from vmigdb.errors import VmiError
from vmigdb.views.trace import call_counts, render_trace

_ACTIONS = ("start", "stop", "clear", "status", "save")


def events_or_fail() -> list[tr.Event]:
    src = tracesource.current(create=False)
    if src is None:
        src = tracesource.current()
    events = src.events() if src is not None else []
    if not events and getattr(src, "closed", False):
        raise VmiError("no trace events: the connection closed before any were fetched "
                       "(the stub keeps them; vmi trace fetches them while connected)")
    if not events:
        raise VmiError("no trace events yet: `vmi trace start`, then continue the guest")
    return events


def parse_calls(text: str, parser: ArgParser) -> list[VmiCall]:
    """Call names as abi.py spells them; a wrong one fails with the command's usage."""
    out = []
    for name in text.split(","):
        name = name.strip()
        if name not in VmiCall.__members__:
            parser.error(f"unknown VMI call {name!r} (names as abi.py spells them, "
                         "e.g. SetPxE,SetCR3)")
        out.append(VmiCall[name])
    return out


class VmiTrace(gdb.Command):
    """Trace VMI ROM calls without stopping the guest, and show the trace.

Usage:
  vmi trace start [--rom ADDR] [--calls NAME,...] [--no-returns] [--portable]
  vmi trace stop | clear | status
  vmi trace [N] [--call NAME] [--since SEQ] [--all]
  vmi trace save FILE

On vmigdb's stub the machine records (fast path, fetched with `monitor vmi trace dump`); on
any other target (QEMU) internal breakpoints on the ROM entries, return addresses and the ROM's
flush announcement record and resume (about 1.5 ms per hit on QEMU: trace short stretches, or
limit --calls). A ROM the guest copies to RAM later is hooked when the guest stores its
address. The table shows the last N rows (default 20): seq, call, arguments decoded by their
ABI kind, results, and the calling site with its symbol. `save` writes the JSON-lines trace.
Example: vmi trace start; continue; vmi trace 50 --call SetPxE"""

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
        self.save_parser = ArgParser(prog="vmi trace save", add_help=False)
        self.save_parser.add_argument("file")
        self.simple_parser = ArgParser(prog="vmi trace stop|clear|status", add_help=False)

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
        st = src.status()
        t = Table(show_header=False, box=None, title="vmi trace status")
        t.add_column("", style="bold")
        t.add_column("")
        for k, v in st.items():
            t.add_row(k, str(v))
        counts = call_counts(src.events())
        parts = [t]
        if counts:
            parts.append(Text("calls: " + " ".join(f"{k}={v}" for k, v in counts.items())))
        write(Group(*parts))

    def _show(self, argv: list[str]) -> None:
        args = self.show_parser.parse_args(argv)
        if args.call and args.call not in VmiCall.__members__:
            self.show_parser.error(f"unknown VMI call {args.call!r} (one name as abi.py "
                                   "spells it, e.g. SetPxE)")
        since = self.show_parser.number(args.since) if args.since else None
        events = events_or_fail()
        symbolize = target.symbolize if _alive() else None
        write(render_trace(events, last=None if args.all else args.n, call=args.call,
                           since=since, symbolize=symbolize))

    def _save(self, argv: list[str]) -> None:
        args = self.save_parser.parse_args(argv)
        events = events_or_fail()
        src = tracesource.current(create=False)
        try:
            with open(args.file, "w", encoding="utf-8") as f:
                tr.write_trace(f, events, source=src.kind if src else "?",
                               producer="vmigdb gdb commands")
        except OSError as e:
            raise VmiError(f"cannot write {args.file}: {e.strerror}") from None
        gdb.write(f"vmi trace: {len(events)} events written to {args.file}\n")


def _alive() -> bool:
    inf = gdb.selected_inferior()
    return inf.pid != 0
