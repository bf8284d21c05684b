"""Lazy-MMU batches: a timeline table, one batch as a tree, a size histogram, and the totals.

Each batch shows what a reader of VMI's lazy MMU mode wants to see: how many updates one exit
carried, which addresses they touched, why the ROM flushed and how it invalidated the TLB, and
how many exits batching saved compared with one exit per update. On Linux (``causes``) each
batch also names its cause: the task and the kernel path that entered lazy MMU mode, and the
updates it deferred beside the PTE writes the ROM made at once while it was open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from vmigdb import decode
from vmigdb.batches import Batch, Stats, Update, histogram_of_counts
from vmigdb.context import BatchCause, LazySection
from vmigdb.views.console import fit_columns


class Listed(Protocol):
    """What the timeline shows of a batch: a ``Batch`` (gdb) or a ``BatchRow`` (a report)."""

    number: int
    seq: int
    count: int
    trigger: str
    tlb_action: str

    @property
    def va_span(self) -> tuple[int, int] | None: ...

    @property
    def exits_saved(self) -> int: ...


def _span(b: Listed) -> str:
    span = b.va_span
    if span is None:
        return "?"
    lo, hi = span
    return f"{lo:#x}" if lo == hi else f"{lo:#x}-{hi + 0xFFF:#x}"


def render_stats(stats: Stats) -> RenderableType:
    """One paragraph of totals: batches, deferred updates, exits saved, triggers."""
    triggers = ", ".join(f"{k}={v}" for k, v in stats.by_trigger.items()) or "-"
    tlb = ", ".join(f"{k}={v}" for k, v in stats.by_tlb_action.items()) or "-"
    return Text(
        f"batches={stats.batches} deferred updates={stats.updates} "
        f"exits saved={stats.exits_saved} (unbatched: {stats.updates} exits, batched: "
        f"{stats.batches}) mean size={stats.mean:.1f} largest={stats.largest} "
        f"direct PTE writes={stats.direct_writes}\n"
        f"triggers: {triggers}\nTLB actions: {tlb}")


def render_timeline(batches: Sequence[Listed], stats: Stats,
                    gap: tuple[int, int] | None = None, *,
                    causes: Mapping[int, BatchCause] | None = None,
                    task_label: Callable[[int, int | None], str] | None = None
                    ) -> RenderableType:
    """Every batch in order: size, VA span, trigger, TLB action, exits saved. ``gap`` =
    (position, batches): that many batches are not listed, and a marker row at that position
    in the list stands for them (a report lists the first and the last ones). ``causes``
    (Linux): per batch number, who opened it, and the PTE writes made at once (not deferred)
    while it was open; ``task_label(task, seq)`` names a task."""
    at, omitted = gap if gap is not None and gap[1] else (-1, 0)
    t = Table(title=f"lazy-MMU batches ({len(batches) + omitted})")
    t.add_column("batch", justify="right", no_wrap=True)
    t.add_column("seq", justify="right", no_wrap=True)
    t.add_column("updates", justify="right", no_wrap=True)  # deferred: the batch's own
    if causes is not None:
        t.add_column("immediate", justify="right", no_wrap=True)
        t.add_column("task")
        t.add_column("opened by")
    t.add_column("VA span", no_wrap=True)
    t.add_column("trigger")
    t.add_column("TLB action")
    t.add_column("exits saved", justify="right", no_wrap=True)
    blank = [""] * (len(t.columns) - 7)
    for i, b in enumerate(batches):
        if i == at:
            t.add_row("…", "", "", *blank, "", Text(f"{omitted} batches not listed "
                                                    "(--batches 0 lists all)", style="dim"),
                      "", "")
        why: list[str] = []
        if causes is not None:
            c = causes.get(b.number)
            if c is None:
                why = ["", "", "?"]
            else:
                task = (task_label(c.task, c.opener) if task_label else f"{c.task:#x}") \
                    if c.task else ""
                path = " <- ".join(c.path) if c.path else (
                    "lazy mode on before the trace" if c.opener is None else "?")
                why = [str(c.immediate), task, path]
        t.add_row(str(b.number), str(b.seq), str(b.count), *why, _span(b), b.trigger,
                  b.tlb_action, str(b.exits_saved))
    return Group(fit_columns(t), render_stats(stats))


def render_histogram(batches: Sequence[Listed] = (), width: int = 40, *,
                     sizes: Mapping[int, int] | None = None) -> RenderableType:
    """Batch sizes in power-of-two buckets, as bars (of ``batches``, or of ``sizes``:
    {size: batches of that size}, what a streamed report keeps)."""
    if sizes is None:
        sizes = {}
        for b in batches:
            sizes[b.count] = sizes.get(b.count, 0) + 1
    rows = histogram_of_counts(sizes)
    top = max((c for _, c in rows), default=0) or 1
    t = Table(title="batch sizes", box=None)
    t.add_column("updates", justify="right", no_wrap=True)
    t.add_column("batches", justify="right", no_wrap=True)
    t.add_column("")
    for label, count in rows:
        bar = Text("█" * max(round(count / top * width), 1 if count else 0), style="blue")
        t.add_row(label, str(count), bar)
    return fit_columns(t)


def _flags(u: Update) -> Text:
    """Old -> new flags with the changed bits marked: +NAME set, -NAME cleared."""
    if u.notify:
        return Text("notification: the guest wrote the entry itself", style="dim")
    new_names = decode.bit_names(u.new, decode.PTE_BITS)
    set_, cleared = u.changed_bits()
    text = Text()
    for name in new_names:
        text.append(("+" if name in set_ else "") + name + " ",
                    style="bold green" if name in set_ else "")
    for name in cleared:
        text.append(f"-{name} ", style="bold red")
    return text if text.plain else Text("(not present)", style="dim")


def _update_label(u: Update) -> Text:
    va = f"VA {u.va:#x}" if u.va is not None else "VA ?"
    pa = f"PA {u.pa:#x}" if u.pa is not None else "unmapped"
    old = f"{u.old:#x}" if u.old is not None else "?"
    label = Text(f"{va} -> {pa}  ptep={u.ptep:#x}  ")
    if u.notify:
        label.append("UpdatePxE ")
    else:
        label.append(f"{old} -> {u.new:#x}  ")
    label.append_text(_flags(u))
    return label


def render_batch(b: Batch) -> RenderableType:
    """One batch: its updates in the order the ROM applied them, then the flush."""
    tree = Tree(Text(f"batch {b.number} (seq {b.seq}): {b.count} updates, trigger {b.trigger}, "
                     f"VA span {_span(b)}", style="bold"))
    for i, u in enumerate(b.updates):
        tree.add(Text(f"[{i}] ").append_text(_update_label(u)))
    tree.add(Text(f"flush: TLB action {b.tlb_action}; one exit instead of {b.count} "
                  f"(saved {b.exits_saved})", style="magenta"))
    return tree


def render_sections(sections: Sequence[LazySection], *,
                    task_label: Callable[[int, int | None], str] | None = None,
                    title: str = "") -> RenderableType:
    """The guest's lazy-MMU sections: who entered each (task, kernel path), its updates by
    whether the guest let the ROM defer them, and what flushed it."""
    t = Table(title=title or f"lazy-MMU sections ({len(sections)})")
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("seq", justify="right", no_wrap=True)
    t.add_column("deferred", justify="right", no_wrap=True)
    t.add_column("immediate", justify="right", no_wrap=True)
    t.add_column("task")
    t.add_column("opened by")
    t.add_column("flushed by")
    for sec in sections:
        task = ((task_label(sec.task, sec.seq) if task_label else f"{sec.task:#x}")
                if sec.task else "")
        t.add_row(str(sec.number), str(sec.seq), str(sec.deferred), str(sec.immediate), task,
                  " <- ".join(sec.path) or "?", sec.trigger)
    deferred = sum(sec.deferred for sec in sections)
    immediate = sum(sec.immediate for sec in sections)
    openers: dict[str, int] = {}
    for sec in sections:
        key = sec.path[0] if sec.path else "?"
        openers[key] = openers.get(key, 0) + 1
    top = ", ".join(f"{k}={v}" for k, v in sorted(openers.items(), key=lambda kv: -kv[1])[:6])
    return Group(fit_columns(t), Text(
        f"sections={len(sections)} deferred updates={deferred} immediate updates={immediate}\n"
        f"opened by: {top or '-'}"))
