"""A trace as Chrome trace-event JSON, for timeline viewers (ui.perfetto.dev, chrome://tracing).

Events carry no wall-clock time, only their order, so the timeline's clock is logical: an
event's ``seq`` is its timestamp in microseconds (one event = 1 us). Tracks, all in process 1:

* tid 1 "CPU": each ROM call is a complete slice (``ph: X``) from its call event to its return
  (a call without a return event ends where the next call or return begins, inside any call that
  encloses it); PTE writes, lazy-mode changes and vmi_init are instant events on it;
* tid 2 "lazy-MMU batches": one slice per batch, from the first update the ROM queued for it to
  the last PTE write its flush applied;
* tid 3 "lazy mode": one slice per stretch of lazy MMU mode.

Metadata events (``ph: M``) name the process and the tracks and fix their order. docs/
trace-format.md describes the mapping field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmigdb import abi
from vmigdb import trace as tr
from vmigdb.costs import queued_calls

PID = 1
TID_CPU = 1
TID_BATCHES = 2
TID_LAZY = 3
TRACKS = {TID_CPU: "CPU", TID_BATCHES: "lazy-MMU batches", TID_LAZY: "lazy mode"}


def _hex(d: dict[str, int]) -> dict[str, str]:
    return {k: f"{v:#x}" for k, v in d.items()}


def _meta(name: str, tid: int | None, args: dict[str, Any]) -> dict[str, Any]:
    e: dict[str, Any] = {"ph": "M", "pid": PID, "name": name, "args": args}
    if tid is not None:
        e["tid"] = tid
    return e


def _call_slices(events: Sequence[tr.Event]) -> list[dict[str, Any]]:
    returns = {e.call_seq: e for e in events if isinstance(e, tr.RomReturn)}
    bounds = [e.seq for e in events if isinstance(e, (tr.RomCall, tr.RomReturn))]
    last = events[-1].seq + 1 if events else 0
    out = []
    open_ends: list[int] = []  # ends of the calls that enclose the current one
    k = 0  # index into bounds of the current call
    for e in events:
        if not isinstance(e, tr.RomCall):
            continue
        while open_ends and open_ends[-1] <= e.seq:
            open_ends.pop()
        while bounds[k] != e.seq:
            k += 1
        ret = returns.get(e.seq)
        end = ret.seq + 1 if ret is not None else (bounds[k + 1] if k + 1 < len(bounds)
                                                   else last)
        if open_ends:
            end = min(end, open_ends[-1])
        end = max(end, e.seq + 1)
        args: dict[str, Any] = {"seq": e.seq, "entry": f"{e.entry:#x}", "site": f"{e.site:#x}",
                                **_hex(e.args)}
        if ret is not None:
            args["results"] = _hex(ret.results)
        out.append({"ph": "X", "pid": PID, "tid": TID_CPU, "ts": e.seq, "dur": end - e.seq,
                    "name": e.call, "cat": "rom_call", "args": args})
        open_ends.append(end)
    return out


def _instants(events: Sequence[tr.Event]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        if isinstance(e, tr.PteWrite):
            name, args = "pte write", {"ptep": f"{e.ptep:#x}", "old": f"{e.old:#x}",
                                       "new": f"{e.new:#x}", "flags": f"{e.flags:#x}",
                                       "deferred": e.deferred, "batch": e.batch}
        elif isinstance(e, tr.LazyMode):
            name = f"lazy {abi.LAZY_MODE_NAMES.get(e.new, e.new)}"
            args = {"old": e.old, "new": e.new}
        elif isinstance(e, tr.RomInit):
            name, args = "vmi_init", {"base": f"{e.base:#x}", "batched": e.batched}
        else:
            continue
        out.append({"ph": "i", "s": "t", "pid": PID, "tid": TID_CPU, "ts": e.seq,
                    "name": name, "cat": e.TYPE, "args": {"seq": e.seq, **args}})
    return out


def _batch_slices(events: Sequence[tr.Event]) -> list[dict[str, Any]]:
    queued = sorted(queued_calls(events))
    last_write: dict[int, int] = {}
    for e in events:
        if isinstance(e, tr.PteWrite) and e.batch is not None:
            last_write[e.batch] = e.seq
    out = []
    prev = -1
    qi = 0
    for e in events:
        if not isinstance(e, tr.BatchFlush):
            continue
        while qi < len(queued) and queued[qi] <= prev:
            qi += 1
        start = queued[qi] if qi < len(queued) and queued[qi] < e.seq else e.seq
        end = max(last_write.get(e.batch, e.seq), e.seq) + 1
        out.append({"ph": "X", "pid": PID, "tid": TID_BATCHES, "ts": start, "dur": end - start,
                    "name": f"batch {e.batch}", "cat": "batch",
                    "args": {"seq": e.seq, "count": e.count, "trigger": e.trigger,
                             "tlb_action": e.tlb_action}})
        prev = e.seq
    return out


def _lazy_slices(events: Sequence[tr.Event]) -> list[dict[str, Any]]:
    out = []
    since: int | None = None
    for e in events:
        if isinstance(e, tr.LazyMode):
            if e.new == abi.VMI_LAZY_MMU_UPDATES and since is None:
                since = e.seq
            elif e.new != abi.VMI_LAZY_MMU_UPDATES and since is not None:
                out.append({"ph": "X", "pid": PID, "tid": TID_LAZY, "ts": since,
                            "dur": e.seq - since + 1, "name": "lazy MMU", "cat": "lazy"})
                since = None
    if since is not None and events:
        out.append({"ph": "X", "pid": PID, "tid": TID_LAZY, "ts": since,
                    "dur": events[-1].seq - since + 1, "name": "lazy MMU", "cat": "lazy"})
    return out


def chrome_trace(t: tr.Trace, title: str = "vmigdb") -> dict[str, Any]:
    """The whole trace as a Chrome trace-event JSON object (``json.dump`` it)."""
    events = t.events
    meta = [_meta("process_name", None, {"name": f"{title} ({t.meta.get('target', 'guest')})"})]
    for tid, name in TRACKS.items():
        meta.append(_meta("thread_name", tid, {"name": name}))
        meta.append(_meta("thread_sort_index", tid, {"sort_index": tid}))
    body = (_call_slices(events) + _instants(events) + _batch_slices(events)
            + _lazy_slices(events))
    body.sort(key=lambda e: (e["ts"], e["tid"], -e.get("dur", 0)))  # parents first
    return {
        "traceEvents": meta + body,
        "displayTimeUnit": "ms",
        "otherData": {"producer": "vmigdb report", "clock": "event seq (1 event = 1 us)",
                      "format_version": t.meta.get("version"), "truncated": t.truncated},
    }
