"""Where trace events come from: vmigdb's stub (fast) or gdb breakpoints (portable).

Both give ``vmigdb.trace`` events with the same fields, so every view works on either. The stub
is recognised by answering ``monitor vmi trace status`` with a JSON object; its events are
fetched as the stub's raw log (``qvmigdb.raw``) and decoded here, by the rules the portable path
uses (``vmigdb.rawtrace``); as the stub's own decoded events (``monitor vmi trace dump``) when
that is not possible (a gdb without ``send_packet``, or a log the stub dropped before we read
it). They are cached here, so each view only asks for what it has not seen. Any other target gets the portable tracer.
One source per gdb connection: reconnecting starts afresh, while the events of a closed
connection stay readable (``vmi trace save`` after QEMU exited).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Protocol

import gdb
import numpy as np

from vmigdb import context, rawpacket
from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.abi import VmiCall
from vmigdb.commands import linuxctx, portable, target
from vmigdb.commands.portable import PortableTracer
from vmigdb.errors import VmiError
from vmigdb.rawtrace import DecoderState, RawDecoder, RawTraceError

#: Events fetched per ``monitor vmi trace dump`` (a gdb remote reply carries them as hex).
DUMP_CHUNK = 2000
#: Events gdb keeps (74 bytes each, ~300 MB); past it the oldest go, counted.
KEEP_EVENTS = 4 << 20


class TraceSource(Protocol):
    kind: str

    def start(self, rom_addr: int | None = None, calls: Iterable[VmiCall] | None = None,
              returns: bool = True) -> list[str]: ...

    def stop(self) -> None: ...

    def clear(self) -> None: ...

    def status(self) -> dict[str, object]: ...

    def events(self) -> Sequence[tr.Event]: ...


def _monitor(command: str) -> str:
    return gdb.execute(f"monitor {command}", to_string=True)


def _json_object(text: str) -> dict[str, object] | None:
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class StubSource:
    """vmigdb's stub records in the machine; gdb only fetches (the fast path)."""

    kind = "stub"

    def __init__(self) -> None:
        self._events = ev.EventList(KEEP_EVENTS)
        #: Set when the connection closes: the events fetched so far stay readable.
        self.closed = False
        # The stub's raw log, decoded here by the recorder's rules: None until tried, False
        # when this gdb cannot (no send_packet, an older stub, or bytes lost to the stub's
        # limit: then the stub's decoded events go on from the last one we have).
        self._raw: bool | None = None
        self._offset = 0
        self._decoder = RawDecoder()
        #: Events the stub dropped before gdb read them, and the seq ranges [from, to).
        self.lost = 0
        self.gaps: list[tuple[int, int]] = []
        self._next_seq = 0  # where the stub's decoded events go on from, once the log is lost
        #: Each call's Linux context (vmigdb.context), read from the same raw log; the tasks'
        #: names from its task items. Calls whose context could not be read are counted.
        self.context = context.CallContext()
        self.tasks = context.TaskNames()
        self._raw_calls = context.RawCalls()
        self.context_lost = 0
        self.task_layout: linuxctx.Layout | None = None

    def _alive(self) -> bool:
        """False once the connection closed; then the cached events are all there is."""
        if self.closed:
            return False
        try:
            target.require_target()
        except target.TargetGone:
            self.closed = True
        return not self.closed

    def start(self, rom_addr: int | None = None, calls: Iterable[VmiCall] | None = None,
              returns: bool = True) -> list[str]:
        if rom_addr is not None or calls is not None or not returns:
            raise VmiError("the stub traces every call with its return; --rom, --calls and "
                           "--no-returns apply to the portable path (add --portable)")
        notes = []
        lay = linuxctx.layout()
        if lay is not None:  # the stub's hook reads the current task as the kernel does
            _monitor(f"vmi trace task {lay.monitor_args()}")
            self.task_layout = lay
            notes.append("each call carries its task (the kernel's current_task, named by pid "
                         "and comm)")
        st = _json_object(_monitor("vmi trace start")) or {}
        where = st.get("rom_base")
        rom = f"ROM at {where:#x}" if isinstance(where, int) else "ROM not initialised yet"
        return [f"the stub records in the machine ({rom}; {st.get('events', 0)} events kept)",
                *notes]

    def stop(self) -> None:
        if self._alive():
            _monitor("vmi trace stop")

    def clear(self) -> None:
        if self._alive():
            self.events()  # decode to the end first: the stub drops the log it had
            _monitor("vmi trace clear")
        self._events.clear()
        self.context.clear()

    def status(self) -> dict[str, object]:
        if not self._alive():
            return {"source": self.kind, "connected": False, "fetched": len(self._events)}
        st = _json_object(_monitor("vmi trace status")) or {}
        if isinstance(st.get("rom_base"), int):
            st["rom_base"] = f"{st['rom_base']:#x}"
        return {"source": self.kind, **st, "fetched": len(self._events),
                "lost_before_read": self.lost, "kept_dropped": self._events.dropped,
                "tasks": ("current_task (per cpu)" if self.task_layout is not None
                          else "as the stub records them" if len(self.tasks) else "unknown"),
                "tasks_named": len(self.tasks), "calls_without_context": self.context_lost}

    def events(self) -> ev.EventList:
        if not self._alive():
            return self._events
        if self._raw is not False:
            self._raw = self._fetch_raw()
            if self._raw:
                return self._events
        while True:  # the stub's own decoded events, as console text
            start = self._events[-1].seq + 1 if self._events else self._next_seq
            got = self._fetch_monitor(start)
            first = got[0].get("seq") if got and isinstance(got[0], dict) else None
            if isinstance(first, int) and first > start:
                # The stub's ring dropped these before we read them: say how many, and where.
                self.lost += first - start
                self.gaps.append((start, first))
            try:
                decoded = [tr.event_from_json(d) for d in got]
            except ValueError as e:
                raise VmiError(f"the stub sent a bad trace event: {e}") from None
            self._events.extend(decoded)
            # The stub's decoded events carry no caller or task: say so in the status.
            self.context_lost += sum(isinstance(e, tr.RomCall) for e in decoded)
            if not got:
                return self._events

    def _send(self, packet: str) -> bytes | None:
        """A vmigdb packet's reply, unescaped; None when gdb or the stub lacks it."""
        send = getattr(gdb.selected_inferior().connection, "send_packet", None)
        if send is None:
            return None
        try:
            reply = send(packet)
        except gdb.error:
            target.require_target()
            return None
        if isinstance(reply, str):
            reply = reply.encode("latin-1")
        if not reply:
            return None
        if reply[:1] == b"E" and len(reply) == 3:
            raise VmiError(f"the stub refused {packet.partition(':')[0]} ({reply.decode()})")
        return reply

    def _fetch_raw(self) -> bool:
        """Decode the stub's raw log from where we stopped; False if that is not possible."""
        while True:
            reply = self._send(rawpacket.request(self._offset))
            if reply is None:
                return False
            try:
                base, data = rawpacket.parse_reply(reply, rawpacket.PER_REPLY)
            except rawpacket.RawPacketError as e:
                raise VmiError(f"the stub sent a bad raw trace reply: {e}") from None
            if base > self._offset:
                if self._offset == 0 and self._start_at_base(base):
                    continue  # a reader that came after a clear: nothing of ours was lost
                self._next_seq = self._decoder.state.seq
                return False  # the stub dropped bytes we had not read
            try:
                resets = self._decoder.resets
                chunk = self._decoder.feed(data)
                calls, _reset = self._raw_calls.feed(data)
                if self._decoder.resets != resets:  # the machine was reset: a fresh trace
                    self._events.clear()
                    self.lost, self.gaps, self.context_lost = 0, [], 0
                    self.context.clear()
                    self.tasks.clear()
                self._events.add(chunk)
                self._add_context(chunk, calls)
            except ValueError as e:
                raise VmiError(f"the stub sent a bad raw trace: {e}") from None
            self._offset += len(data)
            if len(data) < rawpacket.PER_REPLY:
                return True

    def _start_at_base(self, base: int) -> bool:
        """Decode from the stub's first kept byte on, with the stub's decoding state there (a
        trace cleared, or written to a file, before this reader came); False when the stub
        does not know it (then its decoded events are all there is)."""
        try:
            got = _json_object(_monitor("vmi trace base"))
        except gdb.error:
            target.require_target()
            return False
        state = got.get("state") if got else None
        if not got or got.get("base") != base or not isinstance(state, dict):
            return False
        try:
            self._decoder = RawDecoder(DecoderState.from_json(state))
        except RawTraceError:
            return False
        self._raw_calls = context.RawCalls()
        self._offset = base
        return True

    def _add_context(self, chunk: ev.Chunk, calls: np.ndarray) -> None:
        """The context of a decoded piece's calls, and the tasks its log named."""
        rows = context.pair_with_calls(calls, chunk)
        if rows is None:
            self.context_lost += int(np.count_nonzero(chunk["kind"] == ev.Kind.CALL))
        else:
            self.context.add(rows)
        first = int(chunk["seq"][0]) if len(chunk) else self._decoder.state.seq
        self._decoder.take_tasks()  # the same names, by piece: RawCalls places them by item
        named, self._raw_calls.named = self._raw_calls.named, []
        for task, pid, comm, lo, hi in named:
            # From the first call of that task among the records the stub read it with (the
            # whole piece when those records came in the piece before).
            if lo == hi:
                lo, hi = 0, len(rows) if rows is not None else 0
            seen = np.flatnonzero(rows["task"][lo:hi] == task) if rows is not None else ()
            self.tasks.add(task, pid, comm,
                           int(rows["seq"][lo + seen[0]]) if len(seen) else first)

    def _fetch_monitor(self, start: int) -> list[object]:
        text = _monitor(f"vmi trace dump {start} {DUMP_CHUNK}")
        try:
            got = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError as e:
            raise VmiError(f"the stub sent a bad trace line: {e}") from None
        # The stub's note of where its next reply starts: we ask from our last event anyway.
        return [d for d in got if not (isinstance(d, dict) and d.get("type") == "more")]


