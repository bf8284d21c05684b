"""Patch sites: Linux's ``.parainstructions`` records, and what each site holds now.

Pure: works on bytes. The records come from the guest's ELF file (or from guest memory between
``__start_parainstructions`` and ``__stop_parainstructions``); the original native instructions
come from the file, the current ones from memory. A record's type is a pv-op slot
(``PARAVIRT_PATCH(pv_irq_ops.save_fl)``), named through the slot layout the edge reads from the
guest's debug info (``vmigdb.pvops.slot_layout``). ``classify`` says what memory holds (a call or
jump into a ROM entry, NOPs, the native code), ``expect`` what Linux's own patcher makes of the
slot with the live ROM's get_reloc answers (``vmigdb.pvops.PATCHED_OPS``), and ``judge`` whether
the two agree. That is the question a reader of a VMI kernel asks first: which sensitive
instructions went where, and did each go where Linux sends it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from vmigdb import decode, pvops
from vmigdb import trace as tr
from vmigdb.abi import VmiCall, VmiRelocation
from vmigdb.errors import GuestImageError

#: Linux's ``struct paravirt_patch_site`` as i386 lays it out in the section: ``.long addr;
#: .byte type; .byte len; .short clobbers`` (8 bytes; the guest aligns each record to 4).
RECORD = struct.Struct("<IBBH")
SECTION = ".parainstructions"
START_SYMBOL = "__start_parainstructions"
STOP_SYMBOL = "__stop_parainstructions"

_CALL_REL32 = 0xE8
_JMP_REL32 = 0xE9

#: Slot number -> pv-op name (``vmigdb.pvops.slot_layout`` of the guest's template).
Layout = Mapping[int, str]


@dataclass(frozen=True)
class Site:
    """One ``.parainstructions`` record: the site's address, pv-op slot (the record's type),
    length and clobbers."""

    addr: int
    type: int
    len: int
    clobbers: int

    def op(self, layout: Layout) -> str:
        """The pv-op the slot names (``pv_irq_ops.save_fl``), or ``slot N`` when unknown."""
        return layout.get(self.type) or f"slot {self.type}"

    def contains(self, addr: int) -> bool:
        return self.addr <= addr < self.addr + self.len


def parse_records(data: bytes) -> list[Site]:
    """Every record in the raw section bytes (a trailing partial record is ignored)."""
    n = len(data) // RECORD.size
    return [Site(*RECORD.unpack_from(data, i * RECORD.size)) for i in range(n)]


# --- a minimal ELF32 reader: enough to find sections, bytes at an address, and symbols ------------


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int


_SHT_NOBITS = 8
_SHT_SYMTAB = 2
_SHF_ALLOC = 2
_SHN_ABS = 0xFFF1


class ElfImage:
    """A little-endian ELF32 file held in memory: sections, bytes by address, symbols.

    vmigdb only needs what the guest's file says about its own code (the records, the original
    instructions, the names), so this reads section headers and ``.symtab`` and nothing else.
    """

    def __init__(self, image: bytes) -> None:
        if image[:4] != b"\x7fELF":
            raise GuestImageError("not an ELF file")
        if image[4] != 1 or image[5] != 1:
            raise GuestImageError("not a 32-bit little-endian ELF file")
        self.image = image
        shoff, = struct.unpack_from("<I", image, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x2E)
        raw = []
        for i in range(shnum):
            name, typ, flags, addr, off, size = struct.unpack_from("<6I", image,
                                                                    shoff + i * shentsize)
            raw.append((name, typ, flags, addr, off, size))
        if not raw or shstrndx >= len(raw):
            raise GuestImageError("ELF file has no section name table")
        strtab_off = raw[shstrndx][4]
        self.sections = [Section(self._cstr(strtab_off + r[0]), *r[1:]) for r in raw]
        self._symbols: list[tuple[int, int, str]] | None = None

    def _cstr(self, offset: int) -> str:
        end = self.image.find(b"\0", offset)
        return self.image[offset:end].decode("ascii", errors="replace")

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def read(self, addr: int, size: int) -> bytes:
        """File bytes at a load address (zeros for .bss); GuestImageError outside the image."""
        for s in self.sections:
            if s.flags & _SHF_ALLOC and s.addr <= addr and addr + size <= s.addr + s.size:
                if s.type == _SHT_NOBITS:
                    return bytes(size)
                start = s.offset + addr - s.addr
                return self.image[start:start + size]
        raise GuestImageError(f"address {addr:#x} (+{size}) is not in the ELF file's sections")

    def symbols(self) -> list[tuple[int, int, str]]:
        """(value, size, name) of every named code or data symbol, by address."""
        if self._symbols is None:
            out: list[tuple[int, int, str]] = []
            for s in self.sections:
                if s.type != _SHT_SYMTAB:
                    continue
                strtab = self.sections[self._link(s)]
                for off in range(s.offset, s.offset + s.size, 16):
                    name, value, size, info, _other, shndx = struct.unpack_from(
                        "<IIIBBH", self.image, off)
                    # NOTYPE (assembler labels), OBJECT, FUNC; not undefined or absolute
                    # (the generated .equ constants are absolute).
                    if name and info & 0xF in (0, 1, 2) and shndx not in (0, _SHN_ABS):
                        out.append((value, size, self._cstr(strtab.offset + name)))
            self._symbols = sorted(out)
        return self._symbols

    def _link(self, s: Section) -> int:
        i = self.sections.index(s)
        shoff, = struct.unpack_from("<I", self.image, 0x20)
        shentsize, = struct.unpack_from("<H", self.image, 0x2E)
        link, = struct.unpack_from("<I", self.image, shoff + i * shentsize + 24)
        return link

    def symbolize(self, addr: int) -> str:
        """``name+off`` of the function or object containing ``addr``, else ''.

        A symbol without a size (assembler labels) covers up to the next symbol."""
        syms = self.symbols()
        best: tuple[int, str] | None = None
        for i, (value, size, name) in enumerate(syms):
            if value > addr:
                break
            end = value + size if size else (syms[i + 1][0] if i + 1 < len(syms) else value + 1)
            if addr < end or (not size and addr < end + 1 and end == value):
                best = (value, name)
        if best is None:
            return ""
        value, name = best
        return name if addr == value else f"{name}+{addr - value}"


def sites_from_elf(image: bytes | ElfImage) -> list[Site]:
    """The records of the file's ``.parainstructions`` section ([] when it has none)."""
    elf = image if isinstance(image, ElfImage) else ElfImage(image)
    sec = elf.section(SECTION)
    if sec is None or sec.type == _SHT_NOBITS:
        return []
    return parse_records(elf.image[sec.offset:sec.offset + sec.size])


