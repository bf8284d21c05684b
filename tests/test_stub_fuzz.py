"""Fuzzing a real ``vmigdb serve`` process over raw TCP: at least 10,000 malformed or random packets
and byte streams (hypothesis), then the stub must still be alive, answer ``?`` with a valid stop
reply on a fresh connection, and send a whole register file for ``g``.

Three kinds of input: (a) random bytes; (b) well-framed packets (correct checksums, escaped) whose
payloads are known packet letters and names with garbage arguments; (c) stream-level traps: bad
checksums, escapes, run-length encoding, stray 0x03 and ``-``, abandoned and oversized packets.
Run control is bounded: a step runs one instruction, and every continue the strategies build is
followed by a 0x03 in the same write, so the guest never runs away with the fuzzing time.
One connection serves many examples; when the stub closes it (``k``, ``D``) we reconnect.
"""

from __future__ import annotations

import re
import select
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Built
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from targets import Target, start_stub

from vmigdb.stub import target

EXAMPLES = {"random bytes": 5000, "framed packets": 3000, "stream traps": 2000}
SYNC_EVERY = 250  # examples between two full ``?`` round trips (the stub must stay responsive)
REFUSED = b"E.vmigdb"
STOP_REPLY = re.compile(rb"\$([TS][0-9a-f]{2}[^$#]*)#([0-9a-f]{2})")


def checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def escape(payload: bytes) -> bytes:
    """gdb's binary escaping: ``}`` then the byte xor 0x20, for ``$ # } *``."""
    out = bytearray()
    for b in payload:
        if b in b"$#}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes, *, raw: bool = False) -> bytes:
    body = payload if raw else escape(payload)
    return b"$" + body + b"#" + checksum(body)


# --- the client -------------------------------------------------------------------------------


@dataclass
class Client:
    """One raw connection at a time to the stub; reconnects when the stub closed the last one."""

    port: int
    sock: socket.socket | None = None
    reconnects: int = 0
    received: int = 0
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=40))

    def _open(self, deadline: float) -> None:
        """Connect and prove the session is ours: a refusal means the stub is still ending the
        previous session, so poll until it lets us in."""
        while True:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(frame(b"?"))
            reply = read_until(s, lambda buf: REFUSED in buf or STOP_REPLY.search(buf), deadline)
            if STOP_REPLY.search(reply):
                self.sock = s
                return
            s.close()
            assert time.monotonic() < deadline, f"stub kept refusing: {reply[-200:]!r}"
            time.sleep(0.02)

    def send(self, data: bytes) -> None:
        if self.sock is None:
            self.reconnects += 1
            self._open(time.monotonic() + 10)
        self.recent.append(data)
        try:
            self.sock.sendall(data)
        except OSError:
            self._drop()
            return
        self.drain()

    def drain(self) -> None:
        """Read whatever the stub has sent, without waiting; notice a closed connection."""
        while self.sock is not None:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._drop()
                return
            self.received += len(data)

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def sync(self) -> bytes:
        """A full ``?`` round trip on the current (or a new) connection; returns the reply packet.

        Garbage sent before may leave the stub inside an unterminated packet or running (a
        continue whose 0x03 arrived): a 0x03 and a fresh ``$`` resynchronise both."""
        deadline = time.monotonic() + 10
        if self.sock is None:
            self.reconnects += 1
            self._open(deadline)
        try:
            self.sock.sendall(b"\x03" + frame(b"?"))
            reply = read_until(self.sock, lambda buf: STOP_REPLY.search(buf), deadline,
                               allow_close=True)
        except OSError:
            reply = b""
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the last inputs were {list(self.recent)!r}") from None
        if not STOP_REPLY.search(reply):  # the stub closed it (k or D was still queued)
            self._drop()
            self.reconnects += 1
            self._open(deadline)
            self.sock.sendall(frame(b"?"))
            reply = read_until(self.sock, lambda buf: STOP_REPLY.search(buf), deadline)
        return reply

    def close(self) -> None:
        self._drop()


def read_until(s: socket.socket, done, deadline: float, allow_close: bool = False) -> bytes:
    buf = b""
    while not done(buf):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no answer from the stub; got {buf[-300:]!r}"
        ready, _, _ = select.select([s], [], [], remaining)
        if not ready:
            continue
        data = s.recv(1 << 16)
        if not data:
            if allow_close:
                return buf
            raise AssertionError(f"the stub closed the connection; got {buf[-300:]!r}")
        buf += data
    return buf


# --- strategies -------------------------------------------------------------------------------

