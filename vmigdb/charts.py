"""The report's charts: plotly for one self-contained interactive HTML file, matplotlib for SVG
and PNG (papers). Both draw the same series, computed once from a ``vmigdb.report.Report``:

* ROM calls over virtual time, by call (the most frequent calls, the rest as "other");
* lazy-MMU batch sizes over virtual time, coloured by what triggered the flush;
* the top calling sites, named ``function+offset`` from the ELF symbols, by call;
* the tasks that made the calls (Linux: pid and comm), when the trace names them.

No network: plotly.js is inlined in the HTML (``include_plotlyjs=True``), and matplotlib draws
text as paths with its bundled font, so the SVG references no font at all. A trace without a
virtual clock (version 1 files) is drawn over its event numbers instead.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from vmigdb import abi
from vmigdb.batches import enum_name
from vmigdb.report import Report

#: One colour per call or trigger, the same in both backends (matplotlib's tab20, reordered so
#: that neighbours differ).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
OTHER = "other"
OTHER_COLOUR = "#b0b0b0"
TOP_CALLS = 9
TOP_BARS = 20


@dataclass(frozen=True)
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str


@dataclass(frozen=True)
class Chart:
    """One chart, backend-neutral: ``kind`` is "area" (stacked), "scatter" or "barh"
    (stacked horizontal bars over ``labels``)."""

    id: str
    title: str
    kind: str
    x_title: str
    y_title: str
    series: tuple[Series, ...]
    labels: tuple[str, ...] = ()
    note: str = ""


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {n: (OTHER_COLOUR if n == OTHER else PALETTE[i % len(PALETTE)])
            for i, n in enumerate(names)}


def _call_order(r: Report) -> list[str]:
    """Calls by count, most first (the legend order and the colour of each call)."""
    return [row.call for row in r.costs.rows]


def calls_over_time(r: Report) -> Chart:
    bins = r.calls_by_clock if r.has_clock else r.calls_by_seq
    used = bins.used
    counts = bins.counts[:used]
    starts = bins.starts()
    if r.has_clock:
        x = (starts / 1e6).tolist()  # ms
        per = bins.width / 1e6
        x_title, y_title = "virtual time (ms)", "ROM calls per ms"
    else:
        x = starts.tolist()
        per = bins.width / 1000
        x_title, y_title = "event seq", "ROM calls per 1000 events"
    order = _call_order(r)
    top = order[:TOP_CALLS]
    numbers = {name: int(abi.VmiCall[name]) for name in order}
    colours = _colours(top + [OTHER])
    series = []
    for name in top:
        series.append(Series(name, x, (counts[:, numbers[name]] / per).tolist(), colours[name]))
    rest = [numbers[n] for n in order[TOP_CALLS:]]
    if rest:
        series.append(Series(OTHER, x, (counts[:, rest].sum(axis=1) / per).tolist(),
                             OTHER_COLOUR))
    note = (f"{r.costs.calls} calls in {used} bins of "
            + (f"{bins.width / 1e6:g} ms" if r.has_clock else f"{bins.width} events"))
    return Chart("calls", "ROM calls over virtual time, by call" if r.has_clock
                 else "ROM calls over the trace (no virtual clock), by call", "area",
                 x_title, y_title, tuple(series), note=note)


def batch_sizes(r: Report) -> Chart:
    tally = r.batches
    points = tally.points
    x_title = "virtual time (ms)" if r.has_clock else "event seq"
    x_all = points["clock"] / 1e6 if r.has_clock else points["seq"].astype(np.float64)
    colours = _colours([t.name for t in abi.FlushTrigger])
    series = []
    for value in np.unique(points["trigger"]).tolist():
        name = enum_name(abi.FlushTrigger, value)
        sel = points["trigger"] == value
        series.append(Series(name, x_all[sel].tolist(), points["count"][sel].tolist(),
                             colours.get(name, OTHER_COLOUR)))
    if not tally.batches:
        note = "no batch flushes in this trace (an in-place ROM does not batch)"
    elif tally.stride > 1:
        note = f"{tally.batches} batches; every {tally.stride}th is drawn"
    else:
        note = f"{tally.batches} batches"
    title = ("Lazy-MMU batch sizes over virtual time, by trigger" if r.has_clock
             else "Lazy-MMU batch sizes over the trace (no virtual clock), by trigger")
    return Chart("batches", title, "scatter",
                 x_title, "updates in the batch", tuple(series), note=note)


def _stacked(rows: Sequence[tuple[str, dict[str, int]]], r: Report) -> tuple[
        tuple[str, ...], tuple[Series, ...]]:
    """Stacked bars: one label per row, one series per call (top calls, then other)."""
    order = [c for c in _call_order(r) if any(c in calls for _, calls in rows)]
    top = order[:TOP_CALLS]
    colours = _colours(_call_order(r))  # a call's colour is the same in every chart
    labels = tuple(label for label, _ in rows)
    series = []
    for name in top:
        series.append(Series(name, [calls.get(name, 0) for _, calls in rows], list(labels),
                             colours[name]))
    if len(order) > TOP_CALLS:
        rest = set(order[TOP_CALLS:])
        series.append(Series(OTHER, [sum(v for k, v in calls.items() if k in rest)
                                     for _, calls in rows], list(labels), OTHER_COLOUR))
    return labels, tuple(series)


def top_callers(r: Report) -> Chart:
    shown = r.sites[:TOP_BARS]
    rows = [(f"{s.symbol} ({s.addr:#x})" if s.symbol else f"{s.addr:#x}", s.calls)
            for s in shown]
    labels, series = _stacked(rows, r)
    where = (f"names from {r.symbols_from}" if r.symbols_from
             else "no ELF symbols (give --elf)")
    return Chart("callers", f"Top calling sites ({len(shown)} of {len(r.sites)})", "barh",
                 "ROM calls", "", series, labels, note=where)


def top_tasks(r: Report) -> Chart | None:
    if not r.tasks:
        return None
    shown = r.tasks[:TOP_BARS]
    labels, series = _stacked([(t.label, t.calls) for t in shown], r)
    return Chart("tasks", f"Tasks by ROM calls ({len(shown)} of {len(r.tasks)})", "barh",
                 "ROM calls", "", series, labels)


def charts(r: Report) -> list[Chart]:
    out = [calls_over_time(r), batch_sizes(r), top_callers(r)]
    tasks = top_tasks(r)
    if tasks is not None:
        out.append(tasks)
    return out


# --- plotly: one HTML file ----------------------------------------------------------------------


def _plotly_figure(c: Chart) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for s in c.series:
        if c.kind == "area":
            fig.add_trace(go.Scatter(x=list(s.x), y=list(s.y), name=s.name, mode="lines",
                                     stackgroup="calls", line={"width": 0.5, "color": s.colour}))
        elif c.kind == "scatter":
            fig.add_trace(go.Scatter(x=list(s.x), y=list(s.y), name=s.name, mode="markers",
                                     marker={"size": 6, "color": s.colour, "opacity": 0.75}))
        else:  # barh: x holds the values, y the labels
            fig.add_trace(go.Bar(x=list(s.x), y=list(s.y), name=s.name, orientation="h",
                                 marker={"color": s.colour}))
    layout: dict[str, Any] = {
        "xaxis": {"title": {"text": c.x_title}},
        "yaxis": {"title": {"text": c.y_title}}, "legend": {"traceorder": "normal"},
        "margin": {"l": 60, "r": 20, "t": 30, "b": 60}, "template": "plotly_white",
        "height": 480,
    }
    if c.kind == "barh":
        layout["barmode"] = "stack"
        layout["yaxis"] = {"autorange": "reversed", "automargin": True}
        layout["height"] = max(360, 60 + 24 * len(c.labels))
    if not c.series or not any(len(s.x) for s in c.series):
        layout["annotations"] = [{"text": html.escape(c.note or "nothing to draw"),
                                  "showarrow": False, "xref": "paper", "yref": "paper",
                                  "x": 0.5, "y": 0.5}]
    fig.update_layout(**layout)
    return fig


_STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em 2em;
color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}.meta{color:#555}
pre{font-size:12px;line-height:1.25;overflow-x:auto}.note{color:#666;font-size:.9em}
section.chart{border-top:1px solid #ddd}"""


