"""The C half of one machine (stub/native): its ``struct vm``, and its callbacks in Unicorn.

Everything that runs per block, per port access or per timer event is C (the block hook keeps
the virtual clock, the port bus dispatches to the C devices, RDTSC and CPUID answer from the
machine). Python reaches the same struct through cffi, field by field, and installs the
callbacks once. Only ports a Python observer claims call back into Python.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

import capstone
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_BLOCK,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_TLB_FILL,
    UC_MODE_32,
    UC_TLB_VIRTUAL,
    Uc,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from vmigdb.errors import VmiError
from vmigdb.stub import uc_ctypes

try:
    from vmigdb.stub._native import ffi, lib
except ImportError as e:  # pragma: no cover - an install without its extension
    raise VmiError(f"vmigdb's native machine is not built ({e}); reinstall vmigdb "
                   "(pip install .) or run make") from None

NS_PER_TICK: int = lib.VM_NS_PER_TICK
NEVER: int = lib.VM_NEVER
#: The CPUID feature bits the machine removes from its CPU model: leaf 1 EDX bit 9, the local
#: APIC (the machine has no APIC at 0xFEE00000; Linux then runs on the 8259A and the 8254).
CPUID_1_EDX_APIC = 1 << 9
#: Where QEMU 7.2's qemu32 differs from Unicorn's (QEMU 5's): its L3 cache (l3-cache=on is
#: QEMU's default since 2.8), in leaf 2's descriptors and as leaf 4's fourth cache level.
#: Measured with tests/asm/cpuid.S under `qemu-system-i386 -cpu qemu32,-apic`.
QEMU72_LEAVES = {(2, 0): (0x00000001, 0x00000000, 0x0000004D, 0x002C307D),
                 (4, 3): (0x00000163, 0x03C0003F, 0x00003FFF, 0x00000006)}


def c_function(name: str) -> int:
    """The address of one of our C functions, for Unicorn to call: the exported symbol itself.
    (cffi's ``ffi.addressof(lib, name)`` is a wrapper that jumps on through the PLT: two more
    jumps for each block the CPU runs.)"""
    return ctypes.cast(getattr(_native_library(), name), ctypes.c_void_p).value or 0


@cache
def _native_library() -> ctypes.CDLL:
    from vmigdb.stub import _native

    return ctypes.CDLL(_native.__file__)  # the loaded extension again: the same handle


def uc_function(name: str) -> int:
    """The address of a libunicorn function, for our C to call."""
    return ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value or 0


def add_c_hook(uc: Uc, kind: int, fn: int, user_data: int, begin: int = 1, end: int = 0,
               *extra: object) -> int:
    """Install a hook whose callback is a C function (no Python on the hot path); its handle.
    ``extra`` carries UC_HOOK_INSN's instruction id."""
    handle = ctypes.c_size_t()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(fn),
                            ctypes.c_void_p(user_data), ctypes.c_uint64(begin),
                            ctypes.c_uint64(end), *extra)
    if err != 0:
        raise VmiError(f"cannot install a C hook (unicorn error {err})")
    return handle.value


def del_c_hook(uc: Uc, handle: int) -> None:
    uclib.uc_hook_del(uc._uch, ctypes.c_size_t(handle))


@cache
def _capstone_x86_32() -> int:
    """A capstone handle for 32-bit x86 (detail off), for the C side to count instructions."""
    handle = ctypes.c_size_t()
    err = capstone._cs.cs_open(capstone.CS_ARCH_X86, capstone.CS_MODE_32, ctypes.byref(handle))
    if err != 0:
        raise VmiError(f"capstone cannot open a 32-bit x86 handle (error {err})")
    return handle.value


def _capstone_function(name: str) -> int:
    return ctypes.cast(getattr(capstone._cs, name), ctypes.c_void_p).value or 0


@cache
def cpuid_model() -> tuple[tuple[int, int, bool, int, int, int, int], ...]:
    """Unicorn's qemu32 CPUID answers, leaf by leaf, from its own CPUID instruction on a scratch
    engine: (leaf, subleaf, has_subleaf, eax, ebx, ecx, edx)."""
    length = ffi.new("uint32_t *")
    code = bytes(ffi.buffer(lib.vm_cpuid_probe(length), length[0]))
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_QEMU32)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, code)

    def ask(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        uc.reg_write(X.UC_X86_REG_EAX, leaf)
        uc.reg_write(X.UC_X86_REG_ECX, subleaf)
        uc.emu_start(0, len(code))
        return tuple(uc.reg_read(r) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX,
                                             X.UC_X86_REG_ECX, X.UC_X86_REG_EDX))

    out = []
    max_basic = ask(0)[0]
    for leaf in range(max_basic + 1):
        if leaf in (4, 7, 0xB, 0xD):
            for sub in range(8):
                regs = ask(leaf, sub)
                out.append((leaf, sub, True, *regs))
                if leaf == 4 and regs[0] & 0x1F == 0:
                    break
        else:
            out.append((leaf, 0, False, *ask(leaf)))
    max_ext = ask(0x80000000)[0]
    for leaf in range(0x80000000, min(max_ext, 0x80000020) + 1):
        out.append((leaf, 0, False, *ask(leaf)))
    return tuple(out)