HEX = st.one_of(st.just(b""), st.builds(lambda n, upper: (b"%X" if upper else b"%x") % n,
                                         st.integers(0, 2**48), st.booleans()))
JUNK = st.binary(max_size=40)
NUMBER = st.one_of(HEX, st.integers(0, 2**64).map(lambda n: b"%x" % n), JUNK)
#: Register-file hex (up to a whole ``g`` payload and a bit), some bytes as ``xx`` (unknown).
REG_HEX = st.builds(lambda data, cut: (data[:cut].hex() + "xx" * (cut < len(data))
                                       + data[cut + 1:].hex()).encode(),
                    st.binary(max_size=target.G_SIZE + 4), st.integers(0, target.G_SIZE + 4))
ADDR_LEN = st.builds(lambda a, sep, n: a + sep + n, NUMBER, st.sampled_from([b",", b"", b";", b":"]),
                     NUMBER)

#: Packets that stop quickly by themselves: one instruction at most.
STEPS = st.sampled_from([b"s", b"S05", b"vCont;s", b"vCont;s:1", b"vCont;s:p1.1;c:p1.-1",
                         b"vCont;S05:1", b"vCont;s:2"])
#: Continues: always sent with a 0x03 right behind them.
CONTINUES = st.sampled_from([b"c", b"C05", b"vCont;c", b"vCont;c:1", b"vCont;C02:-1"])

QUERIES = st.sampled_from([
    b"qSupported", b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386",
    b"QStartNoAckMode", b"vMustReplyEmpty", b"qC", b"qAttached", b"qfThreadInfo",
    b"qsThreadInfo", b"qTStatus", b"qOffsets", b"qSymbol::", b"vCont?", b"qqemu.PhyMemMode",
    b"Qqemu.PhyMemMode:1", b"Qqemu.PhyMemMode:0", b"Qqemu.PhyMemMode:", b"vKill;1",
    b"qXfer:features:read:target.xml:", b"qXfer:memory-map:read::", b"qXfer:x:read:y:",
    b"qXfer:features:write:target.xml:0,1", b"qRcmd,", b"qRcmd,68656c70", b"qRcmd,7868",
    b"qRcmd,78702f347877203078633030303030", b"qRcmd,696e666f207265676973746572",
    b"qRcmd,76", b"Hg", b"Hc", b"Hg-1", b"Hx0", b"T", b"Tp1.1", b"Tzz", b"?", b"g", b"!",
    b"vFile:open:", b"vAttach;1", b"vRun;", b"QNonStop:1", b"qL", b"bc", b"bs",
])


def _join(*parts: bytes) -> bytes:
    return b"".join(parts)


# Strategies are built once, at import: hypothesis validates each strategy object, and building
# them inside a composite per example made generation the slowest part of the fuzzing.
_ANY_BYTES = st.binary(min_size=1, max_size=60)
_SEP_Z = st.sampled_from([b"", b";X2,ab", b";cmds"])
#: A known packet letter or name with arguments that are mostly wrong.
GARBAGE = st.one_of(
    st.builds(_join, st.just(b"m"), ADDR_LEN),
    st.builds(_join, st.just(b"M"), ADDR_LEN, st.just(b":"), st.one_of(HEX, JUNK)),
    st.builds(_join, st.just(b"X"), ADDR_LEN, st.just(b":"), JUNK),
    st.builds(_join, st.just(b"g"), st.one_of(st.just(b""), JUNK)),
    st.builds(_join, st.just(b"G"), st.one_of(REG_HEX, JUNK)),
    st.builds(_join, st.just(b"p"), NUMBER),
    st.builds(_join, st.just(b"P"), NUMBER, st.sampled_from([b"=", b""]),
              st.one_of(HEX, REG_HEX, JUNK)),
    st.builds(_join, st.sampled_from([b"Z", b"z"]),
              st.one_of(st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"5"]), NUMBER),
              st.just(b","), ADDR_LEN, _SEP_Z),
    st.builds(_join, QUERIES, st.one_of(st.just(b""), JUNK, HEX)),
    st.builds(_join, st.just(b"H"), st.sampled_from([b"g", b"c", b"m", b""]), NUMBER),
    st.builds(_join, st.just(b"T"), NUMBER),
    st.builds(_join, st.just(b"vCont"), st.sampled_from([b";", b";x", b"", b";s:", b";S", b";C"]),
              JUNK),
    st.builds(_join, st.just(b"?"), JUNK),
    _ANY_BYTES,
)

