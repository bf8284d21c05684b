"""VMI trace events and their versioned JSON-lines format: the contract between every producer.

The stub's tracer, the portable gdb path and ``vmigdb capture`` all emit these events, and the
views, reports and diffs consume only them. A trace file is one JSON object per line: a header
line ``{"format": "vmigdb-trace", "version": 1, ...}`` then one event per line, each with a
``"type"`` field. Field names are stable; a reader rejects a version it does not know.
A streamed trace (``TraceWriter``: the header says ``"streamed": true``) ends with an ``end``
record, so a reader can tell a finished capture from one that was killed; docs/trace-format.md
is the full description.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, ClassVar, TextIO

from vmigdb.errors import TraceFormatError

FORMAT_NAME = "vmigdb-trace"
FORMAT_VERSION = 1
#: The ``type`` of the record that ends a streamed trace (not an event: it carries no ``seq``).
END_TYPE = "end"


@dataclass(frozen=True)
class Event:
    """Base of all events. ``seq`` orders events within one trace, from 0."""

    TYPE: ClassVar[str] = ""
    seq: int

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: the values are ints, strs and flat dicts/lists that json.dumps
        # reads as they are; dataclasses.asdict would deep-copy each of them.
        d = {f.name: getattr(self, f.name) for f in _schema(type(self)).fields}
        d["type"] = self.TYPE
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        schema = _schema(cls)
        if not schema.required <= d.keys():
            missing = schema.required - d.keys()
            raise ValueError(f"{cls.TYPE} event lacks {', '.join(sorted(missing))}")
        # "type", and fields of a later version, are not arguments.
        kwargs = {k: v for k, v in d.items() if k in schema.checks}
        for k, v in kwargs.items():
            if not (type(v) is int if k in schema.ints else schema.checks[k](v)):
                raise ValueError(f"{cls.TYPE} event: field {k!r} has a wrong type "
                                 f"({type(v).__name__})")
        return cls(**kwargs)


@dataclass(frozen=True)
class _Schema:
    fields: tuple[Field[Any], ...]
    required: frozenset[str]
    ints: frozenset[str]  # plain int fields: checked inline, the common case
    checks: dict[str, Callable[[Any], bool]]  # every field, by name: its JSON type check


@functools.cache
def _schema(cls: type[Event]) -> _Schema:
    """Each event class's fields, names and type checks, computed once: reading a trace of
    100k events must not inspect dataclass fields 100k times."""
    fs = fields(cls)
    checks = {f.name: _check_for(f) for f in fs}
    required = frozenset(f.name for f in fs
                         if f.default is MISSING and f.default_factory is MISSING)
    return _Schema(fs, required, frozenset(n for n, c in checks.items() if c is _is_int), checks)


def _is_int(v: Any) -> bool:
    return type(v) is int  # JSON ints; bools are not ints here


def _is_int_dict(v: Any) -> bool:
    return type(v) is dict and all(type(x) is int for x in v.values())


def _is_int_rows(v: Any) -> bool:
    return type(v) is list and all(
        type(row) is list and all(type(x) is int for x in row) for row in v)


def _check_for(f: Field[Any]) -> Callable[[Any], bool]:
    """The JSON type the field's default says: ints (never bools) for ints, {name: int} for
    dicts, [[int, ...], ...] for lists, int or null where the default is None."""
    if f.default is MISSING and f.default_factory is MISSING:
        return _is_int  # seq
    if f.default_factory is dict:
        return _is_int_dict
    if f.default_factory is list:
        return _is_int_rows
    if f.default is None:
        return lambda v: v is None or _is_int(v)
    if isinstance(f.default, bool):
        return lambda v: isinstance(v, bool)
    if isinstance(f.default, int):
        return _is_int
    kind = type(f.default)
    return lambda v: isinstance(v, kind)


@dataclass(frozen=True)
class RomInit(Event):
    """The ROM's vmi_init ran: where the ROM is (linear) and whether it batches."""

    TYPE: ClassVar[str] = "rom_init"
    base: int = 0
    batched: bool = False


