"""The in-stub VMI tracer: per-address hooks on the ROM's entry points and observers on its ports.

It costs nothing where the guest does not call the ROM: no whole-range hook, only one hook per
ROM entry, one per distinct return address (to read results), and the ROM's own announcements
on its init and flush ports. Inside a hook it only records; hooks are installed between runs
(``service``) because Unicorn cannot safely change hooks from inside one.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from vmigdb import abi, rominfo
from vmigdb import trace as tr
from vmigdb.errors import VmiError
from vmigdb.stub.machine import Machine, MemoryFault
from vmigdb.stub.monitor import (
    MonitorContext,
    MonitorError,
    MonitorTable,
    parse_number,
)

DEFAULT_CAPACITY = 1 << 20
_REGS_FOR_RESULTS = ("eax", "ebx", "ecx", "edx")
_PTE_CALLS = {abi.VmiCall.SetPxE, abi.VmiCall.SetPxELong}
_NOTIFY_CALLS = {abi.VmiCall.UpdatePxE, abi.VmiCall.UpdatePxELong}


@dataclass
class _Pending:
    """A call whose return has not been seen: matched by return address and stack pointer."""

    seq: int
    call: abi.VmiCall
    ret: int
    esp_after: int


class VmiTracer:
    """Records ROM calls, returns, PTE writes, lazy-mode changes and batch flushes as events."""

    def __init__(self, machine: Machine, capacity: int = DEFAULT_CAPACITY) -> None:
        self.machine = machine
        self.events: deque[tr.Event] = deque(maxlen=capacity)
        self.dropped = 0
        self.enabled = False
        self.rom_base: int | None = None
        self.batched = False
        self._seq = 0
        self._lazy = abi.VMI_LAZY_MODE_OFF
        self._entry_hooks: list[object] = []
        self._return_hooks: dict[int, object] = {}
        self._wanted_returns: set[int] = set()
        self._pending: list[_Pending] = []
        self._old_values: dict[int, int] = {}  # ptep -> value before the first queued update
        self._rom_pending_base: int | None = None
        machine.add_port_observer(abi.ROM_INIT_PORT, self._on_init_port)
        machine.add_port_observer(abi.ROM_FLUSH_PORT, self._on_flush_port)

    # --- control (between runs) -----------------------------------------------------------------
    def start(self) -> None:
        self.enabled = True
        if self.rom_base is not None and not self._entry_hooks:
            self._install_entries(self.rom_base)

    def stop(self) -> None:
        self.enabled = False
        self._remove_hooks()

    def clear(self) -> None:
        self.events.clear()
        self.dropped = 0

    def status(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "events": len(self.events),
            "dropped": self.dropped,
            "next_seq": self._seq,
            "rom_base": self.rom_base,
            "batched": self.batched,
            "capacity": self.events.maxlen,
        }

    def dump(self, start: int = 0, count: int | None = None) -> Iterator[tr.Event]:
        """Events with ``seq >= start``, at most ``count`` of them."""
        n = 0
        for e in self.events:
            if e.seq < start:
                continue
            if count is not None and n >= count:
                return
            n += 1
            yield e

    def service(self) -> None:
        """Install the hooks the last run asked for (called by the machine between runs)."""
        if self._rom_pending_base is not None:
            base, self._rom_pending_base = self._rom_pending_base, None
            if base != self.rom_base or not self._entry_hooks:
                self._remove_hooks()
                self.rom_base = base
                if self.enabled:
                    self._install_entries(base)
        for ret in self._wanted_returns:
            if ret not in self._return_hooks and self.enabled:
                self._return_hooks[ret] = self.machine.add_code_hook(ret, self._on_return)
        self._wanted_returns.clear()

    # --- recording -----------------------------------------------------------------------------
    def _emit(self, event: tr.Event) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(event)

    def _next(self) -> int:
        s = self._seq
        self._seq += 1
        return s

    def _on_init_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        base = value & ~abi.ROM_INIT_BATCHED & 0xFFFFFFFF
        self.batched = bool(value & abi.ROM_INIT_BATCHED)
        self._lazy = abi.VMI_LAZY_MODE_OFF
        if self.enabled:
            self._emit(tr.RomInit(self._next(), base=base, batched=self.batched))
        self._rom_pending_base = base
        m.request_service(self.service)  # hook the entries between runs
        return False

    def _install_entries(self, base: int) -> None:
        try:
            blocks = self.machine.read_virt(base + 2, 1)[0]
            image = self.machine.read_virt(base, blocks * abi.ROM_BLOCK)
            info = rominfo.parse_rom(image, verify_checksum=False)
        except (MemoryFault, VmiError):
            return
        for call, offset in info.call_table.items():
            if offset is None:
                continue
            handle = self.machine.add_code_hook(base + offset, self._make_entry_hook(call))
            self._entry_hooks.append(handle)

    def _remove_hooks(self) -> None:
        for h in self._entry_hooks:
            self.machine.remove_code_hook(h)
        for h in self._return_hooks.values():
            self.machine.remove_code_hook(h)
        self._entry_hooks.clear()
        self._return_hooks.clear()
        self._pending.clear()

    def _make_entry_hook(self, call: abi.VmiCall):
        spec = abi.CALLS[call]

        def hook(m: Machine) -> bool:
            return self._on_entry(m, spec)

        return hook

    def _on_entry(self, m: Machine, spec: abi.CallSpec) -> bool:
        if not self.enabled:
            return False
        esp = m.reg_read("esp")
        stack = m.read_virt(esp, 4 * 6)
        words = struct.unpack("<6I", stack)
        ret = words[0]
        args: dict[str, int] = {}
        for a in spec.args:
            if a.loc.startswith("stack"):
                args[a.name] = words[1 + int(a.loc[5:])]
            else:
                args[a.name] = m.reg_read(a.loc)
        seq = self._next()
        self._emit(tr.RomCall(seq, call=spec.name, entry=m.reg_read("eip"),
                              site=(ret - 5) & 0xFFFFFFFF, args=args))
        self._record_side_effects(m, spec.call, args)
        if spec.returns:
            self._pending.append(_Pending(seq, spec.call, ret, (esp + 4) & 0xFFFFFFFF))
            del self._pending[:-64]
            if ret not in self._return_hooks and ret not in self._wanted_returns:
                self._wanted_returns.add(ret)
                m.request_service(self.service)  # hook the return address between runs
        return False

    def _on_return(self, m: Machine) -> bool:
        if not self._pending:
            return False
        eip = m.reg_read("eip")
        esp = m.reg_read("esp")
        for i in range(len(self._pending) - 1, -1, -1):
            p = self._pending[i]
            if p.ret == eip and p.esp_after == esp:
                del self._pending[i:]
                spec = abi.CALLS[p.call]
                results = {r: m.reg_read(r) for r in spec.results}
                self._emit(tr.RomReturn(self._next(), call_seq=p.seq, call=spec.name,
                                        results=results))
                break
        return False

    def _record_side_effects(self, m: Machine, call: abi.VmiCall, args: dict[str, int]) -> None:
        if call == abi.VmiCall.SetLazyMode:
            new = args["mode"]
            self._emit(tr.LazyMode(self._next(), old=self._lazy, new=new))
            self._lazy = new
            return
        if call not in _PTE_CALLS:
            return
        ptep = args["ptep"]
        flags = args["flags"]
        long_ = call == abi.VmiCall.SetPxELong
        new = args["pte"] | (args.get("pte_hi", 0) << 32)
        try:
            raw = m.read_virt(ptep, 8 if long_ else 4)
        except MemoryFault:
            return
        old = int.from_bytes(raw, "little")
        deferred = (self.batched and self._lazy == abi.VMI_LAZY_MMU_UPDATES
                    and bool(flags & abi.VMI_PAGE_DEFER))
        if deferred:
            self._old_values.setdefault(ptep, old)
            return
        self._emit(tr.PteWrite(self._next(), ptep=ptep, old=old, new=new, flags=flags))

    def _on_flush_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        if not self.enabled:
            self._old_values.clear()
            return False
        try:
            head = m.read_virt(value, abi.VMI_BATCH_SIZE)
            magic, seq, count, trigger, tlb, _lazy = struct.unpack("<6I", head)
            if magic != abi.ROM_BATCH_MAGIC or count > abi.ROM_QUEUE_LEN:
                return False
            body = m.read_virt(value + abi.VMI_BATCH_SIZE, count * abi.VMI_BATCH_ENTRY_SIZE)
        except MemoryFault:
            return False
        entries = [list(struct.unpack_from("<4I", body, i * abi.VMI_BATCH_ENTRY_SIZE))
                   for i in range(count)]
        self._emit(tr.BatchFlush(self._next(), batch=seq, count=count,
                                 trigger=_enum_name(abi.FlushTrigger, trigger),
                                 tlb_action=_enum_name(abi.TlbAction, tlb), entries=entries))
        for ptep, flags, lo, hi in entries:
            if flags & abi.ENTRY_NOTIFY:
                continue
            new = lo | (hi << 32) if flags & abi.ENTRY_LONG else lo
            old = self._old_values.get(ptep, 0)
            self._emit(tr.PteWrite(self._next(), ptep=ptep, old=old, new=new,
                                   flags=flags & ~(abi.ENTRY_LONG | abi.ENTRY_NOTIFY),
                                   deferred=True, batch=seq))
            self._old_values[ptep] = new
        self._old_values.clear()
        return False


def _enum_name(enum: type, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def register_monitor(table: MonitorTable, tracer: VmiTracer) -> None:
    """``monitor vmi ...``: the fast path the gdb commands use to fetch events from the stub."""

    def cmd_trace(ctx: MonitorContext, args: str) -> None:
        word = args.strip()
        if word in ("on", "start"):
            tracer.start()
        elif word in ("off", "stop"):
            tracer.stop()
        elif word == "clear":
            tracer.clear()
        elif word not in ("", "status"):
            raise MonitorError("usage: vmi trace on|off|clear|status")
        ctx.write(json.dumps(tracer.status()) + "\n")

    def cmd_dump(ctx: MonitorContext, args: str) -> None:
        words = args.split()
        if len(words) > 2:
            raise MonitorError("usage: vmi trace dump [FROM [COUNT]]")
        start = parse_number(words[0]) if words else 0
        count = parse_number(words[1]) if len(words) > 1 else None
        ctx.write("".join(tr.dumps(e) + "\n" for e in tracer.dump(start, count)))

    def cmd_rom(ctx: MonitorContext, args: str) -> None:
        if tracer.rom_base is None:
            raise MonitorError("no VMI ROM found (the guest has not called vmi_init yet)")
        ctx.write(json.dumps({"base": tracer.rom_base, "batched": tracer.batched}) + "\n")

    table.register("vmi trace", cmd_trace, "VMI call tracer: on|off|clear|status (JSON status)",
                   "on|off|clear|status")
    table.register("vmi trace dump", cmd_dump, "trace events as JSON lines (vmigdb.trace)",
                   "[FROM [COUNT]]")
    table.register("vmi rom", cmd_rom, "where the guest's VMI ROM runs and whether it batches")
