"""The ``vmigdb`` command line: the edge where core errors become one line and exit code 2.

Subcommands import what they need when they run, so ``vmigdb rom info`` never loads unicorn and
a broken optional part cannot break the others.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vmigdb.errors import VmiError

EXIT_OK = 0
EXIT_GUEST_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_rom_info(args: argparse.Namespace) -> int:
    from vmigdb import rominfo
    from vmigdb.views import console
    from vmigdb.views.rom import render_rom

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VmiError(f"cannot read {path}: {e.strerror}") from None
    info = rominfo.parse_rom(data)
    console.make_console().print(render_rom(info))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from vmigdb.stub.machine import Machine, StopReason

    machine = Machine.from_files(args.guest, rom=args.rom, cmdline=args.cmdline)
    out = sys.stdout.buffer

    def serial(data: bytes) -> None:
        out.write(data)
        out.flush()

    machine.on_serial = serial
    stop = machine.run()
    while stop.reason in (StopReason.BREAKPOINT, StopReason.HOOK, StopReason.WATCHPOINT):
        stop = machine.run()
    if stop.reason is StopReason.EXIT:
        code = stop.exit_code or 0
        return code if 0 <= code <= 255 else 255
    print(f"vmigdb: guest stopped: {stop.message or stop.reason.value} at {stop.pc:#x}",
          file=sys.stderr)
    return EXIT_GUEST_FAILED


def _cmd_serve(args: argparse.Namespace) -> int:
    from vmigdb.stub.machine import Machine
    from vmigdb.stub.monitor import default_table
    from vmigdb.stub.server import serve
    from vmigdb.stub.vmitrace import VmiTracer, queries, register_monitor

    machine = Machine.from_files(args.guest, rom=args.rom, cmdline=args.cmdline)
    monitor = default_table()
    tracer = VmiTracer(machine)
    if args.trace:
        tracer.start()
    register_monitor(monitor, tracer)
    out = sys.stdout.buffer

    def serial(data: bytes) -> None:
        out.write(data)
        out.flush()

    machine.on_serial = serial

    def ready(port: int) -> None:
        print(f"vmigdb: gdb stub listening on {args.listen}:{port} "
              f"(gdb: target remote {args.listen}:{port})", file=sys.stderr, flush=True)

    try:
        serve(machine, host=args.listen, port=args.port, ready=ready, monitor=monitor,
              queries=queries(tracer))
    except OSError as e:
        raise VmiError(f"cannot listen on {args.listen}:{args.port}: {e.strerror}") from None
    return EXIT_OK


def _cmd_capture(args: argparse.Namespace) -> int:
    from vmigdb import capture
    from vmigdb.views import console
    from vmigdb.views.capture import capture_with_progress, render_summary

    cfg = capture.Config(
        guest=Path(args.guest), output=Path(args.output),
        rom=Path(args.rom) if args.rom else None, cmdline=args.cmdline, target=args.target,
        until=capture.Until.parse(args.until),
        gdb_script=Path(args.gdb_script) if args.gdb_script else None,
        timeout=args.timeout, serial=Path(args.serial) if args.serial else None)
    if capture.is_terminal(sys.stderr):
        err = console.make_console(sys.stderr)
        result = capture_with_progress(cfg, err)
        err.print(render_summary(result))
    else:
        result = capture.capture(cfg)
        print(capture.result_line(result), flush=True)
        if not result.ok:
            print(f"vmigdb: the guest failed: {result.message}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_GUEST_FAILED


def _read_trace(path: str):  # -> vmigdb.trace.Trace
    """Read a trace; a cut end is one warning line on stderr, not an error."""
    from vmigdb import trace as tr

    t = tr.read_trace(path)
    warning = tr.cut_warning(t, path)
    if warning:
        print(f"vmigdb: {warning}", file=sys.stderr)
    return t


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from vmigdb import perfetto, report
    from vmigdb.views import console

    t = _read_trace(args.trace)
    elf = report.load_elf(args.elf or t.meta.get("guest"))
    view = report.render_report(t, name=args.trace, elf=elf, top_sites=args.sites)
    console.make_console().print(view)
    written = report.export(view, html=args.html, svg=args.svg,
                            title=f"vmigdb report: {Path(args.trace).name}")
    if args.perfetto:
        try:
            with open(args.perfetto, "w", encoding="utf-8") as f:
                json.dump(perfetto.chrome_trace(t), f, separators=(",", ":"))
        except OSError as e:
            raise VmiError(f"cannot write {args.perfetto}: {e.strerror}") from None
        written.append(args.perfetto)
    for path in written:
        print(f"vmigdb: wrote {path}", file=sys.stderr)
    return EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    from vmigdb import tracediff
    from vmigdb.views import console
    from vmigdb.views.diff import render_diff

    a, b = _read_trace(args.a), _read_trace(args.b)
    d = tracediff.diff(a.events, b.events, context=args.context, strict=args.strict,
                       relative=args.relative)
    console.make_console().print(render_diff(d, args.a, args.b))
    return EXIT_OK if d.equivalent else EXIT_GUEST_FAILED


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vmigdb", description="Debug VMI-paravirtualized x86 guests from gdb.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot a guest on vmigdb's machine, stream its serial output")
    run.add_argument("guest", help="multiboot ELF32 guest")
    run.add_argument("--rom", help="VMI ROM image (default: the built identity ROM)")
    run.add_argument("--cmdline", default="", help="multiboot command line text")
    run.set_defaults(func=_cmd_run)

    srv = sub.add_parser("serve", help="serve a guest to gdb over the remote protocol")
    srv.add_argument("guest", help="multiboot ELF32 guest")
    srv.add_argument("--rom", help="VMI ROM image (default: the built identity ROM)")
    srv.add_argument("--cmdline", default="", help="multiboot command line text")
    srv.add_argument("--port", type=int, default=1234, help="TCP port (0: any free port)")
    srv.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    srv.add_argument("--trace", action="store_true",
                     help="start the VMI tracer at once (else: monitor vmi trace on)")
    srv.set_defaults(func=_cmd_serve)

    cap = sub.add_parser("capture", help="run a guest under gdb and write its VMI trace")
    cap.add_argument("guest", help="multiboot ELF32 guest")
    cap.add_argument("-o", "--output", required=True, help="trace file to write (JSON lines)")
    cap.add_argument("--rom", help="VMI ROM image (default: the built identity ROM)")
    cap.add_argument("--cmdline", default="", help="multiboot command line text")
    cap.add_argument("--target", choices=("stub", "qemu"), default="stub",
                     help="vmigdb's stub (fast path) or qemu-system-i386 (portable path)")
    cap.add_argument("--until", default="exit",
                     help="exit (default), calls=N (N ROM calls), or a gdb location (SYMBOL)")
    cap.add_argument("--gdb-script", help="gdb commands to source before tracing starts")
    cap.add_argument("--timeout", type=float, help="give up after this many seconds of run")
    cap.add_argument("--serial", help="write the guest's COM1 output to this file")
    cap.set_defaults(func=_cmd_capture)

    rep = sub.add_parser("report", help="show a trace: calls and cost, sites, batches, flags")
    rep.add_argument("trace", help="trace file (vmigdb capture, vmi trace save)")
    rep.add_argument("--elf", help="guest ELF for symbols and patch records (default: the "
                                   "trace's guest)")
    rep.add_argument("--sites", type=int, default=20, help="calling sites to list (0: all)")
    rep.add_argument("--html", help="also write the report as HTML")
    rep.add_argument("--svg", help="also write the report as SVG")
    rep.add_argument("--perfetto", help="write Chrome trace-event JSON for Perfetto")
    rep.set_defaults(func=_cmd_report)

    dif = sub.add_parser("diff", help="where two traces diverge (exit 1 when they differ)")
    dif.add_argument("a", help="first trace")
    dif.add_argument("b", help="second trace")
    dif.add_argument("--context", type=int, default=3, help="events shown around the first "
                                                            "difference")
    dif.add_argument("--strict", action="store_true",
                     help="compare clock results (RDTSC...) too")
    dif.add_argument("--relative", action="store_true",
                     help="compare ROM entries as offsets (a ROM at another address)")
    dif.set_defaults(func=_cmd_diff)

    rom = sub.add_parser("rom", help="inspect a VMI ROM image")
    rom_sub = rom.add_subparsers(dest="rom_command", required=True, parser_class=_Parser)
    info = rom_sub.add_parser("info", help="print the parsed header, licence, PCI IDs, calls")
    info.add_argument("file")
    info.set_defaults(func=_cmd_rom_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VmiError as e:
        print(f"vmigdb: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
