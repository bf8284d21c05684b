"""A fake machine for the protocol tier: ``MachineInterface`` over a bytearray and a dict.

It interprets one-byte "instructions" from its memory, enough to produce every stop reason:
0xEB spins until ``interrupt()``, 0xF4 halts, 0xE6 exits with code ``eax`` (as a guest's write
to isa-debug-exit), 0x89 stores eax at [ebx], 0x8B loads [ebx] into eax, 0x0F faults with #UD,
anything else is a one-byte nop. Breakpoints stop before the instruction (not at the resume pc);
watchpoints stop after the access. ``interrupt()`` behaves as the real machine's: a request made
while no run is under way (or after a run decided to stop for another reason) is kept, and the
next run returns INTERRUPTED at once. It shares no code with the real PC: the server is tested
against the interface alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vmigdb.stub import target
from vmigdb.stub.machine import CodeHook, MemoryFault, PortObserver, Stop, StopReason

MEM_SIZE = 0x100000
ROM_BASE, ROM_SIZE = 0xC0000, 0x8000
CODE = 0x1000
DATA = 0x8000


def _initial_regs() -> dict[str, int]:
    regs = {r.name: 0 for r in target.REGISTERS if r.name != "fop"}  # fop: not modelled
    regs.update(eax=0x2BADB002, ebx=0x9500, esp=0x7FF0, ebp=0x7FF8, eip=CODE, eflags=0x202,
                cs=0x08, ss=0x10, ds=0x10, es=0x10, fs=0x10, gs=0x10, cr0=0x11,
                gdtr_base=0x600, gdtr_limit=0x17, fctrl=0x37F, mxcsr=0x1F80,
                xmm0=0x00112233445566778899AABBCCDDEEFF, st0=0x3FFF8000000000000000)
    return regs


class FakeMachine:
    """The machine interface over a bytearray and a dict: no CPU, one-byte pseudo-instructions."""

    def __init__(self) -> None:
        self.mem = bytearray(MEM_SIZE)
        # A flat GDT at 0x600: null, code 0x08, data 0x10 (for monitor info registers).
        self.mem[0x608:0x610] = bytes.fromhex("ffff0000009acf00")
        self.mem[0x610:0x618] = bytes.fromhex("ffff00000092cf00")
        self.regs = _initial_regs()
        self.breakpoints: set[int] = set()
        self.watchpoints: set[tuple[int, int, str]] = set()
        self.resets = 0
        self._interrupt = threading.Event()
        self.running_event = threading.Event()
        self.ram_size = MEM_SIZE
        self.on_serial = None

    def reset(self) -> None:
        self.regs = _initial_regs()
        self.resets += 1

    def reg_read(self, name: str) -> int:
        return self.regs[name]

    def register_file(self) -> dict[str, int]:
        return dict(self.regs)

    def reg_write(self, name: str, value: int) -> None:
        if name not in self.regs:
            raise KeyError(name)
        self.regs[name] = value

    def _check(self, addr: int, size: int) -> None:
        if addr + size > MEM_SIZE:
            raise MemoryFault(max(addr, MEM_SIZE))

    def read_virt(self, addr: int, size: int) -> bytes:
        self._check(addr, size)
        return bytes(self.mem[addr : addr + size])

    def write_virt(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        self.mem[addr : addr + len(data)] = data

    read_phys = read_virt
    write_phys = write_virt

    def translate(self, va: int) -> int | None:
        return va if va < MEM_SIZE else None

    def regions(self) -> list[tuple[int, int, str]]:
        return [(0, ROM_BASE, "ram"), (ROM_BASE, ROM_SIZE, "rom"),
                (ROM_BASE + ROM_SIZE, MEM_SIZE - ROM_BASE - ROM_SIZE, "ram")]

    def _watch_hit(self, addr: int, write: bool) -> tuple[int, str] | None:
        for va, length, kind in self.watchpoints:
            if va <= addr < va + length and (kind == "awatch" or (kind == "watch") == write):
                return va, kind
        return None

    def _exec(self, spin_wait: bool) -> Stop | None:
        """One pseudo-instruction; a Stop if it stops the machine."""
        pc = self.regs["eip"]
        op = self.mem[pc]
        if op == 0xEB:  # jmp $: spins until interrupted
            if spin_wait:
                self._interrupt.wait()
                self._interrupt.clear()
                return Stop(StopReason.INTERRUPTED, pc)
            return Stop(StopReason.STEP, pc)
        if op == 0xF4:
            return Stop(StopReason.HALT, pc, message="hlt with IF=0")
        if op == 0xE6:
            return Stop(StopReason.EXIT, pc, exit_code=self.regs["eax"])
        if op == 0x0F:
            return Stop(StopReason.FAULT, pc, vector=6, message="invalid opcode")
        self.regs["eip"] = pc + 1
        if op in (0x89, 0x8B):
            addr = self.regs["ebx"]
            if op == 0x89:
                self.mem[addr : addr + 4] = self.regs["eax"].to_bytes(4, "little")
            else:
                self.regs["eax"] = int.from_bytes(self.mem[addr : addr + 4], "little")
            hit = self._watch_hit(addr, op == 0x89)
            if hit:
                return Stop(StopReason.WATCHPOINT, pc + 1, watch_addr=hit[0], watch_kind=hit[1])
        return None

    def step(self) -> Stop:
        stop = self._exec(spin_wait=False)
        return stop or Stop(StopReason.STEP, self.regs["eip"])

    def run(self) -> Stop:
        self.running_event.set()
        try:
            if self._interrupt.is_set():  # asked for while stopped: kept for this run
                self._interrupt.clear()
                return Stop(StopReason.INTERRUPTED, self.regs["eip"])
            first = True
            for _ in range(1_000_000):
                pc = self.regs["eip"]
                if pc in self.breakpoints and not first:
                    return Stop(StopReason.BREAKPOINT, pc)
                first = False
                stop = self._exec(spin_wait=True)
                if stop:
                    return stop
            return Stop(StopReason.FAULT, self.regs["eip"], message="runaway")
        finally:
            self.running_event.clear()

    def interrupt(self) -> None:
        self._interrupt.set()

    def add_breakpoint(self, va: int) -> None:
        self.breakpoints.add(va)

    def remove_breakpoint(self, va: int) -> None:
        self.breakpoints.discard(va)

    def add_watchpoint(self, va: int, length: int, kind: str) -> None:
        self.watchpoints.add((va, length, kind))

    def remove_watchpoint(self, va: int, length: int, kind: str) -> None:
        self.watchpoints.discard((va, length, kind))


    @property
    def running(self) -> bool:
        return self.running_event.is_set()

    def read_cpu(self, addr: int, size: int) -> bytes:
        return self.read_virt(addr, size)

    # The tracer's hooks: the fake runs no code that could reach them.
    def add_code_hook(self, va: int, hook: CodeHook) -> object:
        return (va, hook)

    def remove_code_hook(self, handle: object) -> None:
        pass

    def add_c_code_hook(self, va: int, fn: int, user_data: int) -> object:
        return (va, fn, user_data)

    def remove_c_code_hook(self, handle: object) -> None:
        pass

    def add_port_observer(self, port: int, observer: PortObserver) -> None:
        pass

    def request_service(self, work: Callable[[], None]) -> None:
        work()

    def on_c_service(self, work: Callable[[], None]) -> None:
        pass

    def stop_after_service(self, reason: StopReason, message: str) -> None:
        pass

    def on_reset(self, observer: Callable[[], None]) -> None:
        pass

    @property
    def runctl(self) -> object:
        return None

    def info(self, topic: str) -> list[tuple[str, str]]:
        if topic != "fake":
            raise KeyError(topic)
        return [("pseudo-instructions", "0xEB 0xF4 0xE6 0x89 0x8B 0x0F")]
