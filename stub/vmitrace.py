"""The in-stub VMI tracer (the fast path): C hooks on the ROM's entries, a raw log, lazy decoding.

It costs nothing where the guest does not call the ROM: no whole-range hook, one hook per ROM
entry, one per distinct return address of a call with results, and observers on the ROM's own
init and flush announcements. The per-call hooks are C (stub/native/tracehook.c): a hit appends a raw
record to a buffer, which moves into the raw log (``vmigdb.rawtrace`` items) at each stop and
before each port announcement, so the log keeps the guest's order. Nothing is decoded while the
guest runs. Readers decode the log with the rules of ``vmigdb.recorder``: the stub itself when
asked for status or ``monitor vmi trace dump``, and gdb, which fetches the log with
``qvmigdb.raw`` and decodes it in its own Python (``commands/tracesource.py``): the cheapest
path for a whole trace, since events never cross the wire as text. Hooks are installed between
runs, because Unicorn cannot safely change hooks from inside one.
"""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Callable, Iterator

from unicorn import x86_const as X

from vmigdb import abi, rawtrace, rominfo
from vmigdb import trace as tr
from vmigdb.errors import VmiError
from vmigdb.recorder import Recorder
from vmigdb.stub import rsp
from vmigdb.stub.machine import Machine, MemoryFault
from vmigdb.stub.machine.native import c_function, ffi, lib, uc_function
from vmigdb.stub.monitor import MonitorContext, MonitorError, MonitorTable, parse_number

DEFAULT_CAPACITY = 1 << 20
#: Raw records the C hooks hold between two collections; at RAW_CAPACITY - RAW_HEADROOM they
#: ask for a stop at the next block boundary, long before they could run out.
RAW_CAPACITY = 1 << 14
RAW_HEADROOM = 64
#: Bytes of raw log kept for readers (~1M records). Past it the stub decodes the log into its
#: own events and drops it; a gdb that had not read that far goes on with the decoded events.
RAW_LOG_LIMIT = 80 << 20
assert rawtrace.RECORD.size == ffi.sizeof("struct vmigdb_trace_record")


