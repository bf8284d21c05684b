"""The in-stub VMI tracer on the real machine, ROM and guest: its events agree with what the guest
itself counted and logged on COM1, in both ROM modes."""

from __future__ import annotations

import collections
import re

import pytest
from conftest import Built
from test_guest_qemu import summary

from vmigdb import abi
from vmigdb import trace as tr
from vmigdb.stub.machine import Machine, StopReason
from vmigdb.stub.vmitrace import VmiTracer


def _boot(built: Built, cmdline: str, capacity: int = 1 << 20) -> tuple[VmiTracer, str]:
    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline=cmdline)
    out: list[bytes] = []
    m.on_serial = out.append
    t = VmiTracer(m, capacity=capacity)
    t.start()
    stop = m.run()
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0, stop
    return t, b"".join(out).decode().replace("\r", "")


@pytest.fixture(scope="module", params=["copy", "inplace"])
def traced(request: pytest.FixtureRequest, built: Built) -> tuple[VmiTracer, str]:
    return _boot(built, f"rom={request.param}")


def _of(t: VmiTracer, kind: type[tr.Event]) -> list:
    return [e for e in t.events if isinstance(e, kind)]


def test_every_rom_call_is_recorded(traced: tuple[VmiTracer, str]) -> None:
    t, serial = traced
    calls = _of(t, tr.RomCall)
    assert len(calls) == int(summary(serial)["calls"])
    counted = dict(re.findall(r" (\w+)=(\d+)", next(ln for ln in serial.splitlines()
                                                    if ln.startswith("calls:"))))
    seen = collections.Counter(c.call for c in calls)
    assert {k: str(v) for k, v in seen.items()} == counted
    assert t.dropped == 0


def test_returns_match_calls(traced: tuple[VmiTracer, str]) -> None:
    t, _ = traced
    calls = {c.seq: c for c in _of(t, tr.RomCall)}
    returns = _of(t, tr.RomReturn)
    with_results = [c for c in calls.values()
                    if abi.CALLS[abi.VmiCall[c.call]].returns
                    and abi.CALLS[abi.VmiCall[c.call]].results]
    assert {r.call_seq for r in returns} == {c.seq for c in with_results}
    for r in returns:
        assert calls[r.call_seq].call == r.call
        assert set(r.results) == set(abi.CALLS[abi.VmiCall[r.call]].results)


def test_batches_equal_the_guests_counts(traced: tuple[VmiTracer, str]) -> None:
    t, serial = traced
    s = summary(serial)
    flushes = _of(t, tr.BatchFlush)
    assert len(flushes) == int(s["flushes"])
    assert sum(f.count for f in flushes) == int(s["deferred"])
    assert [f.batch for f in flushes] == list(range(1, len(flushes) + 1))
    assert t.batched == (s["batched"] == "1")
    for f in flushes:
        assert f.trigger in abi.FlushTrigger.__members__
        assert 1 <= f.count <= abi.ROM_QUEUE_LEN


def test_cpuid_setpxe_setcr3_args_equal_the_guest_log(traced: tuple[VmiTracer, str]) -> None:
    t, serial = traced
    calls = _of(t, tr.RomCall)
    returns = {r.call_seq: r for r in _of(t, tr.RomReturn)}
    for leaf, eax, ebx, ecx, edx in re.findall(
            r"^cpuid leaf=(0x[0-9a-f]+) -> eax=(0x[0-9a-f]+) ebx=(0x[0-9a-f]+) "
            r"ecx=(0x[0-9a-f]+) edx=(0x[0-9a-f]+)", serial, re.MULTILINE):
        call = next(c for c in calls if c.call == "CPUID" and c.args["leaf"] == int(leaf, 16))
        assert returns[call.seq].results == {"eax": int(eax, 16), "ebx": int(ebx, 16),
                                             "ecx": int(ecx, 16), "edx": int(edx, 16)}
    setpxe = {(c.args["pte"], c.args["ptep"], c.args["flags"]) for c in calls
              if c.call == "SetPxE"}
    logged = re.findall(r"^setpxe pte=(0x[0-9a-f]+) ptep=(0x[0-9a-f]+) flags=(0x[0-9a-f]+)",
                        serial, re.MULTILINE)
    assert logged
    assert {tuple(int(v, 16) for v in row) for row in logged} <= setpxe
    cr3 = [c.args["value"] for c in calls if c.call == "SetCR3"]
    logged_cr3 = [int(v, 16) for v in re.findall(r"^setcr3 (0x[0-9a-f]+)", serial, re.MULTILINE)]
    assert logged_cr3 and set(logged_cr3) <= set(cr3)


