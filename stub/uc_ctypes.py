"""What the unicorn 2.1.4 Python binding does not wrap: CPU-state fields, raw register reads.

* The x86 error code and QEMU's ``old_exception`` are only reachable inside the context blob.
  Their offsets are version specific, so ``find_context_offsets`` measures them once per process
  with a fault that needs no guest code (an instruction fetch from a user page under CR4.SMEP,
  error code 0x11) and refuses to run on a layout it does not recognise.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_GDTR,
    UC_X86_REG_GS,
    UC_X86_REG_SS,
)

from vmigdb import x86
from vmigdb.errors import VmiError


@dataclass(frozen=True)
class ContextOffsets:
    """Byte offsets in a ``uc_context`` blob (CPUX86State fields)."""

    error_code: int  # env->error_code
    is_int: int  # env->exception_is_int (follows error_code)
    next_eip: int  # env->exception_next_eip (8-aligned after is_int)
    old_exception: int  # env->old_exception: -1 when no exception is being delivered
    hflags: int  # env->hflags: bits 0-1 are the CPL
    segs: int  # env->segs[6]: {u32 selector; u64 base; u32 limit; u32 flags}, 24 bytes each


#: unicorn 2.1.4 (measured; see shared/reference/unicorn-facts.md section 2a). CPUX86State starts
#: 40 bytes into the blob: regs[16] (8 bytes each), eip at +128, hflags at +176, segs at +184.
PINNED = ContextOffsets(error_code=5424, is_int=5428, next_eip=5432, old_exception=5536,
                        hflags=216, segs=224)
SEG_SIZE = 24
R_CS, R_SS, R_GS = 1, 2, 5
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32, HF_SS32 = 1 << 4, 1 << 5
#: QEMU's segment-cache flags (DESC_G|B|P|S, with CS|R|A for code, W|A for data), DPL 0.
FLAT_CODE0 = (1 << 23) | (1 << 22) | (1 << 15) | (1 << 12) | (1 << 11) | (1 << 9) | (1 << 8)
FLAT_DATA0 = (1 << 23) | (1 << 22) | (1 << 15) | (1 << 12) | (1 << 9) | (1 << 8)
_HF_PE_CS32_SS32 = (1 << 7) | (1 << 4) | (1 << 5)
_PROBE_ERROR = 0x11  # #PF: present | instruction fetch
_measured: ContextOffsets | None = None


def find_context_offsets() -> ContextOffsets:
    """Measure the offsets on a scratch engine (once per process); VmiError if they moved."""
    global _measured
    if _measured is not None:
        return _measured
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x4000)
    p = PINNED
    # Segment probe: flat code/data and a GS with a recognisable base, as the machine sets up.
    uc.mem_write(0, struct.pack("<4Q", 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF,
                                0x00CF93001234FFFF))
    uc.reg_write(UC_X86_REG_GDTR, (0, 0, 0x1F, 0))
    uc.reg_write(UC_X86_REG_CS, 0x08)
    uc.reg_write(UC_X86_REG_SS, 0x10)
    uc.reg_write(UC_X86_REG_GS, 0x18)
    seg = bytes(uc.context_save())
    gs_sel, gs_base = struct.unpack_from("<I4xQ", seg, p.segs + R_GS * SEG_SIZE)
    (hflags,) = struct.unpack_from("<I", seg, p.hflags)
    if (gs_sel, gs_base) != (0x18, 0x1234) or hflags & (_HF_PE_CS32_SS32 | HF_CPL_MASK) != \
            _HF_PE_CS32_SS32:
        raise VmiError("unicorn's CPU context layout is not the one measured for 2.1.4 "
                       "(segment cache/hflags offsets); use unicorn==2.1.4")
    uc.mem_write(0x1000, struct.pack("<I", 0x2000 | 7))  # PDE 0 -> page table at 0x2000
    uc.mem_write(0x2000 + 3 * 4, struct.pack("<I", 0x3000 | 7))  # user page at 0x3000
    uc.reg_write(UC_X86_REG_CR4, uc.reg_read(UC_X86_REG_CR4) | x86.CR4_SMEP)
    uc.reg_write(UC_X86_REG_CR3, 0x1000)
    uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) | x86.CR0_PG)
    before = bytes(uc.context_save())
    seen: list[tuple[int, bytes]] = []

    def on_intr(u: Uc, intno: int, _data: object) -> None:
        seen.append((intno, bytes(u.context_save())))
        u.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    try:
        uc.emu_start(0x3000, 0xFFFFFFFF, count=1)
    except UcError:
        pass
    if not seen or seen[0][0] != 14:
        raise VmiError("unicorn did not raise the probe page fault; use unicorn==2.1.4")
    after = seen[0][1]

    def i32(blob: bytes, off: int) -> int:
        return struct.unpack_from("<i", blob, off)[0]

    ok = (i32(before, p.error_code) == 0 and i32(after, p.error_code) == _PROBE_ERROR
          and i32(before, p.old_exception) == -1 and i32(after, p.old_exception) == 14
          and i32(after, p.is_int) == 0 and i32(after, p.next_eip) == 0x3000)
    if not ok:
        raise VmiError("unicorn's CPU context layout is not the one measured for 2.1.4 "
                       "(error_code/old_exception offsets); use unicorn==2.1.4")
    _measured = p
    return p


class ContextPeek:
    """Reads the exception fields and resets ``old_exception`` with one save and one restore."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.off = find_context_offsets()
        self.ctx = uc.context_save()  # reused: context_update saves into it without allocating

    def take_exception(self) -> tuple[int, bool, int]:
        """(error code, software int?, next eip) of the exception being raised; clears
        old_exception so the next fault is not turned into #DF (QEMU resets it only in the
        delivery code Unicorn skips)."""
        self.uc.context_update(self.ctx)
        base = self.ctx.context.value
        o = self.off
        err = ctypes.c_int32.from_address(base + o.error_code).value & 0xFFFFFFFF
        is_int = ctypes.c_int32.from_address(base + o.is_int).value != 0
        next_eip = ctypes.c_uint64.from_address(base + o.next_eip).value & 0xFFFFFFFF
        ctypes.c_int32.from_address(base + o.old_exception).value = -1
        self.uc.context_restore(self.ctx)
        return err, is_int, next_eip

    def clear_old_exception(self) -> None:
        """Forget an exception Unicorn raised but dropped because a stop was pending (a code
        hook stops before a faulting load: QEMU has already recorded the #PF), which would
        otherwise turn the next real fault into #DF."""
        self.uc.context_update(self.ctx)
        ctypes.c_int32.from_address(self.ctx.context.value + self.off.old_exception).value = -1
        self.uc.context_restore(self.ctx)

    def gs_base(self) -> int:
        """The hidden GS base (the binding's UC_X86_REG_GS_BASE is a no-op in 32-bit mode)."""
        self.uc.context_update(self.ctx)
        return ctypes.c_uint64.from_address(
            self.ctx.context.value + self.off.segs + R_GS * SEG_SIZE + 8).value & 0xFFFFFFFF

    def force_cpl0(self) -> None:
        """Set CPL to 0 so ring-0 CS and SS can be loaded with reg_write: Unicorn checks a
        selector load against the current CPL, which an inward interrupt must change first."""
        self.uc.context_update(self.ctx)
        h = ctypes.c_uint32.from_address(self.ctx.context.value + self.off.hflags)
        h.value &= ~HF_CPL_MASK
        self.uc.context_restore(self.ctx)

    def interrupt_shadow(self) -> bool:
        """The instruction after STI or MOV SS runs before any interrupt is taken (QEMU keeps
        that as HF_INHIBIT_IRQ in hflags)."""
        self.uc.context_update(self.ctx)
        return bool(ctypes.c_uint32.from_address(self.ctx.context.value + self.off.hflags).value
                    & HF_INHIBIT_IRQ)

    def load_flat_ring0(self, cs: int, ss: int) -> None:
        """Load CS and SS with flat 4 GiB ring-0 descriptors, whatever the GDT holds (SYSENTER
        does: SDM Vol. 2B), and CPL 0, as QEMU's cpu_x86_load_seg_cache would."""
        self.uc.context_update(self.ctx)
        base = self.ctx.context.value
        for reg, sel, flags in ((R_CS, cs, FLAT_CODE0), (R_SS, ss, FLAT_DATA0)):
            struct.pack_into("<I4xQII", (ctypes.c_char * SEG_SIZE).from_address(
                base + self.off.segs + reg * SEG_SIZE), 0, sel, 0, 0xFFFFFFFF, flags)
        h = ctypes.c_uint32.from_address(base + self.off.hflags)
        h.value = (h.value & ~HF_CPL_MASK) | HF_CS32 | HF_SS32
        self.uc.context_restore(self.ctx)

    def old_exception(self) -> int:
        self.uc.context_update(self.ctx)
        return ctypes.c_int32.from_address(self.ctx.context.value + self.off.old_exception).value


