"""A trace file never makes report, diff or export crash or hang: the corrupt and foreign files
issue 11 lists, each through the three commands (one line, exit 2), and fuzzing of both
versions (bit flips, truncation at every batch boundary and anywhere, random bytes, an Arrow
stream of another schema) through the same code in-process (only VmiError may come out)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import Built
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracefiles import chunk_of, record

from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb import tracediff, tracein
from vmigdb.errors import VmiError
from vmigdb.export import JsonlExport, ParquetExport
from vmigdb.perfetto import ChromeTraceWriter
from vmigdb.report import ReportBuilder, render_report
from vmigdb.tracefile import META_KEY, TraceFileWriter, open_trace, schema, to_batch
from vmigdb.views.console import render_text
from vmigdb.views.diff import render_diff

VMIGDB = Path(sys.executable).with_name("vmigdb")
ENV = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
HEADER = {"format": "vmigdb-trace", "version": 1}
EVENT = '{"seq":0,"base":786432,"batched":true,"type":"rom_init"}'
FLUSH = ('{"seq":1,"batch":1,"count":1,"trigger":"SetLazyMode","tlb_action":"INVLPG",'
         '"entries":%s,"type":"flush"}')


def _v1(header: dict, *lines: str) -> str:
    return "\n".join([json.dumps(header), *lines]) + "\n"


def _arrow(path: Path, header_json: bytes, batches: list = ()) -> None:
    """A version 2 file with this header metadata, written with pyarrow itself."""
    sch = schema().with_metadata({META_KEY: header_json})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, sch) as w:
        for b in batches:
            w.write_batch(b)


def _bad_flush_batch() -> pa.RecordBatch:
    """One flush event whose list of entries has two where its count says one."""
    chunk = ev.from_events([tr.BatchFlush(0, batch=1, count=2, trigger="SetLazyMode",
                                          tlb_action="INVLPG",
                                          entries=[[1, 2, 3, 4], [5, 6, 7, 8]])])
    good = to_batch(chunk)
    cols = [good.column(i) for i in range(good.num_columns)]
    cols[list(good.schema.names).index("a1")] = pa.array([1], pa.uint32())
    return pa.RecordBatch.from_arrays(cols, schema=good.schema)


def _cases(tmp: Path) -> dict[str, Path]:
    """Every corrupt or foreign file, by name."""
    fifo = tmp / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    v1 = {
        "v1-5000-digits": _v1(HEADER, '{"seq":' + "9" * 5000 + ',"type":"lazy","old":0,"new":1}'),
        "v1-deep-event": _v1(HEADER, '{"seq":0,"type":"lazy","old":' + "[" * 100_000
                             + "]" * 100_000 + "}"),
        "v1-deep-header": '{"format":"vmigdb-trace","version":1,"x":' + "[" * 100_000
                          + "]" * 100_000 + "}\n" + EVENT + "\n",
        "v1-flush-short-entry": _v1(HEADER, EVENT, FLUSH % "[[1,2]]"),
        "v1-flush-count": _v1(HEADER, EVENT, FLUSH % "[]"),
        "v1-flush-trigger": _v1(HEADER, EVENT, (FLUSH % "[[1,2,3,4]]").replace(
            "SetLazyMode", "Nonsense")),
        "v1-flush-too-big": _v1(HEADER, EVENT, FLUSH % "[[1,2,3,99999999999]]"),
        "v1-guest-123": _v1({**HEADER, "guest": 123}, EVENT),
        "v1-guest-dev-zero": _v1({**HEADER, "guest": "/dev/zero"}, EVENT),
        "v1-guest-fifo": _v1({**HEADER, "guest": str(fifo)}, EVENT),
        "v1-symbols-dev-zero": _v1({**HEADER, "symbols": "/dev/zero"}, EVENT),
        "v1-negative-seq": _v1(HEADER, '{"seq":-5,"type":"lazy","old":0,"new":1}'),
        "v1-huge-seq": _v1(HEADER, '{"seq":99999999999999999999999,"type":"lazy","old":0,'
                                   '"new":1}'),
    }
    out = {}
    for name, text in v1.items():
        out[name] = tmp / f"{name}.jsonl"
        out[name].write_text(text)
    good = ev.from_events([tr.RomInit(0, base=0xC0000, batched=True)])
    for name, header in (("v2-guest-123", {"guest": 123}),
                         ("v2-guest-dev-zero", {"guest": "/dev/zero"}),
                         ("v2-guest-fifo", {"guest": str(fifo)}),
                         ("v2-symbols-dir", {"symbols": "/"})):
        out[name] = tmp / f"{name}.vmt"
        w = TraceFileWriter(out[name], **header)
        w.add(good)
        w.close()
    digits = b'{"format":"vmigdb-trace","version":2,"x":' + b"9" * 5000 + b"}"
    deep = b'{"format":"vmigdb-trace","version":2,"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    ok = json.dumps({"format": "vmigdb-trace", "version": 2}).encode()
    for name, meta, batches in (("v2-5000-digits", digits, []), ("v2-deep", deep, []),
                                ("v2-bad-flush", ok, [_bad_flush_batch()])):
        out[name] = tmp / f"{name}.vmt"
        _arrow(out[name], meta, batches)
    foreign = tmp / "foreign.arrow"
    with pa.OSFile(str(foreign), "wb") as f, pa.ipc.new_stream(
            f, pa.schema([("x", pa.int64())])) as w:
        w.write_batch(pa.record_batch([pa.array([1, 2, 3])], names=["x"]))
    out["foreign-arrow"] = foreign
    out["random-bytes"] = tmp / "random.vmt"
    out["random-bytes"].write_bytes(b"\xff\xff\xff\xff" + os.urandom(4000))
    return out


CASES = ("v1-5000-digits", "v1-deep-event", "v1-deep-header", "v1-flush-short-entry",
         "v1-flush-count", "v1-flush-trigger", "v1-flush-too-big", "v1-guest-123",
         "v1-guest-dev-zero", "v1-guest-fifo", "v1-symbols-dev-zero", "v1-negative-seq",
         "v1-huge-seq", "v2-guest-123", "v2-guest-dev-zero", "v2-guest-fifo", "v2-symbols-dir",
         "v2-5000-digits", "v2-deep", "v2-bad-flush", "foreign-arrow", "random-bytes")


@pytest.mark.parametrize("case", CASES)
def test_each_bad_file_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    path = _cases(tmp_path)[case]
    out = tmp_path / "out.parquet"
    for command in (("report", str(path), "--html", str(tmp_path / "r.html")),
                    ("diff", str(path), str(path)),
                    ("export", str(path), "--parquet", str(out))):
        r = subprocess.run([str(VMIGDB), *command], capture_output=True, text=True, env=ENV,
                           check=False, timeout=60)
        assert r.returncode == 2, (command, r.stdout[-500:], r.stderr[-2000:])
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("vmigdb: ") and r.stdout == "", r.stderr
    assert not out.exists() and not (tmp_path / "r.html").exists()


def test_unwritable_outputs_are_one_line(built: Built, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(_v1(HEADER, EVENT))
    for args in (("report", str(trace), "--html", "/proc/version"),
                 ("report", str(trace), "--svg", str(tmp_path / "no" / "such" / "dir.svg")),
                 ("report", str(trace), "--perfetto", str(tmp_path)),
                 ("export", str(trace), "--parquet", "/proc/version")):
        r = subprocess.run([str(VMIGDB), *args], capture_output=True, text=True, env=ENV,
                           check=False, timeout=60)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("vmigdb: cannot write "), r.stderr
        assert r.stdout == ""  # checked before the work, not after it


# --- fuzzing both versions in-process ---------------------------------------------------------


def analyse(path: Path, partial: bool) -> None:
    """What report, diff and export do with a file, in-process: VmiError is the only way out."""
    with open_trace(path) as tf:
        tracein.check_header(tf)
        b = ReportBuilder(listed_batches=10)
        perfetto = ChromeTraceWriter(io.StringIO(), tasks=tf.tasks)
        parquet = ParquetExport(io.BytesIO(), tracein.plain(tf.header))
        jsonl = JsonlExport(io.StringIO(), tracein.plain(tf.header))
        for chunk in tf.chunks(partial=partial):
            perfetto.add(chunk, b.add(chunk))
            parquet.add(chunk, tf.tasks)
            jsonl.add(chunk)
        perfetto.close()
        parquet.close()
        jsonl.close(tf.tasks, tracein.plain(tf.end))
        r = b.finish(name=str(path), header=tf.header, version=tf.version, end=tf.end,
                     tasks=dict(tf.tasks))
        render_text(render_report(r), width=120)
    with open_trace(path) as ta, open_trace(path) as tb:
        d = tracediff.diff_chunks(ta.chunks(partial=partial), tb.chunks(partial=partial))
        render_text(render_diff(d), width=120)


@pytest.fixture(scope="module")
def small(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[int],
                                                                            bytes]:
    """(a version 2 file of 3,000 real events in 10 batches, the batch boundaries, the same
    events as a version 1 file)."""
    d = tmp_path_factory.mktemp("fuzz")
    record(built.guest, built.rom, d / "run.vmt")
    c = chunk_of(d / "run.vmt").select(slice(0, 3000))
    path = d / "small.vmt"
    w = TraceFileWriter(path, producer="fuzz", guest="nowhere/guest.elf")
    ends = []
    for at in range(0, 3000, 300):
        w.add(c.select(slice(at, at + 300)), tasks={0xC1000000 + at: (at, f"task{at}")})
        w.flush()
        ends.append(path.stat().st_size)
    w.close(status="exited")
    text = io.StringIO()
    writer = tr.TraceWriter(text, producer="fuzz")
    writer.extend(ev.to_events(c))
    writer.close()
    return path.read_bytes(), ends, text.getvalue().encode()


def _check(data: bytes, tmp: Path, partial: bool) -> None:
    path = tmp / "fuzzed"
    path.write_bytes(data)
    try:
        analyse(path, partial)
    except VmiError:
        pass


def test_a_cut_at_every_batch_boundary(small: tuple[bytes, list[int], bytes],
                                       tmp_path: Path) -> None:
    data, ends, _ = small
    for k, end in enumerate(ends):
        path = tmp_path / f"cut{k}.vmt"
        path.write_bytes(data[:end])
        with pytest.raises(VmiError, match="cut off after"):
            analyse(path, partial=False)
        analyse(path, partial=True)  # the complete batches, no error
        with open_trace(path) as tf:
            assert sum(len(c) for c in tf.chunks(partial=True)) == 300 * (k + 1)
        for inside in (end - 1, end + 7):  # a byte short of the boundary, a few past it
            _check(data[:inside], tmp_path, partial=False)
            _check(data[:inside], tmp_path, partial=True)


_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@_FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 7)), min_size=1,
                      max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 1 << 30)), partial=st.booleans(),
       version=st.sampled_from([1, 2]))
def test_bit_flips_and_cuts_never_crash(small: tuple[bytes, list[int], bytes],
                                        tmp_path: Path, flips: list[tuple[int, int]],
                                        cut: int | None, partial: bool, version: int) -> None:
    data = bytearray(small[0] if version == 2 else small[2])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    _check(bytes(data), tmp_path, partial)


@_FUZZ
@given(at=st.integers(0, 1 << 30), junk=st.binary(min_size=1, max_size=64),
       partial=st.booleans(), version=st.sampled_from([1, 2]))
def test_random_bytes_never_crash(small: tuple[bytes, list[int], bytes], tmp_path: Path,
                                  at: int, junk: bytes, partial: bool, version: int) -> None:
    data = bytearray(small[0] if version == 2 else small[2])
    at %= len(data)
    data[at:at + len(junk)] = junk
    _check(bytes(data), tmp_path, partial)


@_FUZZ
@given(text=st.text(max_size=200), partial=st.booleans())
def test_version_1_text_never_crashes(small: tuple[bytes, list[int], bytes], tmp_path: Path,
                                      text: str, partial: bool) -> None:
    lines = small[2].decode().splitlines(keepends=True)
    _check(("".join(lines[:40]) + text + "".join(lines[40:80])).encode(), tmp_path, partial)


def test_hostile_values_still_draw(small: tuple[bytes, list[int], bytes], tmp_path: Path) -> None:
    """Valid files with values no producer writes: clocks at the top of their range and going
    back, task names that are markup, sites and tasks everywhere. Every output is drawn, and
    no name reaches the HTML as markup."""
    src = tmp_path / "src.vmt"
    src.write_bytes(small[0])
    c = chunk_of(src)
    n = len(c)
    c.cols["clock"] = c["clock"].copy()
    c.cols["clock"][n // 2:] = (1 << 64) - 1 - c["clock"][n // 2:]  # far away, then back
    c.cols["site"] = (c["site"] ^ (c["seq"].astype("u4") * 2654435761)).astype("u4")
    evil = '</script><img src=x onerror="alert(1)">'
    tasks = {0xC0000000 + k: (k, f"{evil}{k}") for k in range(40)}
    c.cols["task"] = (0xC0000000 + c["seq"] % 41).astype("u4")  # 40 named, 1 not
    path = tmp_path / "hostile.vmt"
    w = TraceFileWriter(path, producer="fuzz", cmdline=evil)
    w.add(c, tasks=tasks)
    w.close(status=evil)
    outs = [tmp_path / f"r.{x}" for x in ("html", "svg", "png", "json")]
    r = subprocess.run([str(VMIGDB), "report", str(path), "--html", str(outs[0]), "--svg",
                        str(outs[1]), "--png", str(outs[2]), "--perfetto", str(outs[3])],
                       capture_output=True, text=True, env=ENV, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    html = outs[0].read_text(encoding="utf-8")
    assert "<img src=x" not in html and "</script><img" not in html
    json.loads(outs[3].read_text())
    for fmt in ("parquet", "jsonl"):
        r = subprocess.run([str(VMIGDB), "export", str(path), f"--{fmt}",
                            str(tmp_path / f"x.{fmt}")], capture_output=True, text=True,
                           env=ENV, check=False, timeout=300)
        assert r.returncode == 0, r.stderr
