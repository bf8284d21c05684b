"""``vmigdb report --html`` in a real browser (Debian's headless ``chromium``): the file loads
with no console message, every chart drew (the DOM after the scripts ran, and a screenshot
that is not blank), and the page asks the network for nothing, neither in its markup nor when
it runs. Two pages: a demo-guest run whose events carry guest tasks (every chart, the tasks'
one included), and an in-place ROM's run (no batch flushes: that chart says so)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, run
from conftest import Built, require
from matplotlib.image import imread
from tracefiles import chunk_of, record

from vmigdb.tracefile import TraceFileWriter

VMIGDB = Path(sys.executable).with_name("vmigdb")
ENV = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}



@pytest.fixture(autouse=True)
def _chromium_here() -> None:
    require(CHROMIUM, "chromium is not installed (CI installs it: .ci/run)")


class _Attributes(HTMLParser):
    """Every src/href attribute of the markup, and the charts' divs."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.charts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.links.append(value)
            if name == "id" and value and value.startswith("chart-"):
                self.charts.append(value)


TASKS = {0xC1602E40: (0, "swapper"), 0xC781C000: (1, "init"), 0xC791DEC0: (661, "sh")}
CHARTS = ["chart-calls", "chart-batches", "chart-callers", "chart-tasks"]


@pytest.fixture(scope="module", params=["tasks", "in-place"])
def page(request: pytest.FixtureRequest, built: Built,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """(the HTML report, whether its trace names tasks)."""
    d = tmp_path_factory.mktemp("html")
    trace = d / "run.vmt"
    if request.param == "tasks":
        record(built.guest, built.rom, d / "plain.vmt", cmdline="stress=2")
        c = chunk_of(d / "plain.vmt")
        pointers = np.array(sorted(TASKS), np.uint32)
        c.cols["task"] = pointers[(np.arange(len(c)) // 1000) % len(pointers)]
        w = TraceFileWriter(trace, producer="test", symbols=str(built.guest))
        w.add(c, tasks=TASKS)
        w.close(status="exited")
    else:
        record(built.guest, built.rom, trace, cmdline="rom=inplace")
    html = d / "report.html"
    r = subprocess.run([str(VMIGDB), "report", str(trace), "--html", str(html)],
                       capture_output=True, text=True, env=ENV, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    return html, request.param == "tasks"


def test_the_file_names_no_resource_outside_itself(page: tuple[Path, bool]) -> None:
    html, tasks = page
    text = html.read_text(encoding="utf-8")
    p = _Attributes()
    p.feed(text)
    assert p.links == [], p.links
    assert p.charts == (CHARTS if tasks else CHARTS[:3])
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text)
    assert "Plotly.newPlot" in text and len(text) > 3_000_000  # plotly.js is inline


def test_every_chart_draws_in_chromium_without_errors_or_requests(page: tuple[Path, bool],
                                                                  tmp_path: Path) -> None:
    html, tasks = page
    result = run(html, tmp_path)
    assert result.console == [], result.console
    assert result.urls == set(), result.urls
    dom = result.dom
    ids = re.findall(r'<div id="(chart-\w+)" class="([^"]*)"', dom)
    assert [i for i, _ in ids] == (CHARTS if tasks else CHARTS[:3])
    assert all("js-plotly-plot" in cls for _, cls in ids), ids  # plotly took each div
    # Each chart's div holds its drawn SVG, with traces: areas, markers, bars.
    parts = re.split(r'<div id="chart-', dom)[1:]
    drawn = {}
    for part in parts:
        name = part.split('"', 1)[0]
        body = part.split('<section class="chart"', 1)[0]
        drawn[name] = (body.count('class="main-svg"'), body.count('class="trace'),
                       len(re.findall(r'class="point"', body)))
    assert all(n >= 1 for n, _, _ in drawn.values()), drawn
    assert drawn["calls"][1] >= 3, drawn  # stacked areas
    if tasks:
        assert drawn["batches"][2] > 10, drawn  # one marker per batch
        assert drawn["tasks"][2] >= len(TASKS), drawn  # bars
    else:  # no flushes: the chart is drawn with a note saying so
        assert drawn["batches"][1] == 0 and "no batch flushes in this trace" in parts[1]
    assert drawn["callers"][2] >= 5, drawn  # bars
    # The screenshot is a picture, not a blank page: many colours, the charts' among them.
    pixels = imread(result.screenshot)[..., :3]
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200, len(colours)
    blue = np.array([0x1F, 0x77, 0xB4])  # the first call's colour (charts.PALETTE[0])
    near = np.abs(pixels.reshape(-1, 3) * 255 - blue).max(axis=1) < 40
    assert near.sum() > 1000
