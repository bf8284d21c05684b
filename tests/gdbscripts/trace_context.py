"""Sourced inside a gdb session with vmigdb.py and a ``vmi trace`` of a Linux guest (vmlinux
loaded): prints ``@@`` and a JSON list with one ``[seq, call, task, caller, frame, flags]`` per
ROM call of the trace: its task as ``vmi trace`` names it (pid and comm), its caller as
``vmi trace`` shows it (function+offset; past Linux's vmi_* glue, the glue's caller after
``<-``), the function of its frame word (the caller's caller) and its context flags
(``vmigdb.context``). A call without context has task, caller and frame None.
"""

import json

from vmigdb import trace as tr
from vmigdb.commands import trace as cmd
from vmigdb.commands import tracesource

src = tracesource.current(create=False)
have = cmd.call_context(src) if src is not None else None
out = []
for e in src.events() if src is not None else ():
    if not isinstance(e, tr.RomCall):
        continue
    row = have[0].at(e.seq) if have is not None else None
    if row is None:
        out.append([e.seq, e.call, None, None, None, 0])
        continue
    ret, frame = int(row["ret"]), int(row["frame"])
    out.append([e.seq, e.call, have[1].label(int(row["task"]), e.seq), cmd.caller_text(ret, frame),
                cmd.name(frame).split("+", 1)[0], int(row["flags"])])
print("@@" + json.dumps(out))
