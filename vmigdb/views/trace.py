"""The call trace: trace events as a table, arguments and results decoded by their ABI kind.

A ROM call and its return are one row (the return's results joined by ``call_seq``); lazy-mode
changes, PTE writes and batch flushes get their own rows so the order of what happened shows.
With the calls' Linux context (``describe``), a call's row names its caller (the return address
as function+offset: exact whatever call instruction Linux used) and its task (pid and comm).
The profile (``render_profile``) counts calls by VMI call x kernel caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi, decode
from vmigdb import trace as tr
from vmigdb.context import ProfileRow
from vmigdb.views.console import fit_columns

Symbolize = Callable[[int], str]
#: A call's (caller, task) as a row shows them.
Describe = Callable[[tr.RomCall], tuple[str, str]]


def _kinds(call: str) -> dict[str, str]:
    try:
        spec = abi.CALLS[abi.VmiCall[call]]
    except KeyError:
        return {}
    return {a.name: a.kind for a in spec.args}


def format_value(name: str, value: int, kind: str) -> str:
    """``name=0x... (decoded)``; the decoded part only when the kind says something."""
    text = f"{name}={value:#x}"
    meaning = decode.describe(kind, value)
    return f"{text} ({meaning})" if meaning else text


def format_args(call: str, args: dict[str, int]) -> str:
    kinds = _kinds(call)
    return " ".join(format_value(k, v, kinds.get(k, "u32")) for k, v in args.items())


def format_results(results: dict[str, int]) -> str:
    return " ".join(f"{k}={v:#x}" for k, v in results.items())


def select(events: Iterable[tr.Event], *, call: str | None = None, since: int | None = None,
           only: set[int] | None = None) -> list[tr.Event]:
    """The events a trace view shows: returns folded into calls, optional filters (``only``:
    the seqs to keep, when a filter chose them)."""
    out = []
    for e in events:
        if isinstance(e, tr.RomReturn):
            continue
        if since is not None and e.seq < since:
            continue
        if call is not None and not (isinstance(e, tr.RomCall) and e.call == call):
            continue
        if only is not None and e.seq not in only:
            continue
        out.append(e)
    return out


def _site(addr: int, symbolize: Symbolize | None) -> str:
    if not addr:
        return "-"
    name = symbolize(addr) if symbolize else ""
    return f"{addr:#x} {name}".rstrip()


def _row(e: tr.Event, returns: dict[int, tr.RomReturn], symbolize: Symbolize | None,
         describe: Describe | None = None) -> tuple[str | Text, ...]:
    if isinstance(e, tr.RomCall):
        r = returns.get(e.seq)
        result = format_results(r.results) if r and r.results else ("" if r else "(no return)")
        where: tuple[str | Text, ...] = ((Text(_site(e.site, symbolize)),) if describe is None
                                         else tuple(Text(x) for x in describe(e)))
        return (str(e.seq), Text(e.call, style="bold"), Text(format_args(e.call, e.args)),
                Text(result), *where)
    if isinstance(e, tr.PteWrite):
        how = f"batch {e.batch}" if e.deferred else "direct"
        return (str(e.seq), Text("  pte write", style="cyan"),
                f"ptep={e.ptep:#x} {e.old:#x} -> {e.new:#x} ({decode.describe_pte(e.new)})",
                how, "")
    if isinstance(e, tr.LazyMode):
        return (str(e.seq), Text("  lazy mode", style="cyan"),
                (f"{abi.LAZY_MODE_NAMES.get(e.old, e.old)} -> "
                f"{abi.LAZY_MODE_NAMES.get(e.new, e.new)}"), "", "")
    if isinstance(e, tr.BatchFlush):
        return (str(e.seq), Text("  batch flush", style="magenta"),
                f"batch {e.batch}: {e.count} updates, trigger {e.trigger}",
                f"TLB {e.tlb_action}", "")
    if isinstance(e, tr.RomInit):
        return (str(e.seq), Text("vmi_init", style="bold"),
                f"ROM at {e.base:#x}, batching {'on' if e.batched else 'off'}", "", "")
    if isinstance(e, tr.PatchSite):
        return (str(e.seq), Text("patch site"), f"{e.addr:#x} type {e.type} {e.reloc}",
                f"{e.target:#x}", "")
    return (str(e.seq), Text(type(e).__name__), "", "", "")


def render_trace(events: Sequence[tr.Event], *, last: int | None = 20, call: str | None = None,
                 since: int | None = None, symbolize: Symbolize | None = None,
                 title: str = "", describe: Describe | None = None,
                 only: set[int] | None = None) -> RenderableType:
    """The last ``last`` rows (None: all) of the trace, filtered by call name and seq (and to
    the seqs in ``only``). With ``describe`` the calls show their caller and task instead of
    the calling site."""
    returns = {e.call_seq: e for e in events if isinstance(e, tr.RomReturn)}
    rows = select(events, call=call, since=since, only=only)
    shown = rows[-last:] if last is not None and last > 0 else rows
    t = Table(title=title or f"VMI trace: {len(shown)} of {len(rows)} rows")
    t.add_column("seq", justify="right", no_wrap=True)
    t.add_column("call")
    t.add_column("arguments")
    t.add_column("results")
    if describe is None:
        t.add_column("site")
    else:
        t.add_column("caller")
        t.add_column("task")
    for e in shown:
        row = _row(e, returns, symbolize, describe)
        t.add_row(*row, *([""] * (len(t.columns) - len(row))))
    calls = sum(1 for e in events if isinstance(e, tr.RomCall))
    return Group(fit_columns(t), Text(f"{len(events)} events, {calls} ROM calls"))


def render_profile(rows: Sequence[ProfileRow], *, top: int | None = 20, total: int = 0,
                   title: str = "") -> RenderableType:
    """ROM calls by VMI call x kernel caller: count, share of that call, share of all; the
    ``top`` rows (None: all). A call made through Linux's vmi_* glue counts for the glue's
    caller, and says which glue."""
    shown = rows[:top] if top else rows
    counted = sum(r.count for r in rows)
    t = Table(title=title or f"ROM calls by VMI call x kernel caller: {len(shown)} of "
              f"{len(rows)} rows")
    t.add_column("calls", justify="right", no_wrap=True)
    t.add_column("of call", justify="right", no_wrap=True)
    t.add_column("of all", justify="right", no_wrap=True)
    t.add_column("VMI call", no_wrap=True)
    t.add_column("kernel caller")
    t.add_column("via")
    for r in shown:
        t.add_row(str(r.count), f"{r.of_call:.1%}", f"{r.of_all:.1%}", Text(r.call, style="bold"),
                  r.caller, r.via)
    note = f"{counted} ROM calls counted"
    if total and total != counted:
        note += f" of {total} traced"
    return Group(fit_columns(t), Text(note))


def call_counts(events: Iterable[tr.Event]) -> dict[str, int]:
    """ROM calls by name, most frequent first."""
    counts: dict[str, int] = {}
    for e in events:
        if isinstance(e, tr.RomCall):
            counts[e.call] = counts.get(e.call, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
