"""The in-stub VMI tracer (the fast path): per-address hooks on the ROM's entries and its ports.

It costs nothing where the guest does not call the ROM: no whole-range hook, one hook per ROM
entry, one per distinct return address (to read results), and observers on the ROM's own init
and flush announcements. Inside a hook it only records, through the same ``vmigdb.recorder``
rules the portable gdb path uses; hooks are installed between runs (``Machine.request_service``)
because Unicorn cannot safely change hooks from inside one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator

from vmigdb import abi, rominfo
from vmigdb import trace as tr
from vmigdb.errors import VmiError
from vmigdb.recorder import Recorder
from vmigdb.stub.machine import CodeHook, Machine, MemoryFault
from vmigdb.stub.monitor import MonitorContext, MonitorError, MonitorTable, parse_number

DEFAULT_CAPACITY = 1 << 20


class VmiTracer:
    """Records ROM calls, returns, PTE writes, lazy-mode changes and batch flushes as events."""

    def __init__(self, machine: Machine, capacity: int = DEFAULT_CAPACITY) -> None:
        self.machine = machine
        self.recorder = Recorder(capacity=capacity)
        self.enabled = False
        self.rom_base: int | None = None
        self._entry_hooks: list[object] = []
        self._return_hooks: dict[int, object] = {}
        self._wanted_returns: set[int] = set()
        self._pending_base: int | None = None
        self._return_regs = machine.reg_reader(("eip", "esp", "eax", "ebx", "ecx", "edx"))
        machine.add_port_observer(abi.ROM_INIT_PORT, self._on_init_port)
        machine.add_port_observer(abi.ROM_FLUSH_PORT, self._on_flush_port)

    @property
    def events(self):
        return self.recorder.events

    @property
    def dropped(self) -> int:
        return self.recorder.dropped

    @property
    def batched(self) -> bool:
        return self.recorder.batched

    # --- control (between runs) -----------------------------------------------------------------
    def start(self) -> None:
        self.enabled = True
        if self.rom_base is not None and not self._entry_hooks:
            self._install_entries(self.rom_base)

    def stop(self) -> None:
        self.enabled = False
        self._remove_hooks()

    def clear(self) -> None:
        self.recorder.clear()

    def status(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "events": len(self.recorder.events),
            "dropped": self.recorder.dropped,
            "next_seq": self.recorder.seq,
            "rom_base": self.rom_base,
            "batched": self.recorder.batched,
            "capacity": self.recorder.events.maxlen,
        }

    def dump(self, start: int = 0, count: int | None = None) -> Iterator[tr.Event]:
        """Events with ``seq >= start``, at most ``count`` of them."""
        events = self.recorder.events
        if not events:
            return iter(())
        # Sequence numbers are consecutive in the ring, so the position is arithmetic; islice
        # skips in C, which keeps chunked dumps of a long trace linear.
        first = max(0, start - events[0].seq)
        return itertools.islice(events, first, None if count is None else first + count)

    def service(self) -> None:
        """Install the hooks the last run asked for (the machine calls this between runs)."""
        if self._pending_base is not None:
            base, self._pending_base = self._pending_base, None
            if base != self.rom_base or not self._entry_hooks:
                self._remove_hooks()
                self.rom_base = base
                if self.enabled:
                    self._install_entries(base)
        if self.enabled:
            for ret in self._wanted_returns:
                if ret not in self._return_hooks:
                    self._return_hooks[ret] = self.machine.add_code_hook(ret, self._on_return)
        self._wanted_returns.clear()

    def _install_entries(self, base: int) -> None:
        m = self.machine
        try:
            blocks = m.read_virt(base + 2, 1)[0]
            info = rominfo.parse_rom(m.read_virt(base, blocks * abi.ROM_BLOCK),
                                     verify_checksum=False)
        except (MemoryFault, VmiError):
            return
        for call, offset in info.call_table.items():
            if offset is not None:
                hook = self._entry_hook(abi.CALLS[call], base + offset)
                self._entry_hooks.append(m.add_code_hook(base + offset, hook))

    def _remove_hooks(self) -> None:
        for h in [*self._entry_hooks, *self._return_hooks.values()]:
            self.machine.remove_code_hook(h)
        self._entry_hooks.clear()
        self._return_hooks.clear()
        self.recorder.pending.clear()

    # --- inside hooks: record only ---------------------------------------------------------------
    def _read(self, addr: int, size: int) -> bytes:
        try:
            return self.machine.read_cpu(addr, size)
        except MemoryFault as e:
            raise OSError(str(e)) from None

    def _entry_hook(self, spec: abi.CallSpec, entry: int) -> CodeHook:
        names = ("esp", *(a.loc for a in spec.args if not a.loc.startswith("stack")))
        read_regs = self.machine.reg_reader(names)

        def hook(m: Machine) -> bool:
            if not self.enabled:
                return False
            regs = read_regs()
            esp = regs["esp"]
            ret = self.recorder.call(spec, entry, regs.__getitem__, esp, m.read_cpu(esp, 24),
                                     self._read)
            if ret is not None and ret not in self._return_hooks \
                    and ret not in self._wanted_returns:
                self._wanted_returns.add(ret)
                m.request_service(self.service)  # hook the return address between runs
            return False

        return hook

    def _on_return(self, m: Machine) -> bool:
        if self.recorder.pending:
            regs = self._return_regs()
            self.recorder.ret(regs["eip"], regs["esp"], regs.__getitem__)
        return False

    def _on_init_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        if self.enabled:
            self.recorder.rom_init(value)
        else:
            self.recorder.batched = bool(value & abi.ROM_INIT_BATCHED)
        self._pending_base = value & ~abi.ROM_INIT_BATCHED & 0xFFFFFFFF
        m.request_service(self.service)  # hook the entries between runs
        return False

    def _on_flush_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        if self.enabled:
            try:
                self.recorder.flush(self._read(value, abi.VMI_BATCH_SIZE), self._read, value)
            except OSError:
                pass  # a batch header the guest unmapped: nothing to record
        return False


def register_monitor(table: MonitorTable, tracer: VmiTracer) -> None:
    """``monitor vmi ...``: the fast path the gdb commands use to fetch events from the stub."""

    def cmd_trace(ctx: MonitorContext, args: str) -> None:
        word = args.strip()
        actions: dict[str, Callable[[], None]] = {
            "on": tracer.start, "start": tracer.start, "off": tracer.stop, "stop": tracer.stop,
            "clear": tracer.clear, "": lambda: None, "status": lambda: None,
        }
        if word not in actions:
            raise MonitorError("usage: vmi trace on|off|clear|status")
        actions[word]()
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