def html_document(r: Report, text_report: str) -> str:
    """The report as one HTML document: header, totals, the charts, the terminal report."""
    import plotly.io as pio

    config = {"displaylogo": False, "responsive": True}
    sections = []
    for i, c in enumerate(charts(r)):
        div = pio.to_html(_plotly_figure(c), full_html=False, include_plotlyjs=(i == 0),
                          div_id=f"chart-{c.id}", config=config, default_height="auto")
        note = f'<p class="note">{html.escape(c.note)}</p>' if c.note else ""
        sections.append(f'<section class="chart" id="section-{c.id}">'
                        f"<h2>{html.escape(c.title)}</h2>{div}{note}</section>")
    head = [html.escape(r.title)] + ([html.escape(r.ended)] if r.ended else [])
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f"<title>vmigdb report: {html.escape(r.name)}</title><style>{_STYLE}</style>"
           f"</head><body><h1>vmigdb report</h1>"
           f'<p class="meta">{"<br>".join(head)}</p>\n'
           f'<pre class="totals">{html.escape(chr(10).join(r.totals))}</pre>\n'
           + "".join(sections)
           + '<section class="text"><h2>The terminal report</h2>'
           f"<pre>{html.escape(text_report)}</pre></section></body></html>\n")
    return doc


# --- matplotlib: SVG and PNG --------------------------------------------------------------------


