"""Sourced inside a gdb session with vmigdb.py and a running ``vmi trace``: continue from
breakpoint to breakpoint (the session set them) until the trace holds at least
``$until_calls`` ROM calls, then stop there. Prints ``@@stops N calls M``. Fails with one line
when the guest gets that far without enough calls (``$until_max_stops`` continues, default 100).
"""

import gdb

from vmigdb import trace as tr
from vmigdb.commands import tracesource


def _calls() -> int:
    src = tracesource.current(create=False)
    return sum(isinstance(e, tr.RomCall) for e in src.events()) if src is not None else 0


def _var(name: str, default: int) -> int:
    value = gdb.parse_and_eval(f"${name}")
    return default if value.type.code == gdb.TYPE_CODE_VOID else int(value)


want = _var("until_calls", 500)
limit = _var("until_max_stops", 100)
stops = 0
while _calls() < want:
    if stops >= limit:
        raise gdb.GdbError(f"only {_calls()} ROM calls after {stops} stops")
    gdb.execute("continue", to_string=True)
    stops += 1
gdb.write(f"@@stops {stops} calls {_calls()}\n")
