"""``vmigdb.tracediff`` and ``vmigdb diff``: where two traces diverge, what is ignored, exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from vmigdb import trace as tr
from vmigdb import tracediff

VMIGDB = Path(sys.executable).with_name("vmigdb")


def _trace(base: int = 0xC0115000, tsc: int = 0x1234, extra: bool = False) -> list[tr.Event]:
    events: list[tr.Event] = [
        tr.RomInit(0, base=base, batched=True),
        tr.RomCall(1, call="RDTSC", entry=base + 0x300, site=0x101000),
        tr.RomReturn(2, call_seq=1, call="RDTSC", results={"eax": tsc, "edx": 7}),
        tr.RomCall(3, call="SetLazyMode", entry=base + 0x600, site=0x101010, args={"mode": 1}),
        tr.LazyMode(4, old=0, new=1),
        tr.RomCall(5, call="SetPxE", entry=base + 0x400, site=0x101020,
                   args={"pte": 0x1003, "ptep": 0xC0400000, "flags": 0x31}),
    ]
    if extra:
        events.append(tr.RomCall(6, call="InvalPage", entry=base + 0x500, site=0x101030,
                                 args={"va": 0x1000}))
    events.append(tr.RomCall(len(events), call="SetLazyMode", entry=base + 0x600,
                             site=0x101040, args={"mode": 0}))
    return events


def test_clock_results_are_ignored_unless_strict() -> None:
    a, b = _trace(tsc=1), _trace(tsc=2)
    d = tracediff.diff(a, b)
    assert d.equivalent and d.ignored == {"RDTSC": 2}
    strict = tracediff.diff(a, b, strict=True)
    assert not strict.equivalent
    assert strict.first is not None and strict.first.index == 2
    assert strict.first.fields == ("results",)


def test_first_difference_has_context_and_counts() -> None:
    a, b = _trace(), _trace(extra=True)
    d = tracediff.diff(a, b, context=2)
    assert d.first is not None and d.first.index == 6
    assert isinstance(d.first.a, tr.RomCall) and d.first.a.call == "SetLazyMode"
    assert isinstance(d.first.b, tr.RomCall) and d.first.b.call == "InvalPage"
    assert d.first.fields == ("args", "call", "entry", "site")
    assert d.context_start == 4 and len(d.context_a) == 3 and len(d.context_b) == 4
    assert [(c.name, c.a, c.b) for c in d.calls] == [("InvalPage", 0, 1)]
    assert [(c.name, c.a, c.b) for c in d.types] == [("call", 4, 5)]


def test_a_prefix_differs_where_it_ends() -> None:
    a = _trace()
    d = tracediff.diff(a[:4], a)
    assert d.first is not None and d.first.index == 4
    assert d.first.a is None and d.first.b == a[4]


def test_seq_offsets_do_not_matter_but_call_distances_do() -> None:
    a = _trace()
    shifted = [replace(e, seq=e.seq + 100) for e in a]
    shifted[2] = replace(shifted[2], call_seq=101)
    assert tracediff.diff(a, shifted).equivalent
    wrong = list(shifted)
    wrong[2] = replace(wrong[2], call_seq=99)
    d = tracediff.diff(a, wrong)
    assert d.first is not None and d.first.index == 2 and d.first.fields == ("call_seq",)


def test_a_rom_elsewhere_lines_up_with_relative() -> None:
    a, b = _trace(base=0xC0115000), _trace(base=0xC00C0000)
    d = tracediff.diff(a, b)
    assert d.first is not None and d.first.index == 0 and d.first.fields == ("base",)
    assert tracediff.diff(a, b, relative=True).equivalent


def _write(path: Path, events: list[tr.Event]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        tr.write_trace(f, events)
    return path


def test_cli_exit_codes_and_output(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", _trace(tsc=1))
    b = _write(tmp_path / "b.jsonl", _trace(tsc=2))
    c = _write(tmp_path / "c.jsonl", _trace(extra=True))
    env = {"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"}
    same = subprocess.run([str(VMIGDB), "diff", str(a), str(b)], capture_output=True,
                          text=True, env=env, check=False)
    assert same.returncode == 0, same.stderr
    assert "equivalent: 7 events each (2 clock values ignored: results of RDTSC)" in same.stdout
    differ = subprocess.run([str(VMIGDB), "diff", str(a), str(c)], capture_output=True,
                            text=True, env=env, check=False)
    assert differ.returncode == 1
    assert "the traces differ at event 6 (fields args, call, entry, site differ)" in differ.stdout
    assert "call InvalPage va=0x1000" in differ.stdout
    assert re.search(r"│ InvalPage\s+│\s+0 │\s+1 │\s+\+1 │", differ.stdout), differ.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(a.read_text().replace('"type":"lazy"', '"type":"lazzy"'))
    err = subprocess.run([str(VMIGDB), "diff", str(a), str(bad)], capture_output=True,
                         text=True, env=env, check=False)
    assert err.returncode == 2
    assert err.stderr.strip() == "vmigdb: line 6: bad event: unknown event type 'lazzy'"
