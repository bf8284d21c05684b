"""``vmigdb diff``: two traces side by side around their first difference, and count differences.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi
from vmigdb import trace as tr
from vmigdb.tracediff import TraceDiff
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
    """The verdict, the context around the first difference, and the count differences."""
    parts: list[RenderableType] = []
    if d.first is None:
        n = sum(d.ignored.values())
        note = (f" ({n} clock values ignored: results of {', '.join(sorted(d.ignored))})"
                if n else "")
        parts.append(Text(f"equivalent: {d.len_a} events each{note}", style="bold green"))
    else:
        f = d.first
        what = (f"fields {', '.join(f.fields)} differ" if f.fields
                else "one trace ends here")
        parts.append(Text(f"the traces differ at event {f.index} ({what}); "
                          f"{name_a}: {d.len_a} events, {name_b}: {d.len_b} events",
                          style="bold red"))
        t = Table(title=f"around event {f.index}")
        t.add_column("#", justify="right")
        t.add_column(name_a)
        t.add_column(name_b)
        n = max(len(d.context_a), len(d.context_b))
        for k in range(n):
            i = d.context_start + k
            ea = d.context_a[k] if k < len(d.context_a) else None
            eb = d.context_b[k] if k < len(d.context_b) else None
            style = "bold red" if i == f.index else ""
            t.add_row(Text(str(i), style=style), Text(describe(ea), style=style),
                      Text(describe(eb), style=style))
        parts.append(t)
    if d.calls:
        parts.append(_counts_table("ROM calls counted differently", d.calls, name_a, name_b))
    if d.types:
        parts.append(_counts_table("event types counted differently", d.types, name_a, name_b))
    if not d.calls and not d.types:
        parts.append(Text("every ROM call and event type is counted the same in both"))
    return Group(*parts)


def _counts_table(title: str, rows, name_a: str, name_b: str) -> Table:
    t = Table(title=title)
    t.add_column("name")
    t.add_column(name_a, justify="right")
    t.add_column(name_b, justify="right")
    t.add_column("difference", justify="right")
    for r in rows:
        t.add_row(r.name, str(r.a), str(r.b), f"{r.delta:+d}")
    return t
