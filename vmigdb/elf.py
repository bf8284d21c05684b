"""ELF files through pyelftools: the one reader of a guest's ELF header (its entry point and
program headers), for the stub's multiboot loader, ``capture`` and the tests.

Pure: bytes or a path in, numbers out; GuestImageError (one line) on a file that is not an ELF
or is cut short.
"""

from __future__ import annotations

import io
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmigdb.errors import GuestImageError


def parse(image: bytes) -> ELFFile:
    """An ELF file held in memory (pyelftools reads the rest lazily, from these bytes)."""
    if image[:4] != b"\x7fELF":
        raise GuestImageError("not an ELF file")
    try:
        return ELFFile(io.BytesIO(image))
    except ELFError as e:
        raise GuestImageError(f"ELF header is truncated or malformed: {e}") from None


def segments(f: ELFFile) -> list:
    """The program headers (pyelftools ``Segment``s); GuestImageError if they are cut short."""
    try:
        return list(f.iter_segments())
    except ELFError as e:
        raise GuestImageError(f"ELF program headers are truncated or malformed: {e}") from None


def read(path: str | Path) -> ELFFile:
    """The ELF file at ``path``; GuestImageError if it cannot be read or is not an ELF."""
    try:
        image = Path(path).read_bytes()
    except OSError as e:
        raise GuestImageError(f"cannot read {path}: {e.strerror}") from None
    return parse(image)


def entry(path: str | Path) -> int:
    """The ELF entry point of the file at ``path`` (a multiboot guest's entry)."""
    return read(path).header.e_entry
