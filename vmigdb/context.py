"""Linux context of trace events: who made each ROM call, and in what state the kernel was.

Pure (no gdb, no unicorn): both trace paths fill one ``CallContext`` per ROM call, beside the
events (``vmigdb.trace`` objects and ``vmigdb.events`` columns carry neither the caller's frame
nor the stack pointer, and the version 1 file format stays as it is):

* ``ret``: the call's return address. The caller is shown as the function+offset of this
  address, not of ``site`` (return address - 5, the recorder's rule for ``call rel32``): Linux
  also reaches the ROM with ``call *pv_op`` (6 bytes) and ``call *%reg`` (2 bytes), where ret - 5
  is inside the instruction. The return address is exact for every form, needs no decoding,
  and is what ``bt`` shows for the caller's frame.
* ``frame``: the caller's own return address, ``[EBP + 4]`` at the call (the kernel keeps frame
  pointers: CONFIG_FRAME_POINTER). The stub's tracer records six stack words at ESP, so it is
  known there when ``EBP + 4`` falls among them (every vmi_* wrapper of 2.6.32 does, and so does
  most kernel code calling a patched site); the portable path reads it.
* ``above``: the stack word right above the frame word, ``[EBP + 8]``, when the stub recorded
  it (0 otherwise). When the caller's caller called Linux's glue as its very first instruction
  (``arch_enter_lazy_mmu_mode``: ``call *pv_mmu_ops...; ret``, no frame of its own), it pushed
  nothing else: this word is then its own return address, into the function that really made
  the call (``copy_page_range``, ``unmap_vmas``), which the frame-pointer chain skips.
* ``task``: the kernel's current task pointer (``current_task``, per cpu); names (pid, comm)
  come from ``TaskNames``, by when each task was seen.
* ``esp``: the stack pointer at the ROM entry, and ``flags``: an IRET back to kernel mode
  (``IRET_KERNEL``), and what the kernel said about interrupt context when that was read
  (``IRQ_KNOWN``/``IRQ``: the portable path reads the per-cpu ``irq_regs``, set by do_IRQ for
  the whole of an interrupt, its softirqs included).

On top: interrupt regions from the events alone (``interrupt_rows``), the events that belong
to given calls (``owned_events``), a profile by call x kernel caller (``profile``) and what
opened each lazy-MMU batch (``batch_causes``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vmigdb import abi, pvops, rawtrace
from vmigdb import events as ev
from vmigdb import trace as tr

CONTEXT = np.dtype([
    ("seq", "<u8"), ("call", "u1"), ("task", "<u4"), ("ret", "<u4"), ("frame", "<u4"),
    ("esp", "<u4"), ("clock", "<u8"), ("flags", "u1"), ("above", "<u4"),
])
IRET_KERNEL = 1  # an IRET whose frame returns to kernel mode (CS RPL 0): a handler ends
IRQ_KNOWN = 2  # the kernel's interrupt state was read at this call
IRQ = 4  # ... and it was in an interrupt (irq_regs set)
#: Bytes from an IRET's return address (its stack pointer at the ROM entry) down to the
#: registers Linux's i386 entry code saved below the CPU's frame (pt_regs.bx: 12 words below
#: pt_regs.ip, which is 4 bytes above the return address): a handler's calls all ran below them.
SAVED_BELOW_IRET = 44
#: Words of the stack the stub records at the ROM entry (the return address first).
_WORDS = rawtrace.STACK_WORDS
_ESP, _EBP = rawtrace.REGS.index("esp"), rawtrace.REGS.index("ebp")
_IRET = int(abi.VmiCall.IRET)
#: Call numbers below this are ROM calls in a raw record (above: returns and port markers).
_FIRST_MARKER = 0xFFFFFF00


def frame_word(esp: int, ebp: int, stack: Sequence[int]) -> int:
    """``[EBP + 4]`` when it is among ``stack`` (words at ESP, the return address first), else
    0: the return address of the function that made the call."""
    off = (ebp + 4 - esp) & 0xFFFFFFFF
    if off % 4 or not 8 <= off < 4 * len(stack):
        return 0
    return stack[off // 4]


def iret_to_kernel(call: int, stack: Sequence[int]) -> bool:
    """An IRET whose frame (EIP, CS, EFLAGS after the return address) goes back to ring 0."""
    return call == _IRET and len(stack) > 2 and (stack[2] & 3) == 0


class CallContext:
    """One row (``CONTEXT``) per ROM call, in seq order; appended as the trace grows."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._rows: np.ndarray | None = np.zeros(0, CONTEXT)
        #: Call paths beyond ``frame`` where a path was read (portable path: the EBP chain at
        #: SetLazyMode calls): seq -> return addresses, innermost first.
        self.paths: dict[int, tuple[int, ...]] = {}

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self._parts.append(rows)
            self._rows = None

    def append(self, seq: int, call: int, task: int, ret: int, frame: int, esp: int,
               clock: int = 0, flags: int = 0, above: int = 0) -> None:
        self.add(np.array([(seq, call, task, ret, frame, esp, clock, flags, above)], CONTEXT))

    def clear(self) -> None:
        self._parts.clear()
        self._rows = np.zeros(0, CONTEXT)
        self.paths.clear()

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = (np.concatenate(self._parts) if self._parts
                          else np.zeros(0, CONTEXT))
            self._parts = [self._rows] if len(self._rows) else []
        return self._rows

    def __len__(self) -> int:
        return len(self.rows)

    def at(self, seq: int) -> np.void | None:
        """The row of the call with this seq, or None."""
        rows = self.rows
        i = int(np.searchsorted(rows["seq"], seq))
        return rows[i] if i < len(rows) and int(rows["seq"][i]) == seq else None

    def between(self, first: int | None = None, last: int | None = None) -> np.ndarray:
        """The rows with first <= seq <= last."""
        rows = self.rows
        lo = 0 if first is None else int(np.searchsorted(rows["seq"], first, "left"))
        hi = len(rows) if last is None else int(np.searchsorted(rows["seq"], last, "right"))
        return rows[lo:hi]


