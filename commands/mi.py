"""``-vmi-trace-events``: trace events for programs that drive gdb over MI (``vmigdb capture``).

A program polling a running capture wants the events it has not seen yet, in one round trip,
as the trace format's own JSON lines (no scraping of a rendered table). On the portable path the
events live in gdb, so this works while the target runs (MI async mode); on vmigdb's stub they
are fetched with ``monitor vmi trace dump``, which needs the target stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import gdb

from vmigdb import trace as tr
from vmigdb.commands import tracesource

#: Events per answer when the caller names no limit (an MI reply is one line of text).
DEFAULT_MAX = 5000


def events_since(events: Iterable[tr.Event], since: int) -> list[tr.Event]:
    """The events with ``seq >= since``, walking back from the newest (seqs only grow)."""
    out = []
    for e in reversed(events):  # type: ignore[call-overload]
        if e.seq < since:
            break
        out.append(e)
    out.reverse()
    return out


class VmiTraceEvents(gdb.MICommand):
    """-vmi-trace-events SINCE [MAX]: trace events with seq >= SINCE (at most MAX).

Result fields: source (stub or portable), count, lines (the events as JSON lines, the trace
format's own encoding), next (the SINCE to ask for next), more (1 when MAX cut the answer),
errors and last_error (portable path: hits that failed to record)."""

    def __init__(self) -> None:
        super().__init__("-vmi-trace-events")

    def invoke(self, argv: list[str]) -> dict[str, object]:
        if not 1 <= len(argv) <= 2:
            raise gdb.GdbError("usage: -vmi-trace-events SINCE [MAX]")
        try:
            since = int(argv[0], 0)
            limit = int(argv[1], 0) if len(argv) > 1 else DEFAULT_MAX
        except ValueError:
            raise gdb.GdbError("-vmi-trace-events: SINCE and MAX are numbers") from None
        limit = max(limit, 1)
        src = tracesource.current(create=False)
        if src is None:
            raise gdb.GdbError("-vmi-trace-events: no trace started (vmi trace start)")
        try:
            if src.kind == "stub":
                return _from_stub(since, limit)
            return _from_gdb(src, since, limit)
        except gdb.error as e:
            raise gdb.GdbError(str(e)) from None


def _from_stub(since: int, limit: int) -> dict[str, object]:
    """Straight from the stub's ``monitor vmi trace dump``: its lines are already the trace
    format, and the monitor still answers after the guest exited (``extended-remote``)."""
    text = gdb.execute(f"monitor vmi trace dump {since} {limit}", to_string=True)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = tr.event_from_json(json.loads(lines[-1])).seq if lines else since - 1
    return {"source": "stub", "count": len(lines),
            "lines": "".join(ln + "\n" for ln in lines),
            "next": last + 1, "more": int(len(lines) >= limit)}


def _from_gdb(src: tracesource.TraceSource, since: int, limit: int) -> dict[str, object]:
    """From the events gdb holds (the portable path): readable while the target runs."""
    new = events_since(src.events(), since)
    batch = new[:limit]
    st = src.status()
    return {"source": src.kind, "count": len(batch),
            "lines": "".join(tr.dumps(e) + "\n" for e in batch),
            "next": batch[-1].seq + 1 if batch else since,
            "more": int(len(new) > len(batch)),
            "errors": st.get("errors", 0), "last_error": st.get("last_error", "")}


def register() -> None:
    """The MI commands (gdb 12 and later have ``gdb.MICommand``)."""
    if hasattr(gdb, "MICommand"):
        VmiTraceEvents()
