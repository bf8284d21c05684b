"""The PC: a CPU, RAM with the VMI ROM at 0xC0000, the legacy devices, a boot loader.

This is where the parts meet (QEMU's hw/i386/pc.c is the model): ``Memory`` maps RAM and the
ROM, ``Native`` holds the clock and the devices (stub/native), ``Cpu`` runs, and a boot plan
(stub/machine/boot) says what goes into RAM and how the kernel is entered. ``PC`` implements
``MachineInterface`` for the RSP server, the monitor and the tracer.

There is no firmware: a Linux kernel is entered at its 32-bit entry with every device in its
reset state, as QEMU's are. A multiboot guest is entered as QEMU's multiboot loader enters it,
after SeaBIOS ran: the 8259A pair initialised with every line masked (vectors 0x08 and 0x70)
and the i8042's command byte as SeaBIOS leaves it.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

from vmigdb import resources, rominfo, x86
from vmigdb.errors import GuestImageError, RomError
from vmigdb.stub.machine import boot, devices
from vmigdb.stub.machine.boot import BootImage
from vmigdb.stub.machine.cpu import Cpu
from vmigdb.stub.machine.devices import kbc, pci, rtc
from vmigdb.stub.machine.memory import Memory
from vmigdb.stub.machine.native import NS_PER_TICK, Native, ffi, lib
from vmigdb.stub.machine.serialin import SerialInput
from vmigdb.stub.machine.stops import (
    CodeHook,
    PortObserver,
    Stop,
    StopReason,
    qemu_exit_status,
)

MIN_RAM_MIB, MAX_RAM_MIB = 16, 3072
DEFAULT_RAM_MIB = 128
PIC_FIRMWARE = ((0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01),
                (0xA0, 0x11), (0xA1, 0x70), (0xA1, 0x02), (0xA1, 0x01),
                (0x21, 0xFF), (0xA1, 0xFF))


class PC:
    """A PC running one guest image. See the module docstring, and MachineInterface."""

    #: Called with each chunk of bytes the guest writes to COM1.
    on_serial: Callable[[bytes], None] | None = None

    @classmethod
    def from_files(cls, guest: str, rom: str | None = None, cmdline: str = "",
                   ram_size: int | None = None, initrd: str | None = None,
                   rtc_time: dt.datetime | None = None, no_reboot: bool = False) -> PC:
        """Load a multiboot ELF or a bzImage, a ROM image (default: the built ROM; "none": no
        ROM) and an initrd; GuestImageError or RomError (vmigdb.errors) with one clear line on
        bad input."""
        rom_data: bytes | None = None
        if rom != "none":
            rom_path = Path(rom) if rom is not None else resources.rom()
            try:
                rom_data = rom_path.read_bytes()
            except OSError as e:
                hint = " (build it with `make rom`)" if rom is None and resources.in_checkout() \
                    else ""
                raise RomError(f"cannot read ROM {rom_path}: {e.strerror}{hint}") from None
        image = _read(guest, "guest")
        initrd_data = _read(initrd, "initrd") if initrd is not None else None
        return cls(image, rom_data, name=guest, cmdline=cmdline, initrd=initrd_data,
                   ram_size=ram_size, rtc_time=rtc_time, no_reboot=no_reboot)

    def __init__(self, image: bytes, rom: bytes | None, *, name: str = "kernel",
                 cmdline: str = "", initrd: bytes | None = None, ram_size: int | None = None,
                 rtc_time: dt.datetime | None = None, no_reboot: bool = False) -> None:
        if rom is not None:
            rominfo.check_rom(rom)  # RomError: not an option ROM (55 AA, length, byte sum 0)
        if ram_size is None:
            ram_size = DEFAULT_RAM_MIB << 20
        if not MIN_RAM_MIB << 20 <= ram_size <= MAX_RAM_MIB << 20 or ram_size % (1 << 20):
            raise GuestImageError(f"memory size must be {MIN_RAM_MIB} to {MAX_RAM_MIB} MiB "
                                  f"(got {ram_size / (1 << 20):g})")
        self.ram_size = ram_size
        self.boot: BootImage = boot.load(image, name=name, cmdline=cmdline, initrd=initrd,
                                         ram_size=ram_size)
        self.rtc_time = rtc_time or rtc.DEFAULT_TIME
        self.no_reboot = no_reboot
        self.resets = 0
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_32)
        # QEMU's default i386 CPU, so CPUID answers as on the reference machine (qemu32).
        uc.ctl_set_cpu_model(X.UC_CPU_X86_QEMU32)
        # Exits mode with no exits: `until` is ignored. Without it, every emu_start ends by
        # invalidating the TB at until-1, whose page walk raises a hidden #PF that overwrites
        # CR2 and leaves old_exception set (the next real fault would become #DF).
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        self.native = Native(uc)
        self.memory = Memory(uc, ram_size, rom, self.native.read_cpu)
        self.native.set_memory(ram_size, self.memory.ROM_BASE, self.memory.rom_end)
        self.vm = self.native.vm
        for dev in devices.DEVICES.values():
            for owner, ports in dev.PORTS.items():
                self.native.claim(ports, owner)
        self.cpu = Cpu(uc, self.memory, self.native)
        self.cpu.owner = self
        self.cpu.serve_devices = self._serve_devices
        self._serial_failed = False
        self._observers: dict[int, list[PortObserver]] = {}
        self._reset_observers: list[Callable[[], None]] = []
        self.serial_input: SerialInput | None = None
        self.reset(fresh=True)

    # --- reset -------------------------------------------------------------------------------------
    def reset(self, fresh: bool = False) -> None:
        """Power-on state: RAM reloaded from the boot image, devices and clock from zero."""
        uc, vm = self.uc, self.vm
        self.cpu.reset_state()
        if not fresh:
            self.memory.clear()
            self.resets += 1
        self.native.set_ticks(0)
        vm.idle_ticks = 0
        ffi.buffer(vm.tb)[:] = bytes(ffi.sizeof(vm.tb))  # no stale block sizes
        vm.alarm = lib.VM_NEVER
        lib.vm_reset_devices(vm)
        rtc.reset(vm, self.rtc_time, self.ram_size)
        pci.reset(vm)
        lib.vm_kbc_reset(vm)
        if self.boot.kind == "multiboot":  # QEMU boots those through SeaBIOS: its device state
            vm.kbc.mode = kbc.FIRMWARE_CTR
            for port, value in PIC_FIRMWARE:
                lib.vm_pic_write(vm, port, value)
        lib.vm_update_deadline(vm)
        b = self.boot
        for addr, data in b.blobs:
            self.memory.load(addr, data)
        uc.reg_write(X.UC_X86_REG_CR0, x86.CR0_PE | x86.CR0_ET)  # paging off
        uc.reg_write(X.UC_X86_REG_CR3, 0)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        for msr in (x86.MSR_EFER, x86.MSR_SYSENTER_CS, x86.MSR_SYSENTER_ESP,
                    x86.MSR_SYSENTER_EIP):
            uc.msr_write(msr, 0)
        uc.reg_write(X.UC_X86_REG_CR2, 0)
        self.cpu.regs.load_gdt(*b.gdt)
        self.cpu.regs.load_idt(0, 0x3FF)
        uc.reg_write(X.UC_X86_REG_CS, b.code_selector)
        for r in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS,
                  X.UC_X86_REG_GS):
            uc.reg_write(r, b.data_selector)
        for name, value in b.regs.items():
            self.cpu.regs.write(name, value)
        self.cpu.regs.write("eip", b.entry)
        uc.ctl_flush_tb()
        self.memory.flush_tlb()
        self.memory.xlate.clear()
        if not fresh:
            for observer in self._reset_observers:
                observer()

    def on_reset(self, observer: Callable[[], None]) -> None:
        """Call ``observer`` after each reset (gdb's kill, ``monitor reset``, the guest's):
        what the tools kept of the old run (hooks, traces) no longer applies."""
        self._reset_observers.append(observer)

    # --- devices that need Python ------------------------------------------------------------------
    def _serve_devices(self, requests: int) -> Stop | None:
        self._flush_serial()
        if requests & lib.VM_REQ_EXIT:
            code = self.vm.exit_code & 0xFFFFFFFF
            return Stop(StopReason.EXIT, self.cpu.eip, exit_code=code,
                        message=f"guest exit code {code:#x} (QEMU status "
                                f"{qemu_exit_status(code)})")
        if requests & lib.VM_REQ_ALARM:
            return Stop(StopReason.ALARM, self.cpu.eip, message="the alarm went off")
        if requests & lib.VM_REQ_RESET:
            if self.no_reboot:
                return Stop(StopReason.RESET, self.cpu.eip,
                            message="the guest asked for a reset (i8042 or port 0x92)")
            self.reset()
        return None

    def _flush_serial(self) -> None:
        data = self.native.take_serial()
        if data and self.on_serial is not None and not self._serial_failed:
            try:
                self.on_serial(data)
            except OSError as e:  # a closed pipe must not break the machine: drop the output
                self._serial_failed = True
                print(f"vmigdb: serial output dropped from here on: {e.strerror or e}",
                      file=sys.stderr)

    def set_alarm(self, ns: int) -> None:
        """Stop the run (StopReason.ALARM) once ``ns`` more nanoseconds of virtual time have
        passed: deterministic, unlike a host timer."""
        self.vm.alarm = self.vm.ticks + max(1, ns // NS_PER_TICK)
        lib.vm_update_deadline(self.vm)

    def feed_serial(self, data: bytes) -> int:
        """Bytes for COM1's receiver; how many it took (its FIFO holds 16)."""
        return lib.vm_uart_receive(self.vm, data, len(data))

    def connect_input(self, fd: int) -> None:
        """COM1's input from ``fd`` (vmigdb's stdin: a terminal or a pipe; serialin.py)."""
        source = SerialInput(fd)
        self.serial_input = source
        self.cpu.poll_input = lambda: source.poll(self.feed_serial)
        self.cpu.wait_input = source.wait
        self.cpu.wake = source.wake

    # --- MachineInterface -------------------------------------------------------------------------
    def run(self) -> Stop:
        try:
            return self.cpu.run()
        finally:
            self._flush_serial()

    def step(self) -> Stop:
        try:
            return self.cpu.step()
        finally:
            self._flush_serial()

    def interrupt(self) -> None:
        self.cpu.interrupt()

    @property
    def running(self) -> bool:
        """Whether a run is under way (another thread's ``run``)."""
        return self.cpu.running

    def register_file(self) -> dict[str, int]:
        return self.cpu.regs.register_file()

    def reg_read(self, name: str) -> int:
        return self.cpu.regs.read(name)

    def reg_write(self, name: str, value: int) -> None:
        self.cpu.regs.write(name, value)

    def read_virt(self, addr: int, size: int) -> bytes:
        return self.memory.read_virt(addr, size)

    def write_virt(self, addr: int, data: bytes) -> None:
        self.memory.write_virt(addr, data)

    def read_phys(self, addr: int, size: int) -> bytes:
        return self.memory.read_phys(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        self.memory.write_phys(addr, data)

    def read_cpu(self, addr: int, size: int) -> bytes:
        return self.memory.read_cpu(addr, size)

    def read_cpu_or_none(self, addr: int, size: int) -> bytes | None:
        return self.memory.read_cpu_or_none(addr, size)

    def translate(self, va: int) -> int | None:
        return self.memory.translate(va)

    def regions(self) -> list[tuple[int, int, str]]:
        return self.memory.regions()

    def add_breakpoint(self, va: int) -> None:
        self.cpu.add_breakpoint(va)

    def remove_breakpoint(self, va: int) -> None:
        self.cpu.remove_breakpoint(va)

    def add_watchpoint(self, va: int, length: int, kind: str) -> None:
        self.cpu.add_watchpoint(va, length, kind)

    def remove_watchpoint(self, va: int, length: int, kind: str) -> None:
        self.cpu.remove_watchpoint(va, length, kind)

    def add_code_hook(self, va: int, hook: CodeHook) -> object:
        return self.cpu.add_code_hook(va, hook)

    def remove_code_hook(self, handle: object) -> None:
        self.cpu.remove_code_hook(handle)

    def add_c_code_hook(self, va: int, fn: int, user_data: int) -> object:
        return self.cpu.add_c_code_hook(va, fn, user_data)

    def remove_c_code_hook(self, handle: object) -> None:
        self.cpu.remove_c_code_hook(handle)

    def add_port_observer(self, port: int, observer: PortObserver) -> None:
        """Observe guest ``out`` to an otherwise unassigned port (the ROM's flush and init
        ports); an observer returning True stops the run (StopReason.HOOK)."""
        observers = self._observers.setdefault(port, [])
        observers.append(observer)
        if len(observers) == 1:
            self.native.observe(port, self._on_port)

    def _on_port(self, port: int, size: int, value: int) -> None:
        if self.cpu._ended is not None:
            return
        for obs in self._observers.get(port, ()):
            if obs(self, port, size, value):
                self.cpu._request_stop(StopReason.HOOK)

    def request_service(self, work: Callable[[], None]) -> None:
        self.cpu.request_service(work)

    def on_c_service(self, work: Callable[[], None]) -> None:
        self.cpu.on_c_service(work)

    def stop_after_service(self, reason: StopReason, message: str) -> None:
        self.cpu.stop_after_service(reason, message)

    @property
    def runctl(self):
        return self.cpu.runctl

    def info(self, topic: str) -> list[tuple[str, str]]:
        """Rows for ``monitor info TOPIC``: a device (devices.DEVICES), the clock, the boot."""
        if topic == "clock":
            vm = self.vm
            virtual = f"{vm.ticks} ({vm.ticks * NS_PER_TICK / 1e9:.6f} s, {NS_PER_TICK} ns each)"
            return [("ticks", virtual),
                    ("instructions", str(vm.ticks - vm.idle_ticks)),
                    ("halted", f"{vm.idle_ticks} ticks"),
                    ("block cache misses", str(vm.tb_misses))]
        if topic == "boot":
            return [("kind", self.boot.kind), *((k, str(v)) for k, v in
                                                self.boot.summary.items())]
        dev = devices.DEVICES.get(topic)
        if dev is None:
            raise KeyError(topic)
        return dev.info(self.vm)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise GuestImageError(f"cannot read {what} {path}: {e.strerror}") from None
