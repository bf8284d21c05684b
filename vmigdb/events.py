"""Trace events as columns: the compact form every bulk consumer works on.

A Linux boot makes millions of ROM calls; as ``vmigdb.trace`` objects they cost ~600 bytes each
and microseconds to build. Here an event is one row of a numpy structured array (``EVENT``,
74 bytes, no Python object), flush entries are rows of a second array (``ENTRY``), and a
``Chunk`` holds both for a run of consecutive events. The raw decoder (``vmigdb.rawtrace``)
produces chunks, the trace file (``vmigdb.tracefile``) stores them, and reports, diffs and
exports work on their columns. ``to_events``/``from_events`` convert to and from the event
objects at the edges (a gdb view of a few events, a version 1 file).

Columns (all unsigned): ``seq``, ``kind`` (``Kind``), ``call`` (VMI call number of a call or
return; 255 otherwise; a patch site's relocation type), ``clock`` (virtual nanoseconds, 0 when the
target has no clock), ``task`` (the guest's current task pointer, 0 when unknown), ``entry``
(a call's entry address; rom_init's base), ``site`` (a call's call instruction), ``a0``-``a4``
and ``link``, ``old``, ``new`` by kind:

=========  =====================================================================================
kind       a0..a4, link, old, new
=========  =====================================================================================
rom_init   a0 batched
call       a0..a4 the arguments in the ABI's order (``abi.CALLS[call].args``)
return     a0..a3 the results in the ABI's order; link = the seq of its call
pte        a0 ptep, a1 flags, a2 bit 0 deferred / bit 1 has a batch, a3 batch; old, new (64-bit)
lazy       a0 old mode, a1 new mode
flush      a0 batch, a1 count, a2 trigger, a3 tlb_action (``abi`` enum values); its entries are
           the ``ENTRY`` rows with its seq
site       a0 addr, a1 type, a2 len, a3 clobbers, a4 target; call = ``abi.VmiRelocation``
=========  =====================================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from vmigdb import abi
from vmigdb import trace as tr

EVENT = np.dtype([
    ("seq", "<u8"), ("kind", "u1"), ("call", "u1"), ("clock", "<u8"), ("task", "<u4"),
    ("entry", "<u4"), ("site", "<u4"), ("a0", "<u4"), ("a1", "<u4"), ("a2", "<u4"),
    ("a3", "<u4"), ("a4", "<u4"), ("link", "<u8"), ("old", "<u8"), ("new", "<u8"),
])
ENTRY = np.dtype([("seq", "<u8"), ("ptep", "<u4"), ("flags", "<u4"), ("lo", "<u4"),
                  ("hi", "<u4")])
ARGS = ("a0", "a1", "a2", "a3", "a4")
NO_CALL = 255
PTE_DEFERRED = 1  # pte a2 bits
PTE_HAS_BATCH = 2


class Kind(IntEnum):
    ROM_INIT = 0
    CALL = 1
    RETURN = 2
    PTE = 3
    LAZY = 4
    FLUSH = 5
    SITE = 6


#: Event type names (``vmigdb.trace``) by kind, and back.
KIND_NAMES = {Kind.ROM_INIT: "rom_init", Kind.CALL: "call", Kind.RETURN: "return",
              Kind.PTE: "pte", Kind.LAZY: "lazy", Kind.FLUSH: "flush", Kind.SITE: "site"}
KINDS = {name: kind for kind, name in KIND_NAMES.items()}
CALL_NAMES = {int(c): c.name for c in abi.VmiCall}
#: Per call number: argument names and result registers in column order.
ARG_NAMES = {int(c): tuple(a.name for a in s.args) for c, s in abi.CALLS.items()}
RESULT_NAMES = {int(c): tuple(s.results) for c, s in abi.CALLS.items()}


@dataclass
class Chunk:
    """Consecutive events as columns (``EVENT``'s names, one 1-D array each) and the entries of
    their flushes (``ENTRY`` rows, in seq order). Columns, not rows: decoders fill them by
    field, Arrow and numpy read them without a copy."""

    cols: dict[str, np.ndarray]
    entries: np.ndarray

    def __len__(self) -> int:
        return len(self.cols["seq"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    @classmethod
    def empty(cls) -> Chunk:
        return cls(_columns(0), np.zeros(0, ENTRY))

    @classmethod
    def from_rows(cls, rows: np.ndarray, entries: np.ndarray) -> Chunk:
        return cls({name: np.ascontiguousarray(rows[name]) for name in EVENT.names}, entries)

    def rows(self) -> np.ndarray:
        """The events as ``EVENT`` rows."""
        out = np.empty(len(self), EVENT)
        for name, col in self.cols.items():
            out[name] = col
        return out

    def select(self, index: slice | np.ndarray) -> Chunk:
        """The events at ``index`` (a slice, a mask or positions), with their flushes' entries."""
        cols = {name: col[index] for name, col in self.cols.items()}
        flushes = cols["seq"][cols["kind"] == Kind.FLUSH]
        entries = self.entries[np.isin(self.entries["seq"], flushes)] if len(self.entries) else (
            self.entries)
        return Chunk(cols, entries)


def _columns(n: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(n, EVENT[name]) for name in EVENT.names}


def concat(chunks: Sequence[Chunk]) -> Chunk:
    chunks = [c for c in chunks if len(c) or len(c.entries)]
    if len(chunks) == 1:
        return chunks[0]
    if not chunks:
        return Chunk.empty()
    return Chunk({name: np.concatenate([c.cols[name] for c in chunks]) for name in EVENT.names},
                 np.concatenate([c.entries for c in chunks]))


def _enum_name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _enum_value(enum: type[IntEnum], name: str) -> int:
    try:
        return int(enum[name])
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ValueError(f"unknown {enum.__name__} {name!r}") from None


def to_events(chunk: Chunk) -> Iterator[tr.Event]:
    """The event objects of a chunk, one at a time (a view's few, not a whole boot)."""
    entries = chunk.entries
    starts = np.searchsorted(entries["seq"], chunk["seq"], "left") if len(entries) else None
    for i, row in enumerate(chunk.rows().tolist()):
        (seq, kind, call, _clock, _task, entry, site, a0, a1, a2, a3, a4, link, old,
         new) = row
        a = (a0, a1, a2, a3, a4)
        if kind == Kind.CALL:
            yield tr.RomCall(seq, call=CALL_NAMES[call], entry=entry, site=site,
                             args=dict(zip(ARG_NAMES[call], a)))
        elif kind == Kind.RETURN:
            yield tr.RomReturn(seq, call_seq=link, call=CALL_NAMES[call],
                               results=dict(zip(RESULT_NAMES[call], a)))
        elif kind == Kind.PTE:
            yield tr.PteWrite(seq, ptep=a0, old=old, new=new, flags=a1,
                              deferred=bool(a2 & PTE_DEFERRED),
                              batch=a3 if a2 & PTE_HAS_BATCH else None)
        elif kind == Kind.LAZY:
            yield tr.LazyMode(seq, old=a0, new=a1)
        elif kind == Kind.FLUSH:
            first = int(starts[i]) if starts is not None else 0
            rows = entries[first:first + a1] if starts is not None else entries[:0]
            yield tr.BatchFlush(seq, batch=a0, count=a1,
                                trigger=_enum_name(abi.FlushTrigger, a2),
                                tlb_action=_enum_name(abi.TlbAction, a3),
                                entries=[list(r[1:]) for r in rows.tolist()])
        elif kind == Kind.ROM_INIT:
            yield tr.RomInit(seq, base=entry, batched=bool(a0))
        elif kind == Kind.SITE:
            yield tr.PatchSite(seq, addr=a0, type=a1, len=a2, clobbers=a3,
                               reloc=_enum_name(abi.VmiRelocation, call), target=a4)


def from_events(events: Iterable[tr.Event]) -> Chunk:
    """Event objects as columns; ValueError for a call or argument the ABI does not have."""
    rows: list[tuple[int, ...]] = []
    entries: list[tuple[int, ...]] = []
    for e in events:
        a = [0, 0, 0, 0, 0]
        call, entry, site, link, old, new = NO_CALL, 0, 0, 0, 0, 0
        if isinstance(e, tr.RomCall):
            call = _call_number(e.call)
            _fill(a, ARG_NAMES[call], e.args, f"arguments of {e.call}")
            entry, site = e.entry, e.site
        elif isinstance(e, tr.RomReturn):
            call = _call_number(e.call)
            _fill(a, RESULT_NAMES[call], e.results, f"results of {e.call}")
            link = e.call_seq
        elif isinstance(e, tr.PteWrite):
            a[:4] = [e.ptep, e.flags, (PTE_DEFERRED if e.deferred else 0)
                     | (PTE_HAS_BATCH if e.batch is not None else 0), e.batch or 0]
            old, new = e.old, e.new
        elif isinstance(e, tr.LazyMode):
            a[:2] = [e.old, e.new]
        elif isinstance(e, tr.BatchFlush):
            if len(e.entries) != e.count:
                raise ValueError(f"flush {e.seq}: count {e.count} but {len(e.entries)} entries")
            a[:4] = [e.batch, e.count, _enum_value(abi.FlushTrigger, e.trigger),
                     _enum_value(abi.TlbAction, e.tlb_action)]
            entries.extend((e.seq, *row) for row in e.entries)
        elif isinstance(e, tr.RomInit):
            entry, a[0] = e.base, int(e.batched)
        elif isinstance(e, tr.PatchSite):
            call = _enum_value(abi.VmiRelocation, e.reloc)
            a = [e.addr, e.type, e.len, e.clobbers, e.target]
        else:
            raise TypeError(f"not a trace event: {e!r}")
        rows.append((e.seq, KINDS[e.TYPE], call, 0, 0, entry, site, *a, link, old, new))
    try:
        return Chunk.from_rows(np.array(rows, EVENT), np.array(entries, ENTRY))
    except OverflowError:
        raise ValueError("a value does not fit its column (32 or 64 bits)") from None


def _call_number(name: str) -> int:
    try:
        return int(abi.VmiCall[name])
    except KeyError:
        raise ValueError(f"unknown VMI call {name!r}") from None


def _fill(a: list[int], names: tuple[str, ...], values: dict[str, int], what: str) -> None:
    if set(values) != set(names):
        raise ValueError(f"{what}: {sorted(values)} where the ABI has {list(names)}")
    for i, name in enumerate(names):
        a[i] = values[name]


class EventList(Sequence[tr.Event]):
    """Events kept as chunks, seen as a sequence of event objects made on demand: what gdb
    keeps of a long trace (74 bytes an event, not ~600). At most ``capacity`` events are kept;
    past it the oldest chunks go, and ``dropped`` counts their events."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._chunks: list[Chunk] = []
        self._ends: list[int] = []  # cumulative lengths
        self._cache: tuple[int, list[tr.Event]] | None = None

    def add(self, chunk: Chunk) -> None:
        if not len(chunk):
            return
        self._chunks.append(chunk)
        self._ends.append(len(self) + len(chunk))
        while self.capacity is not None and len(self) > self.capacity and len(self._chunks) > 1:
            gone = self._chunks.pop(0)
            self.dropped += len(gone)
            self._ends = [e - len(gone) for e in self._ends[1:]]
            self._cache = None

    def extend(self, events: Iterable[tr.Event]) -> None:
        self.add(from_events(events))

    def clear(self) -> None:
        self._chunks.clear()
        self._ends.clear()
        self._cache = None

    @property
    def chunks(self) -> list[Chunk]:
        return list(self._chunks)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _chunk_events(self, k: int) -> list[tr.Event]:
        if self._cache is None or self._cache[0] != k:
            self._cache = (k, list(to_events(self._chunks[k])))
        return self._cache[1]

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        k = int(np.searchsorted(self._ends, index, "right"))
        start = self._ends[k - 1] if k else 0
        return self._chunk_events(k)[index - start]

    def __iter__(self) -> Iterator[tr.Event]:
        for chunk in self._chunks:
            yield from to_events(chunk)
