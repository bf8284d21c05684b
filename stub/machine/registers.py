"""The CPU's registers by name, over Unicorn: what gdb's g/p/G/P packets and the monitor read.

Names: eax ecx edx ebx esp ebp esi edi eip eflags, cs ss ds es fs gs (a write reloads the hidden
descriptor from the GDT; a bad selector raises ValueError), cr0 cr2 cr3 cr4 (a write flushes
the TLB), efer (MSR 0xC0000080), gdtr_base gdtr_limit idtr_base idtr_limit, ldtr tr (selectors;
a write loads base/limit from the GDT), fs_base gs_base (the hidden segment bases; read-only),
and for the x87/SSE feature st0-st7 (80-bit values as ints: bytes 0-7 the mantissa, 8-9 sign and
exponent, ST(i) relative to TOP), fctrl fstat ftag fiseg fioff foseg fooff fop, xmm0-xmm7
(128-bit ints), mxcsr. ftag is the full 16-bit tag word as Unicorn keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import Uc, UcError
from unicorn import x86_const as X

from vmigdb import x86
from vmigdb.stub import uc_ctypes

_SIMPLE = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in [
    "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eflags", "cs", "ss", "ds", "es",
    "fs", "gs", "cr0", "cr2", "cr3", "cr4", "mxcsr"]}
_SIMPLE.update({"fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW,
                "ftag": X.UC_X86_REG_FPTAG, "fiseg": X.UC_X86_REG_FCS,
                "fioff": X.UC_X86_REG_FIP, "foseg": X.UC_X86_REG_FDS,
                "fooff": X.UC_X86_REG_FDP, "fop": X.UC_X86_REG_FOP})
_SIMPLE.update({f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(8)})
_GPR32 = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in (
    "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags")}
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_TABLES = {"gdtr": X.UC_X86_REG_GDTR, "idtr": X.UC_X86_REG_IDTR, "ldtr": X.UC_X86_REG_LDTR,
           "tr": X.UC_X86_REG_TR}
#: register_file(): what one raw batch read holds, as (name, byte offset, bytes or "mmr"
#: for a descriptor-table register or "fp" for a physical x87 register).
_FILE_IDS: tuple[int, ...] = (
    *_GPR32.values(), *(_SIMPLE[n] for n in _SIMPLE if n not in _GPR32),
    *(getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)), *_TABLES.values())
_FILE_PLAN: tuple[tuple[str, int, int | str], ...] = tuple(
    (name, uc_ctypes.RAW_SLOT * i,
     "mmr" if name in _TABLES else "fp" if name[:2] == "fp" else
     16 if name.startswith("xmm") else 2 if name in SEGMENTS else 4)
    for i, name in enumerate((*_GPR32, *(n for n in _SIMPLE if n not in _GPR32),
                              *(f"fp{i}" for i in range(8)), *_TABLES)))
_FILE_FP0 = next(off for name, off, _kind in _FILE_PLAN if name == "fp0")


class Registers:
    """Named register access. ``read_virt`` reads the GDT for selector loads; ``changed`` is
    called after every write (the machine drops what it derived from the old values)."""

    def __init__(self, uc: Uc, read_virt: Callable[[int, int], bytes],
                 changed: Callable[[str], None]) -> None:
        self.uc = uc
        self.ctx = uc_ctypes.ContextPeek(uc)
        self._read_virt = read_virt
        self._changed = changed
        self._file_reader = uc_ctypes.raw_batch_reader(uc, _FILE_IDS)

    def register_file(self) -> dict[str, int]:
        """The registers of gdb's ``g`` packet (``read`` names, plus ldtr/tr base and limit)
        from one libunicorn call and one MSR read: gdb asks for all of them whenever the three
        expedited ones are not enough, and reading them one by one through the binding cost
        ~0.5 ms."""
        raw = self._file_reader()
        out: dict[str, int] = {}
        for name, off, kind in _FILE_PLAN:
            if kind == "fp":
                continue  # physical x87 registers: st(i) below
            if kind == "mmr":  # uc_x86_mmr: u16 selector, u64 base at 8, u32 limit at 16
                if name in ("ldtr", "tr"):
                    out[name] = int.from_bytes(raw[off:off + 2], "little")
                out[f"{name}_base"] = int.from_bytes(raw[off + 8:off + 16], "little") & 0xFFFFFFFF
                out[f"{name}_limit"] = int.from_bytes(raw[off + 16:off + 20], "little")
            else:
                out[name] = int.from_bytes(raw[off:off + kind], "little")
        out["efer"] = self.uc.msr_read(x86.MSR_EFER)
        top = (out["fstat"] >> 11) & 7
        for i in range(8):  # st(i) is physical register (top + i) mod 8: u64 mantissa, u16 exp
            off = _FILE_FP0 + uc_ctypes.RAW_SLOT * ((top + i) & 7)
            out[f"st{i}"] = int.from_bytes(raw[off:off + 10], "little")
        return out

    def read(self, name: str) -> int:
        reg = _GPR32.get(name)
        if reg is not None:
            return uc_ctypes.reg_read32(self.uc, reg)
        uc = self.uc
        reg = _SIMPLE.get(name)
        if reg is not None:
            return uc.reg_read(reg)
        if name == "efer":
            return uc.msr_read(x86.MSR_EFER)
        if name.startswith("st") and name[2:].isdigit() and int(name[2:]) < 8:
            top = (uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
            mant, exp = uc.reg_read(X.UC_X86_REG_FP0 + ((top + int(name[2:])) & 7))
            return mant | (exp << 64)
        if name == "fs_base":
            return uc.reg_read(X.UC_X86_REG_FS_BASE) & 0xFFFFFFFF
        if name == "gs_base":
            return self.ctx.gs_base()
        table, _, part = name.partition("_")
        if table in _TABLES:
            sel, base, limit, _flags = uc.reg_read(_TABLES[table])
            if part == "base":
                return base & 0xFFFFFFFF
            if part == "limit":
                return limit
            if not part and table in ("ldtr", "tr"):
                return sel
        raise KeyError(f"no register {name!r}")

    def write(self, name: str, value: int) -> None:
        """A segment selector write reloads the hidden descriptor; a CR write changes paging."""
        self._write(name, value)
        self._changed(name)

    def _write(self, name: str, value: int) -> None:
        uc = self.uc
        value &= 0xFFFFFFFF if not name.startswith(("st", "xmm")) else (1 << 128) - 1
        if name == "eip":
            uc.reg_write(X.UC_X86_REG_EIP, value)
            return
        if name in SEGMENTS:
            try:
                uc.reg_write(_SIMPLE[name], value & 0xFFFF)
            except UcError:
                raise ValueError(f"selector {value:#x} cannot be loaded into {name}") from None
            return
        reg = _SIMPLE.get(name)
        if reg is not None:
            uc.reg_write(reg, value)
            return
        if name == "efer":
            uc.msr_write(x86.MSR_EFER, value)
            return
        if name.startswith("st") and name[2:].isdigit() and int(name[2:]) < 8:
            top = (uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
            uc.reg_write(X.UC_X86_REG_FP0 + ((top + int(name[2:])) & 7),
                         (value & ((1 << 64) - 1), (value >> 64) & 0xFFFF))
            return
        table, _, part = name.partition("_")
        if table in _TABLES:
            sel, base, limit, flags = uc.reg_read(_TABLES[table])
            if part == "base":
                uc.reg_write(_TABLES[table], (sel, value, limit, flags))
                return
            if part == "limit":
                uc.reg_write(_TABLES[table], (sel, base, value & 0xFFFFF, flags))
                return
            if not part and table in ("ldtr", "tr"):
                uc.reg_write(_TABLES[table], self._system_segment(value & 0xFFFF))
                return
        raise KeyError(f"no writable register {name!r}")

    def _system_segment(self, sel: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of an LDT or TSS descriptor, as lldt/ltr load it."""
        if sel & ~3 == 0:
            return (sel, 0, 0, 0)
        _s, gbase, glimit, _f = self.uc.reg_read(X.UC_X86_REG_GDTR)
        if (sel & ~7) + 7 > glimit:
            raise ValueError(f"selector {sel:#x} is outside the GDT")
        d = x86.Descriptor.decode(self._read_virt(gbase + (sel & ~7), 8))
        return (sel, d.base, d.limit, d.flags)

    def table(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of gdtr/idtr/ldtr/tr (for interrupt delivery)."""
        return self.uc.reg_read(_TABLES[name])

    def load_gdt(self, base: int, limit: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, base, limit, 0))

    def load_idt(self, base: int, limit: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_IDTR, (0, base, limit, 0))
