"""Raw trace items (what the stub's C hooks record) and their bulk decoding into event columns.

The stub's tracer (stub/native/tracehook.c) writes each hit on a ROM entry or on a watched return
address as one fixed-size record (``RECORD``): the general registers, the stack words at ESP,
the memory the decoding rules read at the call (the old PTE of a PTE write), the guest's current
task and the machine's clock. Port announcements (the ROM's init and its batch flushes) are
captured when they happen and queued among the records. That stream of items is the fast
path's wire format: the stub keeps it and writes it to trace files, and gdb fetches it; whoever
reads it decodes it with a ``RawDecoder`` into ``vmigdb.events`` chunks, by the rules of
``vmigdb.recorder`` that the portable path uses, in bulk with numpy. Decoding the same stream
from its start gives the same events with the same sequence numbers.

An item is a kind byte, a little-endian u32 payload length, then the payload:

* ``R``: records, back to back (``RECORD``, mirror of struct vmigdb_trace_record);
* ``I``: u32 what vmi_init announced (linear base | ROM_INIT_BATCHED), u64 clock ticks;
* ``F``: u32 address of the ``struct vmi_batch`` a flush announced, u64 clock ticks, then its
  header and entries as read at the flush;
* ``T``: u32 task pointer, u32 pid, 16 bytes of its name (NUL-padded): a task the records name,
  when first seen or renamed (Linux: ``task_struct.pid`` and ``.comm``);
* ``X``: no payload: the machine was reset. What came before belongs to another run: a decoder
  starts afresh (seq 0) and drops the events of the old run still in the same piece;
* ``S``: u32 "the ROM batches", the state a decoder cannot see for itself, when tracing
  (re)starts or its hooks go (vmi_init may have run untraced); calls awaiting their return are
  forgotten (their return addresses are no longer watched).
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmigdb import abi
from vmigdb import events as ev
from vmigdb.recorder import PENDING_LIMIT, Recorder

REGS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
STACK_WORDS = 6
RECORD = np.dtype([
    ("call", "<u4"), ("addr", "<u4"), ("flags", "<u4"), ("regs", "<u4", (len(REGS),)),
    ("stack", "<u4", (STACK_WORDS,)), ("mem", "<u4", (2,)), ("task", "<u4"), ("ticks", "<u8"),
])
#: The call number of a record made at a return address.
RETURN = 0xFFFFFFFF
MEM_OK = 1  # flags: the captured memory was readable
STACK_OK = 2  # flags: the stack words were readable
#: Nanoseconds per clock tick of vmigdb's machine (its nominal 125 MIPS).
NS_PER_TICK = 8

# Word positions in a record seen as u32s.
_W_CALL, _W_ADDR, _W_FLAGS, _W_REGS = 0, 1, 2, 3
_W_STACK = _W_REGS + len(REGS)
_W_MEM = _W_STACK + STACK_WORDS
_WORDS = RECORD.itemsize // 4
_REG_INDEX = {name: i for i, name in enumerate(REGS)}
_ITEM = struct.Struct("<cI")
_U32 = struct.Struct("<I")
_U32_TICKS = struct.Struct("<IQ")
_ESP = _W_REGS + _REG_INDEX["esp"]
# Call numbers of the marker rows the port items become while decoding (above any VMI call).
_MARK_STATE, _MARK_INIT, _MARK_FLUSH = 0xFFFFFF00, 0xFFFFFF01, 0xFFFFFF02
#: A marker record: call, addr, flags, then (after the registers and stack) its u32 in mem[0],
#: and its ticks.
_MARKER = struct.Struct(f"<3I{(_W_MEM - 3) * 4}xI8xQ")
assert _MARKER.size == RECORD.itemsize


class RawTraceError(ValueError):
    """The raw stream is not what the stub writes (a corrupt or foreign reply)."""


def item(kind: bytes, payload: bytes) -> bytes:
    return _ITEM.pack(kind, len(payload)) + payload


def item_header(buf: bytes, pos: int) -> tuple[bytes, int, int] | None:
    """(kind, payload start, payload end) of the item at ``pos``, or None if it is not whole."""
    if len(buf) - pos < _ITEM.size:
        return None
    kind, size = _ITEM.unpack_from(buf, pos)
    end = pos + _ITEM.size + size
    return (kind, pos + _ITEM.size, end) if end <= len(buf) else None


def records_item(records: bytes) -> bytes:
    return _ITEM.pack(b"R", len(records)) + records


def init_item(value: int, ticks: int = 0) -> bytes:
    return _ITEM.pack(b"I", _U32_TICKS.size) + _U32_TICKS.pack(value & 0xFFFFFFFF, ticks)


_TASK = struct.Struct("<II16s")


def task_item(task: int, pid: int, comm: bytes) -> bytes:
    return _ITEM.pack(b"T", _TASK.size) + _TASK.pack(task & 0xFFFFFFFF, pid & 0xFFFFFFFF,
                                                     comm[:16])


def parse_task_item(payload: bytes) -> tuple[int, int, str]:
    """(task pointer, pid, name) of a task item's payload."""
    if len(payload) != _TASK.size:
        raise RawTraceError(f"task item of {len(payload)} bytes")
    task, pid, comm = _TASK.unpack(payload)
    return task, pid, comm.split(b"\0", 1)[0].decode("latin-1")


