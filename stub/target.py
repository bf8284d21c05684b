"""The register file gdb sees: one table gives remote numbering, sizes, machine names and target.xml.

Layout (fixed for the whole connection, the QEMU lesson in gdb-remote-protocol.md §2.3):
``org.gnu.gdb.i386.core`` (remote 0-31) and ``org.gnu.gdb.i386.sse`` (32-40) exactly as gdb's own
32-bit i386 description, so gdb maps them onto its native register numbers (a single QEMU-style
feature would make gdb treat xmm as generic registers), then ``org.vmigdb.i386.sys`` (41-51) with
the system registers QEMU never shows gdb. The ``g`` reply carries all 52 registers in this order
(352 bytes); a register the machine does not model is sent as ``xx`` (gdb shows <unavailable>).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmigdb.decode import CR0_BITS, CR4_BITS, EFER_BITS, EFLAGS_BITS, MXCSR_BITS

from .rsp import RspError, hex_decode

#: The guest's linear (and physical) address space: i386, 32 bits. gdb may send wider numbers;
#: the machine would take 2**32 + A as A, so the server refuses anything past this instead.
ADDRESS_SPACE = 1 << 32

#: flags-type id -> (size in bytes, bits)
FLAG_TYPES: dict[str, tuple[int, tuple[tuple[int, str], ...]]] = {
    "i386_eflags": (4, EFLAGS_BITS),
    "i386_mxcsr": (4, MXCSR_BITS),
    "vmigdb_cr0": (4, CR0_BITS),
    "vmigdb_cr4": (4, CR4_BITS),
    "vmigdb_efer": (4, EFER_BITS),
}


@dataclass(frozen=True)
class Reg:
    """One register as gdb numbers it; ``name`` is also the machine's ``reg_read`` name."""

    regnum: int
    name: str
    size: int  # bytes
    type: str
    feature: str
    group: str | None = None


CORE = "org.gnu.gdb.i386.core"
SSE = "org.gnu.gdb.i386.sse"
SYS = "org.vmigdb.i386.sys"


def _build() -> tuple[Reg, ...]:
    spec: list[tuple[str, int, str, str, str | None]] = []
    for name in ("eax", "ecx", "edx", "ebx"):
        spec.append((name, 4, "int32", CORE, None))
    spec += [("esp", 4, "data_ptr", CORE, None), ("ebp", 4, "data_ptr", CORE, None)]
    spec += [("esi", 4, "int32", CORE, None), ("edi", 4, "int32", CORE, None)]
    spec += [("eip", 4, "code_ptr", CORE, None), ("eflags", 4, "i386_eflags", CORE, None)]
    spec += [(s, 4, "int32", CORE, None) for s in ("cs", "ss", "ds", "es", "fs", "gs")]
    spec += [(f"st{i}", 10, "i387_ext", CORE, None) for i in range(8)]
    spec += [(f, 4, "int", CORE, "float")
             for f in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
    spec += [(f"xmm{i}", 16, "vec128", SSE, None) for i in range(8)]
    spec.append(("mxcsr", 4, "i386_mxcsr", SSE, "vector"))
    spec += [("cr0", 4, "vmigdb_cr0", SYS, "system"), ("cr2", 4, "data_ptr", SYS, "system"),
             ("cr3", 4, "int32", SYS, "system"), ("cr4", 4, "vmigdb_cr4", SYS, "system"),
             ("efer", 4, "vmigdb_efer", SYS, "system"),
             ("gdtr_base", 4, "data_ptr", SYS, "system"), ("gdtr_limit", 4, "int32", SYS, "system"),
             ("idtr_base", 4, "data_ptr", SYS, "system"), ("idtr_limit", 4, "int32", SYS, "system"),
             ("ldtr", 4, "int32", SYS, "system"), ("tr", 4, "int32", SYS, "system")]
    return tuple(Reg(i, n, size, t, f, g) for i, (n, size, t, f, g) in enumerate(spec))


#: Every register in remote-number order (the ``g`` layout).
REGISTERS: tuple[Reg, ...] = _build()
BY_NAME: dict[str, Reg] = {r.name: r for r in REGISTERS}
G_SIZE = sum(r.size for r in REGISTERS)

#: ebp, esp, eip: with these expedited in every stop reply gdb needs no ``g`` per stepi (measured).
EXPEDITED: tuple[Reg, ...] = (BY_NAME["ebp"], BY_NAME["esp"], BY_NAME["eip"])


def register(regnum: int) -> Reg:
    """The register gdb numbers ``regnum`` (``p``/``P``); RspError for a number we never
    described to gdb."""
    if not 0 <= regnum < len(REGISTERS):
        raise RspError(f"no register {regnum:#x}")
    return REGISTERS[regnum]


def _flags_xml(type_id: str) -> str:
    size, bits = FLAG_TYPES[type_id]
    fields = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for b, n in bits)
    return f'<flags id="{type_id}" size="{size}">{fields}</flags>'


