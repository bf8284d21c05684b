"""Where two traces differ: every differing region, realigned after each, with context, and the
count differences; streamed, so two Linux boots compare in bounded memory.

The question behind it: does the same guest make the same ROM calls on two machines (vmigdb's
stub against QEMU), or with the ROM in place against copied? Events are compared without their
``seq`` (a trace may start later), ``clock`` and ``task`` (no two runs share them), with a
return's ``call_seq`` taken relative to its own position: how many events of the trace as given
back its call is (a selection that left events out counts what it kept). Values no two runs
share are ignored unless ``strict``: the results of calls that read a clock
(``VOLATILE_RESULTS``). ``relative``
compares ROM entries as offsets into the ROM and ignores the ROM's base, for a ROM that runs at
another address. ``pages`` compares page numbers by the order of their first use in each trace
(``PageNumbers``): two machines whose firmware leaves the guest other memory (QEMU's SeaBIOS and
vmigdb's machine) give it other page frames for the same work, and the kernel addresses of its
page tables differ with them. Physical page numbers (arguments of ABI kind pfn, pte, pa, cr3,
PTE write values, batched entries' new values) and virtual ones (kinds ptep and va, PTE write
and batched entry addresses) are renumbered apart, 1, 2, 3... as each trace first uses them;
offsets within a page and flag bits stay, and 0 stays 0 (no page). Two traces that differ only
in which frames the guest got compare equal; a page used where the other trace uses another
one it already used does not.

How it goes: each event becomes one row of normalised columns (``NORM``), so comparing is one
numpy equality per chunk. Where the traces stop matching, the diff looks ahead in both (windows
that grow from 64 to ``WINDOW`` events) for the nearest point where they match again: the
anchor is the pair of positions (p, q) with the smallest p + q at which ``ANCHOR`` events agree
(or the two traces' common tail), found with hashed k-grams (first occurrences, intersected).
The events before the anchor are one differing region: some only in A (removed), some only in
B (inserted), or both (changed). A difference longer than a window is reported in window-sized
regions. Memory: two windows and the context, whatever the traces' length.

Pure: works on ``vmigdb.events`` chunks; ``diff`` takes event objects (tests, gdb).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from vmigdb import abi
from vmigdb import events as ev
from vmigdb import trace as tr

#: Result registers of calls that read a clock or counter: they differ between any two runs.
VOLATILE_RESULTS: dict[str, tuple[str, ...]] = {
    "RDTSC": ("eax", "edx"),
    "RDPMC": ("eax", "edx"),
    "GetCycleCounter": ("eax", "edx"),
    "GetWallclockTime": ("eax", "edx"),
}
VOLATILE = "*"
#: Events that must agree for the traces to count as realigned.
ANCHOR = 8
#: The largest look-ahead, in events of each trace.
WINDOW = 1 << 16
_WINDOWS = (64, 1024, 16384, WINDOW)
#: Regions kept with their events (the rest are counted).
REGIONS = 20
#: Events of a region kept to show, per trace.
SHOWN = 8

NORM = np.dtype([("kind", "u1"), ("call", "u1"), ("entry", "<u4"), ("site", "<u4"),
                 ("a0", "<u4"), ("a1", "<u4"), ("a2", "<u4"), ("a3", "<u4"), ("a4", "<u4"),
                 ("dist", "<u8"), ("old", "<u8"), ("new", "<u8"), ("ents", "<u8")])
K = ev.Kind


def _table(width: dict[int, int]) -> np.ndarray:
    """Per call number: how many of a0..a4 a call (or its return) uses."""
    out = np.zeros(256, np.int64)
    for call, n in width.items():
        out[call] = n
    return out


_ARGS = _table({c: len(n) for c, n in ev.ARG_NAMES.items()})
_RESULTS = _table({c: len(n) for c, n in ev.RESULT_NAMES.items()})
#: Per call number and result column: whether that result is volatile.
_VOLATILE = np.zeros((256, 5), bool)
for _name, _regs in VOLATILE_RESULTS.items():
    _c = next(c for c, n in ev.CALL_NAMES.items() if n == _name)
    for _reg in _regs:
        _VOLATILE[_c, ev.RESULT_NAMES[_c].index(_reg)] = True
#: Columns used by each kind besides a0..a4 (the rest are zeroed so that they never differ).
_USED = {
    K.ROM_INIT: ("entry",), K.CALL: ("call", "entry", "site"), K.RETURN: ("call", "dist"),
    K.PTE: ("old", "new"), K.LAZY: (), K.FLUSH: ("ents",), K.SITE: ("call",),
}
_WIDTH = {K.ROM_INIT: 1, K.PTE: 4, K.LAZY: 2, K.FLUSH: 4, K.SITE: 5}
#: The event's field each normalised column stands for, by kind (to name what differs).
_FIELD_NAMES = {
    K.ROM_INIT: {"entry": "base", "a0": "batched"},
    K.CALL: {"call": "call", "entry": "entry", "site": "site", **{f"a{i}": "args"
                                                                 for i in range(5)}},
    K.RETURN: {"call": "call", "dist": "call_seq", **{f"a{i}": "results" for i in range(5)}},
    K.PTE: {"a0": "ptep", "a1": "flags", "a2": "deferred", "a3": "batch", "old": "old",
            "new": "new"},
    K.LAZY: {"a0": "old", "a1": "new"},
    K.FLUSH: {"a0": "batch", "a1": "count", "a2": "trigger", "a3": "tlb_action",
              "ents": "entries"},
    K.SITE: {"call": "reloc", "a0": "addr", "a1": "type", "a2": "len", "a3": "clobbers",
             "a4": "target"},
}


PHYSICAL, VIRTUAL = 0, 1  # page number spaces
#: ABI kinds that carry a page number: (its space, the bits below it) (see ``pages`` above).
PAGE_KINDS = {"pfn": (PHYSICAL, 0), "pte": (PHYSICAL, 12), "pa": (PHYSICAL, 12),
              "cr3": (PHYSICAL, 12), "ptep": (VIRTUAL, 12), "va": (VIRTUAL, 12)}
#: Results that are page numbers (the ABI names result registers only).
RESULT_KINDS = {"GetCR3": ("cr3",), "MachineToPhysical": ("pfn",),
                "PhysicalToMachine": ("pfn",)}
_PFN_BITS = 40  # a PTE's frame number (bits 12-51, PAE's too)


def _kind_table(kinds: dict[int, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Per call number and column a0..a4: page namespace (-1: none) and bits below it."""
    space = np.full((256, len(ev.ARGS)), -1, np.int8)
    shift = np.zeros((256, len(ev.ARGS)), np.int8)
    for call, names in kinds.items():
        for i, kind in enumerate(names[:len(ev.ARGS)]):
            if kind in PAGE_KINDS:
                space[call, i], shift[call, i] = PAGE_KINDS[kind]
    return space, shift


