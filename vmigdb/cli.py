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

import vmigdb
from vmigdb.ctrlc import EXIT_INTERRUPTED, CtrlC
from vmigdb.errors import VmiError

EXIT_OK = 0
EXIT_GUEST_FAILED = 1
EXIT_USAGE = 2
DEFAULT_PORT = 1234


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


def _machine(args: argparse.Namespace):  # -> vmigdb.stub.machine.Machine
    """The machine the run/serve arguments describe, with COM1's input from stdin when that
    is a terminal or a pipe."""
    from vmigdb.stub.machine import Machine
    from vmigdb.stub.machine.serialin import SerialInput

    machine = Machine.from_files(args.guest, rom=args.rom, cmdline=args.cmdline,
                                 ram_size=args.memory << 20, initrd=args.initrd,
                                 rtc_time=args.rtc, no_reboot=args.no_reboot)
    if SerialInput.usable(0):
        machine.connect_input(0)
    return machine


def _write_stdout(data: bytes) -> None:
    """The guest's COM1 output to stdout. Once stdout's reader has gone (``| head -1``), stdout
    becomes /dev/null (so nothing fails again, not even the flush at exit) and the OSError goes
    to the machine, which drops the output from then on and says so once on stderr."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        raise


def _interrupted(pc: int) -> int:
    print(f"vmigdb: interrupted (Ctrl-C) at eip {pc:#x}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _cmd_run(args: argparse.Namespace) -> int:
    from vmigdb.linuxlog import PANIC_GRACE_NS, ConsoleWatch
    from vmigdb.stub.machine import StopReason

    machine = _machine(args)
    watch = ConsoleWatch()

    def serial(data: bytes) -> None:
        if watch.feed(data):
            machine.set_alarm(PANIC_GRACE_NS)  # let it print its stack dump, then end
        _write_stdout(data)

    machine.on_serial = serial
    with CtrlC(machine.interrupt) as ctrl_c:
        stop = machine.run()
        while stop.reason in (StopReason.BREAKPOINT, StopReason.HOOK, StopReason.WATCHPOINT):
            stop = machine.run()
    if stop.reason is StopReason.INTERRUPTED and ctrl_c.pressed:
        return _interrupted(stop.pc)
    if stop.reason is StopReason.EXIT:
        code = stop.exit_code or 0
        return code if 0 <= code <= 255 else 255
    if watch.panic is not None:
        print(f"vmigdb: the guest kernel panicked: {watch.panic}", file=sys.stderr)
        return EXIT_GUEST_FAILED
    if stop.reason is StopReason.RESET:
        print("vmigdb: the guest asked for a reset (--no-reboot): run ended", file=sys.stderr)
        return EXIT_OK
    if stop.reason is StopReason.HALT and "interrupts disabled" in stop.message:
        print(f"vmigdb: the guest halted for good: {stop.message}", file=sys.stderr)
        return EXIT_OK
    print(f"vmigdb: guest stopped: {stop.message or stop.reason.value} at {stop.pc:#x}",
          file=sys.stderr)
    return EXIT_GUEST_FAILED


def _listen_warning(host: str) -> str | None:
    """A warning when ``--listen`` is not a loopback address: the stub has no authentication."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        loopback = all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
    except (OSError, ValueError):
        return None  # the listener says what is wrong with it
    if loopback:
        return None
    return (f"vmigdb: warning: listening on {host}, not on a loopback address: anyone who can "
            "reach it controls the machine (its memory, its registers, the guest)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from vmigdb.stub.monitor import default_table
    from vmigdb.stub.server import PacketLog, Server, host_port
    from vmigdb.stub.vmitrace import VmiTracer, queries, register_monitor

    packet_log = None
    if args.log_packets:  # before the machine: a bad path fails at once
        try:
            packet_log = PacketLog.open(args.log_packets)
        except OSError as e:
            raise VmiError(f"cannot write {args.log_packets}: {e.strerror or e}") from None
    machine = _machine(args)
    monitor = default_table()
    tracer = VmiTracer(machine)
    tracer.meta = {"guest": str(Path(args.guest).resolve()),
                   "rom": None if args.rom in (None, "none") else str(Path(args.rom).resolve()),
                   "cmdline": args.cmdline, "memory_mib": args.memory,
                   "initrd": str(Path(args.initrd).resolve()) if args.initrd else None}
    if args.trace:
        tracer.start()
    register_monitor(monitor, tracer)
    machine.on_serial = _write_stdout
    warning = _listen_warning(args.listen)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    def ready(port: int) -> None:
        where = host_port(args.listen, port)
        print(f"vmigdb: gdb stub listening on {where} (gdb: target remote {where})",
              file=sys.stderr, flush=True)

    try:
        server = Server(machine, host=args.listen, port=args.port, ready=ready, monitor=monitor,
                        queries=queries(tracer), packet_log=packet_log)

        def stop() -> None:
            machine.interrupt()
            server.stop()

        with CtrlC(stop) as ctrl_c:
            server.serve_forever()
        if tracer.sink is not None:  # a trace file still open: finish it, never leave it cut
            tracer.close_file(status="interrupted" if ctrl_c.pressed else "stopped")
    finally:
        if packet_log is not None:
            packet_log.close()
    if ctrl_c.pressed:
        print("vmigdb: interrupted (Ctrl-C): the stub has stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
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
        timeout=args.timeout, serial=Path(args.serial) if args.serial else None,
        initrd=Path(args.initrd) if args.initrd else None, memory=args.memory,
        symbols=Path(args.symbols) if args.symbols else None)
    if capture.is_terminal(sys.stderr):
        err = console.make_console(sys.stderr)
        result = capture_with_progress(cfg, err)
        err.print(render_summary(result))
    else:
        result = capture.capture(cfg)
        print(capture.result_line(result), flush=True)
        if result.status == "error":
            print(f"vmigdb: {result.message}", file=sys.stderr)
        elif not result.ok:
            print(f"vmigdb: the guest failed: {result.message}", file=sys.stderr)
    if result.status == "error":
        return EXIT_USAGE
    return EXIT_OK if result.ok else EXIT_GUEST_FAILED


def _cmd_report(args: argparse.Namespace) -> int:
    from vmigdb import tracecmds
    from vmigdb.views import console

    tracecmds.report(tracecmds.ReportOptions(
        args.trace, elf=args.elf, sites=args.sites, batches=args.batches, html=args.html,
        svg=args.svg, png=args.png, perfetto=args.perfetto, partial=args.partial),
        console.make_console())
    return EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    from vmigdb import tracecmds
    from vmigdb.views import console

    same = tracecmds.diff(tracecmds.DiffOptions(
        args.a, args.b, context=args.context, strict=args.strict, relative=args.relative,
        pages=args.renumber_pages, regions=args.regions, partial=args.partial),
        console.make_console())
    return EXIT_OK if same else EXIT_GUEST_FAILED


def _cmd_export(args: argparse.Namespace) -> int:
    from vmigdb import tracecmds

    tracecmds.export(args.trace, parquet=args.parquet, jsonl=args.jsonl,
                     perfetto=args.perfetto, partial=args.partial)
    return EXIT_OK


def _cmd_gdb_script(args: argparse.Namespace) -> int:
    from vmigdb import resources

    print(resources.gdb_script())
    return EXIT_OK


def _cmd_demo_guest(args: argparse.Namespace) -> int:
    from vmigdb import resources

    print(resources.demo_guest())
    return EXIT_OK


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command given without its subcommand: its usage and subcommands, exit code 2."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return show


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or high is not None and value > high:
            span = f"{low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {span} (got {value})")
        return value

    return parse