_ACK = st.sampled_from([b"", b"+", b"-", b"++"])
#: Rarely a kill or detach after a packet: the stub closes the connection, we reconnect.
_CLOSE = st.builds(lambda n, p: frame(p) if n == 0 else b"", st.integers(0, 150),
                   st.sampled_from([b"k", b"D", b"D;1"]))
_PACKET = st.one_of(STEPS.map(frame), CONTINUES.map(lambda p: frame(p) + b"\x03"),
                    GARBAGE.map(frame), GARBAGE.map(frame), GARBAGE.map(frame))
#: 1-5 well-framed packets, with acks/naks between them; run control is bounded.
FRAMED = st.lists(st.builds(_join, _ACK, _PACKET, _CLOSE), min_size=1, max_size=5).map(b"".join)

_PAYLOAD = st.one_of(GARBAGE, QUERIES)


def _bad_checksum(payload: bytes, delta: int) -> bytes:
    body = escape(payload)
    return b"$" + body + b"#" + b"%02x" % ((sum(body) + delta) & 0xFF)


def _stray_interrupts(payload: bytes, cut: int) -> bytes:
    body = escape(payload)
    cut %= len(body) + 1
    inner = body[:cut] + b"\x03" + body[cut:]
    return b"\x03$" + inner + b"#" + checksum(inner) + b"\x03"


#: Stream-level traps around otherwise sensible packets.
TRAPS = st.one_of(
    st.builds(_bad_checksum, _PAYLOAD, st.integers(1, 255)),  # wrong checksum
    st.builds(lambda p, tail: b"$" + escape(p) + b"#" + tail, _PAYLOAD,  # checksum not hex / cut
              st.sampled_from([b"zz", b"0", b"", b"$", b"#", b"\x03\x03"])),
    st.builds(lambda p, raw: frame(p[:1] + raw, raw=True), _PAYLOAD,  # raw escapes
              st.lists(st.one_of(st.binary(min_size=1, max_size=3),
                                 st.binary(max_size=1).map(lambda b: b"}" + b)),
                       max_size=20).map(b"".join)),
    st.builds(lambda p, raw: frame(p[:1] + raw, raw=True), _PAYLOAD,  # run-length encoding
              st.lists(st.builds(lambda c, n: c + b"*" + n, st.binary(max_size=2),
                                 st.binary(max_size=1)), max_size=8).map(b"".join)),
    st.builds(_stray_interrupts, _PAYLOAD, st.integers(0, 1000)),  # 0x03 around and inside
    st.builds(lambda p, cut: b"$" + escape(p)[:cut] + frame(p), _PAYLOAD,  # abandoned packet
              st.integers(0, 100)),
    st.builds(lambda p, n: b"-" * n + frame(p) + b"-", _PAYLOAD, st.integers(1, 4)),  # naks
    st.sampled_from([100, 0x4000, 0x10001, 0x10100]).map(  # oversized, no terminator in time
        lambda n: b"$" + b"m" * n + b"#00"),
    st.builds(lambda p: b"$" + escape(p) + b"#$" + frame(p), _PAYLOAD),  # '$' in the checksum
    st.binary(max_size=30).map(lambda b: b.replace(b"$", b"")),  # never part of a packet
    st.builds(lambda c, p: frame(c) + b"\x03" + frame(p), CONTINUES, _PAYLOAD),  # stopped at once
    st.builds(lambda p, n: frame(p) * n, _PAYLOAD, st.integers(2, 6)),  # a burst
)


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture
def stub(built: Built, tmp_path: Path) -> Iterator[Target]:
    t = start_stub(built.guest, built.rom, "rom=copy", tmp_path)
    yield t
    t.stop()


def fuzz(client: Client, strategy: st.SearchStrategy[bytes], examples: int,
         counter: dict[str, int], name: str) -> None:
    """Send ``examples`` inputs drawn from ``strategy``; every SYNC_EVERY a full ``?`` round trip
    proves the stub still answers (no database: nothing is written into the repository)."""
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def one(data: bytes) -> None:
        client.send(data)
        counter[name] = counter.get(name, 0) + 1
        if counter[name] % SYNC_EVERY == 0:
            client.sync()

    one()