class VmiTracer:
    """Records ROM calls, returns, PTE writes, lazy-mode changes and batch flushes."""

    def __init__(self, machine: Machine, capacity: int = DEFAULT_CAPACITY,
                 log_limit: int = RAW_LOG_LIMIT) -> None:
        self.machine = machine
        self.recorder = Recorder(capacity=capacity)
        self.enabled = False
        self.rom_base: int | None = None
        self._rom_batched = False  # what vmi_init announced, traced or not
        self._entry_hooks: list[object] = []
        self._return_hooks: dict[int, object] = {}
        self._wanted: set[int] = set()  # return addresses to hook at the next service
        self._pending_base: int | None = None
        # The raw log: stream bytes [base, base + len(log)); the stub's decoder has read to
        # ``_decoded``.
        self._log = bytearray()
        self._base = 0
        self._decoded = 0
        self._log_limit = log_limit
        self._decoder = rawtrace.RawDecoder(self.recorder)
        # The C half: the record buffer, its control block and one site struct per hook.
        self._hook_fn = c_function("vmigdb_trace_hook")
        self._records = ffi.new("struct vmigdb_trace_record[]", RAW_CAPACITY)
        self._trace = t = ffi.new("struct vmigdb_trace *")
        t.rc = machine.runctl
        t.records = self._records
        t.capacity, t.high_water = RAW_CAPACITY, RAW_CAPACITY - RAW_HEADROOM
        t.reg_ids = [getattr(X, f"UC_X86_REG_{r.upper()}") for r in rawtrace.REGS]
        t.reg_read_batch = ffi.cast("void *", uc_function("uc_reg_read_batch"))
        t.vm = machine.native.vm
        self._sites: dict[object, object] = {}  # hook handle -> its C user data
        machine.on_c_service(self.service)
        machine.add_port_observer(abi.ROM_INIT_PORT, self._on_init_port)
        machine.add_port_observer(abi.ROM_FLUSH_PORT, self._on_flush_port)

    @property
    def events(self):
        self._decode_all()
        return self.recorder.events

    @property
    def dropped(self) -> int:
        self._decode_all()
        return self.recorder.dropped

    @property
    def batched(self) -> bool:
        return self._rom_batched

    # --- control (between runs) -----------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled:
            self._append(rawtrace.state_item(self._rom_batched))
        self.enabled = True
        if self.rom_base is not None and not self._entry_hooks:
            self._install_entries(self.rom_base)

    def stop(self) -> None:
        self._collect()
        self.enabled = False
        self._remove_hooks()

    def clear(self) -> None:
        """Forget the events (and the raw log behind them); decoding state and sequence numbers
        go on."""
        self._decode_all()
        self.recorder.clear()
        self._drop_log()

    def status(self) -> dict[str, object]:
        self._decode_all()
        return {
            "enabled": self.enabled,
            "events": len(self.recorder.events),
            "dropped": self.recorder.dropped,
            "next_seq": self.recorder.seq,
            "rom_base": self.rom_base,
            "batched": self._rom_batched,
            "capacity": self.recorder.events.maxlen,
            "raw_bytes": len(self._log),
        }

    def dump(self, start: int = 0, count: int | None = None) -> Iterator[tr.Event]:
        """Events with ``seq >= start``, at most ``count`` of them."""
        self._decode_all()
        events = self.recorder.events
        if not events:
            return iter(())
        # Sequence numbers are consecutive in the ring, so the position is arithmetic; islice
        # skips in C, which keeps chunked dumps of a long trace linear.
        first = max(0, start - events[0].seq)
        return itertools.islice(events, first, None if count is None else first + count)

    def raw(self, offset: int, size: int) -> tuple[int, bytes]:
        """(first stream offset still kept, up to ``size`` log bytes from ``offset``): what gdb
        decodes itself. A reader whose offset is below the first one kept has lost bytes."""
        self._collect()
        start = max(offset, self._base) - self._base
        return self._base, bytes(self._log[start:start + size])

    def service(self) -> None:
        """Between runs: collect the records and install the hooks they need (the ROM's
        entries once vmi_init announced them, the return addresses of calls with results)."""
        if self._pending_base is not None:
            base, self._pending_base = self._pending_base, None
            if base != self.rom_base or not self._entry_hooks:
                self._collect()
                self._remove_hooks()
                self.rom_base = base
                if self.enabled:
                    self._install_entries(base)
        self._collect()
        if self.enabled:
            for ret in self._wanted - self._return_hooks.keys():
                self._hook(ret, rawtrace.RETURN, None)
        self._wanted.clear()

    # --- the raw log ------------------------------------------------------------------------------
    def _collect(self) -> None:
        """Move the C hooks' records into the log: allowed inside a run (no decoding, no hook
        changes), so a port observer can keep the log in the guest's order."""
        t = self._trace
        if t.count:
            data = ffi.buffer(self._records, t.count * rawtrace.RECORD.size)[:]
            t.count = 0
            self._append(rawtrace.records_item(data))
            self._wanted |= rawtrace.return_addresses(data)
        if t.lost:
            self.recorder.dropped += t.lost
            t.lost = 0

    def _append(self, item: bytes) -> None:
        self._log += item
        if len(self._log) > self._log_limit:
            self._decode_all()
            self._drop_log()

    def _decode_all(self) -> None:
        self._collect()
        end = self._base + len(self._log)
        if self._decoded < end:
            self._decoder.feed(bytes(self._log[self._decoded - self._base:]))
            self._decoded = end

    def _drop_log(self) -> None:
        self._base += len(self._log)
        self._decoded = self._base
        self._log = bytearray()

    # --- hooks --------------------------------------------------------------------------------
    def _hook(self, va: int, call: int, spec: abi.CallSpec | None) -> object:
        capture = rawtrace.captured_memory(spec) if spec is not None else None
        site = ffi.new("struct vmigdb_trace_site *")
        site.trace, site.call, site.addr = self._trace, call, va
        site.mem_reg = capture[0] if capture else -1
        site.mem_size = capture[1] if capture else 0
        site.wants_return = int(spec is not None and rawtrace.wants_return(spec))
        handle = self.machine.add_c_code_hook(va, self._hook_fn,
                                              int(ffi.cast("uintptr_t", site)))
        self._sites[handle] = site
        if call == rawtrace.RETURN:
            self._return_hooks[va] = handle
            # A full set only means such calls ask for a (needless) service each time.
            lib.vmigdb_trace_known_add(self._trace, va)
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
                self._entry_hooks.append(self._hook(base + offset, int(call), abi.CALLS[call]))

    def _remove_hooks(self) -> None:
        for h in [*self._entry_hooks, *self._return_hooks.values()]:
            self.machine.remove_c_code_hook(h)
            self._sites.pop(h, None)
        had_hooks = bool(self._entry_hooks)
        self._entry_hooks.clear()
        self._return_hooks.clear()
        ffi.buffer(self._trace.known)[:] = bytes(ffi.sizeof(self._trace.known))
        if had_hooks:  # calls still awaiting their return will never see it now
            self._append(rawtrace.state_item(self._rom_batched))

    # --- port observers (inside a run): capture now, decode later --------------------------------
    def _read(self, addr: int, size: int) -> bytes:
        try:
            return self.machine.read_cpu(addr, size)
        except MemoryFault as e:
            raise OSError(str(e)) from None

    def _on_init_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        self._rom_batched = bool(value & abi.ROM_INIT_BATCHED)
        if self.enabled:
            self._collect()
            self._append(rawtrace.init_item(value))
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
        self._collect()
        self._append(rawtrace.flush_item(value, header + body))
        return False


#: Raw log bytes per ``qvmigdb.raw`` reply at most.
RAW_PER_REPLY = 1 << 20


def queries(tracer: VmiTracer) -> dict[bytes, Callable[[bytes], bytes]]:
    """vmigdb's own packet, arguments in hex, reply binary-escaped:
    ``qvmigdb.raw:OFFSET,LEN`` -> ``BASE;`` + up to LEN raw log bytes from OFFSET, as one zlib
    stream (BASE: the first offset still kept; above OFFSET means the reader lost bytes and
    goes on with ``monitor vmi trace dump``). The fast path's fetch: gdb decodes the log itself,
    so events never cross the wire as text, and the records compress 4:1, which costs less than
    gdb reading them."""

    def raw(args: bytes) -> bytes:
        offset, size = rsp.parse_addr_len(args.removeprefix(b":"))
        base, data = tracer.raw(offset, min(size, RAW_PER_REPLY))
        return b"%x;" % base + rsp.escape_binary(zlib.compress(data, 1))

    return {b"qvmigdb.raw": raw}


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
