"""``vmigdb report``: what the gdb commands show, over a saved trace, computed in one streaming
pass over its event columns.

A Linux boot is millions of events, so nothing here holds the trace: ``ReportBuilder.add`` folds
each chunk into counters of fixed size (per call, per event kind, per PTE bit, time bins) or
bounded by the guest's code (per call site, per task), and ``finish`` turns them into a
``Report``. The views are the ones ``vmigdb report`` always printed: the totals, ROM calls with
their counts and cost in exits (``vmigdb.costs``), the calling sites (named from the ELF
symbols when at hand, matched to its ``.parainstructions`` records), the lazy-MMU batches
(``vmigdb.batches``), the flags of the PTE updates and the PTE bits the writes set and
cleared, and the tasks when the trace names them. The charts of ``--html``/``--svg``/``--png``
(``vmigdb.charts``) draw from the same ``Report``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi, batches, costs, decode, sites, tracein
from vmigdb import events as ev
from vmigdb.costs import Costs, CostTally
from vmigdb.symbols import Symbols
from vmigdb.timebins import TimeBins
from vmigdb.views.batches import render_histogram, render_timeline

#: PTE-update flag masks and PTE bits, as arrays for counting them over columns.
_FLAG_MASKS = np.array([m for m, _ in abi.PTE_UPDATE_FLAG_BITS], np.uint32)
_PTE_BITS = np.array([b for b, _ in decode.PTE_BITS], np.uint64)


@dataclass(frozen=True)
class CallSite:
    """Where ROM calls came from: the call instruction's address and what was called there."""

    addr: int
    symbol: str
    calls: dict[str, int]
    record: sites.Site | None  # the .parainstructions record covering it, when known

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@dataclass(frozen=True)
class TaskCalls:
    """The ROM calls one guest task made (Linux: a task_struct, named by pid and comm)."""

    task: int
    pid: int | None
    comm: str
    calls: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def label(self) -> str:
        return f"{self.comm} ({self.pid})" if self.pid is not None else f"task {self.task:#x}"


@dataclass
class Report:
    """Everything the report's views and charts show, with no event kept."""

    name: str
    header: dict[str, Any]
    version: int
    end: dict[str, Any] | None
    events: int
    kinds: dict[str, int]
    costs: Costs
    batches: batches.BatchTally
    sites: list[CallSite]
    flags: dict[str, int]
    pte_bits: dict[str, tuple[int, int]]
    tasks: list[TaskCalls]
    calls_by_clock: TimeBins
    calls_by_seq: TimeBins
    has_clock: bool
    symbols_from: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> tuple[str, str]:
        """The two lines every output of the report carries (tests compare them)."""
        c = self.costs
        totals = (f"totals: {self.events} events, {c.calls} ROM calls, "
                  f"{self.batches.batches} batches, {c.queued} queued updates")
        return (totals,
                f"exits: {c.exits} (unbatched {c.unbatched_exits}, saved {c.saved})")

    @property
    def title(self) -> str:
        meta = tracein.describe_header(self.header)
        return f"{self.name}: vmigdb trace v{self.version}" + (f" ({meta})" if meta else "")

    @property
    def ended(self) -> str | None:
        if self.end is None:
            return None
        status = tracein.shown(self.end.get("status", "?"))
        message = self.end.get("message")
        return f"ended: {status}" + (f" ({tracein.shown(message)})" if message else "")