def test_deferred_pte_writes_land_in_memory_order(traced: tuple[VmiTracer, str]) -> None:
    t, _ = traced
    assert _of(t, tr.PteWrite)
    accessed_dirty = 0x60  # the CPU sets A and D in PTEs behind everyone's back
    last: dict[int, int] = {}
    for e in t.events:
        if isinstance(e, tr.RomCall) and e.call in ("UpdatePxE", "UpdatePxELong"):
            last.pop(e.args["ptep"], None)  # the guest wrote this entry itself
        elif isinstance(e, tr.PteWrite):
            if e.ptep in last:  # each write starts from the value the previous one left
                assert e.old & ~accessed_dirty == last[e.ptep] & ~accessed_dirty, e
            last[e.ptep] = e.new


def test_ring_buffer_is_bounded_and_counts_drops(built: Built) -> None:
    t, _ = _boot(built, "rom=copy", capacity=1000)
    assert len(t.events) == 1000
    assert t.dropped == t.status()["next_seq"] - 1000 > 0
    assert next(iter(t.events)).seq == t.dropped


def _same_events(a: list[tr.Event], b: list[tr.Event]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, tr.RomReturn) and x.call == "RDTSC":
            continue  # RDTSC answers with the host clock
        assert x == y


def test_breakpoints_on_rom_entries_do_not_record_a_call_twice(built: Built) -> None:
    """A stop at a hooked ROM entry (a gdb breakpoint there) and the resume run the C hook
    once: set before the tracer hooks the entry, and added after it did."""
    calm, _ = _boot(built, "rom=copy")
    calm_events = list(calm.events)
    entries = {e.call: e.entry for e in calm_events if isinstance(e, tr.RomCall)}
    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="rom=copy")
    t = VmiTracer(m)
    t.start()
    m.add_breakpoint(entries["SetLinearMapping"])  # before the ROM is even initialised
    hits = collections.Counter()
    while (stop := m.run()).reason is StopReason.BREAKPOINT:
        hits[stop.pc] += 1
        if stop.pc == entries["SetLinearMapping"] and hits[stop.pc] == 1:
            m.add_breakpoint(entries["SetPxE"])  # its C hook exists already
    assert stop.reason is StopReason.EXIT and stop.exit_code == 0, stop
    calls = collections.Counter(e.call for e in calm_events if isinstance(e, tr.RomCall))
    assert hits[entries["SetLinearMapping"]] == calls["SetLinearMapping"] > 0
    assert hits[entries["SetPxE"]] == calls["SetPxE"] > 100
    _same_events(calm_events, list(t.events))


def test_raw_log_decoded_in_pieces_gives_the_same_events(built: Built) -> None:
    """gdb decodes the stub's raw log itself, in replies of any size: the same events, the same
    seqs as the stub's own decode."""
    from vmigdb import events as ev
    from vmigdb.rawtrace import RawDecoder

    t, _ = _boot(built, "rom=copy")
    base, raw = t.raw(0, 1 << 30)
    assert base == 0 and len(raw) > 100_000
    decoder = RawDecoder()
    pieces = [decoder.feed(raw[i:i + 997]) for i in range(0, len(raw), 997)]  # cut anywhere
    assert list(ev.to_events(ev.concat(pieces))) == t.events
    t.clear()
    assert t.raw(0, 100) == (len(raw), b"")  # a reader still at 0 learns it lost the log


