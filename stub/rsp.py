"""gdb remote serial protocol: framing, decoding and packet-argument parsing, as pure functions.

Nothing here touches a socket or the machine, so every rule of the wire format can be unit-tested
(and fuzzed) alone; ``stub/server.py`` feeds received bytes to ``Decoder`` and frames its replies
with ``frame``. The traps this module encodes (see shared reference gdb-remote-protocol.md):

* gdb treats ``*`` as run-length encoding in *every* packet it reads, so binary replies (qXfer)
  must escape ``$ # } *``; we never emit RLE ourselves.
* gdb never RLE-encodes, but escapes ``$ # } *`` as ``}`` + (byte ^ 0x20) in binary packets (``X``);
  we decode both escapes and RLE on every packet, which is safe because non-binary packets are text.
* A raw 0x03 outside a packet is Ctrl-C; inside a packet (``X`` data) it is data.
* Malformed input never raises: a bad checksum becomes a ``BAD`` event (the server answers ``-``),
  garbage between packets is dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

# RSP's binary escaping lives in the core, beside vmigdb's own packet that uses it too.
from vmigdb.rawpacket import escape_binary, unescape_binary  # noqa: F401 (re-exported)

#: Largest packet we accept and advertise (qSupported PacketSize, in hex there!). gdb sizes its
#: ``m``/``X``/``G`` packets to fit it.
PACKET_SIZE = 0x4000
#: A packet whose payload grows past this without a ``#`` is discarded (reported as BAD), so a peer
#: that never terminates a packet cannot make us buffer without bound.
MAX_RAW_PAYLOAD = 4 * PACKET_SIZE

_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class RspError(ValueError):
    """A packet gdb sent is malformed (bad hex, missing field, no such register): the server
    answers ``E01`` and logs nothing. Every parser here and in ``target`` raises only this for
    bad input, so any other exception out of a packet handler is a bug, and logged as one."""


class Event(enum.IntEnum):
    """What the decoder found in the byte stream."""

    PACKET = 0  # a well-formed packet; payload decoded (escapes and RLE expanded)
    BAD = 1  # a packet with a bad checksum or no terminator in time: answer ``-`` in ack mode
    ACK = 2  # ``+``
    NAK = 3  # ``-``: resend the last reply
    INTERRUPT = 4  # raw 0x03 (Ctrl-C) outside a packet


# --- checksums and framing -------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """The modulo-256 sum gdb puts after ``#``."""
    return sum(data) & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#xx``. The payload must already be escaped if it can contain ``$#}*``."""
    return b"$%s#%02x" % (payload, sum(payload) & 0xFF)