def _stub_status() -> dict[str, object] | None:
    """The stub tracer's status, or None when the target is not vmigdb's stub.

    A target without ``monitor`` is not the stub; one that went away while asked is gone
    (TargetGone), not a reason to fall back to the portable path."""
    try:
        st = _json_object(_monitor("vmi trace status"))
    except gdb.error:
        target.require_target()
        return None
    return st if st is not None and "enabled" in st else None


def is_stub() -> bool:
    """True when the target answers ``monitor vmi trace status`` with JSON (vmigdb's stub)."""
    return _stub_status() is not None


_sources: dict[int, TraceSource] = {}
_last: TraceSource | None = None
#: Connections known not to be vmigdb's stub (asked once).
_not_stub: set[int] = set()


def for_connection() -> TraceSource | None:
    """This connection's source if it has one (no questions to the target)."""
    key = _connection()
    return _sources.get(key) if key else None


def _connection() -> int:
    inf = gdb.selected_inferior()
    return inf.connection_num or 0


def current(*, create: bool = True, portable: bool = False) -> TraceSource | None:
    """This connection's source (created on first use), else the last one (a closed target).

    vmigdb's stub keeps its trace across gdb connections, so a gdb that connects (again) to a
    stub whose tracer records or holds events takes that trace up even without ``create``:
    ``vmi trace status`` and the views then tell what the stub has, not what an earlier
    connection had fetched."""
    global _last
    key = _connection()
    src = _sources.get(key) if key else None
    if src is not None and not (portable and src.kind != "portable"):
        _last = src
        return src
    if key and not create and not portable and key not in _not_stub:
        try:
            st = _json_object(_monitor("vmi trace status"))
        except gdb.error as e:  # running (MI async) or no monitor: ask another time
            if target.gone(e):
                raise
            st = {}
        if st is None or (st and "enabled" not in st):
            _not_stub.add(key)
        elif st and (st.get("enabled") or st.get("events") or st.get("calls")):
            create = True
    if not key or not create:
        return _last
    old = _sources.pop(key, None)
    if isinstance(old, PortableTracer):
        old.stop()
    src = PortableTracer() if portable or not is_stub() else StubSource()
    _sources[key] = src
    _last = src
    return src


def _on_connection_removed(event: object) -> None:
    """The target went away: its breakpoints go too, its events stay readable."""
    conn = getattr(event, "connection", None)
    key = getattr(conn, "num", None)
    src = _sources.pop(key, None) if key is not None else None
    if isinstance(src, PortableTracer):
        src.stop()
    elif isinstance(src, StubSource):
        src.closed = True


def connect_events() -> None:
    if hasattr(gdb.events, "connection_removed"):
        gdb.events.connection_removed.connect(_on_connection_removed)
    portable.connect_events()