@pytest.mark.parametrize("cmdline", ["rom=copy", "stress=20", "rom=inplace"])
def test_bulk_decoding_equals_the_recorder_rules(built: Built, cmdline: str) -> None:
    """The vectorised decoder gives exactly the events the recorder's rules give one record at
    a time (tests/rawreference.py), for the demo guest's whole run, batched or not."""
    import rawreference

    from vmigdb import events as ev
    from vmigdb.rawtrace import RawDecoder

    t, _ = _boot(built, cmdline)
    _, raw = t.raw(0, 1 << 30)
    want = rawreference.decode(raw)
    assert len(want) > 5000
    assert list(ev.to_events(RawDecoder().feed(raw))) == want


def test_trace_packets_answer_and_refuse(built: Built) -> None:
    """qvmigdb.raw as the server calls it and gdb reads it (one codec, vmigdb.rawpacket): bad
    arguments are RspError (the server answers E01), a reader past the end gets an empty
    piece, a reply never inflates past what was asked."""
    from vmigdb import rawpacket
    from vmigdb.stub import rsp
    from vmigdb.stub.vmitrace import queries

    t, _ = _boot(built, "rom=copy")
    q = queries(t)[rawpacket.NAME.encode()]
    _, raw = t.raw(0, 1 << 30)
    assert rawpacket.parse_reply(q(b":0,100"), 0x100) == (0, raw[:0x100])
    assert rawpacket.parse_reply(q(b":%x,10" % (1 << 40)), 0x10) == (0, b"")
    with pytest.raises(rawpacket.RawPacketError):  # more than asked for
        rawpacket.parse_reply(q(b":0,100"), 0x80)
    for junk in (b"", b"zz;", b"0;not zlib", b"0"):
        with pytest.raises(rawpacket.RawPacketError):
            rawpacket.parse_reply(junk, 100)
    for bad in (b":zz,1", b":1", b"", b":-1,4"):
        with pytest.raises(rsp.RspError):
            q(bad)


def test_a_reader_that_falls_behind_learns_exactly_what_it_lost(built: Built) -> None:
    """The stub keeps a bounded raw log and event ring: a reader that did not keep up finds
    the log gone past its offset, and the ring says how many events went and from which seq,
    so nothing is lost silently."""
    from vmigdb import events as ev
    from vmigdb.rawtrace import RawDecoder

    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="stress=20")
    t = VmiTracer(m, capacity=10_000, log_limit=1 << 20)
    t.start()
    assert m.run().reason is StopReason.EXIT
    st = t.status()
    base, _ = t.raw(0, 100)
    assert base > 0 and st["raw_bytes"] <= (1 << 20) + (2 << 20)  # one collection past it
    assert st["events"] == 10_000 and st["dropped"] == st["next_seq"] - 10_000 > 100_000
    kept = list(t.dump(0))
    assert kept[0].seq == st["dropped"] and kept[-1].seq == st["next_seq"] - 1
    # What was kept is what a reader from the start would have decoded at those seqs.
    calm, _ = _boot(built, "stress=20")
    _, raw = calm.raw(0, 1 << 30)
    whole = list(ev.to_events(RawDecoder().feed(raw)))
    assert kept == whole[st["dropped"]:]


def test_a_reader_that_keeps_up_loses_nothing_at_the_bound(built: Built) -> None:
    """Past its bound the stub drops only the oldest part of its raw log: a reader that reads
    between runs (gdb at each stop) decodes every event from the log itself, across many
    bounds, exactly as a reader of the unbounded log."""
    from vmigdb import events as ev
    from vmigdb.rawtrace import RawDecoder
    from vmigdb.sites import ElfImage

    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="stress=20")
    t = VmiTracer(m, capacity=10_000, log_limit=1 << 20)
    t.start()
    symbols = ElfImage(built.guest.read_bytes()).symbols()
    m.add_breakpoint(next(a for a, _s, n in symbols if n == "pt_workload"))
    decoder, offset, got = RawDecoder(), 0, []
    while True:
        stop = m.run()
        base, data = t.raw(offset, 1 << 30)
        assert base <= offset, "a reader that kept up found bytes gone"
        got += ev.to_events(decoder.feed(data))
        offset += len(data)
        if stop.reason is not StopReason.BREAKPOINT:
            break
    assert stop.reason is StopReason.EXIT and t.raw(0, 0)[0] > 0  # the log was bounded
    calm, _ = _boot(built, "stress=20")
    _, raw = calm.raw(0, 1 << 30)
    assert got == list(ev.to_events(RawDecoder().feed(raw)))