_ARG_PAGES = _kind_table({int(c): tuple(a.kind for a in s.args) for c, s in abi.CALLS.items()})
_RESULT_PAGES = _kind_table({int(abi.VmiCall[n]): k for n, k in RESULT_KINDS.items()})


class PageNumbers:
    """Page numbers as one trace first uses them: the first page seen is 1, the next new one 2,
    and so on; kept from chunk to chunk."""

    def __init__(self) -> None:
        self.known: dict[int, int] = {}

    def __call__(self, pages: np.ndarray) -> np.ndarray:
        """The numbers of ``pages`` (in their order of use)."""
        if not len(pages):
            return np.zeros(0, np.uint64)
        uniq, first, inverse = np.unique(pages, return_index=True, return_inverse=True)
        for page in uniq[np.argsort(first, kind="stable")].tolist():
            if page not in self.known:
                self.known[page] = len(self.known) + 1
        numbers = np.fromiter((self.known[p] for p in uniq.tolist()), np.uint64, len(uniq))
        return numbers[inverse.reshape(-1)]


@dataclass
class _Use:
    """Page-carrying values of one column, ``column[where]``: their events (index in the chunk)
    and order inside each event, and where the page number is (``field`` mask, ``shift`` up)."""

    space: int
    event: np.ndarray
    order: np.ndarray
    column: np.ndarray
    where: np.ndarray
    shift: np.ndarray
    field: int


