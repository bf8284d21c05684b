"""``vmigdb export`` of real traces: the Parquet file loads in pandas and DuckDB with the right
rows and column types, the JSON Lines file reads back as the same trace, the Perfetto file is on
the virtual clock with a track per guest task; and a Linux boot's trace, end to end (report
names the kernel's callers from vmlinux and its tasks)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import Built, Linux
from tracefiles import chunk_of, record

from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.export import ARG_COLUMNS, RESULT_COLUMNS
from vmigdb.mi import GDB
from vmigdb.tracefile import TraceFileWriter

VMIGDB = Path(sys.executable).with_name("vmigdb")
ENV = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}
#: Task pointers and names of the synthetic tasks (Linux's task_struct addresses look so).
TASKS = {0xC1602E40: (0, "swapper"), 0xC781C000: (1, "init"), 0xC791DEC0: (661, "sh")}


def vmigdb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMIGDB), *args], capture_output=True, text=True, env=ENV,
                          check=False, timeout=300)


@pytest.fixture(scope="module")
def run(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "run.vmt"
    record(built.guest, built.rom, path, cmdline="stress=2")
    return path


@pytest.fixture(scope="module")
def tasked(run: Path) -> Path:
    """The same events with their task column cycling through TASKS, named in the file."""
    c = chunk_of(run)
    pointers = np.array(sorted(TASKS), np.uint32)
    c.cols["task"] = pointers[(np.arange(len(c)) // 1000) % len(pointers)]
    out = run.with_name("tasked.vmt")
    w = TraceFileWriter(out, producer="test")
    w.add(c, tasks=TASKS)
    w.close(status="exited")
    return out


def test_parquet_loads_in_pandas_and_duckdb(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    r = vmigdb("export", str(run), "--parquet", str(out))
    chunk = chunk_of(run)
    events = list(ev.to_events(chunk))
    assert r.returncode == 0 and r.stderr == f"vmigdb: wrote {out} ({len(events)} events)\n"
    df = pd.read_parquet(out, dtype_backend="numpy_nullable")
    assert len(df) == len(events)
    dtypes = {k: str(v) for k, v in df.dtypes.items()}
    assert dtypes["seq"] == "UInt64" and dtypes["clock_ns"] == "UInt64"
    assert dtypes["type"] == "category" and dtypes["call"] == "category"
    for name in ("site", "rom_entry", "ptep", "pte", "flags", "mode", "mask", "batch",
                 *ARG_COLUMNS, *RESULT_COLUMNS):
        assert dtypes[name] == "UInt32", name
    assert dtypes["old"] == dtypes["new"] == "UInt64" and dtypes["deferred"] == "boolean"
    # The columns say what the raw ones meant: a SetPxE's arguments by their ABI names.
    calls = [e for e in events if isinstance(e, tr.RomCall)]
    setpxe = df[df["call"] == "SetPxE"]
    want = [e for e in calls if e.call == "SetPxE"]
    assert len(setpxe) == len(want)
    row, e = setpxe.iloc[0], want[0]
    assert (row["pte"], row["ptep"], row["flags"]) == (e.args["pte"], e.args["ptep"],
                                                      e.args["flags"])
    assert pd.isna(row["mode"]) and row["type"] == "call"
    assert (df["clock_ns"].to_numpy() == chunk["clock"]).all()
    flushes = df[df["type"] == "flush"]
    assert [len(x) for x in flushes["entries"]] == flushes["count"].tolist()

    con = duckdb.connect()
    types = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM '{out}'").fetchall()}
    assert types["seq"] == "UBIGINT" and types["clock_ns"] == "UBIGINT"
    assert types["ptep"] == "UINTEGER" and types["call"] == "VARCHAR"
    assert types["deferred"] == "BOOLEAN"
    (n,), = con.execute(f"SELECT count(*) FROM '{out}'").fetchall()
    assert n == len(events)
    by_call = dict(con.execute(f"SELECT call, count(*) FROM '{out}' WHERE type = 'call' "
                               "GROUP BY call").fetchall())
    assert by_call == {name: sum(1 for e in calls if e.call == name)
                       for name in {e.call for e in calls}}


def test_jsonl_reads_back_as_the_same_trace(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    r = vmigdb("export", str(run), "--jsonl", str(out))
    assert r.returncode == 0, r.stderr
    chunk = chunk_of(run)
    t = tr.read_trace(out)
    assert t.events == list(ev.to_events(chunk)) and not t.truncated
    assert t.end is not None and t.end["status"] == "exited"
    lines = out.read_text().splitlines()[1:-1]
    assert len(lines) == len(chunk)
    first = [json.loads(line) for line in lines[:50]]
    assert [d["clock"] for d in first] == chunk["clock"][:50].tolist()
    assert all(d["task"] == 0 for d in first)
    # It is a trace: the report of the export is the report of the original.
    a, b = vmigdb("report", str(run)), vmigdb("report", str(out))
    totals = re.compile(r"^(?:totals|exits): .*$", re.MULTILINE)
    assert totals.findall(a.stdout) == totals.findall(b.stdout) != []


def test_perfetto_export_is_on_the_virtual_clock_with_a_track_per_task(
        tasked: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json.gz"
    r = vmigdb("export", str(tasked), "--perfetto", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(gzip.decompress(out.read_bytes()))
    te = doc["traceEvents"]
    chunk = chunk_of(tasked)
    clock = dict(zip(chunk["seq"].tolist(), chunk["clock"].tolist(), strict=True))
    task_of = dict(zip(chunk["seq"].tolist(), chunk["task"].tolist(), strict=True))
    threads = {e["tid"]: e["args"]["name"] for e in te
               if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 2}
    assert threads == {pid: comm for pid, comm in TASKS.values()}
    calls = [e for e in te if e["ph"] == "X" and e.get("cat") == "rom_call"]
    assert len(calls) == int((chunk["kind"] == ev.Kind.CALL).sum())
    calls.sort(key=lambda e: e["args"]["seq"])
    ts = [round(float(e["ts"]) * 1000) for e in calls]
    assert ts == [clock[e["args"]["seq"]] for e in calls]
    assert ts == sorted(ts) and ts[0] < ts[-1]  # increasing with the virtual clock
    for e in calls:  # each call on the track of the task that made it
        assert (e["pid"], e["tid"]) == (2, TASKS[task_of[e["args"]["seq"]]][0])


def test_parquet_names_the_tasks(tasked: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    assert vmigdb("export", str(tasked), "--parquet", str(out)).returncode == 0
    df = pd.read_parquet(out, dtype_backend="numpy_nullable")
    pairs = set(zip(df["task"].tolist(), df["pid"].tolist(), df["comm"].tolist(), strict=True))
    assert pairs == {(ptr, pid, comm) for ptr, (pid, comm) in TASKS.items()}


def test_export_needs_one_output_and_a_whole_trace(run: Path, tmp_path: Path) -> None:
    r = vmigdb("export", str(run))
    assert r.returncode == 2 and "one of the arguments" in r.stderr
    data = run.read_bytes()
    cut = tmp_path / "cut.vmt"
    cut.write_bytes(data[:len(data) - 100])
    out = tmp_path / "cut.parquet"
    r = vmigdb("export", str(cut), "--parquet", str(out))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "cut off" in r.stderr
    assert not out.exists()  # no half-written export that looks whole
    r = vmigdb("export", str(run), "--jsonl", "/proc/version")
    assert r.returncode == 2 and r.stderr.startswith("vmigdb: cannot write /proc/version: ")


# --- Linux ------------------------------------------------------------------------------------------

#: From System.map-2.6.32.9-vmi.
CURRENT_TASK, PER_CPU_OFFSET = 0xC16DA48C, 0xC167AD80


def _task_offsets(vmlinux: Path) -> tuple[int, int]:
    r = subprocess.run([GDB, "-nx", "-batch", "-ex", "print &((struct task_struct*)0)->pid",
                        "-ex", "print &((struct task_struct*)0)->comm", str(vmlinux)],
                       capture_output=True, text=True, timeout=300, check=True)
    pid, comm = (int(x, 16) for x in re.findall(r"\) (0x[0-9a-f]+)", r.stdout))
    return pid, comm


@pytest.fixture(scope="module")
def linux_trace(built: Built, linux: Linux, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vmigdb.stub.machine import StopReason
    from vmigdb.stub.machine.pc import PC
    from vmigdb.stub.vmitrace import VmiTracer

    out = tmp_path_factory.mktemp("linux") / "boot.vmt"
    m = PC.from_files(str(linux.bzimage), rom=str(built.rom), cmdline="console=ttyS0",
                      initrd=str(linux.initrd))
    m.on_serial = lambda data: None
    t = VmiTracer(m)
    t.set_task(CURRENT_TASK, PER_CPU_OFFSET, *_task_offsets(linux.vmlinux))
    t.open_file(out, guest=str(linux.bzimage), symbols=str(linux.vmlinux), target="stub")
    t.start()
    stop = m.run()
    while stop.reason is not StopReason.EXIT:
        assert stop.reason in (StopReason.BREAKPOINT, StopReason.HOOK, StopReason.HALT,
                               StopReason.INTERRUPTED), stop
        stop = m.run()
    t.close_file(status="exited")
    return out


def test_a_linux_boot_reported_and_exported(linux_trace: Path, tmp_path: Path) -> None:
    r = vmigdb("report", str(linux_trace), "--sites", "5")
    assert r.returncode == 0, r.stderr
    # The kernel's callers by name from vmlinux, and the tasks by pid and comm.
    assert re.search(r"│ 0xc[0-9a-f]+ │ (__)?raw_local_irq_\w+(\+\d+)?\s+│ 0xc[0-9a-f]+ type \d+",
                     r.stdout), r.stdout
    assert re.search(r"│ 0xc[0-9a-f]+ │\s+1 │ init\s+│", r.stdout), r.stdout
    assert re.search(r"│ 0xc[0-9a-f]+ │\s+0 │ swapper\s+│", r.stdout), r.stdout
    events = int(re.search(r"^totals: (\d+) events", r.stdout, re.MULTILINE)[1])
    assert events > 500_000
    out = tmp_path / "boot.parquet"
    assert vmigdb("export", str(linux_trace), "--parquet", str(out)).returncode == 0
    con = duckdb.connect()
    (n, tasks, named), = con.execute(
        f"SELECT count(*), count(DISTINCT task), count(DISTINCT comm) FROM '{out}'").fetchall()
    assert n == events and tasks > 10 and named > 5
