"""``vmi batches`` and ``vmi batch N``: the ROM's lazy-MMU batches, from the trace events."""

from __future__ import annotations

import os

import gdb
from rich.console import Console, Group

from vmigdb import batches
from vmigdb.commands.trace import events_or_fail
from vmigdb.commands.vmi import ArgParser, guarded, write
from vmigdb.errors import VmiError
from vmigdb.views.batches import render_batch, render_histogram, render_timeline


def export(renderable: object, *, svg: str | None, html: str | None, title: str) -> list[str]:
    """Save the view as SVG and/or HTML (rich's recording console); the files written."""
    if not svg and not html:
        return []
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=120, file=sink, force_terminal=True,
                          color_system="truecolor")
        console.print(renderable)
        written = []
        try:
            if svg:
                console.save_svg(svg, title=title, clear=False)
                written.append(svg)
            if html:
                console.save_html(html, clear=False)
                written.append(html)
        except OSError as e:
            raise VmiError(f"cannot write {e.filename}: {e.strerror}") from None
    return written


class VmiBatches(gdb.Command):
    """Show the lazy-MMU batches the ROM flushed: timeline, totals, size histogram.

Usage: vmi batches [--chart] [--svg FILE] [--html FILE]

From the trace (vmi trace start first): each flush of the ROM's PTE queue with its number of
updates, the virtual-address span, why it flushed, how it invalidated the TLB and the exits it
saved (an unbatched ROM exits once per update: a batch of n saves n - 1). --chart adds a
histogram of batch sizes; --svg/--html save the view.
Example: vmi batches --chart --svg batches.svg"""

    def __init__(self) -> None:
        super().__init__("vmi batches", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi batches", add_help=False)
        self.parser.add_argument("--chart", action="store_true", help="histogram of sizes")
        self.parser.add_argument("--svg", help="save the view as SVG")
        self.parser.add_argument("--html", help="save the view as HTML")

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        events = events_or_fail()
        found = batches.group(events)
        if not found:
            raise VmiError("no batch flushes in the trace (in-place ROMs do not batch: their "
                           "state is read-only)")
        stats = batches.statistics(found, events)
        parts = [render_timeline(found, stats)]
        if args.chart:
            parts.append(render_histogram(found))
        view = Group(*parts)
        write(view)
        for path in export(view, svg=args.svg, html=args.html, title="vmigdb: lazy-MMU batches"):
            gdb.write(f"vmi batches: saved {path}\n")


class VmiBatch(gdb.Command):
    """Show one lazy-MMU batch as a tree of its updates and its flush.

Usage: vmi batch N [--svg FILE] [--html FILE]

N is the ROM's batch number (the "batch" column of vmi batches). Each update shows the VA it
maps, the physical page, the entry's address, old -> new value with the flag bits it set (+)
and cleared (-), in the order the ROM applied them; then the flush's TLB action.
Example: vmi batch 3"""

    def __init__(self) -> None:
        super().__init__("vmi batch", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi batch", add_help=False)
        self.parser.add_argument("n", help="batch number")
        self.parser.add_argument("--svg", help="save the view as SVG")
        self.parser.add_argument("--html", help="save the view as HTML")

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        n = self.parser.number(args.n)
        found = batches.group(events_or_fail())
        b = batches.find(found, n)
        if b is None:
            numbers = [x.number for x in found]
            have = f"{numbers[0]}-{numbers[-1]}" if numbers else "none"
            raise VmiError(f"no batch {n} in the trace (batches traced: {have})")
        view = render_batch(b)
        write(view)
        for path in export(view, svg=args.svg, html=args.html, title=f"vmigdb: batch {n}"):
            gdb.write(f"vmi batch: saved {path}\n")