class ReportBuilder:
    """Folds chunks, in trace order, into the counters a ``Report`` is made of."""

    def __init__(self, listed_batches: int = batches.LISTED) -> None:
        self.events = 0
        self.kinds = np.zeros(len(ev.Kind), np.int64)
        self.costs = CostTally()
        self.batches = batches.BatchTally(listed_batches)
        self.sites: Counter[int] = Counter()  # site << 8 | call
        self.tasks: Counter[int] = Counter()  # task << 8 | call
        self.flags = np.zeros(len(_FLAG_MASKS), np.int64)
        self.bits_set = np.zeros(len(_PTE_BITS), np.int64)
        self.bits_cleared = np.zeros(len(_PTE_BITS), np.int64)
        self.by_clock = TimeBins()
        self.by_seq = TimeBins()
        self.max_clock = 0

    def add(self, chunk: ev.Chunk) -> np.ndarray:
        """Fold in a chunk; returns the mask of its calls the ROM queued (``CostTally.add``),
        which a Perfetto writer fed in the same pass uses."""
        self.events += len(chunk)
        kinds = chunk["kind"]
        self.kinds += np.bincount(kinds, minlength=len(ev.Kind))[:len(ev.Kind)]
        queued = self.costs.add(chunk)
        self.batches.add(chunk)
        calls = kinds == ev.Kind.CALL
        numbers = chunk["call"][calls].astype(np.uint64)
        _count_keys(self.sites, chunk["site"][calls], numbers, skip_zero=True)
        _count_keys(self.tasks, chunk["task"][calls], numbers, skip_zero=False)
        deferrable, flags = costs.update_flags(chunk)
        self.flags += ((flags[deferrable][:, None] & _FLAG_MASKS) != 0).sum(axis=0)
        pte = kinds == ev.Kind.PTE
        if pte.any():
            old, new = chunk["old"][pte], chunk["new"][pte]
            self.bits_set += ((new & ~old)[:, None] >> _PTE_BITS & 1).sum(axis=0).astype(np.int64)
            self.bits_cleared += ((old & ~new)[:, None] >> _PTE_BITS & 1).sum(axis=0).astype(
                np.int64)
        clocks = chunk["clock"][calls]
        if len(clocks):
            self.max_clock = max(self.max_clock, int(clocks.max()))
            self.by_clock.add(clocks, chunk["call"][calls])
            self.by_seq.add(chunk["seq"][calls], chunk["call"][calls])
        return queued

    def finish(self, *, name: str, header: dict[str, Any], version: int,
               end: dict[str, Any] | None, tasks: dict[int, tuple[int, str]],
               symbols: Symbols | None = None, symbols_from: str | None = None) -> Report:
        kinds = {ev.KIND_NAMES[ev.Kind(k)]: int(n) for k, n in enumerate(self.kinds) if n}
        flags = {name: int(n) for (_, name), n in zip(abi.PTE_UPDATE_FLAG_BITS, self.flags,
                                                       strict=True) if n}
        bits = {name: (int(s), int(c)) for (_, name), s, c in
                zip(decode.PTE_BITS, self.bits_set, self.bits_cleared, strict=True) if s or c}
        return Report(
            name=name, header=header, version=version, end=end, events=self.events,
            kinds=dict(sorted(kinds.items())), costs=self.costs.result(), batches=self.batches,
            sites=_call_sites(self.sites, symbols), flags=flags, pte_bits=bits,
            tasks=_task_calls(self.tasks, tasks), calls_by_clock=self.by_clock,
            calls_by_seq=self.by_seq, has_clock=self.max_clock > 0, symbols_from=symbols_from)


def _count_keys(counter: Counter[int], where: np.ndarray, calls: np.ndarray, *,
                skip_zero: bool) -> None:
    """Count (where, call) pairs into ``counter`` under the key ``where << 8 | call``."""
    if skip_zero:
        keep = where != 0
        where, calls = where[keep], calls[keep]
    if not len(where):
        return
    keys, n = np.unique(where.astype(np.uint64) << np.uint64(8) | calls, return_counts=True)
    counter.update(dict(zip(keys.tolist(), n.tolist(), strict=True)))


def _split(counter: Counter[int]) -> dict[int, dict[str, int]]:
    """{where: {call name: count, most first}} from ``where << 8 | call`` keys."""
    out: dict[int, Counter[str]] = {}
    for key, n in counter.items():
        out.setdefault(key >> 8, Counter())[ev.CALL_NAMES[key & 0xFF]] += n
    return {k: dict(c.most_common()) for k, c in out.items()}


def _call_sites(counter: Counter[int], symbols: Symbols | None) -> list[CallSite]:
    """Calling sites by number of calls (most first); site 0 (unknown) is left out."""
    by_site = _split(counter)
    addrs = sorted(by_site)
    names = symbols.lookup(addrs) if symbols is not None else [""] * len(addrs)
    out = [CallSite(a, n, by_site[a], symbols.record(a) if symbols is not None else None)
           for a, n in zip(addrs, names, strict=True)]
    return sorted(out, key=lambda s: (-s.total, s.addr))


