"""The RSP server over a real TCP socket against a fake of ``MachineInterface`` (fakemachine.py).

One test drives real gdb against it to check gdb accepts the target description and layout.
"""

from __future__ import annotations

import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from fakemachine import CODE, DATA, ROM_BASE, ROM_SIZE, FakeMachine
from rspclient import RspClient
from targets import gdb_batch

from vmigdb import x86
from vmigdb.stub import rsp, target
from vmigdb.stub.lobby import Limits
from vmigdb.stub.machine import MachineInterface
from vmigdb.stub.server import THREADS_XML, Server


def test_the_fake_implements_the_whole_interface() -> None:
    assert isinstance(FakeMachine(), MachineInterface)


@pytest.fixture
def stub() -> Iterator[tuple[Server, FakeMachine]]:
    machine = FakeMachine()
    logs: list[str] = []
    ready: list[int] = []
    server = Server(machine, port=0, log=logs.append, ready=ready.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _wait(lambda: ready == [server.port], "the ready callback")
    server.logs = logs  # type: ignore[attr-defined]
    yield server, machine
    server.stop()
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def gdb(stub: tuple[Server, FakeMachine]) -> Iterator[RspClient]:
    client = RspClient(stub[0].port)
    yield client
    client.close()


def _reg_hex(name: str, value: int) -> bytes:
    return rsp.le_hex(value, target.BY_NAME[name].size)


def _parse_stop(reply: bytes) -> tuple[int, dict[str, bytes]]:
    assert reply.startswith(b"T"), reply
    fields = {}
    for part in reply[3:].split(b";"):
        if part:
            k, _, v = part.partition(b":")
            fields[k.decode()] = v
    return int(reply[1:3], 16), fields


def _wait(cond, what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- framing and acks -----------------------------------------------------------------------------


def test_ack_checksum_nak_resend_and_no_ack_mode(gdb: RspClient) -> None:
    gdb.send(rsp.frame(b"qC"))
    assert gdb.event() == (rsp.Event.ACK, b"")
    assert gdb.event() == (rsp.Event.PACKET, b"QC1")
    gdb.send(b"-")  # NAK: the same reply again
    assert gdb.event() == (rsp.Event.PACKET, b"QC1")
    gdb.send(b"$qC#00")  # bad checksum: NAK from the stub
    assert gdb.event() == (rsp.Event.NAK, b"")
    gdb.send(b"+")  # stray acks are tolerated
    assert gdb.ask(b"QStartNoAckMode") == b"OK"
    gdb.no_ack = True
    gdb.send(rsp.frame(b"qAttached"))
    assert gdb.event() == (rsp.Event.PACKET, b"1")  # no '+' before it any more


def test_qsupported_advertises_only_what_is_implemented(gdb: RspClient) -> None:
    reply = gdb.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;xmlRegisters=i386")
    feats = dict(f.partition(b"=")[::2] for f in reply.split(b";"))
    assert int(feats[b"PacketSize"], 16) >= 0x4000
    assert set(feats) == {b"PacketSize", b"QStartNoAckMode+", b"swbreak+", b"hwbreak+",
                          b"qXfer:features:read+", b"qXfer:memory-map:read+",
                          b"qXfer:threads:read+", b"vContSupported+"}
    assert gdb.ask(b"vMustReplyEmpty") == b""
    assert gdb.ask(b"vCont?") == b"vCont;c;C;s;S"
    assert gdb.ask(b"Hg0") == b"OK" and gdb.ask(b"Hc-1") == b"OK"
    assert gdb.ask(b"qfThreadInfo") == b"m1" and gdb.ask(b"qsThreadInfo") == b"l"
    assert gdb.ask(b"qXfer:threads:read::0,fff") == b"l" + THREADS_XML
    assert gdb.ask(b"qAttached") == b"1" and gdb.ask(b"T1") == b"OK"
    assert gdb.ask(b"qTStatus") == b"" and gdb.ask(b"qOffsets") == b""


def _xfer(gdb: RspClient, obj: bytes, annex: bytes) -> bytes:
    doc, off = b"", 0
    while True:
        reply = gdb.ask(b"qXfer:%s:read:%s:%x,%x" % (obj, annex, off, 0x333))
        assert reply[:1] in (b"m", b"l"), reply
        doc += reply[1:]
        off += len(reply) - 1
        if reply[:1] == b"l":
            return doc


def test_target_xml_in_chunks(gdb: RspClient) -> None:
    doc = _xfer(gdb, b"features", b"target.xml")
    assert doc == target.TARGET_XML
    assert gdb.ask(b"qXfer:features:read:other.xml:0,100") == b"E00"


def test_memory_map(gdb: RspClient) -> None:
    root = ET.fromstring(_xfer(gdb, b"memory-map", b""))
    regions = [(m.get("type"), int(m.get("start"), 16), int(m.get("length"), 16))
               for m in root.findall("memory")]
    assert ("rom", ROM_BASE, ROM_SIZE) in regions
    assert regions[0][1] == 0
    ends = [s + n for _, s, n in regions]
    assert [s for _, s, _ in regions[1:]] == ends[:-1]  # contiguous, sorted
    assert ends[-1] == 1 << 32  # virtual addresses beyond RAM stay reachable


# --- registers ------------------------------------------------------------------------------------


def test_g_p_P_G_round_trips(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    _, machine = stub
    g = gdb.ask(b"g")
    assert len(g) == 2 * target.G_SIZE
    assert g[:8] == _reg_hex("eax", 0x2BADB002)
    assert gdb.ask(b"p8") == _reg_hex("eip", CODE)
    assert gdb.ask(b"p1f") == b"xx" * 4  # fop: not modelled -> unavailable
    assert gdb.ask(b"p10") == _reg_hex("st0", 0x3FFF8000000000000000)
    assert gdb.ask(b"p20") == _reg_hex("xmm0", 0x00112233445566778899AABBCCDDEEFF)
    assert gdb.ask(b"p29") == _reg_hex("cr0", 0x11)
    assert gdb.ask(b"P0=efbeadde") == b"OK" and machine.regs["eax"] == 0xDEADBEEF
    assert gdb.ask(b"P10=" + _reg_hex("st0", 0x4000C000000000000000)) == b"OK"
    assert machine.regs["st0"] == 0x4000C000000000000000
    xmm = 0xFEDCBA98765432100123456789ABCDEF
    assert gdb.ask(b"P21=" + _reg_hex("xmm1", xmm)) == b"OK" and machine.regs["xmm1"] == xmm
    assert gdb.ask(b"P2b=" + _reg_hex("cr3", 0x9000)) == b"OK" and machine.regs["cr3"] == 0x9000
    # G with the registers gdb knows; xx leaves a register alone
    g = bytearray(gdb.ask(b"g"))
    g[8:16] = _reg_hex("ecx", 0x1234)
    assert gdb.ask(b"G" + bytes(g)) == b"OK"
    assert machine.regs["ecx"] == 0x1234 and machine.regs["eax"] == 0xDEADBEEF
    assert gdb.ask(b"G" + bytes(g[:128])) == b"OK"  # the 16 core registers only
    # malformed
    assert gdb.ask(b"P0=12") == b"E01"
    assert gdb.ask(b"P1f=00000000") == b"E01"  # not modelled
    assert gdb.ask(b"p99") == b"E01"
    assert gdb.ask(b"G" + bytes(g[:130])) == b"E01"


# --- memory ---------------------------------------------------------------------------------------


def test_m_M_X(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    _, machine = stub
    assert gdb.ask(b"M8000,4:01020304") == b"OK"
    assert gdb.ask(b"m8000,4") == b"01020304"
    assert gdb.ask(b"X8000,0:") == b"OK"  # gdb's probe
    payload = bytes([0x24, 0x23, 0x7D, 0x2A, 0x03, 0x00, 0xFF])
    assert gdb.ask(b"X8010,7:" + rsp.escape_binary(payload)) == b"OK"
    assert bytes(machine.mem[0x8010:0x8017]) == payload
    assert gdb.ask(b"m8010,7") == payload.hex().encode()
    # unmapped, partially mapped, malformed
    assert gdb.ask(b"m200000,4") == b"E14"
    assert gdb.ask(b"mffffe,4") == b"0000"  # the readable prefix
    assert gdb.ask(b"M200000,1:00") == b"E14"
    assert gdb.ask(b"mzz,4") == b"E01"
    assert gdb.ask(b"M8000,2:01") == b"E01"
    assert gdb.ask(b"X8000,4:ab") == b"E01"
    # physical mode (QEMU's packets)
    assert gdb.ask(b"qqemu.PhyMemMode") == b"0"
    assert gdb.ask(b"Qqemu.PhyMemMode:1") == b"OK" and gdb.ask(b"qqemu.PhyMemMode") == b"1"
    assert gdb.ask(b"m8000,2") == b"0102"
    assert gdb.ask(b"Qqemu.PhyMemMode:0") == b"OK"


# --- run control ----------------------------------------------------------------------------------


def test_status_reply_expedites_ebp_esp_eip(gdb: RspClient) -> None:
    sig, fields = _parse_stop(gdb.ask(b"?"))
    assert sig == 5
    assert fields["05"] == _reg_hex("ebp", 0x7FF8)
    assert fields["04"] == _reg_hex("esp", 0x7FF0)
    assert fields["08"] == _reg_hex("eip", CODE)
    assert fields["thread"] == b"1"


@pytest.mark.parametrize("packet", [b"vCont;s:1;c", b"vCont;s:p1.1;c:p1.-1", b"s", b"S05",
                                    b"vCont;S05:1;c"])
def test_step_forms(stub: tuple[Server, FakeMachine], gdb: RspClient, packet: bytes) -> None:
    _, machine = stub
    sig, fields = _parse_stop(gdb.ask(packet))
    assert sig == 5 and fields["08"] == _reg_hex("eip", CODE + 1)
    assert machine.regs["eip"] == CODE + 1


@pytest.mark.parametrize("packet", [b"vCont;c", b"vCont;c:-1", b"vCont;c:p1.-1", b"c", b"C05"])
def test_continue_forms_stop_at_breakpoint(stub: tuple[Server, FakeMachine], gdb: RspClient,
                                           packet: bytes) -> None:
    _, machine = stub
    gdb.ask(b"qSupported:swbreak+;hwbreak+")
    assert gdb.ask(b"Z0,%x,1" % (CODE + 5)) == b"OK"
    assert machine.breakpoints == {CODE + 5}
    sig, fields = _parse_stop(gdb.ask(packet))
    assert sig == 5 and "swbreak" in fields
    assert fields["08"] == _reg_hex("eip", CODE + 5)
    assert gdb.ask(b"z0,%x,1" % (CODE + 5)) == b"OK" and machine.breakpoints == set()


def test_continue_with_address_and_hwbreak(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    _, machine = stub
    gdb.ask(b"qSupported:swbreak+;hwbreak+")
    assert gdb.ask(b"Z1,%x,1" % (CODE + 0x25)) == b"OK"
    _sig, fields = _parse_stop(gdb.ask(b"c%x" % (CODE + 0x20)))
    assert "hwbreak" in fields and machine.regs["eip"] == CODE + 0x25
    # Z0 and Z1 at one address: the machine breakpoint lives until both are removed
    assert gdb.ask(b"Z0,%x,1" % (CODE + 0x25)) == b"OK"
    assert gdb.ask(b"z1,%x,1" % (CODE + 0x25)) == b"OK" and CODE + 0x25 in machine.breakpoints
    assert gdb.ask(b"z0,%x,1" % (CODE + 0x25)) == b"OK" and not machine.breakpoints
    assert gdb.ask(b"Z5,1000,1") == b""  # unsupported type: empty
    assert gdb.ask(b"Z0,zz,1") == b"E01"


@pytest.mark.parametrize(("ztype", "op", "kind"), [(2, 0x89, "watch"), (3, 0x8B, "rwatch"),
                                                   (4, 0x89, "awatch"), (4, 0x8B, "awatch")])
def test_watchpoints(stub: tuple[Server, FakeMachine], gdb: RspClient, ztype: int, op: int,
                     kind: str) -> None:
    _, machine = stub
    machine.mem[CODE + 3] = op
    machine.regs["ebx"] = DATA + 2
    assert gdb.ask(b"Z%d,%x,4" % (ztype, DATA)) == b"OK"
    assert machine.watchpoints == {(DATA, 4, kind)}
    sig, fields = _parse_stop(gdb.ask(b"vCont;c"))
    assert sig == 5 and fields[kind] == b"%x" % DATA
    assert fields["08"] == _reg_hex("eip", CODE + 4)  # reported after the access
    assert gdb.ask(b"z%d,%x,4" % (ztype, DATA)) == b"OK" and not machine.watchpoints


def test_ctrl_c_interrupts_a_run_that_never_ends_by_itself(stub: tuple[Server, FakeMachine],
                                                           gdb: RspClient) -> None:
    _, machine = stub
    machine.mem[CODE + 2] = 0xEB
    gdb.send(b"\x03")  # while stopped: ignored
    gdb.send(rsp.frame(b"vCont;c"))
    assert gdb.event()[0] is rsp.Event.ACK  # acked before the run, not at its end
    _wait(lambda: machine.running, "the run to start")
    gdb.send(b"\x03")
    sig, fields = _parse_stop(gdb.reply())
    assert sig == 2 and fields["08"] == _reg_hex("eip", CODE + 2)
    assert gdb.ask(b"qC") == b"QC1"  # and the session goes on


def test_ctrl_c_right_behind_the_continue_is_not_lost(stub: tuple[Server, FakeMachine],
                                                      gdb: RspClient) -> None:
    _, machine = stub
    machine.mem[CODE] = 0xEB
    gdb.send(rsp.frame(b"c") + b"\x03")
    assert gdb.event()[0] is rsp.Event.ACK
    assert _parse_stop(gdb.reply())[0] == 2


@pytest.mark.parametrize(("op", "expected"), [(0xE6, b"T05"), (0x0F, b"T04"), (0xF4, b"T05")])
def test_exit_fault_halt(stub: tuple[Server, FakeMachine], gdb: RspClient, op: int,
                         expected: bytes) -> None:
    server, machine = stub
    machine.mem[CODE + 1] = op
    machine.regs["eax"] = 5
    reply = gdb.ask(b"vCont;c")
    assert reply.startswith(expected), reply
    if op != 0xE6:
        assert ("invalid opcode" if op == 0x0F else "hlt with IF=0") in gdb.console
        return
    # The exit is a stop first (as `catch exit` would make): the code in the console, the
    # machine still there to inspect; `?` says the same; the next resume ends the guest.
    assert "the guest exited with code 0x5 (QEMU status 11)" in gdb.console
    assert _parse_stop(reply)[1]["08"] == _reg_hex("eip", CODE + 1)
    assert gdb.ask(b"m%x,1" % (CODE + 1)) == b"e6"
    assert gdb.ask(b"?").startswith(b"T05")
    assert gdb.ask(b"vCont;c") == b"W05"
    # after an exit the next gdb gets a fresh machine
    gdb.close()
    _wait(lambda: not server._busy, "the session to end")
    resets = machine.resets
    second = RspClient(server.port)
    assert second.ask(b"?").startswith(b"T05")
    assert machine.resets == resets + 1
    second.close()


def test_malformed_and_unknown_packets_leave_the_stub_answering(gdb: RspClient) -> None:
    for bad in (b"mzz", b"m1000", b"M1000,1", b"P", b"pzz", b"Z0", b"vCont;q", b"vCont", b"H",
                b"qRcmd,zz", b"C", b"qXfer:features:read:target.xml:zz"):
        reply = gdb.ask(bad)
        assert reply.startswith(b"E") or reply == b"", (bad, reply)
    for unknown in (b"vFile:open:6a", b"qThreadExtraInfo,1", b"!", b"bc", b"Qfoo", b"qSymbol::"):
        assert gdb.ask(unknown) == b""
    gdb.send(b"garbage\x00\xff$$$##" + b"$g#00" + rsp.frame(b"?"))
    seen = []
    while (ev := gdb.event())[0] is not rsp.Event.PACKET:
        seen.append(ev[0])
    assert ev[1].startswith(b"T05")
    assert rsp.Event.NAK in seen and set(seen) <= {rsp.Event.NAK, rsp.Event.ACK}


# --- connection life cycle -------------------------------------------------------------------------


def test_detach_then_reconnect_keeps_state(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    server, machine = stub
    assert gdb.ask(b"P0=78563412") == b"OK"
    assert gdb.ask(b"Z0,1010,1") == b"OK" and gdb.ask(b"Z2,8000,4") == b"OK"
    assert gdb.ask(b"D") == b"OK"
    assert gdb.closed()
    _wait(lambda: not server._busy, "the session to end")
    assert not machine.breakpoints and not machine.watchpoints
    again = RspClient(server.port)
    assert again.ask(b"p0") == b"78563412"
    again.close()


def test_kill_resets_and_stub_stays_ready(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    server, machine = stub
    gdb.ask(b"P0=78563412")
    gdb.send(rsp.frame(b"k"))
    assert gdb.closed()
    assert machine.resets == 1 and machine.regs["eax"] == 0x2BADB002
    _wait(lambda: not server._busy, "the session to end")
    again = RspClient(server.port)
    assert again.ask(b"qC") == b"QC1"
    again.close()


def test_gdb_vanishing_mid_run_interrupts_and_next_gdb_connects(
        stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    server, machine = stub
    machine.mem[CODE] = 0xEB
    assert gdb.ask(b"Z0,2000,1") == b"OK"
    gdb.send(rsp.frame(b"c"))
    _wait(lambda: machine.running, "the run to start")
    gdb.close()
    _wait(lambda: not machine.running and not server._busy, "the run to be stopped")
    assert not machine.breakpoints
    again = RspClient(server.port)
    assert again.ask(b"?").startswith(b"T05")
    again.close()


def test_second_connection_is_refused_while_first_continues(stub: tuple[Server, FakeMachine],
                                                            gdb: RspClient) -> None:
    server, _ = stub
    assert gdb.ask(b"qC") == b"QC1"
    other = RspClient(server.port)
    other.send(rsp.frame(b"qSupported:swbreak+"))
    assert other.event() == (rsp.Event.ACK, b"")
    assert other.event() == (rsp.Event.PACKET, (b"E.vmigdb: another gdb is already connected"
                                                    b" to this stub"))
    assert other.closed()
    assert any("refused" in line for line in server.logs)  # type: ignore[attr-defined]
    assert gdb.ask(b"qC") == b"QC1"


# --- monitor ------------------------------------------------------------------------------------


def test_monitor_commands(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    server, machine = stub
    reply, text = gdb.monitor("help")
    assert reply == b"OK"
    for name in ("help", "info registers", "info mem", "info tlb", "xp", "reset", "phys"):
        assert re.search(rf"^{name}\b", text, re.MULTILINE), name
    reply, text = gdb.monitor("info registers")
    assert reply == b"OK"
    assert "EAX=2badb002" in text and "CR0=00000011" in text and "[PE ET]" in text
    assert re.search(r"^CS =0008 00000000 ffffffff 00c09a00 DPL=0 CS32", text, re.MULTILINE), text
    assert "GDT=     00000600 00000017" in text
    assert gdb.monitor("info mem") == (b"OK", "PG disabled\n")
    machine.mem[0xC0000:0xC0004] = b"\x55\xaa\x10\x00"
    reply, text = gdb.monitor("xp /2xw 0xc0000")
    assert text == "00000000000c0000: 0x0010aa55 0x00000000\n"
    assert gdb.monitor("xp /2xb 786432")[1] == "00000000000c0000: 0x55 0xaa\n"
    reply, text = gdb.monitor("phys on")
    assert reply == b"OK" and "PHYSICAL" in text and gdb.ask(b"qqemu.PhyMemMode") == b"1"
    # a mistake prints its message and answers OK, as QEMU does (E01 made gdb add "Protocol
    # error with Rcmd"); a malformed qRcmd is still an error
    assert gdb.monitor("frobnicate") == (b"OK", "unknown command 'frobnicate'; try 'monitor help'\n")
    assert gdb.monitor("xp /2xw 0x20000000") == (b"OK", "0000000020000000: Cannot access memory\n")
    assert gdb.monitor("xp /2q 0") == (b"OK", "xp: unknown format letter 'q'\n")
    assert gdb.ask(b"qRcmd,zz") == b"E01" and gdb.ask(b"qRcmd") == b"E01"
    machine.regs["eax"] = 5
    assert gdb.monitor("reset")[0] == b"OK" and machine.regs["eax"] == 0x2BADB002

    def hello(ctx, args: str) -> None:
        ctx.write(f"hello {args}\n")

    server.monitor.register("vmi hello", hello, "a command added later")
    assert gdb.monitor("vmi hello  world") == (b"OK", "hello world\n")
    assert "vmi hello" in gdb.monitor("help")[1]


# --- real gdb against the fake -----------------------------------------------------------------------


def test_real_gdb_accepts_description_and_layout(stub: tuple[Server, FakeMachine]) -> None:
    server, machine = stub
    machine.mem[DATA : DATA + 16] = bytes(range(16))
    cmds = ["set architecture i386", f"target remote 127.0.0.1:{server.port}", "info registers",
            "p/x $cr0", "p $xmm0.v4_int32", "p/x $eflags", "p $st0", "p $fop",
            f"x/4xw {DATA:#x}", "maint print remote-registers", "stepi", "p/x $pc",
            f"break *{CODE + 8:#x}", "continue", "p/x $pc", "monitor info registers", "detach"]
    res = gdb_batch(cmds)
    out = res.stdout
    assert "Remote 'g' packet reply" not in out and "Truncated" not in out, out
    assert re.search(r"^eax\s+0x2badb002", out, re.MULTILINE), out
    assert re.search(r"^eflags\s+0x202\s+\[ IF \]", out, re.MULTILINE), out
    assert re.search(r"^cr0\s+0x11\s+\[ PE ET \]", out, re.MULTILINE), out
    assert "= 0x11" in out  # p/x $cr0
    assert "{0xccddeeff, 0x8899aabb, 0x44556677, 0x112233}" in out.replace("-", "") or \
        "{-857870593, -2003195205, 1146447479, 1122867}" in out, out
    assert "<unavailable>" in out  # $fop
    assert re.search(r"0x8000:\s+0x03020100\s+0x07060504\s+0x0b0a0908\s+0x0f0e0d0c", out), out
    assert re.search(r"xmm0\s+32\s+32\s+\d+\s+16", out), out  # native SSE numbering
    assert "= 0x1001" in out  # after stepi
    assert "Breakpoint 1, 0x00001008" in out and "= 0x1008" in out, out
    assert "EAX=2badb002" in out
    assert "Detaching from program" in out or "detached" in out.lower(), out
    assert res.returncode == 0, out


def test_monitor_info_mem_and_tlb_walk_the_page_tables(stub: tuple[Server, FakeMachine],
                                                       gdb: RspClient) -> None:
    _, machine = stub
    pd, table = 0x10000, 0x11000
    machine.mem[pd + 4 * 0x300 : pd + 4 * 0x301] = (table | 0x3).to_bytes(4, "little")
    machine.mem[table : table + 8] = (0x5000 | 0x23).to_bytes(4, "little") + \
        (0x6000 | 0x1).to_bytes(4, "little")
    machine.regs.update(cr0=x86.CR0_PG | x86.CR0_ET | x86.CR0_PE, cr3=pd, cr4=x86.CR4_PSE)
    assert gdb.monitor("info mem") == (b"OK", ("00000000c0000000-00000000c0001000 0000000000001000 -rw\n"
                                               "00000000c0001000-00000000c0002000 0000000000001000 -r-\n"))
    assert gdb.monitor("info tlb") == (b"OK", ("00000000c0000000: 0000000000005000 ----A---W\n"
                                               "00000000c0001000: 0000000000006000 ---------\n"))


def test_monitor_qemu_names(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    """QEMU's ``system_reset``, ``info cpus`` and ``x`` beside ours, in QEMU's formats (checked
    against qemu-system-i386 7.2's HMP)."""
    _, machine = stub
    machine.mem[DATA : DATA + 20] = bytes.fromhex("02b0ad1b03000000fb4f52e46690669083ec2c89")
    text = gdb.monitor("help")[1]
    for name in ("system_reset", "info cpus", "x"):
        assert re.search(rf"^{name}\b", text, re.MULTILINE), name
    reply, text = gdb.monitor("info cpus")
    assert reply == b"OK" and re.fullmatch(r"\* CPU #0: thread_id=\d+\n", text), text
    assert gdb.monitor("x /4xw 0x8000")[1] == "00008000: 0x1badb002 0x00000003 0xe4524ffb 0x90669066\n"
    assert gdb.monitor("x /20xb 0x8000")[1] == (
        "00008000: 0x02 0xb0 0xad 0x1b 0x03 0x00 0x00 0x00\n"
        "00008008: 0xfb 0x4f 0x52 0xe4 0x66 0x90 0x66 0x90\n"
        "00008010: 0x83 0xec 0x2c 0x89\n")
    assert gdb.monitor("x /3dw 0x8000")[1] == "00008000:  464367618          3 3830599675\n"
    assert gdb.monitor("x /3uh 0x8000")[1] == "00008000: 45058  7085     3\n"
    assert gdb.monitor("x /3ob 0x8000")[1] == "00008000:  02 0260 0255\n"
    assert gdb.monitor("x /2c 0x8000")[1] == "00008000: '\\x02' '\\xb0'\n"
    assert gdb.monitor("x 0x8000")[1] == "00008000: 0x1badb002\n"
    assert gdb.monitor("x/2xh 0x8000")[1] == gdb.monitor("x /2xh 0x8000")[1] == "00008000: 0xb002 0x1bad\n"
    assert gdb.monitor("x /2xw 0xfffffffc")[1] == "fffffffc: Cannot access memory\n"
    assert gdb.monitor("x /1xw 0x100008000")[1] == "100008000: Cannot access memory\n"
    assert gdb.monitor("x") == (b"OK", "usage: x /NFS ADDR  (e.g. x /4xw 0xc0000)\n")
    machine.regs["eax"] = 5
    assert gdb.monitor("system_reset")[0] == b"OK" and machine.regs["eax"] == 0x2BADB002


# --- hardening: errors, G, addresses, stale interrupts, the lobby ------------------------------------


def test_a_failing_G_changes_no_register(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    """G is all or nothing: the fake does not model fop, so a G that sets it fails, and the
    registers written before it are put back."""
    _, machine = stub
    g = bytearray(gdb.ask(b"g"))
    g[0:8] = _reg_hex("eax", 0x11111111)
    fop = target.BY_NAME["fop"]
    off = 2 * sum(r.size for r in target.REGISTERS[: fop.regnum])
    g[off : off + 8] = b"00000000"
    before = dict(machine.regs)
    assert gdb.ask(b"G" + bytes(g)) == b"E01"
    assert machine.regs == before
    assert any("refused" in line and "fop" in line for line in stub[0].logs)  # type: ignore[attr-defined]


def test_a_bug_in_a_handler_is_logged_in_one_line_and_answered_E03() -> None:
    """Only malformed input (RspError) passes silently as E01: a bug must show."""
    machine = FakeMachine()
    logs: list[str] = []

    def broken(args: bytes) -> bytes:
        return {}[args]  # KeyError: the kind of bug the old net turned into a silent E01

    server = Server(machine, port=0, log=logs.append, queries={b"qvmigdb.broken": broken})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        gdb = RspClient(server.port)
        assert gdb.ask(b"qvmigdb.broken:1") == b"E03"
        assert gdb.ask(b"qC") == b"QC1"  # and the session goes on
        bugs = [line for line in logs if "qvmigdb.broken" in line]
        assert len(bugs) == 1 and "\n" not in bugs[0], logs
        assert "KeyError" in bugs[0] and "test_server_fake.py" in bugs[0], bugs
        # malformed packets are E01 and log nothing
        for bad in (b"mzz", b"m1000", b"M1000,1", b"P", b"pzz", b"p99", b"P99=00", b"P0=1",
                    b"Gzz", b"G" + b"0" * 9, b"Z0", b"vCont;q", b"H", b"qRcmd,zz", b"C",
                    b"qXfer:features:read:target.xml:zz"):
            reply = gdb.ask(bad)
            assert reply.startswith(b"E") or reply == b"", (bad, reply)
        assert not [line for line in logs if line.startswith("packet")][1:], logs
        gdb.close()
    finally:
        server.stop()
        thread.join(10)


def test_addresses_past_32_bits_answer_E14(stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    _, machine = stub
    for packet in (b"m100008000,4", b"M100008000,1:00", b"X10000000000000000,1:A",
                   b"Z0,100001005,1", b"z0,100001005,1", b"Z2,ffffffff,2", b"c100001000"):
        assert gdb.ask(packet) == b"E14", packet
    assert not machine.breakpoints and not machine.watchpoints
    assert gdb.ask(b"m8000,4") == b"00000000"


def test_an_interrupt_kept_from_between_runs_does_not_stop_the_next_continue(
        stub: tuple[Server, FakeMachine], gdb: RspClient) -> None:
    """The machine keeps an interrupt asked for between runs (a Ctrl-C that raced the last
    stop); the stop it causes is not one gdb asked for, so the continue goes on to its
    breakpoint."""
    _, machine = stub
    gdb.ask(b"qSupported:swbreak+")
    assert gdb.ask(b"Z0,%x,1" % (CODE + 5)) == b"OK"
    machine.interrupt()
    sig, fields = _parse_stop(gdb.ask(b"c"))
    assert sig == 5 and "swbreak" in fields and machine.regs["eip"] == CODE + 5


def test_ctrl_c_after_a_run_ended_is_ignored(stub: tuple[Server, FakeMachine],
                                              gdb: RspClient) -> None:
    _, machine = stub
    machine.mem[CODE + 2] = 0xEB
    gdb.send(rsp.frame(b"c"))
    assert gdb.event()[0] is rsp.Event.ACK
    _wait(lambda: machine.running, "the run to start")
    gdb.send(b"\x03\x03\x03")
    assert _parse_stop(gdb.reply())[0] == 2
    machine.mem[CODE + 2] = 0x90
    assert gdb.ask(b"Z0,%x,1" % (CODE + 4)) == b"OK"
    assert _parse_stop(gdb.ask(b"c"))[0] == 5  # not SIGINT from the extra 0x03s


@pytest.fixture
def strict_stub() -> Iterator[tuple[Server, FakeMachine]]:
    """A stub with short lobby limits, to see connections that are not gdb sent away."""
    machine = FakeMachine()
    logs: list[str] = []
    server = Server(machine, port=0, log=logs.append,
                    limits=Limits(handshake=1.0, idle=0.3, waiting=4, backoff=0.05))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.logs = logs  # type: ignore[attr-defined]
    yield server, machine
    server.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_the_lobby_drops_silent_trickling_and_surplus_connections(
        strict_stub: tuple[Server, FakeMachine]) -> None:
    server, _ = strict_stub
    silent = RspClient(server.port)
    trickler = RspClient(server.port)
    trickler.send(b"$qSupp")
    gdb = RspClient(server.port)
    assert gdb.ask(b"qSupported:swbreak+").startswith(b"PacketSize")  # the silent ones wait
    assert silent.closed()  # the idle limit
    deadline = time.monotonic() + 10
    while not trickler.closed():  # the handshake deadline, whatever it trickles
        assert time.monotonic() < deadline
        trickler.send(b"o")
    surplus = [RspClient(server.port) for _ in range(6)]
    assert surplus[0].closed() and surplus[1].closed()  # pushed out by newer ones
    assert gdb.ask(b"qC") == b"QC1"
    for c in (silent, trickler, gdb, *surplus):
        c.close()
    _wait(lambda: any("dropped" in line for line in server.logs), "a tally of drops")  # type: ignore[attr-defined]


def test_a_reconnect_waits_for_the_old_session_to_end(stub: tuple[Server, FakeMachine]) -> None:
    """A gdb that closed without D: the newcomer is not refused while its old session ends."""
    server, _ = stub
    for _ in range(20):
        first = RspClient(server.port)
        assert first.ask(b"qC") == b"QC1"
        first.close()
        again = RspClient(server.port)
        assert again.ask(b"qSupported").startswith(b"PacketSize")
        again.close()