def _seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


def _memory(text: str) -> int:
    from vmigdb.stub.machine.pc import MAX_RAM_MIB, MIN_RAM_MIB

    try:
        mib = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MiB: {text!r}") from None
    if not MIN_RAM_MIB <= mib <= MAX_RAM_MIB:
        raise argparse.ArgumentTypeError(f"{mib} MiB is outside {MIN_RAM_MIB}..{MAX_RAM_MIB}")
    return mib


def _rtc(text: str):  # -> datetime.datetime
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date and time: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _machine_arguments(p: argparse.ArgumentParser) -> None:
    """The machine: what ``run`` and ``serve`` share (QEMU's option names where they exist)."""
    p.add_argument("guest", help="a Linux bzImage or a multiboot ELF32 guest")
    p.add_argument("--rom", help="VMI ROM image (default: the built identity ROM; none: no ROM, "
                                 "Linux then boots natively)")
    p.add_argument("--cmdline", "--append", dest="cmdline", default="",
                   help="the kernel command line")
    p.add_argument("--initrd", help="initial ramdisk for a bzImage")
    p.add_argument("-m", "--memory", type=_memory, default=128, metavar="MIB",
                   help="RAM in MiB (16 to 3072; default 128)")
    p.add_argument("--rtc", type=_rtc, default=None, metavar="TIME",
                   help="the RTC's date at power-on, ISO 8601 (default 2026-01-01T00:00:00Z, "
                        "so that runs repeat)")
    p.add_argument("--no-reboot", action="store_true",
                   help="end the run when the guest resets instead of rebooting it")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vmigdb", description="Debug VMI-paravirtualized x86 guests from gdb.")
    p.add_argument("--version", action="version", version=f"%(prog)s {vmigdb.__version__}")
    p.set_defaults(func=_usage(p))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="boot a guest on vmigdb's machine, stream its serial output")
    _machine_arguments(run)
    run.set_defaults(func=_cmd_run)

    srv = sub.add_parser("serve", help="serve a guest to gdb over the remote protocol")
    _machine_arguments(srv)
    srv.add_argument("--port", type=_whole(0, 65535), default=DEFAULT_PORT,
                     help="TCP port (0: any free port; default %(default)s)")
    srv.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                     help="address to listen on (default %(default)s; ::1 for IPv6 loopback; "
                          "anything but loopback lets whoever reaches it control the machine)")
    srv.add_argument("--trace", action="store_true",
                     help="start the VMI tracer at once (else: monitor vmi trace on)")
    srv.add_argument("--log-packets", metavar="FILE",
                     help="append one line per RSP packet each way to FILE (-: stderr)")
    srv.set_defaults(func=_cmd_serve)

    cap = sub.add_parser("capture", help="run a guest under gdb and write its VMI trace")
    cap.add_argument("guest", help="multiboot ELF32 guest or Linux bzImage")
    cap.add_argument("-o", "--output", required=True,
                     help="trace file to write (version 2: an Arrow stream, docs/trace-format.md)")
    cap.add_argument("--rom", help="VMI ROM image (default: the built identity ROM)")
    cap.add_argument("--cmdline", "--append", default="",
                     help="the guest's command line (multiboot text or the kernel's)")
    cap.add_argument("--initrd", help="a Linux guest's initramfs")
    cap.add_argument("-m", "--memory", type=_memory, metavar="MIB",
                     help="RAM in MiB (default 128)")
    cap.add_argument("--symbols", metavar="ELF",
                     help="the guest's symbols (a bzImage's vmlinux): callers, tasks, --until")
    cap.add_argument("--target", choices=("stub", "qemu"), default="stub",
                     help="vmigdb's stub (fast path) or qemu-system-i386 (portable path)")
    cap.add_argument("--until", default="exit",
                     help="exit (default), calls=N (N ROM calls), or a gdb location (SYMBOL)")
    cap.add_argument("--gdb-script", help="gdb commands to source before tracing starts")
    cap.add_argument("--timeout", type=_seconds, help="give up after this many seconds of run")
    cap.add_argument("--serial", help="write the guest's COM1 output to this file")
    cap.set_defaults(func=_cmd_capture)

    rep = sub.add_parser("report", help="show a trace: calls and cost, sites, batches, flags")
    rep.add_argument("trace", help="trace file (vmigdb capture, vmi trace save)")
    rep.add_argument("--elf", help="ELF for symbols and patch records, vmlinux for Linux "
                                   "(default: the trace's symbols, else its guest)")
    rep.add_argument("--sites", type=_whole(0), default=20,
                     help="calling sites (and tasks) to list (0: all)")
    rep.add_argument("--batches", type=_whole(0), default=100,
                     help="lazy-MMU batches to list: the first and last halves (0: all)")
    rep.add_argument("--html", metavar="FILE",
                     help="also write the report as one HTML file with interactive charts")
    rep.add_argument("--svg", metavar="FILE", help="also draw the charts as SVG")
    rep.add_argument("--png", metavar="FILE", help="also draw the charts as PNG")
    rep.add_argument("--perfetto", metavar="FILE",
                     help="also write Chrome trace-event JSON for Perfetto (as export does)")
    rep.add_argument("--partial", action="store_true",
                     help="use the complete part of a trace that was cut short")
    rep.set_defaults(func=_cmd_report)

    dif = sub.add_parser("diff", help="where two traces diverge (exit 1 when they differ)")
    dif.add_argument("a", help="first trace")
    dif.add_argument("b", help="second trace")
    dif.add_argument("--context", type=_whole(0), default=3,
                     help="matching events shown around each differing region")
    dif.add_argument("--regions", type=_whole(0), default=20,
                     help="differing regions shown with their events (0: all)")
    dif.add_argument("--partial", action="store_true",
                     help="use the complete part of a trace that was cut short")
    dif.add_argument("--strict", action="store_true",
                     help="compare clock results (RDTSC...) too")
    dif.add_argument("--relative", action="store_true",
                     help="compare ROM entries as offsets (a ROM at another address)")
    dif.add_argument("--renumber-pages", action="store_true",
                     help="compare page numbers by their order of first use (machines that "
                          "gave the guest other page frames)")
    dif.set_defaults(func=_cmd_diff)

    exp = sub.add_parser("export", help="a trace as Parquet, JSON Lines or Perfetto JSON")
    exp.add_argument("trace", help="trace file (either version)")
    out = exp.add_mutually_exclusive_group(required=True)
    out.add_argument("--parquet", metavar="OUT", help="Parquet, one row per event (pandas, "
                                                      "polars, DuckDB)")
    out.add_argument("--jsonl", metavar="OUT", help="JSON Lines: the version 1 encoding with "
                                                    "clock and task")
    out.add_argument("--perfetto", metavar="OUT", help="Chrome trace-event JSON for "
                                                       "ui.perfetto.dev (OUT.gz: gzipped)")
    exp.add_argument("--partial", action="store_true",
                     help="use the complete part of a trace that was cut short")
    exp.set_defaults(func=_cmd_export)

    rom = sub.add_parser("rom", help="inspect a VMI ROM image")
    rom.set_defaults(func=_usage(rom))
    rom_sub = rom.add_subparsers(dest="rom_command", metavar="COMMAND", parser_class=_Parser)
    info = rom_sub.add_parser("info", help="print the parsed header, licence, PCI IDs, calls")
    info.add_argument("file")
    info.set_defaults(func=_cmd_rom_info)

    gs = sub.add_parser("gdb-script", help="print the path of vmigdb.py, the gdb loader "
                                           "(gdb -x \"$(vmigdb gdb-script)\")")
    gs.set_defaults(func=_cmd_gdb_script)
    dg = sub.add_parser("demo-guest", help="print the path of the demo guest's ELF (with its "
                                           "symbols, for gdb)")
    dg.set_defaults(func=_cmd_demo_guest)
    return p


def _exit_at_once(code: int) -> None:
    """End the process now, its output flushed: after a Ctrl-C nothing is left to write, and the
    interpreter's teardown (Unicorn freeing guest RAM and its translation cache, module clean-up)
    took 50-300 ms on a loaded host, past the 100 ms a Ctrl-C may take."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``argv`` None: the process's own, and a Ctrl-C'd run then ends the
    process at once; with ``argv``, as from another program, it returns)."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
    except VmiError as e:
        print(f"vmigdb: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before or after a run (a run itself stops cleanly: CtrlC)
        print("vmigdb: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if code == EXIT_INTERRUPTED and argv is None:
        _exit_at_once(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