def _task_calls(counter: Counter[int], names: dict[int, tuple[int, str]]) -> list[TaskCalls]:
    """The tasks that made ROM calls, most calls first; [] when the trace names no task."""
    by_task = _split(counter)
    if set(by_task) <= {0}:
        return []
    out = []
    for task, calls in by_task.items():
        pid, comm = names.get(task, (None, ""))
        if not task:
            comm = "(no task)"
        out.append(TaskCalls(task, pid, tracein.shown(comm), calls))
    return sorted(out, key=lambda t: (-t.total, t.task))


# --- the terminal views ----------------------------------------------------------------------


def render_costs(c: Costs) -> RenderableType:
    t = Table(title="ROM calls: counts and cost")
    for name, justify in (("call", "left"), ("calls", "right"), ("share", "right"),
                          ("queued", "right"), ("exits", "right"), ("native", "left")):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in c.rows:
        share = f"{100 * r.calls / c.calls:.1f}%" if c.calls else "-"
        t.add_row(r.call, str(r.calls), share, str(r.queued) if r.queued else "",
                  str(r.exits), r.native)
    t.add_row(Text("batch flushes", style="magenta"), "", "", "", str(c.flushes), "")
    legend = Text("cost in exits: one per call, none for an update the ROM queued in lazy MMU mode, "
                  "one per batch flush (an unbatched ROM exits once per call)", style="dim")
    return Group(t, legend)


def render_sites(rows: Sequence[CallSite], top: int = 20) -> RenderableType:
    shown = rows[:top] if top > 0 else rows
    t = Table(title=f"calling sites: {len(shown)} of {len(rows)}")
    t.add_column("site")
    t.add_column("symbol")
    t.add_column("patch record")
    t.add_column("calls", justify="right")
    t.add_column("called")
    for s in shown:
        # The record's type is a pv-op slot, named only through the kernel's debug info
        # (vmi sites in gdb); the calls column says what the site called.
        rec = (f"{s.record.addr:#x} type {s.record.type} len {s.record.len}"
               if s.record is not None else "-")
        called = ", ".join(f"{k}×{v}" for k, v in s.calls.items())
        t.add_row(f"{s.addr:#x}", s.symbol or "-", rec, str(s.total), called)
    return t


def render_tasks(rows: Sequence[TaskCalls], top: int = 20) -> RenderableType:
    shown = rows[:top] if top > 0 else rows
    t = Table(title=f"tasks: {len(shown)} of {len(rows)}")
    t.add_column("task")
    t.add_column("pid", justify="right")
    t.add_column("comm")
    t.add_column("calls", justify="right")
    t.add_column("most called")
    for r in shown:
        called = ", ".join(f"{k}×{v}" for k, v in list(r.calls.items())[:4])
        t.add_row(f"{r.task:#x}", "-" if r.pid is None else str(r.pid), r.comm, str(r.total),
                  called)
    return t


def render_flags(r: Report) -> RenderableType:
    t = Table(title="VMI flags of PTE-update calls")
    t.add_column("flag")
    t.add_column("calls", justify="right")
    for name, n in r.flags.items():
        t.add_row(name, str(n))
    b = Table(title="PTE bits changed by PTE writes")
    b.add_column("bit")
    b.add_column("set", justify="right")
    b.add_column("cleared", justify="right")
    for name, (s, c) in r.pte_bits.items():
        b.add_row(name, str(s), str(c))
    return Group(t, b)


def render_report(r: Report, *, top_sites: int = 20) -> RenderableType:
    """Every view of the report, in one renderable."""
    head: list[RenderableType] = [Text(r.title, style="bold")]
    if r.ended:
        head.append(Text(r.ended))
    head.append(Text("events: " + " ".join(f"{k}={v}" for k, v in r.kinds.items())))
    head += [Text(line, style="bold") for line in r.totals]
    head += [Text(note, style="dim") for note in r.notes]
    parts: list[RenderableType] = [*head, render_costs(r.costs), render_sites(r.sites,
                                                                             top_sites)]
    if r.tasks:
        parts.append(render_tasks(r.tasks, top_sites))
    tally = r.batches
    if tally.batches:
        parts += [render_timeline(tally.rows, tally.statistics(),
                                  gap=(len(tally.head), tally.omitted)),
                  render_histogram(sizes=tally.sizes)]
    else:
        parts.append(Text("no batch flushes (an in-place ROM does not batch)"))
    parts.append(render_flags(r))
    return Group(*parts)