@dataclass(frozen=True)
class RomCall(Event):
    """A call into a ROM entry: arguments by the ABI's names, the calling site."""

    TYPE: ClassVar[str] = "call"
    call: str = ""
    entry: int = 0
    site: int = 0  # address of the call instruction (return address - 5), 0 if unknown
    args: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RomReturn(Event):
    """The matching return of ``call_seq``: the result registers the ABI names."""

    TYPE: ClassVar[str] = "return"
    call_seq: int = 0
    call: str = ""
    results: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PteWrite(Event):
    """A page-table entry changed (directly, or when a batch applied it)."""

    TYPE: ClassVar[str] = "pte"
    ptep: int = 0  # linear address of the entry
    old: int = 0
    new: int = 0
    flags: int = 0  # the VMI flags word of the call that asked for it
    deferred: bool = False
    batch: int | None = None  # batch number when applied by a flush


@dataclass(frozen=True)
class LazyMode(Event):
    """SetLazyMode changed the ROM's mode."""

    TYPE: ClassVar[str] = "lazy"
    old: int = 0
    new: int = 0


@dataclass(frozen=True)
class BatchFlush(Event):
    """The ROM applied its queue of deferred updates: one exit for the whole batch."""

    TYPE: ClassVar[str] = "flush"
    batch: int = 0
    count: int = 0
    trigger: str = ""  # abi.FlushTrigger name
    tlb_action: str = ""  # abi.TlbAction name
    entries: list[list[int]] = field(default_factory=list)  # [ptep, flags, lo, hi]


@dataclass(frozen=True)
class PatchSite(Event):
    """A ``.parainstructions`` record and what it was patched to."""

    TYPE: ClassVar[str] = "site"
    addr: int = 0
    type: int = 0
    len: int = 0
    clobbers: int = 0
    reloc: str = ""
    target: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    t.TYPE: t for t in (RomInit, RomCall, RomReturn, PteWrite, LazyMode, BatchFlush, PatchSite)
}


def header(**meta: Any) -> dict[str, Any]:
    """The first line of a trace file."""
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}


