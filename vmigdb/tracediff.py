"""Where two traces diverge: the first differing event with its context, and count differences.

The question behind it: does the same guest make the same ROM calls on two machines (vmigdb's
stub against QEMU), or with the ROM in place against copied? Events are compared position by
position without their ``seq`` (a trace may start later) and with a return's ``call_seq`` taken
relative to its own position. Values no two runs share are ignored unless ``strict``: the
results of calls that read a clock (``VOLATILE_RESULTS``). ``relative`` compares ROM entries as
offsets into the ROM and ignores the ROM's base, for a ROM that runs at another address.

Pure: works on ``vmigdb.trace`` events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmigdb import trace as tr

#: Result registers of calls that read a clock or counter: they differ between any two runs.
VOLATILE_RESULTS: dict[str, tuple[str, ...]] = {
    "RDTSC": ("eax", "edx"),
    "RDPMC": ("eax", "edx"),
    "GetCycleCounter": ("eax", "edx"),
    "GetWallclockTime": ("eax", "edx"),
}
VOLATILE = "*"


@dataclass(frozen=True)
class CountDiff:
    """One name (a call, an event type) counted in both traces."""

    name: str
    a: int
    b: int

    @property
    def delta(self) -> int:
        return self.b - self.a


@dataclass(frozen=True)
class Divergence:
    """The first position where the traces differ; an event is None past a trace's end."""

    index: int
    a: tr.Event | None
    b: tr.Event | None
    fields: tuple[str, ...]  # the differing fields when both events have the same type


@dataclass(frozen=True)
class TraceDiff:
    len_a: int
    len_b: int
    first: Divergence | None
    context_a: tuple[tr.Event, ...]  # events around the divergence (or empty)
    context_b: tuple[tr.Event, ...]
    context_start: int  # the index of context_a[0] / context_b[0]
    calls: tuple[CountDiff, ...]  # call names whose counts differ
    types: tuple[CountDiff, ...]  # event types whose counts differ
    ignored: dict[str, int]  # volatile values ignored in the first trace, by call (strict: {})

    @property
    def equivalent(self) -> bool:
        return self.first is None


def normalize(events: Sequence[tr.Event], *, strict: bool = False,
              relative: bool = False) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Each event as the dict compared, and the volatile values blanked, by call name."""
    out = []
    ignored: Counter[str] = Counter()
    base = 0
    for e in events:
        d = e.to_json()
        del d["seq"]
        if isinstance(e, tr.RomInit):
            base = e.base
            if relative:
                del d["base"]
        elif isinstance(e, tr.RomCall) and relative:
            d["entry"] = e.entry - base
        elif isinstance(e, tr.RomReturn):
            d["call_seq"] = e.seq - e.call_seq  # how far back its call is
            if not strict:
                results = dict(e.results)
                for reg in VOLATILE_RESULTS.get(e.call, ()):
                    if reg in results:
                        results[reg] = VOLATILE
                        ignored[e.call] += 1
                d["results"] = results
        out.append(d)
    return out, ignored


def _fields(x: dict[str, Any], y: dict[str, Any]) -> tuple[str, ...]:
    if x.get("type") != y.get("type"):
        return ("type",)
    return tuple(k for k in sorted(x.keys() | y.keys()) if x.get(k) != y.get(k))


def _counts(a: Counter[str], b: Counter[str]) -> tuple[CountDiff, ...]:
    names = sorted(a.keys() | b.keys(), key=lambda n: (-max(a[n], b[n]), n))
    return tuple(CountDiff(n, a[n], b[n]) for n in names if a[n] != b[n])


def diff(a: Sequence[tr.Event], b: Sequence[tr.Event], *, context: int = 3,
         strict: bool = False, relative: bool = False) -> TraceDiff:
    """Compare two traces (see the module docstring)."""
    na, ignored_a = normalize(a, strict=strict, relative=relative)
    nb, _ = normalize(b, strict=strict, relative=relative)
    first: Divergence | None = None
    for i, (x, y) in enumerate(zip(na, nb)):
        if x != y:
            first = Divergence(i, a[i], b[i], _fields(x, y))
            break
    else:
        n = min(len(a), len(b))
        if len(a) != len(b):
            first = Divergence(n, a[n] if n < len(a) else None, b[n] if n < len(b) else None,
                               ())
    lo = hi = 0
    if first is not None:
        lo = max(first.index - context, 0)
        hi = first.index + context + 1
    calls_a = Counter(e.call for e in a if isinstance(e, tr.RomCall))
    calls_b = Counter(e.call for e in b if isinstance(e, tr.RomCall))
    types_a = Counter(e.TYPE for e in a)
    types_b = Counter(e.TYPE for e in b)
    return TraceDiff(len(a), len(b), first, tuple(a[lo:hi]), tuple(b[lo:hi]), lo,
                     _counts(calls_a, calls_b), _counts(types_a, types_b), dict(ignored_a))
