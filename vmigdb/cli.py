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


def _cmd_run(args: argparse.Namespace) -> int:
    from vmigdb.linuxlog import PANIC_GRACE_NS, ConsoleWatch
    from vmigdb.stub.machine import StopReason

    machine = _machine(args)
    out = sys.stdout.buffer
    watch = ConsoleWatch()

    def serial(data: bytes) -> None:
        out.write(data)
        out.flush()
        if watch.feed(data):
            machine.set_alarm(PANIC_GRACE_NS)  # let it print its stack dump, then end

    machine.on_serial = serial
    stop = machine.run()
    while stop.reason in (StopReason.BREAKPOINT, StopReason.HOOK, StopReason.WATCHPOINT):
        stop = machine.run()
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from vmigdb.stub.monitor import default_table
    from vmigdb.stub.server import PacketLog, serve
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
              queries=queries(tracer), packet_log=packet_log)
    except OSError as e:
        raise VmiError(f"cannot listen on {args.listen}:{args.port}: {e.strerror}") from None
    finally:
        if packet_log is not None:
            packet_log.close()
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
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot a guest on vmigdb's machine, stream its serial output")
    _machine_arguments(run)
    run.set_defaults(func=_cmd_run)

    srv = sub.add_parser("serve", help="serve a guest to gdb over the remote protocol")
    _machine_arguments(srv)
    srv.add_argument("--port", type=int, default=1234, help="TCP port (0: any free port)")
    srv.add_argument("--listen", default="127.0.0.1", help="address to listen on")
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
