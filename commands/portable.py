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
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable

import gdb

from vmigdb import abi
from vmigdb import trace as tr
from vmigdb.abi import VmiCall
from vmigdb.commands import romcode, target
from vmigdb.errors import RomError
from vmigdb.recorder import Recorder


def _reg(frame: gdb.Frame):
    def read(name: str) -> int:
        return int(frame.read_register(name)) & 0xFFFFFFFF
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
        self._inferior: gdb.Inferior | None = None

    # --- control ----------------------------------------------------------------------------
    def start(self, rom_addr: int | None = None, calls: Iterable[VmiCall] | None = None,
              returns: bool = True) -> list[str]:
        """Hook every ROM the guest can reach now, and watch for one it will copy."""
        if self.enabled:
            self.stop()
        self.calls = set(calls) if calls is not None else None
        self.returns = returns
        self._inferior = target.require_target()
        notes: list[str] = []
        try:
            roms = target.locate_roms(rom_addr)
        except RomError:
            raise
        except Exception as e:  # no ROM yet: a guest pointer may still name one later
            roms = []
            if rom_addr is not None or target.guest_rom_pointer_expr() is None:
                raise
            notes.append(f"({e})")
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
        self.enabled = True
        return notes

    def stop(self) -> None:
        failed = []
        for h in [*self._hooks, *self._return_hooks.values(), self._watch]:
            if h is not None and h.is_valid():
                try:
                    h.delete()
                except gdb.error as e:  # the target went away under it
                    failed.append(str(e))
        self._hooks.clear()
        self._return_hooks.clear()
        self._watch = None
        self.rom_bases.clear()
        self.recorder.pending.clear()
        self.enabled = False
        if failed and _debugging():
            gdb.write(f"vmi trace: {len(failed)} breakpoints not removed: {failed[0]}\n")

    def clear(self) -> None:
        self.recorder.clear()

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
        return False

    def _handle(self, hook: _Hook) -> None:
        if hook.kind == "entry":
            self._on_entry(hook)
        elif hook.kind == "return":
            self._on_return()
        elif hook.kind == "flush":
            self._on_flush()
        elif hook.kind == "init":
            self._on_init()

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
        frame = gdb.selected_frame()
        reg = _reg(frame)
        esp = reg("esp")
        stack = self._read(esp, 24)
        ret = self.recorder.call(hook.handler, hook.addr, reg, esp, stack, self._read)
        if ret is not None and self.returns and ret not in self._return_hooks:
            self._return_hooks[ret] = _Hook(self, ret, None, "return")

    def _on_return(self) -> None:
        if not self.recorder.pending:
            return
        reg = _reg(gdb.selected_frame())
        self.recorder.ret(reg("eip"), reg("esp"), reg)

    def _on_flush(self) -> None:
        eax = _reg(gdb.selected_frame())("eax")
        self.recorder.flush(self._read(eax, abi.VMI_BATCH_SIZE), self._read, eax)

    def _on_init(self) -> None:
        eax = _reg(gdb.selected_frame())("eax")
        event = self.recorder.rom_init(eax)
        if event.base not in self.rom_bases:
            self.hook(target.read_rom_at(event.base, "announced by vmi_init"))


def _debugging() -> bool:
    try:
        return bool(gdb.parameter("vmi debug"))
    except gdb.error:
        return False
