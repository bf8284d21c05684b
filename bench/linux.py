"""Linux on vmigdb's machine against QEMU, in the same run: boot to the workload's ``done``
line untraced and traced, memory, and what each kind of event costs the machine.

Rows:
- the Linux guest of shared/linux, reset to ``done``: ``vmigdb run`` against QEMU TCG on the
  README's command line (with SeaBIOS, not deterministic: its idle time passes in real time),
  and against QEMU without firmware tables on the same deterministic clock (-icount shift=3);
  wall clock, best of REPEAT, whole processes;
- the same boot in-process with the VMI tracer on and off (the tracer's cost);
- the machine's peak RSS against the guest's RAM (-m 128 and -m 1024);
- per-event costs measured with bench/asm/events.S: a loop with the event against the same
  loop without it, over N events; with the Linux boot's own event counts, what each kind costs
  the boot;
- ``continue`` over a 2-instruction loop against bare Unicorn (no hooks), against bare Unicorn
  with a C block hook that does nothing (the floor of any clock kept per block: Unicorn 2.1.4
  has no way to count instructions without a callback) and against Unicorn's own instruction
  count (the other way to run a clock: a callback per instruction).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from vmigdb.targets import DEBUG_EXIT, QEMU, linux_dir, qemu_linux_argv
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
ROM = ROOT / "build" / "vmi_rom.bin"
FIRMWARE = ROOT / "build" / "boot32.bin"
EVENTS_SRC = Path(__file__).resolve().parent / "asm" / "events.S"
REPEAT = 3
DONE = b"VMIGDB-INIT: done forks=21 pages=1637 ok"
EVENTS = 100_000
SPIN = 20_000_000




def _timed(argv: list[str], timeout: float = 600) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS (KiB) and stdout of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read() if proc.stdout else b""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss, out


def _best(run: Callable[[], tuple[float, int, bytes]], check: Callable[[bytes], bool]
          ) -> tuple[float, int]:
    best, rss = float("inf"), 0
    for _ in range(REPEAT):
        secs, peak, out = run()
        if not check(out):
            raise RuntimeError(f"the run did not reach its end: {out[-300:]!r}")
        best, rss = min(best, secs), max(rss, peak)
    return best, rss


def _in_process(linux: Path, trace: bool) -> tuple[float, dict[str, int]]:
    """Best seconds of REPEAT boots in this process, and the last boot's event counts."""
    from vmigdb.stub.machine import Machine, StopReason

    best, stats = float("inf"), {}
    for _ in range(REPEAT):
        m = Machine.from_files(str(linux / "bzImage-2.6.32.9-vmi"), rom=str(ROM),
                               cmdline="console=ttyS0",
                               initrd=str(linux / "initramfs-vmigdb.cpio.gz"))
        m.on_serial = lambda data: None
        if trace:
            from vmigdb.stub.vmitrace import VmiTracer

            VmiTracer(m).start()
        t0 = time.perf_counter()
        stop = m.run()
        while stop.reason is StopReason.HOOK:
            stop = m.run()
        best = min(best, time.perf_counter() - t0)
        if stop.reason is not StopReason.EXIT:
            raise RuntimeError(f"the traced boot stopped: {stop.message}")
        vm = m.vm
        stats = {"ports": vm.port_accesses, "deliveries": vm.deliveries,
                 "exceptions": vm.exceptions, "irqs": vm.irqs_raised, "ticks": vm.ticks,
                 "idle": vm.idle_ticks}
    return best, stats


