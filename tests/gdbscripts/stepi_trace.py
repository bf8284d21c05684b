"""Run inside gdb (gdb -batch -x): connect, reach the guest's entry, stepi N times, and write
eip and the general registers after each step as JSON lines. Driven by environment variables:
VMIGDB_PORT, VMIGDB_STEPS, VMIGDB_OUT, VMIGDB_ENTRY (hex), VMIGDB_BREAKS (comma-separated hex:
also record the registers at each of these breakpoints, continuing from one to the next)."""

import json
import os

import gdb

REGS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags")


def regs() -> dict:
    frame = gdb.selected_frame()
    return {r: int(frame.read_register(r)) & 0xFFFFFFFF for r in REGS}


gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("set architecture i386")
gdb.execute(f"target remote 127.0.0.1:{os.environ['VMIGDB_PORT']}")
entry = int(os.environ["VMIGDB_ENTRY"], 16)
if regs()["eip"] != entry:
    gdb.execute(f"hbreak *{entry:#x}")
    gdb.execute("continue")
    gdb.execute("delete")
# Registers the multiboot spec leaves undefined at entry, copied from the reference machine.
for name, value in json.loads(os.environ.get("VMIGDB_SET", "{}")).items():
    gdb.execute(f"set ${name} = {value:#x}")
rows = [{"step": 0, **regs()}]
for i in range(1, int(os.environ.get("VMIGDB_STEPS", "0")) + 1):
    gdb.execute("stepi", to_string=True)
    rows.append({"step": i, **regs()})
breaks = [int(b, 16) for b in os.environ.get("VMIGDB_BREAKS", "").split(",") if b]
for b in breaks:
    gdb.execute(f"hbreak *{b:#x}")
    gdb.execute("continue")
    gdb.execute("delete")
    rows.append({"break": b, **regs()})
with open(os.environ["VMIGDB_OUT"], "w") as out:
    out.writelines(json.dumps(r) + "\n" for r in rows)
gdb.execute("detach" if os.environ.get("VMIGDB_DETACH") else "kill")
