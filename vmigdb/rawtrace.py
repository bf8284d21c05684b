"""Raw trace items: what the stub's C hooks record, and their decoding into ``vmigdb.trace`` events.

The stub's tracer (stub/tracehook.c) writes each hit on a ROM entry or on a watched return
address as one fixed-size record: the general registers, the stack words at ESP and the memory
the decoding rules read at the call (the old PTE of a PTE write). Port announcements (the ROM's
init and its batch flushes) are captured when they happen and queued among the records. That
stream of items is also the fast path's wire format: the stub keeps it, and whoever reads it
(the stub for ``monitor vmi trace dump``, gdb for ``vmi trace``) decodes it with a
``RawDecoder`` through ``vmigdb.recorder``, the rules the portable path uses. Decoding the same
stream from its start gives the same events with the same sequence numbers.

An item is a kind byte, a little-endian u32 payload length, then the payload:

* ``R``: records, back to back (``RECORD``, mirror of struct vmigdb_trace_record in
  stub/hooks.h): call number (``RETURN`` for a return hit), hooked address, flags, eax ecx edx
  ebx esp ebp esi edi, six stack words, two words of captured memory;
* ``I``: the u32 vmi_init announced (linear base | ROM_INIT_BATCHED);
* ``F``: the u32 address of the ``struct vmi_batch`` a flush announced, then its header and
  entries as read at the flush;
* ``S``: the state a decoder cannot see for itself, when tracing (re)starts or its hooks go: a
  u32 "the ROM batches" (vmi_init may have run untraced); calls awaiting their return are
  forgotten (their return addresses are no longer watched).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vmigdb import abi
from vmigdb.recorder import Recorder

RECORD = struct.Struct("<3I8I6I2I")
#: The call number of a record made at a return address.
RETURN = 0xFFFFFFFF
MEM_OK = 1  # flags: the captured memory was readable
STACK_OK = 2  # flags: the stack words were readable
REGS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_REG_INDEX = {name: i for i, name in enumerate(REGS)}
_STACK_AT = 4 * (3 + len(REGS))
_STACK_END = _STACK_AT + 24
_ITEM = struct.Struct("<cI")
_U32 = struct.Struct("<I")
_MEM = struct.Struct("<2I")


class RawTraceError(ValueError):
    """The raw stream is not what the stub writes (a corrupt or foreign reply)."""


def records_item(records: bytes) -> bytes:
    return _ITEM.pack(b"R", len(records)) + records


def init_item(value: int) -> bytes:
    return _ITEM.pack(b"I", 4) + _U32.pack(value & 0xFFFFFFFF)


def state_item(batched: bool) -> bytes:
    return _ITEM.pack(b"S", 4) + _U32.pack(int(batched))


def flush_item(header_addr: int, batch: bytes) -> bytes:
    return _ITEM.pack(b"F", 4 + len(batch)) + _U32.pack(header_addr & 0xFFFFFFFF) + batch


def captured_memory(spec: abi.CallSpec) -> tuple[int, int] | None:
    """(index in REGS of the register holding the address, bytes) that a hook must capture at
    this call for the recorder, or None. Only register-passed addresses can be captured."""
    return _CAPTURES[spec.call]


def _capture_for(spec: abi.CallSpec) -> tuple[int, int] | None:
    capture = Recorder.capture(spec)
    if capture is None:
        return None
    loc = next(a.loc for a in spec.args if a.name == capture[0])
    return (_REG_INDEX[loc], capture[1]) if loc in _REG_INDEX else None


def wants_return(spec: abi.CallSpec) -> bool:
    """Whether the recorder matches this call's return (the hook must watch its address)."""
    return spec.returns and bool(spec.results)


def return_addresses(records: bytes) -> set[int]:
    """The addresses the recorded calls with results will return to."""
    out: set[int] = set()
    for r in RECORD.iter_unpack(records):
        if r[0] != RETURN and r[2] & STACK_OK:
            spec = _SPECS.get(r[0])
            if spec is not None and wants_return(spec):
                out.add(r[11])
    return out


