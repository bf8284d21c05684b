"""Where the Linux guest keeps its current task and interrupt state, from its own debug info.

Everything is looked up through gdb's symbols and types, never hard-coded: the per-cpu
current task (2.6.32: ``per_cpu__current_task`` plus ``__per_cpu_offset[0]``; 2.6.34 and later:
``current_task``, the same way), ``task_struct.pid`` and ``.comm`` as member offsets, and the
per-cpu ``irq_regs`` that do_IRQ sets for the length of an interrupt. A guest without these
symbols (the demo guest) has no layout: its events carry no task.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import gdb

from vmigdb.commands import target


@dataclass(frozen=True)
class Layout:
    """Addresses and offsets of the kernel's task bookkeeping, from the symbols gdb has."""

    task_var: int  # the per-cpu current task (its link address)
    offsets: int  # &__per_cpu_offset (cpu 0's offset is its first word), 0 when not per cpu
    pid_at: int | None  # offsetof(struct task_struct, pid)
    comm_at: int | None  # offsetof(struct task_struct, comm)
    irq_regs: int | None  # the per-cpu irq_regs (set while in do_IRQ), when the kernel has it

    def monitor_args(self) -> str:
        """Arguments of the stub's ``monitor vmi trace task``."""
        names = (f" {self.pid_at:#x} {self.comm_at:#x}"
                 if self.pid_at is not None and self.comm_at is not None else "")
        return f"{self.task_var:#x} {self.offsets:#x}{names}"


_cache: dict[str, Layout | None] = {}
#: Per-cpu variables at most this far apart are read together.
_NEAR = 2048


def _value(expr: str) -> int | None:
    try:
        return int(gdb.parse_and_eval(f"(unsigned long)({expr})")) & 0xFFFFFFFF
    except (gdb.error, RuntimeError, OverflowError):
        return None


def layout() -> Layout | None:
    """The loaded symbols' layout, or None for a guest without a Linux current task. Cached
    until gdb loads other symbol files."""
    key = ",".join(o.filename or "" for o in gdb.objfiles())
    if key not in _cache:
        var = next((v for v in (_value(f"&{n}") for n in ("per_cpu__current_task",
                                                           "current_task")) if v), None)
        if var is None:
            _cache[key] = None
        else:
            irq = next((v for v in (_value(f"&{n}") for n in ("per_cpu__irq_regs",
                                                               "irq_regs")) if v), None)
            _cache[key] = Layout(var, _value("&__per_cpu_offset") or 0,
                                 _value("&((struct task_struct *)0)->pid"),
                                 _value("&((struct task_struct *)0)->comm"), irq)
    return _cache[key]


class TaskReader:
    """Reads the current task (and names it) at a breakpoint, as the stub's hook reads it:
    the u32 at the per-cpu variable plus cpu 0's per-cpu offset. The offset is read until the
    kernel has set it (setup_per_cpu_areas), then kept."""

    def __init__(self, lay: Layout, read) -> None:
        self.layout = lay
        self._read = read
        self._offset = 0
        self._last: tuple[int, int, str] | None = None

    def _u32(self, addr: int) -> int:
        return struct.unpack("<I", self._read(addr & 0xFFFFFFFF, 4))[0]

    def _per_cpu(self, var: int) -> int:
        if not self._offset and self.layout.offsets:
            self._offset = self._u32(self.layout.offsets)
        return (var + self._offset) & 0xFFFFFFFF

    def task(self) -> int:
        try:
            return self._u32(self._per_cpu(self.layout.task_var))
        except OSError:
            return 0

    def state(self) -> tuple[int, bool | None]:
        """(current task, whether in do_IRQ) in one read when the two per-cpu variables are
        near each other (2.6.32: 1,164 bytes apart), as they are: a read is a round trip."""
        lay = self.layout
        if lay.irq_regs is None or abs(lay.irq_regs - lay.task_var) > _NEAR:
            return self.task(), self.in_irq()
        try:
            task_at = self._per_cpu(lay.task_var)
            irq_at = (lay.irq_regs + task_at - lay.task_var) & 0xFFFFFFFF  # the same offset
            low = min(task_at, irq_at)
            raw = self._read(low, max(task_at, irq_at) + 4 - low)
        except OSError:
            return 0, None
        task, irq = (struct.unpack_from("<I", raw, at - low)[0] for at in (task_at, irq_at))
        return task, irq != 0

    def in_irq(self) -> bool | None:
        """Whether the kernel is inside do_IRQ (its per-cpu irq_regs set); None: unknown."""
        if self.layout.irq_regs is None:
            return None
        try:
            return self._u32(self._per_cpu(self.layout.irq_regs)) != 0
        except OSError:
            return None

    def name(self, task: int) -> tuple[int, str] | None:
        """(pid, comm) of a task, or None when the layout or the memory does not say."""
        lay = self.layout
        if not task or lay.pid_at is None or lay.comm_at is None:
            return None
        try:
            low = min(lay.pid_at, lay.comm_at)
            raw = self._read(task + low, max(lay.pid_at + 4, lay.comm_at + 16) - low)
        except OSError:
            return None
        pid = struct.unpack_from("<I", raw, lay.pid_at - low)[0]
        comm = raw[lay.comm_at - low:lay.comm_at - low + 16]
        return pid, comm.split(b"\0", 1)[0].decode("latin-1")


def symbol_function(addr: int) -> str:
    """``function+offset`` for an address (gdb's symbols, cached by ``target.symbolize``)."""
    return target.symbolize(addr) if addr else ""