def _renumber_pages(chunk: ev.Chunk, numbers: tuple[PageNumbers, PageNumbers]) -> ev.Chunk:
    """``chunk`` with its page numbers replaced by ``numbers``' (a copy; see ``pages``)."""
    cols = dict(chunk.cols)
    for name in (*ev.ARGS, "old", "new"):
        cols[name] = chunk[name].copy()
    entries = chunk.entries.copy()
    kinds, calls = chunk["kind"], chunk["call"]
    uses: list[_Use] = []

    def add(space: int, where: np.ndarray, event: np.ndarray, order: int | np.ndarray,
            column: np.ndarray, shift: int | np.ndarray, field: int = 0xFFFFFFFF) -> None:
        live = column[where] != 0
        if live.any():
            def each(x: int | np.ndarray, dtype: type) -> np.ndarray:
                return np.broadcast_to(np.asarray(x, dtype), where.shape)[live]
            uses.append(_Use(space, event[live], each(order, np.int64), column, where[live],
                             each(shift, np.uint64), field))

    for (space, shift), kind in ((_ARG_PAGES, ev.Kind.CALL), (_RESULT_PAGES, ev.Kind.RETURN)):
        rows = np.flatnonzero(kinds == kind)
        for i, name in enumerate(ev.ARGS):
            sp, sh = space[calls[rows], i], shift[calls[rows], i]
            for ns in (PHYSICAL, VIRTUAL):
                where = rows[sp == ns]
                add(ns, where, where, i, cols[name], sh[sp == ns])
    ptes = np.flatnonzero(kinds == ev.Kind.PTE)
    add(VIRTUAL, ptes, ptes, 0, cols["a0"], 12)
    add(PHYSICAL, ptes, ptes, 5, cols["old"], 12, (1 << _PFN_BITS) - 1)
    add(PHYSICAL, ptes, ptes, 6, cols["new"], 12, (1 << _PFN_BITS) - 1)
    if len(entries):
        every = np.arange(len(entries))
        event = np.searchsorted(chunk["seq"], entries["seq"])
        starts = np.flatnonzero(np.r_[True, entries["seq"][1:] != entries["seq"][:-1]])
        position = every - np.repeat(starts, np.diff(np.r_[starts, len(entries)]))
        add(VIRTUAL, every, event, 16 + 2 * position, entries["ptep"], 12)
        add(PHYSICAL, every, event, 17 + 2 * position, entries["lo"], 12)
    for ns, counter in ((PHYSICAL, numbers[0]), (VIRTUAL, numbers[1])):
        mine = [u for u in uses if u.space == ns]
        if not mine:
            continue
        values = np.concatenate([u.column[u.where].astype(np.uint64) for u in mine])
        shift = np.concatenate([u.shift for u in mine])
        field = np.concatenate([np.full(len(u.where), u.field, np.uint64) for u in mine])
        field = np.where(field == 0xFFFFFFFF, field >> shift, field)
        order = np.lexsort((np.concatenate([u.order for u in mine]),
                            np.concatenate([u.event for u in mine])))
        number = np.empty(len(values), np.uint64)
        number[order] = counter(((values >> shift) & field)[order])
        out = (values & ~(field << shift)) | (number << shift)
        at = 0
        for u in mine:
            u.column[u.where] = out[at:at + len(u.where)]
            at += len(u.where)
    return ev.Chunk(cols, entries)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, on uint64 arrays (wrapping)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hashes(norm: np.ndarray) -> np.ndarray:
    """One 64-bit hash per normalised event (equal events, equal hashes)."""
    h = np.zeros(len(norm), np.uint64)
    for name in NORM.names:
        h = _mix(h ^ norm[name].astype(np.uint64))
    return h


