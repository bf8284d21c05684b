"""``vmigdb report`` over a real trace (the demo guest on vmigdb's machine with the in-stub
tracer): terminal, HTML and SVG agree on the totals, the totals agree with the guest's own
counts, the Perfetto file has the documented structure, and bad files fail with their line.
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

from vmigdb import batches, costs
from vmigdb import trace as tr
from vmigdb.stub.machine import Machine, StopReason
from vmigdb.stub.vmitrace import VmiTracer

VMIGDB = Path(sys.executable).with_name("vmigdb")
ENV = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def real(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(trace file of a whole demo-guest run, the guest's COM1 text)."""
    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="rom=copy")
    out: list[bytes] = []
    m.on_serial = out.append
    t = VmiTracer(m)
    t.start()
    stop = m.run()
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0, stop
    path = tmp_path_factory.mktemp("report") / "run.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        tr.write_trace(f, list(t.events), guest=str(built.guest), target="stub")
    return path, b"".join(out).decode().replace("\r", "")


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


def test_terminal_html_and_svg_show_the_same_totals(real: tuple[Path, str],
                                                    tmp_path: Path) -> None:
    trace, serial = real
    html, svg = tmp_path / "r.html", tmp_path / "r.svg"
    r = vmigdb("report", str(trace), "--html", str(html), "--svg", str(svg))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"vmigdb: wrote {html}", f"vmigdb: wrote {svg}"]
    calls, deferred, flushes = _guest_summary(serial)
    events = tr.read_trace(trace).events
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
    assert _totals("".join(checker.text)) == terminal
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")

    # The views: costs, sites named from the ELF, batches, flags.
    assert re.search(r"│ SetPxE\s+│\s+\d+ │ [\d.]+% │\s+\d+ │\s+\d+ │ mov", r.stdout)
    assert re.search(r"│ 0x[0-9a-f]+ │ pv_set_pxe\+\d+\s+│ -\s+│\s+\d+ │ SetPxE×", r.stdout)
    m = re.search(r"│ (0x[0-9a-f]+) │ pv_write_cr3\+\d+\s+│ (0x[0-9a-f]+) SetCR3 len 5\s+│", r.stdout)
    assert m and m[1] == m[2], r.stdout  # a patched site: the record is the call itself
    assert f"lazy-MMU batches ({flushes})" in r.stdout
    assert f"batches={flushes} deferred updates={deferred}" in r.stdout
    assert re.search(rf"│ DEFER\s+│\s+{deferred} │", r.stdout)


def test_queued_updates_are_what_the_flushes_applied(real: tuple[Path, str]) -> None:
    events = tr.read_trace(real[0]).events
    queued = costs.queued_calls(events)
    assert len(queued) == sum(e.count for e in events if isinstance(e, tr.BatchFlush))


def test_perfetto_file_has_the_documented_structure(real: tuple[Path, str],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = vmigdb("report", str(real[0]), "--perfetto", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    events = tr.read_trace(real[0]).events
    te = doc["traceEvents"]
    names = {(e["name"], e.get("tid")): e["args"] for e in te if e["ph"] == "M"}
    assert names[("thread_name", 1)] == {"name": "CPU"}
    assert names[("thread_name", 2)] == {"name": "lazy-MMU batches"}
    assert names[("thread_name", 3)] == {"name": "lazy mode"}
    assert "process_name" in {n for n, _ in names}
    calls = [e for e in te if e["ph"] == "X" and e["tid"] == 1]
    rom_calls = [e for e in events if isinstance(e, tr.RomCall)]
    assert [(e["ts"], e["name"]) for e in calls] == [(c.seq, c.call) for c in rom_calls]
    flushes = [e for e in events if isinstance(e, tr.BatchFlush)]
    batch_slices = [e for e in te if e["ph"] == "X" and e["tid"] == 2]
    assert [e["name"] for e in batch_slices] == [f"batch {f.batch}" for f in flushes]
    assert all(s["ts"] <= f.seq < s["ts"] + s["dur"] for s, f in zip(batch_slices, flushes))
    instants = [e for e in te if e["ph"] == "i"]
    assert len(instants) == sum(isinstance(e, (tr.PteWrite, tr.LazyMode, tr.RomInit))
                                for e in events)
    for e in te:
        if e["ph"] in ("X", "i"):
            assert e["pid"] == 1 and isinstance(e["ts"], int)
        if e["ph"] == "X":
            assert e["dur"] >= 1
    # Slices on the CPU track nest: a slice that starts inside another ends inside it.
    open_ends: list[int] = []
    for e in calls:
        while open_ends and open_ends[-1] <= e["ts"]:
            open_ends.pop()
        assert not open_ends or e["ts"] + e["dur"] <= open_ends[-1]
        open_ends.append(e["ts"] + e["dur"])
    assert doc["otherData"]["clock"].startswith("event seq")


def test_a_cut_file_is_read_with_one_warning(real: tuple[Path, str], tmp_path: Path) -> None:
    text = real[0].read_text()
    lines = text.splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:501]) + lines[501][:17])
    r = vmigdb("report", str(cut))
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        (f"vmigdb: warning: {cut} is cut off after 500 events (line 502 is incomplete: the "
        "capture was killed or is still running); reading the complete lines")]
    assert _totals(r.stdout)[0].startswith("totals: 500 events, ")


def _sample() -> str:
    buf = io.StringIO()
    w = tr.TraceWriter(buf, producer="test")
    w.extend([tr.RomInit(0, base=0xC0000, batched=False),
              tr.RomCall(1, call="CPUID", entry=0xC0400, site=0x100010, args={"leaf": 0}),
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
    r = vmigdb("report", str(bad))
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"vmigdb: line {line}: ") and message in r.stderr, r.stderr


def test_foreign_binary_and_missing_end(built: Built, tmp_path: Path) -> None:
    r = vmigdb("report", str(built.guest))
    assert r.returncode == 2 and r.stderr == "vmigdb: line 1: not a vmigdb trace (no JSON header)\n"
    no_end = tmp_path / "no_end.jsonl"
    no_end.write_text("".join(_sample().splitlines(keepends=True)[:-1]))
    t = tr.read_trace(no_end)
    assert t.truncated and not t.partial_line and len(t.events) == 4
    r = vmigdb("report", str(no_end))
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        (f"vmigdb: warning: {no_end} is cut off after 4 events (it has no end record: the "
        "capture was killed or is still running); reading the complete lines")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = vmigdb("report", str(empty))
    assert r.returncode == 2 and r.stderr == "vmigdb: line 1: empty file: no trace header\n"