_VEC128 = (
    '<vector id="v4f" type="ieee_single" count="4"/>'
    '<vector id="v2d" type="ieee_double" count="2"/>'
    '<vector id="v16i8" type="int8" count="16"/>'
    '<vector id="v8i16" type="int16" count="8"/>'
    '<vector id="v4i32" type="int32" count="4"/>'
    '<vector id="v2i64" type="int64" count="2"/>'
    '<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>'
    '<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>'
    '<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>'
    '<field name="uint128" type="uint128"/></union>'
)

_FEATURE_TYPES = {
    CORE: _flags_xml("i386_eflags"),
    SSE: _VEC128 + _flags_xml("i386_mxcsr"),
    SYS: _flags_xml("vmigdb_cr0") + _flags_xml("vmigdb_cr4") + _flags_xml("vmigdb_efer"),
}


def _reg_xml(r: Reg) -> str:
    group = f' group="{r.group}"' if r.group else ""
    return f'<reg name="{r.name}" bitsize="{r.size * 8}" type="{r.type}" regnum="{r.regnum}"{group}/>'


def target_xml() -> bytes:
    """The whole description in one document (no xi:include, so one qXfer annex suffices)."""
    out = ['<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">',
           "<target><architecture>i386</architecture>"]
    for feature in (CORE, SSE, SYS):
        out.append(f'<feature name="{feature}">{_FEATURE_TYPES[feature]}')
        out.extend(_reg_xml(r) for r in REGISTERS if r.feature == feature)
        out.append("</feature>")
    out.append("</target>")
    return "\n".join(out).encode()


TARGET_XML = target_xml()

# --- register payloads ---------------------------------------------------------------------------

#: A register reader: machine.reg_read. KeyError/ValueError means "not modelled" (sent as ``xx``).
RegRead = Callable[[str], int]


def encode_reg(reg: Reg, read: RegRead) -> bytes:
    """One register as little-endian hex, or ``xx`` * size if the machine does not model it."""
    try:
        value = read(reg.name)
    except (KeyError, ValueError):
        return b"xx" * reg.size
    return (value & ((1 << (8 * reg.size)) - 1)).to_bytes(reg.size, "little").hex().encode()


def encode_g(read: RegRead, regs: tuple[Reg, ...] = REGISTERS) -> bytes:
    """The ``g`` reply: every register in remote order."""
    return b"".join(encode_reg(r, read) for r in regs)


def decode_value(reg: Reg, hex_text: bytes) -> int | None:
    """A ``p``/``P``/``G`` register value back to an int; None for ``xx`` (leave unchanged).

    RspError if the text is not exactly ``size`` bytes of hex.
    """
    if len(hex_text) != 2 * reg.size:
        raise RspError(f"{reg.name}: expected {2 * reg.size} hex digits, got {len(hex_text)}")
    if hex_text == b"xx" * reg.size:
        return None
    return int.from_bytes(hex_decode(hex_text), "little")


def decode_g(payload: bytes, regs: tuple[Reg, ...] = REGISTERS) -> list[tuple[Reg, int]]:
    """A ``G`` payload to [(reg, value)]; a short payload covers a prefix of the registers
    (gdb may send only what it knows), but must not end inside a register (RspError)."""
    out: list[tuple[Reg, int]] = []
    pos = 0
    for reg in regs:
        if pos >= len(payload):
            break
        chunk = payload[pos : pos + 2 * reg.size]
        value = decode_value(reg, chunk)
        if value is not None:
            out.append((reg, value))
        pos += 2 * reg.size
    if pos < len(payload):
        raise RspError("G payload longer than the register file")
    return out