class Normalizer:
    """Events as the rows compared (``NORM``): what the version 1 comparison compared, field by
    field. State carries from chunk to chunk: the ROM's base (``relative``), the page numbers
    given so far (``pages``), and the volatile values ignored, by call number."""

    def __init__(self, *, strict: bool = False, relative: bool = False,
                 pages: bool = False) -> None:
        self.strict = strict
        self.relative = relative
        self.pages = pages
        self.numbers = (PageNumbers(), PageNumbers())  # physical, virtual
        self.base = 0
        self.ignored = np.zeros(256, np.int64)
        self.position = 0  # events normalised so far
        self._calls = (np.zeros(0, np.uint64), np.zeros(0, np.int64))  # last chunk's: seq, at

    def __call__(self, chunk: ev.Chunk) -> np.ndarray:
        if self.pages:
            chunk = _renumber_pages(chunk, self.numbers)
        n = len(chunk)
        kinds, calls = chunk["kind"], chunk["call"]
        out = np.zeros(n, NORM)
        out["kind"] = kinds
        width = np.zeros(n, np.int64)
        for kind, w in _WIDTH.items():
            width[kinds == kind] = w
        is_call, is_ret = kinds == K.CALL, kinds == K.RETURN
        width[is_call] = _ARGS[calls[is_call]]
        width[is_ret] = _RESULTS[calls[is_ret]]
        for i, name in enumerate(ev.ARGS):
            out[name] = np.where(width > i, chunk[name], 0)
        for kind, used in _USED.items():
            sel = kinds == kind
            for name in used:
                if name == "dist":
                    out["dist"][sel] = self._distances(chunk, sel)
                elif name == "ents":
                    out["ents"][sel] = _entry_hashes(chunk, chunk["seq"][sel])
                else:
                    out[name][sel] = chunk[name][sel]
        inits = kinds == K.ROM_INIT
        out["a0"][inits] = out["a0"][inits] != 0
        pte = kinds == K.PTE
        out["a2"][pte] &= ev.PTE_DEFERRED | ev.PTE_HAS_BATCH
        out["a3"][pte & (chunk["a2"] & ev.PTE_HAS_BATCH == 0)] = 0
        if self.relative:
            bases = np.where(inits, chunk["entry"], 0).astype(np.int64)
            idx = np.where(inits, np.arange(n), -1)
            np.maximum.accumulate(idx, out=idx)
            base = np.where(idx >= 0, bases[np.maximum(idx, 0)], self.base)
            out["entry"][is_call] = (chunk["entry"][is_call].astype(np.int64)
                                     - base[is_call]) & 0xFFFFFFFF
            out["entry"][inits] = 0
            if inits.any():
                self.base = int(chunk["entry"][np.flatnonzero(inits)[-1]])
        self._calls = (chunk["seq"][is_call].astype(np.uint64),
                       self.position + np.flatnonzero(is_call))
        self.position += n
        if not self.strict and is_ret.any():
            volatile = _VOLATILE[calls] & is_ret[:, None]
            for i, name in enumerate(ev.ARGS):
                out[name][volatile[:, i]] = 0
            self.ignored += np.bincount(calls, weights=volatile.sum(axis=1),
                                        minlength=256).astype(np.int64)
        return out

    def _distances(self, chunk: ev.Chunk, returns: np.ndarray) -> np.ndarray:
        """How many events back each return's call is, in the trace as given (a selection
        that left out events, as ``--no-interrupts`` does, counts what it kept); by seq when
        the call is not in this chunk or the last one."""
        calls = chunk["kind"] == K.CALL
        seqs = np.concatenate([self._calls[0], chunk["seq"][calls].astype(np.uint64)])
        at = np.concatenate([self._calls[1], self.position + np.flatnonzero(calls)])
        links = chunk["link"][returns].astype(np.uint64)
        here = self.position + np.flatnonzero(returns)
        found = np.minimum(np.searchsorted(seqs, links), max(len(seqs) - 1, 0))
        ok = (seqs[found] == links) if len(seqs) else np.zeros(len(links), bool)
        by_seq = chunk["seq"][returns].astype(np.int64) - links.astype(np.int64)
        return np.where(ok, here - (at[found] if len(at) else 0), by_seq)