def write_image(r: Report, out: IO[bytes], fmt: str) -> None:
    """The same charts, stacked in one figure, as ``fmt`` (svg or png)."""
    import matplotlib
    from matplotlib.figure import Figure

    cs = charts(r)
    heights = [4.0 if c.kind != "barh" else max(3.0, 0.8 + 0.28 * len(c.labels)) for c in cs]
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "vmigdb",
                                "font.family": "DejaVu Sans", "font.size": 9}):
        fig = Figure(figsize=(11, sum(heights) + 1.0), layout="constrained")
        axes = fig.subplots(len(cs), 1, height_ratios=heights, squeeze=False)[:, 0]
        fig.suptitle(r.title + "\n" + "   ".join(r.totals), fontsize=9)
        for ax, c in zip(axes, cs, strict=True):
            _draw(ax, c)
        metadata = {"Date": None} if fmt == "svg" else {}
        fig.savefig(out, format=fmt, dpi=110, metadata=metadata)


def _draw(ax: Any, c: Chart) -> None:
    ax.set_title(c.title, fontsize=10, loc="left")
    ax.set_xlabel(c.x_title)
    if c.y_title:
        ax.set_ylabel(c.y_title)
    drawn = [s for s in c.series if len(s.x)]
    if not drawn:
        ax.text(0.5, 0.5, c.note or "nothing to draw", ha="center", va="center",
                transform=ax.transAxes, color="#666")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if c.kind == "area":
        ax.stackplot(drawn[0].x, *[s.y for s in drawn], labels=[s.name for s in drawn],
                     colors=[s.colour for s in drawn], linewidth=0)
    elif c.kind == "scatter":
        for s in drawn:
            ax.scatter(s.x, s.y, s=10, color=s.colour, label=s.name, alpha=0.75,
                       edgecolors="none")
    else:
        y = np.arange(len(c.labels))
        left = np.zeros(len(c.labels))
        for s in drawn:
            values = np.asarray(s.x, dtype=np.float64)
            ax.barh(y, values, left=left, color=s.colour, label=s.name)
            left += values
        ax.set_yticks(y, labels=list(c.labels), fontsize=7)
        ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if c.note:
        ax.annotate(c.note, (0, 0), xycoords="axes fraction", xytext=(0, -28),
                    textcoords="offset points", fontsize=7, color="#666", va="top")