# --- what a site holds now ---------------------------------------------------------------------


@dataclass(frozen=True)
class SiteState:
    """What memory holds at a site now, compared with the file's native instructions.

    ``kind``: ``call`` / ``jump`` (a rel32 into ``target``, the rest NOP padding), ``nop``
    (all NOPs), ``native`` (unchanged), ``modified`` (anything else), ``unverified`` (not a
    patcher's form, and no file to compare with). ``target_call`` names the ROM entry the
    target is, when the caller knows the ROM.
    """

    kind: str
    insns: tuple[decode.Insn, ...]
    target: int | None = None
    target_call: VmiCall | None = None

    @property
    def reloc(self) -> VmiRelocation:
        return {"call": VmiRelocation.CALL_REL, "jump": VmiRelocation.JUMP_REL,
                "nop": VmiRelocation.NOP}.get(self.kind, VmiRelocation.NONE)


def classify(site: Site, now: bytes, original: bytes | None,
             entries: Mapping[int, VmiCall] | None = None) -> SiteState:
    """Classify the ``site.len`` bytes ``now`` at the site; ``entries`` maps ROM entry linear
    addresses to their calls (from the located ROM), ``original`` is the file's bytes. Padding
    may be any NOP encoding (Linux's add_nops() picks them by CPU)."""
    now = bytes(now[:site.len])
    insns = tuple(decode.disassemble(now, site.addr))
    if original is not None and now == bytes(original[:site.len]):
        return SiteState("native", insns)
    if now and decode.is_padding(now, site.addr):
        return SiteState("nop", insns)
    if len(now) >= 5 and now[0] in (_CALL_REL32, _JMP_REL32) and decode.is_padding(
            now[5:], site.addr + 5):
        rel = int.from_bytes(now[1:5], "little", signed=True)
        target = (site.addr + 5 + rel) & 0xFFFFFFFF
        kind = "call" if now[0] == _CALL_REL32 else "jump"
        return SiteState(kind, insns, target, (entries or {}).get(target))
    return SiteState("modified" if original is not None else "unverified", insns)


#: What the live ROM's get_reloc answers for a call: (relocation, entry linear address or None).
Relocation = Callable[[VmiCall], tuple[VmiRelocation, int | None]]