def _entry_hashes(chunk: ev.Chunk, seqs: np.ndarray) -> np.ndarray:
    """One hash per flush (by seq) of its entries, in order."""
    out = np.zeros(len(seqs), np.uint64)
    e = chunk.entries
    if not len(e) or not len(seqs):
        return out
    owner = e["seq"]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    position = np.arange(len(e)) - np.repeat(starts, np.diff(np.r_[starts, len(e)]))
    h = _mix(position.astype(np.uint64))
    for name in ("ptep", "flags", "lo", "hi"):
        h = _mix(h ^ e[name].astype(np.uint64))
    sums = np.add.reduceat(h, starts)
    at = np.searchsorted(seqs, owner[starts])
    ok = at < len(seqs)
    ok[ok] = seqs[at[ok]] == owner[starts][ok]
    out[at[ok]] = sums[ok]
    return out


# --- results -------------------------------------------------------------------------------------


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
    """The first position where the traces differ, side by side; an event is None past a
    trace's end."""

    index: int
    a: tr.Event | None
    b: tr.Event | None
    fields: tuple[str, ...]  # the differing fields when both events have the same type


@dataclass(frozen=True)
class Region:
    """A stretch where the traces differ: ``a_len`` events of A from ``a_start`` stand where
    B has ``b_len`` from ``b_start`` (0 of A: B inserted them; 0 of B: A's were removed)."""

    a_start: int
    a_len: int
    b_start: int
    b_len: int
    a_events: tuple[tr.Event, ...]  # the first SHOWN of them
    b_events: tuple[tr.Event, ...]
    before: tuple[tuple[tr.Event, tr.Event], ...]  # matching events just before (A, B)
    after: tuple[tuple[tr.Event, tr.Event], ...]  # and just after, where the traces agree again
    fields: tuple[str, ...] = ()  # one event each, same type: the fields that differ
    same: tuple[bool, ...] = ()  # as many events each: which shown pairs are equal anyway
    unequal: int = 0  # as many events each: how many pairs differ

    @property
    def what(self) -> str:
        if not self.a_len:
            return f"B has {self.b_len} event{'s' * (self.b_len != 1)} A lacks"
        if not self.b_len:
            return f"A has {self.a_len} event{'s' * (self.a_len != 1)} B lacks"
        if self.fields:
            return f"fields {', '.join(self.fields)} differ"
        if self.a_len == self.b_len and self.unequal:
            return f"{self.unequal} of {self.a_len} events differ"
        return f"{self.a_len} event{'s' * (self.a_len != 1)} of A stand for {self.b_len} of B"


@dataclass(frozen=True)
class TraceDiff:
    len_a: int
    len_b: int
    first: Divergence | None
    context_a: tuple[tr.Event, ...]  # events around the first divergence (or empty)
    context_b: tuple[tr.Event, ...]
    context_start: int  # the index of context_a[0] / context_b[0]
    calls: tuple[CountDiff, ...]  # call names whose counts differ
    types: tuple[CountDiff, ...]  # event types whose counts differ
    ignored: dict[str, int]  # volatile values ignored in the first trace, by call (strict: {})
    regions: tuple[Region, ...] = ()  # the first ones, with their events
    region_count: int = 0  # every region
    differing_a: int = 0  # events of A in regions
    differing_b: int = 0

    @property
    def equivalent(self) -> bool:
        return self.first is None


# --- the streamed comparison --------------------------------------------------------------------


