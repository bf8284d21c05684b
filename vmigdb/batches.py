"""Lazy-MMU batches: group trace events into the ROM's queue flushes, and count what they saved.

Pure. A ``BatchFlush`` event carries the queue as the ROM applied it; the ``PteWrite`` events
that follow it with the same batch number carry each entry's old value, which only the tracer
could see (it read the entry when the update was queued). One flush is one exit to the
hypervisor where unbatched updates would each have been one: a batch of n saves n - 1.

Two forms: ``group`` builds every batch with its updates from event objects (gdb's ``vmi
batches`` and ``vmi batch``, a few thousand events); ``BatchTally`` summarises the flushes of a
stream of event columns with bounded memory (``vmigdb report`` over a Linux boot): one row per
batch for the first and last ones listed, the totals, the sizes, and points for a chart.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from vmigdb import abi, decode
from vmigdb import events as ev
from vmigdb import trace as tr


@dataclass(frozen=True)
class Update:
    """One queued page-table update as the ROM applied it."""

    ptep: int  # linear address of the entry
    flags: int  # the VMI flags word (ENTRY_* bits removed)
    new: int  # value written (64-bit for a long update); unused for a notification
    old: int | None  # the entry before the update, when the trace saw it
    long: bool = False  # SetPxELong: a PAE entry
    notify: bool = False  # UpdatePxE: the guest wrote the entry itself; only invalidated

    @property
    def va(self) -> int | None:
        """The virtual address the entry maps, when the flags carry it (VMI_PAGE_CURRENT_AS)."""
        if self.flags & abi.VMI_PAGE_CURRENT_AS:
            return self.flags & abi.VMI_PAGE_VA_MASK
        return None

    @property
    def pa(self) -> int | None:
        """The physical page the new entry maps, or None when it maps nothing."""
        if self.notify or not self.new & 1:
            return None
        mask = 0x000FFFFFFFFFF000 if self.long else 0xFFFFF000
        return self.new & mask

    def changed_bits(self) -> tuple[list[str], list[str]]:
        """(flag names set by the update, flag names cleared), from decode.PTE_BITS."""
        if self.old is None or self.notify:
            return [], []
        return (decode.bit_names(self.new & ~self.old, decode.PTE_BITS),
                decode.bit_names(self.old & ~self.new, decode.PTE_BITS))


@dataclass(frozen=True)
class Batch:
    """One flush of the ROM's PTE queue."""

    number: int  # the ROM's batch number (vmi_batch.seq, from 1)
    seq: int  # the BatchFlush event's seq
    trigger: str  # abi.FlushTrigger name
    tlb_action: str  # abi.TlbAction name
    updates: tuple[Update, ...] = ()

    @property
    def count(self) -> int:
        return len(self.updates)

    @property
    def exits_saved(self) -> int:
        """Exits an unbatched ROM would have taken (one per update) minus the one flush."""
        return max(self.count - 1, 0)

    @property
    def va_span(self) -> tuple[int, int] | None:
        """(lowest, highest) virtual address the batch touched, when the flags carry them."""
        vas = [u.va for u in self.updates if u.va is not None]
        return (min(vas), max(vas)) if vas else None


def group(events: Iterable[tr.Event]) -> list[Batch]:
    """Every batch flush in the events, in order, with each update's old value attached."""
    events = list(events)
    olds: dict[int, list[tr.PteWrite]] = {}
    for e in events:
        if isinstance(e, tr.PteWrite) and e.deferred and e.batch is not None:
            olds.setdefault(e.batch, []).append(e)
    out: list[Batch] = []
    for e in events:
        if not isinstance(e, tr.BatchFlush):
            continue
        writes = iter(olds.pop(e.batch, []))
        updates = []
        for ptep, flags, lo, hi in e.entries:
            long_ = bool(flags & abi.ENTRY_LONG)
            notify = bool(flags & abi.ENTRY_NOTIFY)
            clean = flags & ~(abi.ENTRY_LONG | abi.ENTRY_NOTIFY)
            new = lo | (hi << 32) if long_ else lo
            old = None
            if not notify:
                w = next(writes, None)
                if w is not None and w.ptep == ptep:
                    old = w.old
            updates.append(Update(ptep, clean, new, old, long_, notify))
        out.append(Batch(e.batch, e.seq, e.trigger, e.tlb_action, tuple(updates)))
    return out


#: Upper bounds of the size-histogram buckets (powers of two up to the queue length).
SIZE_BUCKETS: tuple[int, ...] = tuple(sorted({1 << k for k in range(8)} | {abi.ROM_QUEUE_LEN}))


