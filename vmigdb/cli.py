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
    from vmigdb.stub.vmitrace import VmiTracer, register_monitor

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
        serve(machine, host=args.listen, port=args.port, ready=ready, monitor=monitor)
    except OSError as e:
        raise VmiError(f"cannot listen on {args.listen}:{args.port}: {e.strerror}") from None
    return EXIT_OK


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