class _Side:
    """One trace being compared: a window of its chunks, their normalised rows, its counts."""

    def __init__(self, chunks: Iterable[ev.Chunk], norm: Normalizer, keep: int) -> None:
        self._it: Iterator[ev.Chunk] = iter(chunks)
        self._norm = norm
        self.keep = keep  # events kept before the position (context)
        self.start = 0  # absolute index of the window's first event
        self.chunk = ev.Chunk.empty()
        self.rows = np.zeros(0, NORM)
        self.done = False
        self.calls = np.zeros(256, np.int64)
        self.kinds = np.zeros(len(K), np.int64)

    @property
    def end(self) -> int:
        """Absolute index one past the last event read."""
        return self.start + len(self.rows)

    def fill(self, upto: int) -> None:
        """Read until events up to ``upto`` (exclusive) are in the window, or the trace ends."""
        parts, rows = [self.chunk], [self.rows]
        have = self.end
        while not self.done and have < upto:
            try:
                c = next(self._it)
            except StopIteration:
                self.done = True
                break
            if not len(c):
                continue
            kinds = c["kind"]
            self.kinds += np.bincount(kinds, minlength=len(K))[:len(K)]
            self.calls += np.bincount(c["call"][kinds == K.CALL], minlength=256)
            parts.append(c)
            rows.append(self._norm(c))
            have += len(c)
        if len(parts) > 1:
            self.chunk = ev.concat(parts)
            self.rows = np.concatenate(rows)

    def at(self, lo: int, hi: int) -> np.ndarray:
        """Normalised rows [lo, hi) (absolute), as far as read."""
        return self.rows[max(lo - self.start, 0):max(hi - self.start, 0)]

    def events(self, lo: int, hi: int) -> tuple[tr.Event, ...]:
        lo, hi = max(lo - self.start, 0), max(min(hi - self.start, len(self.rows)), 0)
        if lo >= hi:
            return ()
        return tuple(ev.to_events(self.chunk.select(slice(lo, hi))))

    def drop(self, before: int) -> None:
        """Forget events before ``before`` but the context (when that frees most of the
        window: copying it on every step would cost more than it saves)."""
        cut = before - self.keep - self.start
        if cut > 0 and cut >= len(self.rows) // 2:
            self.chunk = self.chunk.select(slice(cut, None))
            self.rows = self.rows[cut:]
            self.start += cut

    def drain(self) -> None:
        """Read to the end, counting, keeping nothing (what is left past a decided diff)."""
        while not self.done:
            self.fill(self.end + WINDOW)
            self.drop(self.end)


def _grams(h: np.ndarray, k: int) -> np.ndarray:
    """The hash of each run of k consecutive events (len(h) - k + 1 of them)."""
    n = len(h) - k + 1
    g = np.zeros(n, np.uint64)
    for r in range(k):
        g = _mix(g ^ h[r:r + n])
    return g


def _anchor(a: _Side, b: _Side, i: int, j: int) -> tuple[int, int]:
    """(p, q): the nearest point after (i, j) where the traces agree again, as offsets."""
    # The common case first: values changed, events neither added nor removed, so the traces
    # agree again in step (clock readings under --strict, other addresses).
    step = _in_step(a, b, i, j)
    if step is not None:
        return step, step
    for w in _WINDOWS:
        a.fill(i + w)
        b.fill(j + w)
        wa, wb = a.at(i, i + w), b.at(j, j + w)
        a_all, b_all = a.done and i + len(wa) == a.end, b.done and j + len(wb) == b.end
        found = _best(wa, wb, a_all, b_all)
        if found is not None:
            return found
        if a_all and b_all:
            return len(wa), len(wb)
    return len(wa), len(wb)


def _in_step(a: _Side, b: _Side, i: int, j: int, reach: int = _WINDOWS[0]) -> int | None:
    """The first t >= 1 (below ``reach``) where both traces agree again for ANCHOR events in
    step (or to both their ends), else None."""
    a.fill(i + reach + ANCHOR)
    b.fill(j + reach + ANCHOR)
    wa, wb = a.at(i, i + reach + ANCHOR), b.at(j, j + reach + ANCHOR)
    n = min(len(wa), len(wb))
    same = (wa[:n] == wb[:n]).astype(np.int64)
    if n > ANCHOR:
        runs = np.convolve(same, np.ones(ANCHOR, np.int64), "valid")  # runs[t]: same[t:t+K]
        hits = np.flatnonzero(runs[1:] == ANCHOR)
        if len(hits):
            return int(hits[0]) + 1
    if n and a.done and b.done and len(wa) == len(wb) == a.end - i == b.end - j:
        last = np.flatnonzero(same == 0)[-1]  # both tails agree after it (or both end there)
        return int(last) + 1
    return None


