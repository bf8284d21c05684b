"""Lazy-MMU batches: a timeline table, one batch as a tree, a size histogram, and the totals.

Each batch shows what a reader of VMI's lazy MMU mode wants to see: how many updates one exit
carried, which addresses they touched, why the ROM flushed and how it invalidated the TLB, and
how many exits batching saved compared with one exit per update.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from vmigdb import decode
from vmigdb.batches import Batch, Stats, Update, histogram


def _span(b: Batch) -> str:
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


def render_timeline(batches: Sequence[Batch], stats: Stats) -> RenderableType:
    """Every batch in order: size, VA span, trigger, TLB action, exits saved."""
    t = Table(title=f"lazy-MMU batches ({len(batches)})")
    t.add_column("batch", justify="right")
    t.add_column("seq", justify="right")
    t.add_column("updates", justify="right")
    t.add_column("VA span")
    t.add_column("trigger")
    t.add_column("TLB action")
    t.add_column("exits saved", justify="right")
    for b in batches:
        t.add_row(str(b.number), str(b.seq), str(b.count), _span(b), b.trigger, b.tlb_action,
                  str(b.exits_saved))
    return Group(t, render_stats(stats))


def render_histogram(batches: Sequence[Batch], width: int = 40) -> RenderableType:
    """Batch sizes in power-of-two buckets, as bars."""
    rows = histogram(b.count for b in batches)
    top = max((c for _, c in rows), default=0) or 1
    t = Table(title="batch sizes", box=None)
    t.add_column("updates", justify="right")
    t.add_column("batches", justify="right")
    t.add_column("")
    for label, count in rows:
        bar = Text("█" * max(round(count / top * width), 1 if count else 0), style="blue")
        t.add_row(label, str(count), bar)
    return t


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
