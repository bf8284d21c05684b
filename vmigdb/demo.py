"""``make demo``: a short tour of vmigdb on the demo guest, run from the repository root.

It shows the ROM as Linux would see it, boots the guest on our machine in both ROM modes, then
starts the gdb stub on the guest and runs real gdb with vmigdb loaded through the ``vmi``
commands. On a terminal gdb stays at its prompt after the tour (quit to end); otherwise the tour
runs in ``gdb -batch``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.rule import Rule

from vmigdb import resources, targets
from vmigdb.mi import GDB
from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
VMIGDB = str(Path(sys.executable).with_name("vmigdb"))
GUEST = "build/guest.elf"
ROM = "build/vmi_rom.bin"

#: (what the step shows, gdb command); each step is echoed, then run.
TOUR: tuple[tuple[str, str], ...] = (
    ("Trace ROM calls from here on (fast path: the stub records them)", "vmi trace start"),
    ("Run until the guest has patched itself", "break test_irq_flags"),
    ("", "continue"),
    ("The VMI ROM the guest found, and its call table", "vmi rom --insns 2"),
    ("Every patch site: native code, what memory holds now, the call it goes to", "vmi sites"),
    ("The first patch site explained",
     "vmi decode *(unsigned*)&__start_parainstructions"),
    ("Run through the page-table workload", "break pt_workload_summary"),
    ("", "continue"),
    ("The last ROM calls, arguments decoded", "vmi trace 12"),
    ("Lazy-MMU batches: one exit per batch instead of one per update", "vmi batches --chart"),
    ("One batch, update by update", "vmi batch 2"),
    ("A page-table walk of the ROM's linear address", "vmi pte 0xc00c0000"),
    ("Let the guest finish", "delete"),
    ("", "continue"),
)


def _gdb_script(port: int) -> str:
    lines = ["set pagination off", "set confirm off", f"file {GUEST}",
             f"target remote 127.0.0.1:{port}"]
    for title, command in TOUR:
        if title:
            lines.append(f'echo \\n\\033[1m== {title} ==\\033[0m\\n' if sys.stdout.isatty()
                         else f"echo \\n== {title} ==\\n")
        lines.append(f"echo (gdb) {command}\\n")
        lines.append(command)
    return "\n".join(lines) + "\n"


def _run(console, title: str, argv: list[str]) -> int:
    console.print(Rule(title))
    console.print(f"$ {shlex.join(argv).replace(VMIGDB, 'vmigdb')}", style="bold")
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


def main() -> int:
    console = make_console()
    failed = 0
    failed += _run(console, "The identity VMI ROM as Linux would see it",
                   [VMIGDB, "rom", "info", ROM]) != 0
    for mode, what in (("copy", "ROM copied to RAM: PTE updates batched"),
                       ("inplace", "ROM called in place, read-only: unbatched")):
        failed += _run(console, f"Boot the demo guest on vmigdb's machine, {what}",
                       [VMIGDB, "run", GUEST, "--cmdline", f"rom={mode}"]) != 0
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not os.environ.get("CI")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stub = targets.start_stub(ROOT / GUEST, ROOT / ROM, "", tmp)
        try:
            script = tmp / "tour.gdb"
            script.write_text(_gdb_script(stub.port))
            console.print(Rule("gdb with vmigdb loaded, on the stub"))
            argv = [GDB, "-nx", "-q", "-x", str(resources.gdb_script()), "-x", str(script)]
            if not interactive:
                argv.insert(1, "-batch")
            else:
                console.print("The tour runs, then gdb is yours: try `help vmi`; `quit` ends.")
            failed += subprocess.run(argv, cwd=ROOT, check=False).returncode != 0
        finally:
            stub.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