def _best(wa: np.ndarray, wb: np.ndarray, a_all: bool, b_all: bool) -> tuple[int, int] | None:
    """The anchor with the smallest p + q in two windows (``*_all``: the window holds the rest
    of its trace, so a shorter common tail counts too)."""
    candidates: list[tuple[int, int, int]] = []
    k = min(ANCHOR, len(wa), len(wb))
    if k and (k == ANCHOR or a_all or b_all):
        ga, gb = _grams(hashes(wa), k), _grams(hashes(wb), k)
        ua, ia = np.unique(ga, return_index=True)
        ub, ib = np.unique(gb, return_index=True)
        _, ca, cb = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
        p, q = ia[ca], ib[cb]
        order = np.argsort(p + q, kind="stable")[:16]
        for o in order.tolist():
            pp, qq = int(p[o]), int(q[o])
            if k < ANCHOR and not (pp + k == len(wa) and a_all or qq + k == len(wb) and b_all):
                continue  # a short match is an anchor only as a trace's tail
            if (wa[pp:pp + k] == wb[qq:qq + k]).all():
                candidates.append((pp + qq, pp, qq))
                break
    if a_all and b_all:
        n = min(len(wa), len(wb))
        same = wa[len(wa) - n:][::-1] == wb[len(wb) - n:][::-1]
        tail = int(np.argmin(same)) if not same.all() else n
        if tail:
            candidates.append((len(wa) + len(wb) - 2 * tail, len(wa) - tail, len(wb) - tail))
    if not candidates:
        return None
    _, p0, q0 = min(candidates)
    return (p0, q0) if p0 or q0 else None


def _fields(x: np.ndarray, y: np.ndarray) -> tuple[str, ...]:
    """The event fields that differ between two normalised events."""
    kind = int(x["kind"])
    if kind != int(y["kind"]):
        return ("type",)
    names = _FIELD_NAMES.get(K(kind), {}) if kind < len(K) else {}
    return tuple(sorted({names.get(f, f) for f in NORM.names if x[f] != y[f]}))


def _counts(a: dict[str, int], b: dict[str, int]) -> tuple[CountDiff, ...]:
    names = sorted(a.keys() | b.keys(), key=lambda n: (-max(a.get(n, 0), b.get(n, 0)), n))
    return tuple(CountDiff(n, a.get(n, 0), b.get(n, 0)) for n in names
                 if a.get(n, 0) != b.get(n, 0))