@dataclass(frozen=True)
class Stats:
    """What batching did over a trace."""

    batches: int
    updates: int  # deferred updates applied by flushes (the guest's "deferred")
    exits_saved: int
    direct_writes: int  # PTE writes the ROM did at once (not deferred)
    by_trigger: dict[str, int] = field(default_factory=dict)
    by_tlb_action: dict[str, int] = field(default_factory=dict)
    largest: int = 0

    @property
    def mean(self) -> float:
        return self.updates / self.batches if self.batches else 0.0


def statistics(batches: Sequence[Batch], events: Iterable[tr.Event] = ()) -> Stats:
    """Totals over the batches; ``events`` adds the count of undeferred PTE writes."""
    direct = sum(1 for e in events if isinstance(e, tr.PteWrite) and not e.deferred)
    return Stats(
        batches=len(batches),
        updates=sum(b.count for b in batches),
        exits_saved=sum(b.exits_saved for b in batches),
        direct_writes=direct,
        by_trigger=dict(Counter(b.trigger for b in batches).most_common()),
        by_tlb_action=dict(Counter(b.tlb_action for b in batches).most_common()),
        largest=max((b.count for b in batches), default=0),
    )


def histogram(sizes: Iterable[int],
              buckets: Sequence[int] = SIZE_BUCKETS) -> list[tuple[str, int]]:
    """(label, count) per bucket: ``1``, ``2``, ``3-4``, ``5-8`` ... (empty buckets kept)."""
    return histogram_of_counts(Counter(sizes), buckets)


def histogram_of_counts(sizes: Mapping[int, int],
                        buckets: Sequence[int] = SIZE_BUCKETS) -> list[tuple[str, int]]:
    """``histogram`` of sizes given as {size: batches of that size}."""
    counts = [0] * len(buckets)
    extra = 0
    for n, k in sizes.items():
        for i, top in enumerate(buckets):
            if n <= top:
                counts[i] += k
                break
        else:
            extra += k
    out = []
    low = 1
    for top, c in zip(buckets, counts, strict=True):
        out.append((str(top) if low == top else f"{low}-{top}", c))
        low = top + 1
    if extra:
        out.append((f">{buckets[-1]}", extra))
    return out


def find(batches: Sequence[Batch], number: int) -> Batch | None:
    return next((b for b in batches if b.number == number), None)


# --- batches over event columns, streamed ---------------------------------------------------------


def enum_name(enum: type[IntEnum], value: int) -> str:
    """The enum's name for a value, or the number (a file may hold values this vmigdb does not
    know)."""
    try:
        return enum(value).name
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class BatchRow:
    """One flush as the timeline lists it (what ``Batch`` shows, without the updates)."""

    number: int
    seq: int
    count: int
    trigger: str
    tlb_action: str
    va_span: tuple[int, int] | None
    clock: int = 0

    @property
    def exits_saved(self) -> int:
        return max(self.count - 1, 0)


#: Batches listed in a timeline by default: the first and the last halves of this many.
LISTED = 100
#: Chart points kept: past this many batches every other point goes and the stride doubles.
POINTS = 20_000
_POINT = np.dtype([("clock", "<u8"), ("seq", "<u8"), ("count", "<u4"), ("trigger", "<u4")])


