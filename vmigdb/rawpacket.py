"""vmigdb's own remote packet, ``qvmigdb.raw``: both ends of it, and the RSP binary escaping it uses.

The fast trace path's fetch: gdb asks the stub for a piece of its raw trace log
(``vmigdb.rawtrace`` items) and decodes it itself, so events never cross the wire as text.

* request ``qvmigdb.raw:OFFSET,LEN`` (hex): up to LEN log bytes from stream offset OFFSET;
* reply ``BASE;`` (hex) then the bytes as one zlib stream, binary-escaped as in ``qXfer``.
  BASE is the first offset the stub still keeps: above OFFSET, the reader lost bytes (the stub
  dropped them, or a trace file took them) and goes on with ``monitor vmi trace dump``. A reply
  shorter than LEN is the end of the log. The records compress about 4:1, which costs less than
  gdb reading them (gdb reads a reply byte by byte).

Pure: the stub (``stub/vmitrace.py``) and gdb (``commands/tracesource.py``) both use this.
"""

from __future__ import annotations

import zlib

NAME = "qvmigdb.raw"
#: Log bytes per reply at most; the reader asks for this much.
PER_REPLY = 1 << 20
#: Bytes a binary reply escapes, ``}`` first.
_ESCAPE_ORDER = (b"}", b"#", b"$", b"*")


class RawPacketError(ValueError):
    """A request or reply that is not this packet's."""


def escape_binary(data: bytes) -> bytes:
    """Escape ``$ # } *`` as ``}`` + (byte ^ 0x20), for binary replies such as qXfer. ``}``
    first, so the escapes added after it stay as they are; bytes.replace keeps a 1 MB reply
    (a trace chunk) in C."""
    for byte in _ESCAPE_ORDER:
        data = data.replace(byte, b"}" + bytes((byte[0] ^ 0x20,)))
    return data


def unescape_binary(data: bytes) -> bytes:
    """The inverse of ``escape_binary`` for a reply gdb hands over as it came
    (``send_packet``), which has no run-length encoding: every ``}`` starts an escape and never
    ends one, so replacing each escape pair, the ``}`` one last, is exact and stays in C."""
    for byte in reversed(_ESCAPE_ORDER):
        data = data.replace(b"}" + bytes((byte[0] ^ 0x20,)), byte)
    return data


def request(offset: int, size: int = PER_REPLY) -> str:
    return f"{NAME}:{offset:x},{size:x}"


def reply(base: int, data: bytes) -> bytes:
    """The stub's answer: ``data`` is at most what was asked for."""
    return b"%x;" % base + escape_binary(zlib.compress(data, 1))


def parse_reply(raw: bytes, size: int) -> tuple[int, bytes]:
    """(BASE, log bytes) of a reply as gdb's ``send_packet`` returns it (still escaped) to a
    request for ``size`` bytes; RawPacketError for anything else (never more than ``size``
    bytes are inflated, whatever the reply claims)."""
    head, sep, body = unescape_binary(raw).partition(b";")
    try:
        base = int(head, 16)
    except ValueError:
        base = -1
    if not sep or base < 0:
        raise RawPacketError("not a qvmigdb.raw reply")
    try:
        inflate = zlib.decompressobj()
        data = inflate.decompress(body, size)
    except zlib.error as e:
        raise RawPacketError(f"a bad zlib stream: {e}") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise RawPacketError("the reply is longer than asked for, or cut")
    return base, data
