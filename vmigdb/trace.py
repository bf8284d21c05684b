"""VMI trace events and their versioned JSON-lines format: the contract between every producer.

The stub's tracer, the portable gdb path and ``vmigdb capture`` all emit these events, and the
views, reports and diffs consume only them. A trace file is one JSON object per line: a header
line ``{"format": "vmigdb-trace", "version": 1, ...}`` then one event per line, each with a
``"type"`` field. Field names are stable; a reader rejects a version it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TextIO

from vmigdb.errors import TraceFormatError

FORMAT_NAME = "vmigdb-trace"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Event:
    """Base of all events. ``seq`` orders events within one trace, from 0."""

    TYPE: ClassVar[str] = ""
    seq: int

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = self.TYPE
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls)
                    if f.default is MISSING and f.default_factory is MISSING}
        missing = required - d.keys()
        if missing:
            raise ValueError(f"{cls.TYPE} event lacks {', '.join(sorted(missing))}")
        kwargs = {k: v for k, v in d.items() if k in names}
        return cls(**kwargs)


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
    """Write a whole trace: header then events, one per line."""
    out.write(json.dumps(header(**meta)) + "\n")
    out.writelines(dumps(e) + "\n" for e in events)


@dataclass
class Trace:
    """A trace read from a file: its header, its events, and whether its end was cut off."""

    meta: dict[str, Any]
    events: list[Event]
    truncated: bool = False


def read_trace(source: str | Path | TextIO) -> Trace:
    """Read a trace; a cut-off last line (a killed capture) sets ``truncated``, anything else
    malformed raises TraceFormatError naming the line."""
    if isinstance(source, (str, Path)):
        try:
            with open(source, encoding="utf-8") as f:
                return read_trace(f)
        except OSError as e:
            raise TraceFormatError(f"cannot read {source}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise TraceFormatError(f"{source} is not a text trace file") from None
    lines = source.read().split("\n")
    ends_clean = lines[-1] == ""
    if ends_clean:
        lines.pop()
    if not lines:
        raise TraceFormatError("empty file: no trace header", line=1)
    try:
        meta = json.loads(lines[0])
    except json.JSONDecodeError:
        raise TraceFormatError("not a vmigdb trace (no JSON header)", line=1) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise TraceFormatError("not a vmigdb trace (header lacks format=vmigdb-trace)", line=1)
    if meta.get("version") != FORMAT_VERSION:
        raise TraceFormatError(
            f"trace format version {meta.get('version')!r} is not supported "
            f"(this vmigdb reads {FORMAT_VERSION})", line=1)
    events: list[Event] = []
    truncated = False
    last = len(lines)
    for n, text in enumerate(lines[1:], 2):
        try:
            events.append(event_from_json(json.loads(text)))
        except (json.JSONDecodeError, ValueError) as e:
            if n == last and not ends_clean:
                truncated = True
                break
            raise TraceFormatError(f"bad event: {e}", line=n) from None
    return Trace(meta, events, truncated)
