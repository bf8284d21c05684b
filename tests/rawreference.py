"""The reference decoder of the stub's raw trace: one item, one record at a time, through
``vmigdb.recorder`` (the rules the portable path applies at gdb breakpoints). The bulk decoder
(``vmigdb.rawtrace.RawDecoder``) must give exactly its events; this is the oracle the tests hold
it to."""

from __future__ import annotations

import struct

from vmigdb import abi, rawtrace
from vmigdb import trace as tr
from vmigdb.recorder import Recorder

_ITEM = struct.Struct("<cI")
_SPECS = {int(call): spec for call, spec in abi.CALLS.items()}


def decode(raw: bytes) -> list[tr.Event]:
    rec = Recorder()
    pos = 0
    while pos < len(raw):
        kind, size = _ITEM.unpack_from(raw, pos)
        payload = raw[pos + _ITEM.size:pos + _ITEM.size + size]
        pos += _ITEM.size + size
        if kind == b"R":
            for r in rawtrace.np.frombuffer(payload, rawtrace.RECORD).tolist():
                _record(rec, r)
        elif kind == b"I":
            rec.rom_init(struct.unpack_from("<I", payload)[0])
        elif kind == b"S":
            rec.batched = bool(struct.unpack("<I", payload)[0])
            rec.pending.clear()
        elif kind == b"F":
            addr = struct.unpack_from("<I", payload)[0]
            header, body = payload[12:12 + abi.VMI_BATCH_SIZE], payload[12 + abi.VMI_BATCH_SIZE:]

            def read(_addr: int, n: int, body: bytes = body) -> bytes:
                if n > len(body):
                    raise OSError("not captured")
                return body[:n]

            try:
                rec.flush(header, read, addr)
            except OSError:
                pass
        else:
            raise ValueError(kind)
    return list(rec.events)


def _record(rec: Recorder, r: tuple) -> None:
    call, addr, flags, regs, stack, mem, _task, _ticks = r
    regs, stack, mem = ([int(x) for x in a] for a in (regs, stack, mem))  # not numpy scalars
    if not flags & rawtrace.STACK_OK:
        return
    index = {name: i for i, name in enumerate(rawtrace.REGS)}

    def reg(name: str) -> int:
        return regs[index[name]]

    if call == rawtrace.RETURN:
        if rec.pending:
            rec.ret(addr, regs[4], reg)
        return
    spec = _SPECS[call]
    where = rawtrace.captured_memory(spec)

    def read(a: int, size: int) -> bytes:
        if where is None or not flags & rawtrace.MEM_OK or regs[where[0]] != a:
            raise OSError("not captured")
        return struct.pack("<2I", *mem)[:size]

    rec.call(spec, addr, reg, regs[4], struct.pack("<6I", *stack), read)