class Native:
    """One ``struct vm`` and its hooks in ``uc``: the clock, the devices, the port bus."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.vm = vm = ffi.new("struct vm *")
        self.address = int(ffi.cast("uintptr_t", vm))
        lib.vm_init(vm, *(ffi.cast("void *", f) for f in (
            uc._uch.value, uc_function("uc_emu_stop"), uc_function("uc_ctl"),
            uc_function("uc_reg_read"), uc_function("uc_reg_write"),
            uc_function("uc_vmem_read"))))
        for name in ("eax", "ebx", "ecx", "edx", "eflags", "cr2", "eip", "esp", "cs", "ss", "cr0",
                     "cr3", "cr4", "idtr", "gdtr", "tr", "msr", "ldtr"):
            setattr(vm, f"reg_{name}", getattr(X, f"UC_X86_REG_{name.upper()}"))
        for name in ("uc_mem_read", "uc_mem_write", "uc_context_save", "uc_context_restore"):
            setattr(vm, name, ffi.cast("void *", uc_function(name)))
        # A CPU context for the C side to edit, and where its fields are.
        ctx = ctypes.c_void_p()
        if uclib.uc_context_alloc(uc._uch, ctypes.byref(ctx)) != 0:
            raise VmiError("cannot allocate a Unicorn CPU context")
        self._ctx = ctx
        vm.ctx = ffi.cast("void *", ctx.value)
        off = uc_ctypes.find_context_offsets()
        vm.ctx_error_code, vm.ctx_is_int, vm.ctx_next_eip = off.error_code, off.is_int, off.next_eip
        vm.ctx_old_exception, vm.ctx_hflags, vm.ctx_segs = (off.old_exception, off.hflags,
                                                             off.segs)
        vm.cs_handle = _capstone_x86_32()
        vm.cs_disasm = ffi.cast("void *", _capstone_function("cs_disasm"))
        vm.cs_free = ffi.cast("void *", _capstone_function("cs_free"))
        self._buf = ffi.new("uint8_t[]", 4096)
        self._load_cpuid()
        self._observers: dict[int, Callable[[int, int, int], None]] = {}
        self._owners: dict[int, int] = {}  # what observed ports belonged to
        self._py_in = ffi.callback("uint32_t(uint32_t, int)", self._on_py_in, onerror=self._error)
        self._py_out = ffi.callback("void(uint32_t, int, uint32_t)", self._on_py_out,
                                    onerror=self._error)
        vm.py_in, vm.py_out = self._py_in, self._py_out
        self.callback_error: BaseException | None = None
        a = self.address
        add_c_hook(uc, UC_HOOK_BLOCK, c_function("vm_block_hook"), a)
        add_c_hook(uc, UC_HOOK_INSN, c_function("vm_port_in"), a, 1, 0,
                   ctypes.c_int(X.UC_X86_INS_IN))
        add_c_hook(uc, UC_HOOK_INSN, c_function("vm_port_out"), a, 1, 0,
                   ctypes.c_int(X.UC_X86_INS_OUT))
        add_c_hook(uc, UC_HOOK_INSN, c_function("vm_rdtsc_hook"), a, 1, 0,
                   ctypes.c_int(X.UC_X86_INS_RDTSC))
        add_c_hook(uc, UC_HOOK_INSN, c_function("vm_cpuid_hook"), a, 1, 0,
                   ctypes.c_int(X.UC_X86_INS_CPUID))
        add_c_hook(uc, UC_HOOK_INSN, c_function("vm_sysenter_hook"), a, 1, 0,
                   ctypes.c_int(X.UC_X86_INS_SYSENTER))
        add_c_hook(uc, UC_HOOK_INTR, c_function("vm_intr_hook"), a)
        add_c_hook(uc, UC_HOOK_INSN_INVALID, c_function("vm_invalid_hook"), a)
        # The guest's page walk in C (mmu.c): data pages without execute rights, so stores
        # take TCG's fast path.
        add_c_hook(uc, UC_HOOK_TLB_FILL, c_function("vm_tlb_fill"), a)
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        self._code_pages = ffi.new("uint8_t[]", 1)

    def set_memory(self, ram_size: int, rom_base: int, rom_end: int) -> None:
        """Where interrupt frames may be written: RAM, not the ROM."""
        self.vm.ram_size, self.vm.rom_base, self.vm.rom_end = ram_size, rom_base, rom_end
        pages = (ram_size + 0xFFF) >> 12
        self._code_pages = ffi.new("uint8_t[]", (pages + 7) // 8)
        self.vm.code_pages, self.vm.code_pages_count = self._code_pages, pages

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None and ctx.value:
            uclib.uc_context_free(ctx)

    def _load_cpuid(self) -> None:
        model = {(leaf, sub): (has_sub, regs) for leaf, sub, has_sub, *regs in cpuid_model()}
        for (leaf, sub), regs in QEMU72_LEAVES.items():
            model[(leaf, sub)] = (leaf == 4, list(regs))
        model = [(leaf, sub, has_sub, *regs) for (leaf, sub), (has_sub, regs) in model.items()]
        vm = self.vm
        if len(model) > lib.VM_CPUID_LEAVES:
            raise VmiError(f"the CPU model has {len(model)} CPUID leaves; the machine keeps "
                           f"{lib.VM_CPUID_LEAVES}")
        for i, (leaf, sub, has_sub, eax, ebx, ecx, edx) in enumerate(model):
            if leaf == 1:
                edx &= ~CPUID_1_EDX_APIC
            c = vm.cpuid[i]
            c.leaf, c.subleaf, c.has_subleaf = leaf, sub, int(has_sub)
            c.eax, c.ebx, c.ecx, c.edx = eax, ebx, ecx, edx
            if leaf == 0:
                vm.cpuid_max_basic = eax
            elif leaf == 0x80000000:
                vm.cpuid_max_ext = eax
        vm.cpuid_count = len(model)

    # --- the clock ----------------------------------------------------------------------------
    @property
    def ticks(self) -> int:
        return self.vm.ticks

    def set_ticks(self, ticks: int) -> None:
        """The exact clock between two emulations (the block hook counted ahead)."""
        self.vm.ticks = ticks
        self.vm.now = ticks

    def now_ns(self) -> int:
        return self.vm.ticks * NS_PER_TICK

    # --- ports ------------------------------------------------------------------------------------
    def claim(self, ports: range | tuple[int, ...], owner: int) -> None:
        for p in ports:
            self.vm.port_owner[p] = owner

    def observe(self, port: int, observer: Callable[[int, int, int], None]) -> None:
        """Show guest writes to ``port`` to ``observer(port, size, value)`` first; the device
        that owns the port (if any) still gets them. Costs a Python call per access."""
        owner = self.vm.port_owner[port]
        if owner != lib.VM_DEV_PYTHON:
            self._owners[port] = owner
        self._observers[port] = observer
        self.vm.port_owner[port] = lib.VM_DEV_PYTHON

    def _on_py_out(self, port: int, size: int, value: int) -> None:
        fn = self._observers.get(port)
        if fn is not None:
            fn(port, size, value)
        lib.vm_device_out(self.vm, self._owners.get(port, lib.VM_DEV_NONE), port, size, value)

    def _on_py_in(self, port: int, size: int) -> int:
        return lib.vm_device_in(self.vm, self._owners.get(port, lib.VM_DEV_NONE), port, size)

    def _error(self, exc_type: type, exc: BaseException, tb: object) -> None:
        # A bug in a Python port handler must not vanish inside Unicorn: keep it for the run
        # loop, which raises it once emulation has stopped.
        if self.callback_error is None:
            self.callback_error = exc
        lib_stop = self.vm.rc.emu_stop
        lib_stop(ffi.cast("void *", self.uc._uch.value))

    def read_cpu(self, va: int, size: int) -> bytes | None:
        """Memory as the CPU sees it now (one page at most); None if not reachable. CR2 is
        the guest's afterwards (vm_read_cpu says why that needs care)."""
        buf = self._buf if size <= 4096 else ffi.new("uint8_t[]", size)
        if lib.vm_read_cpu(self.vm, va, buf, size) != 0:
            return None
        return ffi.buffer(buf, size)[:]

    # --- COM1 ---------------------------------------------------------------------------------
    def take_serial(self) -> bytes:
        n = self.vm.serial_len
        if not n:
            return b""
        data = bytes(ffi.buffer(self.vm.serial_out, n))
        self.vm.serial_len = 0
        return data
