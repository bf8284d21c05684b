"""``make demo``: a short tour of vmigdb on the demo guest, run from the repository root.

Each step is a real command a user would type; the demo prints it, then runs it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from rich.rule import Rule

from vmigdb.views.console import make_console

ROOT = Path(__file__).resolve().parent.parent
VMIGDB = str(Path(sys.executable).with_name("vmigdb"))


def _steps() -> list[tuple[str, list[str]]]:
    guest = "build/guest.elf"
    rom = "build/vmi_rom.bin"
    return [
        ("The identity VMI ROM as Linux would see it", [VMIGDB, "rom", "info", rom]),
        ("Boot the demo guest on vmigdb's machine, ROM copied to RAM (batched)",
         [VMIGDB, "run", guest, "--cmdline", "rom=copy"]),
        ("The same guest calling the ROM in place, read-only (unbatched)",
         [VMIGDB, "run", guest, "--cmdline", "rom=inplace"]),
    ]


def main() -> int:
    console = make_console()
    failed = 0
    for title, argv in _steps():
        console.print(Rule(title))
        console.print(f"$ {shlex.join(argv).replace(VMIGDB, 'vmigdb')}", style="bold")
        result = subprocess.run(argv, cwd=ROOT, check=False)
        if result.returncode != 0:
            console.print(f"[red]exit status {result.returncode}[/red]")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
