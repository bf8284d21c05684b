"""What the traced ROM calls would cost under a trapping hypervisor, counted in exits.

The model is the one ``vmigdb.batches`` uses for "exits saved": every ROM call exits once,
except a page-table update the ROM queued in lazy MMU mode (it costs nothing at the call), and
every batch flush exits once for the whole queue. An unbatched ROM pays one exit per call. The
numbers say where a guest's VMI traffic goes and what lazy-MMU batching buys; they are not a
measurement of any real hypervisor.

Pure. Which calls were queued is decided by the ROM's own rule (batching on, lazy MMU mode,
``VMI_PAGE_DEFER`` in the flags), replayed over the events in order. The rule is implemented
once, on event columns (``CostTally``, fed chunk by chunk with bounded memory, so a Linux boot
streams through it); ``costs`` and ``queued_calls`` apply it to event objects (gdb's views).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vmigdb import abi
from vmigdb import events as ev
from vmigdb import trace as tr

#: Calls whose update the ROM queues when deferred (UpdatePxE* queue an invalidation).
DEFERRABLE = frozenset({"SetPxE", "SetPxELong", "UpdatePxE", "UpdatePxELong"})
#: Per call number: the argument column (0..4) holding a deferrable call's flags, else -1.
FLAGS_ARG = np.full(256, -1, np.int8)
for _name in DEFERRABLE:
    _call = int(abi.VmiCall[_name])
    FLAGS_ARG[_call] = ev.ARG_NAMES[_call].index("flags")


def update_flags(chunk: ev.Chunk) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the chunk's deferrable calls, their flags word per event: 0 elsewhere)."""
    kinds, calls = chunk["kind"], chunk["call"]
    pos = FLAGS_ARG[calls].astype(np.int64)
    mask = (kinds == ev.Kind.CALL) & (pos >= 0)
    flags = np.zeros(len(chunk), np.uint32)
    for i, name in enumerate(ev.ARGS):
        sel = mask & (pos == i)
        flags[sel] = chunk[name][sel]
    return mask, flags


def _forward_fill(marks: np.ndarray, values: np.ndarray, before: int) -> np.ndarray:
    """At each position, the value of the last marked position at or before it (``before``
    where none is)."""
    idx = np.where(marks, np.arange(len(marks)), -1)
    np.maximum.accumulate(idx, out=idx)
    return np.where(idx >= 0, values[np.maximum(idx, 0)], before)


class CostTally:
    """The queued-update rule and the per-call counts, over chunks in trace order.

    Batching is on after a ``rom_init`` that says so. A trace that starts after vmi_init has
    none: the calls before the first ``rom_init`` are held apart, and count as queued at the end
    when the trace holds any batch flush (which only a batching ROM makes)."""

    def __init__(self) -> None:
        self.calls = np.zeros(256, np.int64)
        self.queued = np.zeros(256, np.int64)
        self.flushes = 0
        self._held = np.zeros(256, np.int64)  # queued if batching turns out to be on
        self._batched: int | None = None  # None: no rom_init seen yet
        self._lazy = abi.VMI_LAZY_MODE_OFF

    def add(self, chunk: ev.Chunk) -> np.ndarray:
        """Count a chunk; returns the mask of its calls that were (or, before any rom_init,
        would be, with batching on) queued."""
        kinds = chunk["kind"]
        calls = chunk["call"]
        is_call = kinds == ev.Kind.CALL
        self.calls += np.bincount(calls[is_call], minlength=256)
        self.flushes += int(np.count_nonzero(kinds == ev.Kind.FLUSH))
        inits = kinds == ev.Kind.ROM_INIT
        lazy_marks = (kinds == ev.Kind.LAZY) | inits
        lazy_values = np.where(inits, abi.VMI_LAZY_MODE_OFF, chunk["a1"]).astype(np.int64)
        lazy = _forward_fill(lazy_marks, lazy_values, self._lazy)
        before = -1 if self._batched is None else self._batched
        batched = _forward_fill(inits, (chunk["a0"] != 0).astype(np.int64), before)
        deferrable, flags = update_flags(chunk)
        candidate = (deferrable & (lazy == abi.VMI_LAZY_MMU_UPDATES)
                     & (flags & abi.VMI_PAGE_DEFER != 0))
        queued = candidate & (batched == 1)
        unknown = candidate & (batched == -1)
        self.queued += np.bincount(calls[queued], minlength=256)
        self._held += np.bincount(calls[unknown], minlength=256)
        if len(chunk):
            self._lazy = int(lazy[-1])
            if inits.any():
                self._batched = int(batched[-1])
        return queued | unknown

    def result(self) -> Costs:
        queued = self.queued + (self._held if self.flushes else 0)
        order = sorted(np.flatnonzero(self.calls).tolist(),
                       key=lambda c: (-int(self.calls[c]), ev.CALL_NAMES[c]))
        rows = tuple(CallCost(ev.CALL_NAMES[c], int(self.calls[c]), int(queued[c]),
                              _native(ev.CALL_NAMES[c])) for c in order)
        return Costs(rows, self.flushes)


def queued_calls(events: Sequence[tr.Event]) -> set[int]:
    """The seqs of the RomCall events whose update the ROM queued instead of applying."""
    chunk = ev.from_events(events)
    tally = CostTally()
    mask = tally.add(chunk)
    if not tally.flushes:  # the held calls were queued only if batching is on
        mask &= ~_before_first_init(chunk)
    return set(chunk["seq"][mask].tolist())


def _before_first_init(chunk: ev.Chunk) -> np.ndarray:
    inits = np.flatnonzero(chunk["kind"] == ev.Kind.ROM_INIT)
    out = np.zeros(len(chunk), bool)
    out[:inits[0] if len(inits) else len(chunk)] = True
    return out


@dataclass(frozen=True)
class CallCost:
    """One call name over a trace."""

    call: str
    calls: int
    queued: int  # updates the ROM queued (no exit at the call)
    native: str  # the instruction the call stands for (abi.CALLS)

    @property
    def exits(self) -> int:
        return self.calls - self.queued


@dataclass(frozen=True)
class Costs:
    """Per-call costs, most frequent first, and the totals."""

    rows: tuple[CallCost, ...]
    flushes: int

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.rows)

    @property
    def queued(self) -> int:
        return sum(r.queued for r in self.rows)

    @property
    def exits(self) -> int:
        """Exits with batching: the calls that were not queued, plus one per flush."""
        return sum(r.exits for r in self.rows) + self.flushes

    @property
    def unbatched_exits(self) -> int:
        """One exit per call: what the same calls cost without a queue."""
        return self.calls

    @property
    def saved(self) -> int:
        return self.unbatched_exits - self.exits


def costs(events: Iterable[tr.Event]) -> Costs:
    """Count calls, queued updates and exits per call name."""
    tally = CostTally()
    tally.add(ev.from_events(events))
    return tally.result()


def _native(name: str) -> str:
    try:
        return abi.CALLS[abi.VmiCall[name]].native
    except KeyError:
        return ""