def event_from_json(d: Any) -> Event:
    """One decoded JSON object to its event; ValueError for anything else."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError("not an event object")
    cls = EVENT_TYPES.get(d["type"])
    if cls is None:
        raise ValueError(f"unknown event type {d['type']!r}")
    try:
        return cls.from_json(d)
    except TypeError as e:
        raise ValueError(str(e)) from None


def dumps(event: Event) -> str:
    return json.dumps(event.to_json(), separators=(",", ":"))


def write_trace(out: TextIO, events: Iterable[Event], **meta: Any) -> None:
    """Write a whole trace at once: header then events, one per line (no end record: a trace
    written whole is complete by construction)."""
    out.write(json.dumps(header(**meta)) + "\n")
    out.writelines(dumps(e) + "\n" for e in events)


class TraceWriter:
    """Write a trace as it is recorded: the header at once, events in batches, an end record.

    Each ``flush()`` writes whole lines and flushes them to the OS, so a writer killed at any
    moment leaves a readable prefix (at worst a cut last line, which ``read_trace`` drops with a
    warning). The header says ``"streamed": true``; ``close()`` appends the end record, whose
    absence tells a reader the capture never finished.
    """

    def __init__(self, out: IO[str], **meta: Any) -> None:
        self.out = out
        self.count = 0
        self._lines: list[str] = []
        self._last_seq: int | None = None
        out.write(json.dumps(header(streamed=True, **meta)) + "\n")
        out.flush()

    def add(self, event: Event) -> None:
        """Queue one event (written at the next ``flush``); seqs must grow."""
        if self._last_seq is not None and event.seq <= self._last_seq:
            raise ValueError(f"event seq {event.seq} after {self._last_seq}")
        self._last_seq = event.seq
        self._lines.append(dumps(event) + "\n")
        self.count += 1

    def extend(self, events: Iterable[Event]) -> None:
        for e in events:
            self.add(e)

    def flush(self) -> None:
        if self._lines:
            self.out.write("".join(self._lines))
            self._lines.clear()
        self.out.flush()

    def close(self, **end: Any) -> None:
        """Flush, then write the end record (``events`` = how many events precede it)."""
        self.flush()
        self.out.write(json.dumps({"type": END_TYPE, "events": self.count, **end}) + "\n")
        self.out.flush()


@dataclass
class Trace:
    """A trace read from a file: its header, its events, and whether its end was cut off.

    ``truncated``: the end is missing, either because the last line is cut (``partial_line``)
    or because a streamed trace has no end record (its writer was killed between lines).
    """

    meta: dict[str, Any]
    events: list[Event]
    truncated: bool = False
    partial_line: bool = False
    end: dict[str, Any] | None = None
    lines: int = 0  # complete lines read (header included)


def cut_warning(t: Trace, name: str = "trace") -> str | None:
    """One line for a trace whose end was cut off (a killed capture), else None."""
    if not t.truncated:
        return None
    why = (f"line {t.lines + 1} is incomplete" if t.partial_line
           else "it has no end record")
    return (f"warning: {name} is cut off after {len(t.events)} events ({why}: "
            "the capture was killed or is still running); reading the complete lines")


def read_trace(source: str | Path | IO[str] | IO[bytes]) -> Trace:
    """Read a trace; a cut-off end (a killed capture) sets ``truncated``, anything else
    malformed raises TraceFormatError naming the line."""
    if isinstance(source, (str, Path)):
        try:
            with open(source, "rb") as f:
                return _read_lines(f)
        except OSError as e:
            raise TraceFormatError(f"cannot read {source}: {e.strerror}") from None
    return _read_lines(source)


def _read_lines(source: IO[str] | IO[bytes]) -> Trace:
    meta: dict[str, Any] | None = None
    events: list[Event] = []
    end: dict[str, Any] | None = None
    n = 0
    for n, raw in enumerate(source, 1):
        complete = raw.endswith(b"\n" if isinstance(raw, bytes) else "\n")
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            value = json.loads(text)
        except (ValueError, RecursionError):  # also a 5,000-digit number, deep nesting
            value = _BAD
        if value is _BAD and not complete and meta is not None:
            return Trace(meta, events, truncated=True, partial_line=True, end=end, lines=n - 1)
        if meta is None:
            meta = _check_header(value, complete)
            continue
        if end is not None:
            raise TraceFormatError("data after the end record", line=n)
        if value is _BAD:
            raise TraceFormatError("not a JSON object (corrupt line)" if complete
                                   else "not valid JSON", line=n)
        if isinstance(value, dict) and value.get("type") == END_TYPE:
            end = value
            if end.get("events") != len(events):
                raise TraceFormatError(f"the end record counts {end.get('events')!r} events, "
                                       f"the file holds {len(events)}", line=n)
            continue
        try:
            event = event_from_json(value)
        except ValueError as e:
            raise TraceFormatError(f"bad event: {e}", line=n) from None
        if events and event.seq <= events[-1].seq:
            raise TraceFormatError(f"event seq {event.seq} does not follow seq "
                                   f"{events[-1].seq} (lines out of order or repeated)", line=n)
        events.append(event)
    if meta is None:
        raise TraceFormatError("empty file: no trace header", line=1)
    streamed = bool(meta.get("streamed"))
    return Trace(meta, events, truncated=streamed and end is None, end=end, lines=n)


_BAD = object()


def _check_header(value: Any, complete: bool) -> dict[str, Any]:
    if value is _BAD:
        raise TraceFormatError("not a vmigdb trace (no JSON header)" if complete
                               else "the trace header is cut off", line=1)
    if not isinstance(value, dict) or value.get("format") != FORMAT_NAME:
        raise TraceFormatError("not a vmigdb trace (header lacks format=vmigdb-trace)", line=1)
    if value.get("version") != FORMAT_VERSION:
        raise TraceFormatError(
            f"trace format version {value.get('version')!r} is not supported "
            f"(this vmigdb reads {FORMAT_VERSION})", line=1)
    return value
