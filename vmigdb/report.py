"""``vmigdb report``: what the gdb commands show, over a saved trace, for a terminal, HTML or SVG.

One renderable holds every view: the totals, ROM calls with their counts and cost in exits
(``vmigdb.costs``), the calling sites (named from the guest's ELF when it is at hand, and
matched to its ``.parainstructions`` records), the lazy-MMU batches (the views ``vmi batches``
shows), and the flags: the VMI flag words of the PTE updates and the PTE bits the writes set and
cleared. The terminal, the HTML file and the SVG file are the same renderable exported, so
they cannot disagree.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi, batches, decode, sites
from vmigdb import trace as tr
from vmigdb.costs import DEFERRABLE, Costs, costs
from vmigdb.errors import VmiError
from vmigdb.views.batches import render_histogram, render_timeline

#: Width of the exported HTML and SVG (the terminal uses its own).
EXPORT_WIDTH = 140


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


def call_sites(events: Sequence[tr.Event], elf: sites.ElfImage | None = None
               ) -> list[CallSite]:
    """Calling sites by number of calls (most first); site 0 (unknown) is left out."""
    by_site: dict[int, Counter[str]] = {}
    for e in events:
        if isinstance(e, tr.RomCall) and e.site:
            by_site.setdefault(e.site, Counter())[e.call] += 1
    records = sites.sites_from_elf(elf) if elf is not None else []
    out = []
    for addr, calls in by_site.items():
        record = next((r for r in records if r.contains(addr)), None)
        symbol = elf.symbolize(addr) if elf is not None else ""
        out.append(CallSite(addr, symbol, dict(calls.most_common()), record))
    return sorted(out, key=lambda s: (-s.total, s.addr))


def update_flags(events: Sequence[tr.Event]) -> Counter[str]:
    """How many PTE-update calls carried each VMI flag (abi.PTE_UPDATE_FLAG_BITS)."""
    out: Counter[str] = Counter()
    for e in events:
        if isinstance(e, tr.RomCall) and e.call in DEFERRABLE:
            for name in decode.mask_names(e.args.get("flags", 0), abi.PTE_UPDATE_FLAG_BITS):
                out[name] += 1
    return out


def pte_bit_changes(events: Sequence[tr.Event]) -> dict[str, tuple[int, int]]:
    """PTE bit -> (writes that set it, writes that cleared it), over every PTE write."""
    set_: Counter[str] = Counter()
    cleared: Counter[str] = Counter()
    for e in events:
        if isinstance(e, tr.PteWrite):
            set_.update(decode.bit_names(e.new & ~e.old, decode.PTE_BITS))
            cleared.update(decode.bit_names(e.old & ~e.new, decode.PTE_BITS))
    return {name: (set_[name], cleared[name]) for _, name in decode.PTE_BITS
            if set_[name] or cleared[name]}


def totals_lines(events: Sequence[tr.Event], c: Costs, n_batches: int) -> tuple[str, str]:
    """The two lines every output of the report carries (tests compare them across formats)."""
    totals = (f"totals: {len(events)} events, {c.calls} ROM calls, {n_batches} batches, "
              f"{c.queued} queued updates")
    return totals, f"exits: {c.exits} (unbatched {c.unbatched_exits}, saved {c.saved})"


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
        rec = (f"{s.record.addr:#x} {s.record.call_name} len {s.record.len}"
               if s.record is not None else "-")
        called = ", ".join(f"{k}×{v}" for k, v in s.calls.items())
        t.add_row(f"{s.addr:#x}", s.symbol or "-", rec, str(s.total), called)
    return t


def render_flags(events: Sequence[tr.Event]) -> RenderableType:
    flags = update_flags(events)
    t = Table(title="VMI flags of PTE-update calls")
    t.add_column("flag")
    t.add_column("calls", justify="right")
    for _, name in abi.PTE_UPDATE_FLAG_BITS:
        if flags[name]:
            t.add_row(name, str(flags[name]))
    bits = pte_bit_changes(events)
    b = Table(title="PTE bits changed by PTE writes")
    b.add_column("bit")
    b.add_column("set", justify="right")
    b.add_column("cleared", justify="right")
    for name, (s, c) in bits.items():
        b.add_row(name, str(s), str(c))
    return Group(t, b)


def render_report(t: tr.Trace, *, name: str = "trace", elf: sites.ElfImage | None = None,
                  top_sites: int = 20) -> RenderableType:
    """Every view of the report, in one renderable."""
    events = t.events
    c = costs(events)
    found = batches.group(events)
    meta = ", ".join(f"{k}={t.meta[k]}" for k in ("producer", "target", "source", "guest",
                                                  "cmdline", "until") if t.meta.get(k))
    head = [Text(f"{name}: vmigdb trace v{t.meta.get('version')}" + (f" ({meta})" if meta
                                                                        else ""), style="bold")]
    if t.end is not None:
        head.append(Text(f"ended: {t.end.get('status', '?')}"
                         + (f" ({t.end['message']})" if t.end.get("message") else "")))
    by_type = Counter(e.TYPE for e in events)
    head.append(Text("events: " + " ".join(f"{k}={v}" for k, v in sorted(by_type.items()))))
    head += [Text(line, style="bold") for line in totals_lines(events, c, len(found))]
    parts: list[RenderableType] = [*head, render_costs(c), render_sites(call_sites(events, elf),
                                                                         top_sites)]
    if found:
        stats = batches.statistics(found, events)
        parts += [render_timeline(found, stats), render_histogram(found)]
    else:
        parts.append(Text("no batch flushes (an in-place ROM does not batch)"))
    parts.append(render_flags(events))
    return Group(*parts)


def load_elf(path: str | Path | None) -> sites.ElfImage | None:
    """The guest's ELF for names and patch records; None when there is no such file."""
    if not path:
        return None
    try:
        return sites.ElfImage(Path(path).read_bytes())
    except OSError:
        return None


def export(renderable: RenderableType, *, html: str | None = None, svg: str | None = None,
           title: str = "vmigdb report") -> list[str]:
    """Write the renderable as HTML and/or SVG (rich's recording console); the paths written."""
    written: list[str] = []
    if not html and not svg:
        return written
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=EXPORT_WIDTH, file=sink, force_terminal=True,
                          color_system="truecolor", highlight=False)
        console.print(renderable)
        try:
            if html:
                console.save_html(html, clear=False)
                written.append(html)
            if svg:
                console.save_svg(svg, title=title, clear=False)
                written.append(svg)
        except OSError as e:
            raise VmiError(f"cannot write {e.filename}: {e.strerror}") from None
    return written
