"""``python -m vmigdb.rom``: build the ROM, or write the ABI headers generated from abi.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmigdb import abi
from vmigdb.errors import VmiError


def write_headers(asm: Path | None, c: Path | None) -> None:
    """Write the generated headers, touching a file only when its text changes (make-friendly)."""
    for path, text in ((asm, abi.render_asm_header()), (c, abi.render_c_header())):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmigdb.rom")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("header", help="write the ABI constants for assembler and C")
    h.add_argument("--asm", type=Path, help="GNU as .equ header")
    h.add_argument("--c", type=Path, help="C #define header")
    b = sub.add_parser("build", help="build and checksum the ROM image")
    b.add_argument("-o", "--output", type=Path, default=Path("build/vmi_rom.bin"))
    args = p.parse_args(argv)
    try:
        if args.cmd == "header":
            write_headers(args.asm, args.c)
        else:
            from vmigdb.rom.build import build_rom

            out = build_rom(args.output)
            print(out)
    except VmiError as e:
        print(f"vmigdb: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
