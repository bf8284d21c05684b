"""``vmigdb report`` over a real trace (the demo guest on vmigdb's machine with the in-stub
tracer writing a version 2 file): terminal, HTML and SVG agree on the totals, the totals agree
with the guest's own counts, the Perfetto file has the documented structure on the virtual
clock, a cut trace needs --partial, and bad files fail with one line naming the file.
(The HTML report in a browser: test_report_html.py.)
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import Built
from gdblayout import slot_layout
from tracefiles import chunk_of, events_of, record

from vmigdb import batches, costs
from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.tracefile import TraceFileWriter

VMIGDB = Path(sys.executable).with_name("vmigdb")
ENV = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def real(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(version 2 trace file of a whole demo-guest run, the guest's COM1 text)."""
    path = tmp_path_factory.mktemp("report") / "run.vmt"
    serial = record(built.guest, built.rom, path)
    return path, serial


@pytest.fixture(scope="module")
def legacy(real: tuple[Path, str]) -> Path:
    """The same run as a version 1 file (JSON Lines, streamed: with an end record)."""
    path = real[0].with_suffix(".jsonl")
    with open(path, "w", encoding="utf-8") as f:
        w = tr.TraceWriter(f, producer="test", target="stub")
        w.extend(events_of(real[0]))
        w.close(status="exited")
    return path


def vmigdb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMIGDB), *args], capture_output=True, text=True, env=ENV,
                          check=False, timeout=120)


def _guest_summary(serial: str) -> tuple[int, int, int]:
    m = re.search(r"^summary: .* calls=(\d+) deferred=(\d+) flushes=(\d+)$", serial,
                  re.MULTILINE)
    assert m, serial
    return int(m[1]), int(m[2]), int(m[3])


def _totals(text: str) -> list[str]:
    return re.findall(r"^(?:totals|exits): .*$", text, re.MULTILINE)


class _Checker(HTMLParser):
    """Collects the text and checks that every non-void element is closed in order."""

    VOID: ClassVar[set[str]] = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_terminal_html_and_svg_show_the_same_totals(built: Built, real: tuple[Path, str],
                                                    tmp_path: Path) -> None:
    trace, serial = real
    html, svg, png = tmp_path / "r.html", tmp_path / "r.svg", tmp_path / "r.png"
    r = vmigdb("report", str(trace), "--html", str(html), "--svg", str(svg), "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"vmigdb: wrote {html}", f"vmigdb: wrote {svg}",
                                     f"vmigdb: wrote {png}"]
    calls, deferred, flushes = _guest_summary(serial)
    events = events_of(trace)
    c = costs.costs(events)
    terminal = _totals(r.stdout)
    assert terminal == [
        (f"totals: {len(events)} events, {calls} ROM calls, {flushes} batches, "
        f"{deferred} queued updates"),
        f"exits: {calls - deferred + flushes} (unbatched {calls}, saved {deferred - flushes})",
    ]
    assert c.saved == batches.statistics(batches.group(events)).exits_saved

    checker = _Checker()
    checker.feed(html.read_text(encoding="utf-8"))
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert _totals("".join(checker.text)) == terminal * 2  # the header, the terminal report
    # The SVG is the charts drawn with text as paths: no font, stylesheet or image to fetch.
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text(encoding="utf-8")
    assert not re.search(r"@import|@font-face|url\((?!#)|<image|<text|font-family", text)
    hrefs = re.findall(r'href="([^"#][^"]*)"', text)
    assert hrefs == [], hrefs
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The views: costs, sites named from the ELF, batches, flags.
    assert re.search(r"│ SetPxE\s+│\s+\d+ │ [\d.]+% │\s+\d+ │\s+\d+ │ mov", r.stdout)
    assert re.search(r"│ 0x[0-9a-f]+ │ pv_set_pxe\+\d+\s+│ -\s+│\s+\d+ │ SetPxE×", r.stdout)
    m = re.search(r"│ (0x[0-9a-f]+) │ pv_write_cr3\+\d+\s+│ (0x[0-9a-f]+) type (\d+) len (\d+)\s+│ "
                  r"\s*\d+ │ SetCR3×", r.stdout)
    assert m, r.stdout
    # The calling instruction is the site itself (Linux's PVOP_CALL, "call *op", which the
    # recorder places at return address - 5), and the record's slot is write_cr3's pv-op.
    site, record, slot, length = int(m[1], 16), int(m[2], 16), int(m[3]), int(m[4])
    assert record <= site < record + length
    assert slot_layout(built.guest)[slot] == "pv_mmu_ops.write_cr3"
    assert f"lazy-MMU batches ({flushes})" in r.stdout
    assert f"batches={flushes} deferred updates={deferred}" in r.stdout
    assert re.search(rf"│ DEFER\s+│\s+{deferred} │", r.stdout)