def boot_rows(linux: Path, table: Table) -> dict[str, int]:
    bz, initrd = linux / "bzImage-2.6.32.9-vmi", linux / "initramfs-vmigdb.cpio.gz"
    vmigdb = [sys.executable, "-m", "vmigdb.cli", "run", str(bz), "--initrd", str(initrd),
              "--append", "console=ttyS0", "--rom", str(ROM)]
    ours, ours_rss = _best(lambda: _timed(vmigdb), lambda out: DONE in out)
    ours_1g, rss_1g = _best(lambda: _timed([*vmigdb, "-m", "1024"]), lambda out: DONE in out)
    have_qemu = shutil.which(QEMU) is not None
    with tempfile.TemporaryDirectory() as d:
        serial = Path(d) / "serial.log"
        readme = [QEMU, "-nodefaults", "-accel", "tcg,thread=single", "-m", "128", "-display",
                  "none", "-no-reboot", "-kernel", str(bz), "-initrd", str(initrd), "-append",
                  "console=ttyS0 panic=1", "-serial", f"file:{serial}", "-option-rom", str(ROM),
                  "-device", DEBUG_EXIT]
        minimal = qemu_linux_argv(bz, initrd, "console=ttyS0", ROM, 128, serial, Path(d),
                                  FIRMWARE)

        def qemu(argv: list[str]) -> tuple[float, int, bytes]:
            secs, rss, _out = _timed(argv)
            return secs, rss, serial.read_bytes()

        q_readme, q_rss = _best(lambda: qemu(readme), lambda out: DONE in out) \
            if have_qemu else (None, 0)
        q_min, _ = _best(lambda: qemu(minimal), lambda out: DONE in out) \
            if have_qemu and FIRMWARE.is_file() else (None, 0)
    untraced, stats = _in_process(linux, trace=False)
    traced, _ = _in_process(linux, trace=True)

    def vs(q: float | None) -> str:
        return f"{ours / q:.2f}x" if q else "-"

    table.add_row("Linux boot to done, vmigdb run (process)", f"{ours:.2f} s",
                  f"{q_readme:.2f} s" if q_readme else "-", vs(q_readme),
                  "<= 2x QEMU (goal 1x)" + (" met" if q_readme and ours <= 2 * q_readme
                                            else " NOT met" if q_readme else ""))
    table.add_row("  vs QEMU without BIOS tables, -icount shift=3", f"{ours:.2f} s",
                  f"{q_min:.2f} s" if q_min else "-", vs(q_min), "")
    table.add_row("  in-process, untraced / traced", f"{untraced:.2f} s / {traced:.2f} s", "",
                  f"{traced / untraced:.2f}x",
                  "tracer <= 1.5x untraced" + (" met" if traced <= 1.5 * untraced
                                              else " NOT met"))
    table.add_row("  peak RSS, -m 128", f"{ours_rss / 1024:.0f} MiB",
                  f"{q_rss / 1024:.0f} MiB" if q_rss else "-",
                  f"{ours_rss / 1024 / 128:.2f}x RAM", "")
    table.add_row("  peak RSS, -m 1024", f"{rss_1g / 1024:.0f} MiB ({ours_1g:.2f} s)", "",
                  f"{rss_1g / 1024 / 1024:.2f}x RAM", "")
    return stats


def _events_guest(work: Path) -> Path:
    obj, elf = work / "events.o", work / "events.elf"
    subprocess.run(["as", "--32", "-I", str(ROOT / "tests" / "asm"), "-o", str(obj),
                    str(EVENTS_SRC)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o", str(elf),
                    str(obj)], check=True)
    return elf


def event_costs(table: Table) -> dict[str, float]:
    """Microseconds per event, each loop against base_loop over EVENTS iterations."""
    from vmigdb.sites import ElfImage
    from vmigdb.stub.machine import Machine, StopReason

    with tempfile.TemporaryDirectory() as d:
        elf = _events_guest(Path(d))
        syms = {name: value for value, _size, name in ElfImage(elf.read_bytes()).symbols()}
        m = Machine.from_files(str(elf), rom="none")
        m.add_breakpoint(syms["bench_done"])
        assert m.run().reason is StopReason.BREAKPOINT

        def run(label: str) -> float:
            best = float("inf")
            for _ in range(REPEAT):
                m.reg_write("ecx", EVENTS)
                m.reg_write("eip", syms[label])
                t0 = time.perf_counter()
                stop = m.run()
                best = min(best, time.perf_counter() - t0)
                if (stop.reason, stop.pc) != (StopReason.BREAKPOINT, syms["bench_done"]):
                    raise RuntimeError(f"{label} stopped with {stop.message or stop.reason}")
            return best

        base = run("base_loop")
        costs = {}
        for label, what in (("out80_loop", "port write 0x80 (C device)"),
                            ("in61_loop", "port read 0x61 (C device, clock)"),
                            ("lsr_loop", "COM1 LSR read (C device)"),
                            ("int80_loop", "int $0x80 through the IDT (C delivery)"),
                            ("irq_spin_loop", "timer interrupt, CPU spinning"),
                            ("irq_hlt_loop", "timer interrupt, CPU halted")):
            secs = run(label)
            costs[label] = (secs - base) / EVENTS * 1e6
            table.add_row(f"  {what}", f"{costs[label]:.2f} us", "", "", "")
    return costs