def reset_item() -> bytes:
    return _ITEM.pack(b"X", 0)


def state_item(batched: bool) -> bytes:
    return _ITEM.pack(b"S", 4) + _U32.pack(int(batched))


def flush_item(header_addr: int, batch: bytes, ticks: int = 0) -> bytes:
    return (_ITEM.pack(b"F", _U32_TICKS.size + len(batch))
            + _U32_TICKS.pack(header_addr & 0xFFFFFFFF, ticks) + batch)


def _word(loc: str) -> int:
    if loc in _REG_INDEX:
        return _W_REGS + _REG_INDEX[loc]
    return _W_STACK + 1 + int(loc.removeprefix("stack"))  # stack[0] is the return address


def captured_memory(spec: abi.CallSpec) -> tuple[int, int] | None:
    """(index in REGS of the register holding the address, bytes) that a hook must capture at
    this call for the recorder, or None. Only register-passed addresses can be captured."""
    capture = Recorder.capture(spec)
    if capture is None:
        return None
    loc = next(a.loc for a in spec.args if a.name == capture[0])
    return (_REG_INDEX[loc], capture[1]) if loc in _REG_INDEX else None


def wants_return(spec: abi.CallSpec) -> bool:
    """Whether the recorder matches this call's return (the hook must watch its address)."""
    return spec.returns and bool(spec.results)


# --- per-call tables, indexed by VMI call number ---------------------------------------------------
_N = 256
_VALID = np.zeros(_N, bool)
_ARG_WORD = np.zeros((_N, 5), np.intp)  # where each argument is in the record
_ARG_MASK = np.zeros((_N, 5), np.uint32)
_RESULT_WORD = np.zeros((_N, 5), np.intp)
_RESULT_MASK = np.zeros((_N, 5), np.uint32)
_PUSHES = np.zeros(_N, bool)  # a call whose return the recorder waits for
_LAZY = np.zeros(_N, bool)
_PTE = np.zeros(_N, bool)
_LONG = np.zeros(_N, bool)
for _call, _spec in abi.CALLS.items():
    _c = int(_call)
    _VALID[_c] = True
    for _i, _a in enumerate(_spec.args):
        _ARG_WORD[_c, _i], _ARG_MASK[_c, _i] = _word(_a.loc), 0xFFFFFFFF
    for _i, _r in enumerate(_spec.results):
        _RESULT_WORD[_c, _i], _RESULT_MASK[_c, _i] = _word(_r), 0xFFFFFFFF
    _PUSHES[_c] = wants_return(_spec)
_LAZY[abi.VmiCall.SetLazyMode] = True
_PTE[[abi.VmiCall.SetPxE, abi.VmiCall.SetPxELong]] = True
_LONG[abi.VmiCall.SetPxELong] = True


def _arg_index(call: abi.VmiCall, name: str) -> int:
    return [a.name for a in abi.CALLS[call].args].index(name)