def test_a_machine_reset_starts_a_fresh_trace(built: Built) -> None:
    """monitor reset (or gdb's kill): the trace starts again from seq 0 with the next run's
    events, the call counter too, and a reader of the raw log sees only the new run."""
    from vmigdb import events as ev
    from vmigdb.rawtrace import RawDecoder

    m = Machine.from_files(str(built.guest), rom=str(built.rom), cmdline="rom=copy")
    t = VmiTracer(m)
    t.start()
    assert m.run().reason is StopReason.EXIT
    first, calls = t.events, t.calls
    m.reset()
    assert t.status()["events"] == 0 and t.calls == 0 and t.enabled
    assert m.run().reason is StopReason.EXIT
    second = t.events
    assert t.calls == calls and len(second) == len(first) and second[0].seq == 0
    _same_events(first, second)
    decoder = RawDecoder()
    _, raw = t.raw(0, 1 << 30)
    assert list(ev.to_events(decoder.feed(raw))) == second and decoder.resets == 1


def test_a_dump_reply_stays_small(built: Built) -> None:
    """monitor vmi trace dump answers at most DUMP_MAX events, then says where to go on."""
    import json

    from vmigdb.stub.monitor import MonitorTable
    from vmigdb.stub.vmitrace import DUMP_MAX, register_monitor

    class Ctx:
        def __init__(self, machine: Machine) -> None:
            self.machine, self.phys_mode = machine, False

        def write(self, text: str) -> None:
            out.append(text)

    t, _ = _boot(built, "stress=5")
    table = MonitorTable()
    register_monitor(table, t)
    out: list[str] = []
    ctx = Ctx(t.machine)
    table.dispatch(ctx, "vmi trace dump")
    lines = [json.loads(ln) for ln in "".join(out).splitlines()]
    assert len(lines) == DUMP_MAX + 1 and lines[-1] == {"type": "more", "next": DUMP_MAX}
    out.clear()
    table.dispatch(ctx, f"vmi trace dump {DUMP_MAX} 3")
    assert [json.loads(ln)["seq"] for ln in "".join(out).splitlines()[:3]] == [
        DUMP_MAX, DUMP_MAX + 1, DUMP_MAX + 2]


def test_the_record_has_one_declaration() -> None:
    """struct vmigdb_trace_record (stub/native/vm.h, which cffi compiles) and the numpy dtype
    the decoders read (vmigdb.rawtrace.RECORD) agree field by field, flag by flag."""
    from vmigdb import rawtrace
    from vmigdb.stub.machine.native import ffi, lib

    struct = ffi.typeof("struct vmigdb_trace_record")
    assert rawtrace.RECORD.itemsize == ffi.sizeof(struct)
    fields = dict(struct.fields)
    assert list(fields) == list(rawtrace.RECORD.names)
    for name in rawtrace.RECORD.names:
        dtype, offset = rawtrace.RECORD.fields[name][:2]
        assert (offset, dtype.itemsize) == (fields[name].offset,
                                            ffi.sizeof(fields[name].type)), name
    assert (lib.TRACE_MEM_OK, lib.TRACE_STACK_OK, lib.TRACE_RETURN) == (
        rawtrace.MEM_OK, rawtrace.STACK_OK, rawtrace.RETURN)
    assert (lib.TRACE_REGS, lib.TRACE_STACK_WORDS) == (len(rawtrace.REGS), rawtrace.STACK_WORDS)