def continue_rows(table: Table) -> None:
    """A 2-instruction loop: our machine's run against bare Unicorn and Unicorn's count."""
    from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_32, Uc
    from unicorn import x86_const as X

    from vmigdb.sites import ElfImage
    from vmigdb.stub.machine import Machine, StopReason
    from vmigdb.stub.machine.native import add_c_hook, c_function

    guest = ROOT / "build" / "guest.elf"
    image = guest.read_bytes()
    elf = ElfImage(image)
    syms = {name: value for value, _size, name in elf.symbols()}
    loop, done = syms["bench_spin_loop"], syms["bench_spin_done"]
    code = elf.read(loop, 16)
    from vmigdb import decode

    insns = decode.disassemble(code, loop)
    jump = next(i for i in insns if i.mnemonic.startswith("j"))
    exit_pc = jump.address + jump.size

    def bare(count: int, null_hook: bool = False) -> float:
        best = float("inf")
        for _ in range(REPEAT):
            uc = Uc(UC_ARCH_X86, UC_MODE_32)
            uc.mem_map(loop & ~0xFFF, 0x2000)
            uc.mem_write(loop, code)
            uc.reg_write(X.UC_X86_REG_EAX, SPIN)
            if null_hook:
                add_c_hook(uc, UC_HOOK_BLOCK, c_function("vm_null_block_hook"), 0)
            t0 = time.perf_counter()
            uc.emu_start(loop, exit_pc, 0, count)
            best = min(best, time.perf_counter() - t0)
        return best

    def ours() -> float:
        best = float("inf")
        for _ in range(REPEAT):
            m = Machine.from_files(str(guest), rom=str(ROM), cmdline=f"spin={SPIN}")
            m.add_breakpoint(loop)
            assert m.run().reason is StopReason.BREAKPOINT
            m.remove_breakpoint(loop)
            m.add_breakpoint(done)
            t0 = time.perf_counter()
            stop = m.run()
            best = min(best, time.perf_counter() - t0)
            assert stop.pc == done
        return best

    # One CPU for all four, so that none pays for a migration the others did not.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cpus)})
    try:
        b, o, c, n = bare(0), ours(), bare(4 * SPIN), bare(0, null_hook=True)
    finally:
        os.sched_setaffinity(0, cpus)
    insns = 2 * SPIN
    table.add_row(f"continue, 2-instruction loop x{SPIN // 1_000_000}M: vmigdb machine",
                  f"{insns / o / 1e6:.0f} M/s", f"{insns / b / 1e6:.0f} M/s bare Unicorn",
                  f"{b / o:.0%} of bare", "goal >= 90% of bare" +
                  (" met" if b / o >= 0.9 else " NOT met"))
    table.add_row("  the floor: bare Unicorn plus a C block hook that does nothing",
                  f"{insns / n / 1e6:.0f} M/s", "", f"{b / n:.0%} of bare",
                  "any per-block callback costs this")
    table.add_row("  Unicorn's own instruction count instead of a clock hook",
                  f"{insns / c / 1e6:.0f} M/s", "", f"{b / c:.0%} of bare", "")


def main() -> int:
    console = make_console()
    table = Table(title="Linux and events: vmigdb's machine against QEMU (wall clock, best of "
                        f"{REPEAT})")
    for col in ("measurement", "vmigdb", "peer", "ratio", "target"):
        table.add_column(col, justify="left" if col in ("measurement", "target") else "right")
    linux = linux_dir()
    stats: dict[str, int] = {}
    if linux is None:
        console.print("Linux rows: shared/linux not found (set VMIGDB_LINUX_DIR)")
    else:
        stats = boot_rows(linux, table)
    table.add_row("per-event cost (event loop minus the same loop without it)", "", "", "", "")
    costs = event_costs(table)
    if stats:
        share = {"port accesses": stats["ports"] * costs["in61_loop"],
                 "interrupts and exceptions delivered":
                     stats["deliveries"] * costs["int80_loop"]}
        for what, us in share.items():
            table.add_row(f"  Linux boot: {what}", f"~{us / 1e6:.2f} s", "", "", "")
        table.add_row("  Linux boot: events", f"{stats['ports']} port accesses, "
                      f"{stats['deliveries']} deliveries ({stats['exceptions']} exceptions), "
                      f"{stats['ticks'] - stats['idle']} instructions", "", "", "")
    continue_rows(table)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