# --- the stub's raw log: the context of each call record ---------------------------------------


class RawCalls:
    """Reads the ROM call records of a raw log (``vmigdb.rawtrace`` items) as context rows, one
    per call event ``RawDecoder`` makes of the same bytes, in the same order: records the hook
    could not read the stack for are skipped as the decoder skips them, and a reset item drops
    the rows before it in the same piece as the decoder drops their events. The rows' ``seq``
    is 0: the caller pairs them with the decoder's call events.

    Task items name the tasks of the records item before them, as the stub read them when it
    collected those records: ``named`` gets (task, pid, name, lo, hi) for each, ``lo:hi`` the
    rows of that records item (a task struct the kernel reuses is named again, for the rows
    from there on)."""

    def __init__(self) -> None:
        self._pending = b""
        self.named: list[tuple[int, int, str, int, int]] = []

    def feed(self, data: bytes) -> tuple[np.ndarray, bool]:
        """(rows, whether a reset item came) for the whole items in what came so far."""
        buf = self._pending + data if self._pending else data
        pos = 0
        parts: list[bytes] = []
        reset = False
        rows = last = 0  # rows so far in this piece; where the last records item's began
        while (head := rawtrace.item_header(buf, pos)) is not None:
            kind, start, end = head
            if kind == b"R":
                parts.append(buf[start:end])
                last = rows
                rows += _call_rows(np.frombuffer(parts[-1], rawtrace.RECORD))
            elif kind == b"T":
                self.named.append((*rawtrace.parse_task_item(bytes(buf[start:end])), last,
                                   rows))
            elif kind == b"X":
                parts.clear()
                self.named.clear()
                rows = last = 0
                reset = True
            pos = end
        self._pending = bytes(buf[pos:])
        if not parts:
            return np.zeros(0, CONTEXT), reset
        return context_of_records(np.frombuffer(b"".join(parts), rawtrace.RECORD)), reset


def _is_call(recs: np.ndarray) -> np.ndarray:
    """The ROM call records (not returns or markers) whose stack the hook could read."""
    return (recs["call"] < _FIRST_MARKER) & ((recs["flags"] & rawtrace.STACK_OK) != 0)


def _call_rows(recs: np.ndarray) -> int:
    return int(np.count_nonzero(_is_call(recs)))


