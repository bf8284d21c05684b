"""The pv-op layout of a guest's ELF, read by real gdb through vmigdb's own adapter
(``vmigdb.commands.target.template``, gdb's types), for tests that judge patch sites without a
gdb session of their own.
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path

from vmigdb import pvops
from vmigdb.mi import GDB

REPO = Path(__file__).resolve().parent.parent
_MARK = "@@layout "


@cache
def op_slots(elf: Path) -> tuple[pvops.OpSlot, ...]:
    """Every pv-op of ``elf``'s ``struct paravirt_patch_template``, as ``vmi sites`` reads it."""
    script = ("import json; from vmigdb import pvops; from vmigdb.commands import target; "
              "print('" + _MARK + "' + json.dumps([s.__dict__ for s in "
              "pvops.op_slots(target.require_template(), target.pointer_size())]))")
    r = subprocess.run([GDB, "-nx", "-batch", "-x", str(REPO / "vmigdb.py"), "-ex",
                        f"file {elf}", "-ex", f"python {script}"],
                       capture_output=True, text=True, timeout=120, check=False)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(_MARK)), None)
    assert line is not None, r.stdout + r.stderr
    return tuple(pvops.OpSlot(**d) for d in json.loads(line[len(_MARK):]))


def slot_layout(elf: Path) -> dict[int, str]:
    """slot -> pv-op name of ``elf``."""
    return {s.slot: s.op for s in op_slots(elf)}
