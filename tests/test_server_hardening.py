"""Regressions from the stub's hardening issue, against a real ``vmigdb serve`` process.

Each test starts its own stub on the demo guest (built from source) with ``--port 0`` and talks
to it over 127.0.0.1: a raw RSP client doing what gdb does on connect, or real gdb where what
gdb prints is the point. The items: connections that are not the active gdb cannot take the
stub's service away (silent sockets, trickling refusals, the open-file limit); a gdb that closes
without ``D`` and reconnects at once gets in; a Ctrl-C that arrives as a stop is being finished
does not stop the next continue; addresses past the 32-bit space are refused, never wrapped; a
failed ``G`` changes nothing; ``monitor`` errors print only their message, as with QEMU; and
``--log-packets`` writes one line per packet. Processes are ended by pid in teardown; waits poll
with a deadline; only the deadlines the issue states (1 s, the handshake deadline) are timed.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Built
from rspclient import QSUPPORTED, RspClient
from targets import gdb_batch

from vmigdb.mi import die_with_parent
from vmigdb.stub import rsp
from vmigdb.stub.lobby import HANDSHAKE_DEADLINE, Candidate, Limits, Lobby, Verdict
from vmigdb.targets import stop_process

START_DEADLINE = 20.0
SIGINT, SIGTRAP = 2, 5
#: What gdb 13 sends first (trimmed): enough for the stub to treat the peer as a gdb.
REFUSED = b"E.vmigdb"


# --- the stub process ------------------------------------------------------------------------------


@dataclass
class Stub:
    """A running ``vmigdb serve``: its process, port and stderr log."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(built: Built, work: Path, cmdline: str, prefix: Sequence[str],
           extra: Sequence[str]) -> Stub:
    log = work / "stub.log"
    argv = [*prefix, sys.executable, "-m", "vmigdb.cli", "serve", str(built.guest), "--rom",
            str(built.rom), "--cmdline", cmdline, "--port", "0", *extra]
    with open(work / "serial.log", "wb") as out, open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=die_with_parent)  # noqa: PLW1509
    deadline = time.monotonic() + START_DEADLINE
    while True:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if m:
            return Stub(proc, int(m[1]), log)
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail(f"the stub did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)


@pytest.fixture
def stubs(built: Built, tmp_path: Path) -> Iterator[Callable[..., Stub]]:
    """Start ``vmigdb serve`` processes (optionally under a command prefix such as prlimit);
    all are ended by pid in teardown."""
    started: list[Stub] = []

    def start(cmdline: str = "rom=copy", prefix: Sequence[str] = (),
              extra: Sequence[str] = ()) -> Stub:
        work = tmp_path / f"stub{len(started)}"
        work.mkdir()
        stub = _start(built, work, cmdline, prefix, extra)
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stop_process(stub.proc)


def symbol(elf: Path, name: str) -> int:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^([0-9a-f]+) \w {re.escape(name)}$", out, re.MULTILINE)
    assert m, name
    return int(m[1], 16)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stop_signal(reply: bytes) -> int:
    assert reply[:1] == b"T", reply
    return int(reply[1:3], 16)


def connected(stub: Stub) -> RspClient:
    g = RspClient(stub.port)
    assert g.handshake().startswith(b"PacketSize"), "refused"
    return g


# --- 1. no loss of service -----------------------------------------------------------------------------


def test_a_silent_connection_does_not_keep_gdb_out(stubs) -> None:
    """A socket that never sends a byte used to become the session and hold the stub: every
    real gdb after it was refused. Now it waits in the lobby and is dropped by the idle limit."""
    stub = stubs()
    silent = socket.create_connection(("127.0.0.1", stub.port), timeout=10)
    try:
        t0 = time.monotonic()
        g = RspClient(stub.port)
        reply = g.handshake()
        assert not reply.startswith(REFUSED), reply
        assert time.monotonic() - t0 < HANDSHAKE_DEADLINE
        assert reply.startswith(b"PacketSize")
        assert g.ask(b"?").startswith(b"T05")
        # the silent one is closed once its deadline passed
        silent.settimeout(HANDSHAKE_DEADLINE + 5)
        assert silent.recv(100) == b""
    finally:
        silent.close()


class Tricklers:
    """Many connections that send one byte now and then and never finish a packet."""

    def __init__(self, port: int, count: int) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(count):  # non-blocking connects: a stub that stopped accepting must not
            s = socket.socket()  # stall the test in connect()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            self.socks.append(s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        payload = b"$" + b"q" * 100_000  # an unterminated packet, one byte a round
        pos = 0
        while not self._stop.wait(0.05):
            byte = payload[min(pos, len(payload) - 1):][:1]
            pos += 1
            for s in list(self.socks):
                try:
                    s.send(byte)
                except BlockingIOError:
                    pass
                except OSError:  # closed by the stub, or never connected
                    pass

    def start(self) -> Tricklers:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            s.close()


def test_trickling_refusals_under_a_low_fd_limit_do_not_take_the_stub_down(stubs) -> None:
    """1,100 connections that trickle bytes while a gdb is connected, under a 1024-file limit:
    each refusal used to keep a thread and a file descriptor, and at the limit accept() failed
    and the accept loop returned, so no gdb ever got in again."""
    stub = stubs(prefix=["prlimit", "--nofile=1024", "--"])
    first = connected(stub)
    tricklers = Tricklers(stub.port, 1100).start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the session goes on answering meanwhile
            assert first.ask(b"qC") == b"QC1"
            assert _threads(stub.proc.pid) < 16  # no thread per refused connection
        assert first.ask(b"D") == b"OK"
        first.close()
        t0 = time.monotonic()
        second = RspClient(stub.port)
        reply = second.handshake()
        assert time.monotonic() - t0 < 1.0, "the next gdb waited"
        assert reply.startswith(b"PacketSize"), reply
        assert second.ask(b"?").startswith(b"T05")
        assert _fds(stub.proc.pid) < 200
    finally:
        tricklers.close()
    assert stub.proc.poll() is None


def test_accept_goes_on_when_the_process_is_out_of_file_descriptors(stubs) -> None:
    """At the open-file limit accept() fails with EMFILE: the stub must make room (the oldest
    connection still waiting for its first packet goes) and keep accepting, not return."""
    stub = stubs()
    probe = connected(stub)  # one session's worth of descriptors (the run watcher's included)
    assert probe.ask(b"s").startswith(b"T05")
    assert probe.ask(b"D") == b"OK"
    probe.close()
    deadline = time.monotonic() + 10
    while "waiting for the next one" not in stub.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    limit = _fds(stub.proc.pid) + 3
    subprocess.run(["prlimit", f"--pid={stub.proc.pid}", f"--nofile={limit}:"], check=True)
    silent = []
    for _ in range(40):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", stub.port))
        silent.append(s)
    try:
        g = connected(stub)
        assert g.ask(b"s").startswith(b"T05")  # a step needs no new descriptor
        assert g.ask(b"qC") == b"QC1"
    finally:
        for s in silent:
            s.close()
    assert stub.proc.poll() is None


class _ListenerOutOfFiles(socket.socket):
    """A listener whose first accept() calls fail as at the open-file limit."""

    failures = 5

    def accept(self):  # type: ignore[override]
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_the_lobby_pauses_and_retries_when_nothing_can_be_dropped() -> None:
    """EMFILE with no waiting connection to close: accepting pauses briefly and resumes; the
    loop does not end (before, the accept loop returned and the stub was deaf for good)."""
    listener = _ListenerOutOfFiles(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    offered: list[Candidate] = []
    logs: list[str] = []

    def offer(cand: Candidate) -> Verdict:
        offered.append(cand)
        return Verdict.ADMIT

    lobby = Lobby(listener, offer, refusal=b"E.busy", log=logs.append,
                  limits=Limits(backoff=0.01))
    lobby.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as client:
            client.sendall(b"+" + rsp.frame(b"qSupported"))
            deadline = time.monotonic() + 10
            while not offered:
                assert time.monotonic() < deadline, logs
                time.sleep(0.01)
            assert offered[0].received == b"+" + rsp.frame(b"qSupported")
            assert listener.failures == 0
            offered[0].conn.close()
        while not any("accept paused: out of file descriptors" in line for line in logs):
            assert time.monotonic() < deadline, logs
            time.sleep(0.01)
    finally:
        lobby.stop()
        listener.close()


# --- 2. quick reconnects ----------------------------------------------------------------------------


def test_instant_reconnects_after_closing_without_detach_are_not_refused(stubs) -> None:
    """A gdb that closes without ``D`` (FIN or RST) and reconnects at once used to find the old
    session not yet torn down and was refused "another gdb is already connected"."""
    stub = stubs()
    refused = 0
    for i in range(50):
        g = RspClient(stub.port)
        reply = g.handshake()
        if reply.startswith(REFUSED):
            refused += 1
            g.close()
            continue
        assert reply.startswith(b"PacketSize"), reply
        assert g.ask(b"?").startswith(b"T05")
        if i % 2:
            g.reset()
        else:
            g.close()
    assert refused == 0
    assert stub.proc.poll() is None


# --- 3. stray Ctrl-C ---------------------------------------------------------------------------------


def _run_to(g: RspClient, addr: int) -> None:
    assert g.ask(b"Z0,%x,1" % addr) == b"OK"
    g.resume()
    reply = g.reply()
    assert stop_signal(reply) == SIGTRAP and b"swbreak" in reply, reply
    assert g.ask(b"z0,%x,1" % addr) == b"OK"


def _ctrl_c_until_stopped(g: RspClient) -> None:
    """Ctrl-C, then Ctrl-C again every few microseconds until the stop reply is there: the
    second and later ones land while the stop is being finished, whenever that is."""
    g.send(b"\x03")
    g.send(b"\x03")
    while not select.select([g.sock], [], [], 20e-6)[0]:
        g.send(b"\x03")


def test_repeated_ctrl_c_does_not_stop_the_next_continue(built: Built, stubs) -> None:
    """A second Ctrl-C that arrived while the first stop was being finished was kept by the
    machine and stopped the next plain continue at once with SIGINT (70 of 300 before)."""
    stub = stubs(cmdline="rom=copy spin=4000000000")
    loop = symbol(built.guest, "bench_spin_loop")
    g = connected(stub)
    _run_to(g, loop)
    spurious = 0
    for _ in range(300):
        g.resume()
        _ctrl_c_until_stopped(g)
        assert stop_signal(g.reply()) == SIGINT
        assert g.ask(b"Z0,%x,1" % loop) == b"OK"
        g.resume()
        if stop_signal(g.reply()) == SIGINT:
            spurious += 1
        assert g.ask(b"z0,%x,1" % loop) == b"OK"
    assert spurious == 0


def test_ctrl_c_racing_a_breakpoint_stop_does_not_stop_the_next_continue(built: Built,
                                                                          stubs) -> None:
    """A Ctrl-C that loses the race with a breakpoint stop is moot (gdb has its stop); it must
    not be kept for the next continue."""
    stub = stubs(cmdline="rom=copy spin=4000000000")
    loop = symbol(built.guest, "bench_spin_loop")
    g = connected(stub)
    _run_to(g, loop)
    assert g.ask(b"Z0,%x,1" % loop) == b"OK"
    spurious = 0
    for _ in range(200):
        g.resume()
        g.send(b"\x03")
        assert stop_signal(g.reply()) in (SIGINT, SIGTRAP)
        g.resume()
        if stop_signal(g.reply()) == SIGINT:
            spurious += 1
    assert spurious == 0


# --- 4. addresses above 32 bits ---------------------------------------------------------------------------


def test_addresses_beyond_32_bits_are_refused_not_wrapped(built: Built, stubs) -> None:
    stub = stubs(cmdline="rom=copy spin=1000")
    loop = symbol(built.guest, "bench_spin_loop")
    done = symbol(built.guest, "bench_spin_done")
    g = connected(stub)
    header = g.ask(b"m100000,4")
    assert header == b"02b0ad1b"  # the multiboot magic
    assert g.ask(b"m100100000,4") == b"E14"
    assert g.ask(b"mffffffffffffffff,1") == b"E14"
    low = g.ask(b"m0,4")
    assert g.ask(b"X10000000000000000,4:ABCD") == b"E14"
    assert g.ask(b"M100000000,4:41424344") == b"E14"
    assert g.ask(b"m0,4") == low
    # one normalised address for breakpoints: 2**32 + A is not A
    assert g.ask(b"Z0,%x,1" % (1 << 32 | loop)) == b"E14"
    assert g.ask(b"Z1,%x,1" % (1 << 32 | loop)) == b"E14"
    assert g.ask(b"Z0,%x,1" % done) == b"OK"
    g.resume()
    reply = g.reply()
    assert stop_signal(reply) == SIGTRAP and b"08:%s;" % rsp.le_hex(done, 4) in reply, reply
    assert g.ask(b"z0,%x,1" % done) == b"OK"


# --- 5. G is atomic --------------------------------------------------------------------------------------


def test_a_failing_G_changes_no_register(stubs) -> None:
    stub = stubs()
    g = connected(stub)
    regs = bytearray(g.ask(b"g"))
    eax = bytes(regs[0:8])
    regs[0:8] = rsp.le_hex(0x11223344, 4)
    regs[2 * 4 * 12 : 2 * 4 * 13] = rsp.le_hex(0xFFF8, 4)  # ds: a selector outside the GDT
    assert g.ask(b"G" + bytes(regs)).startswith(b"E")
    assert g.ask(b"p0") == eax


# --- 6. monitor errors as QEMU answers them ----------------------------------------------------------------


def _gdb_batch(port: int, commands: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return gdb_batch(["set architecture i386", f"target remote 127.0.0.1:{port}", *commands])


def test_real_gdb_prints_only_the_monitor_message(stubs) -> None:
    """QEMU answers ``OK`` after the message of a failed monitor command; an ``E01`` made gdb add
    "Protocol error with Rcmd" and end a batch script."""
    stub = stubs()
    res = _gdb_batch(stub.port, ["monitor bogus", "monitor xp /2xw 0x20000000",
                                 "echo AFTER\\n", "monitor info cpus", "monitor x /2xw 0x100000",
                                 "detach"])
    out = res.stdout
    assert "unknown command 'bogus'" in out, out
    assert "Protocol error" not in out, out
    assert "AFTER" in out, out
    assert re.search(r"^\* CPU #0: thread_id=\d+$", out, re.MULTILINE), out
    assert "00100000: 0x1badb002 0x00000003" in out, out
    assert res.returncode == 0, out


# --- 7. the packet log -------------------------------------------------------------------------------------


def test_log_packets_writes_one_line_per_packet_each_way(stubs, tmp_path: Path) -> None:
    path = tmp_path / "packets.log"
    stub = stubs(extra=["--log-packets", str(path)])
    g = connected(stub)
    assert g.ask(b"m100000,4") == b"02b0ad1b"
    g.send(b"$m100000,4#00")  # a bad checksum is noted too
    ev, _ = g.event()
    assert ev is rsp.Event.NAK
    assert g.ask(b"D") == b"OK"
    g.close()
    deadline = time.monotonic() + 10
    while "recv D" not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, "no packet log"
        time.sleep(0.01)
    lines = path.read_text().splitlines()
    recv = [ln for ln in lines if " recv " in ln]
    sent = [ln for ln in lines if " send " in ln]
    assert any(ln.endswith("recv " + QSUPPORTED.decode()) for ln in recv), lines
    assert any(" send PacketSize=" in ln for ln in sent), lines
    assert any(ln.endswith("recv m100000,4") for ln in recv), lines
    assert any(ln.endswith("send 02b0ad1b") for ln in sent), lines
    assert any("bad checksum" in ln for ln in lines), lines
    assert any(ln.endswith("send OK") for ln in sent), lines
    assert all(re.match(r"^\d+\.\d{6} 127\.0\.0\.1:\d+ (recv|send|note) ", ln) for ln in lines), \
        lines


def test_unreadable_packet_log_is_one_usage_line(built: Built, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "vmigdb.cli", "serve", str(built.guest),
                          "--port", "0", "--log-packets", str(tmp_path / "no" / "such" / "dir")],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith("vmigdb: cannot write"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
