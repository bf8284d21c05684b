"""Pure RSP framing/parsing (stub/rsp.py) and the register file (stub/target.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmigdb.stub import rsp, target
from vmigdb.stub.rsp import Event


def test_frame_checksum_matches_gdb_example() -> None:
    # gdb manual: "$OK#9a"
    assert rsp.frame(b"OK") == b"$OK#9a"
    assert rsp.checksum(b"") == 0
    assert rsp.frame(b"") == b"$#00"


def test_decoder_yields_packets_acks_naks_interrupts_and_drops_garbage() -> None:
    d = rsp.Decoder()
    stream = b"+junk-\x03" + rsp.frame(b"qSupported:xmlRegisters=i386") + b"\x03+"
    assert d.feed(stream) == [
        (Event.ACK, b""), (Event.NAK, b""), (Event.INTERRUPT, b""),
        (Event.PACKET, b"qSupported:xmlRegisters=i386"), (Event.INTERRUPT, b""), (Event.ACK, b""),
    ]


def test_decoder_handles_packets_split_at_every_byte() -> None:
    d = rsp.Decoder()
    data = rsp.frame(b"m1000,4") + rsp.frame(b"g")
    events = []
    for i in range(len(data)):
        events += d.feed(data[i : i + 1])
    assert events == [(Event.PACKET, b"m1000,4"), (Event.PACKET, b"g")]


def test_bad_checksum_is_bad_and_next_packet_survives() -> None:
    d = rsp.Decoder()
    assert d.feed(b"$g#00" + rsp.frame(b"?")) == [(Event.BAD, b""), (Event.PACKET, b"?")]
    assert d.feed(b"$g#zz") == [(Event.BAD, b"")]
    # A new '$' inside an unfinished packet abandons it.
    assert d.feed(b"$abc" + rsp.frame(b"?")) == [(Event.BAD, b""), (Event.PACKET, b"?")]
    # A '$' where the checksum should be starts the next packet.
    assert d.feed(b"$g#" + rsp.frame(b"s")) == [(Event.BAD, b""), (Event.PACKET, b"s")]


def test_interrupt_byte_inside_a_packet_is_data() -> None:
    d = rsp.Decoder()
    assert d.feed(rsp.frame(b"X10,1:\x03")) == [(Event.PACKET, b"X10,1:\x03")]


def test_unterminated_packet_is_bounded() -> None:
    d = rsp.Decoder()
    assert d.feed(b"$" + b"a" * (rsp.MAX_RAW_PAYLOAD + 10)) == [(Event.BAD, b"")]
    assert d.feed(rsp.frame(b"?")) == [(Event.PACKET, b"?")]


def test_escapes_and_rle_are_decoded() -> None:
    raw = b"X0,4:}\x03}\x04}]}\x0a"  # $ # } *
    assert rsp.Decoder().feed(rsp.frame(raw)) == [(Event.PACKET, b"X0,4:#$}*")]
    # RLE: "0* " means 0 repeated 3 more times (' ' is 32 = 29 + 3), the manual's example
    assert rsp.unescape(b"0* ") == b"0000"
    assert rsp.unescape(b"a*") == b"a"  # lone trailing '*' dropped, no exception
    assert rsp.unescape(b"*!x") == b"x"  # RLE with nothing before it
    assert rsp.unescape(b"ab}") == b"ab"


def test_escape_binary_round_trips_and_never_emits_specials() -> None:
    data = bytes(range(256))
    esc = rsp.escape_binary(data)
    assert not any(c in esc for c in b"$#*") and rsp.unescape(esc) == data


@given(st.binary(max_size=300))
def test_unescape_binary_inverts_escape_binary(data: bytes) -> None:
    """What gdb's send_packet hands back is undone by replacements alone (the fast path's
    fetch), and agrees with the general unescape."""
    esc = rsp.escape_binary(data)
    assert rsp.unescape_binary(esc) == data == rsp.unescape(esc)


def test_hex_helpers() -> None:
    assert rsp.hex_encode(b"\x01\xab") == b"01ab"
    assert rsp.hex_decode(b"01AB") == b"\x01\xab"
    assert rsp.le_hex(0x12345678, 4) == b"78563412"
    assert rsp.parse_hex(b"fF") == 255
    for bad in (b"", b"0x10", b"g", b"-1"):
        with pytest.raises(rsp.RspError):
            rsp.parse_hex(bad)
    with pytest.raises(rsp.RspError):
        rsp.hex_decode(b"abc")
    with pytest.raises(rsp.RspError):
        rsp.parse_addr_len(b"1000")
    assert rsp.parse_addr_len(b"c0000,10") == (0xC0000, 0x10)


@pytest.mark.parametrize(("args", "expected"), [
    (b";s:1;c", "s"),
    (b";s:p1.1;c:p1.-1", "s"),
    (b";c", "c"),
    (b";c:-1", "c"),
    (b";C05:1", "c"),
    (b";S0b", "s"),
    (b";s:2;c", "c"),  # the step names another thread: ours continues
    (b";c:p1.-1;s:p1.1", "c"),  # leftmost match wins
])
def test_vcont_forms_gdb_sends(args: bytes, expected: str) -> None:
    assert rsp.vcont_action_for(rsp.parse_vcont(args)) == expected


@pytest.mark.parametrize("bad", [b"", b";", b";x", b";r1000,2000", b";s:zz", b";Cx"])
def test_vcont_malformed(bad: bytes) -> None:
    with pytest.raises(rsp.RspError):
        rsp.parse_vcont(bad)


def test_stop_reply_format() -> None:
    reply = rsp.stop_reply(5, [(5, b"00100000"), (4, b"f0ff0000"), (8, b"00001000")],
                           reason="swbreak")
    assert reply == b"T05swbreak:;05:00100000;04:f0ff0000;08:00001000;thread:1;"
    assert rsp.stop_reply(5, reason="watch", reason_addr=0x2000) == b"T05watch:2000;thread:1;"
    assert rsp.exit_reply(3) == b"W03"
    assert rsp.console_output("hi\n") == b"O68690a"


def test_qxfer_chunks_reassemble() -> None:
    doc = b"<x>*$#}</x>" * 10
    out, off = b"", 0
    while True:
        chunk = rsp.qxfer_chunk(doc, off, 7)
        body = rsp.unescape(chunk[1:])
        out += body
        off += len(body)
        if chunk[:1] == b"l":
            break
        assert chunk[:1] == b"m"
    assert out == doc


# --- fuzz -------------------------------------------------------------------------------------------

# Map random bytes onto an alphabet rich in the protocol's special characters, so malformed
# frames, escapes, RLE and interrupts are common; then splice in a valid frame.
_ALPHABET = b"$#+-\x03}*0123456789abcdefXm:,;\x00\xff"
_TO_ALPHABET = bytes(_ALPHABET[i % len(_ALPHABET)] for i in range(256))


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120), st.binary(max_size=40), st.binary(max_size=120),
       st.integers(1, 64))
def test_decoder_never_raises_on_any_stream(noise: bytes, payload: bytes, tail: bytes,
                                            chunk: int) -> None:
    stream = noise.translate(_TO_ALPHABET) + rsp.frame(payload) + tail.translate(_TO_ALPHABET)
    d = rsp.Decoder()
    for i in range(0, len(stream), chunk):
        for ev, data in d.feed(stream[i : i + chunk]):
            assert isinstance(ev, Event) and isinstance(data, bytes)


@settings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=20), st.integers(1, 17))
def test_valid_packets_round_trip_after_garbage(data: bytes, garbage: bytes, chunk: int) -> None:
    garbage = garbage.replace(b"$", b"")  # a '$' in garbage would legitimately start a packet
    stream = garbage + rsp.frame(rsp.escape_binary(data)) + rsp.frame(b"?")
    d = rsp.Decoder()
    packets = []
    for i in range(0, len(stream), chunk):
        packets += [p for ev, p in d.feed(stream[i : i + chunk]) if ev is Event.PACKET]
    assert packets == [data, b"?"]


# --- register file ----------------------------------------------------------------------------------


def test_numbering_matches_gdb_i386_layout() -> None:
    regs = target.REGISTERS
    assert [r.name for r in regs[:10]] == ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
                                          "eip", "eflags"]
    assert regs[16].name == "st0" and regs[16].size == 10
    assert regs[24].name == "fctrl" and regs[31].name == "fop"
    assert regs[32].name == "xmm0" and regs[32].size == 16
    assert regs[40].name == "mxcsr"
    assert regs[41].name == "cr0" and regs[-1].name == "tr"
    assert sum(r.size for r in regs[:41]) == 308  # gdb's own core+sse size
    assert [r.regnum for r in target.EXPEDITED] == [5, 4, 8]


def test_target_xml_parses_and_declares_every_register_in_order() -> None:
    root = ET.fromstring(target.TARGET_XML)
    assert root.findtext("architecture") == "i386"
    features = [f.get("name") for f in root.findall("feature")]
    assert features == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.vmigdb.i386.sys"]
    regs = [r for f in root.findall("feature") for r in f.findall("reg")]
    assert [(r.get("name"), int(r.get("bitsize")), int(r.get("regnum"))) for r in regs] == [
        (r.name, r.size * 8, r.regnum) for r in target.REGISTERS]
    sse = root.findall("feature")[1]
    assert sse.find("union[@id='vec128']") is not None
    assert {f.get("name") for f in sse.find("flags[@id='i386_mxcsr']")} >= {"IE", "DAZ", "FZ"}
    sys_regs = root.findall("feature")[2].findall("reg")
    assert all(r.get("group") == "system" for r in sys_regs)


def test_g_encode_decode_round_trip_with_unavailable() -> None:
    values = {r.name: (0x0102030405060708090A0B0C0D0E0F10 * (r.regnum + 1)) & ((1 << (8 * r.size)) - 1)
              for r in target.REGISTERS if r.name != "fop"}
    payload = target.encode_g(lambda n: values[n])
    assert len(payload) == 2 * target.G_SIZE
    fop = target.BY_NAME["fop"]
    off = 2 * sum(r.size for r in target.REGISTERS[: fop.regnum])
    assert payload[off : off + 8] == b"xxxxxxxx"
    decoded = {r.name: v for r, v in target.decode_g(payload)}
    assert decoded == values
    # a prefix (the 16 core registers) is fine; ending inside a register is not
    assert len(target.decode_g(payload[:128])) == 16
    with pytest.raises(rsp.RspError):
        target.decode_g(payload[:130])
    with pytest.raises(rsp.RspError):
        target.decode_g(payload + b"00")


@pytest.mark.parametrize("bad", [b"zz" * 4, b"0x123456", b"\xff" * 8, b"00"])
def test_malformed_register_values_are_rsp_errors(bad: bytes) -> None:
    """Malformed input raises RspError, never a bare ValueError: the server treats anything
    else from a handler as a bug and logs it."""
    with pytest.raises(rsp.RspError):
        target.decode_value(target.BY_NAME["eax"], bad)
    with pytest.raises(rsp.RspError):
        target.decode_g(bad + b"0")


def test_register_numbers_outside_the_description_are_rsp_errors() -> None:
    assert target.register(8).name == "eip"
    for regnum in (-1, len(target.REGISTERS), 0x99):
        with pytest.raises(rsp.RspError):
            target.register(regnum)


def test_printable_is_one_bounded_line() -> None:
    assert rsp.printable(b"qSupported:swbreak+") == "qSupported:swbreak+"
    assert rsp.printable(b"X0,2:\x00\\\n") == "X0,2:\\x00\\x5c\\x0a"
    long = rsp.printable(b"l" + b"a" * 5000, limit=20)
    assert long == "l" + "a" * 19 + "... (5001 bytes)"