class BatchTally:
    """The flushes of a trace, fed as chunks in order; memory stays bounded however many.

    ``listed`` rows are kept for the timeline (the first ``listed // 2`` and the last; 0: all),
    and at most POINTS (time, size, trigger) points for a chart, evenly thinned."""

    def __init__(self, listed: int = LISTED) -> None:
        self.listed = listed
        self.head: list[BatchRow] = []
        self.tail: deque[BatchRow] = deque(maxlen=max(listed - listed // 2, 0) or None)
        self.batches = 0
        self.updates = 0
        self.exits_saved = 0
        self.direct_writes = 0
        self.largest = 0
        self.sizes: Counter[int] = Counter()
        self.by_trigger: Counter[str] = Counter()
        self.by_tlb_action: Counter[str] = Counter()
        self.points = np.zeros(0, _POINT)
        self.stride = 1  # every stride-th batch is a point
        self._skip = 0

    def add(self, chunk: ev.Chunk) -> None:
        kinds = chunk["kind"]
        pte = kinds == ev.Kind.PTE
        self.direct_writes += int(np.count_nonzero(pte & (chunk["a2"] & ev.PTE_DEFERRED == 0)))
        flushes = np.flatnonzero(kinds == ev.Kind.FLUSH)
        if not len(flushes):
            return
        seqs = chunk["seq"][flushes]
        counts = chunk["a1"][flushes].astype(np.int64)
        self.batches += len(flushes)
        self.updates += int(counts.sum())
        self.exits_saved += int(np.maximum(counts - 1, 0).sum())
        self.largest = max(self.largest, int(counts.max()))
        self.sizes.update(dict(zip(*np.unique(counts, return_counts=True), strict=True)))
        triggers = chunk["a2"][flushes]
        tlbs = chunk["a3"][flushes]
        for value, n in zip(*np.unique(triggers, return_counts=True), strict=True):
            self.by_trigger[enum_name(abi.FlushTrigger, int(value))] += int(n)
        for value, n in zip(*np.unique(tlbs, return_counts=True), strict=True):
            self.by_tlb_action[enum_name(abi.TlbAction, int(value))] += int(n)
        self._add_points(chunk["clock"][flushes], seqs, counts, triggers)
        self._add_rows(chunk, flushes)

    def _add_rows(self, chunk: ev.Chunk, flushes: np.ndarray) -> None:
        """Rows for the head while it has room, then for the tail (only the last ones of a
        chunk can stay there, so only those are built)."""
        if self.listed:
            room = max(self.listed // 2 - len(self.head), 0)
            last = max(room, len(flushes) - (self.listed - self.listed // 2))
            flushes = np.concatenate([flushes[:room], flushes[last:]])
        else:
            room = len(flushes)
        lo, hi = _va_spans(chunk, chunk["seq"][flushes])
        rows = zip(chunk["a0"][flushes].tolist(), chunk["seq"][flushes].tolist(),
                   chunk["a1"][flushes].tolist(), chunk["a2"][flushes].tolist(),
                   chunk["a3"][flushes].tolist(), lo.tolist(), hi.tolist(),
                   chunk["clock"][flushes].tolist(), strict=True)
        for i, (number, seq, count, trig, tlb, va_lo, va_hi, clock) in enumerate(rows):
            row = BatchRow(number, seq, count, enum_name(abi.FlushTrigger, trig),
                           enum_name(abi.TlbAction, tlb),
                           (va_lo, va_hi) if va_lo <= va_hi else None, clock)
            (self.head.append if i < room else self.tail.append)(row)

    def _add_points(self, clocks: np.ndarray, seqs: np.ndarray, counts: np.ndarray,
                    triggers: np.ndarray) -> None:
        take = (np.arange(len(seqs)) + self._skip) % self.stride == 0
        self._skip = (self._skip + len(seqs)) % self.stride
        new = np.zeros(int(take.sum()), _POINT)
        new["clock"], new["seq"] = clocks[take], seqs[take]
        new["count"], new["trigger"] = counts[take], triggers[take]
        self.points = np.concatenate([self.points, new])
        while len(self.points) > POINTS:
            self.points = self.points[::2]
            self.stride *= 2

    @property
    def rows(self) -> list[BatchRow]:
        """The rows kept for a timeline: every batch, or the first and the last ones."""
        return self.head + list(self.tail)

    @property
    def omitted(self) -> int:
        """Batches between the first and the last rows that are not listed."""
        return self.batches - len(self.head) - len(self.tail)

    def statistics(self) -> Stats:
        return Stats(batches=self.batches, updates=self.updates, exits_saved=self.exits_saved,
                     direct_writes=self.direct_writes,
                     by_trigger=dict(self.by_trigger.most_common()),
                     by_tlb_action=dict(self.by_tlb_action.most_common()),
                     largest=self.largest)


def _va_spans(chunk: ev.Chunk, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) VA each flush's entries touched, from the flags of the entries that
    carry it (VMI_PAGE_CURRENT_AS); lowest > highest where none does."""
    lo = np.full(len(seqs), 0xFFFFFFFF, np.int64)
    hi = np.full(len(seqs), -1, np.int64)
    entries = chunk.entries
    if not len(entries) or not len(seqs):
        return lo, hi
    flags = entries["flags"]
    keep = flags & abi.VMI_PAGE_CURRENT_AS != 0
    if not keep.any():
        return lo, hi
    va = (flags[keep] & abi.VMI_PAGE_VA_MASK).astype(np.int64)
    owners = entries["seq"][keep]
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    group_lo = np.minimum.reduceat(va, starts)
    group_hi = np.maximum.reduceat(va, starts)
    at = np.searchsorted(seqs, owners[starts])
    found = at < len(seqs)
    found[found] = seqs[at[found]] == owners[starts][found]
    lo[at[found]] = group_lo[found]
    hi[at[found]] = group_hi[found]
    return lo, hi
