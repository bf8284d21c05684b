"""The portable trace path: internal gdb breakpoints that record and never stop.

Works on any gdb target (QEMU's gdbstub included): one breakpoint per ROM entry reads the call's
arguments where abi.CALLS says they are, one per distinct return address reads the results, one
on each ROM announcement ``out`` (vmi_init, batch flush) reads EAX and the batch. Every
``stop()`` hands what it read to ``vmigdb.recorder.Recorder`` and returns False, so the guest
runs on; each hit still costs a stop/resume round trip (about 1.5 ms on QEMU), which is why the
stub's in-stub tracer is the fast path.

A ROM the guest copies to RAM is found when the guest stores its address: an internal write
watchpoint on the guest's ROM pointer (``vmi.base``, Linux's ``vmi_rom``) hooks the copy before
vmi_init runs. gdb's testsuite creates breakpoints from ``stop()`` the same way; none is ever
deleted there.

Started before the guest can reach its ROM (QEMU at reset: real mode, SeaBIOS has not placed the
option ROM yet), the tracer arms itself: one internal breakpoint where the ROM is there to find,
the kernel's own ``vmi_init`` (before Linux scans for the ROM) or the guest ELF's entry (the
demo guest), does what ``start`` would have done, so a whole boot can be traced.

On Linux each call also gets its context (``vmigdb.context``): the current task, read as the
kernel reads it, named by pid and comm when it changes; the caller's frame (``[EBP + 4]``); the
interrupt state; and, at SetLazyMode, the frame-pointer chain for the batch it opens.

Ctrl-C: QEMU drops the Ctrl-C byte gdb sends while it is stopped, and during a traced continue
it is stopped at a breakpoint most of the time, so gdb's own Ctrl-C was lost (gdb had consumed
the SIGINT: its remote layer sends the byte and forgets it). While a traced continue runs,
``_CtrlC`` takes SIGINT from gdb's main thread (blocked there, waited for in a thread) and asks
gdb to interrupt the target (``interrupt``). Until the target stops, every hit asks again after
it resumes the guest (a byte that reached a stopped QEMU was dropped), so the continue ends as
a Ctrl-C at a terminal ends, a stop with SIGINT, within a few hits; after ``CTRL_C_TRIES`` hits
without one, the hit itself stops the continue.
"""

from __future__ import annotations

import signal
import struct
import threading
import traceback
from collections.abc import Iterable
from pathlib import Path

import gdb

from vmigdb import abi, context, elf
from vmigdb import trace as tr
from vmigdb.abi import VmiCall
from vmigdb.commands import linuxctx, romcode, target
from vmigdb.errors import GuestImageError, RomError, VmiError
from vmigdb.recorder import Recorder

#: Frames of the frame-pointer chain read at a SetLazyMode call (the path that opened a batch).
PATH_FRAMES = 8
#: Hits that re-send Ctrl-C before one stops the traced continue itself (see the docstring).
CTRL_C_TRIES = 50
_STACK = struct.Struct("<6I")
#: The farthest [EBP + 4] may be above ESP to come in the same read as the call's stack words.
_NEAR_FRAME = 256


def _reg():
    """The stop's registers, as gdb's ``$name`` values. ``gdb.selected_frame()`` would build
    the frame's id (unwinder sniffing: 0.2 ms a hit on Linux, more than the rest of the hit's
    Python), which a hook never needs."""
    def read(name: str) -> int:
        return int(gdb.parse_and_eval(f"${name}")) & 0xFFFFFFFF
    return read


class _Hook(gdb.Breakpoint):
    """An internal, silent breakpoint whose stop() calls ``handler`` and never stops."""

    def __init__(self, tracer: PortableTracer, addr: int, handler, kind: str) -> None:
        super().__init__(f"*{addr:#x}", gdb.BP_BREAKPOINT, internal=True)
        self.silent = True
        self.tracer = tracer
        self.addr = addr
        self.handler = handler
        self.kind = kind

    def stop(self) -> bool:
        return self.tracer.dispatch(self)