def test_stub_survives_fuzzing_and_still_answers(stub: Target) -> None:
    client = Client(stub.port)
    counter: dict[str, int] = {}
    t0 = time.monotonic()
    strategies = {"random bytes": st.binary(min_size=1, max_size=200),
                  "framed packets": FRAMED, "stream traps": TRAPS}
    seconds: dict[str, float] = {}
    try:
        for name, strategy in strategies.items():
            t1 = time.monotonic()
            fuzz(client, strategy, EXAMPLES[name], counter, name)
            seconds[name] = round(time.monotonic() - t1, 1)
        client.sync()
    finally:
        client.close()
    elapsed = time.monotonic() - t0
    total = sum(counter.values())
    print(f"fuzz: {total} examples in {elapsed:.1f} s (examples {counter}, seconds {seconds}), "
          f"{client.reconnects} reconnects, {client.received} bytes received")
    assert total >= 10_000
    assert stub.proc.poll() is None, "the stub died"

    # A fresh connection: '?' gives a well-formed stop reply, 'g' the whole register file.
    s, reply = fresh_connection(stub.port)
    with s:
        m = STOP_REPLY.search(reply)
        assert reply.startswith(b"+")  # a fresh connection is in ack mode
        assert checksum(m[1]) == m[2]
        assert re.fullmatch(rb"T05(?:[0-9a-f]{2}:[0-9a-fx]+;)*thread:1;|S05", m[1]), m[1]
        s.sendall(b"+" + frame(b"g"))
        reply = read_until(s, lambda b: re.search(rb"\$[0-9a-fx]*#[0-9a-f]{2}", b),
                           time.monotonic() + 10)
        g = re.search(rb"\$([0-9a-fx]*)#([0-9a-f]{2})", reply)
        assert len(g[1]) == 2 * target.G_SIZE
        assert checksum(g[1]) == g[2]
    assert stub.proc.poll() is None


def fresh_connection(port: int) -> tuple[socket.socket, bytes]:
    """A new connection and the stub's answer to its first ``?``; while the stub is still ending
    the previous session it refuses, so poll with a deadline."""
    deadline = time.monotonic() + 10
    while True:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(frame(b"?"))
        reply = read_until(s, lambda b: REFUSED in b or STOP_REPLY.search(b), deadline)
        if STOP_REPLY.search(reply):
            return s, reply
        s.close()
        time.sleep(0.02)


def test_ctrl_c_reaches_a_run_with_more_resume_packets_queued(built: Built, tmp_path: Path) -> None:
    """Regression (found by the fuzzing above): a resume packet read while a continue ran used to
    mark the session "pending", so the 0x03 after it was kept for later and the run went on
    forever. The 0x03 must stop the run in progress; the queued step then runs as asked."""
    t = start_stub(built.guest, built.rom, "rom=copy stress=100000", tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", t.port), timeout=10) as s:
            deadline = time.monotonic() + 20
            s.sendall(frame(b"QStartNoAckMode"))
            read_until(s, lambda b: b"$OK#9a" in b, deadline)
            s.sendall(frame(b"c"))
            while b"pt n=200 ok" not in t.serial.read_bytes():  # deep in the long loop
                assert time.monotonic() < deadline, "the guest did not start its loop"
                time.sleep(0.01)
            s.sendall(frame(b"s"))  # queued behind the running continue
            s.sendall(b"\x03")
            replies = read_until(s, lambda b: len(STOP_REPLY.findall(b)) >= 2, deadline)
            first, second = (m[0] for m in STOP_REPLY.findall(replies))
            assert first.startswith(b"T02")  # the continue, interrupted (SIGINT)
            assert second.startswith(b"T05")  # then the step
        assert t.proc.poll() is None
    finally:
        t.stop()


def test_absurd_watchpoint_lengths_are_refused_at_once(stub: Target) -> None:
    """Regression (found by the fuzzing above): ``Z2,ADDR,LEN`` with a garbage length made the
    machine hook every page of a 2**64-byte range, so the stub stopped answering. Such lengths
    are refused with an error; a sane watchpoint still goes in and comes out."""
    s, _reply = fresh_connection(stub.port)
    with s:
        deadline = time.monotonic() + 10
        for packet in (b"Z2,1000,ffffffffffffffff", b"Z4,0,100000000", b"Z3,fffff000,2000",
                       b"Z2,1000,0"):
            s.sendall(b"+" + frame(packet))
            reply = read_until(s, lambda b: re.search(rb"\$[^#]*#..", b), deadline)
            assert re.search(rb"\$E\d\d#", reply), (packet, reply)
        s.sendall(b"+" + frame(b"Z2,1000,4"))
        assert b"$OK#9a" in read_until(s, lambda b: b"#" in b, deadline)
        s.sendall(b"+" + frame(b"z2,1000,4"))
        assert b"$OK#9a" in read_until(s, lambda b: b"#" in b, deadline)
    assert stub.proc.poll() is None
