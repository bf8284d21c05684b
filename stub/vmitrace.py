"""The in-stub VMI tracer (the fast path): C hooks on the ROM's entries, a raw log, bulk decoding.

It costs nothing where the guest does not call the ROM: no whole-range hook, one hook per ROM
entry, one per distinct return address of a call with results, and observers on the ROM's own
init and flush announcements. The per-call hooks are C (stub/native/tracehook.c): a hit appends a
raw record to a buffer, which moves into the raw log (``vmigdb.rawtrace`` items) at each stop and
before each port announcement, so the log keeps the guest's order. Nothing is decoded while the
guest runs, and nothing in a hook. Between runs the log goes to its readers: gdb, which fetches
it with ``qvmigdb.raw`` and decodes it itself (``commands/tracesource.py``); a trace file, when
one is open (``stub/tracesink.py`` decodes and writes it in a thread); and the stub's own decoded
events for ``monitor vmi trace dump`` and status. Every store is bounded: the raw log by bytes
(past it, the oldest bytes are decoded, vectorised, into the event ring and dropped), the event
ring by events (past it, the oldest go and are counted). Hooks are installed between runs,
because Unicorn cannot safely change hooks from inside one.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from unicorn import x86_const as X

from vmigdb import abi, rawpacket, rawtrace, rominfo
from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.errors import VmiError
from vmigdb.stub import rsp
from vmigdb.stub.machine import Machine, MemoryFault, StopReason
from vmigdb.stub.machine.native import c_function, ffi, lib, uc_function
from vmigdb.stub.monitor import MonitorContext, MonitorError, MonitorTable, parse_number
from vmigdb.stub.tracesink import TraceSink

#: Decoded events the stub keeps for ``monitor vmi trace dump`` (74 bytes each).
DEFAULT_CAPACITY = 1 << 20
#: Raw records the C hooks hold between two collections; at RAW_CAPACITY - RAW_HEADROOM they
#: ask for a stop at the next block boundary, long before they could run out.
RAW_CAPACITY = 1 << 14
RAW_HEADROOM = 64
#: Bytes of raw log kept for readers (~1.5M records). Past it the oldest bytes are decoded into
#: the event ring and dropped; a gdb that had not read that far goes on with the decoded events,
#: which carry no call context (caller, task). A whole boot of shared/linux's workload traced
#: in one continue logs ~71 MB (~800k records): it must fit, or that trace loses its context.
RAW_LOG_LIMIT = 128 << 20
assert rawtrace.RECORD.itemsize == ffi.sizeof("struct vmigdb_trace_record")


class VmiTracer:
    """Records ROM calls, returns, PTE writes, lazy-mode changes and batch flushes."""

    def __init__(self, machine: Machine, capacity: int = DEFAULT_CAPACITY,
                 log_limit: int = RAW_LOG_LIMIT) -> None:
        self.machine = machine
        self.capacity = capacity
        self.enabled = False
        self.rom_base: int | None = None
        self._rom_batched = False  # what vmi_init announced, traced or not
        self._entry_hooks: list[object] = []
        self._return_hooks: dict[int, object] = {}
        self._wanted: set[int] = set()  # return addresses to hook at the next service
        self._pending_base: int | None = None
        # The raw log: stream bytes [base, base + len(log)); the stub's decoder has read to
        # ``_decoded``, into the event ring.
        self._log = bytearray()
        self._base = 0
        #: The decoder's state at ``_base`` when the log was dropped whole (a clear, a trace
        #: file), so that a reader that comes later can start decoding there; None: unknown
        #: (the oldest bytes were dropped for the bound, or nothing was dropped yet).
        self._base_state: dict[str, Any] | None = None
        self._decoded = 0
        self._log_limit = log_limit
        self._decoder = rawtrace.RawDecoder()
        self._ring: deque[ev.Chunk] = deque()
        self._kept = 0
        self._dropped = 0
        self._lost = 0  # hits the C buffer had no room for
        self.sink: TraceSink | None = None
        #: Header keys for trace files (the guest, its ROM and command line): set by the CLI.
        self.meta: dict[str, Any] = {}
        self._task_layout: tuple[int, int] | None = None
        self._task_names: dict[int, tuple[int, bytes]] = {}
        self._limit_stopped = False
        self._bounding = False  # a service to keep the log's bound is on its way
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
        machine.on_reset(self._on_reset)
        machine.add_port_observer(abi.ROM_INIT_PORT, self._on_init_port)
        machine.add_port_observer(abi.ROM_FLUSH_PORT, self._on_flush_port)

    @property
    def events(self) -> list[tr.Event]:
        """Every kept event as objects (tests and small traces; views use ``dump``)."""
        self._decode_all()
        return [e for chunk in self._ring for e in ev.to_events(chunk)]

    @property
    def dropped(self) -> int:
        self._decode_all()
        return self._dropped

    @property
    def calls(self) -> int:
        """ROM calls the hooks saw since the machine started, recorded or lost."""
        return int(self._trace.calls)

    @property
    def batched(self) -> bool:
        return self._rom_batched

    def set_task(self, var: int, offset: int = 0, pid_at: int | None = None,
                 comm_at: int | None = None) -> None:
        """Stamp each record with the u32 at ``var`` (+ the u32 at ``offset``, if not 0): the
        guest's current task (Linux: ``current_task``, per-cpu since ``__per_cpu_offset``).
        With ``pid_at`` and ``comm_at`` (offsets in the task's struct), the log also names each
        task the records meet, when first met and when renamed (an exec or a reused struct:
        the hooks then ask for a drain at each change of task, so that each task is named
        while it runs, before the kernel can give its struct to a later task)."""
        self._trace.task_var, self._trace.task_offset = var & 0xFFFFFFFF, offset & 0xFFFFFFFF
        self._trace.cpu_offset = 0
        self._task_layout = (pid_at, comm_at) if pid_at is not None and comm_at is not None \
            else None
        self._trace.drain_on_switch = int(self._task_layout is not None)
        self._task_names.clear()

    def set_call_limit(self, calls: int) -> None:
        """Record no more than ``calls`` ROM calls (0: no limit); the run that meets the next
        one stops there (a HOOK stop, which gdb sees as SIGTRAP)."""
        self._trace.call_limit = max(calls, 0)
        self._trace.limit_hit = 0
        self._limit_stopped = False

    @property
    def limit_hit(self) -> bool:
        return bool(self._trace.limit_hit)

    def _name_tasks(self, records: bytes) -> None:
        """Log a task item for each task in ``records`` that is new or renamed."""
        assert self._task_layout is not None
        pid_at, comm_at = self._task_layout
        tasks = np.frombuffer(records, rawtrace.RECORD)["task"]
        for task in np.unique(tasks).tolist():
            if not task:
                continue
            try:
                pid = int.from_bytes(self.machine.read_cpu(task + pid_at, 4), "little")
                comm = self.machine.read_cpu(task + comm_at, 16)
            except MemoryFault:
                continue
            if self._task_names.get(task) != (pid, comm):
                self._task_names[task] = (pid, comm)
                self._append(rawtrace.task_item(task, pid, comm))

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
        self._ring.clear()
        self._kept = self._dropped = 0
        self._drop_log()

    def status(self) -> dict[str, object]:
        self._decode_all()
        st: dict[str, object] = {
            "enabled": self.enabled,
            "events": self._kept,
            "dropped": self._dropped,
            "next_seq": self._decoder.state.seq,
            "rom_base": self.rom_base,
            "batched": self._rom_batched,
            "capacity": self.capacity,
            "raw_bytes": len(self._log),
            "calls": self.calls,
            "lost": self._lost,
            "resets": self._decoder.resets,
            "limit_hit": self.limit_hit,
        }
        if self.sink is not None:
            st["file"] = self.sink.status()
        return st

    def dump(self, start: int = 0, count: int | None = None) -> Iterator[tr.Event]:
        """Events with ``seq >= start``, at most ``count`` of them."""
        self._decode_all()
        left = count if count is not None else -1
        for chunk in self._ring:
            seqs = chunk["seq"]
            if left == 0 or not len(seqs) or int(seqs[-1]) < start:
                continue
            first = int(np.searchsorted(seqs, start))
            part = chunk.select(slice(first, None if left < 0 else first + left))
            yield from ev.to_events(part)
            if left > 0:
                left -= len(part)

    def raw(self, offset: int, size: int) -> tuple[int, bytes]:
        """(first stream offset still kept, up to ``size`` log bytes from ``offset``): what gdb
        decodes itself. A reader whose offset is below the first one kept has lost bytes."""
        self._collect()
        start = max(offset, self._base) - self._base
        return self._base, bytes(self._log[start:start + size])

    # --- the trace file -------------------------------------------------------------------------
    def open_file(self, path: str | Path, queue_bytes: int | None = None, **meta: Any) -> None:
        """Write every event from now on to ``path`` (``vmigdb.tracefile``), decoded and
        compressed by a writer process; the guest waits when it is ``queue_bytes`` behind
        (``tracesink.QUEUE_BYTES``), so nothing is lost."""
        if self.sink is not None:
            raise VmiError(f"a trace file is open already ({self.sink.path})")
        self._decode_all()  # the file's decoder starts where the stub's is
        meta = {"ns_per_tick": rawtrace.NS_PER_TICK, **meta}
        self.sink = TraceSink(path, self._decoder.state, meta, **(
            {"queue_bytes": queue_bytes} if queue_bytes is not None else {}))
        self._drop_log()

    def close_file(self, **end: Any) -> dict[str, Any]:
        """Finish the trace file: what it holds (events, calls, bytes), with ``end`` keys in
        its end record."""
        if self.sink is None:
            raise VmiError("no trace file is open")
        self._collect()
        sink, self.sink = self.sink, None
        answer = sink.close(calls=self.calls, lost=self._lost, **end)
        state = answer.pop("state", None)
        if state is not None:  # the stub's decoding goes on after the file's events
            self._decoder.state = rawtrace.DecoderState.from_json(state)
        # A gap in the log's offsets: a gdb that read the log before the file opened has not
        # seen the file's events, and learns it (its offset is below the new base).
        self._base += 1
        self._decoded = self._base
        self._base_state = state
        return answer

    def service(self) -> None:
        """Between runs: collect the records, install the hooks they need (the ROM's entries
        once vmi_init announced them, the return addresses of calls with results), and keep
        the raw log within its bound."""
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
        if self._trace.limit_hit and not self._limit_stopped:
            self._limit_stopped = True
            self.machine.stop_after_service(
                StopReason.HOOK, f"vmi trace: the call limit ({self._trace.call_limit} ROM "
                "calls) is reached; nothing more is recorded")
        if len(self._log) > self._log_limit:
            self._bound()

    def _on_reset(self) -> None:
        """The machine was reset: a fresh trace. The ROM is gone (its hooks go, vmi_init will
        announce it again), an open trace file ends, the events kept are dropped, the call
        counter starts again; the tracer stays on if it was."""
        self._collect()
        if self.sink is not None:
            self.close_file(status="reset", message="the machine was reset")
        was = self.enabled
        self.enabled = False
        self._remove_hooks()
        self.rom_base, self._pending_base, self._rom_batched = None, None, False
        self._wanted.clear()
        self._task_names.clear()
        t = self._trace
        t.count = t.lost = 0
        t.calls = 0
        t.last_task = 0
        t.cpu_offset = 0  # the per-cpu offset is set again by the new boot
        t.limit_hit = 0
        self._limit_stopped = False
        self._lost = 0
        self._decode_all()
        self._ring.clear()
        self._kept = self._dropped = 0
        self._append(rawtrace.reset_item())
        self._decode_all()  # the stub's decoder starts afresh too
        if was:
            self.start()

    # --- the raw log ------------------------------------------------------------------------------
    def _collect(self) -> None:
        """Move the C hooks' records into the log: allowed inside a run (no decoding, no hook
        changes), so a port observer can keep the log in the guest's order."""
        t = self._trace
        if t.count:
            data = ffi.buffer(self._records, t.count * rawtrace.RECORD.itemsize)[:]
            t.count = 0
            self._append(rawtrace.records_item(data))
            if t.new_return:  # only then: finding them costs more than the records' copy
                t.new_return = 0
                self._wanted |= rawtrace.return_addresses(data)
            if self._task_layout is not None:
                self._name_tasks(data)
        if t.lost:
            self._lost += t.lost
            t.lost = 0

    def _append(self, item: bytes) -> None:
        if self.sink is not None:  # the file has every event: the stub keeps none meanwhile
            self.sink.put(item)  # blocks while the file's writer is behind: the guest waits
            return
        self._log += item
        if len(self._log) > self._log_limit and not self._bounding:
            # Port observers append inside a run, where nothing may be decoded: the bound is
            # kept between runs, at the next service.
            self._bounding = True
            self.machine.request_service(self._bound)

    def _bound(self) -> None:
        self._bounding = False
        if len(self._log) > self._log_limit:
            self._decode_all()
            self._drop_oldest(len(self._log) - self._log_limit // 2)

    def _drop_oldest(self, size: int) -> None:
        """Drop the oldest ``size`` bytes of the (decoded) log, up to the next item boundary:
        a reader that keeps up loses nothing, only one that had not read that far."""
        pos = 0
        while pos < size and (head := rawtrace.item_header(self._log, pos)) is not None:
            pos = head[2]
        del self._log[:pos]
        self._base += pos
        self._base_state = None

    def _decode_all(self) -> None:
        self._collect()
        end = self._base + len(self._log)
        if self._decoded < end:
            chunk = self._decoder.feed(bytes(self._log[self._decoded - self._base:]))
            self._decoded = end
            if len(chunk):
                self._keep(chunk)

    def _keep(self, chunk: ev.Chunk) -> None:
        self._ring.append(chunk)
        self._kept += len(chunk)
        while self._kept > self.capacity:
            first = self._ring[0]
            extra = self._kept - self.capacity
            if extra >= len(first):
                self._ring.popleft()
                gone = len(first)
            else:
                self._ring[0] = first.select(slice(extra, None))
                gone = extra
            self._kept -= gone
            self._dropped += gone

    def _drop_log(self) -> None:
        """Drop the whole log, decoded to its end: its end is the new base."""
        self._base += len(self._log)
        self._decoded = self._base
        self._log = bytearray()
        self._base_state = self._decoder.state.to_json()

    def base(self) -> tuple[int, dict[str, Any] | None]:
        """The first stream offset kept, and the decoder's state there when known: a reader
        that connects after a clear decodes from there."""
        self._collect()
        return self._base, self._base_state

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
            self._append(rawtrace.init_item(value, int(self.machine.native.vm.now)))
        self._pending_base = value & ~abi.ROM_INIT_BATCHED & 0xFFFFFFFF
        m.request_service(self.service)  # hook the entries between runs
        return False

    def _on_flush_port(self, m: Machine, port: int, size: int, value: int) -> bool:
        if not self.enabled:
            return False
        try:
            header = self._read(value, abi.VMI_BATCH_SIZE)
            count = abi.VMI_BATCH_HEADER.unpack(header)[2]
            body = (self._read(value + abi.VMI_BATCH_SIZE, count * abi.VMI_BATCH_ENTRY_SIZE)
                    if count <= abi.ROM_QUEUE_LEN else b"")
        except OSError:
            return False  # a batch header the guest unmapped: nothing to record
        self._collect()
        self._append(rawtrace.flush_item(value, header + body, int(self.machine.native.vm.now)))
        return False


#: Events per ``monitor vmi trace dump`` reply at most (~1.5 MB of JSON).
DUMP_MAX = 10_000
def queries(tracer: VmiTracer) -> dict[bytes, Callable[[bytes], bytes]]:
    """vmigdb's own packet (``vmigdb.rawpacket``): pieces of the raw log for gdb to decode."""

    def raw(args: bytes) -> bytes:
        offset, size = rsp.parse_addr_len(args.removeprefix(b":"))
        base, data = tracer.raw(offset, min(size, rawpacket.PER_REPLY))
        return rawpacket.reply(base, data)

    return {rawpacket.NAME.encode(): raw}


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
        count = min(parse_number(words[1]), DUMP_MAX) if len(words) > 1 else DUMP_MAX
        events = list(tracer.dump(start, count + 1))
        text = "".join(tr.dumps(e) + "\n" for e in events[:count])
        if len(events) > count:  # one reply stays small; say where the next one starts
            text += json.dumps({"type": "more", "next": events[count].seq}) + "\n"
        ctx.write(text)

    def cmd_base(ctx: MonitorContext, args: str) -> None:
        base, state = tracer.base()
        ctx.write(json.dumps({"base": base, "state": state}) + "\n")

    def cmd_rom(ctx: MonitorContext, args: str) -> None:
        if tracer.rom_base is None:
            raise MonitorError("no VMI ROM found (the guest has not called vmi_init yet)")
        ctx.write(json.dumps({"base": tracer.rom_base, "batched": tracer.batched}) + "\n")

    def cmd_file(ctx: MonitorContext, args: str) -> None:
        word, _, rest = args.strip().partition(" ")
        if word == "close":
            try:
                end = json.loads(rest) if rest.strip() else {}
            except ValueError:
                end = None
            if not isinstance(end, dict) or len(rest) > 4096 or not all(
                    isinstance(v, str | int | float | bool | None) for v in end.values()):
                raise MonitorError("usage: vmi trace file close [JSON object of scalars]")
            try:
                ctx.write(json.dumps(tracer.close_file(**end)) + "\n")
            except VmiError as e:
                raise MonitorError(str(e)) from None
            return
        if not word:
            raise MonitorError("usage: vmi trace file PATH | {\"path\": PATH, header keys} | "
                               "close [JSON]")
        path, header = args.strip(), {}
        if path.startswith("{"):
            try:
                spec = json.loads(path) if len(path) <= 8192 else None
            except ValueError:
                spec = None
            if not isinstance(spec, dict) or not isinstance(spec.get("path"), str) or not all(
                    isinstance(v, str | int | float | bool | None) for v in spec.values()):
                raise MonitorError("vmi trace file: a JSON object of scalars with a path")
            path = spec.pop("path")
            header = spec
        try:
            tracer.open_file(path, **{**tracer.meta, **header})
        except VmiError as e:
            raise MonitorError(str(e)) from None
        ctx.write(json.dumps(tracer.status()) + "\n")

    def cmd_task(ctx: MonitorContext, args: str) -> None:
        words = args.split()
        if len(words) not in (1, 2, 4):
            raise MonitorError("usage: vmi trace task VAR [OFFSET [PID_AT COMM_AT]]")
        n = [parse_number(w) for w in words]
        tracer.set_task(n[0], n[1] if len(n) > 1 else 0, *(n[2:] if len(n) == 4 else ()))
        ctx.write(json.dumps({"task_var": n[0], "task_offset": n[1] if len(n) > 1 else 0,
                              "names": len(n) == 4}) + "\n")

    table.register("vmi trace", cmd_trace, "VMI call tracer: on|off|clear|status (JSON status)",
                   "on|off|clear|status")
    table.register("vmi trace file", cmd_file,
                   "write every event from now on to a trace file (vmigdb.tracefile); close "
                   "writes its end record", "PATH | close [JSON]")
    def cmd_limit(ctx: MonitorContext, args: str) -> None:
        words = args.split()
        if len(words) != 1:
            raise MonitorError("usage: vmi trace limit CALLS (0: none)")
        tracer.set_call_limit(parse_number(words[0]))
        ctx.write(json.dumps(tracer.status()) + "\n")

    table.register("vmi trace limit", cmd_limit,
                   "record at most CALLS ROM calls, then stop the guest (0: no limit)", "CALLS")
    table.register("vmi trace task", cmd_task,
                   "stamp events with the guest's current task: the u32 at VAR (+ the u32 at "
                   "OFFSET), named from the task's pid and comm at PID_AT and COMM_AT",
                   "VAR [OFFSET [PID_AT COMM_AT]]")
    table.register("vmi trace dump", cmd_dump,
                   f"trace events as JSON lines (vmigdb.trace), at most {DUMP_MAX} a reply; a "
                   'last line {"type": "more", "next": SEQ} says where the next one starts',
                   "[FROM [COUNT]]")
    table.register("vmi trace base", cmd_base,
                   "where the raw log kept for qvmigdb.raw begins, and the decoder's state "
                   "there when known (JSON): a reader that comes after a clear starts there")
    table.register("vmi rom", cmd_rom, "where the guest's VMI ROM runs and whether it batches")
