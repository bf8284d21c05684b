"""The identity VMI ROM is faithful: every call, run alone on vmigdb's machine, does what its
native instruction does, and PTE batching changes nothing but the number of exits.

Harness: tests/asm/romcall.S (a paged protected-mode guest with its own GDT, LDT, TSS, IDT and
page tables, stopped at ``harness_ready``) and the ROM conftest's ``built`` made. Each per-call
test boots two machines to the same state: one calls the ROM entry that get_reloc hands out at
the ROM's Linux-style linear address (0xC00C0000 in place, or a copy in RAM with batching on),
the other the harness's ``native_<Call>`` routine with the same registers. Both return to a
breakpoint at ``ret_here``; then results, the registers the ABI says are preserved, EFLAGS'
system bits, control and descriptor-table registers, debug registers, MSRs, the low 4 MiB of
RAM (all the harness's tables; the call stack excepted), guest reads through the TLB and port
writes must agree. Calls that do not return (IRET, SYSEXIT, Halt, Shutdown) have their own tests.

Batching: the ROM copied into RAM (writable, so vmi_init announces base | 1) queues deferred
SetPxE updates in lazy MMU mode and applies them at a flush announced on ROM_FLUSH_PORT; the
page tables, translations and guest reads must equal what the in-place read-only ROM (which
writes every update at once) produces, with exactly ceil(N / ROM_QUEUE_LEN) flush exits.
"""

from __future__ import annotations

import math
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmigdb import abi, rominfo
from vmigdb.abi import Clobbers, FlushTrigger, TlbAction, VmiCall, VmiRelocation
from vmigdb.stub.machine import Machine, Stop, StopReason
from vmigdb.x86 import CR4_PGE, CR4_PSE

ASM = Path(__file__).parent / "asm"
RAM_SIZE = 16 << 20
#: RAM the per-call tests compare byte for byte: low memory, the ROM window and the harness with
#: all its tables (every address a case passes lies below 2 MiB). The page sets the batching
#: tests map sit above it and are checked there through translations and guest reads.
RAM_COMPARED = 4 << 20
PAGE = 0x1000
KERNEL_BASE = 0xC0000000  # the harness's alias of physical 0 (Linux's PAGE_OFFSET)
ROM_LINEAR = KERNEL_BASE + abi.ROM_SCAN_START  # where Linux calls the in-place ROM
COPY_PA = 0x600000  # where the batching tests copy the ROM image (page-aligned RAM)
COPY_LINEAR = KERNEL_BASE + COPY_PA
PAGES_A = 0x800000  # page i of the "old" mappings; its first dword is MARK_A | i
PAGES_B = 0xA00000  # page i of the "new" mappings
PAGES_C = 0xC00000  # a third set (Ordering test)
MARK_A, MARK_B, MARK_C = 0xAA000000, 0xBB000000, 0xCC000000
PTE_BITS = 0x67  # present, writable, user, accessed, dirty (as the harness maps everything)
PTE_GLOBAL = 0x100
KCODE, KDATA, UCODE, UDATA = 0x08, 0x10, 0x1B, 0x23
TSS_A, LDT_A, TSS_B, LDT_B = 0x28, 0x30, 0x38, 0x40
MSRS = (0x174, 0x175, 0x176)  # SYSENTER_CS, _ESP, _EIP
DEBUG_REGS = (0, 1, 2, 3, 6, 7)

# x86 facts (not VMI).
EF_CF, EF_TF, EF_IF, EF_DF, EF_IOPL, EF_NT = 0x1, 0x100, 0x200, 0x400, 0x3000, 0x4000
EF_RF, EF_VM, EF_AC, EF_ID = 1 << 16, 1 << 17, 1 << 18, 1 << 21
SYSTEM_FLAGS = EF_TF | EF_IF | EF_DF | EF_IOPL | EF_NT | EF_RF | EF_VM | EF_AC | EF_ID
CR0_MP, CR0_TS = 0x2, 0x8
PORT_KBC, PORT_POST, PORT_EXIT = 0x64, 0x80, 0xF4

GPRS = ("eax", "ecx", "edx", "ebx", "esi", "edi", "ebp", "esp")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
SYSTEM_REGS = ("cr0", "cr2", "cr3", "cr4", "efer", "gdtr_base", "gdtr_limit", "idtr_base",
               "idtr_limit", "ldtr", "tr")
#: Distinct values in every general register before a call, so "preserved" means something.
JUNK = {"eax": 0x0EAA0EAA, "ecx": 0x0ECC0ECC, "edx": 0x0EDD0EDD, "ebx": 0x0EBB0EBB,
        "esi": 0x05150515, "edi": 0x0ED10ED1, "ebp": 0x0EB90EB9}
PRESERVED = ("ebx", "esi", "edi", "ebp")  # by every call (vmi_rom.S convention)
SCRATCH = ("eax", "ecx", "edx")


def _tool(*argv: object) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], check=True, capture_output=True, text=True).stdout
    return {p[2]: int(p[0], 16) for p in (ln.split() for ln in out.splitlines()) if len(p) == 3}


@dataclass(frozen=True)
class Rig:
    """The harness ELF and the ROM (built from source by ``make all``), with their symbols."""

    harness: Path
    rom: Path
    image: bytes
    info: rominfo.RomInfo
    sym: dict[str, int]  # harness symbols (addresses)
    rom_sym: dict[str, int]  # ROM symbols (image offsets)


@pytest.fixture(scope="module")
def rig(built, tmp_path_factory: pytest.TempPathFactory) -> Rig:
    """conftest's ``built`` (``make all``: build/vmi_rom.bin and .elf) plus the harness guest,
    assembled and linked here."""
    d = tmp_path_factory.mktemp("romcalls")
    _tool("as", "--32", "-I", ASM, "-o", d / "romcall.o", ASM / "romcall.S")
    _tool("ld", "-m", "elf_i386", "-T", ASM / "romcall.ld", "--no-warn-rwx-segments",
          "-o", d / "romcall.elf", d / "romcall.o")
    image = built.rom.read_bytes()
    return Rig(d / "romcall.elf", built.rom, image, rominfo.parse_rom(image),
               _symbols(d / "romcall.elf"), _symbols(built.rom.with_suffix(".elf")))


def u32(data: bytes, off: int = 0) -> int:
    return struct.unpack_from("<I", data, off)[0]


# --- the harness machine ------------------------------------------------------------------------

