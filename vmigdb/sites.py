"""Patch sites: Linux's ``.parainstructions`` records, and what each site holds now.

Pure: works on bytes. The records come from the guest's ELF file (or from guest memory between
``__start_parainstructions`` and ``__stop_parainstructions``); the original native instructions
come from the file, the current ones from memory, and ``classify`` says what the patcher made of
each site: a call (or jump) into a ROM entry, NOPs, or the native code left in place. That is the
question a reader of a VMI kernel asks first: which sensitive instructions went where.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vmigdb import decode
from vmigdb import trace as tr
from vmigdb.abi import VmiCall, VmiRelocation
from vmigdb.errors import GuestImageError

#: Linux's ``struct paravirt_patch_site`` as i386 lays it out in the section: ``.long addr;
#: .byte type; .byte len; .short clobbers`` (8 bytes; the guest aligns each record to 4).
RECORD = struct.Struct("<IBBH")
SECTION = ".parainstructions"
START_SYMBOL = "__start_parainstructions"
STOP_SYMBOL = "__stop_parainstructions"

_NOP = 0x90
_CALL_REL32 = 0xE8
_JMP_REL32 = 0xE9


@dataclass(frozen=True)
class Site:
    """One ``.parainstructions`` record: the site's address, VMI call number, length, clobbers."""

    addr: int
    type: int
    len: int
    clobbers: int

    @property
    def call(self) -> VmiCall | None:
        try:
            return VmiCall(self.type)
        except ValueError:
            return None

    @property
    def call_name(self) -> str:
        c = self.call
        return c.name if c is not None else f"type {self.type}"

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

    ``kind``: ``call`` / ``jump`` (a rel32 into ``target``, rest NOP), ``nop`` (all NOPs),
    ``native`` (unchanged), ``modified`` (anything else). ``target_call`` names the ROM entry
    the target is, when the caller knows the ROM; ``consistent`` says the redirection goes to the
    entry of the very call the record names (what a correct patcher produces).
    """

    kind: str
    insns: tuple[decode.Insn, ...]
    target: int | None = None
    target_call: VmiCall | None = None
    consistent: bool = False

    @property
    def reloc(self) -> VmiRelocation:
        return {"call": VmiRelocation.CALL_REL, "jump": VmiRelocation.JUMP_REL,
                "nop": VmiRelocation.NOP}.get(self.kind, VmiRelocation.NONE)


def classify(site: Site, now: bytes, original: bytes | None,
             entries: Mapping[int, VmiCall] | None = None) -> SiteState:
    """Classify the ``site.len`` bytes ``now`` at the site; ``entries`` maps ROM entry linear
    addresses to their calls (from the located ROM), ``original`` is the file's bytes."""
    now = bytes(now[:site.len])
    insns = tuple(decode.disassemble(now, site.addr))
    if original is not None and now == bytes(original[:site.len]):
        return SiteState("native", insns)
    if now and all(b == _NOP for b in now):
        return SiteState("nop", insns, consistent=True)
    if len(now) >= 5 and now[0] in (_CALL_REL32, _JMP_REL32) and all(
            b == _NOP for b in now[5:]):
        rel = int.from_bytes(now[1:5], "little", signed=True)
        target = (site.addr + 5 + rel) & 0xFFFFFFFF
        call = (entries or {}).get(target)
        kind = "call" if now[0] == _CALL_REL32 else "jump"
        return SiteState(kind, insns, target, call, call is not None and call == site.call)
    return SiteState("modified", insns)


def split_padding(insns: Iterable[decode.Insn]) -> tuple[list[decode.Insn], int]:
    """The instructions before the trailing NOP padding, and how many NOPs pad them."""
    body = list(insns)
    pad = 0
    while body and body[-1].mnemonic == "nop" and body[-1].size == 1:
        body.pop()
        pad += 1
    return body, pad


def describe_insns(insns: Iterable[decode.Insn]) -> str:
    """``cli; nop x4`` style: the instructions, with the NOP padding counted."""
    body, pad = split_padding(insns)
    text = "; ".join(i.text for i in body)
    if pad:
        text = f"{text}; nop x{pad}" if text else f"nop x{pad}"
    return text or "(undecodable)"


def to_event(seq: int, site: Site, state: SiteState) -> tr.PatchSite:
    """The trace event for one site (``vmigdb.trace.PatchSite``)."""
    return tr.PatchSite(seq, addr=site.addr, type=site.type, len=site.len,
                        clobbers=site.clobbers, reloc=state.reloc.name,
                        target=state.target or 0)


def entry_map(base: int, call_table: Mapping[VmiCall, int | None]) -> dict[int, VmiCall]:
    """Linear entry address -> call, for a ROM at ``base`` with a vmigdb call table."""
    return {base + off: call for call, off in call_table.items() if off}


#: Linux clobber-mask bits of a record (``CLBR_EAX`` ...), for display.
CLOBBER_BITS: tuple[tuple[int, str], ...] = ((1, "eax"), (2, "ecx"), (4, "edx"))


def describe_clobbers(mask: int) -> str:
    names = decode.mask_names(mask, CLOBBER_BITS)
    return ",".join(names) if names else "none"

