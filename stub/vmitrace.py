"""The in-stub VMI tracer (the fast path): C hooks on the ROM's entries, Python to decode.

It costs nothing where the guest does not call the ROM: no whole-range hook, one hook per ROM
entry, one per distinct return address of a call with results, and observers on the ROM's own
init and flush announcements. The per-call hooks are C (stub/tracehook.c): each hit appends a
raw record (registers, stack words, the old PTE of a PTE write) to a buffer. The records are
decoded in order, through the same ``vmigdb.recorder`` rules the portable gdb path uses, when
anyone looks (events, status, dump) or when the buffer fills; the guest runs at near full speed
meanwhile. Port announcements (init, flush) are rare: Python observers capture what they need at
once and queue it at its place among the records. Hooks are installed between runs, because
Unicorn cannot safely change hooks from inside one.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import struct
from collections.abc import Callable, Iterator

from unicorn import x86_const as X

from vmigdb import abi, rominfo
from vmigdb import trace as tr
from vmigdb.errors import VmiError
from vmigdb.recorder import Recorder
from vmigdb.stub import rsp
from vmigdb.stub import uc_ctypes as U
from vmigdb.stub.machine import Machine, MemoryFault
from vmigdb.stub.monitor import MonitorContext, MonitorError, MonitorTable, parse_number

DEFAULT_CAPACITY = 1 << 20
#: Raw records held between two decodes; at RAW_CAPACITY - RAW_HEADROOM the C hook asks for a
#: stop at the next block boundary, long before it could run out.
RAW_CAPACITY = 1 << 14
RAW_HEADROOM = 64
#: The registers of a raw record, in stub/hooks.h order.
RECORD_REGS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_REG_INDEX = {name: i for i, name in enumerate(RECORD_REGS)}
_RECORD = struct.Struct("<2I8I6I2I")
_STACK = slice(8 + 4 * U.TRACE_REGS, 8 + 4 * U.TRACE_REGS + 4 * U.TRACE_STACK_WORDS)
assert _RECORD.size == ctypes.sizeof(U.TraceRecord)


class VmiTracer:
    """Records ROM calls, returns, PTE writes, lazy-mode changes and batch flushes as events."""

    def __init__(self, machine: Machine, capacity: int = DEFAULT_CAPACITY) -> None:
        self.machine = machine
        self.recorder = Recorder(capacity=capacity)
        self.enabled = False
        self.rom_base: int | None = None
        self._entry_hooks: list[object] = []
        self._return_hooks: dict[int, object] = {}
        self._pending_base: int | None = None
        # The C half: the record buffer, its control block and one site struct per hook.
        lib = U.hooks_library()
        self._hook_fn = ctypes.cast(lib.vmigdb_trace_hook, ctypes.c_void_p).value or 0
        self._known_add = lib.vmigdb_trace_known_add
        self._known_add.argtypes = (ctypes.POINTER(U.Trace), ctypes.c_uint32)
        self._records = (U.TraceRecord * RAW_CAPACITY)()
        self._trace = U.Trace(
            rc=ctypes.pointer(machine.runctl),
            records=ctypes.cast(self._records, ctypes.POINTER(U.TraceRecord)),
            capacity=RAW_CAPACITY, high_water=RAW_CAPACITY - RAW_HEADROOM,
            reg_ids=(ctypes.c_int * U.TRACE_REGS)(
                *(getattr(X, f"UC_X86_REG_{r.upper()}") for r in RECORD_REGS)),
            reg_read_batch=U.libunicorn_function("uc_reg_read_batch"),
            vmem_read=U.libunicorn_function("uc_vmem_read"))
        self._sites: dict[object, U.TraceSite] = {}  # hook handle -> its C user data
        #: What a record's tag stands for: ("call", spec, entry) or ("ret", address).
        self._tags: list[tuple] = []
        #: Port announcements queued among the records: (record index, apply).
        self._side: list[tuple[int, Callable[[], None]]] = []
        machine.on_c_service(self.drain)
        machine.add_port_observer(abi.ROM_INIT_PORT, self._on_init_port)
        machine.add_port_observer(abi.ROM_FLUSH_PORT, self._on_flush_port)

    @property
    def events(self):
        self.drain()
        return self.recorder.events

    @property
    def dropped(self) -> int:
        self.drain()
        return self.recorder.dropped

    @property
    def batched(self) -> bool:
        self.drain()
        return self.recorder.batched

    # --- control (between runs) -----------------------------------------------------------------
    def start(self) -> None:
        self.enabled = True
        if self.rom_base is not None and not self._entry_hooks:
            self._install_entries(self.rom_base)

    def stop(self) -> None:
        self.drain()
        self.enabled = False
        self._remove_hooks()

    def clear(self) -> None:
        self.drain()
        self.recorder.clear()

    def status(self) -> dict[str, object]:
        self.drain()
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
        self.drain()
        events = self.recorder.events
        if not events:
            return iter(())
        # Sequence numbers are consecutive in the ring, so the position is arithmetic; islice
        # skips in C, which keeps chunked dumps of a long trace linear.
        first = max(0, start - events[0].seq)
        return itertools.islice(events, first, None if count is None else first + count)

    def service(self) -> None:
        """Between runs: decode what was recorded and install the hooks it asked for (the ROM's
        entries once vmi_init announced them)."""
        if self._pending_base is not None:
            base, self._pending_base = self._pending_base, None
            if base != self.rom_base or not self._entry_hooks:
                self.drain()
                self._remove_hooks()
                self.rom_base = base
                if self.enabled:
                    self._install_entries(base)
        self.drain()

    def drain(self) -> None:
        """Decode the raw records and queued announcements, in order, into events; hook the
        return addresses the decoded calls will come back to."""
        t = self._trace
        n, side = t.count, self._side
        if not n and not side:
            return
        self._side = []
        raw = ctypes.string_at(self._records, n * _RECORD.size)
        rec = self.recorder
        wanted: set[int] = set()
        k = 0
        for i, r in enumerate(_RECORD.iter_unpack(raw)):
            while k < len(side) and side[k][0] <= i:
                side[k][1]()
                k += 1
            if not r[1] & U.TRACE_STACK_OK:
                continue  # the stack was unmapped: nothing to decode (as a gdb read would fail)
            tag = self._tags[r[0]]
            regs = r[2:10]
            if tag[0] == "ret":
                if rec.pending:
                    rec.ret(tag[1], regs[4], lambda name, v=regs: v[_REG_INDEX[name]])
                continue
            _kind, spec, entry = tag
            off = i * _RECORD.size
            ret = rec.call(spec, entry, lambda name, v=regs: v[_REG_INDEX[name]], regs[4],
                           raw[off + _STACK.start:off + _STACK.stop], _captured(spec, r))
            if ret is not None and ret not in self._return_hooks:
                wanted.add(ret)
        for _pos, apply in side[k:]:
            apply()
        t.count = 0
        if t.lost:
            rec.dropped += t.lost
            t.lost = 0
        if self.enabled:
            for ret in wanted:
                self._hook(ret, ("ret", ret), None)

    def _hook(self, va: int, tag: tuple, spec: abi.CallSpec | None) -> object:
        capture = Recorder.capture(spec) if spec is not None else None
        reg, size = -1, 0
        if capture is not None:
            loc = next(a.loc for a in spec.args if a.name == capture[0])
            reg, size = _REG_INDEX.get(loc, -1), capture[1]
        site = U.TraceSite(trace=ctypes.pointer(self._trace), tag=len(self._tags),
                           mem_reg=reg, mem_size=size,
                           wants_return=int(spec is not None and spec.returns
                                            and bool(spec.results)))
        self._tags.append(tag)
        handle = self.machine.add_c_code_hook(va, self._hook_fn, ctypes.addressof(site))
        self._sites[handle] = site
        if tag[0] == "ret":
            self._return_hooks[va] = handle
            if self._known_add(ctypes.byref(self._trace), va) != 0:
                pass  # the set is full: such calls just ask for a (needless) service each time
        return handle

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
                spec = abi.CALLS[call]
                self._entry_hooks.append(self._hook(base + offset, ("call", spec, base + offset),
                                                    spec))

    def _remove_hooks(self) -> None:
        for h in [*self._entry_hooks, *self._return_hooks.values()]:
            self.machine.remove_c_code_hook(h)
            self._sites.pop(h, None)
        self._entry_hooks.clear()
        self._return_hooks.clear()
        ctypes.memset(ctypes.addressof(self._trace) + U.Trace.known.offset, 0,
                      ctypes.sizeof(self._trace.known))
        self.recorder.pending.clear()

    # --- port observers (inside a run): capture now, decode in order later ---------------------
    def _read(self, addr: int, size: int) -> bytes:
        try:
            return self.machine.read_cpu(addr, size)
        except MemoryFault as e:
            raise OSError(str(e)) from None

    def _on_init_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        if self.enabled:
            self._side.append((self._trace.count, lambda: self.recorder.rom_init(value)))
        else:
            self.recorder.batched = bool(value & abi.ROM_INIT_BATCHED)
        self._pending_base = value & ~abi.ROM_INIT_BATCHED & 0xFFFFFFFF
        m.request_service(self.service)  # hook the entries between runs
        return False

    def _on_flush_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        if not self.enabled:
            return False
        try:
            header = self._read(value, abi.VMI_BATCH_SIZE)
            count = struct.unpack_from("<3I", header)[2]
            body = (self._read(value + abi.VMI_BATCH_SIZE, count * abi.VMI_BATCH_ENTRY_SIZE)
                    if count <= abi.ROM_QUEUE_LEN else b"")
        except OSError:
            return False  # a batch header the guest unmapped: nothing to record

        def apply() -> None:
            self.recorder.flush(header, lambda _addr, n: body[:n], value)

        self._side.append((self._trace.count, apply))
        return False


def _captured(spec: abi.CallSpec, record: tuple[int, ...]) -> Callable[[int, int], bytes]:
    """The memory read ``Recorder.call`` makes, answered from what the C hook captured."""
    regs, mem = record[2:10], struct.pack("<2I", *record[16:18])
    capture = Recorder.capture(spec)

    def read(addr: int, size: int) -> bytes:
        if capture is None or not record[1] & U.TRACE_MEM_OK or size > capture[1]:
            raise OSError(f"{size} bytes at {addr:#x} were not captured")
        loc = next(a.loc for a in spec.args if a.name == capture[0])
        if regs[_REG_INDEX[loc]] != addr:
            raise OSError(f"{addr:#x} is not the captured address")
        return mem[:size]

    return read


#: Events per ``qvmigdb.events`` reply at most (about 130 bytes each as JSON).
EVENTS_PER_REPLY = 8192


def queries(tracer: VmiTracer) -> dict[bytes, Callable[[bytes], bytes]]:
    """``qvmigdb.events:FROM,COUNT`` (hex): the events with ``seq >= FROM``, at most COUNT (and
    EVENTS_PER_REPLY), as one JSON array in one reply, binary-escaped. The fast path's fetch:
    ``monitor vmi trace dump`` carries the same events as console text, hex-encoded in O
    packets and one JSON document per line, which cost more than recording them."""

    def events(args: bytes) -> bytes:
        try:
            first, n = rsp.parse_addr_len(args.removeprefix(b":"))
        except rsp.RspError:
            return b"E01"
        chunk = tracer.dump(first, min(n, EVENTS_PER_REPLY))
        text = json.dumps([e.to_json() for e in chunk], separators=(",", ":"))
        return rsp.escape_binary(text.encode())

    return {b"qvmigdb.events": events}


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
