"""A trace as Chrome trace-event JSON for timeline viewers (ui.perfetto.dev, chrome://tracing),
written as the event columns stream by.

**Time.** An event's timestamp is its virtual clock (the machine's nanoseconds, ``clock``),
written in microseconds with three decimals (``ts``), so slices last as long as the guest's
calls did in virtual time. A trace without a clock (version 1 files, a QEMU capture) falls
back to the event's ``seq`` as microseconds (one event = 1 µs); ``otherData.clock`` says which.

**Tracks.** Process 1 ("vmigdb") holds the machine-wide tracks: tid 1 "ROM calls" (calls whose
task is unknown), tid 2 "lazy-MMU batches" (one slice per batch, from the first update the ROM
queued for it to the last PTE write its flush applied), tid 3 "lazy mode" (one slice per
stretch of lazy MMU mode). When the trace names the guest's tasks, process 2 ("guest tasks")
has a track per task: tid = the task's pid, named by its comm (a task the trace has no name
for gets tid = its task_struct pointer's low 31 bits). ROM calls, PTE writes, lazy-mode changes
and vmi_init go on the track of the task that made them.

**Slices.** A ROM call with a return event is a complete slice (``ph: X``) from its call to its
return. A call without one (no result registers, or its return was not seen) has no end in the
trace: a zero-length slice at its call. PTE writes, lazy-mode changes and vmi_init are instant
events. docs/trace-format.md describes the mapping field by field.

Memory is bounded: calls waiting for their return (at most ``PENDING``), the open batch and
lazy stretch, the names of the tasks seen so far.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from vmigdb import abi
from vmigdb import events as ev
from vmigdb.batches import enum_name

PID = 1
PID_TASKS = 2
TID_CPU = 1
TID_BATCHES = 2
TID_LAZY = 3
TRACKS = {TID_CPU: "ROM calls", TID_BATCHES: "lazy-MMU batches", TID_LAZY: "lazy mode"}
#: Calls that may wait for their return at once (the recorder keeps 64).
PENDING = 1024
_HAS_RESULTS = np.zeros(256, bool)
for _call, _spec in abi.CALLS.items():
    _HAS_RESULTS[int(_call)] = bool(_spec.results) and _spec.returns


def _us(ns: int) -> str:
    """Nanoseconds as microseconds with three decimals (Chrome JSON's unit is the µs)."""
    return f"{ns // 1000}.{ns % 1000:03d}"


def _hex_template(names: tuple[str, ...]) -> str:
    """``"name":"0x.."`` pairs as one %-template, for a call's arguments or results."""
    return ",".join(f'"{n}":"%#x"' for n in names)


#: Per call number: its arguments' and results' templates, and how many values each takes.
_ARGS = {c: (_hex_template(n), len(n)) for c, n in ev.ARG_NAMES.items()}
_RESULTS = {c: (_hex_template(n), len(n)) for c, n in ev.RESULT_NAMES.items()}


class ChromeTraceWriter:
    """Writes one JSON document to ``out`` as chunks come (``add``), closed by ``close``.

    ``tasks`` is the live {task pointer: (pid, comm)} of the trace being read
    (``TraceFile.tasks`` fills as its batches are read, before their events are handed out)."""

    def __init__(self, out: IO[str], *, title: str = "vmigdb",
                 tasks: Mapping[int, tuple[int, str]] | None = None,
                 format_version: int | None = None) -> None:
        self.out = out
        self.tasks = tasks if tasks is not None else {}
        self.format_version = format_version
        self.events = 0
        self._clock: bool | None = None  # decided by the first chunk: virtual clock or seq
        self._first = True
        self._tids: dict[int, tuple[int, str]] = {}  # task pointer -> (tid, name written)
        self._open: dict[int, list[Any]] = {}  # call seq -> [pid, tid, time, ts, name, args]
        self._stacks: dict[int, list[int]] = {}  # tid -> open call seqs, oldest first
        self._batch: list[Any] | None = None  # [number, start, end, args] of the open batch
        self._queued_since: int | None = None  # time of the first queued update since a flush
        self._lazy_since: int | None = None
        self._last = 0
        out.write('{"traceEvents":[\n')
        self._emit(f'{{"ph":"M","pid":{PID},"name":"process_name",'
                   f'"args":{{"name":{json.dumps(title)}}}}}')
        for tid, name in TRACKS.items():
            self._emit(f'{{"ph":"M","pid":{PID},"tid":{tid},"name":"thread_name",'
                       f'"args":{{"name":"{name}"}}}}')
            self._emit(f'{{"ph":"M","pid":{PID},"tid":{tid},"name":"thread_sort_index",'
                       f'"args":{{"sort_index":{tid}}}}}')

    def _emit(self, text: str) -> None:
        self.out.write(text if self._first else ",\n" + text)
        self._first = False

    # --- tracks ------------------------------------------------------------------------------
    def _track(self, task: int) -> tuple[int, int]:
        """(pid, tid) of the track for a task pointer, naming it when new or renamed."""
        if not task:
            return PID, TID_CPU
        known = self.tasks.get(task)
        seen = self._tids.get(task)
        if seen is not None and known is not None and seen == (known[0], known[1]):
            return PID_TASKS, seen[0]
        if known is not None:
            tid, name = known[0], known[1]
        else:
            tid, name = task & 0x7FFFFFFF, f"task {task:#x}"
        if self._tids.get(task) != (tid, name):
            if not self._tids:  # the process's name, with its first track
                self._emit(f'{{"ph":"M","pid":{PID_TASKS},"name":"process_name",'
                           f'"args":{{"name":"guest tasks"}}}}')
            self._tids[task] = (tid, name)
            self._emit(f'{{"ph":"M","pid":{PID_TASKS},"tid":{tid},"name":"thread_name",'
                       f'"args":{{"name":{json.dumps(name)}}}}}')
        return PID_TASKS, tid

    # --- events ------------------------------------------------------------------------------
    def add(self, chunk: ev.Chunk, queued: np.ndarray | None = None) -> None:
        """Write a chunk's events. ``queued``: the mask of its calls the ROM queued
        (``costs.CostTally.add``), for where each batch starts; without it a batch starts at
        its flush."""
        n = len(chunk)
        if not n:
            return
        if self._clock is None:
            self._clock = bool(chunk["clock"].any())
        times = chunk["clock"] if self._clock else chunk["seq"]
        time_text = ([_us(t) for t in times.tolist()] if self._clock
                     else [str(t) for t in times.tolist()])
        queued_list = queued.tolist() if queued is not None else [False] * n
        rows = zip(chunk["seq"].tolist(), chunk["kind"].tolist(), chunk["call"].tolist(),
                   times.tolist(), time_text, chunk["task"].tolist(), chunk["entry"].tolist(),
                   chunk["site"].tolist(), chunk["a0"].tolist(), chunk["a1"].tolist(),
                   chunk["a2"].tolist(), chunk["a3"].tolist(), chunk["a4"].tolist(),
                   chunk["link"].tolist(), chunk["old"].tolist(), chunk["new"].tolist(),
                   queued_list, strict=True)
        for (seq, kind, call, t, ts, task, entry, site, a0, a1, a2, a3, a4, link, old, new,
             is_queued) in rows:
            self._last = t
            if kind == ev.Kind.CALL:
                self._call(seq, call, t, ts, task, entry, site, [a0, a1, a2, a3, a4])
                if is_queued and self._queued_since is None:
                    self._queued_since = t
            elif kind == ev.Kind.RETURN:
                self._return(seq, call, t, link, [a0, a1, a2, a3])
            elif kind == ev.Kind.PTE:
                pid, tid = self._track(task)
                batch = a3 if a2 & ev.PTE_HAS_BATCH else None
                self._emit(f'{{"ph":"i","s":"t","pid":{pid},"tid":{tid},"ts":{ts},'
                           f'"name":"pte write","cat":"pte","args":{{"seq":{seq},'
                           f'"ptep":"{a0:#x}","old":"{old:#x}","new":"{new:#x}",'
                           f'"flags":"{a1:#x}","deferred":{"true" if a2 & 1 else "false"},'
                           f'"batch":{"null" if batch is None else batch}}}}}')
                if self._batch is not None and batch == self._batch[0]:
                    self._batch[2] = t
            elif kind == ev.Kind.LAZY:
                self._lazy(seq, t, ts, task, a0, a1)
            elif kind == ev.Kind.FLUSH:
                self._flush(seq, t, a0, a1, a2, a3)
            elif kind == ev.Kind.ROM_INIT:
                pid, tid = self._track(task)
                self._emit(f'{{"ph":"i","s":"t","pid":{pid},"tid":{tid},"ts":{ts},'
                           f'"name":"vmi_init","cat":"rom_init","args":{{"seq":{seq},'
                           f'"base":"{entry:#x}","batched":{"true" if a0 else "false"}}}}}')
        self.events += n

    def _call(self, seq: int, call: int, t: int, ts: str, task: int, entry: int, site: int,
              a: list[int]) -> None:
        pid, tid = self._track(task) if task else (PID, TID_CPU)
        name = ev.CALL_NAMES[call]
        template, n = _ARGS[call]
        args = f'"seq":{seq},"entry":"{entry:#x}","site":"{site:#x}"'
        if n:
            args += "," + template % tuple(a[:n])
        if not _HAS_RESULTS[call]:
            self._emit(f'{{"ph":"X","pid":{pid},"tid":{tid},"ts":{ts},"dur":0,'
                       f'"name":"{name}","cat":"rom_call","args":{{{args}}}}}')
            return
        self._open[seq] = [pid, tid, t, ts, name, args]
        self._stacks.setdefault(tid, []).append(seq)
        if len(self._open) > PENDING:
            oldest = min(self._open)
            self._close_unreturned(oldest)

    def _return(self, seq: int, call: int, t: int, link: int, a: list[int]) -> None:
        slot = self._open.pop(link, None)
        if slot is None:
            return  # its call came before the trace, or was closed already
        pid, tid, t0, ts, name, args = slot
        stack = self._stacks.get(tid, [])
        if link in stack:  # calls opened inside it and not returned end with it
            for inner in stack[stack.index(link) + 1:]:
                self._close_unreturned(inner, keep_stack=True)
            del stack[stack.index(link):]
        template, n = _RESULTS[call]
        results = template % tuple(a[:n])
        dur = _us(t - t0) if self._clock else str(t - t0 + 1)
        self._emit(f'{{"ph":"X","pid":{pid},"tid":{tid},"ts":{ts},"dur":{dur},'
                   f'"name":"{name}","cat":"rom_call","args":{{{args},'
                   f'"return_seq":{seq},"results":{{{results}}}}}}}')

    def _close_unreturned(self, seq: int, keep_stack: bool = False) -> None:
        slot = self._open.pop(seq, None)
        if slot is None:
            return
        pid, tid, _t0, ts, name, args = slot
        if not keep_stack:
            stack = self._stacks.get(tid, [])
            if seq in stack:
                stack.remove(seq)
        self._emit(f'{{"ph":"X","pid":{pid},"tid":{tid},"ts":{ts},"dur":0,'
                   f'"name":"{name}","cat":"rom_call","args":{{{args},"return":"not seen"}}}}')

    def _lazy(self, seq: int, t: int, ts: str, task: int, old: int, new: int) -> None:
        pid, tid = self._track(task)
        name = f"lazy {abi.LAZY_MODE_NAMES.get(new, new)}"
        self._emit(f'{{"ph":"i","s":"t","pid":{pid},"tid":{tid},"ts":{ts},"name":"{name}",'
                   f'"cat":"lazy","args":{{"seq":{seq},"old":{old},"new":{new}}}}}')
        if new == abi.VMI_LAZY_MMU_UPDATES and self._lazy_since is None:
            self._lazy_since = t
        elif new != abi.VMI_LAZY_MMU_UPDATES and self._lazy_since is not None:
            self._slice(TID_LAZY, self._lazy_since, t, "lazy MMU", "lazy", "")
            self._lazy_since = None

    def _flush(self, seq: int, t: int, number: int, count: int, trigger: int,
               tlb: int) -> None:
        self._end_batch()
        start = self._queued_since if self._queued_since is not None else t
        args = (f'"seq":{seq},"count":{count},'
                f'"trigger":"{enum_name(abi.FlushTrigger, trigger)}",'
                f'"tlb_action":"{enum_name(abi.TlbAction, tlb)}"')
        self._batch = [number, start, t, args]
        self._queued_since = None

    def _end_batch(self) -> None:
        if self._batch is not None:
            number, start, end, args = self._batch
            self._slice(TID_BATCHES, start, end, f"batch {number}", "batch", args)
            self._batch = None

    def _slice(self, tid: int, start: int, end: int, name: str, cat: str, args: str) -> None:
        end = max(end, start)
        ts = _us(start) if self._clock else str(start)
        dur = _us(end - start) if self._clock else str(end - start + 1)
        self._emit(f'{{"ph":"X","pid":{PID},"tid":{tid},"ts":{ts},"dur":{dur},'
                   f'"name":"{name}","cat":"{cat}","args":{{{args}}}}}')

    def close(self, *, complete: bool = True, producer: str = "vmigdb export") -> None:
        """End the slices still open and the document."""
        for seq in sorted(self._open):
            self._close_unreturned(seq)
        self._end_batch()
        if self._lazy_since is not None:
            self._slice(TID_LAZY, self._lazy_since, self._last, "lazy MMU", "lazy", "")
            self._lazy_since = None
        clock = ("virtual clock (ts in µs, ns precision)" if self._clock
                 else "event seq (1 event = 1 us)")
        other = {"producer": producer, "clock": clock, "format_version": self.format_version,
                 "events": self.events, "truncated": not complete}
        unit = "ns" if self._clock else "ms"
        self.out.write(f'\n],"displayTimeUnit":"{unit}","otherData":'
                       f'{json.dumps(other)}}}\n')
