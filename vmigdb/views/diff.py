"""``vmigdb diff``: the verdict, each differing region side by side with the matching events
around it, and the count differences.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi
from vmigdb import trace as tr
from vmigdb.tracediff import Region, TraceDiff
from vmigdb.views.trace import format_args, format_results


def describe(e: tr.Event | None) -> str:
    """One event on one line: its type and what matters about it (no seq)."""
    if e is None:
        return "(end of trace)"
    if isinstance(e, tr.RomCall):
        return f"call {e.call} {format_args(e.call, e.args)} site={e.site:#x}".rstrip()
    if isinstance(e, tr.RomReturn):
        return f"return {e.call} {format_results(e.results)}".rstrip()
    if isinstance(e, tr.PteWrite):
        how = f"batch {e.batch}" if e.deferred else "direct"
        return f"pte ptep={e.ptep:#x} {e.old:#x} -> {e.new:#x} flags={e.flags:#x} ({how})"
    if isinstance(e, tr.LazyMode):
        return (f"lazy {abi.LAZY_MODE_NAMES.get(e.old, e.old)} -> "
                f"{abi.LAZY_MODE_NAMES.get(e.new, e.new)}")
    if isinstance(e, tr.BatchFlush):
        return f"flush batch {e.batch}: {e.count} updates, {e.trigger}, TLB {e.tlb_action}"
    if isinstance(e, tr.RomInit):
        return f"rom_init base={e.base:#x} batched={e.batched}"
    if isinstance(e, tr.PatchSite):
        return f"site {e.addr:#x} type {e.type} {e.reloc}"
    return e.TYPE


def render_diff(d: TraceDiff, name_a: str = "A", name_b: str = "B") -> RenderableType:
    """The verdict, every region kept (its events and the context around it), the regions not
    kept as a count, and the count differences."""
    parts: list[RenderableType] = []
    if d.first is None:
        n = sum(d.ignored.values())
        note = (f" ({n} clock values ignored: results of {', '.join(sorted(d.ignored))})"
                if n else "")
        parts.append(Text(f"equivalent: {d.len_a} events each{note}", style="bold green"))
    else:
        plural = "s" * (d.region_count != 1)
        parts.append(Text(
            f"the traces differ in {d.region_count} region{plural}, the first at event "
            f"{d.first.index}", style="bold red"))
        parts.append(Text(f"A: {name_a}: {d.len_a} events, {d.differing_a} in the regions\n"
                          f"B: {name_b}: {d.len_b} events, {d.differing_b} in the regions"))
        for k, region in enumerate(d.regions, 1):
            parts.append(render_region(region, k))
        if d.region_count > len(d.regions):
            parts.append(Text(f"{d.region_count - len(d.regions)} more regions not shown "
                              "(--regions 0 shows them all)", style="dim"))
    if d.calls:
        parts.append(_counts_table("ROM calls counted differently", d.calls, name_a, name_b))
    if d.types:
        parts.append(_counts_table("event types counted differently", d.types, name_a, name_b))
    if not d.calls and not d.types:
        parts.append(Text("every ROM call and event type is counted the same in both"))
    return Group(*parts)


def _span(start: int, n: int) -> str:
    return f"none (at {start})" if not n else (f"{start}" if n == 1 else f"{start}-{start + n - 1}")


def render_region(r: Region, k: int) -> RenderableType:
    """One region: the matching events before it, its own events (red), the matching events
    after it, with each trace's positions (A is the first trace, B the second)."""
    t = Table(title=f"region {k}: A {_span(r.a_start, r.a_len)}, B "
                    f"{_span(r.b_start, r.b_len)}: {r.what}", title_justify="left")
    t.add_column("", no_wrap=True)  # + only in B, - only in A, ≠ changed
    t.add_column("A #", justify="right", no_wrap=True)
    t.add_column("A")
    t.add_column("B #", justify="right", no_wrap=True)
    t.add_column("B")
    n = len(r.before)
    for m, (ea, eb) in enumerate(r.before):
        t.add_row("", str(r.a_start - n + m), Text(describe(ea), style="dim"),
                  str(r.b_start - n + m), Text(describe(eb), style="dim"))
    rows = max(len(r.a_events), len(r.b_events))
    for m in range(rows):
        ea = r.a_events[m] if m < len(r.a_events) else None
        eb = r.b_events[m] if m < len(r.b_events) else None
        equal = m < len(r.same) and r.same[m]  # inside a region, yet the same in both
        mark = ("" if equal else "≠") if ea is not None and eb is not None else (
            "-" if ea is not None else "+")
        t.add_row(Text(mark, style="bold red"), str(r.a_start + m) if ea is not None else "",
                  Text(describe(ea) if ea is not None else "", style="bold red"),
                  str(r.b_start + m) if eb is not None else "",
                  Text(describe(eb) if eb is not None else "", style="bold red"))
    hidden_a, hidden_b = r.a_len - len(r.a_events), r.b_len - len(r.b_events)
    if hidden_a > 0 or hidden_b > 0:
        t.add_row("", "…", Text(f"{max(hidden_a, 0)} more", style="red"), "…",
                  Text(f"{max(hidden_b, 0)} more", style="red"))
    for m, (ea, eb) in enumerate(r.after):
        t.add_row("", str(r.a_start + r.a_len + m), Text(describe(ea), style="dim"),
                  str(r.b_start + r.b_len + m), Text(describe(eb), style="dim"))
    return t


def _counts_table(title: str, rows, name_a: str, name_b: str) -> Table:
    t = Table(title=title)
    t.add_column("name")
    t.add_column(name_a, justify="right")
    t.add_column(name_b, justify="right")
    t.add_column("difference", justify="right")
    for r in rows:
        t.add_row(r.name, str(r.a), str(r.b), f"{r.delta:+d}")
    return t
