"""The bodies of ``vmigdb report``, ``diff`` and ``export``: open the traces, stream their chunks
through the analyses with a progress bar, write the outputs.

This is an edge (it opens files and prints on stderr); ``cli.py`` parses the arguments and
turns errors into one line and exit code 2, and the analyses themselves (``report``,
``tracediff``, ``export``, ``perfetto``, ``charts``) are pure. One pass over a trace feeds
everything asked for at once: ``report --perfetto`` reads the trace once.
"""

from __future__ import annotations

import contextlib
import gzip
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from vmigdb import events as ev
from vmigdb import tracein
from vmigdb.outfiles import probe, writing
from vmigdb.symbols import Symbols, SymbolsError
from vmigdb.tracefile import TraceFile, open_trace

#: Width of the terminal report as the HTML file shows it.
EXPORT_WIDTH = 140


def _warn(line: str) -> None:
    print(f"vmigdb: {line}", file=sys.stderr, flush=True)


def _wrote(path: str, what: str = "") -> None:
    print(f"vmigdb: wrote {path}{what}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _text_out(path: str) -> Iterator[IO[str]]:
    """A text output (gzip-compressed when the name ends in .gz), removed if the work fails."""
    if not path.endswith(".gz"):
        with writing(path, "w", encoding="utf-8") as text:
            yield text
        return
    with writing(path, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8",
                                               compresslevel=6) as text:
        yield text


def _chunks(tf: TraceFile, partial: bool, progress: Any) -> Iterator[ev.Chunk]:
    return tracein.chunks(tf, partial=partial, progress=progress, warn=_warn)


def _symbols(header: dict[str, Any], trace: str
             ) -> tuple[Symbols | None, str | None, str | None]:
    """(symbols of the file the trace names, that file, a note when it gave none). Unlike
    ``--elf``, that file may be missing or unreadable: the note says why."""
    path, note = tracein.symbols_path(header, trace)
    if path is None:
        return None, None, note
    try:
        return Symbols.load(path), path, None
    except SymbolsError as e:
        return None, None, f"no symbols: {e} (give --elf)"


# --- report ---------------------------------------------------------------------------------------


@dataclass
class ReportOptions:
    trace: str
    elf: str | None = None
    sites: int = 20
    batches: int = 100
    html: str | None = None
    svg: str | None = None
    png: str | None = None
    perfetto: str | None = None
    partial: bool = False


def report(o: ReportOptions, console: Console) -> None:
    from vmigdb import charts, perfetto, report
    from vmigdb.views.console import render_text

    outputs = [p for p in (o.html, o.svg, o.png, o.perfetto) if p]
    for path in outputs:
        probe(path)
    # Named on the command line, the ELF must be readable, and that is known before the work.
    elf = Symbols.load(o.elf) if o.elf else None
    with open_trace(o.trace) as tf:
        tracein.check_header(tf)
        builder = report.ReportBuilder(listed_batches=o.batches)
        with contextlib.ExitStack() as stack:
            writer = None
            if o.perfetto:
                out = stack.enter_context(_text_out(o.perfetto))
                writer = perfetto.ChromeTraceWriter(
                    out, title=f"vmigdb: {Path(o.trace).name}", tasks=tf.tasks,
                    format_version=tf.version)
            progress = stack.enter_context(tracein.tracked([tf], f"report {Path(o.trace).name}"))
            for chunk in _chunks(tf, o.partial, progress):
                queued = builder.add(chunk)
                if writer is not None:
                    writer.add(chunk, queued)
            if writer is not None:
                writer.close(complete=tf.complete, producer="vmigdb report")
        symbols, source, note = ((elf, o.elf, None) if elf is not None
                                 else _symbols(tf.header, o.trace))
        r = builder.finish(name=o.trace, header=tf.header, version=tf.version, end=tf.end,
                           tasks=dict(tf.tasks), symbols=symbols, symbols_from=source)
    if note:
        r.notes.append(note)
    view = report.render_report(r, top_sites=o.sites)
    console.print(view)
    written = [o.perfetto] if o.perfetto else []
    if o.html:
        document = charts.html_document(r, render_text(view, width=EXPORT_WIDTH))
        with writing(o.html, "w", encoding="utf-8") as f:
            f.write(document)
        written.append(o.html)
    for path, fmt in ((o.svg, "svg"), (o.png, "png")):
        if path:
            with writing(path, "wb") as f:
                charts.write_image(r, f, fmt)
            written.append(path)
    for path in written:
        _wrote(path)


# --- diff -----------------------------------------------------------------------------------------


@dataclass
class DiffOptions:
    a: str
    b: str
    context: int = 3
    strict: bool = False
    relative: bool = False
    pages: bool = False
    regions: int = 20
    partial: bool = False


def diff(o: DiffOptions, console: Console) -> bool:
    """Print the comparison; True when the traces are equivalent."""
    from vmigdb import tracediff
    from vmigdb.views.diff import render_diff

    with open_trace(o.a) as ta, open_trace(o.b) as tb, \
            tracein.tracked([ta, tb], f"diff {Path(o.a).name} {Path(o.b).name}") as progress:
        tracein.check_header(ta)
        tracein.check_header(tb)
        d = tracediff.diff_chunks(
            tracein.chunks(ta, partial=o.partial, warn=_warn),
            tracein.chunks(tb, partial=o.partial, warn=_warn), context=o.context,
            strict=o.strict, relative=o.relative, pages=o.pages, regions=o.regions,
            progress=lambda: tracein.update_many(progress, [ta, tb]))
    console.print(render_diff(d, o.a, o.b))
    return d.equivalent


# --- export ---------------------------------------------------------------------------------------


def export(trace: str, *, parquet: str | None = None, jsonl: str | None = None,
           perfetto: str | None = None, partial: bool = False) -> None:
    from vmigdb import export as ex
    from vmigdb import perfetto as pf
    from vmigdb.costs import CostTally

    out_path = parquet or jsonl or perfetto
    assert out_path is not None
    probe(out_path)
    with open_trace(trace) as tf, \
            tracein.tracked([tf], f"export {Path(trace).name}") as progress:
        tracein.check_header(tf)
        chunks = _chunks(tf, partial, progress)
        if parquet:
            with writing(parquet, "wb") as f:
                w = ex.ParquetExport(f, tracein.plain(tf.header))
                try:
                    for chunk in chunks:
                        w.add(chunk, tf.tasks)
                except BaseException:
                    w.abort()
                    raise
                w.close()
            events = w.events
        elif jsonl:
            with writing(jsonl, "w", encoding="utf-8") as f:
                j = ex.JsonlExport(f, tracein.plain(tf.header))
                for chunk in chunks:
                    j.add(chunk)
                j.close(tf.tasks, tracein.plain(tf.end))
            events = j.events
        else:
            assert perfetto is not None
            with _text_out(perfetto) as f:
                c = pf.ChromeTraceWriter(f, title=f"vmigdb: {Path(trace).name}", tasks=tf.tasks,
                                         format_version=tf.version)
                tally = CostTally()
                for chunk in chunks:
                    c.add(chunk, tally.add(chunk))
                c.close(complete=tf.complete)
            events = c.events
    _wrote(out_path, f" ({events} events)")
