"""Lazy-MMU batches (vmigdb.batches) on a real trace: the demo guest and the real ROM run on
vmigdb's machine with its in-stub tracer, and the batches must add up to what the guest itself
counted and printed (deferred updates, flushes, flushes by trigger).
"""

from __future__ import annotations

import re

import pytest
from conftest import Built

from vmigdb import abi, batches
from vmigdb import trace as tr
from vmigdb.stub.machine import Machine, StopReason
from vmigdb.stub.vmitrace import VmiTracer
from vmigdb.views.batches import render_batch, render_histogram, render_timeline
from vmigdb.views.console import render_text
from vmigdb.views.trace import render_trace

#: The guest's "pt flushes by trigger" words, by abi.FlushTrigger name.
TRIGGER_WORDS = {"SetLazyMode": "lazy", "FlushTLB": "flushtlb", "InvalPage": "invalpage",
                 "SetCR3": "setcr3", "QueueFull": "full", "Ordering": "ordering"}


def run_traced(built: Built, cmdline: str) -> tuple[list[tr.Event], str]:
    """Boot the guest to its exit with the tracer on; (events, serial text)."""
    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline=cmdline)
    serial = bytearray()
    m.on_serial = serial.extend
    tracer = VmiTracer(m)
    tracer.start()
    for _ in range(100_000):
        stop = m.run()
        tracer.service()
        if stop.reason is not StopReason.HOOK:
            break
    text = serial.decode(errors="replace").replace("\r", "")
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0, (stop, text[-2000:])
    return list(tracer.events), text


@pytest.fixture(scope="module")
def copy_trace(built: Built) -> tuple[list[tr.Event], str]:
    return run_traced(built, "rom=copy")


def _summary(text: str) -> dict[str, int]:
    m = re.search(r"^summary: .* deferred=(\d+) flushes=(\d+)$", text, re.MULTILINE)
    assert m, text[-2000:]
    return {"deferred": int(m[1]), "flushes": int(m[2])}


def test_batches_add_up_to_the_guests_counts(copy_trace: tuple[list[tr.Event], str]) -> None:
    events, text = copy_trace
    found = batches.group(events)
    stats = batches.statistics(found, events)
    want = _summary(text)
    assert stats.batches == want["flushes"] > 0
    assert stats.updates == want["deferred"] > 0
    assert stats.exits_saved == want["deferred"] - want["flushes"]
    assert [b.number for b in found] == list(range(1, len(found) + 1))
    m = re.search(r"^pt flushes by trigger: (.*)$", text, re.MULTILINE)
    assert m
    by_word = {k: int(v) for k, v in (w.split("=") for w in m[1].split())}
    for name, word in TRIGGER_WORDS.items():
        assert stats.by_trigger.get(name, 0) == by_word[word], name
    assert stats.largest <= abi.ROM_QUEUE_LEN
    assert sum(c for _label, c in batches.histogram(b.count for b in found)) == len(found)


def test_each_update_knows_its_va_and_old_value(copy_trace: tuple[list[tr.Event], str]
                                                ) -> None:
    events, _ = copy_trace
    found = batches.group(events)
    first = found[0]
    # The first lazy region maps one fresh page: the entry was empty, now present and writable.
    assert first.count == 1 and first.trigger == "SetLazyMode"
    u = first.updates[0]
    assert u.old == 0 and u.new & 3 == 3 and u.pa == u.new & 0xFFFFF000
    assert u.changed_bits()[0][:2] == ["P", "RW"]
    for b in found:
        for u in b.updates:
            assert u.va is not None  # the guest's deferred updates all carry CURRENT_AS | va
            assert u.notify or u.old is not None
        if b.count <= abi.ROM_INVLPG_MAX and b.trigger not in ("FlushTLB", "SetCR3"):
            assert b.tlb_action == "INVLPG", b
        if b.count > abi.ROM_INVLPG_MAX and b.trigger not in ("FlushTLB", "SetCR3"):
            assert b.tlb_action == "FULL", b
    notify = [u for b in found for u in b.updates if u.notify]
    assert notify and all(u.pa is None and u.changed_bits() == ([], []) for u in notify)


def test_views_render_the_real_batches(copy_trace: tuple[list[tr.Event], str]) -> None:
    events, text = copy_trace
    found = batches.group(events)
    stats = batches.statistics(found, events)
    want = _summary(text)
    timeline = render_text(render_timeline(found, stats), width=140)
    assert f"batches={want['flushes']} deferred updates={want['deferred']}" in timeline
    assert f"exits saved={want['deferred'] - want['flushes']}" in timeline
    tree = render_text(render_batch(found[0]), width=140)
    assert "batch 1 " in tree and "+P +RW" in tree and "TLB action INVLPG" in tree
    big = max(found, key=lambda b: b.count)
    assert f"{big.count} updates" in render_text(render_batch(big), width=160)
    hist = render_text(render_histogram(found), width=100)
    assert "65-128" in hist
    calls = render_text(render_trace(events, last=5, call="SetPxE"), width=200)
    assert "PT CURRENT_AS" in calls or "PD" in calls


def test_inplace_rom_does_not_batch(built: Built) -> None:
    events, _ = run_traced(built, "rom=inplace")
    init = next(e for e in events if isinstance(e, tr.RomInit))
    assert not init.batched and init.base == 0xC00C0000
    assert batches.group(events) == []
    stats = batches.statistics([], events)
    assert stats.direct_writes > 0 and stats.updates == 0
