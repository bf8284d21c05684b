"""Lazy-MMU batches: group trace events into the ROM's queue flushes, and count what they saved.

Pure: works on ``vmigdb.trace`` events from any producer (the stub's tracer, the portable gdb
path, a saved trace). A ``BatchFlush`` event carries the queue as the ROM applied it; the
``PteWrite`` events that follow it with the same batch number carry each entry's old value, which
only the tracer could see (it read the entry when the update was queued). One flush is one exit
to the hypervisor where unbatched updates would each have been one: a batch of n saves n - 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vmigdb import abi, decode
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
    counts = [0] * len(buckets)
    extra = 0
    for n in sizes:
        for i, top in enumerate(buckets):
            if n <= top:
                counts[i] += 1
                break
        else:
            extra += 1
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
