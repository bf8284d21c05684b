"""``vmigdb.tracediff`` and ``vmigdb diff``: where two traces diverge, every differing region
after realignment, what is ignored, exit codes; streamed over real traces of the demo guest."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import Built
from tracefiles import chunk_of, record

from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb import tracediff
from vmigdb.tracefile import write_chunks

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
    # Realigned: B inserted one event; the SetLazyMode after it matches again.
    (r,) = d.regions
    assert (r.a_start, r.a_len, r.b_start, r.b_len) == (6, 0, 6, 1)
    assert r.b_events == (b[6],) and r.what == "B has 1 event A lacks"
    assert [x for x, _ in r.before] == a[4:6] and [y for _, y in r.after] == [b[7]]


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
    assert "the traces differ in 1 region, the first at event 6" in differ.stdout
    assert f"A: {a}: 7 events, 0 in the regions" in differ.stdout
    assert f"B: {c}: 8 events, 1 in the regions" in differ.stdout
    assert "region 1: A none (at 6), B 6: B has 1 event A lacks" in differ.stdout
    assert re.search(r"│ \+ │\s+│\s+│\s+6 │ call InvalPage va=0x1000", differ.stdout), differ.stdout
    assert re.search(r"│ InvalPage\s+│\s+0 │\s+1 │\s+\+1 │", differ.stdout), differ.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(a.read_text().replace('"type":"lazy"', '"type":"lazzy"'))
    err = subprocess.run([str(VMIGDB), "diff", str(a), str(bad)], capture_output=True,
                         text=True, env=env, check=False)
    assert err.returncode == 2
    assert err.stderr.strip() == f"vmigdb: {bad}: line 6: bad event: unknown event type 'lazzy'"


# --- realignment over real traces -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(built: Built, tmp_path_factory: pytest.TempPathFactory) -> ev.Chunk:
    """A whole demo-guest run with stress (tens of thousands of events), as columns."""
    path = tmp_path_factory.mktemp("diff") / "run.vmt"
    record(built.guest, built.rom, path, cmdline="stress=3")
    return chunk_of(path)


def _edited(c: ev.Chunk, keep: np.ndarray) -> ev.Chunk:
    """The events at ``keep`` (positions, in any order, repeats allowed) as a trace of their
    own: seqs renumbered from 1000, each return as far from its call as before."""
    events = list(ev.to_events(c))
    out = []
    for n, k in enumerate(keep.tolist()):
        e = events[k]
        e = replace(e, seq=1000 + n)
        if isinstance(e, tr.RomReturn):
            e = replace(e, call_seq=e.seq - (events[k].seq - events[k].call_seq))
        out.append(e)
    return ev.from_events(out)


def _pieces(c: ev.Chunk, size: int) -> list[ev.Chunk]:
    return [c.select(slice(k, k + size)) for k in range(0, len(c), size)]


def test_inserted_and_removed_regions_are_each_reported(demo: ev.Chunk, tmp_path: Path) -> None:
    n = len(demo)
    assert n > 20_000
    removed = slice(3000, 3040)  # 40 events of A that B lacks
    inserted = np.arange(500, 525)  # 25 events B has again, further on
    keep = np.r_[np.arange(0, removed.start), np.arange(removed.stop, 12_000), inserted,
                 np.arange(12_000, n)]
    b = _edited(demo, keep)
    # Chunks of different sizes on the two sides: the comparison must not care.
    d = tracediff.diff_chunks(_pieces(demo, 4096), _pieces(b, 1000), context=2)
    assert not d.equivalent and d.region_count == 2, d.regions
    first, second = d.regions
    assert (first.a_start, first.a_len, first.b_start, first.b_len) == (3000, 40, 3000, 0)
    assert first.what == "A has 40 events B lacks"
    assert (second.a_start, second.a_len, second.b_start, second.b_len) == (
        12_000, 0, 12_000 - 40, 25)
    assert second.what == "B has 25 events A lacks"
    assert (d.len_a, d.len_b, d.differing_a, d.differing_b) == (n, n - 15, 40, 25)
    # The same two traces through the command, as files.
    pa, pb = tmp_path / "a.vmt", tmp_path / "b.vmt"
    write_chunks(pa, [demo], producer="test")
    write_chunks(pb, [b], producer="test")
    r = subprocess.run([str(VMIGDB), "diff", str(pa), str(pb)], capture_output=True, text=True,
                       env={"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
                       check=False)
    assert r.returncode == 1, r.stderr
    assert "the traces differ in 2 regions, the first at event 3000" in r.stdout
    assert "region 1: A 3000-3039, B none (at 3000): A has 40 events B lacks" in r.stdout
    assert "region 2: A none (at 12000), B 11960-11984: B has 25 events A lacks" in r.stdout


def test_changed_values_are_one_event_regions_and_the_rest_matches(demo: ev.Chunk) -> None:
    b = _edited(demo, np.arange(len(demo)))
    ptes = np.flatnonzero(b["kind"] == ev.Kind.PTE)[[10, 500, 501, 2000]]
    b.cols["new"] = b["new"].copy()
    b.cols["new"][ptes] ^= 0x1000
    d = tracediff.diff_chunks(_pieces(demo, 3000), _pieces(b, 5000))
    spans = [(r.a_start, r.a_len, r.b_start, r.b_len) for r in d.regions]
    # Neighbouring changes may fall into one region; every change is in one, nothing else is.
    assert sum(r.a_len for r in d.regions) == sum(r.b_len for r in d.regions) <= 6
    changed = {int(p) for p in ptes}
    assert changed <= {a + k for a, n, _, _ in spans for k in range(n)}
    assert all(r.a_start == r.b_start for r in d.regions)
    one = [r for r in d.regions if r.a_len == 1]
    assert one and all(r.fields == ("new",) for r in one)
    assert d.calls == () and d.types == ()


def test_a_long_stream_compares_in_bounded_memory() -> None:
    """Equal traces many windows long: the comparison keeps a window, not the trace."""
    base = ev.from_events(_trace())
    rows = base.rows()
    chunks = []
    for k in range(200):  # 200 chunks of 7 events repeated: 1,400 events, small but many
        c = ev.Chunk.from_rows(rows.copy(), base.entries)
        c.cols["seq"] = c["seq"] + k * 100
        c.cols["link"] = np.where(c["kind"] == ev.Kind.RETURN, c["link"] + k * 100, 0).astype(
            np.uint64)
        chunks.append(c)
    d = tracediff.diff_chunks(iter(chunks), iter(list(chunks)))
    assert d.equivalent and d.len_a == d.len_b == 1400


# --- page numbers by first use (--renumber-pages) --------------------------------------------------


def _fork(frames: tuple[int, int, int], user: int = 0x4012, gap: int = 0) -> list[tr.Event]:
    """A fork-like trace: a page directory and a page table allocated, a PTE written into the
    table (and flushed by a batch), the table mapped; ``frames``: the page frames the machine
    gave (directory, table, the user page the PTE maps); ``gap`` events of another kind
    between a call and its return (what a selection may leave out)."""
    pd, pt, page = frames
    base, lowmem = 0xC00C0000, 0xC0000000
    pte = page << 12 | 0x067
    ptep = lowmem + (pt << 12) + 4 * (user & 0x3FF)
    events: list[tr.Event] = [
        tr.RomInit(0, base=base, batched=True),
        tr.RomCall(1, call="AllocatePage", entry=base + 0x700, site=0x101000,
                   args={"pfn": pd, "flags": 0x62, "clone_pfn": 0x16E5, "start": 0x300,
                         "count": 0x100}),
        tr.RomCall(2, call="AllocatePage", entry=base + 0x700, site=0x101008,
                   args={"pfn": pt, "flags": 0x41, "clone_pfn": 0, "start": 0, "count": 0}),
        tr.RomCall(3, call="SetPxE", entry=base + 0x400, site=0x101010,
                   args={"pte": pt << 12 | 0x067, "ptep": lowmem + (pd << 12) + 0x80,
                         "flags": 2}),
        tr.PteWrite(4, ptep=lowmem + (pd << 12) + 0x80, old=0, new=pt << 12 | 0x067, flags=2),
        tr.RomCall(5, call="SetPxE", entry=base + 0x400, site=0x101020,
                   args={"pte": pte, "ptep": ptep, "flags": 0x31}),
        tr.BatchFlush(6, batch=1, count=1, trigger="SetLazyMode", tlb_action="INVLPG",
                      entries=[[ptep, 0x31, pte, 0]]),
        tr.RomCall(7, call="SetLinearMapping", entry=base + 0x680, site=0x101030,
                   args={"slot": 1, "va": lowmem + (pt << 12), "pages": 1, "pfn": pt}),
        tr.RomCall(8, call="GetCR3", entry=base + 0x240, site=0x101040),
    ]
    seq = 9 + gap
    events += [tr.LazyMode(9 + k, old=0, new=0) for k in range(gap)]
    events.append(tr.RomReturn(seq, call_seq=8, call="GetCR3", results={"eax": pd << 12}))
    return events


def test_renumbered_pages_compare_by_first_use() -> None:
    a, b = _fork((0x79D0, 0x79D1, 0x2345)), _fork((0x7A12, 0x7A13, 0x2999))
    d = tracediff.diff(a, b)
    assert not d.equivalent and d.first is not None and d.first.fields == ("args",)
    assert tracediff.diff(a, b, pages=True).equivalent
    # Still compared: where a page is reused, offsets within pages, flag bits.
    swapped = _fork((0x7A13, 0x7A12, 0x2999))  # directory and table change roles: consistent
    assert tracediff.diff(a, swapped, pages=True).equivalent
    reused = _fork((0x7A12, 0x7A13, 0x7A12))  # maps the directory where A maps a new page
    d = tracediff.diff(a, reused, pages=True)
    assert not d.equivalent and d.first is not None and d.first.index == 5
    other_entry = _fork((0x7A12, 0x7A13, 0x2999), user=0x4013)
    assert not tracediff.diff(a, other_entry, pages=True).equivalent
    flags = [replace(e, args={**e.args, "pte": e.args["pte"] | 0x800})
             if isinstance(e, tr.RomCall) and e.seq == 5 else e for e in b]
    assert not tracediff.diff(a, flags, pages=True).equivalent


def test_pages_are_numbered_across_chunks_and_batch_entries() -> None:
    a, b = _fork((0x79D0, 0x79D1, 0x2345)), _fork((0x7A12, 0x7A13, 0x2999))
    pieces = [ev.from_events(b[:4]), ev.from_events(b[4:7]), ev.from_events(b[7:])]
    assert tracediff.diff_chunks([ev.from_events(a)], pieces, pages=True).equivalent
    bad_entry = [replace(e, entries=[[e.entries[0][0], 0x31, 0x7A12 << 12 | 0x067, 0]])
                 if isinstance(e, tr.BatchFlush) else e for e in b]
    assert not tracediff.diff(a, bad_entry, pages=True).equivalent


def test_a_return_is_as_far_from_its_call_as_the_events_kept_say() -> None:
    """A selection that left out events between a call and its return (``vmi trace save
    --no-interrupts``: an interrupt inside the ROM call) compares equal to one without them."""
    frames = (0x79D0, 0x79D1, 0x2345)
    whole, gapped = _fork(frames), _fork(frames, gap=5)
    kept = [e for e in gapped if not isinstance(e, tr.LazyMode) or e.seq < 9]
    assert [e.seq for e in kept][-2:] == [8, 14]
    assert tracediff.diff(whole, kept).equivalent
    wrong = kept[:-1] + [replace(kept[-1], call_seq=7)]
    d = tracediff.diff(whole, wrong)
    assert d.first is not None and d.first.fields == ("call_seq",)


def test_cli_renumber_pages(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", _fork((0x79D0, 0x79D1, 0x2345)))
    b = _write(tmp_path / "b.jsonl", _fork((0x7A12, 0x7A13, 0x2999)))
    env = {"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"}
    run = [str(VMIGDB), "diff", str(a), str(b)]
    assert subprocess.run(run, capture_output=True, env=env, check=False).returncode == 1
    same = subprocess.run([*run, "--renumber-pages"], capture_output=True, text=True, env=env,
                          check=False)
    assert same.returncode == 0 and "equivalent: 10 events each" in same.stdout, same.stdout
