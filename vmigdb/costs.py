"""What the traced ROM calls would cost under a trapping hypervisor, counted in exits.

The model is the one ``vmigdb.batches`` uses for "exits saved": every ROM call exits once,
except a page-table update the ROM queued in lazy MMU mode (it costs nothing at the call), and
every batch flush exits once for the whole queue. An unbatched ROM pays one exit per call. The
numbers say where a guest's VMI traffic goes and what lazy-MMU batching buys; they are not a
measurement of any real hypervisor.

Pure: works on ``vmigdb.trace`` events from any producer. Which calls were queued is decided by
the ROM's own rule (batching on, lazy MMU mode, ``VMI_PAGE_DEFER`` in the flags), replayed over
the events in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmigdb import abi
from vmigdb import trace as tr

#: Calls whose update the ROM queues when deferred (UpdatePxE* queue an invalidation).
DEFERRABLE = frozenset({"SetPxE", "SetPxELong", "UpdatePxE", "UpdatePxELong"})


def queued_calls(events: Sequence[tr.Event]) -> set[int]:
    """The seqs of the RomCall events whose update the ROM queued instead of applying.

    Batching is on after a ``rom_init`` that says so; a trace that starts after vmi_init has
    none, and then batching is taken to be on when the trace holds any batch flush."""
    batched = any(isinstance(e, tr.BatchFlush) for e in events)
    lazy = abi.VMI_LAZY_MODE_OFF
    out: set[int] = set()
    for e in events:
        if isinstance(e, tr.RomInit):
            batched, lazy = e.batched, abi.VMI_LAZY_MODE_OFF
        elif isinstance(e, tr.LazyMode):
            lazy = e.new
        elif (isinstance(e, tr.RomCall) and e.call in DEFERRABLE and batched
              and lazy == abi.VMI_LAZY_MMU_UPDATES
              and e.args.get("flags", 0) & abi.VMI_PAGE_DEFER):
            out.add(e.seq)
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
    events = list(events)
    queued = queued_calls(events)
    calls: dict[str, int] = {}
    deferred: dict[str, int] = {}
    for e in events:
        if isinstance(e, tr.RomCall):
            calls[e.call] = calls.get(e.call, 0) + 1
            if e.seq in queued:
                deferred[e.call] = deferred.get(e.call, 0) + 1
    rows = tuple(CallCost(name, n, deferred.get(name, 0), _native(name))
                 for name, n in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])))
    flushes = sum(1 for e in events if isinstance(e, tr.BatchFlush))
    return Costs(rows, flushes)


def _native(name: str) -> str:
    try:
        return abi.CALLS[abi.VmiCall[name]].native
    except KeyError:
        return ""