def diff_chunks(a: Iterable[ev.Chunk], b: Iterable[ev.Chunk], *, context: int = 3,
                strict: bool = False, relative: bool = False, pages: bool = False,
                regions: int = REGIONS, progress: Callable[[], None] | None = None
                ) -> TraceDiff:
    """Compare two traces given as chunks, streaming (see the module docstring). ``regions``:
    how many regions keep their events (0: all); ``progress`` is called as the work goes."""
    norm_a = Normalizer(strict=strict, relative=relative, pages=pages)
    norm_b = Normalizer(strict=strict, relative=relative, pages=pages)
    keep = max(context, 0)
    sa, sb = _Side(a, norm_a, keep), _Side(b, norm_b, keep)
    i = j = 0
    first: Divergence | None = None
    ctx: tuple[tuple[tr.Event, ...], tuple[tr.Event, ...], int] = ((), (), 0)
    found: list[Region] = []
    count = in_a = in_b = 0
    probe = 256  # events compared in one step: small after a region (the next may be close)
    while True:
        sa.fill(i + WINDOW)
        sb.fill(j + WINDOW)
        if progress is not None:
            progress()
        ra, rb = sa.at(i, i + probe), sb.at(j, j + probe)  # empty only at a trace's end
        if not len(ra) and not len(rb):
            break
        m = min(len(ra), len(rb))
        mismatch = np.flatnonzero(ra[:m] != rb[:m])
        if m and not len(mismatch):
            i, j = i + m, j + m
            sa.drop(i)
            sb.drop(j)
            probe = min(probe * 4, WINDOW)
            continue
        probe = 256
        k = int(mismatch[0]) if len(mismatch) else m
        i, j = i + k, j + k
        sa.fill(i + context + 1)
        sb.fill(j + context + 1)
        if first is None:
            ea, eb = sa.events(i, i + 1), sb.events(j, j + 1)
            fields = _fields(sa.at(i, i + 1)[0], sb.at(j, j + 1)[0]) if ea and eb else ()
            first = Divergence(i, ea[0] if ea else None, eb[0] if eb else None, fields)
            lo = max(i - context, 0)
            ctx = (sa.events(lo, i + context + 1), sb.events(lo, j + context + 1), lo)
        ended = sa.end <= i or sb.end <= j  # one trace has ended: the rest of the other
        keep_events = not regions or len(found) < regions
        if ended:
            if keep_events:
                found.append(_region(sa, sb, i, sa.end - i, j, sb.end - j, context))
            rest_a, rest_b = sa.end - i, sb.end - j
            sa.drain()
            sb.drain()
            p, q = sa.end - i, sb.end - j
            if keep_events and (p, q) != (rest_a, rest_b):
                found[-1] = _resized(found[-1], p, q)
        else:
            p, q = _anchor(sa, sb, i, j)
            if keep_events:
                found.append(_region(sa, sb, i, p, j, q, context))
        count += 1
        in_a += p
        in_b += q
        i, j = i + p, j + q
        sa.drop(i)
        sb.drop(j)
    sa.drain()
    sb.drain()
    types_a = {ev.KIND_NAMES[K(k)]: int(n) for k, n in enumerate(sa.kinds) if n}
    types_b = {ev.KIND_NAMES[K(k)]: int(n) for k, n in enumerate(sb.kinds) if n}
    calls_a = {ev.CALL_NAMES[c]: int(n) for c, n in enumerate(sa.calls) if n}
    calls_b = {ev.CALL_NAMES[c]: int(n) for c, n in enumerate(sb.calls) if n}
    ignored = {ev.CALL_NAMES[c]: int(n) for c, n in enumerate(norm_a.ignored) if n}
    return TraceDiff(sa.end, sb.end, first, ctx[0], ctx[1], ctx[2], _counts(calls_a, calls_b),
                     _counts(types_a, types_b), ignored, tuple(found), count, in_a, in_b)


def _resized(r: Region, a_len: int, b_len: int) -> Region:
    return Region(r.a_start, a_len, r.b_start, b_len, r.a_events, r.b_events, r.before, (),
                  r.fields, ())


def _region(sa: _Side, sb: _Side, i: int, p: int, j: int, q: int, context: int) -> Region:
    sa.fill(i + p + context)
    sb.fill(j + q + context)
    fields: tuple[str, ...] = ()
    if p == 1 and q == 1:
        fields = _fields(sa.at(i, i + 1)[0], sb.at(j, j + 1)[0])
    same: tuple[bool, ...] = ()
    unequal = 0
    if p == q:
        pairs = sa.at(i, i + p) == sb.at(j, j + q)
        same, unequal = tuple(pairs[:SHOWN].tolist()), int(len(pairs) - pairs.sum())
    before = tuple(zip(sa.events(i - context, i), sb.events(j - context, j), strict=False))
    after = tuple(zip(sa.events(i + p, i + p + context), sb.events(j + q, j + q + context),
                      strict=False))
    return Region(i, p, j, q, sa.events(i, i + min(p, SHOWN)), sb.events(j, j + min(q, SHOWN)),
                  before, after, fields, same, unequal)


def diff(a: Sequence[tr.Event], b: Sequence[tr.Event], *, context: int = 3,
         strict: bool = False, relative: bool = False, pages: bool = False,
         regions: int = REGIONS) -> TraceDiff:
    """Compare two traces given as event objects."""
    return diff_chunks([ev.from_events(a)], [ev.from_events(b)], context=context,
                       strict=strict, relative=relative, pages=pages, regions=regions)