uclib.uc_reg_read.restype = ctypes.c_int
uclib.uc_reg_read.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
_reg_buf = ctypes.c_uint64()
_reg_ref = ctypes.byref(_reg_buf)


def reg_read32(uc: Uc, regid: int) -> int:
    """A 32-bit register straight from libunicorn: about 3x cheaper than the binding's reg_read,
    which the tracer calls for every argument of every ROM call."""
    _reg_buf.value = 0
    uclib.uc_reg_read(uc._uch, regid, _reg_ref)
    return _reg_buf.value & 0xFFFFFFFF


uclib.uc_reg_read_batch.restype = ctypes.c_int
uclib.uc_reg_read_batch.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_int)


#: Bytes per register in a raw batch read: the largest value libunicorn writes for an x86
#: register we read is the 24-byte ``uc_x86_mmr`` (gdtr, idtr, ldtr, tr).
RAW_SLOT = 32


def raw_batch_reader(uc: Uc, regids: tuple[int, ...]):
    """A function reading registers of any size in one libunicorn call: the raw bytes,
    ``RAW_SLOT`` per register in ``regids`` order, zero-filled past what libunicorn wrote.
    gdb's ``g`` packet reads 52 registers; one binding call each cost ~10 us."""
    n = len(regids)
    ids = (ctypes.c_int * n)(*regids)
    buf = (ctypes.c_uint8 * (RAW_SLOT * n))()
    ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(buf) + RAW_SLOT * i for i in range(n)))
    handle = uc._uch
    read = uclib.uc_reg_read_batch

    def reader() -> bytes:
        ctypes.memset(buf, 0, RAW_SLOT * n)
        err = read(handle, ids, ptrs, n)
        if err:
            raise UcError(err)
        return bytes(buf)

    return reader
