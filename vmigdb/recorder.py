"""The tracers' bookkeeping: turn what a hook or breakpoint saw at a ROM entry into trace events.

Pure (no gdb, no unicorn): the stub's in-stub tracer (``stub/vmitrace.py``, the fast path) and
the gdb breakpoints (``commands/portable.py``, the portable path) both hand register values and
memory reads to one ``Recorder``, so both paths produce the same events by the same rules: a ROM call at
its entry (arguments by the ABI's names, the site = return address - 5), its return matched by
return address and stack pointer, a lazy-mode change at SetLazyMode's entry, an undeferred PTE
write at the call (old value read then), a deferred one when the batch that applies it is
announced (old value remembered from when it was queued), and the batch itself.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vmigdb import abi
from vmigdb import trace as tr

#: How many calls may wait for their return (a call that never returns, like IRET, is dropped).
PENDING_LIMIT = 64
_PTE_CALLS = {abi.VmiCall.SetPxE, abi.VmiCall.SetPxELong}
_SIDE_EFFECT_CALLS = {abi.VmiCall.SetLazyMode, *_PTE_CALLS}
#: Call names as events spell them (an enum's .name is a descriptor call each time).
_CALL_NAMES = {call: call.name for call in abi.VmiCall}

Read = Callable[[int, int], bytes]
_STACK_WORDS = struct.Struct("<6I")


#: Per call: (name, register, stack word index or 0) per argument, worked out once.
_ARG_PLANS: dict[abi.VmiCall, tuple[tuple[str, str, int], ...]] = {
    call: tuple((a.name, a.loc, 1 + int(a.loc[5:]) if a.loc.startswith("stack") else 0)
                for a in spec.args)
    for call, spec in abi.CALLS.items()
}


@dataclass
class Pending:
    """A call whose return has not been seen yet."""

    seq: int
    call: abi.VmiCall
    ret: int
    esp_after: int


class Recorder:
    """Events in order, with the state the rules need (lazy mode, queued old values, pending)."""

    def __init__(self, *, batched: bool = False, capacity: int | None = None) -> None:
        #: A bounded ring when ``capacity`` is set: the oldest events go, ``dropped`` counts them.
        self.events: deque[tr.Event] = deque(maxlen=capacity)
        self.dropped = 0
        self.batched = batched
        self.lazy = abi.VMI_LAZY_MODE_OFF
        self.pending: list[Pending] = []
        self._seq = 0
        self._old_values: dict[int, int] = {}

    def next_seq(self) -> int:
        s = self._seq
        self._seq += 1
        return s

    @property
    def seq(self) -> int:
        """The sequence number the next event gets."""
        return self._seq

    def clear(self) -> None:
        """Forget the events (sequence numbers keep counting)."""
        self.events.clear()
        self.dropped = 0

    def _emit(self, event: tr.Event) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(event)

    def rom_init(self, value: int) -> tr.RomInit:
        """vmi_init announced itself: EAX = linear base | ROM_INIT_BATCHED."""
        self.batched = bool(value & abi.ROM_INIT_BATCHED)
        self.lazy = abi.VMI_LAZY_MODE_OFF
        e = tr.RomInit(self.next_seq(), base=value & ~abi.ROM_INIT_BATCHED & 0xFFFFFFFF,
                       batched=self.batched)
        self._emit(e)
        return e

    @staticmethod
    def capture(spec: abi.CallSpec) -> tuple[str, int] | None:
        """The memory ``call`` reads for this call, as (argument holding the address, bytes):
        a recorder that decodes later (the stub's C hooks) must capture it at the call."""
        if spec.call not in _PTE_CALLS:
            return None
        return "ptep", 8 if spec.call == abi.VmiCall.SetPxELong else 4

    def call(self, spec: abi.CallSpec, entry: int, regs: Callable[[str], int],
             esp: int, stack: bytes, read: Read) -> int | None:
        """A hit on a ROM entry. ``stack`` is at least 24 bytes at ESP (return address first).

        Returns the return address whose breakpoint should be armed, or None (no return).
        """
        call = spec.call
        words = _STACK_WORDS.unpack_from(stack)
        ret = words[0]
        args = {name: words[slot] if slot else regs(loc) & 0xFFFFFFFF
                for name, loc, slot in _ARG_PLANS[call]}
        seq = self._seq
        self._seq = seq + 1
        self._emit(tr.RomCall(seq, call=_CALL_NAMES[call], entry=entry,
                              site=(ret - 5) & 0xFFFFFFFF, args=args))
        if call in _SIDE_EFFECT_CALLS:
            self._side_effects(call, args, read)
        if not spec.returns or not spec.results:
            # Only calls with result registers get a return event: the others have nothing to
            # report there, and skipping them halves the hooks (most calls are SetPxE).
            return None
        self.pending.append(Pending(seq, spec.call, ret, (esp + 4) & 0xFFFFFFFF))
        del self.pending[:-PENDING_LIMIT]
        return ret

    def ret(self, eip: int, esp: int, regs: Callable[[str], int]) -> tr.RomReturn | None:
        """A hit on an armed return address: the innermost matching call returns."""
        for i in range(len(self.pending) - 1, -1, -1):
            p = self.pending[i]
            if p.ret == eip and p.esp_after == esp:
                del self.pending[i:]
                spec = abi.CALLS[p.call]
                results = {r: regs(r) & 0xFFFFFFFF for r in spec.results}
                e = tr.RomReturn(self.next_seq(), call_seq=p.seq, call=_CALL_NAMES[p.call],
                                 results=results)
                self._emit(e)
                return e
        return None

    def _side_effects(self, call: abi.VmiCall, args: dict[str, int], read: Read) -> None:
        if call == abi.VmiCall.SetLazyMode:
            new = args["mode"]
            self._emit(tr.LazyMode(self.next_seq(), old=self.lazy, new=new))
            self.lazy = new
            return
        if call not in _PTE_CALLS:
            return
        ptep = args["ptep"]
        flags = args["flags"]
        long_ = call == abi.VmiCall.SetPxELong
        new = args["pte"] | (args.get("pte_hi", 0) << 32)
        try:
            old = int.from_bytes(read(ptep, 8 if long_ else 4), "little")
        except OSError:
            return
        deferred = (self.batched and self.lazy == abi.VMI_LAZY_MMU_UPDATES
                    and bool(flags & abi.VMI_PAGE_DEFER))
        if deferred:
            self._old_values.setdefault(ptep, old)
            return
        self._emit(tr.PteWrite(self.next_seq(), ptep=ptep, old=old, new=new,
                                       flags=flags))

    def flush(self, header: bytes, body_read: Read, header_addr: int) -> tr.BatchFlush | None:
        """The ROM announced a flush: ``header`` is the struct vmi_batch at ``header_addr``."""
        magic, seq, count, trigger, tlb, _lazy = abi.VMI_BATCH_HEADER.unpack_from(header)
        if magic != abi.ROM_BATCH_MAGIC or count > abi.ROM_QUEUE_LEN:
            return None
        body = body_read(header_addr + abi.VMI_BATCH_SIZE, count * abi.VMI_BATCH_ENTRY_SIZE)
        entries = [list(e) for e in abi.VMI_BATCH_ENTRY_STRUCT.iter_unpack(body)][:count]
        e = tr.BatchFlush(self.next_seq(), batch=seq, count=count,
                          trigger=_enum_name(abi.FlushTrigger, trigger),
                          tlb_action=_enum_name(abi.TlbAction, tlb), entries=entries)
        self._emit(e)
        for ptep, flags, lo, hi in entries:
            if flags & abi.ENTRY_NOTIFY:
                continue
            new = lo | (hi << 32) if flags & abi.ENTRY_LONG else lo
            old = self._old_values.get(ptep, 0)
            self._emit(tr.PteWrite(self.next_seq(), ptep=ptep, old=old, new=new,
                                           flags=flags & ~(abi.ENTRY_LONG | abi.ENTRY_NOTIFY),
                                           deferred=True, batch=seq))
            self._old_values[ptep] = new
        self._old_values.clear()
        return e


def _enum_name(enum: type, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)