#: Call specs by VMI call number, as records carry them, and what each one captures.
_SPECS: dict[int, abi.CallSpec] = {int(call): spec for call, spec in abi.CALLS.items()}
_CAPTURES = {call: _capture_for(spec) for call, spec in abi.CALLS.items()}


class RawDecoder:
    """Feeds a raw stream, in pieces of any size, to a Recorder (its events are the output)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._pending = b""  # an item cut between two pieces

    def feed(self, data: bytes) -> None:
        """Decode every whole item in what came so far; RawTraceError on a malformed one."""
        buf = self._pending + data if self._pending else data
        pos = 0
        while len(buf) - pos >= _ITEM.size:
            kind, size = _ITEM.unpack_from(buf, pos)
            end = pos + _ITEM.size + size
            if end > len(buf):
                break
            self._item(kind, memoryview(buf)[pos + _ITEM.size:end])
            pos = end
        self._pending = bytes(buf[pos:])

    def _item(self, kind: bytes, payload: memoryview) -> None:
        rec = self.recorder
        if kind == b"R":
            if len(payload) % RECORD.size:
                raise RawTraceError(f"records item of {len(payload)} bytes")
            raw = payload.tobytes()
            for i, r in enumerate(RECORD.iter_unpack(raw)):
                self._record(r, raw, i * RECORD.size)
        elif kind == b"I" and len(payload) == 4:
            rec.rom_init(_U32.unpack(payload)[0])
        elif kind == b"S" and len(payload) == 4:
            rec.batched = bool(_U32.unpack(payload)[0])
            rec.pending.clear()
        elif kind == b"F" and len(payload) >= 4 + abi.VMI_BATCH_SIZE:
            addr = _U32.unpack_from(payload)[0]
            header = payload[4:4 + abi.VMI_BATCH_SIZE].tobytes()
            body = payload[4 + abi.VMI_BATCH_SIZE:].tobytes()
            try:
                rec.flush(header, lambda _addr, n: _exact(body, n), addr)
            except OSError:
                pass  # a batch whose entries were not all readable: as the live tracer did
        else:
            raise RawTraceError(f"unknown item {kind!r} of {len(payload)} bytes")

    def _record(self, r: tuple[int, ...], raw: bytes, off: int) -> None:
        if not r[2] & STACK_OK:
            return  # ESP was unmapped: a gdb breakpoint could not have read it either
        regs = r[3:11]

        def reg(name: str) -> int:
            return regs[_REG_INDEX[name]]

        rec = self.recorder
        if r[0] == RETURN:
            if rec.pending:
                rec.ret(r[1], regs[4], reg)
            return
        spec = _SPECS.get(r[0])
        if spec is None:
            raise RawTraceError(f"record of unknown VMI call {r[0]}")
        where = captured_memory(spec)
        rec.call(spec, r[1], reg, regs[4], raw[off + _STACK_AT:off + _STACK_END],
                 _nothing_captured if where is None else _captured_read(where, r))


def _exact(data: bytes, n: int) -> bytes:
    if n > len(data):
        raise OSError(f"{n} bytes asked, {len(data)} captured")
    return data[:n]


def _nothing_captured(addr: int, size: int) -> bytes:
    raise OSError(f"{size} bytes at {addr:#x} were not captured at the call")


def _captured_read(where: tuple[int, int], r: tuple[int, ...]) -> Callable[[int, int], bytes]:
    """The memory read Recorder.call makes, answered from what the hook captured."""

    def read(addr: int, size: int) -> bytes:
        if not r[2] & MEM_OK or size > where[1] or r[3 + where[0]] != addr:
            return _nothing_captured(addr, size)
        return _MEM.pack(r[17], r[18])[:size]

    return read
