"""``vmi batches`` and ``vmi batch N``: the ROM's lazy-MMU batches, from the trace events."""

from __future__ import annotations

import os

import gdb
from rich.console import Console, Group
from rich.text import Text

from vmigdb import batches, context
from vmigdb.commands.trace import (
    call_context,
    events_or_fail,
    first_call,
    name,
    source_or_fail,
)
from vmigdb.commands.vmi import ArgParser, complete_options, guarded, write
from vmigdb.errors import VmiError
from vmigdb.views.batches import (
    render_batch,
    render_histogram,
    render_sections,
    render_timeline,
)


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

Usage: vmi batches [--chart] [--sections] [--task NAME|PID] [--svg FILE] [--html FILE]

From the trace (vmi trace start first): each flush of the ROM's PTE queue with its number of
updates, the virtual-address span, why it flushed, how it invalidated the TLB and the exits it
saved (an unbatched ROM exits once per update: a batch of n saves n - 1). On Linux (vmlinux
loaded before `vmi trace start`) each batch also names its cause: the task and the kernel path
that entered lazy MMU mode (the SetLazyMode call's callers, past Linux's vmi_* glue; the stub
sees two frames, and past a helper that only calls the glue, such as arch_enter_lazy_mmu_mode,
its caller; the portable path reads the frame-pointer chain), and the PTE writes the ROM
made at once while the batch was open beside the updates it deferred. A ROM called in place
(Linux's case: its state is read-only) does not batch; then, and with --sections, the view is
the guest's own lazy-MMU sections, from SetLazyMode(MMU) to leaving it: who entered each, the
updates it let the ROM defer (VMI_PAGE_DEFER) and those it needed at once, and what flushed it.
--task keeps the sections of one task. --chart adds a histogram of batch sizes; --svg/--html
save the view.
Example: vmi batches --chart --svg batches.svg"""

    def __init__(self) -> None:
        super().__init__("vmi batches", gdb.COMMAND_DATA)
        self.parser = ArgParser(prog="vmi batches", add_help=False)
        self.parser.add_argument("--chart", action="store_true", help="histogram of sizes")
        self.parser.add_argument("--sections", action="store_true",
                                 help="the guest's lazy-MMU sections")
        self.parser.add_argument("--task", help="only this task's sections (pid or comm)")
        self.parser.add_argument("--svg", help="save the view as SVG")
        self.parser.add_argument("--html", help="save the view as HTML")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, files=("--svg", "--html"))

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        events = events_or_fail()
        found = batches.group(events)
        have = call_context(source_or_fail())
        label = have[1].label if have else None
        if args.sections or args.task or not found:
            sections = context.lazy_sections(events, have[0] if have else None, name,
                                              first_call=first_call)
            if args.task:
                if have is None or not have[1].matching(args.task):
                    raise VmiError(f"no task {args.task!r} in the trace (pid or comm)")
                sections = [sec for sec in sections
                            if have[1].holds(args.task, sec.task, sec.seq)]
            if not sections:
                raise VmiError("no batch flushes and no lazy-MMU sections in the trace")
            note = ("" if found else "the ROM did not batch (a ROM called in place has "
                    "read-only state): the guest's lazy-MMU sections, each what a batching "
                    "ROM would have flushed as one batch")
            view = Group(*([Text(note)] if note else []),
                         render_sections(sections, task_label=label))
            write(view)
            for path in export(view, svg=args.svg, html=args.html,
                               title="vmigdb: lazy-MMU sections"):
                gdb.write(f"vmi batches: saved {path}\n")
            return
        stats = batches.statistics(found, events)
        causes = (context.batch_causes(events, have[0], name, first_call=first_call)
                  if have else None)
        parts = [render_timeline(found, stats, causes=causes, task_label=label)]
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

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, files=("--svg", "--html"))

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