def return_addresses(records: bytes) -> set[int]:
    """The addresses the recorded calls with results will return to (the hooks they need)."""
    w = np.frombuffer(records, "<u4").reshape(-1, _WORDS)
    number = w[:, _W_CALL]
    sel = (number < _N) & ((w[:, _W_FLAGS] & STACK_OK) != 0)
    sel[sel] = _PUSHES[number[sel]]
    return set(np.unique(w[sel, _W_STACK]).tolist())


_MODE = _arg_index(abi.VmiCall.SetLazyMode, "mode")
#: Where SetPxE and SetPxELong have ptep, pte, flags (and pte_hi) among their argument columns.
_PTE_ARGS = {int(c): {n: _arg_index(c, n) for n in ("ptep", "pte", "flags")}
             | ({"pte_hi": _arg_index(c, "pte_hi")} if c == abi.VmiCall.SetPxELong else {})
             for c in (abi.VmiCall.SetPxE, abi.VmiCall.SetPxELong)}


@dataclass
class Pending:
    """A call whose return has not been seen: its seq, call number, return address and the
    stack pointer after the return."""

    seq: int
    call: int
    ret: int
    esp_after: int


@dataclass
class DecoderState:
    """What decoding carries from one item to the next: enough to go on from any point."""

    seq: int = 0
    batched: bool = False
    lazy: int = abi.VMI_LAZY_MODE_OFF
    pending: list[Pending] = field(default_factory=list)
    old_values: dict[int, int] = field(default_factory=dict)  # deferred PTEs: value when queued
    task: int = 0  # the task of the last record (flushes are stamped with it)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "batched": self.batched, "lazy": self.lazy,
                "pending": [[p.seq, p.call, p.ret, p.esp_after] for p in self.pending],
                "old_values": [[k, v] for k, v in self.old_values.items()], "task": self.task}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DecoderState:
        try:
            return cls(int(d["seq"]), bool(d["batched"]), int(d["lazy"]),
                       [Pending(*map(int, p)) for p in d["pending"]],
                       {int(k): int(v) for k, v in d["old_values"]}, int(d["task"]))
        except (KeyError, TypeError, ValueError) as e:
            raise RawTraceError(f"bad decoder state: {e}") from None


@dataclass
class _Flushes:
    """The recorded flushes of a piece: their rows, headers (batch, count, trigger, tlb
    action), PTE writes (ptep, flags, old, new), how many of those each has, its entries."""

    rows: np.ndarray
    headers: np.ndarray
    ptes: np.ndarray
    ptes_per_flush: np.ndarray
    entries: np.ndarray


