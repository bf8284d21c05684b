"""The CPU and its run control: Unicorn, break- and watchpoints, hooks, events, the clock.

Nothing happens inside a Unicorn hook except recording, stopping and delivering an exception
the CPU raised. Protocol work, hook insertion and removal, interrupt delivery and idling all
happen between two ``emu_start`` calls.

Run: one ``emu_start`` in exits mode with no exit (``until`` ignored: the end-of-run
invalidation of ``until-1`` would raise a hidden #PF that overwrites CR2), no timeout and no
count, so code runs at Unicorn's full speed. The C block hook (stub/native/cpu.c) keeps the
virtual clock and stops at a block boundary, with the PC exact, when a device timer is due and
raises a deliverable interrupt, when a device needs Python (serial output, guest exit, reset),
or on request (Ctrl-C from another thread, a C hook that wants a service).

Step: count=1, with the translation cache flushed once when coming from run mode (Unicorn does
not single-step warm code otherwise). Interrupts are not taken during a step (as QEMU's
gdbstub does by default); the next continue takes them.

The clock: the block hook adds a block's instruction count when the block starts. When a
block is left early (an exception, a breakpoint, a step), the clock is set back to the
instructions that really ran, counted with capstone from the block's start (deliver.c); so the
clock is the same whether or not a debugger stopped the guest on the way. Exceptions, #UD and
SYSENTER are C hooks too (deliver.c): a Python delivery cost ~240 us, a third of a Linux boot.

Interrupts: the 8259A's output (C) stops the run at a block boundary when EFLAGS.IF is set;
here the interrupt shadow after STI/MOV SS is honoured (the next block, one instruction long,
runs first), the PIC is acknowledged and the vector delivered through the IDT. ``hlt`` with
IF=1 advances the clock straight to the next device event: no spinning, no sleeping. ``hlt``
with IF=0, or with no device event to come, stops with StopReason.HALT.

Watchpoints are physical memory hooks; Unicorn aborts the instruction when a memory hook stops
emulation (the store is already done), so a hit restores the old bytes and re-executes that one
instruction with count=1: the stop is reported after the access, with the store visible,
exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from unicorn import (
    UC_ERR_EXCEPTION,
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_PROT,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_PROT,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE,
    UC_MEM_WRITE_UNMAPPED,
    Uc,
    UcError,
)

from vmigdb import x86
from vmigdb.stub.machine.memory import Memory, pages
from vmigdb.stub.machine.native import (
    NEVER,
    NS_PER_TICK,
    Native,
    add_c_hook,
    del_c_hook,
    ffi,
    lib,
)
from vmigdb.stub.machine.registers import Registers
from vmigdb.stub.machine.stops import CodeHook, Stop, StopReason

UNTIL = 0xFFFFFFFF  # ignored (exits mode, no exits): a real `until` is costly and unreliable
_HLT = 0xF4
_WATCH_SLACK = 7  # memory hooks match the access's start address: widen to catch overlaps
_UC_ERRORS = {
    UC_ERR_FETCH_UNMAPPED: "instruction fetch from unmapped memory",
    UC_ERR_READ_UNMAPPED: "read of unmapped memory",
    UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
    UC_ERR_FETCH_PROT: "instruction fetch from protected memory",
    UC_ERR_READ_PROT: "read of protected memory",
    UC_ERR_WRITE_PROT: "write to protected memory",
    UC_ERR_INSN_INVALID: "invalid instruction",
}
_UNMAPPED_KIND = {UC_MEM_READ_UNMAPPED: "read of", UC_MEM_WRITE_UNMAPPED: "write to",
                  UC_MEM_FETCH_UNMAPPED: "instruction fetch from"}
class _Site:
    """Everything hooked at one code address: one Unicorn hook serves all of it."""

    __slots__ = ("breakpoint", "handle", "hooks")

    def __init__(self) -> None:
        self.handle: int | None = None
        self.breakpoint = False
        self.hooks: dict[int, CodeHook] = {}


@dataclass(frozen=True)
class HookHandle:
    va: int
    ident: int


@dataclass
class _CHook:
    """A C code hook: re-added (to run last) when a Python hook joins its address."""

    fn: int
    user_data: int
    handle: int


@dataclass
class _Watch:
    va: int
    length: int
    kind: str
    pieces: list[tuple[int, int, int]]  # (pa, length, va) per physical page
    handles: list[int]


class Cpu:
    """Unicorn's i386 core with run control; ``owner`` is what code hooks are called with."""

    def __init__(self, uc: Uc, memory: Memory, native: Native) -> None:
        self.uc = uc
        self.memory = memory
        self.native = native
        self.vm = native.vm
        self.owner: object = self
        self.regs = Registers(uc, memory.read_virt, self._registers_changed)
        #: Device requests (serial output, exit, reset) served between runs; returns a Stop to
        #: end the run with, or None to go on. Set by the PC.
        self.serve_devices: Callable[[int], Stop | None] = lambda requests: None
        #: Host input for the devices (COM1), polled between runs; ``wait_input(seconds)``
        #: waits up to that long (None: for ever) for some, True if there may be some now.
        #: Set by the PC when it has an input source.
        self.poll_input: Callable[[], None] = lambda: None
        self.wait_input: Callable[[float | None], bool] = lambda seconds: False
        self.wake: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._running = False
        self._stopped = threading.Event()
        self._interrupt_req = False
        self._sites: dict[int, _Site] = {}
        self._idle_sites: set[int] = set()  # breakpoint removed, hook kept until a continue
        self._c_hooks: dict[int, dict[int, _CHook]] = {}  # va -> ident -> C code hook
        self._c_services: list[Callable[[], None]] = []
        self._services: list[Callable[[], None]] = []
        self._watches: list[_Watch] = []
        self._next_ident = 1
        self._runctl_seen = 0  # runctl.stopped when the last interrupt was reported
        self.reset_state()
        # Memory hooks only where they are needed: any memory hook on a page keeps Unicorn
        # from ever marking it dirty, so every store to it takes the slow path (measured: a
        # third of a Linux boot's time went there while these covered all of memory).
        if memory.rom_end > memory.ROM_BASE:
            uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write_prot, None, memory.ROM_BASE,
                        memory.rom_end - 1)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped, None, memory.ram_size, 0xFFFFFFFF)

    def reset_state(self) -> None:
        """Forget every stop, halt and pending event (the machine was reset)."""
        self._stop: tuple | None = None  # (reason, extras dict) set by hooks
        self._halted: int | None = None  # EIP after the hlt the CPU waits in
        self._ended: Stop | None = None  # the guest exited: every run answers this
        self._step_mode = False
        self._start_pc: int | None = None  # first arrival at the resume pc is special
        self._arrival_done: int | None = None  # hooks at this pc already ran (we stopped there)
        self._stepping = False
        self._watch_muted = False
        self._watch_hit: tuple | None = None
        self._unmapped: str | None = None

    # --- registers ----------------------------------------------------------------------------
    def reg_read(self, name: str) -> int:
        return self.regs.read(name)

    def reg_write(self, name: str, value: int) -> None:
        self.regs.write(name, value)

    def _registers_changed(self, name: str) -> None:
        self.memory.xlate.clear()
        if name == "eip":
            self._halted = None
            self._arrival_done = None
        elif name.startswith("cr") or name == "efer":
            self.memory.flush_tlb()
            if name.startswith("cr"):
                self.uc.ctl_flush_tb()

    @property
    def eip(self) -> int:
        return self.regs.read("eip")

    # --- run control ---------------------------------------------------------------------------
    def step(self) -> Stop:
        """Execute exactly one instruction (delivering an exception counts as one)."""
        if self._ended is not None:
            return self._ended
        if self._halted is not None:
            stop = self._idle()
            if stop is not None:
                return stop
            return Stop(StopReason.STEP, self.eip)  # the step is the interrupt's delivery
        if not self._step_mode:
            self.uc.ctl_flush_tb()  # count=1 does not single-step warm code otherwise
            self._step_mode = True
        rc = self.vm.rc
        pc = self.eip
        self._stepping = True
        rc.stepping = 1
        self.vm.irq_delivery = 0
        pending, rc.stop = rc.stop, 0  # a step always makes its step
        stopped = rc.stopped
        err = self._emulate(pc, count=1, resume=True)
        if rc.stopped != stopped:  # a Ctrl-C landed inside the step: step again
            pending = 1
            err = self._emulate(pc, count=1, resume=True)
        rc.stop = pending or rc.stop
        rc.stepping = 0
        self.vm.irq_delivery = 1
        self._stepping = False
        self._c_service()
        stop = self._classify(err, stepping=True)
        self._run_services()
        if stop is None:
            stop = self._serve_requests()
        if stop is not None:
            return stop
        eip = self.eip
        if eip == (pc + 1) & 0xFFFFFFFF and self._byte_at(pc) == _HLT:
            if not self.regs.read("eflags") & x86.EFLAGS_IF:
                return self._halt_stop(eip)
            self._halted = eip  # the next run or step waits for the interrupt
        return Stop(StopReason.STEP, eip)

    def run(self) -> Stop:
        """Run until a breakpoint, watchpoint, hook stop, interrupt(), guest exit or machine stop.
        A breakpoint at the current pc does not stop the run before it executes.

        Work a hook asked for with ``request_service`` runs between two ``emu_start`` calls and
        the run goes on: the caller never sees those pauses, nor interrupt deliveries, nor the
        time the CPU spends halted."""
        resume = True
        while True:
            stop = self._run_once(resume)
            if stop is not None:
                return stop
            resume = False

    def request_service(self, work: Callable[[], None]) -> None:
        """From inside a hook: pause the run, call ``work`` outside Unicorn, then resume.

        Hooks may not add or remove hooks; this is how a tracer installs the hooks it finds it
        needs (the ROM's entries once vmi_init announces it, a return address)."""
        self._services.append(work)
        if not self._stepping:  # a step ends after its one instruction anyway
            self.uc.emu_stop()

    @property
    def runctl(self):
        """Run control, for C hooks (a ``struct vmigdb_runctl *``): they ask for a stop at the
        next block boundary or for a service call between runs through it (stub/native/vm.h)."""
        return ffi.addressof(self.vm[0], "rc")

    def on_c_service(self, work: Callable[[], None]) -> None:
        """Call ``work`` between two emulations whenever a C hook set ``runctl.service``."""
        self._c_services.append(work)

    def stop_after_service(self, reason: StopReason, message: str) -> None:
        """From a service: end this run with ``reason`` (a tool stopped the guest, not gdb)."""
        if self._stop is None:
            self._stop = (reason, {"message": message})

    def _c_service(self) -> bool:
        rc = self.vm.rc
        if not rc.service:
            return False
        rc.service = 0
        with self._lock:
            if not self._interrupt_req:  # the stop (if one happened) was for the service only
                rc.stop = 0
                self._runctl_seen = rc.stopped
        for work in self._c_services:
            work()
        return True

    def _run_services(self) -> bool:
        if not self._services:
            return False
        work, self._services = self._services, []
        for w in work:
            w()
        return True

    def _run_once(self, resume: bool) -> Stop | None:
        if self._ended is not None:
            return self._ended
        self.poll_input()
        with self._lock:
            if self._interrupt_req:
                self._interrupt_req = False
                self.vm.rc.stop = 0
                return Stop(StopReason.INTERRUPTED, self.eip, message="interrupted")
            self._running = True
            self._stopped.clear()
        try:
            if self._halted is not None:
                return self._idle()
            self._step_mode = False  # Unicorn flushes the cache itself when count goes to 0
            self._drop_idle_sites()
            err = self._emulate(self.eip, count=0, resume=resume)
        finally:
            with self._lock:
                self._running = False
                self._stopped.set()
        c_serviced = self._c_service()
        stop = self._classify(err, stepping=False)
        serviced = self._run_services() or c_serviced
        if stop is None:
            stop = self._serve_requests()
        if stop is not None:
            return stop
        why = self.vm.stop_reason
        if why == lib.VM_STOP_IRQ:
            return self._take_interrupt()
        if serviced or why in (lib.VM_STOP_REQUEST, lib.VM_STOP_DEVICE):
            return None  # paused only for between-run work: go on
        eip = self.eip
        if self._byte_at((eip - 1) & 0xFFFFFFFF) == _HLT:
            if not self.regs.read("eflags") & x86.EFLAGS_IF:
                return self._halt_stop(eip)
            self._halted = eip
            return None  # the next turn idles until an interrupt
        old = self.regs.ctx.old_exception()
        why_text = "triple fault" if old == 8 else "no reason given"
        return Stop(StopReason.TRIPLE_FAULT if old == 8 else StopReason.FAULT, eip,
                    vector=old if old >= 0 else None,
                    message=f"Unicorn stopped the CPU at {eip:#x} ({why_text})")

    def _serve_requests(self) -> Stop | None:
        requests = self.vm.requests
        if not requests:
            return None
        self.vm.requests = 0
        lib.vm_update_deadline(self.vm)
        stop = self.serve_devices(requests)
        if stop is not None and stop.reason is StopReason.EXIT:
            self._ended = stop
        return stop

    def _take_interrupt(self) -> Stop | None:
        """The block hook stopped for a deliverable interrupt: take it (INTA, IDT)."""
        if self.regs.ctx.interrupt_shadow():
            self.vm.irq_holdoff = 1  # the shadow's one-instruction block runs first
            return None
        return self._deliver_external(self.eip)

    def _deliver_external(self, return_eip: int) -> Stop | None:
        vector = lib.vm_interrupt_ack(self.vm)
        if lib.vm_deliver(self.vm, vector, 0, 0, return_eip) == 0:
            return None
        first = ffi.string(self.vm.deliver_error).decode()
        if lib.vm_deliver(self.vm, 8, 1, 0, return_eip) == 0:
            return None
        second = ffi.string(self.vm.deliver_error).decode()
        return self._triple_fault(vector, return_eip, f"{first}; then #DF: {second}")

    def _triple_fault(self, vector: int, eip: int, why: str) -> Stop:
        return Stop(StopReason.TRIPLE_FAULT, eip, vector=vector,
                    message=f"triple fault: {x86.vector_name(vector)} at eip {eip:#x} could "
                            f"not be delivered ({why})")

    def _idle(self) -> Stop | None:
        """Halted with IF=1: advance the clock to the next device event until the PIC has an
        interrupt for the CPU, then take it. Ctrl-C ends the wait; the CPU stays halted."""
        vm = self.vm
        eip = self._halted
        assert eip is not None
        while True:
            with self._lock:
                if self._interrupt_req:
                    self._interrupt_req = False
                    vm.rc.stop = 0
                    return Stop(StopReason.INTERRUPTED, eip, message="interrupted")
            self.poll_input()
            if vm.pic.output:
                self._halted = None
                return self._deliver_external(eip)
            stop = self._serve_requests()
            if stop is not None:
                return stop
            nxt = lib.vm_next_event(vm)
            if nxt == NEVER or not self._timer_can_interrupt():
                if self.wait_input(None):  # only the host's input can wake it: wait for that
                    continue
                self._halted = None
                return Stop(StopReason.HALT, eip,
                            message=f"hlt at {eip - 1:#x} with interrupts enabled and no "
                                    "interrupt source that can wake it (no timer armed, or "
                                    "its line masked at the PIC)")
            if nxt > vm.ticks:
                # An interactive input source paces idle time to real time, so a guest waiting
                # for a key does not race through virtual seconds; input cuts the wait short.
                if self.wait_input((nxt - vm.ticks) * NS_PER_TICK / 1e9):
                    continue
                vm.idle_ticks += nxt - vm.ticks
                self.native.set_ticks(nxt)
            lib.vm_run_timers(vm)

    def _timer_can_interrupt(self) -> bool:
        """Whether a device with a timer running (PIT channel 0, the RTC, COM1's receive
        timeout) has an unmasked line to the CPU."""
        vm = self.vm
        master, slave = vm.pic.chip[0].imr, vm.pic.chip[1].imr
        for irq, when in ((0, vm.pit.ch[0].next_transition), (4, vm.com1.timeout_at),
                          (8, lib.vm_rtc_next_event(vm))):
            if when == NEVER:
                continue
            if irq < 8 and not master >> irq & 1:
                return True
            if irq >= 8 and not slave >> (irq - 8) & 1 and not master >> 2 & 1:
                return True
        return False

    def _halt_stop(self, eip: int) -> Stop:
        self._halted = None
        return Stop(StopReason.HALT, eip,
                    message=f"hlt at {eip - 1:#x} with interrupts disabled: the CPU can never "
                            "wake (Linux: System halted / power off)")

    @property
    def running(self) -> bool:
        return self._running

    def interrupt(self) -> None:
        """Thread-safe: make a running ``run`` return StopReason.INTERRUPTED soon. Called while
        no run is active, it makes the next ``run`` return INTERRUPTED at once."""
        # Not uc_emu_stop() from this thread: that can leave the guest PC stale (cpu.c says
        # why). The C block hook stops the run itself at the next block boundary.
        with self._lock:
            self._interrupt_req = True
            self.vm.rc.stop = 1
        self.wake()  # a wait for host input ends too

    def _emulate(self, pc: int, count: int, resume: bool) -> UcError | None:
        self._stop = None
        self._watch_hit = None
        # A resume the caller asked for skips a breakpoint at the pc once; a pause of our own
        # (service, interrupt delivery) stopped before any hook at the pc ran, so they run.
        self._start_pc = pc if resume and pc in self._sites else None
        self.vm.stop_reason = lib.VM_STOP_NONE
        self.vm.if_stale = 1  # registers may have been written since the last run
        self.vm.pf_pending = 0
        self.regs.ctx.clear_old_exception()
        self.memory.xlate.clear()
        self.memory.in_emu = True
        try:
            while True:
                try:
                    self.uc.emu_start(pc, UNTIL, 0, count)
                    err = None
                except UcError as e:
                    err = e
                if err is None or err.errno != UC_ERR_EXCEPTION or not self.vm.pf_pending:
                    break
                # The page walk (stub/native/mmu.c) found a fault and Unicorn stopped at the
                # faulting instruction: it runs again under Unicorn's own walk, which raises
                # the #PF. Its breakpoint and hooks already ran.
                pc = self.eip
                lib.vm_settle(self.vm, pc)
                lib.vm_retry_fault(self.vm)
                if pc in self._sites:
                    self._start_pc = self._arrival_done = pc
        finally:
            self.memory.in_emu = False
        if self.vm.stop_reason == lib.VM_STOP_NONE:
            lib.vm_settle(self.vm, self.eip)
        self.vm.now = self.vm.ticks
        exc = self.native.callback_error
        if exc is not None:
            self.native.callback_error = None
            raise exc
        return err

    def _classify(self, err: UcError | None, stepping: bool) -> Stop | None:
        """Turn what the hooks recorded (or Unicorn's error) into a Stop; None if nothing did."""
        vm = self.vm
        if vm.stop_reason == lib.VM_STOP_TRIPLE:
            vm.stop_reason = lib.VM_STOP_NONE
            return self._triple_fault(vm.fault_vector, vm.fault_eip,
                                      ffi.string(vm.deliver_error).decode())
        if self._watch_hit is not None:
            return self._finish_watch(stepping)
        if self._stop is not None:
            reason, extra = self._stop
            pc = extra.pop("pc", None)
            if reason is StopReason.INTERRUPTED:
                with self._lock:
                    self._interrupt_req = False
                    self.vm.rc.stop = 0
            if stepping and reason in (StopReason.BREAKPOINT, StopReason.HOOK):
                reason = StopReason.STEP  # the step completed; hooks at the new pc already ran
            return Stop(reason, self.eip if pc is None else pc, **extra)
        rc = self.vm.rc
        if (self._interrupt_req or rc.stopped != self._runctl_seen) and not stepping:
            with self._lock:  # one stop answers every request made until now
                self._interrupt_req = False
                rc.stop = 0
            self._runctl_seen = rc.stopped
            return Stop(StopReason.INTERRUPTED, self.eip, message="interrupted")
        if err is not None:
            eip = self.eip
            what = self._unmapped or _UC_ERRORS.get(err.errno, str(err))
            self._unmapped = None
            return Stop(StopReason.FAULT, eip, message=f"{what} at eip {eip:#x}")
        return None

    def _byte_at(self, va: int) -> int | None:
        data = self.memory.read_cpu_or_none(va, 1)
        return None if data is None else data[0]

    def _request_stop(self, reason: StopReason, **extra: object) -> None:
        if self._stop is None:
            self._stop = (reason, extra)
        self.uc.emu_stop()

    # --- break-, watchpoints and hooks -----------------------------------------------------------
    def add_breakpoint(self, va: int) -> None:
        self._site(va).breakpoint = True
        self._idle_sites.discard(va & 0xFFFFFFFF)

    def remove_breakpoint(self, va: int) -> None:
        """gdb removes every breakpoint at each stop and inserts them again before it resumes:
        a hook left with nothing to do stays until the next continue, so that cycle costs no
        hook_del/hook_add and no retranslation (a step over it runs its callback once)."""
        site = self._sites.get(va)
        if site is not None:
            site.breakpoint = False
            if not site.hooks:
                self._idle_sites.add(va)

    def _drop_idle_sites(self) -> None:
        for va in self._idle_sites:
            site = self._sites.get(va)
            if site is not None:
                self._maybe_drop_site(va, site)
        self._idle_sites.clear()

    def add_code_hook(self, va: int, hook: CodeHook) -> object:
        """A per-address hook (never a whole-range one); returns a handle for remove_code_hook."""
        ident = self._next_ident
        self._next_ident += 1
        self._site(va).hooks[ident] = hook
        return HookHandle(va & 0xFFFFFFFF, ident)

    def remove_code_hook(self, handle: object) -> None:
        assert isinstance(handle, HookHandle)
        site = self._sites.get(handle.va)
        if site is not None and site.hooks.pop(handle.ident, None) is not None:
            self._maybe_drop_site(handle.va, site)

    def add_c_code_hook(self, va: int, fn: int, user_data: int) -> object:
        """A per-address hook whose callback is C (``fn(uc, address, size, user_data)``): no
        Python on the hot path. It runs after the Python hooks at ``va``, so when one of those
        stops the run, the C hook runs once on the resume, not twice. Returns a handle."""
        va &= 0xFFFFFFFF
        ident = self._next_ident
        self._next_ident += 1
        hook = _CHook(fn, user_data, add_c_hook(self.uc, UC_HOOK_CODE, fn, user_data, va, va))
        self._c_hooks.setdefault(va, {})[ident] = hook
        self.uc.ctl_remove_cache(va, va + 1)  # hooks added after translation never fire
        return HookHandle(va, ident)

    def remove_c_code_hook(self, handle: object) -> None:
        assert isinstance(handle, HookHandle)
        hooks = self._c_hooks.get(handle.va, {})
        hook = hooks.pop(handle.ident, None)
        if hook is not None:
            del_c_hook(self.uc, hook.handle)
        if not hooks:
            self._c_hooks.pop(handle.va, None)

    def _site(self, va: int) -> _Site:
        va &= 0xFFFFFFFF
        site = self._sites.get(va)
        if site is None:
            site = self._sites[va] = _Site()
            site.handle = self.uc.hook_add(UC_HOOK_CODE, self._on_code, site, va, va)
            for hook in self._c_hooks.get(va, {}).values():  # keep the C hooks after it
                del_c_hook(self.uc, hook.handle)
                hook.handle = add_c_hook(self.uc, UC_HOOK_CODE, hook.fn, hook.user_data, va, va)
            self.uc.ctl_remove_cache(va, va + 1)  # hooks added after translation never fire
        return site

    def _maybe_drop_site(self, va: int, site: _Site) -> None:
        if not site.breakpoint and not site.hooks:
            del self._sites[va]
            self.uc.hook_del(site.handle)  # hook_del invalidates what it instrumented

    def add_watchpoint(self, va: int, length: int, kind: str) -> None:
        """kind: "watch" (write), "rwatch" (read), "awatch" (either)."""
        from vmigdb.stub.machine.stops import MemoryFault

        if kind not in ("watch", "rwatch", "awatch") or length <= 0:
            raise ValueError(f"bad watchpoint {kind} length {length}")
        pieces = []
        for pva, n in pages(va, length):
            pa = self.memory.translate(pva)
            if pa is None:
                raise MemoryFault(pva)
            pieces.append((pa, n, pva))
        types = {"watch": UC_HOOK_MEM_WRITE, "rwatch": UC_HOOK_MEM_READ,
                 "awatch": UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ}[kind]
        w = _Watch(va, length, kind, pieces, [])
        for pa, n, _pva in pieces:
            w.handles.append(self.uc.hook_add(types, self._on_watch, w,
                                              max(0, pa - _WATCH_SLACK), pa + n - 1))
        self._watches.append(w)

    def remove_watchpoint(self, va: int, length: int, kind: str) -> None:
        for w in self._watches:
            if (w.va, w.length, w.kind) == (va, length, kind):
                for h in w.handles:
                    self.uc.hook_del(h)
                self._watches.remove(w)
                return

    # --- hooks (inside emu_start: record, stop, deliver) -------------------------------------------
    def _on_code(self, uc: Uc, address: int, size: int, site: _Site) -> None:
        if address == self._start_pc:
            # First arrival at the resume pc: the breakpoint is skipped once, and hooks that
            # already ran when we stopped here do not run twice.
            self._start_pc = None
            if self._arrival_done == address:
                self._arrival_done = None
                return
            pending = len(self._services)
            for hook in list(site.hooks.values()):
                if hook(self.owner) and not self._stepping:
                    self._arrival_done = address
                    self._request_stop(StopReason.HOOK, pc=address)
            if len(self._services) > pending:
                self._arrival_done = address  # resuming here must not run these hooks again
            return
        if self._arrival_done == address:  # our own pause stopped here after the hooks ran
            self._arrival_done = None
            return
        stop = False
        pending = len(self._services)
        for hook in list(site.hooks.values()):
            stop = bool(hook(self.owner)) or stop
        if len(self._services) > pending:
            self._arrival_done = address  # resuming here must not run these hooks again
        if site.breakpoint:
            self._arrival_done = address
            self._request_stop(StopReason.BREAKPOINT, pc=address)
        elif stop:
            self._arrival_done = address
            self._request_stop(StopReason.HOOK, pc=address)

    def _on_write_prot(self, uc: Uc, access: int, address: int, size: int, value: int,
                       _data: object) -> bool:
        # Guest write to the ROM: dropped, as shadow ROM does. Anything else stays an error.
        return self.memory.is_rom(address)

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int,
                     _data: object) -> bool:
        kind = _UNMAPPED_KIND.get(access, "access to")
        self._unmapped = f"{kind} unmapped physical address {address:#x}"
        return False

    def _on_watch(self, uc: Uc, access: int, address: int, size: int, value: int,
                  w: _Watch) -> None:
        if self._watch_muted or self._watch_hit is not None:
            return
        for pa, n, pva in w.pieces:
            if address < pa + n and address + size > pa:
                hit_va = pva + max(0, address - pa)
                old = bytes(uc.mem_read(address, size)) if access == UC_MEM_WRITE else None
                self._watch_hit = (w.kind, hit_va, address, old)
                if not self._stepping:
                    uc.emu_stop()  # aborts this instruction; _finish_watch re-executes it
                return

    def _finish_watch(self, stepping: bool) -> Stop:
        kind, va, pa, old = self._watch_hit
        self._watch_hit = None
        if not stepping:
            # Unicorn abandoned the instruction after its access: undo a store, then execute
            # the instruction once more with the watchpoints muted, so it completes exactly once.
            if old is not None:
                self.uc.mem_write(pa, old)
            pc = self.eip
            if not self._step_mode:
                self.uc.ctl_flush_tb()
                self._step_mode = True
            self._arrival_done = pc if pc in self._sites else None
            rc = self.vm.rc
            self._watch_muted = True
            self._stepping = True
            rc.muted = rc.stepping = 1  # C hooks here ran already
            self.vm.irq_delivery = 0
            try:
                err = self._emulate(pc, count=1, resume=False)
            finally:
                rc.muted = rc.stepping = 0
                self.vm.irq_delivery = 1
                self._watch_muted = False
                self._stepping = False
            if self.vm.stop_reason == lib.VM_STOP_TRIPLE:
                return self._classify(err, stepping=True)
        return Stop(StopReason.WATCHPOINT, self.eip, watch_addr=va, watch_kind=kind,
                    message=f"{kind} at {va:#x}")