def test_queued_updates_are_what_the_flushes_applied(real: tuple[Path, str]) -> None:
    events = events_of(real[0])
    queued = costs.queued_calls(events)
    assert len(queued) == sum(e.count for e in events if isinstance(e, tr.BatchFlush))


def test_perfetto_file_has_the_documented_structure(real: tuple[Path, str],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = vmigdb("report", str(real[0]), "--perfetto", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    chunk = chunk_of(real[0])
    events = list(ev.to_events(chunk))
    clock = dict(zip(chunk["seq"].tolist(), chunk["clock"].tolist(), strict=True))
    te = doc["traceEvents"]
    names = {(e["name"], e.get("tid")): e["args"] for e in te if e["ph"] == "M"}
    assert names[("thread_name", 1)] == {"name": "ROM calls"}
    assert names[("thread_name", 2)] == {"name": "lazy-MMU batches"}
    assert names[("thread_name", 3)] == {"name": "lazy mode"}
    assert "process_name" in {n for n, _ in names}
    assert doc["displayTimeUnit"] == "ns" and doc["otherData"]["clock"].startswith("virtual")

    def ns(e: dict) -> int:  # ts is in µs with three decimals: exactly the clock's ns
        return round(float(e["ts"]) * 1000)

    calls = sorted((e for e in te if e["ph"] == "X" and e["tid"] == 1), key=lambda e: ns(e))
    rom_calls = [e for e in events if isinstance(e, tr.RomCall)]
    assert sorted(e["args"]["seq"] for e in calls) == [c.seq for c in rom_calls]
    # Every slice starts at its call's virtual time, and the times grow with the seqs.
    assert all(ns(e) == clock[e["args"]["seq"]] for e in calls)
    by_seq = sorted(calls, key=lambda e: e["args"]["seq"])
    times = [ns(e) for e in by_seq]
    assert times == sorted(times) and times[-1] - times[0] > 1_000_000
    # A call with a return lasts until it (virtual ns); one without is a zero-length slice.
    returns = {e.call_seq: e for e in events if isinstance(e, tr.RomReturn)}
    for e in by_seq:
        ret = returns.get(e["args"]["seq"])
        want = clock[ret.seq] - clock[ret.call_seq] if ret is not None else 0
        assert round(float(e["dur"]) * 1000) == want, e
    flushes = [e for e in events if isinstance(e, tr.BatchFlush)]
    batch_slices = [e for e in te if e["ph"] == "X" and e["tid"] == 2]
    assert [e["name"] for e in batch_slices] == [f"batch {f.batch}" for f in flushes]
    assert all(ns(s) <= clock[f.seq] <= ns(s) + round(float(s["dur"]) * 1000)
               for s, f in zip(batch_slices, flushes, strict=True))
    instants = [e for e in te if e["ph"] == "i"]
    assert len(instants) == sum(isinstance(e, (tr.PteWrite, tr.LazyMode, tr.RomInit))
                                for e in events)
    for e in te:
        if e["ph"] in ("X", "i"):
            assert e["pid"] == 1 and isinstance(e["ts"], (int, float))
        if e["ph"] == "X":
            assert float(e["dur"]) >= 0
    # Slices on the ROM calls track nest: a slice that starts inside another ends inside it.
    open_ends: list[float] = []
    for e in calls:
        start, end = ns(e), ns(e) + round(float(e["dur"]) * 1000)
        while open_ends and open_ends[-1] <= start:
            open_ends.pop()
        assert not open_ends or end <= open_ends[-1]
        open_ends.append(end)


def test_a_cut_file_needs_partial(real: tuple[Path, str], legacy: Path, tmp_path: Path) -> None:
    """A killed capture: one line and exit 2, or with --partial its complete part and one
    warning line. Version 2 is cut at a batch boundary and inside a batch; version 1 inside
    a line."""
    first = chunk_of(real[0]).select(slice(0, 700))
    whole = tmp_path / "batches.vmt"
    w = TraceFileWriter(whole, producer="test")
    ends = []  # the file's size after each batch: the batch boundaries
    for at in range(0, 700, 100):  # a batch per 100 events, as a capture flushes them
        w.add(first.select(slice(at, at + 100)))
        w.flush()
        ends.append(whole.stat().st_size)
    w.close()
    body = whole.read_bytes()
    cuts = {"boundary": body[:ends[-1]],  # before the end record: 700 events whole
            "inside": body[:(ends[2] + ends[3]) // 2]}  # inside the fourth batch
    text = legacy.read_text().splitlines(keepends=True)
    v1 = tmp_path / "cut.jsonl"
    v1.write_text("".join(text[:501]) + text[501][:17])
    for name, blob in cuts.items():
        (tmp_path / f"{name}.vmt").write_bytes(blob)
    for path in (tmp_path / "boundary.vmt", tmp_path / "inside.vmt", v1):
        r = vmigdb("report", str(path))
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"vmigdb: {path} is cut off after ") and "--partial" in r.stderr
        assert "Traceback" not in r.stderr
        r = vmigdb("report", str(path), "--partial")
        assert r.returncode == 0, r.stderr
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(
            f"vmigdb: warning: {path} is cut off after "), r.stderr
        n = int(re.search(r"cut off after (\d+) events", r.stderr)[1])
        assert _totals(r.stdout)[0].startswith(f"totals: {n} events, ")
        assert n == {"boundary.vmt": 700, "inside.vmt": 300, "cut.jsonl": 500}[path.name]


def _sample() -> str:
    buf = io.StringIO()
    w = tr.TraceWriter(buf, producer="test")
    w.extend([tr.RomInit(0, base=0xC0000, batched=False),
              tr.RomCall(1, call="CPUID", entry=0xC0400, site=0x100010, args={"leaf": 0, "subleaf": 0}),
              tr.RomReturn(2, call_seq=1, call="CPUID",
                           results={"eax": 1, "ebx": 2, "ecx": 3, "edx": 4}),
              tr.LazyMode(3, old=0, new=1)])
    w.close(status="exited")
    return buf.getvalue()


@pytest.mark.parametrize(("mangle", "line", "message"), [
    (lambda s: '{"traceEvents": []}\n', 1, "not a vmigdb trace (header lacks format"),
    (lambda s: s.replace('"version": 1', '"version": 2'), 1, "version 2 is not supported"),
    (lambda s: s.replace('{"seq":2', '{"seq":2 garbage', 1), 4, "not a JSON object"),
    (lambda s: s.replace('"leaf":0', '"leaf":"0"'), 3, "field 'args' has a wrong type"),
    (lambda s: s.replace('{"seq":3', '{"seq":1', 1), 5, "seq 1 does not follow seq 2"),
    (lambda s: s.replace('"events": 4', '"events": 5'), 6, "the end record counts 5 events"),
    (lambda s: s + '{"seq":9,"old":1,"new":0,"type":"lazy"}\n', 7, "data after the end record"),
])
def test_bad_files_name_their_line(tmp_path: Path, mangle, line: int, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(mangle(_sample()))
    for command in (("report", str(bad)), ("diff", str(bad), str(bad)),
                    ("export", str(bad), "--parquet", str(tmp_path / "x.parquet"))):
        r = vmigdb(*command)
        assert r.returncode == 2
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith(f"vmigdb: {bad}: line {line}: ") and message in r.stderr, (
            r.stderr)
    assert not (tmp_path / "x.parquet").exists()


def test_foreign_binary_and_missing_end(built: Built, tmp_path: Path) -> None:
    r = vmigdb("report", str(built.guest))
    assert r.returncode == 2 and r.stderr == (
        f"vmigdb: {built.guest}: not a vmigdb trace (neither JSON Lines nor an Arrow stream)\n")
    no_end = tmp_path / "no_end.jsonl"
    no_end.write_text("".join(_sample().splitlines(keepends=True)[:-1]))
    t = tr.read_trace(no_end)
    assert t.truncated and not t.partial_line and len(t.events) == 4
    r = vmigdb("report", str(no_end))
    assert r.returncode == 2 and r.stderr == (
        f"vmigdb: {no_end} is cut off after 4 events (it has no end record: the capture was "
        "killed or is still running); --partial uses them\n")
    r = vmigdb("report", str(no_end), "--partial")
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        (f"vmigdb: warning: {no_end} is cut off after 4 events (the capture was killed or is "
         "still running); using its complete part")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = vmigdb("report", str(empty))
    assert r.returncode == 2 and r.stderr == (
        f"vmigdb: {empty}: not a vmigdb trace (neither JSON Lines nor an Arrow stream)\n")


def test_progress_appears_after_its_delay_and_only_on_a_terminal() -> None:
    from rich.console import Console

    from vmigdb.progress import Progress, wanted

    out = io.StringIO()
    bar = Progress("report run.vmt", 1000, console=Console(file=out, force_terminal=True,
                                                           width=100), delay=0)
    bar.update(500)
    assert bar.shown
    bar.close()
    assert "report run.vmt" in out.getvalue() and "50%" in out.getvalue()
    late = io.StringIO()
    slow = Progress("report run.vmt", 1000, console=Console(file=late, force_terminal=True),
                    delay=3600)
    slow.update(999)
    slow.close()
    assert not slow.shown and late.getvalue() == ""
    assert not wanted(io.StringIO())  # a pipe or a file: no bar at all