@dataclass(frozen=True)
class Expectation:
    """What Linux's patcher makes of a site: vmi_patch() looks the slot up in its table
    (``pvops.PATCHED_OPS``); for those slots the live ROM's get_reloc answer decides (CALL_REL:
    ``call`` to the entry, JUMP_REL: ``jmp``, NOP: all NOPs, NONE: native); every other slot,
    and every slot when no ROM is active (Linux runs natively), keeps its native code."""

    op: str
    call: VmiCall | None = None  # the call vmi_patch asks get_reloc about (patched slots)
    reloc: VmiRelocation | None = None  # its answer; None when no ROM answers
    target: int | None = None  # the entry a CALL_REL/JUMP_REL site must reach

    @property
    def kind(self) -> str:
        return {VmiRelocation.CALL_REL: "call", VmiRelocation.JUMP_REL: "jump",
                VmiRelocation.NOP: "nop"}.get(self.reloc, "native")  # type: ignore[arg-type]

    @property
    def patched(self) -> bool:
        """True for a slot vmi_patch() rewrites (whatever the ROM answers)."""
        return self.call is not None

    def describe(self) -> str:
        """``pv_irq_ops.save_fl -> GetInterruptMask (CALL_REL) at 0xc00c0640`` for a patched
        slot; ``pv_cpu_ops.read_cr0: left native by vmi_patch`` for the others."""
        if self.call is None:
            return f"{self.op}: left native by vmi_patch"
        text = f"{self.op} -> {self.call.name}"
        if self.reloc is None:
            return f"{text} (no ROM: native)"
        text += f" ({self.reloc.name})"
        return f"{text} at {self.target:#x}" if self.target is not None else text


def expect(site: Site, layout: Layout, relocation: Relocation | None) -> Expectation:
    """Linux's rule for one site, with the live ROM's answers (``relocation``; None: no ROM)."""
    op = site.op(layout)
    call = pvops.PATCHED_OPS.get(op)
    if call is None:
        return Expectation(op)
    if relocation is None:
        return Expectation(op, call)
    reloc, entry = relocation(call)
    target = entry if reloc in (VmiRelocation.CALL_REL, VmiRelocation.JUMP_REL) else None
    return Expectation(op, call, reloc, target)


def calls_of(site: Site, layout: Layout) -> tuple[VmiCall, ...]:
    """The VMI calls a site leads to: the one vmi_patch() patches it with, else the one(s)
    activate_vmi() fills its pv-op with (``pvops.OPS``)."""
    op = site.op(layout)
    if op in pvops.PATCHED_OPS:
        return (pvops.PATCHED_OPS[op],)
    rule = pvops.OPS.get(op)
    return rule.calls if rule is not None else ()


def judge(state: SiteState, exp: Expectation, *, in_init: bool = False) -> str:
    """``ok`` when memory holds what Linux's rule says; ``WRONG`` otherwise, except ``freed``
    for a site in init text (Linux frees and reuses it after boot, so its bytes say nothing)
    and ``?`` for a site whose native code could not be compared (no file)."""
    if state.kind == exp.kind and (exp.target is None or state.target == exp.target):
        return "ok"
    if in_init:
        return "freed"
    if state.kind == "unverified" and exp.kind == "native":
        return "?"
    return "WRONG"


def split_padding(insns: Iterable[decode.Insn]) -> tuple[list[decode.Insn], int]:
    """The instructions before the trailing NOP padding, and how many bytes of NOPs pad them."""
    body = list(insns)
    pad = 0
    while body and decode.is_nop(body[-1]):
        pad += body.pop().size
    return body, pad


def describe_insns(insns: Iterable[decode.Insn]) -> str:
    """``cli; nop x4`` style: the instructions, with the NOP padding counted in bytes (``nops
    (2 bytes)`` when the padding uses multi-byte NOPs)."""
    insns = list(insns)
    body, pad = split_padding(insns)
    text = "; ".join(i.text for i in body)
    if pad:
        single = all(i.size == 1 for i in insns[len(body):])
        nops = f"nop x{pad}" if single else f"nops ({pad} bytes)"
        text = f"{text}; {nops}" if text else nops
    return text or "(undecodable)"


def to_event(seq: int, site: Site, state: SiteState) -> tr.PatchSite:
    """The trace event for one site (``vmigdb.trace.PatchSite``; its type is the slot)."""
    return tr.PatchSite(seq, addr=site.addr, type=site.type, len=site.len,
                        clobbers=site.clobbers, reloc=state.reloc.name,
                        target=state.target or 0)


def entry_map(base: int, call_table: Mapping[VmiCall, int | None]) -> dict[int, VmiCall]:
    """Linear entry address -> call, for a ROM at ``base`` with a vmigdb call table."""
    return {base + off: call for call, off in call_table.items() if off}


#: Linux clobber-mask bits of a record (``CLBR_EAX`` ... ``CLBR_EDI`` from 2.6.28), for display.
CLOBBER_BITS: tuple[tuple[int, str], ...] = ((1, "eax"), (2, "ecx"), (4, "edx"), (8, "edi"))


def describe_clobbers(mask: int) -> str:
    names = decode.mask_names(mask, CLOBBER_BITS)
    return ",".join(names) if names else "none"