class _RomWatch(gdb.Breakpoint):
    """Write watchpoint on the guest's ROM pointer: hooks the ROM it comes to point at."""

    def __init__(self, tracer: PortableTracer, expr: str) -> None:
        super().__init__(expr, gdb.BP_WATCHPOINT, gdb.WP_WRITE, internal=True)
        self.silent = True
        self.tracer = tracer
        self.expr = expr

    def stop(self) -> bool:
        return self.tracer.dispatch_watch(self)


class _Arm(gdb.Breakpoint):
    """Where the ROM can first be found (Linux's vmi_init, the guest's entry): hooks it."""

    def __init__(self, tracer: PortableTracer, addr: int, what: str) -> None:
        super().__init__(f"*{addr:#x}", gdb.BP_BREAKPOINT, internal=True)
        self.silent = True
        self.tracer = tracer
        self.addr = addr
        self.what = what

    def stop(self) -> bool:
        return self.tracer.dispatch_arm(self)


class _CtrlC:
    """SIGINT during a traced continue (see the module docstring). Armed on every resume while
    the portable tracer records, disarmed at the stop: only then is SIGINT blocked in gdb's main
    thread, so gdb's prompt and untraced runs handle Ctrl-C as always."""

    def __init__(self) -> None:
        self.requested = False
        self.tries = 0  # hits that asked again for the interrupt since the Ctrl-C
        self._thread: threading.Thread | None = None
        self._closing = False
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._thread is not None

    def arm(self) -> None:
        if self._thread is not None or threading.current_thread() is not threading.main_thread():
            return
        self.requested = False
        self.tries = 0
        self._closing = False
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        self._thread = threading.Thread(target=self._wait, name="vmigdb-trace-ctrl-c",
                                        daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._closing = True
        signal.pthread_kill(thread.ident, signal.SIGINT)  # wakes its sigwait
        thread.join(5)
        self._thread = None
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _wait(self) -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            with self._lock:
                if self._closing:
                    return
                self.requested = True
            gdb.post_event(_interrupt_target)


def _interrupt_target() -> None:
    """In gdb's main thread, while the continue Ctrl-C interrupted still runs: ask gdb to
    interrupt the target (a byte that reaches QEMU stopped at a hit is dropped; the next hit
    asks again)."""
    if not _ctrl_c.armed:  # the continue has stopped since this was posted
        return
    try:
        gdb.execute("interrupt", to_string=True)
    except gdb.error:
        pass


_ctrl_c = _CtrlC()


class PortableTracer:
    """Trace source backed by gdb breakpoints (see the module docstring)."""

    kind = "portable"

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.enabled = False
        self.returns = True
        self.calls: set[VmiCall] | None = None
        self.hits = 0
        self.errors = 0
        self.last_error = ""
        self.rom_bases: list[int] = []
        self._hooks: list[_Hook] = []
        self._return_hooks: dict[int, _Hook] = {}
        self._watch: _RomWatch | None = None
        self._arm: _Arm | None = None
        self._inferior: gdb.Inferior | None = None
        self._saved_always_inserted: bool | None = None  # the user's setting, while tracing
        #: The Linux context of each call (vmigdb.context), and the tasks' names.
        self.context = context.CallContext()
        self.tasks = context.TaskNames()
        self._tasks: linuxctx.TaskReader | None = None
        self._last_task = 0
        self.interrupted = 0  # continues Ctrl-C stopped

    # --- control ----------------------------------------------------------------------------
    def start(self, rom_addr: int | None = None, calls: Iterable[VmiCall] | None = None,
              returns: bool = True) -> list[str]:
        """Hook every ROM the guest can reach now, and watch for one it will copy."""
        if self.enabled:
            self.stop()
        self.calls = set(calls) if calls is not None else None
        self.returns = returns
        self._inferior = target.require_target()
        self._keep_inserted()
        lay = linuxctx.layout()
        self._tasks = linuxctx.TaskReader(lay, self._read) if lay is not None else None
        self._last_task = 0
        notes: list[str] = []
        if lay is not None:
            notes.append("each call carries its task (the kernel's current_task, named by pid "
                         "and comm) and its caller's frame")
        try:
            roms = target.locate_roms(rom_addr)
        except RomError:
            raise
        except Exception as e:  # no ROM yet: a guest pointer may still name one later
            roms = []
            if rom_addr is not None:
                raise
            arm = _arm_location()
            if arm is None and target.guest_rom_pointer_expr() is None:
                raise
            if arm is not None:
                self._arm = _Arm(self, *arm)
                self.enabled = True
                notes.append(f"armed at {arm[1]} ({arm[0]:#x}): recording starts there, when "
                             "the guest can reach its ROM (none to hook yet, as before the "
                             "firmware places it at reset)")
                return notes
            notes.append(f"({e})")
        self._hook_found(roms, rom_addr, notes)
        self.enabled = True
        return notes

    def _keep_inserted(self) -> None:
        """Keep breakpoints inserted while the guest is stopped, for the length of the trace.

        By default gdb removes every breakpoint at each stop and inserts them all again to
        resume: with a hook on each of the ROM's ~50 entries that is ~100 packets per hook
        hit, most of a hit's cost. Inserted, only the one at the pc is stepped over."""
        if self._saved_always_inserted is None:
            self._saved_always_inserted = bool(gdb.parameter("breakpoint always-inserted"))
        gdb.execute("set breakpoint always-inserted on", to_string=True)

    def _restore_inserted(self) -> None:
        saved, self._saved_always_inserted = self._saved_always_inserted, None
        if saved is False:
            try:
                gdb.execute("set breakpoint always-inserted off", to_string=True)
            except gdb.error:
                pass

    def _hook_found(self, roms: list[target.LocatedRom], rom_addr: int | None,
                    notes: list[str]) -> None:
        """Hook the ROMs found, and watch the guest's pointer for a copy to come."""
        for rom in roms:
            self.hook(rom)
            notes.append(f"hooked the ROM at {rom.address:#x}: {rom.how}")
        active = next((r for r in roms if r.active), None)
        if active is not None and active.info.state_offs:
            off = active.info.state_offs
            magic = int.from_bytes(active.image[off:off + 4], "little")
            self.recorder.batched = magic == abi.ROM_BATCH_MAGIC
        expr = target.guest_rom_pointer_expr()
        if rom_addr is None and expr is not None and target.lookup_address(expr) == 0:
            self._watch = _RomWatch(self, expr)
            if self._watch.type != gdb.BP_HARDWARE_WATCHPOINT:
                self._watch.delete()
                self._watch = None
                notes.append(f"cannot watch {expr} with a hardware watchpoint: a ROM copy made "
                             "later is not traced (use `vmi trace start --rom ADDR`)")
            else:
                notes.append(f"watching {expr}: a ROM the guest copies is hooked when set")

    def stop(self) -> None:
        failed = []
        for h in [*self._hooks, *self._return_hooks.values(), self._watch, self._arm]:
            if h is not None and h.is_valid():
                try:
                    h.delete()
                except gdb.error as e:  # the target went away under it
                    failed.append(str(e))
        self._hooks.clear()
        self._return_hooks.clear()
        self._watch = None
        self._arm = None
        self.rom_bases.clear()
        self.recorder.pending.clear()
        self.enabled = False
        self._restore_inserted()
        _ctrl_c.disarm()
        if failed and _debugging():
            gdb.write(f"vmi trace: {len(failed)} breakpoints not removed: {failed[0]}\n")

    def clear(self) -> None:
        self.recorder.clear()
        self.context.clear()

    def events(self) -> list[tr.Event]:
        return self.recorder.events

    def status(self) -> dict[str, object]:
        return {
            "source": self.kind,
            "enabled": self.enabled,
            "events": len(self.recorder.events),
            "next_seq": self.recorder.seq,
            "rom_bases": [f"{b:#x}" for b in self.rom_bases],
            "batched": self.recorder.batched,
            "breakpoints": len(self._hooks) + len(self._return_hooks),
            "hits": self.hits,
            "returns": self.returns,
            "errors": self.errors,
            "last_error": self.last_error,
            "watching": self._watch.expr if self._watch is not None else None,
            "armed_at": (f"{self._arm.what} ({self._arm.addr:#x})"
                         if self._arm is not None and self._arm.enabled else None),
            "tasks": "current_task (per cpu)" if self._tasks is not None else "unknown",
            "tasks_named": len(self.tasks),
            "interrupted_by_ctrl_c": self.interrupted,
        }

    # --- hooking (also called from stop(): creates breakpoints, never deletes) ----------------
    def hook(self, rom: target.LocatedRom) -> None:
        if rom.address in self.rom_bases:
            return
        self.rom_bases.append(rom.address)
        for call, off in rom.info.call_table.items():
            if not off or (self.calls is not None and call not in self.calls):
                continue
            self._hooks.append(_Hook(self, rom.address + off, abi.CALLS[call], "entry"))
        starts = [rom.address + off for off in rom.info.call_table.values() if off]
        starts += [rom.address + abi.VMI_INIT_OFFSET, rom.address + abi.GET_RELOC_OFFSET]
        code = romcode.reachable(rom.image, rom.address, starts)
        for addr in romcode.port_outs(code, abi.ROM_FLUSH_PORT):
            self._hooks.append(_Hook(self, addr, None, "flush"))
        for addr in romcode.port_outs(code, abi.ROM_INIT_PORT):
            self._hooks.append(_Hook(self, addr, None, "init"))

    # --- stop() handlers ------------------------------------------------------------------------
    def dispatch(self, hook: _Hook) -> bool:
        if not self.enabled:
            return False
        self.hits += 1
        try:
            if gdb.parameter("pagination"):  # a pager prompt inside stop() would hang gdb
                with gdb.with_parameter("pagination", False):
                    self._handle(hook)
            else:  # (-batch, or already off: skip the cost of setting it twice per hit)
                self._handle(hook)
        except Exception as e:  # noqa: BLE001 - a stop() must not raise: gdb would stop
            self._failed(e)
        if _ctrl_c.requested:  # Ctrl-C during this continue: interrupt the guest once it runs
            _ctrl_c.tries += 1
            if _ctrl_c.tries < CTRL_C_TRIES:
                gdb.post_event(_interrupt_target)
                return False
            gdb.write("vmi trace: Ctrl-C: the traced continue stops here (the trace is kept)\n")
            return True
        return False

    def _handle(self, hook: _Hook) -> None:
        if hook.kind == "entry":
            self._on_entry(hook)
        elif hook.kind == "return":
            self._on_return(hook)
        elif hook.kind == "flush":
            self._on_flush()
        elif hook.kind == "init":
            self._on_init()

    def dispatch_arm(self, arm: _Arm) -> bool:
        """The guest reached where its ROM can be found: hook it as ``start`` would have."""
        if not arm.enabled or not self.enabled:
            return False
        arm.enabled = False  # (deleted by stop(); a stop() callback must not delete it)
        try:
            notes: list[str] = []
            self._hook_found(target.locate_roms(), None, notes)
        except Exception as e:  # noqa: BLE001 - still nothing: say so, do not stop the guest
            self._failed(VmiError(f"armed at {arm.what}, but no ROM there: {e}"))
        return False

    def dispatch_watch(self, watch: _RomWatch) -> bool:
        try:
            value = target.lookup_address(watch.expr)
            if value and value not in self.rom_bases:
                self.hook(target.read_rom_at(value, f"copy in RAM (the guest's {watch.expr})"))
        except Exception as e:  # noqa: BLE001
            self._failed(e)
        return False

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        if _debugging():
            traceback.print_exc()

    def _read(self, addr: int, n: int) -> bytes:
        try:
            return self._inferior.read_memory(addr & 0xFFFFFFFF, n).tobytes()
        except gdb.MemoryError as e:
            raise OSError(str(e)) from None

    def _on_entry(self, hook: _Hook) -> None:
        reg = _reg()
        esp, ebp = reg("esp"), reg("ebp")
        # One read for the call's stack words and, when it is near, the caller's frame word
        # [EBP + 4]: each read is a round trip to the target.
        span = (ebp + 8 - esp) & 0xFFFFFFFF
        raw = self._read(esp, span if _STACK.size < span <= _NEAR_FRAME and not span % 4
                         else _STACK.size)
        seq = self.recorder.seq
        stack = raw[:_STACK.size]
        ret = self.recorder.call(hook.handler, hook.addr, reg, esp, stack, self._read)
        self._context(seq, hook.handler.call, esp, ebp,
                      struct.unpack(f"<{len(raw) // 4}I", raw))
        if ret is not None and self.returns:
            hook_at = self._return_hooks.get(ret)
            if hook_at is None:
                self._return_hooks[ret] = _Hook(self, ret, None, "return")
            elif not hook_at.enabled:
                hook_at.enabled = True

    def _context(self, seq: int, call: VmiCall, esp: int, ebp: int,
                 stack: tuple[int, ...]) -> None:
        """The call's Linux context (``vmigdb.context``): task, frame, interrupt state."""
        frame = context.frame_word(esp, ebp, stack)
        if not frame and ebp:
            try:
                frame = _STACK.unpack_from(self._read(ebp + 4, 4) + bytes(20))[0]
            except OSError:
                frame = 0
        flags = context.IRET_KERNEL if context.iret_to_kernel(int(call), stack) else 0
        task = 0
        reader = self._tasks
        if reader is not None:
            task, irq = reader.state()
            if task and task != self._last_task:
                named = reader.name(task)
                if named is not None:
                    self.tasks.add(task, *named, from_seq=seq)
            self._last_task = task
            if irq is not None:
                flags |= context.IRQ_KNOWN | (context.IRQ if irq else 0)
            if call == VmiCall.SetLazyMode:
                self.context.paths[seq] = self._frame_chain(stack[0], ebp)
        self.context.append(seq, int(call), task, stack[0], frame, esp, 0, flags)

    def _frame_chain(self, ret: int, ebp: int) -> tuple[int, ...]:
        """Return addresses up the frame-pointer chain from a call, innermost first."""
        out = [ret]
        for _ in range(PATH_FRAMES):
            if not ebp:
                break
            try:
                ebp, up = struct.unpack("<II", self._read(ebp, 8))
            except OSError:
                break
            if not up:
                break
            out.append(up)
        return tuple(out)

    def _on_return(self, hook: _Hook) -> None:
        """A return breakpoint stays enabled only while a call it ends is pending: code that
        reaches the address otherwise (Linux patches the site of an early call to a nop
        that later runs on every call) costs a stop for nothing."""
        if self.recorder.pending:
            reg = _reg()
            self.recorder.ret(reg("eip"), reg("esp"), reg)
        if all(p.ret != hook.addr for p in self.recorder.pending):
            hook.enabled = False  # enabled again by the next call that returns here

    def _on_flush(self) -> None:
        eax = _reg()("eax")
        self.recorder.flush(self._read(eax, abi.VMI_BATCH_SIZE), self._read, eax)

    def _on_init(self) -> None:
        eax = _reg()("eax")
        event = self.recorder.rom_init(eax)
        if event.base not in self.rom_bases:
            self.hook(target.read_rom_at(event.base, "announced by vmi_init"))


def _arm_location() -> tuple[int, str] | None:
    """Where to arm a tracer started before the ROM can be found: Linux's own ``vmi_init``
    (it runs before the kernel scans for the ROM, with the ROM already in place), else the
    entry of the ELF file gdb has (the demo guest finds its ROM from there)."""
    sym = gdb.lookup_global_symbol("vmi_init")
    if sym is not None and sym.type is not None and \
            sym.type.code == gdb.TYPE_CODE_FUNC:
        return int(sym.value().address) & 0xFFFFFFFF, "the kernel's vmi_init"
    path = gdb.current_progspace().filename
    if path:
        try:
            return elf.entry(Path(path)), "the guest's entry point"
        except (GuestImageError, OSError):
            return None
    return None


def _on_cont(event: object) -> None:
    """Each resume while a portable trace records: Ctrl-C is ours until the stop."""
    from vmigdb.commands import tracesource

    src = tracesource.for_connection()
    if isinstance(src, PortableTracer) and src.enabled:
        _ctrl_c.arm()


def _on_stop(event: object) -> None:
    if _ctrl_c.requested:  # this stop ends a continue Ctrl-C interrupted
        from vmigdb.commands import tracesource

        src = tracesource.for_connection()
        if isinstance(src, PortableTracer):
            src.interrupted += 1
    _ctrl_c.disarm()


def connect_events() -> None:
    gdb.events.cont.connect(_on_cont)
    gdb.events.stop.connect(_on_stop)
    gdb.events.exited.connect(_on_stop)
    if hasattr(gdb.events, "connection_removed"):
        gdb.events.connection_removed.connect(_on_stop)


def _debugging() -> bool:
    try:
        return bool(gdb.parameter("vmi debug"))
    except gdb.error:
        return False