class RawDecoder:
    """Decodes a raw stream, fed in pieces of any size, into ``vmigdb.events`` chunks.

    A piece is decoded in one vectorised pass however many items it holds: the port items
    (init, flush, state) become marker rows among the records, so the per-item cost is a few
    microseconds, not a numpy pass each."""

    def __init__(self, state: DecoderState | None = None, ns_per_tick: int = NS_PER_TICK) -> None:
        self.state = state or DecoderState()
        self.ns_per_tick = ns_per_tick
        self._pending = b""  # an item cut between two pieces
        #: Tasks named since the last ``take_tasks``: pointer -> (pid, name).
        self.new_tasks: dict[int, tuple[int, str]] = {}
        #: Machine resets decoded so far (each one starts a fresh trace).
        self.resets = 0

    def take_tasks(self) -> dict[int, tuple[int, str]]:
        tasks, self.new_tasks = self.new_tasks, {}
        return tasks

    def feed(self, data: bytes) -> ev.Chunk:
        """The events of every whole item in what came so far; RawTraceError on a malformed
        item (the state is then as before the piece)."""
        buf = self._pending + data if self._pending else data
        pos = 0
        view = memoryview(buf)
        parts: list[bytes | memoryview] = []
        ports: list[bytes] = []  # the payloads of init and flush items, by marker
        while len(buf) - pos >= _ITEM.size:
            kind, size = _ITEM.unpack_from(buf, pos)
            start, end = pos + _ITEM.size, pos + _ITEM.size + size
            if end > len(buf):
                break
            if kind == b"R":
                if size % RECORD.itemsize:
                    raise RawTraceError(f"records item of {size} bytes")
                parts.append(view[start:end])
            elif kind == b"X":  # a reset: a fresh trace from here
                parts.clear()
                ports.clear()
                self.state = DecoderState()
                self.resets += 1
            elif kind == b"T":
                task, pid, name = parse_task_item(bytes(buf[start:end]))
                self.new_tasks[task] = (pid, name)
            else:
                parts.append(self._marker(kind, buf[start:end], ports))
            pos = end
        self._pending = bytes(buf[pos:])
        if not parts:
            return ev.Chunk.empty()
        saved = copy.deepcopy(self.state)
        try:
            return self._decode(np.frombuffer(b"".join(parts), RECORD), ports)
        except RawTraceError:
            self.state = saved
            raise

    @staticmethod
    def _marker(kind: bytes, payload: bytes, ports: list[bytes]) -> bytes:
        """A port item as a record among the records: its kind as the call number, the index
        of its payload as the address, its u32 as the first captured word."""
        if kind == b"S" and len(payload) == 4:
            return _MARKER.pack(_MARK_STATE, 0, STACK_OK, _U32.unpack(payload)[0], 0)
        if (kind == b"I" and len(payload) == _U32_TICKS.size) or (
                kind == b"F" and len(payload) >= _U32_TICKS.size + abi.VMI_BATCH_SIZE):
            value, ticks = _U32_TICKS.unpack_from(payload)
            ports.append(payload[_U32_TICKS.size:])
            return _MARKER.pack(_MARK_INIT if kind == b"I" else _MARK_FLUSH, len(ports) - 1,
                                STACK_OK, value, ticks)
        raise RawTraceError(f"unknown item {kind!r} of {len(payload)} bytes")

    def _decode(self, recs: np.ndarray, ports: list[bytes]) -> ev.Chunk:
        """Recorder's rules over records and markers, as array operations. Python loops only
        over what is rare or order-bound: calls whose return does not come right after them,
        deferred PTE writes and flush entries."""
        st = self.state
        ok = (recs["flags"] & STACK_OK) != 0
        if not ok.all():
            recs = recs[ok]  # ESP unmapped: a breakpoint saw nothing
        n = len(recs)
        if n == 0:
            return ev.Chunk.empty()
        w = recs.view("<u4").reshape(n, _WORDS)
        number = w[:, _W_CALL]
        is_init, is_flush, is_state = (number == _MARK_INIT, number == _MARK_FLUSH,
                                       number == _MARK_STATE)
        is_ret = number == RETURN
        is_call = number < _MARK_STATE
        bad = is_call & ((number >= _N) | ~_VALID[np.minimum(number, _N - 1)])
        if bad.any():
            raise RawTraceError(f"record of unknown VMI call {int(number[bad][0])}")
        c = np.where(is_call, number, 0).astype(np.intp)
        rows = np.arange(n)
        args = w[rows[:, None], _ARG_WORD[c]] & _ARG_MASK[c]
        value = w[:, _W_MEM]  # a marker's u32

        # Piecewise state before each row: the ROM batches (set by init and state markers),
        # the lazy mode (SetLazyMode sets it, init resets it), the task (of the last record).
        is_lazy = is_call & _LAZY[c]
        batched_after = _carry(is_init | is_state,
                               np.where(is_init, value & abi.ROM_INIT_BATCHED, value) != 0,
                               st.batched)
        lazy_after = _carry(is_lazy | is_init, np.where(is_lazy, args[:, _MODE], 0), st.lazy)
        real = is_call | is_ret
        task = _carry(real, recs["task"], st.task)
        batched_before = np.concatenate(([st.batched], batched_after[:-1]))
        lazy_before = np.concatenate(([st.lazy], lazy_after[:-1]))

        # PTE writes: emitted at the call, or deferred until the flush that applies them.
        is_pte = is_call & _PTE[c] & ((w[:, _W_FLAGS] & MEM_OK) != 0)
        ptep = np.zeros(n, np.uint32)
        pte_flags = np.zeros(n, np.uint32)
        new = np.zeros(n, np.uint64)
        for call, where in _PTE_ARGS.items():
            sel = is_pte & (c == call)
            if not sel.any():
                continue
            ptep[sel] = args[sel, where["ptep"]]
            pte_flags[sel] = args[sel, where["flags"]]
            new[sel] = args[sel, where["pte"]]
            if "pte_hi" in where:
                new[sel] |= args[sel, where["pte_hi"]].astype(np.uint64) << np.uint64(32)
        old = w[:, _W_MEM].astype(np.uint64) | np.where(
            _LONG[c], w[:, _W_MEM + 1].astype(np.uint64) << np.uint64(32), np.uint64(0))
        deferred = (is_pte & batched_before & ((pte_flags & abi.VMI_PAGE_DEFER) != 0)
                    & (lazy_before == abi.VMI_LAZY_MMU_UPDATES))
        emit_pte = is_pte & ~deferred

        # Flushes, in order with the deferred writes whose old values they report.
        fl = self._flushes(w, ports, np.flatnonzero(is_flush), deferred, ptep, old)
        flush_count = np.zeros(n, np.int64)
        flush_count[fl.rows] = 1 + fl.ptes_per_flush

        # Returns: matched against the calls waiting for them.
        ret_call, ret_link_local, ret_link_seq = self._match_returns(w, c, is_ret, is_state)
        emit_ret = ret_call >= 0

        # Where each row's events go, and their seqs.
        count = np.select([is_call, is_ret, is_init, is_flush],
                          [1 + is_lazy + emit_pte, emit_ret, 1, flush_count], 0)
        first = np.cumsum(count) - count
        total = int(count.sum())
        out = {name: np.zeros(total, ev.EVENT[name]) for name in ev.EVENT.names}
        out["seq"][:] = st.seq + np.arange(total, dtype=np.uint64)
        out["call"][:] = ev.NO_CALL
        clock = recs["ticks"] * np.uint64(self.ns_per_tick)

        def put(sel: np.ndarray, offset: int, kind: ev.Kind, **cols: Any) -> None:
            pos = first[sel] + offset
            out["kind"][pos], out["clock"][pos], out["task"][pos] = kind, clock[sel], task[sel]
            for name, col in cols.items():
                out[name][pos] = col

        put(is_call, 0, ev.Kind.CALL, call=c[is_call], entry=w[is_call, _W_ADDR],
            site=w[is_call, _W_STACK] - np.uint32(5),
            **{name: args[is_call, i] for i, name in enumerate(ev.ARGS)})
        put(is_lazy, 1, ev.Kind.LAZY, a0=lazy_before[is_lazy], a1=lazy_after[is_lazy])
        put(emit_pte, 1, ev.Kind.PTE, a0=ptep[emit_pte], a1=pte_flags[emit_pte],
            old=old[emit_pte], new=new[emit_pte])
        put(is_init, 0, ev.Kind.ROM_INIT,
            entry=value[is_init] & np.uint32(~abi.ROM_INIT_BATCHED & 0xFFFFFFFF),
            a0=batched_after[is_init])
        local = ret_link_local[emit_ret]
        rc = ret_call[emit_ret]
        wr = w[emit_ret]
        results = wr[np.arange(len(wr))[:, None], _RESULT_WORD[rc]] & _RESULT_MASK[rc]
        put(emit_ret, 0, ev.Kind.RETURN, call=rc,
            link=np.where(local >= 0, st.seq + first[np.maximum(local, 0)].astype(np.uint64),
                          ret_link_seq[emit_ret]),
            **{name: results[:, i] for i, name in enumerate(ev.ARGS)})
        if len(fl.rows):
            is_fl = np.zeros(n, bool)
            is_fl[fl.rows] = True  # rows ascend, as the headers do
            put(is_fl, 0, ev.Kind.FLUSH, **{name: fl.headers[:, i]
                                             for i, name in enumerate(ev.ARGS[:4])})
            # Each flush's PTE events follow it: positions first[row] + 1, + 2, ...
            k = fl.ptes_per_flush
            owner = np.repeat(fl.rows, k)
            pos = np.repeat(first[fl.rows] + 1, k) + (np.arange(int(k.sum()))
                                                      - np.repeat(np.cumsum(k) - k, k))
            for name, col in (("kind", ev.Kind.PTE), ("clock", clock[owner]),
                              ("task", task[owner]), ("a0", fl.ptes[:, 0]), ("a1", fl.ptes[:, 1]),
                              ("a2", ev.PTE_DEFERRED | ev.PTE_HAS_BATCH),
                              ("a3", np.repeat(fl.headers[:, 0], k)), ("old", fl.ptes[:, 2]),
                              ("new", fl.ptes[:, 3])):
                out[name][pos] = col
            fl.entries["seq"] = st.seq + np.repeat(first[fl.rows], fl.headers[:, 1])

        # The calls still waiting: local row indexes become seqs now that they are known.
        for p in st.pending:
            if p.seq < 0:
                p.seq = st.seq + int(first[-p.seq - 1])
        st.seq += total
        st.batched = bool(batched_after[-1])
        st.lazy = int(lazy_after[-1])
        st.task = int(task[-1])
        return ev.Chunk(out, fl.entries)

    def _flushes(self, w: np.ndarray, ports: list[bytes], flush_rows: np.ndarray,
                 deferred: np.ndarray, ptep: np.ndarray, old: np.ndarray) -> _Flushes:
        """Recorder.flush's rules over the flush rows and deferred PTE writes. A deferred write
        remembers the value its entry had when it was queued (the first one queued wins); a
        flush reports it as the old value of the PTE write it applies (or the value an earlier
        entry of the same flush wrote), then forgets them all. A flush that is not a batch, or
        whose entries were not readable, records nothing and forgets nothing."""
        st = self.state
        rows: list[int] = []
        headers: list[int] = []
        bodies: list[bytes] = []
        size = abi.VMI_BATCH_ENTRY_SIZE
        for r in flush_rows.tolist():
            batch = ports[int(w[r, _W_ADDR])]
            magic, number, count, trigger, tlb, _lazy = abi.VMI_BATCH_HEADER.unpack_from(batch)
            body = batch[abi.VMI_BATCH_SIZE:abi.VMI_BATCH_SIZE + count * size]
            if magic == abi.ROM_BATCH_MAGIC and count <= abi.ROM_QUEUE_LEN and (
                    len(body) == count * size):
                rows.append(r)
                headers += (number, count, trigger, tlb)
                bodies.append(body)
        flushes = np.array(rows, np.intp)
        head = np.array(headers, np.uint32).reshape(-1, 4)
        ent = np.frombuffer(b"".join(bodies), "<u4").reshape(-1, 4)
        entries = np.zeros(len(ent), ev.ENTRY)
        for i, name in enumerate(("ptep", "flags", "lo", "hi")):
            entries[name] = ent[:, i]

        # The values remembered in each window between two flushes, keyed (window, ptep): the
        # carried ones first (window 0), then each deferred write's, first one kept.
        d_rows = np.flatnonzero(deferred)
        carried = np.array(list(st.old_values.items()), np.uint64).reshape(-1, 2)
        keys = np.concatenate((carried[:, 0], (np.searchsorted(flushes, d_rows).astype(np.uint64)
                                               << np.uint64(32)) | ptep[d_rows]))
        values = np.concatenate((carried[:, 1], old[d_rows]))
        keys, at = np.unique(keys, return_index=True)
        values = values[at]

        # Each entry that is not a notification: its old value is what an earlier entry of its
        # flush wrote to the same PTE, else what its window remembered, else 0.
        flush_of = np.repeat(np.arange(len(flushes)), head[:, 1])
        write = (ent[:, 1] & abi.ENTRY_NOTIFY) == 0
        flush_of, ent_w = flush_of[write], ent[write]
        new = np.where((ent_w[:, 1] & abi.ENTRY_LONG) != 0,
                       ent_w[:, 2].astype(np.uint64) | (ent_w[:, 3].astype(np.uint64)
                                                        << np.uint64(32)),
                       ent_w[:, 2].astype(np.uint64))
        key = (flush_of.astype(np.uint64) << np.uint64(32)) | ent_w[:, 0]
        found = np.searchsorted(keys, key)
        found_ok = found < len(keys)
        found_ok[found_ok] = keys[found[found_ok]] == key[found_ok]
        old_e = np.where(found_ok, values[np.minimum(found, max(len(keys) - 1, 0))]
                         if len(keys) else np.uint64(0), np.uint64(0))
        order = np.lexsort((np.arange(len(key)), key))  # by key, then in order
        same = np.zeros(len(key), bool)
        same[1:] = key[order][1:] == key[order][:-1]
        old_e[order[same]] = new[order[np.flatnonzero(same) - 1]]

        # What the window after the last flush remembers goes on to the next piece.
        last = np.uint64(len(flushes)) << np.uint64(32)
        tail = (keys >> np.uint64(32)) == (last >> np.uint64(32))
        st.old_values = dict(zip((keys[tail] & np.uint64(0xFFFFFFFF)).tolist(),
                                 values[tail].tolist(), strict=True))
        ptes = np.stack((ent_w[:, 0].astype(np.uint64),
                         (ent_w[:, 1] & ~np.uint32(abi.ENTRY_LONG | abi.ENTRY_NOTIFY)).astype(
                             np.uint64), old_e, new), axis=1)
        per_flush = np.bincount(flush_of, minlength=len(flushes)).astype(np.int64)
        return _Flushes(flushes, head, ptes, per_flush, entries)

    def _match_returns(self, w: np.ndarray, c: np.ndarray, is_ret: np.ndarray,
                       is_state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the call number a return record matched (-1: none), and its call as a row
        index here (-1: a call from before, whose seq is in the third array).

        The recorder keeps a stack of calls waiting for their return; a return takes the
        innermost one with its return address and stack pointer, and a state marker empties
        it. Almost every return comes right after its call, which leaves the stack as it was
        (after the stack's cap dropped its oldest entry, if it was full): those pairs are
        matched as arrays, the rest in order against the carried stack."""
        n = len(w)
        ret_call = np.full(n, -1, np.int64)
        link_local = np.full(n, -1, np.int64)
        link_seq = np.zeros(n, np.uint64)
        is_push = (w[:, _W_CALL] < _MARK_STATE) & ~is_ret & _PUSHES[c]
        ops = np.flatnonzero(is_push | is_ret | is_state)  # rows that touch the stack
        if len(ops) == 0:
            return ret_call, link_local, link_seq
        push, ret, clear = is_push[ops], is_ret[ops], is_state[ops]
        ret_addr = np.where(push, w[ops, _W_STACK], w[ops, _W_ADDR])
        esp = np.where(push, w[ops, _ESP] + np.uint32(4), w[ops, _ESP])
        pair = push[:-1] & ret[1:] & (ret_addr[:-1] == ret_addr[1:]) & (esp[:-1] == esp[1:])
        paired = np.zeros(len(ops), bool)
        paired[:-1] |= pair
        paired[1:] |= pair
        rets, calls = ops[1:][pair], ops[:-1][pair]
        ret_call[rets] = c[calls]
        link_local[rets] = calls
        # A run of pairs between two other operations drops the stack's oldest entry when it
        # is full: the push overflowed it, the return took the push.
        pairs_before = np.cumsum(np.concatenate(([0], pair.astype(np.int64))))
        stack = self.state.pending
        seen = 0
        for k in np.flatnonzero(~paired).tolist():
            if pairs_before[k] > seen:
                if len(stack) >= PENDING_LIMIT:
                    del stack[0]
                seen = int(pairs_before[k])
            row = int(ops[k])
            if clear[k]:
                stack.clear()
            elif push[k]:
                # A call here: its seq is known once the rows' event counts are; until then it
                # is kept as -(row + 1).
                stack.append(Pending(-row - 1, int(c[row]), int(ret_addr[k]), int(esp[k])))
                del stack[:-PENDING_LIMIT]
            else:
                for i in range(len(stack) - 1, -1, -1):
                    p = stack[i]
                    if p.ret == ret_addr[k] and p.esp_after == esp[k]:
                        ret_call[row] = p.call
                        if p.seq < 0:
                            link_local[row] = -p.seq - 1
                        else:
                            link_seq[row] = p.seq
                        del stack[i:]
                        break
        if pairs_before[-1] > seen and len(stack) >= PENDING_LIMIT:
            del stack[0]
        return ret_call, link_local, link_seq


def _carry(sets: np.ndarray, values: np.ndarray, before: int | bool) -> np.ndarray:
    """A value that rows marked in ``sets`` set and the others keep: its value after each row,
    starting from ``before``."""
    rows = np.arange(len(sets))
    last = np.maximum.accumulate(np.where(sets, rows, -1))
    return np.where(last >= 0, values[np.maximum(last, 0)], before)