def unescape(raw: bytes) -> bytes:
    """Undo ``}`` escapes and expand ``*`` run-length encoding (count char - 29 repeats).

    Never raises: a trailing lone ``}`` or ``*`` is dropped, an RLE with no preceding byte or an
    out-of-range count is taken literally, as gdb's own reader would not crash on them either.
    """
    if b"}" not in raw and b"*" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x7D:  # '}'
            if i + 1 < n:
                out.append(raw[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A:  # '*'
            if i + 1 < n and out:
                count = raw[i + 1] - 29
                if 0 < count <= 126 - 29:
                    out.extend(bytes((out[-1],)) * count)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


class Decoder:
    """Incremental splitter of a gdb byte stream into events; survives any garbage.

    ``feed(data)`` returns a list of ``(Event, payload)``; payload is ``b""`` except for PACKET.
    State is only the unfinished tail of the stream, so it can be fed one byte at a time or in
    whatever chunks ``recv`` returns.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Event, bytes]]:
        buf = self._buf
        buf += data
        events: list[tuple[Event, bytes]] = []
        pos = 0
        n = len(buf)
        while pos < n:
            b = buf[pos]
            if b != 0x24:  # not '$': a single-byte token or garbage
                if b == 0x2B:
                    events.append((Event.ACK, b""))
                elif b == 0x2D:
                    events.append((Event.NAK, b""))
                elif b == 0x03:
                    events.append((Event.INTERRUPT, b""))
                pos += 1
                continue
            end = buf.find(b"#", pos + 1)
            if end < 0:
                # Unterminated: a newer '$' means the old packet was abandoned.
                restart = buf.find(b"$", pos + 1)
                if restart >= 0:
                    events.append((Event.BAD, b""))
                    pos = restart
                    continue
                if n - pos > MAX_RAW_PAYLOAD:
                    events.append((Event.BAD, b""))
                    pos = n
                break
            restart = buf.find(b"$", pos + 1, end)
            if restart >= 0:
                events.append((Event.BAD, b""))
                pos = restart
                continue
            if end + 2 >= n:
                break  # checksum not complete yet
            raw = bytes(buf[pos + 1 : end])
            c1, c2 = buf[end + 1], buf[end + 2]
            if c1 in _HEXDIGITS and c2 in _HEXDIGITS and int(buf[end + 1 : end + 3], 16) == (
                sum(raw) & 0xFF
            ):
                events.append((Event.PACKET, unescape(raw)))
                pos = end + 3
            else:
                events.append((Event.BAD, b""))
                # A '$' where the checksum should be starts the next packet: keep it.
                pos = end + 1 if c1 == 0x24 else end + 2 if c2 == 0x24 else end + 3
        del buf[:pos]
        return events


# --- hex helpers -------------------------------------------------------------------------------


def hex_encode(data: bytes) -> bytes:
    return data.hex().encode()


def hex_decode(text: bytes) -> bytes:
    """Hex pairs to bytes; RspError on odd length or non-hex."""
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RspError(f"bad hex: {text[:40]!r}") from exc


def parse_hex(text: bytes) -> int:
    """A hex number as gdb writes addresses and lengths; RspError if empty or not hex."""
    if not text or not all(c in _HEXDIGITS for c in text):
        raise RspError(f"bad hex number: {text[:40]!r}")
    return int(text, 16)


def printable(payload: bytes, limit: int = 512) -> str:
    """A payload as one line of text for a log: printable ASCII as is, anything else (and the
    backslash) as ``\\xNN``; longer than ``limit`` characters it is cut, saying how long it was."""
    text = payload[: limit + 1].decode("latin-1")
    out = "".join(c if " " <= c <= "~" and c != "\\" else f"\\x{ord(c):02x}" for c in text)
    if len(out) > limit or len(payload) > limit:
        return f"{out[:limit]}... ({len(payload)} bytes)"
    return out


def le_hex(value: int, size: int) -> bytes:
    """``value`` as ``size`` little-endian bytes in hex (register payloads)."""
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex().encode()


# --- packet arguments --------------------------------------------------------------------------


def parse_addr_len(args: bytes) -> tuple[int, int]:
    """``ADDR,LEN`` (m, M, X, qXfer offsets)."""
    addr, sep, length = args.partition(b",")
    if not sep:
        raise RspError("expected ADDR,LEN")
    return parse_hex(addr), parse_hex(length)


def parse_thread_id(text: bytes) -> tuple[int, int]:
    """A thread-id: ``TID``, ``-1``, ``0`` or ``pPID.TID`` / ``pPID``; -1 means all, 0 means any.

    Returns (pid, tid); pid is -1 when absent.
    """

    def one(part: bytes) -> int:
        return -1 if part == b"-1" else parse_hex(part)

    if text.startswith(b"p"):
        pid, dot, tid = text[1:].partition(b".")
        return one(pid), (one(tid) if dot else -1)
    return -1, one(text)


def thread_matches(pid: int, tid: int, our_tid: int = 1) -> bool:
    """Whether a thread-id selects our single thread (process 1, thread ``our_tid``)."""
    return pid in (-1, 0, 1) and tid in (-1, 0, our_tid)


def parse_vcont(args: bytes) -> list[tuple[str, int | None, tuple[int, int] | None]]:
    """``;ACTION[:TID];...`` (text after ``vCont``) to [(action, signal, thread or None)].

    Actions ``c s`` and ``C sig``/``S sig``; anything else is RspError. gdb applies the leftmost
    action that matches a thread, so the order is kept.
    """
    if not args.startswith(b";"):
        raise RspError("vCont without actions")
    actions: list[tuple[str, int | None, tuple[int, int] | None]] = []
    for part in args[1:].split(b";"):
        act, colon, tid = part.partition(b":")
        if not act:
            raise RspError("empty vCont action")
        kind = chr(act[0])
        if kind in "cs" and len(act) == 1:
            sig = None
        elif kind in "CS" and len(act) == 3:
            sig = parse_hex(act[1:])
        else:
            raise RspError(f"unsupported vCont action {act[:8]!r}")
        actions.append((kind.lower(), sig, parse_thread_id(tid) if colon else None))
    return actions


def vcont_action_for(actions: Iterable[tuple[str, int | None, tuple[int, int] | None]],
                     our_tid: int = 1) -> str | None:
    """The action (``"c"`` or ``"s"``) gdb asked of our thread: the leftmost that applies."""
    for kind, _sig, thread in actions:
        if thread is None or thread_matches(*thread, our_tid=our_tid):
            return kind
    return None


# --- replies -------------------------------------------------------------------------------------


def stop_reply(signal: int, expedite: Iterable[tuple[int, bytes]] = (), *, reason: str = "",
               reason_addr: int | None = None, thread: int = 1) -> bytes:
    """``T`` stop reply: ``TSS[reason:[addr];]NN:value;...thread:T;``.

    ``expedite`` holds (remote register number, little-endian hex value); expediting ebp, esp and
    eip spares gdb a ``g`` per step. ``reason`` is swbreak/hwbreak (no value) or
    watch/rwatch/awatch (with the data address).
    """
    parts = [b"T%02x" % (signal & 0xFF)]
    if reason:
        value = b"%x" % reason_addr if reason_addr is not None else b""
        parts.append(b"%s:%s;" % (reason.encode(), value))
    for regnum, value_hex in expedite:
        parts.append(b"%02x:%s;" % (regnum, value_hex))
    parts.append(b"thread:%x;" % thread)
    return b"".join(parts)


def exit_reply(code: int) -> bytes:
    """``W`` + exit status byte: the process (machine) exited."""
    return b"W%02x" % (code & 0xFF)


def console_output(text: str) -> bytes:
    """An ``O`` packet payload: console text for gdb to print (monitor output, stop messages)."""
    return b"O" + text.encode("utf-8", "replace").hex().encode()


def qxfer_chunk(document: bytes, offset: int, length: int) -> bytes:
    """One qXfer:...:read reply: ``m`` + escaped data if more follows, ``l`` + data for the last."""
    chunk = document[offset : offset + length]
    more = offset + length < len(document)
    return (b"m" if more else b"l") + escape_binary(chunk)
