"""Assemble small snippets with GNU as, so tests never hand-encode machine code."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def assemble(source: str, base: int = 0) -> bytes:
    """Flat 32-bit machine code for ``source`` linked at ``base`` (as --32, ld, objcopy)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "s.S").write_text(".code32\n.text\n" + source + "\n")
        subprocess.run(["as", "--32", "-o", p / "s.o", p / "s.S"], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext", hex(base), "-o", p / "s.elf",
                        p / "s.o"], check=True, capture_output=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", p / "s.elf", p / "s.bin"],
                       check=True)
        return (p / "s.bin").read_bytes()
