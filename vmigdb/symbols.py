"""An ELF file's symbols and patch records, for naming many call sites at once.

A report names thousands of call sites; for Linux the ELF is vmlinux (136 MB with its debug
info). So the file is read through pyelftools as a stream, only ``.symtab``, its string table
and ``.parainstructions`` are loaded, and the symbol table becomes sorted numpy arrays: naming
every site is one ``searchsorted``, not a scan per address. Names are decoded only for the
symbols that are hit.

A site is named ``function+offset`` (decimal, as gdb prints ``<function+offset>``) by the
symbol that contains it: a sized symbol covers its size, an unsized one (an assembler label)
runs to the next symbol. Among symbols at one address a function wins over a label or object.
"""

from __future__ import annotations

import bisect
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmigdb import sites
from vmigdb.errors import VmiError

_SHN_UNDEF, _SHN_ABS = 0, 0xFFF1
#: Symbol types kept (NOTYPE, OBJECT, FUNC), and how they rank at one address (higher wins).
_RANK = {0: 0, 1: 1, 2: 2}
_MAX_SECTION = 64 << 20  # bytes of one symbol or string table read into memory


class SymbolsError(VmiError):
    """An ELF file that cannot give symbols: not there, not an ELF, malformed."""


def _symbol_dtype(elfclass: int, little: bool) -> np.dtype:
    e = "<" if little else ">"
    if elfclass == 32:
        return np.dtype([("name", e + "u4"), ("value", e + "u4"), ("size", e + "u4"),
                         ("info", "u1"), ("other", "u1"), ("shndx", e + "u2")])
    return np.dtype([("name", e + "u4"), ("info", "u1"), ("other", "u1"), ("shndx", e + "u2"),
                     ("value", e + "u8"), ("size", e + "u8")])


class Symbols:
    """The symbols of one ELF file (``load``), as sorted arrays, and its patch records."""

    def __init__(self, values: np.ndarray, ends: np.ndarray, names: np.ndarray,
                 strtab: bytes, records: Sequence[sites.Site] = ()) -> None:
        self._values = values  # uint64, sorted
        self._ends = ends  # uint64: one past the last byte each symbol covers
        self._names = names  # offsets into strtab
        self._strtab = strtab
        self.records = sorted(records, key=lambda r: r.addr)
        self._record_addrs = [r.addr for r in self.records]

    @classmethod
    def load(cls, path: str | Path) -> Symbols:
        """The symbols of the ELF file at ``path``; SymbolsError (one line) if it has none to
        give. Only a regular file is opened."""
        p = Path(path)
        try:
            if not stat.S_ISREG(p.stat().st_mode):
                raise SymbolsError(f"{path}: not a regular file")
            with open(p, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    raise SymbolsError(f"{path}: not an ELF file")
                f.seek(0)
                return cls._read(ELFFile(f), str(path))
        except OSError as e:
            raise SymbolsError(f"cannot read {path}: {e.strerror or e}") from None
        except (ELFError, ValueError, KeyError, IndexError, AssertionError) as e:
            # pyelftools raises a spread of exceptions on malformed files (construct's too).
            raise SymbolsError(f"{path}: a malformed ELF file ({e})") from None
        except Exception as e:  # construct.ConstructError and kin: a cut or corrupt header
            if type(e).__module__.startswith("elftools"):
                raise SymbolsError(f"{path}: a malformed ELF file ({e})") from None
            raise

    @classmethod
    def _read(cls, elf: ELFFile, path: str) -> Symbols:
        little = elf.little_endian
        dtype = _symbol_dtype(elf.elfclass, little)
        values: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        names: list[np.ndarray] = []
        ranks: list[np.ndarray] = []
        strtab = b""
        records: list[sites.Site] = []
        for section in elf.iter_sections():  # headers only: pyelftools reads data on demand
            kind = section["sh_type"]
            if kind == "SHT_SYMTAB" and not values:
                strtab = _section_bytes(elf, elf.get_section(section["sh_link"]).header, path)
                raw = _section_bytes(elf, section.header, path)
                table = np.frombuffer(raw[:len(raw) // dtype.itemsize * dtype.itemsize], dtype)
                kinds = table["info"] & 0xF
                keep = ((table["name"] != 0) & (kinds <= 2) & (table["shndx"] != _SHN_UNDEF)
                        & (table["shndx"] != _SHN_ABS) & (table["name"] < len(strtab)))
                table = table[keep]
                values.append(table["value"].astype(np.uint64))
                sizes.append(table["size"].astype(np.uint64))
                names.append(table["name"].astype(np.int64))
                ranks.append(kinds[keep].astype(np.int64))
            elif kind != "SHT_NOBITS" and section.name == sites.SECTION:
                records = sites.parse_records(_section_bytes(elf, section.header, path))
        if not values:
            return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64),
                       b"", records)
        value, size, name, rank = (np.concatenate(x) for x in (values, sizes, names, ranks))
        order = np.lexsort((size, rank, value))  # by value, then rank, then size: best last
        value, size, name = value[order], size[order], name[order]
        # An unsized symbol runs to the next higher address (the last one covers one byte).
        uniq = np.unique(value)
        nxt = np.append(uniq[1:], uniq[-1] + 1)[np.searchsorted(uniq, value)]
        ends = np.where(size > 0, value + size, nxt)
        return cls(value, ends, name, strtab, records)

    def __len__(self) -> int:
        return len(self._values)

    def _name(self, index: int) -> str:
        start = int(self._names[index])
        end = self._strtab.find(b"\0", start)
        return self._strtab[start:end if end >= 0 else len(self._strtab)].decode(
            "utf-8", "replace")

    def lookup(self, addrs: Sequence[int] | np.ndarray) -> list[str]:
        """``name+offset`` (``name`` at the symbol's start) for each address, '' where no
        symbol covers it."""
        a = np.asarray(addrs, dtype=np.uint64)
        if not len(self._values) or not len(a):
            return [""] * len(a)
        idx = np.searchsorted(self._values, a, "right").astype(np.int64) - 1
        out = []
        for addr, i in zip(a.tolist(), idx.tolist(), strict=True):
            # The best symbol at the nearest address below; else an enclosing bigger one a few
            # entries back (a function containing a local label).
            for j in range(i, max(i - 8, -1), -1):
                if addr < int(self._ends[j]):
                    value = int(self._values[j])
                    name = self._name(j)
                    out.append(name if addr == value else f"{name}+{addr - value}")
                    break
            else:
                out.append("")
        return out

    def record(self, addr: int) -> sites.Site | None:
        """The ``.parainstructions`` record whose bytes hold ``addr``."""
        i = bisect.bisect_right(self._record_addrs, addr) - 1
        if i >= 0 and self.records[i].contains(addr):
            return self.records[i]
        return None


def _section_bytes(elf: ELFFile, header: object, path: str) -> bytes:
    offset, size = header["sh_offset"], header["sh_size"]  # type: ignore[index]
    if size > _MAX_SECTION:
        raise SymbolsError(f"{path}: a {size}-byte section (at most {_MAX_SECTION})")
    elf.stream.seek(offset)
    data = elf.stream.read(size)
    if len(data) != size:
        raise SymbolsError(f"{path}: a section runs past the end of the file")
    return data