class Harness:
    """One machine booted to ``harness_ready``, with a way to call a routine and log ports."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.sym = rig.sym
        self.m = Machine.from_files(str(rig.harness), rom=str(rig.rom), ram_size=RAM_SIZE,
                                    no_reboot=True)
        stop = self.m.run()
        assert (stop.reason, stop.pc) == (StopReason.HALT, self.sym["harness_ready"] + 1), stop
        self.m.add_breakpoint(self.sym["ret_here"])
        self.ports: list[tuple[int, int, int]] = []
        self.inits: list[int] = []
        self.flushes: list[dict[str, object]] = []
        for port in (PORT_KBC, PORT_POST, PORT_EXIT):
            self.m.add_port_observer(port, self._log_port)
        self.m.add_port_observer(abi.ROM_INIT_PORT, self._log_init)
        self.m.add_port_observer(abi.ROM_FLUSH_PORT, self._log_flush)
        self.entry_esp = self.sym["call_stack_top"] - 64
        self.note: dict[str, int] = {}

    # Port observers run inside the machine's I/O hook: they only record.
    def _log_port(self, m: Machine, port: int, size: int, value: int) -> None:
        self.ports.append((port, size, value))

    def _log_init(self, m: Machine, port: int, size: int, value: int) -> None:
        self.inits.append(value)
        self.note["init_eip"] = m.reg_read("eip")

    def _log_flush(self, m: Machine, port: int, size: int, value: int) -> None:
        """Record the batch header and its entries as they are at the announcing outl."""
        head = m.read_virt(value, abi.VMI_BATCH_SIZE)
        rec: dict[str, object] = {"addr": value, "eip": m.reg_read("eip")}
        for f in abi.VMI_BATCH:
            rec[f.name] = int.from_bytes(head[f.offset:f.offset + f.size], "little")
        raw = m.read_virt(value + abi.VMI_BATCH_SIZE, int(rec["count"]) * abi.VMI_BATCH_ENTRY_SIZE)
        rec["entries"] = [struct.unpack_from("<4I", raw, i * abi.VMI_BATCH_ENTRY_SIZE)
                          for i in range(int(rec["count"]))]
        self.flushes.append(rec)

    def call(self, entry: int, regs: dict[str, int] | None = None, stack: tuple[int, ...] = (),
             ret: int | None = None) -> Stop:
        """Call ``entry`` as the VMI convention says: arguments in registers and above the
        return address, which points at ``ret_here``. Returns how the run stopped."""
        ret = self.sym["ret_here"] if ret is None else ret
        words = (ret, *stack)
        self.m.write_virt(self.entry_esp, struct.pack(f"<{len(words)}I", *words))
        for name, value in (regs or {}).items():
            self.m.reg_write(name, value)
        self.m.reg_write("esp", self.entry_esp)
        self.m.reg_write("eip", entry)
        return self.m.run()

    def returned(self, stop: Stop) -> bool:
        return stop.reason is StopReason.BREAKPOINT and stop.pc == self.sym["ret_here"]

    def explain(self, stop: Stop) -> str:
        if stop.reason is StopReason.HALT and stop.pc == self.sym["fault_common"] + 1:
            vec, err, eip, cs, fl = struct.unpack("<5I", self.m.read_virt(self.m.reg_read("esp"), 20))
            return f"exception {vec} (error code {err:#x}) at {cs:#x}:{eip:#x}, eflags {fl:#x}"
        return f"{stop.reason.value} at {stop.pc:#x}: {stop.message}"

    def run(self, entry: int, regs: dict[str, int] | None = None,
            stack: tuple[int, ...] = ()) -> dict[str, int]:
        """Call and insist it returns; the registers after the return."""
        stop = self.call(entry, regs, stack)
        assert self.returned(stop), self.explain(stop)
        return {n: self.m.reg_read(n) for n in (*GPRS, "eflags")}

    def native(self, name: str, **regs: int) -> dict[str, int]:
        return self.run(self.sym[name], regs)

    # --- what the tests compare ---
    def get_reloc(self, call: int, base: int = ROM_LINEAR) -> tuple[int, int]:
        """Ask the ROM at ``base`` (in the guest) for the entry of ``call``: (EAX, DL)."""
        r = self.run(base + abi.GET_RELOC_OFFSET, {**JUNK, "eax": call})
        for reg in PRESERVED:
            assert r[reg] == JUNK[reg], f"get_reloc changed {reg}"
        return r["eax"], r["edx"] & 0xFF

    def ram(self) -> bytes:
        """RAM_COMPARED bytes of RAM, the call stack page blanked (each routine's own scratch)."""
        data = bytearray(self.m.read_phys(0, RAM_COMPARED))
        lo = self.sym["call_stack"]
        data[lo:self.sym["call_stack_top"]] = bytes(self.sym["call_stack_top"] - lo)
        return bytes(data)

    def debug_regs(self) -> tuple[int, ...]:
        """DR0-3, DR6, DR7 as the guest reads them (the machine does not expose them)."""
        return tuple(self.native(f"native_GetDR{n}")["eax"] for n in DEBUG_REGS)

    def msrs(self) -> tuple[int, ...]:
        out = []
        for msr in MSRS:
            r = self.native("native_RDMSR", ecx=msr)
            out.append(r["edx"] << 32 | r["eax"])
        return tuple(out)

    def read_vas(self, vas: list[int]) -> list[int]:
        """The dword at each VA, read by the guest through its TLB."""
        arr = self.sym["scratch"]
        out = arr + 4 * len(vas)
        self.m.write_virt(arr, struct.pack(f"<{len(vas)}I", *vas))
        self.run(self.sym["read_vas"], {"esi": arr, "edi": len(vas), "ebx": out})
        return list(struct.unpack(f"<{len(vas)}I", self.m.read_virt(out, 4 * len(vas))))

    def do_calls(self, entry: int, triples: list[tuple[int, int, int]]) -> None:
        """The guest calls ``entry`` once per (EAX, EDX, ECX) triple, in a loop of its own."""
        arr = self.sym["scratch"]
        flat = [v for t in triples for v in t]
        self.m.write_virt(arr, struct.pack(f"<{len(flat)}I", *flat))
        self.run(self.sym["do_calls"], {"ebx": entry, "esi": arr, "edi": len(triples)})

    def u32(self, va: int) -> int:
        return u32(self.m.read_virt(va, 4))

    def set_pte(self, index: int, value: int) -> None:
        """Host write of pt_test[index] (only used where the TLB cannot hold that VA yet)."""
        self.m.write_phys(self.sym["pt_test"] + 4 * index, struct.pack("<I", value))


def write_marked_pages(h: Harness, base: int, mark: int, count: int) -> None:
    """Page i at ``base`` starts with ``mark | i`` (one host write)."""
    data = bytearray(count * PAGE)
    for i in range(count):
        struct.pack_into("<I", data, i * PAGE, mark | i)
    h.m.write_phys(base, bytes(data))


def boot_copied(rig: Rig) -> Harness:
    """The ROM image copied to RAM at COPY_PA (writable) and initialised at its linear alias:
    vmi_init must announce base | ROM_INIT_BATCHED."""
    h = Harness(rig)
    h.m.write_phys(COPY_PA, rig.image)
    r = h.run(COPY_LINEAR + abi.VMI_INIT_OFFSET, dict(JUNK))
    assert r["eax"] == 0
    assert h.inits == [COPY_LINEAR | abi.ROM_INIT_BATCHED]
    assert h.note["init_eip"] == COPY_LINEAR + rig.rom_sym["rom_init_announce"]
    assert h.u32(COPY_LINEAR + rig.rom_sym["rom_batched"]) == 1
    h.note["base"] = COPY_LINEAR
    return h


def boot_in_place(rig: Rig, base: int = ROM_LINEAR) -> Harness:
    """The read-only ROM at 0xC0000, initialised at ``base``: announced without the bit."""
    h = Harness(rig)
    r = h.run(base + abi.VMI_INIT_OFFSET, dict(JUNK))
    assert r["eax"] == 0
    assert h.inits == [base]
    assert h.note["init_eip"] == base + rig.rom_sym["rom_init_announce"]
    h.note["base"] = base
    return h


def entry_of(h: Harness, call: VmiCall) -> int:
    entry, reloc = h.get_reloc(call, h.note["base"])
    assert reloc == VmiRelocation.CALL_REL
    return entry


@dataclass
class Snapshot:
    regs: dict[str, int]
    ram: bytes
    debug: tuple[int, ...]
    msrs: tuple[int, ...]
    probes: list[int | None]
    ports: list[tuple[int, int, int]]


def snapshot(h: Harness, probes: tuple[int, ...]) -> Snapshot:
    """Registers and RAM first, then what only guest code can read (DRs, MSRs, the TLB)."""
    regs = {n: h.m.reg_read(n) for n in (*GPRS, *SEGMENTS, *SYSTEM_REGS, "eflags", "eip")}
    ram = h.ram()
    ports = list(h.ports)
    mapped = [va for va in probes if h.m.translate(va) is not None]
    seen = dict(zip(mapped, h.read_vas(mapped))) if mapped else {}
    return Snapshot(regs, ram, h.debug_regs(), h.msrs(), [seen.get(va) for va in probes], ports)


# --- the cases: one per call (and variant) ----------------------------------------------------

S = dict[str, int]  # harness symbols
Check = Callable[[Harness, Snapshot, Snapshot], None]


@dataclass(frozen=True)
class Case:
    """One ROM call against its native routine.

    ``args`` maps each argument *name* of ``abi.CALLS[call]`` to a value (the test places it
    where the ABI says); ``setup`` prepares both machines alike; ``check`` asserts on the ROM
    machine that the call had its intended effect (so that "equal to native" is not vacuous);
    ``probes`` are VAs the guest reads afterwards through its TLB; ``result_mask`` narrows a
    result to the bits the ABI defines.
    """

    call: VmiCall
    native: str
    args: Callable[[S], dict[str, int]] = lambda s: {}
    setup: Callable[[Harness], None] | None = None
    check: Check | None = None
    probes: Callable[[S], tuple[int, ...]] = lambda s: ()
    result_mask: dict[str, int] = field(default_factory=dict)
    variant: str = ""
    compare_results: bool = True

    @property
    def id(self) -> str:
        return self.call.name + (f"-{self.variant}" if self.variant else "")


def _unchanged(h: Harness, before: Snapshot, after: Snapshot) -> None:
    """For calls with no effect: memory, system registers, DRs and MSRs as before."""
    assert after.ram == before.ram
    assert {n: after.regs[n] for n in SYSTEM_REGS} == {n: before.regs[n] for n in SYSTEM_REGS}
    assert (after.debug, after.msrs) == (before.debug, before.msrs)


def _reg(name: str, value: Callable[[S], int] | int, mask: int = 0xFFFFFFFF) -> Check:
    """Register ``name`` (under ``mask``) became ``value`` and was not that before."""
    def check(h: Harness, before: Snapshot, after: Snapshot) -> None:
        want = value(h.sym) if callable(value) else value
        assert after.regs[name] & mask == want & mask, f"{name} = {after.regs[name]:#x}"
        assert before.regs[name] & mask != want & mask, f"{name} was {want:#x} already"
    return check


def _result(name: str, value: Callable[[S], int] | int) -> Check:
    """A result register holds ``value`` (it held JUNK before the call)."""
    def check(h: Harness, before: Snapshot, after: Snapshot) -> None:
        want = value(h.sym) if callable(value) else value
        assert after.regs[name] == want, f"{name} = {after.regs[name]:#x}, want {want:#x}"
    return check


def _mem(addr: Callable[[S], int], data: bytes | Callable[[Snapshot], bytes]) -> Check:
    """Memory at ``addr`` became ``data`` (a function of the after-snapshot if callable)."""
    def check(h: Harness, before: Snapshot, after: Snapshot) -> None:
        a = addr(h.sym)
        want = data(after) if callable(data) else data
        assert after.ram[a:a + len(want)] == want
        assert before.ram[a:a + len(want)] != want
    return check


def _dtr(kind: str) -> Callable[[Snapshot], bytes]:
    """What sgdt / sidt store: limit, base; the buffer's last two bytes untouched."""
    return lambda a: struct.pack("<HI", a.regs[f"{kind}_limit"], a.regs[f"{kind}_base"]) + b"\xa5" * 2


def _all(*checks: Check) -> Check:
    def check(h: Harness, before: Snapshot, after: Snapshot) -> None:
        for c in checks:
            c(h, before, after)
    return check


def _stale_tlb(global_page: bool = False) -> Callable[[Harness], None]:
    """Map TEST_VA to page A, let the guest read it (the TLB now holds it), then have the guest
    store a PTE for page B: until something invalidates, the guest still reads page A (asserted
    here, so every case using this proves the harness can see a missing invalidation)."""
    def setup(h: Harness) -> None:
        write_marked_pages(h, PAGES_A, MARK_A, 1)
        write_marked_pages(h, PAGES_B, MARK_B, 1)
        g = PTE_GLOBAL if global_page else 0
        if global_page:
            h.m.reg_write("cr4", h.m.reg_read("cr4") | CR4_PGE)
        h.set_pte(0, PAGES_A | PTE_BITS | g)
        assert h.read_vas([h.sym["TEST_VA"]]) == [MARK_A]
        h.native("store", eax=h.sym["pt_test"], ecx=PAGES_B | PTE_BITS | g)
        assert h.read_vas([h.sym["TEST_VA"]]) == [MARK_A], "the TLB did not keep page A"
    return setup


def _reads_page_b(h: Harness, before: Snapshot, after: Snapshot) -> None:
    assert before.probes == [MARK_A] and after.probes == [MARK_B]


def _set_flags(bits: int, clear: int = 0) -> Callable[[Harness], None]:
    def setup(h: Harness) -> None:
        h.m.reg_write("eflags", (h.m.reg_read("eflags") | bits) & ~clear)
    return setup


def _set_cr(name: str, bits: int) -> Callable[[Harness], None]:
    def setup(h: Harness) -> None:
        h.m.reg_write(name, h.m.reg_read(name) | bits)
    return setup


def _set_dr(num: int, value: int) -> Callable[[Harness], None]:
    def setup(h: Harness) -> None:
        h.native(f"native_SetDR{num}", edx=value)
    return setup


def _debug_reg(index: int, value: int) -> Check:
    def check(h: Harness, before: Snapshot, after: Snapshot) -> None:
        assert (before.debug[index] != value, after.debug[index]) == (True, value), after.debug
    return check


def _msr(index: int, value: int) -> Check:
    def check(h: Harness, before: Snapshot, after: Snapshot) -> None:
        assert (before.msrs[index] != value, after.msrs[index]) == (True, value), after.msrs
    return check


def _ports(*want: tuple[int, int, int]) -> Check:
    def check(h: Harness, before: Snapshot, after: Snapshot) -> None:
        assert after.ports[len(before.ports):] == list(want)
    return check


def _tss_b_busy(h: Harness, before: Snapshot, after: Snapshot) -> None:
    """ltr marked TSS B busy in the GDT (type 9 -> 0xB), the ROM's ltr as the native one."""
    at = h.sym["gdt"] + TSS_B + 5
    assert (before.ram[at] & 0xF, after.ram[at] & 0xF) == (0x9, 0xB)
    assert after.regs["tr"] == TSS_B


def _note_tsc(h: Harness) -> None:
    r = h.native("native_RDTSC")
    h.note["tsc"] = r["edx"] << 32 | r["eax"]


def _tsc_in_order(h: Harness, before: Snapshot, after: Snapshot) -> None:
    """The ROM's TSC lies between a native read before and one after (same machine)."""
    r = h.native("native_RDTSC")
    t0, t1, t2 = h.note["tsc"], after.regs["edx"] << 32 | after.regs["eax"], r["edx"] << 32 | r["eax"]
    assert 0 < t0 <= t1 <= t2, (t0, t1, t2)


def _pte_flags(va: int, defer: bool = False) -> int:
    return (abi.VMI_PAGE_PT | abi.VMI_PAGE_CURRENT_AS | (va & abi.VMI_PAGE_VA_MASK)
            | (abi.VMI_PAGE_DEFER if defer else 0))


def _fresh_page_b(h: Harness) -> None:
    write_marked_pages(h, PAGES_B, MARK_B, 8)


def _set_pxe_check(h: Harness, before: Snapshot, after: Snapshot) -> None:
    at = h.sym["pt_test"] + 4 * 5
    assert u32(after.ram, at) == (PAGES_B + 5 * PAGE) | PTE_BITS and u32(before.ram, at) == 0
    assert (before.probes, after.probes) == ([None], [MARK_B | 5])
    assert h.m.translate(h.sym["TEST_VA"] + 5 * PAGE + 0x123) == PAGES_B + 5 * PAGE + 0x123


def _cases() -> list[Case]:
    C = VmiCall
    gdt_slot, ldt_slot, idt_slot = 9, 2, 0x80
    desc_lo, desc_hi = 0x1234FFFF, 0x00CF9356  # a flat data descriptor with base 0x56001234
    gate_lo, gate_hi = (KCODE << 16) | 0x5678, 0x0010EE00  # ring-3 callable interrupt gate
    desc = struct.pack("<II", desc_lo, desc_hi)
    pae_lo, pae_hi = 0x12345067, 0x0000000F
    esp0 = 0x00ABCDE0
    cr0 = 0x80010011 | CR0_TS | CR0_MP  # the harness's CR0 plus TS and MP
    dr_values = (0x1000, 0x2000, 0x3000, 0x4000, 0xFFFF4FF1, 0x00FF0400)  # DR7: no enables
    stale = {"setup": _stale_tlb(), "probes": lambda s: (s["TEST_VA"],), "check": _reads_page_b}
    set_pxe = {"setup": _fresh_page_b, "probes": lambda s: (s["TEST_VA"] + 5 * PAGE,),
               "check": _set_pxe_check}
    return [
        Case(C.CPUID, "native_CPUID", lambda s: {"leaf": 0, "subleaf": 0}, variant="leaf0",
             check=_result("ebx", 0x756E6547)),  # "Genu"
        Case(C.CPUID, "native_CPUID", lambda s: {"leaf": 1, "subleaf": 0}, variant="leaf1"),
        Case(C.WRMSR, "native_WRMSR", lambda s: {"msr": 0x175, "lo": 0x00C0FFEE, "hi": 0},
             check=_msr(1, 0x00C0FFEE)),
        Case(C.RDMSR, "native_RDMSR", lambda s: {"msr": 0x174}, variant="SYSENTER_CS",
             check=_result("eax", KCODE)),
        Case(C.RDMSR, "native_RDMSR", lambda s: {"msr": 0x176}, variant="SYSENTER_EIP",
             check=_result("eax", lambda s: s["fault_common"])),
        Case(C.SetGDT, "native_SetGDT", lambda s: {"desc": s["gdt2_desc"]},
             check=_reg("gdtr_base", lambda s: s["gdt2"])),
        Case(C.SetLDT, "native_SetLDT", lambda s: {"sel": LDT_B}, check=_reg("ldtr", LDT_B)),
        Case(C.SetLDT, "native_SetLDT", lambda s: {"sel": 0}, variant="none",
             check=_reg("ldtr", 0)),
        Case(C.SetIDT, "native_SetIDT", lambda s: {"desc": s["idt2_desc"]},
             check=_reg("idtr_base", lambda s: s["idt2"])),
        Case(C.SetTR, "native_SetTR", lambda s: {"sel": TSS_B}, check=_tss_b_busy),
        Case(C.GetGDT, "native_GetGDT", lambda s: {"desc": s["dtr_buf"]},
             check=_mem(lambda s: s["dtr_buf"], _dtr("gdtr"))),
        Case(C.GetLDT, "native_GetLDT", check=_result("eax", LDT_A)),
        Case(C.GetIDT, "native_GetIDT", lambda s: {"desc": s["dtr_buf"]},
             check=_mem(lambda s: s["dtr_buf"], _dtr("idtr"))),
        Case(C.GetTR, "native_GetTR", check=_result("eax", TSS_A)),
        Case(C.WriteGDTEntry, "native_WriteGDTEntry",
             lambda s: {"table": s["gdt"], "entry": gdt_slot, "lo": desc_lo, "hi": desc_hi},
             check=_mem(lambda s: s["gdt"] + 8 * gdt_slot, desc)),
        Case(C.WriteLDTEntry, "native_WriteLDTEntry",
             lambda s: {"table": s["ldt_a"], "entry": ldt_slot, "lo": desc_lo, "hi": desc_hi},
             check=_mem(lambda s: s["ldt_a"] + 8 * ldt_slot, desc)),
        Case(C.WriteIDTEntry, "native_WriteIDTEntry",
             lambda s: {"table": s["idt"], "entry": idt_slot, "lo": gate_lo, "hi": gate_hi},
             check=_mem(lambda s: s["idt"] + 8 * idt_slot, struct.pack("<II", gate_lo, gate_hi))),
        Case(C.UpdateKernelStack, "native_UpdateKernelStack",
             lambda s: {"tss": KDATA, "esp0": esp0},  # EAX as Linux passes it: __KERNEL_DS
             check=_mem(lambda s: s["tss_a"] + 4, struct.pack("<I", esp0))),
        Case(C.SetCR0, "native_SetCR0", lambda s: {"value": cr0}, check=_reg("cr0", cr0)),
        Case(C.SetCR2, "native_SetCR2", lambda s: {"value": 0xCAFEF00D},
             check=_reg("cr2", 0xCAFEF00D)),
        Case(C.SetCR3, "native_SetCR3", lambda s: {"value": s["pd2"]}, **{
            **stale, "check": _all(_reg("cr3", lambda s: s["pd2"]), _reads_page_b)}),
        Case(C.SetCR4, "native_SetCR4", lambda s: {"value": CR4_PSE | CR4_PGE},
             check=_reg("cr4", CR4_PSE | CR4_PGE)),
        Case(C.GetCR0, "native_GetCR0", check=_result("eax", 0x80010011)),
        Case(C.GetCR2, "native_GetCR2", setup=lambda h: h.m.reg_write("cr2", 0x0BADF00D),
             check=_result("eax", 0x0BADF00D)),
        Case(C.GetCR3, "native_GetCR3", check=_result("eax", lambda s: s["pd"])),
        Case(C.GetCR4, "native_GetCR4", setup=_set_cr("cr4", CR4_PSE),
             check=_result("eax", CR4_PSE)),
        Case(C.WBINVD, "native_WBINVD", check=_unchanged),
        *[Case(C.SetDR, f"native_SetDR{n}", lambda s, n=n, v=v: {"num": n, "value": v},
               variant=f"dr{n}", check=_debug_reg(i, v))
          for i, (n, v) in enumerate(zip(DEBUG_REGS, dr_values))],
        *[Case(C.GetDR, f"native_GetDR{n}", lambda s, n=n: {"num": n}, variant=f"dr{n}",
               setup=_set_dr(n, v), check=_result("eax", v))
          for n, v in zip(DEBUG_REGS, (0x5000, 0x6000, 0x7000, 0x8000, 0xFFFF0FF2, 0x00AA0400))],
        Case(C.RDPMC, "native_RDPMC", lambda s: {"counter": 0}),  # both #UD: see _same_fault
        Case(C.RDTSC, "native_RDTSC", setup=_note_tsc, check=_tsc_in_order,
             compare_results=False),
        Case(C.CLTS, "native_CLTS", setup=_set_cr("cr0", CR0_TS), check=_reg("cr0", 0, CR0_TS)),
        Case(C.EnableInterrupts, "native_EnableInterrupts", setup=_set_flags(0, EF_IF),
             check=_reg("eflags", EF_IF, EF_IF)),
        Case(C.DisableInterrupts, "native_DisableInterrupts", setup=_set_flags(EF_IF),
             check=_reg("eflags", 0, EF_IF)),
        # GetInterruptMask returns EFLAGS & IF (the ROM's contract, what Linux tests); native
        # pushf; pop gives all of EFLAGS, so results compare under the IF mask.
        Case(C.GetInterruptMask, "native_GetInterruptMask", setup=_set_flags(EF_IF),
             variant="enabled", result_mask={"eax": EF_IF}, check=_result("eax", EF_IF)),
        Case(C.GetInterruptMask, "native_GetInterruptMask", setup=_set_flags(0, EF_IF),
             variant="disabled", result_mask={"eax": EF_IF}, check=_result("eax", 0)),
        Case(C.SetInterruptMask, "native_SetInterruptMask", lambda s: {"mask": 0x202},
             setup=_set_flags(0, EF_IF), variant="enable", check=_reg("eflags", EF_IF, EF_IF)),
        Case(C.SetInterruptMask, "native_SetInterruptMask", lambda s: {"mask": 0x002},
             setup=_set_flags(EF_IF), variant="disable", check=_reg("eflags", 0, EF_IF)),
        Case(C.Reboot, "native_Reboot", lambda s: {"how": 0},
             check=_ports((PORT_KBC, 1, 0xFE))),
        Case(C.SetPxE, "native_SetPxE", **set_pxe,
             args=lambda s: {"pte": (PAGES_B + 5 * PAGE) | PTE_BITS,
                             "ptep": s["pt_test"] + 4 * 5,
                             "flags": _pte_flags(s["TEST_VA"] + 5 * PAGE)}),
        Case(C.SetPxE, "native_SetPxE", **set_pxe, variant="defer",
             args=lambda s: {"pte": (PAGES_B + 5 * PAGE) | PTE_BITS,
                             "ptep": KERNEL_BASE + s["pt_test"] + 4 * 5,
                             "flags": _pte_flags(s["TEST_VA"] + 5 * PAGE, defer=True)}),
        Case(C.SetPxELong, "native_SetPxELong",
             lambda s: {"pte": pae_lo, "pte_hi": pae_hi, "ptep": s["pae_table"] + 8 * 3,
                        "flags": _pte_flags(0x1000)},
             check=_mem(lambda s: s["pae_table"] + 8 * 3, struct.pack("<II", pae_lo, pae_hi))),
        Case(C.UpdatePxE, "native_UpdatePxE", **stale,
             args=lambda s: {"ptep": s["pt_test"], "flags": _pte_flags(s["TEST_VA"])}),
        Case(C.UpdatePxELong, "native_UpdatePxE", **stale,
             args=lambda s: {"ptep": s["pt_test"], "flags": _pte_flags(s["TEST_VA"])}),
        Case(C.AllocatePage, "native_nothing",
             lambda s: {"pfn": 0x300, "flags": abi.VMI_PAGE_L1, "clone_pfn": 0, "start": 0,
                        "count": 0}, check=_unchanged),
        Case(C.ReleasePage, "native_nothing", lambda s: {"pfn": 0x300, "flags": abi.VMI_PAGE_L1},
             check=_unchanged),
        Case(C.InvalPage, "native_InvalPage", lambda s: {"va": s["TEST_VA"]}, **stale),
        Case(C.FlushTLB, "native_FlushTLB", lambda s: {"flags": abi.VMI_FLUSH_TLB}, **stale),
        Case(C.FlushTLB, "native_FlushTLBGlobal", variant="global",
             args=lambda s: {"flags": abi.VMI_FLUSH_TLB | abi.VMI_FLUSH_GLOBAL},
             setup=_stale_tlb(global_page=True), probes=stale["probes"],
             check=_all(_reads_page_b, _result("cr4", CR4_PGE))),
        Case(C.SetLinearMapping, "native_nothing",
             lambda s: {"slot": 0, "va": KERNEL_BASE, "pages": 4096, "pfn": 0}, check=_unchanged),
        Case(C.SetIOPLMask, "native_SetIOPLMask", lambda s: {"mask": 3 << 12}, variant="iopl3",
             check=_reg("eflags", EF_IOPL, EF_IOPL)),
        Case(C.SetIOPLMask, "native_SetIOPLMask", lambda s: {"mask": 1 << 12}, variant="iopl1",
             setup=_set_flags(2 << 12), check=_reg("eflags", 1 << 12, EF_IOPL)),
        Case(C.IODelay, "native_IODelay", check=_ports((PORT_POST, 1, JUNK["eax"] & 0xFF))),
        Case(C.SetLazyMode, "native_nothing", lambda s: {"mode": abi.VMI_LAZY_MMU_UPDATES},
             variant="mmu", check=_unchanged),
        Case(C.SetLazyMode, "native_nothing", lambda s: {"mode": abi.VMI_LAZY_MODE_OFF},
             variant="off", check=_unchanged),
    ]


CASES = _cases()
#: Calls whose effect is not a return to the caller: tested one by one further down.
NOT_RETURNING = {VmiCall.IRET, VmiCall.SYSEXIT, VmiCall.Halt, VmiCall.Shutdown}


def test_every_implemented_call_has_a_test() -> None:
    covered = {c.call for c in CASES} | NOT_RETURNING
    assert covered == set(abi.IDENTITY_ROM_CALLS)
    assert all(abi.CALLS[c.call].returns for c in CASES)


def place_args(spec: abi.CallSpec, args: dict[str, int]) -> tuple[dict[str, int], tuple[int, ...]]:
    """Registers and stack words for ``args`` (by name) as ``spec`` places them."""
    assert set(args) == {a.name for a in spec.args}, f"{spec.name} takes {spec.args}"
    regs: dict[str, int] = {}
    stack: dict[int, int] = {}
    for a in spec.args:
        if a.loc.startswith("stack"):
            stack[int(a.loc[5:])] = args[a.name]
        else:
            regs[a.loc] = args[a.name]
    assert sorted(stack) == list(range(len(stack)))
    return regs, tuple(stack[i] for i in range(len(stack)))


#: Calls with a batched code path: also run from the ROM copied into RAM (batching on, but not
#: in lazy MMU mode, so each still acts at once, exactly as native).
BATCH_AWARE = {VmiCall.SetPxE, VmiCall.SetPxELong, VmiCall.UpdatePxE, VmiCall.UpdatePxELong,
               VmiCall.InvalPage, VmiCall.FlushTLB, VmiCall.SetCR3, VmiCall.SetLazyMode}
RUNS = [(c, "in-place") for c in CASES] + [(c, "copied") for c in CASES if c.call in BATCH_AWARE]


@pytest.mark.parametrize("case,placement", RUNS, ids=[f"{c.id}-{p}" for c, p in RUNS])
def test_call_matches_native(rig: Rig, case: Case, placement: str) -> None:
    spec = abi.CALLS[case.call]
    rom = boot_in_place(rig) if placement == "in-place" else boot_copied(rig)
    nat = Harness(rig)
    regs, stack = place_args(spec, case.args(rig.sym))
    regs = {**JUNK, **regs}
    for h in (rom, nat):
        if case.setup is not None:
            case.setup(h)

    base = rom.note["base"]
    entry = entry_of(rom, case.call)
    assert entry == base + rig.info.call_table[case.call]
    assert entry == base + rig.rom_sym[f"vmi_{case.call.name}"]

    probes = case.probes(rig.sym)
    before = snapshot(rom, probes)
    start_n = snapshot(nat, probes)
    machine_state = (*SEGMENTS, *SYSTEM_REGS)
    assert {k: before.regs[k] for k in machine_state} == {k: start_n.regs[k] for k in machine_state}
    assert (before.debug, before.msrs, before.probes) == (start_n.debug, start_n.msrs,
                                                          start_n.probes)
    stop_r = rom.call(entry, regs, stack)
    stop_n = nat.call(rig.sym[case.native], regs, stack)
    if case.call is VmiCall.Reboot:  # the i8042 pulse asks for a reset; refused, the CPU goes on
        assert stop_r.reason is stop_n.reason is StopReason.RESET, (stop_r, stop_n)
        # The stop lands at the next block boundary, maybe at ret_here itself.
        stop_r, stop_n = (Stop(StopReason.BREAKPOINT, s.pc) if s.pc == h.sym["ret_here"]
                          else h.m.run() for s, h in ((stop_r, rom), (stop_n, nat)))
    if case.call is VmiCall.RDPMC:
        _same_fault(rom, nat, stop_r, stop_n, entry)
        return
    assert rom.returned(stop_r), rom.explain(stop_r)
    assert nat.returned(stop_n), nat.explain(stop_n)
    r = {n: rom.m.reg_read(n) for n in (*GPRS, "eflags")}
    n = {n: nat.m.reg_read(n) for n in (*GPRS, "eflags")}
    if stack:
        assert rom.m.read_virt(rom.entry_esp + 4, 4 * len(stack)) == struct.pack(
            f"<{len(stack)}I", *stack), "the ROM changed its stack arguments"

    # Results: as the native instruction gives them (in the bits the ABI defines).
    if case.compare_results:
        for name in spec.results:
            mask = case.result_mask.get(name, 0xFFFFFFFF)
            assert r[name] == n[name] & mask, f"result {name}: {r[name]:#x} != {n[name]:#x}"
    # Preserved: EBX ESI EDI EBP always, EAX ECX EDX unless clobbered; ESP pops the return.
    for name in PRESERVED + SCRATCH:
        clobbered = name in SCRATCH and spec.clobbers & Clobbers[name.upper()]
        if name not in spec.results and not clobbered:
            assert r[name] == regs[name], f"{name} not preserved: {r[name]:#x}"
    assert r["esp"] == rom.entry_esp + 4 == n["esp"]
    # Flags: the system bits as native; the arithmetic ones only if the ABI lets it clobber.
    assert r["eflags"] & SYSTEM_FLAGS == n["eflags"] & SYSTEM_FLAGS, (
        f"eflags {r['eflags']:#x} != native {n['eflags']:#x}")
    if not spec.clobbers & Clobbers.FLAGS:
        assert r["eflags"] == before.regs["eflags"]

    after = snapshot(rom, probes)
    native = snapshot(nat, probes)
    # Segments as before; system registers, DRs, MSRs, TLB-visible memory, ports as native.
    assert {s: after.regs[s] for s in SEGMENTS} == {s: before.regs[s] for s in SEGMENTS}
    assert ({s: after.regs[s] for s in SYSTEM_REGS} == {s: native.regs[s] for s in SYSTEM_REGS})
    assert after.debug == native.debug
    assert after.msrs == native.msrs
    assert after.probes == native.probes
    assert after.ports == native.ports
    if after.ram != native.ram:
        diff = next(i for i in range(RAM_COMPARED) if after.ram[i] != native.ram[i])
        pytest.fail(f"memory differs from native first at physical {diff:#x}")
    assert rom.flushes == []  # not in lazy MMU mode: nothing is ever queued
    if case.check is not None:
        case.check(rom, before, after)


def _same_fault(rom: Harness, nat: Harness, stop_r: Stop, stop_n: Stop, entry: int) -> None:
    """RDPMC: the machine (Unicorn's QEMU 5 core) raises #UD for rdpmc; the ROM's rdpmc must
    fault the same way, on its own first instruction, with the same frame otherwise."""
    frames = []
    for h, stop in ((rom, stop_r), (nat, stop_n)):
        assert (stop.reason, stop.pc) == (StopReason.HALT, h.sym["fault_common"] + 1), h.explain(stop)
        frames.append(struct.unpack("<5I", h.m.read_virt(h.m.reg_read("esp"), 20)))
    (vr, er, eip_r, cs_r, fl_r), (vn, en, eip_n, cs_n, fl_n) = frames
    assert (vr, er, cs_r) == (vn, en, cs_n) == (6, 0, KCODE)
    assert fl_r & SYSTEM_FLAGS == fl_n & SYSTEM_FLAGS
    assert (eip_r, eip_n) == (entry, rom.sym["native_RDPMC"])


# --- get_reloc ---------------------------------------------------------------------------------

@pytest.mark.parametrize("base", [abi.ROM_SCAN_START, ROM_LINEAR], ids=["identity", "linear"])
def test_get_reloc_answers_every_call_number(rig: Rig, base: int) -> None:
    """Implemented calls: CALL_REL and the entry at the ROM's run-time base; the rest (and
    numbers past the table, negative ones too) NONE with EAX = 0."""
    h = Harness(rig)
    for number in [*range(abi.VMI_CALL_TABLE_LEN), abi.VMI_CALL_TABLE_LEN, 0x100, 0xFFFFFFFF]:
        try:
            implemented = VmiCall(number) in abi.IDENTITY_ROM_CALLS
        except ValueError:
            implemented = False
        got = h.get_reloc(number, base)
        if implemented:
            want = (base + rig.info.call_table[VmiCall(number)], VmiRelocation.CALL_REL)
        else:
            want = (0, VmiRelocation.NONE)
        assert got == want, f"call number {number}"


def test_debug_register_number_past_7_does_nothing(rig: Rig) -> None:
    """SetDR / GetDR with a number above 7 (no such register, nothing native to compare):
    SetDR changes no debug register, GetDR answers 0, and both return normally."""
    h = boot_in_place(rig)
    before = h.debug_regs()
    h.run(entry_of(h, VmiCall.SetDR), {**JUNK, "eax": 8, "edx": 0x1234})
    assert h.debug_regs() == before
    assert h.run(entry_of(h, VmiCall.GetDR), {**JUNK, "eax": 8})["eax"] == 0


# --- calls that do not return ------------------------------------------------------------------

def _iret_frame(rig: Rig, ring: int) -> tuple[int, tuple[int, ...]]:
    flags = 0x2 | EF_IF | EF_CF
    if ring == 0:
        target = rig.sym["iret_target"]
        return target, (target, KCODE, flags)
    target = rig.sym["user_target"]
    return target, (target, UCODE, flags, rig.sym["scratch"] + 0x800, UDATA)


@pytest.mark.parametrize("ring", [0, 3])
def test_iret_returns_through_the_frame_like_iret(rig: Rig, ring: int) -> None:
    """IRET is entered by CALL with the interrupt frame above the return address: it must drop
    the return address and land where a native iret of that frame lands (same ring, or ring 3
    with the user stack), with the same registers."""
    rom, nat = Harness(rig), Harness(rig)
    target, frame = _iret_frame(rig, ring)
    entry, reloc = rom.get_reloc(VmiCall.IRET)
    assert reloc == VmiRelocation.CALL_REL
    for h in (rom, nat):
        h.m.add_breakpoint(target)
    stop_r = rom.call(entry, JUNK, frame)
    nat.m.write_virt(nat.entry_esp + 4, struct.pack(f"<{len(frame)}I", *frame))
    for name, value in JUNK.items():
        nat.m.reg_write(name, value)
    nat.m.reg_write("esp", nat.entry_esp + 4)
    nat.m.reg_write("eip", rig.sym["native_IRET"])
    stop_n = nat.m.run()
    for h, stop in ((rom, stop_r), (nat, stop_n)):
        assert (stop.reason, stop.pc) == (StopReason.BREAKPOINT, target), h.explain(stop)
    names = (*GPRS, *SEGMENTS, *SYSTEM_REGS, "eflags", "eip")
    r = {n: rom.m.reg_read(n) for n in names}
    assert r == {n: nat.m.reg_read(n) for n in names}
    assert (r["eip"], r["cs"], r["eflags"]) == (target, frame[1], frame[2])
    assert {n: r[n] for n in JUNK} == JUNK
    if ring == 0:
        assert r["esp"] == rom.entry_esp + 4 + 4 * len(frame)
    else:
        assert (r["esp"], r["ss"]) == (frame[3], UDATA)


def test_sysexit_enters_ring3_like_sti_sysexit(rig: Rig) -> None:
    """SYSEXIT: EDX user EIP, ECX user ESP; CS and SS from SYSENTER_CS (+16, +24, RPL 3) and
    interrupts on, exactly as native sti; sysexit."""
    rom, nat = Harness(rig), Harness(rig)
    target, user_esp = rig.sym["user_target"], rig.sym["scratch"] + 0x900
    entry, _ = rom.get_reloc(VmiCall.SYSEXIT)
    regs = {**JUNK, "edx": target, "ecx": user_esp}
    for h in (rom, nat):
        h.m.add_breakpoint(target)
    stop_r = rom.call(entry, regs)
    stop_n = nat.call(rig.sym["native_SYSEXIT"], regs)
    for h, stop in ((rom, stop_r), (nat, stop_n)):
        assert (stop.reason, stop.pc) == (StopReason.BREAKPOINT, target), h.explain(stop)
    names = (*GPRS, *SEGMENTS, *SYSTEM_REGS, "eip")
    r = {n: rom.m.reg_read(n) for n in names}
    assert r == {n: nat.m.reg_read(n) for n in names}
    assert (r["cs"], r["ss"], r["esp"], r["eip"]) == (KCODE + 16 | 3, KCODE + 24 | 3, user_esp,
                                                      target)
    fl_r, fl_n = rom.m.reg_read("eflags"), nat.m.reg_read("eflags")
    assert fl_r & SYSTEM_FLAGS == fl_n & SYSTEM_FLAGS and fl_r & EF_IF


def test_halt_halts_with_interrupts_on_and_returns_when_woken(rig: Rig) -> None:
    """Halt = sti; hlt: the machine stops HALT with IF set, like native; resumed (what an
    interrupt would do), it returns to the caller with the preserved registers intact."""
    rom, nat = Harness(rig), Harness(rig)
    entry, _ = rom.get_reloc(VmiCall.Halt)
    stop_r = rom.call(entry, JUNK)
    stop_n = nat.call(rig.sym["native_Halt"], JUNK)
    assert (stop_r.reason, stop_n.reason) == (StopReason.HALT, StopReason.HALT)
    assert stop_r.pc == entry + 2 and stop_n.pc == rig.sym["native_Halt"] + 2
    for h in (rom, nat):
        assert h.m.reg_read("eflags") & EF_IF
        h.m.reg_write("eip", h.m.reg_read("eip"))  # wake up where it halted
        stop = h.m.run()
        assert h.returned(stop), h.explain(stop)
        assert {n: h.m.reg_read(n) for n in PRESERVED} == {n: JUNK[n] for n in PRESERVED}
        assert h.m.reg_read("esp") == h.entry_esp + 4


def test_shutdown_exits_like_out_to_isa_debug_exit(rig: Rig) -> None:
    rom, nat = Harness(rig), Harness(rig)
    entry, _ = rom.get_reloc(VmiCall.Shutdown)
    stop_r = rom.call(entry, JUNK)
    stop_n = nat.call(rig.sym["native_Shutdown"], {**JUNK, "eax": 0})
    assert (stop_r.reason, stop_r.exit_code, stop_r.qemu_status) == (StopReason.EXIT, 0, 1)
    assert (stop_n.reason, stop_n.exit_code) == (StopReason.EXIT, 0)
    assert rom.ports == nat.ports == [(PORT_EXIT, 4, 0)]


# --- batching ----------------------------------------------------------------------------------

QLEN = abi.ROM_QUEUE_LEN


def va_of(rig: Rig, i: int) -> int:
    return rig.sym["TEST_VA"] + i * PAGE


def ptep(rig: Rig, i: int) -> int:
    return KERNEL_BASE + rig.sym["pt_test"] + 4 * i


def map_pages_a(h: Harness, n: int) -> None:
    """VA i -> page A_i, and the guest reads every one (so the TLB holds page A)."""
    for base, mark in ((PAGES_A, MARK_A), (PAGES_B, MARK_B), (PAGES_C, MARK_C)):
        write_marked_pages(h, base, mark, n)
    h.m.write_phys(h.sym["pt_test"], b"".join(struct.pack("<I", (PAGES_A + i * PAGE) | PTE_BITS)
                                              for i in range(n)))
    assert h.read_vas([va_of(h.rig, i) for i in range(n)]) == [MARK_A | i for i in range(n)]


def set_pxe_args(rig: Rig, i: int, pages: int = PAGES_B, defer: bool = True) -> tuple[
        int, int, int]:
    """(EAX pte, EDX ptep, ECX flags) of a SetPxE mapping VA i to page i of ``pages``."""
    return (pages + i * PAGE) | PTE_BITS, ptep(rig, i), _pte_flags(va_of(rig, i), defer)


def pt_test(h: Harness, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}I", h.m.read_phys(h.sym["pt_test"], 4 * n)))


def deferred_remap(h: Harness, n: int) -> None:
    """In lazy MMU mode, n deferred SetPxE remapping VA i from page A_i to B_i."""
    h.run(entry_of(h, VmiCall.SetLazyMode), {"eax": abi.VMI_LAZY_MMU_UPDATES})
    h.do_calls(entry_of(h, VmiCall.SetPxE), [set_pxe_args(h.rig, i) for i in range(n)])


@pytest.mark.parametrize("n", [1, 5, 16, 17, 127, 128, 129, 200])
def test_batch_equals_direct_writes_with_one_flush_per_queue(rig: Rig, n: int) -> None:
    batched, direct = boot_copied(rig), boot_in_place(rig)
    sym = rig.rom_sym
    full = (n - 1) // QLEN  # flushes forced by a full queue before the last update
    for h in (batched, direct):
        map_pages_a(h, n)
        deferred_remap(h, n)
    # Before the flush: the batch holds what the last full queue left; PTEs not yet written.
    assert len(batched.flushes) == full
    assert batched.u32(COPY_LINEAR + sym["rom_queued"]) == n - full * QLEN
    b_ptes = [(PAGES_B + i * PAGE) | PTE_BITS for i in range(n)]
    a_ptes = [(PAGES_A + i * PAGE) | PTE_BITS for i in range(n)]
    assert pt_test(batched, n) == b_ptes[:full * QLEN] + a_ptes[full * QLEN:]
    assert pt_test(direct, n) == b_ptes  # the read-only ROM wrote each one at once

    for h in (batched, direct):
        h.run(entry_of(h, VmiCall.SetLazyMode), {"eax": abi.VMI_LAZY_MODE_OFF})
    assert direct.flushes == []
    assert len(batched.flushes) == math.ceil(n / QLEN)
    assert batched.u32(COPY_LINEAR + sym["rom_queued"]) == 0
    updates = [set_pxe_args(rig, i) for i in range(n)]
    for k, f in enumerate(batched.flushes):
        last = k == len(batched.flushes) - 1
        count = n - k * QLEN if last else QLEN
        assert f["addr"] == COPY_LINEAR + rig.info.state_offs == COPY_LINEAR + sym["rom_batch"]
        assert f["eip"] == COPY_LINEAR + sym["rom_flush_announce"]
        assert (f["magic"], f["seq"], f["count"], f["lazy_mode"]) == (
            abi.ROM_BATCH_MAGIC, k + 1, count, abi.VMI_LAZY_MMU_UPDATES)
        assert f["trigger"] == (FlushTrigger.SetLazyMode if last else FlushTrigger.QueueFull)
        assert f["tlb_action"] == (TlbAction.INVLPG if count <= abi.ROM_INVLPG_MAX
                                   else TlbAction.FULL)
        assert f["entries"] == [(p, fl, lo, 0) for lo, p, fl in updates[k * QLEN:k * QLEN + count]]
    # After: the same page tables as direct writes, and the batch's TLB action took effect:
    # the guest, reading through its TLB (which held page A for every VA), sees page B.
    assert pt_test(batched, n) == pt_test(direct, n) == b_ptes
    vas = [va_of(rig, i) for i in range(n)]
    assert [batched.m.translate(va) for va in vas] == [PAGES_B + i * PAGE for i in range(n)]
    assert batched.read_vas(vas) == [MARK_B | i for i in range(n)]
    # Direct writes leave the TLB to the guest, as native PTE stores do; after the guest's own
    # flush both machines translate and read alike (and the empty queue flushes nothing).
    for h in (batched, direct):
        h.run(entry_of(h, VmiCall.FlushTLB), {"eax": abi.VMI_FLUSH_TLB})
    assert len(batched.flushes) == math.ceil(n / QLEN)
    assert [batched.m.translate(va) for va in vas] == [direct.m.translate(va) for va in vas]
    assert batched.read_vas(vas) == direct.read_vas(vas) == [MARK_B | i for i in range(n)]


def _trigger(h: Harness, which: str) -> None:
    """The call that must flush the three queued updates (run on batched and direct alike)."""
    b = h.rig
    if which == "FlushTLB":
        h.run(entry_of(h, VmiCall.FlushTLB), {"eax": abi.VMI_FLUSH_TLB})
    elif which == "InvalPage":
        h.run(entry_of(h, VmiCall.InvalPage), {"eax": va_of(b, 0)})
    elif which == "SetCR3":
        h.run(entry_of(h, VmiCall.SetCR3), {"eax": b.sym["pd"]})
    elif which == "Ordering":  # an undeferred update to a queued PTE: applied after the queue
        eax, edx, ecx = set_pxe_args(b, 0, PAGES_C, defer=False)
        h.run(entry_of(h, VmiCall.SetPxE), {"eax": eax, "edx": edx, "ecx": ecx})
        h.run(entry_of(h, VmiCall.InvalPage), {"eax": va_of(b, 0)})
    elif which == "SetLazyMode":  # any mode but MMU ends lazy MMU mode
        h.run(entry_of(h, VmiCall.SetLazyMode), {"eax": abi.VMI_LAZY_CPU_STATE})


@pytest.mark.parametrize("which,tlb", [
    ("FlushTLB", TlbAction.NONE), ("InvalPage", TlbAction.INVLPG), ("SetCR3", TlbAction.NONE),
    ("Ordering", TlbAction.INVLPG), ("SetLazyMode", TlbAction.INVLPG)])
def test_flush_triggers(rig: Rig, which: str, tlb: TlbAction) -> None:
    """Each trigger flushes a queue of three exactly once, names itself in the header, and
    leaves the same page tables and guest reads as the read-only ROM's direct writes."""
    batched, direct = boot_copied(rig), boot_in_place(rig)
    for h in (batched, direct):
        map_pages_a(h, 3)
        deferred_remap(h, 3)
    assert batched.flushes == [] and pt_test(batched, 3)[0] == PAGES_A | PTE_BITS
    for h in (batched, direct):
        _trigger(h, which)
    assert len(batched.flushes) == 1 and direct.flushes == []
    f = batched.flushes[0]
    assert (f["count"], f["trigger"], f["tlb_action"]) == (3, FlushTrigger[which], tlb)
    assert batched.u32(COPY_LINEAR + rig.rom_sym["rom_queued"]) == 0
    first = PAGES_C if which == "Ordering" else PAGES_B
    want = [first | PTE_BITS] + [(PAGES_B + i * PAGE) | PTE_BITS for i in (1, 2)]
    assert pt_test(batched, 3) == pt_test(direct, 3) == want
    # The batch's TLB action (or the trigger's own flush) leaves no VA stale.
    vas = [va_of(rig, i) for i in range(3)]
    want_reads = [(MARK_C if which == "Ordering" else MARK_B), MARK_B | 1, MARK_B | 2]
    assert batched.read_vas(vas) == want_reads
    # The queue is empty: leaving lazy mode now flushes nothing more.
    batched.run(entry_of(batched, VmiCall.SetLazyMode), {"eax": abi.VMI_LAZY_MODE_OFF})
    assert len(batched.flushes) == 1


def test_mixed_batch_long_and_notify_entries(rig: Rig) -> None:
    """SetPxELong (high then low), UpdatePxE (a notification: the guest wrote the PTE) and an
    update without CURRENT_AS queue together; the flush writes what direct calls write, marks
    the entries ENTRY_LONG / ENTRY_NOTIFY, and reloads CR3 (a VA is unknown)."""
    batched, direct = boot_copied(rig), boot_in_place(rig)
    pae = KERNEL_BASE + rig.sym["pae_table"] + 8
    long_flags = abi.VMI_PAGE_PT | abi.VMI_PAGE_DEFER  # no CURRENT_AS: the VA is unknown
    upd_flags = _pte_flags(va_of(rig, 1), defer=True)
    for h in (batched, direct):
        map_pages_a(h, 2)
        h.run(entry_of(h, VmiCall.SetLazyMode), {"eax": abi.VMI_LAZY_MMU_UPDATES})
        eax, edx, ecx = set_pxe_args(rig, 0)
        h.run(entry_of(h, VmiCall.SetPxE), {"eax": eax, "edx": edx, "ecx": ecx})
        h.run(entry_of(h, VmiCall.SetPxELong), {"eax": 0x12345067, "edx": 0xF, "ecx": pae},
              stack=(long_flags,))
        h.native("store", eax=ptep(rig, 1), ecx=(PAGES_B + PAGE) | PTE_BITS)
        h.run(entry_of(h, VmiCall.UpdatePxE), {"eax": ptep(rig, 1), "edx": upd_flags})
        if h is batched:
            assert h.m.read_phys(rig.sym["pae_table"] + 8, 8) == bytes(8)  # still queued
        h.run(entry_of(h, VmiCall.SetLazyMode), {"eax": abi.VMI_LAZY_MODE_OFF})
    assert direct.flushes == [] and len(batched.flushes) == 1
    f = batched.flushes[0]
    assert (f["count"], f["trigger"], f["tlb_action"]) == (3, FlushTrigger.SetLazyMode,
                                                           TlbAction.FULL)
    assert [e[1] for e in f["entries"]] == [_pte_flags(va_of(rig, 0), defer=True),
                                            long_flags | abi.ENTRY_LONG,
                                            upd_flags | abi.ENTRY_NOTIFY]
    assert f["entries"][1] == (pae, long_flags | abi.ENTRY_LONG, 0x12345067, 0xF)
    for h in (batched, direct):
        assert h.m.read_phys(rig.sym["pae_table"] + 8, 8) == struct.pack("<II", 0x12345067, 0xF)
    assert pt_test(batched, 2) == pt_test(direct, 2)
    assert batched.read_vas([va_of(rig, 0), va_of(rig, 1)]) == [MARK_B, MARK_B | 1]
    assert direct.read_vas([va_of(rig, 1)]) == [MARK_B | 1]


@pytest.mark.parametrize("base", [abi.ROM_SCAN_START, ROM_LINEAR], ids=["identity", "linear"])
def test_read_only_rom_never_batches(rig: Rig, base: int) -> None:
    """From the read-only ROM, vmi_init announces no batching, every deferred update is written
    at once, no trigger ever flushes, and the image keeps its bytes (its state writes drop)."""
    h = boot_in_place(rig, base)
    map_pages_a(h, 20)
    deferred_remap(h, 20)
    assert pt_test(h, 20) == [(PAGES_B + i * PAGE) | PTE_BITS for i in range(20)]
    for which in ("InvalPage", "FlushTLB", "SetCR3", "SetLazyMode"):
        _trigger(h, which)
    h.run(entry_of(h, VmiCall.SetLazyMode), {"eax": abi.VMI_LAZY_MODE_OFF})
    assert h.flushes == []
    assert h.read_vas([va_of(rig, i) for i in range(20)]) == [MARK_B | i for i in range(20)]
    assert h.m.read_phys(abi.ROM_SCAN_START, len(rig.image)) == rig.image