def context_of_records(recs: np.ndarray) -> np.ndarray:
    """Context rows of the ROM call records among ``recs`` (``rawtrace.RECORD``)."""
    keep = _is_call(recs)
    recs = recs[keep]
    out = np.zeros(len(recs), CONTEXT)
    if not len(recs):
        return out
    stack = recs["stack"]
    esp = recs["regs"][:, _ESP]
    ebp = recs["regs"][:, _EBP]
    off = (ebp.astype(np.int64) + 4 - esp.astype(np.int64)) & 0xFFFFFFFF
    ok = (off % 4 == 0) & (off >= 8) & (off < 4 * _WORDS)
    index = np.where(ok, off // 4, 0).astype(np.intp)
    frame = np.where(ok, stack[np.arange(len(recs)), index], 0)
    up = ok & (index + 1 < _WORDS)
    above = np.where(up, stack[np.arange(len(recs)), np.minimum(index + 1, _WORDS - 1)], 0)
    out["call"] = recs["call"].astype(np.uint8)
    out["task"] = recs["task"]
    out["ret"] = stack[:, 0]
    out["frame"] = frame
    out["above"] = above
    out["esp"] = esp
    out["clock"] = recs["ticks"] * np.uint64(rawtrace.NS_PER_TICK)
    iret = (recs["call"] == _IRET) & ((stack[:, 2] & 3) == 0)
    out["flags"] = np.where(iret, IRET_KERNEL, 0)
    return out


def pair_with_calls(rows: np.ndarray, chunk: ev.Chunk) -> np.ndarray | None:
    """``rows`` with the seqs of ``chunk``'s call events (the decoder's events of the same
    bytes), or None when they do not pair up (then the context of that piece is unknown)."""
    calls = chunk["kind"] == ev.Kind.CALL
    seqs = chunk["seq"][calls]
    if len(seqs) != len(rows) or not np.array_equal(
            (chunk["site"][calls] + np.uint32(5)).astype(np.uint32), rows["ret"]):
        return None
    rows = rows.copy()
    rows["seq"] = seqs
    return rows


# --- tasks ---------------------------------------------------------------------------------------


@dataclass
class TaskNames:
    """pid and comm of each task pointer, by the seq from which they held (a task struct is
    reused by a later task, and an exec renames one)."""

    _by_task: dict[int, list[tuple[int, int, str]]] = field(default_factory=dict)

    def add(self, task: int, pid: int, comm: str, from_seq: int = 0) -> None:
        seen = self._by_task.setdefault(task, [])
        if seen and seen[-1][1:] == (pid, comm):
            return
        bisect.insort(seen, (from_seq, pid, comm))

    def get(self, task: int, seq: int | None = None) -> tuple[int, str] | None:
        seen = self._by_task.get(task)
        if not seen:
            return None
        if seq is None:
            return seen[-1][1:]
        i = bisect.bisect_right(seen, (seq, 1 << 62, "")) - 1
        return seen[max(i, 0)][1:]

    def label(self, task: int, seq: int | None = None) -> str:
        """``pid comm``, the pointer when unnamed, '' for no task."""
        if not task:
            return ""
        named = self.get(task, seq)
        return f"{named[0]} {named[1]}" if named else f"{task:#x}"

    @staticmethod
    def _names(spec: str, pid: int, comm: str) -> bool:
        """Whether a ``--task`` value (a pid, else a comm) names this pid and comm."""
        text = spec.strip()
        return pid == int(text) if text.lstrip("-").isdigit() else comm == spec

    def matching(self, spec: str) -> set[int]:
        """Task pointers a ``--task`` value names at some time: a pid or a comm."""
        return {task for task, seen in self._by_task.items()
                if any(self._names(spec, pid, comm) for _s, pid, comm in seen)}

    def holds(self, spec: str, task: int, seq: int) -> bool:
        """Whether ``task`` was the task a ``--task`` value names at ``seq`` (as ``get`` names
        it then: the kernel reuses a task struct for later tasks, and an exec renames one)."""
        named = self.get(task, seq) if task else None
        return named is not None and self._names(spec, *named)

    def mask(self, spec: str, task: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """Which of the calls (their task pointers and seqs) were made by a task a ``--task``
        value names, at the time: each pointer counts only while it held that pid or comm."""
        keep = np.zeros(len(task), bool)
        for ptr in self.matching(spec):
            seen = self._by_task[ptr]
            mine = task == ptr
            for i, (start, pid, comm) in enumerate(seen):
                if not self._names(spec, pid, comm):
                    continue
                lo = 0 if i == 0 else start  # before its first naming: named as the first
                hi = seen[i + 1][0] if i + 1 < len(seen) else None
                span = seq >= lo if hi is None else (seq >= lo) & (seq < hi)
                keep |= mine & span
        return keep

    def clear(self) -> None:
        self._by_task.clear()

    def __len__(self) -> int:
        return len(self._by_task)


# --- interrupt regions ----------------------------------------------------------------------------


def interrupt_rows(rows: np.ndarray) -> np.ndarray:
    """Which calls ran in an interrupt (or exception) handler, from the events alone.

    Every handler that interrupted kernel code ends with an IRET back to kernel mode, made on
    the interrupted task's stack right above the frame the CPU pushed and the registers the
    entry code saved below it (``SAVED_BELOW_IRET``); the handler's calls all ran deeper on
    that stack. So, walking back from each such IRET, the calls of the same task whose stack
    pointer lies below the saved registers belong to the handler (nested handlers included),
    up to the first call at or above them, which the interrupted code made. (Calls the
    interrupted code made before, from deeper functions that had returned, lie below too: the
    walk stops at the interrupted code's last call when it was made from less deep than the
    saved registers, as from the interrupted function or its direct callees.) Where the
    kernel's interrupt state was read (``IRQ_KNOWN``, the portable path), the walk also stops
    at a call made outside an interrupt before the interrupt's own calls. The IRET itself is
    part of the handler. Kernel-mode exceptions (a page fault on a user address) end the same
    way and count too."""
    n = len(rows)
    out = np.zeros(n, bool)
    if not n:
        return out
    esp, task, flags = rows["esp"].astype(np.int64), rows["task"], rows["flags"]
    known, irq = (flags & IRQ_KNOWN) != 0, (flags & IRQ) != 0
    for i in np.flatnonzero((flags & IRET_KERNEL) != 0).tolist():
        out[i] = True
        limit, owner = esp[i] - SAVED_BELOW_IRET, task[i]
        in_irq = False
        j = i - 1
        while j >= 0 and task[j] == owner and esp[j] < limit:
            if known[j]:
                if irq[j]:
                    in_irq = True
                elif in_irq:
                    break
            out[j] = True
            j -= 1
    return out


def owned_events(events: Iterable[tr.Event], call_seqs: set[int]) -> set[int]:
    """The seqs of every event that belongs to one of these calls: the call, its return, and
    what the recorder emitted for it (a lazy-mode change, PTE writes, a flush it caused): the
    events after a call up to the next call are that call's."""
    out: set[int] = set()
    owner: int | None = None
    for e in events:
        if isinstance(e, tr.RomCall):
            owner = e.seq
            if e.seq in call_seqs:
                out.add(e.seq)
        elif isinstance(e, tr.RomReturn):
            if e.call_seq in call_seqs:
                out.add(e.seq)
        elif owner is not None and owner in call_seqs:
            out.add(e.seq)
    return out


# --- callers -------------------------------------------------------------------------------------

#: Linux's paravirt glue: the vmi_* functions activate_vmi() installs in pv_*_ops, which only
#: pass a call on to the ROM. A call they make is attributed to their caller.
GLUE: frozenset[str] = frozenset(rule.wrapper for rule in pvops.OPS.values() if rule.wrapper)

Name = Callable[[int], str]


def function_of(symbol: str) -> str:
    """``func`` of a ``func+0x1c`` symbol ('' stays '')."""
    return symbol.split("+", 1)[0]


def kernel_caller(ret: int, frame: int, name: Name, glue: frozenset[str] = GLUE
                  ) -> tuple[str, str]:
    """(kernel caller, the glue it went through or ''): the function holding the return
    address, or for a call made by Linux's paravirt glue, the glue's caller (``?`` when the
    tracer did not see it)."""
    caller = function_of(name(ret)) or f"{ret:#x}"
    if caller not in glue:
        return caller, ""
    above = function_of(name(frame)) if frame else ""
    return (above or "?"), caller


@dataclass(frozen=True)
class ProfileRow:
    call: str
    caller: str  # the kernel function that made the call (past Linux's vmi_* glue)
    via: str  # the glue it went through, or ''
    count: int
    of_call: float  # share of this call's count
    of_all: float  # share of every call counted


def profile(rows: np.ndarray, name: Name, glue: frozenset[str] = GLUE) -> list[ProfileRow]:
    """ROM calls by VMI call x kernel caller, most first: count, share of the call, share of
    all. ``rows``: the context rows of the calls to count; ``name``: symbol of an address."""
    if not len(rows):
        return []
    keys = np.zeros(len(rows), [("call", "u1"), ("ret", "<u4"), ("frame", "<u4")])
    keys["call"], keys["ret"], keys["frame"] = rows["call"], rows["ret"], rows["frame"]
    uniq, counts = np.unique(keys, return_counts=True)
    tally: Counter[tuple[str, str, str]] = Counter()
    for (call, ret, frame), n in zip(uniq.tolist(), counts.tolist(), strict=True):
        caller, via = kernel_caller(ret, frame, name, glue)
        tally[(ev.CALL_NAMES.get(call, str(call)), caller, via)] += n
    per_call: Counter[str] = Counter()
    for (call, _c, _v), n in tally.items():
        per_call[call] += n
    total = sum(per_call.values())
    return [ProfileRow(call, caller, via, n, n / per_call[call], n / total)
            for (call, caller, via), n in sorted(tally.items(),
                                                 key=lambda kv: (-kv[1], kv[0]))]


# --- what opened each batch -----------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCause:
    """Who opened a lazy-MMU batch and what happened in it before its flush."""

    batch: int
    task: int  # the task of the SetLazyMode(MMU) call (0: unknown)
    opener: int | None  # that call's seq (None: lazy mode was on before the trace began)
    path: tuple[str, ...]  # the kernel functions that opened it, innermost first (no glue)
    deferred: int  # updates the ROM queued and the flush applied
    immediate: int  # PTE writes the ROM made at once while the batch was open
    trigger: str  # why it flushed (abi.FlushTrigger name)


#: Whether a return address directly follows its function's first instruction, a call (so the
#: function pushed nothing before it); None: not known.
FirstCall = Callable[[int], bool] | None


def is_first_call(head: bytes) -> bool:
    """Whether ``head`` (a function's bytes from its start to a return address in it) is one
    call instruction: ``call rel32`` (E8) or ``call r/m32`` (FF /2) of exactly that length."""
    if len(head) == 5 and head[0] == 0xE8:
        return True
    return 2 <= len(head) <= 7 and head[0] == 0xFF and (head[1] >> 3) & 7 == 2


def opener_path(ctx_row: np.void | None, path: Sequence[int], name: Name,
                glue: frozenset[str] = GLUE, first_call: FirstCall = None) -> tuple[str, ...]:
    """The kernel functions on the way to a call, innermost first, without Linux's glue:
    ``path`` when one was read (return addresses), else the call's return address and frame;
    a frame whose function only passed the call on (it called the glue as its first
    instruction, ``first_call`` says) is skipped like the glue, for the word above it: that
    function's own return address (``above``), into the function that made the call."""
    addrs = list(path)
    if not addrs and ctx_row is not None:
        addrs = [int(ctx_row["ret"]), int(ctx_row["frame"])]
        above = int(ctx_row["above"])
        if addrs[1] and above and first_call is not None and first_call(addrs[1]):
            addrs[1] = above
    out: list[str] = []
    for a in addrs:
        if not a:
            break
        f = function_of(name(a)) or f"{a:#x}"
        if f in glue or (out and out[-1] == f):
            continue
        out.append(f)
    return tuple(out)


def batch_causes(events: Iterable[tr.Event], ctx: CallContext, name: Name,
                 glue: frozenset[str] = GLUE, first_call: FirstCall = None
                 ) -> dict[int, BatchCause]:
    """For each batch flush: the SetLazyMode call that entered lazy MMU mode before it (its
    task and kernel path), the updates deferred into it and the PTE writes made at once while
    it was open, and the flush's trigger."""
    out: dict[int, BatchCause] = {}
    last_call: tr.RomCall | None = None
    opener: tr.RomCall | None = None
    immediate = 0
    for e in events:
        if isinstance(e, tr.RomCall):
            last_call = e
        elif isinstance(e, tr.LazyMode):
            if e.new == abi.VMI_LAZY_MMU_UPDATES and e.old != abi.VMI_LAZY_MMU_UPDATES:
                opener = last_call
                immediate = 0
        elif isinstance(e, tr.PteWrite):
            if not e.deferred:
                immediate += 1
        elif isinstance(e, tr.BatchFlush):
            row = ctx.at(opener.seq) if opener is not None else None
            path = ctx.paths.get(opener.seq, ()) if opener is not None else ()
            out[e.batch] = BatchCause(
                e.batch, int(row["task"]) if row is not None else 0,
                opener.seq if opener is not None else None,
                opener_path(row, path, name, glue, first_call) if opener is not None else (),
                e.count, immediate, e.trigger)
            immediate = 0
    return out


# --- the guest's lazy-MMU sections ----------------------------------------------------------------

_PTE_CALLS = frozenset(abi.VmiCall[n].name for n in ("SetPxE", "SetPxELong", "UpdatePxE",
                                                     "UpdatePxELong"))


@dataclass(frozen=True)
class LazySection:
    """One stretch of lazy MMU mode, from the SetLazyMode call that entered it to the one that
    left it: the batch the guest asked for, whether or not the ROM batches (an in-place ROM,
    Linux's case, cannot: its state is read-only, so it applies every update at once)."""

    number: int  # in the trace, from 1
    seq: int  # the entering SetLazyMode call's seq
    end_seq: int | None  # the leaving call's seq (None: open at the end of the trace)
    task: int  # the entering call's task (0: unknown)
    path: tuple[str, ...]  # the kernel functions that entered it, innermost first (no glue)
    deferred: int  # PTE updates the guest let the ROM defer (VMI_PAGE_DEFER)
    immediate: int  # PTE updates that had to take effect at once (no VMI_PAGE_DEFER)
    flushes: tuple[tuple[int, str], ...]  # the ROM's batch flushes inside: (batch, trigger)
    ended_by: str  # how it ended: the mode it left to ("OFF", "CPU"), '' while open

    @property
    def trigger(self) -> str:
        """What flushed it: the ROM's triggers for a batching ROM, else leaving lazy mode."""
        if self.flushes:
            return ", ".join(dict.fromkeys(t for _b, t in self.flushes))
        return f"left lazy mode ({self.ended_by})" if self.ended_by else "still open"


def lazy_sections(events: Iterable[tr.Event], ctx: CallContext | None, name: Name,
                  glue: frozenset[str] = GLUE, first_call: FirstCall = None
                  ) -> list[LazySection]:
    """Every lazy-MMU section in the events, with who entered it (task, kernel path), the
    updates made in it by whether the guest let them be deferred, and how it was flushed."""
    out: list[LazySection] = []
    last_call: tr.RomCall | None = None
    opener: tr.RomCall | None = None
    deferred = immediate = 0
    flushes: list[tuple[int, str]] = []
    # A section that was left, kept open until the next call: the flush that leaving lazy
    # mode makes comes after the mode change.
    leaving: tuple[tr.RomCall | None, str] | None = None

    def close() -> None:
        nonlocal opener, leaving
        assert opener is not None
        end, ended_by = leaving if leaving is not None else (None, "")
        row = ctx.at(opener.seq) if ctx is not None else None
        path = ctx.paths.get(opener.seq, ()) if ctx is not None else ()
        out.append(LazySection(len(out) + 1, opener.seq, end.seq if end else None,
                               int(row["task"]) if row is not None else 0,
                               opener_path(row, path, name, glue, first_call), deferred,
                               immediate,
                               tuple(flushes), ended_by))
        opener = leaving = None

    for e in events:
        if isinstance(e, tr.RomCall):
            if leaving is not None:
                close()
            last_call = e
            if opener is not None and e.call in _PTE_CALLS:
                if e.args.get("flags", 0) & abi.VMI_PAGE_DEFER:
                    deferred += 1
                else:
                    immediate += 1
        elif isinstance(e, tr.LazyMode):
            entering = e.new == abi.VMI_LAZY_MMU_UPDATES
            if leaving is not None:
                close()
            if opener is not None and not entering:
                leaving = (last_call, abi.LAZY_MODE_NAMES.get(e.new, str(e.new)))
            if entering and opener is None:
                opener, deferred, immediate, flushes = last_call, 0, 0, []
        elif isinstance(e, tr.BatchFlush) and opener is not None:
            flushes.append((e.batch, e.trigger))
    if opener is not None:
        close()
    return out
