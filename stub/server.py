"""The gdb remote stub's TCP side: one gdb at a time, a lobby, run control, a dispatch table.

Threads and why (pyOCD's packet-IO model, shared reference gdb-remote-protocol.md §3.6):
* the lobby thread (``lobby.py``) owns the listener and every connection that has not yet sent a
  packet: a silent or trickling connection is bounded there (handshake deadline, idle limit, a
  cap, accept() that survives the open-file limit), and only a peer that speaks RSP is offered
  the seat; a second gdb gets a clear refusal while the first works, and a gdb that closed
  without ``D`` and reconnected at once waits the moment its old session takes to end;
* per connection, the thread that called ``serve_forever`` reads the socket itself while the
  machine is stopped (no hand-off between threads per packet: each one cost a wake-up, which is
  most of a stepi's time on a loaded host), splits the stream (``rsp.Decoder``), answers
  ``-``/resends, handles packets and runs the machine (``run``/``step`` are plain calls between
  Unicorn runs; nothing here runs inside a Unicorn hook);
* while a ``continue`` runs, a watcher thread owns ``recv`` instead: it sees a Ctrl-C (0x03) and
  calls ``machine.interrupt()``, and keeps anything else for after the run. A Ctrl-C counts only
  while the run is under way: the machine keeps an interrupt that comes between runs for the next
  one, so one that raced a stop would stop the next plain ``continue`` at once. The watcher stops
  interrupting when the run returns, and a run that stops "interrupted" although nobody asked
  during it (the leftover of such a race, consumed by that stop) is simply run again.

Replies are framed once and written with one ``sendall`` (ack included) on a TCP_NODELAY socket:
without both, every stepi costs a Nagle/delayed-ACK round (~360 ms measured).

Errors, translated once (``_Session._answer``): a malformed packet (``rsp.RspError``, which every
parser raises) -> ``E01``; an address the machine cannot reach, or one past the 32-bit space
(never wrapped) -> ``E14``; a well-formed request the machine refuses (a selector it cannot load)
-> ``E01`` and a log line; anything else is a bug -> ``E03`` and one log line saying where, and
the stub keeps serving. ``monitor`` errors print their message and answer ``OK``, as QEMU does
(an ``E`` made gdb add "Protocol error with Rcmd"). ``--log-packets`` (``PacketLog``) writes one
line per packet each way.

Stop mapping (documented contract):
* STEP, HOOK -> ``T05``; BREAKPOINT -> ``T05swbreak:`` or ``T05hwbreak:`` by the Z type that
  inserted it; WATCHPOINT -> ``T05watch|rwatch|awatch:ADDR``; INTERRUPTED -> ``T02`` (SIGINT);
* HALT (hlt with IF=0) -> ``T05`` plus a console line saying so: the machine stays inspectable and
  a ``continue`` halts again at once;
* FAULT / TRIPLE_FAULT -> a signal by vector (``SIGNAL_BY_VECTOR``, default SIGSEGV ``T0b``) plus
  the machine's message as console output;
* EXIT -> first a stop, as gdb's ``catch exit`` would make one: ``T05`` with the machine's
  message as console output (``EXIT_MESSAGE``: "the guest exited with code 0x…"), the machine
  left as the guest left it, so its state and trace can still be inspected (``?`` answers the
  same stop, for this gdb or the next). The next ``c``/``s``/``vCont`` ends the guest: ``W`` +
  the low byte of ``Stop.exit_code`` (the value the guest wrote to isa-debug-exit, so 0 shows as
  "exited normally"); the next connection finds the machine reset to its entry state. A reset
  (``monitor reset``, ``k``) in between forgets the exit;
* an exception from the machine itself -> ``T06`` (SIGABRT) and the traceback in the stub's log.

Life cycle: ``D`` answers OK, removes this gdb's break/watchpoints and closes; the machine keeps its
state (paused) for the next gdb. ``k`` closes without a reply and resets the machine. A gdb that
disconnects or dies (even mid-run: the run is interrupted) leaves the stub listening, the machine
intact and its break/watchpoints removed. Memory accesses are virtual unless ``Qqemu.PhyMemMode:1``
or ``monitor phys on`` (reset to virtual for each connection).
"""

from __future__ import annotations

import collections
import queue
import select
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TextIO
from xml.sax.saxutils import quoteattr

from vmigdb import debugexit
from vmigdb.errors import VmiError

from . import lobby, rsp, target
from .machine import Machine, MemoryFault, Stop, StopReason
from .monitor import MonitorError, MonitorTable, default_table

#: Advertised in qSupported: exactly what is implemented.
SUPPORTED = (b"PacketSize=%x;QStartNoAckMode+;swbreak+;hwbreak+;qXfer:features:read+;"
             b"qXfer:memory-map:read+;qXfer:threads:read+;vContSupported+" % rsp.PACKET_SIZE)
#: The one thread, for qXfer:threads:read. gdb refreshes its thread list after every stop; with
#: this document that is one round trip instead of qfThreadInfo + qsThreadInfo (4 packets per
#: stepi instead of 5: bench/stubs.py measures it).
THREADS_XML = b'<?xml version="1.0"?>\n<threads><thread id="1"/></threads>'

SIGINT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV = 2, 4, 5, 6, 10, 8, 11
#: Exception vector -> gdb signal for FAULT/TRIPLE_FAULT stops (gdb's own signal numbers).
SIGNAL_BY_VECTOR = {0: SIGFPE, 1: SIGTRAP, 3: SIGTRAP, 4: SIGSEGV, 5: SIGSEGV, 6: SIGILL,
                    7: SIGFPE, 13: SIGSEGV, 14: SIGSEGV, 16: SIGFPE, 17: SIGBUS, 19: SIGFPE}
WATCH_KINDS = {2: "watch", 3: "rwatch", 4: "awatch"}
#: An ``m`` longer than this is answered short (gdb reads the rest with another packet).
MAX_READ = (rsp.PACKET_SIZE - 16) // 2
#: Longest watchpoint accepted: the machine hooks every page of the range at insert time, so a
#: garbage length (2**64) would keep the stub busy forever. gdb then reports it cannot insert it.
MAX_WATCH_LEN = 1 << 20
REFUSAL = b"E.vmigdb: another gdb is already connected to this stub"
_O_CHUNK = 4096  # console text characters per O packet (hex doubles them; PacketSize allows)
#: Error replies (errno values, as gdbserver and QEMU use them).
E_MALFORMED = b"E01"  # a malformed packet, or a request the machine refuses
E_INTERNAL = b"E03"  # a bug in the stub: logged, the session goes on
E_FAULT = b"E14"  # EFAULT: an address the machine cannot reach
#: Times a continue is run again after an interrupt nobody asked for during it (one is left at
#: most: the machine keeps a single pending request).
STALE_INTERRUPT_RETRIES = 2
#: The console line of the stop at the guest's exit (``{code}``: the value the guest wrote to
#: isa-debug-exit; ``{status}``: QEMU's exit status for it). ``vmigdb capture`` reads the code
#: from it.
EXIT_MESSAGE = ("vmigdb: the guest exited with code {code:#x} (QEMU status {status}): stopped at "
                "its exit; the state and the trace stay for inspection, continue to end it\n")

MEMORY_MAP_HEAD = (
    '<?xml version="1.0"?>\n<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB Memory Map '
    'V1.0//EN" "http://sourceware.org/gdb/gdb-memory-map.dtd">\n<memory-map>'
)


#: A vmigdb ``q`` packet handler: the text after the name (``:args``) -> the reply payload.
Query = Callable[[bytes], bytes]


def memory_map_xml(regions: list[tuple[int, int, str]]) -> bytes:
    """gdb's memory map from the machine's physical regions, gaps filled with ``ram``.

    gdb refuses client-side any address outside the map, and it speaks *virtual* addresses: with
    paging on, a kernel at 0xC0000000 lies outside physical RAM. So the map covers the whole 32-bit
    space; only the ROM is marked ``rom`` (gdb then uses Z1 there and refuses plain writes). An
    unmapped virtual access still fails, in the stub (``E14``).
    """
    out = [MEMORY_MAP_HEAD]
    pos = 0
    for start, length, kind in sorted(regions):
        if start < pos or length <= 0:
            continue  # overlapping or empty: keep the map well-formed
        if start > pos:
            out.append(f'<memory type="ram" start="{pos:#x}" length="{start - pos:#x}"/>')
        out.append(f'<memory type={quoteattr("rom" if kind == "rom" else "ram")} '
                   f'start="{start:#x}" length="{length:#x}"/>')
        pos = start + length
    if pos < target.ADDRESS_SPACE:
        out.append(f'<memory type="ram" start="{pos:#x}" '
                   f'length="{target.ADDRESS_SPACE - pos:#x}"/>')
    out.append("</memory-map>")
    return "\n".join(out).encode()


def host_port(host: str, port: int) -> str:
    """``HOST:PORT`` as gdb's ``target remote`` takes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str, port: int) -> socket.AddressFamily:
    """The address family ``host`` resolves to first (``::1``: IPv6; a name: what it names)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_PASSIVE)[0][0]
    except (OSError, UnicodeError):
        return socket.AF_INET  # create_server then says what is wrong with the name


def _default_log(message: str) -> None:
    print(f"vmigdb stub: {message}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    """An exception as one log line: type, message and the innermost frame that raised it."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}{where}"


class PacketLog:
    """``vmigdb serve --log-packets FILE``: one line per packet in each direction, like QEMU's
    ``trace_gdbstub_io_command``/``_reply`` events and pyOCD's packet trace.

    A line is ``<unix time> <peer> recv|send|note <payload>``, the payload as ``rsp.printable``
    shows it (escapes decoded, binary as ``\\xNN``, long ones cut); ``note`` is what is not a
    packet (a Ctrl-C, a bad checksum, a refusal, a handler's error). Thread-safe (the run watcher
    notes a Ctrl-C while the session sends) and flushed per line, so a crash keeps its lead-up.
    """

    def __init__(self, stream: TextIO, *, owned: bool = False) -> None:
        self._stream = stream
        self._owned = owned
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str) -> PacketLog:
        """Append to ``path`` ("-": stderr); OSError if it cannot be written."""
        if path == "-":
            return cls(sys.stderr)
        return cls(open(path, "a", encoding="utf-8"), owned=True)  # kept open: one per stub

    def recv(self, peer: str, payload: bytes) -> None:
        self._line(peer, "recv", rsp.printable(payload))

    def send(self, peer: str, payload: bytes) -> None:
        self._line(peer, "send", rsp.printable(payload))

    def note(self, peer: str, text: str) -> None:
        self._line(peer, "note", text)

    def _line(self, peer: str, kind: str, text: str) -> None:
        with self._lock:
            try:
                self._stream.write(f"{time.time():.6f} {peer} {kind} {text}\n")
                self._stream.flush()
            except (OSError, ValueError):  # a full disk or a closed file must not end a session
                pass

    def close(self) -> None:
        if self._owned:
            with self._lock:
                self._stream.close()


class Server:
    """Listens on ``host:port`` (port 0 = ephemeral, see ``.port``) and serves one gdb at a time.

    Run ``serve_forever()`` in the thread that should drive the machine; ``stop()`` from any
    thread ends it (the current connection is closed, a running machine interrupted).
    ``limits`` bound the connections that are not the session (``lobby.Limits``).
    """

    def __init__(self, machine: Machine, host: str = "127.0.0.1", port: int = 1234, *,
                 ready: Callable[[int], None] | None = None, monitor: MonitorTable | None = None,
                 log: Callable[[str], None] | None = None,
                 queries: dict[bytes, Query] | None = None,
                 packet_log: PacketLog | None = None,
                 limits: lobby.Limits | None = None) -> None:
        self.machine = machine
        self.monitor = monitor if monitor is not None else default_table()
        #: vmigdb's own ``q`` packets by name (``qvmigdb.raw``): handler(arguments) -> reply.
        self.queries = dict(queries or {})
        self.log = log or _default_log
        self.packets = packet_log
        self._ready = ready
        self._lock = threading.Lock()
        self._stopping = False
        self._session: _Session | None = None
        self._pending: queue.SimpleQueue[_Session | None] = queue.SimpleQueue()
        self.exited = False  # the guest exited: reset before the next gdb
        #: The guest's exit, reported as a stop and not yet as the end (``W``): the next resume
        #: ends the guest. Kept across connections; a machine reset forgets it.
        self.exit_pending: Stop | None = None
        machine.on_reset(self._forget_exit)
        try:
            self._listener = socket.create_server((host, port), family=_family(host, port),
                                                  reuse_port=False)
        except OSError as exc:
            raise VmiError(f"cannot listen on {host_port(host, port)}: "
                           f"{exc.strerror or exc}") from None
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._lobby = lobby.Lobby(self._listener, self._offer, refusal=REFUSAL, log=self.log,
                                  limits=limits)

    def _forget_exit(self) -> None:
        """The machine was reset (``monitor reset``, ``k``, the guest's own reset): the exit
        it had reached is no more."""
        self.exit_pending = None

    @property
    def stopping(self) -> bool:
        """``stop()`` was called: the stub is ending."""
        return self._stopping

    @property
    def _busy(self) -> bool:
        """A gdb holds the seat (admitted, until its session has ended)."""
        return self._session is not None

    # --- connections ---------------------------------------------------------------------------
    def _offer(self, cand: lobby.Candidate) -> lobby.Verdict:
        """The lobby's question for a connection that sent its first packet (lobby thread)."""
        with self._lock:
            if self._stopping:
                return lobby.Verdict.REFUSE
            current = self._session
            if current is None:
                cand.conn.setblocking(True)
                self._session = _Session(self, cand.conn, cand.peer, bytes(cand.received))
                self._pending.put(self._session)
                return lobby.Verdict.ADMIT
        if current is not None and current.ending():
            return lobby.Verdict.WAIT  # a gdb that left without D: its session is ending
        self.log(f"refused gdb from {cand.peer}: another gdb is connected")
        if self.packets:
            self.packets.note(cand.peer, "refused: another gdb is connected")
        return lobby.Verdict.REFUSE

    def serve_forever(self) -> None:
        """Serve connections until ``stop()``; the machine runs in this thread."""
        self._lobby.start()
        self.log(f"listening on {host_port(self.host, self.port)}")
        if self._ready:
            self._ready(self.port)
        try:
            while (session := self._pending.get()) is not None:
                if self._stopping:
                    lobby.close(session.conn)
                    break
                self._serve(session)
        finally:
            self.close()

    def _serve(self, session: _Session) -> None:
        try:
            session.run()
        except Exception:  # noqa: BLE001 - a bug costs this connection, not the stub
            self.log(f"session with {session.peer} failed:\n{traceback.format_exc()}")
            lobby.close(session.conn)
        finally:
            with self._lock:
                self._session = None
            self._lobby.wake()  # a gdb waiting for this seat gets it now

    def stop(self) -> None:
        """Thread-safe: end ``serve_forever`` soon."""
        with self._lock:
            self._stopping = True
            session = self._session
        if session is not None:
            session.close()
        self._pending.put(None)
        self.close()

    def close(self) -> None:
        with self._lock:
            self._stopping = True
        self._lobby.stop()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()


def serve(machine: Machine, host: str = "127.0.0.1", port: int = 1234, *,
          ready: Callable[[int], None] | None = None, monitor: MonitorTable | None = None,
          queries: dict[bytes, Query] | None = None,
          packet_log: PacketLog | None = None) -> None:
    """Serve gdb on ``host:port`` until interrupted; ``ready(port)`` once listening. Blocks."""
    Server(machine, host, port, ready=ready, monitor=monitor, queries=queries,
           packet_log=packet_log).serve_forever()


#: poll() bits that say the peer closed its end: a FIN (POLLRDHUP, Linux) or a reset.
_HANGUP = (select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0))


def _peer_gone(conn: socket.socket) -> bool:
    """Whether gdb closed its end (FIN or RST), seen without reading: POLLRDHUP reports a FIN
    even behind data not yet read."""
    poller = select.poll()
    poller.register(conn, select.POLLIN | getattr(select, "POLLRDHUP", 0))
    return any(mask & _HANGUP for _, mask in poller.poll(0))


class Refused(Exception):
    """The machine refused a well-formed request (a selector it cannot load, a register it does
    not model): ``E01``, and a log line saying what."""


class _Run:
    """One ``continue``'s window for Ctrl-C.

    ``machine.interrupt()`` between runs is kept for the next run (MachineInterface), so the
    watcher may interrupt only while the run is under way, and the run learns whether anybody
    asked: an "interrupted" stop nobody asked for during this run is a leftover (a Ctrl-C that
    came as an earlier stop was being finished), and that stop has consumed it.
    """

    def __init__(self, machine: Machine) -> None:
        self._machine = machine
        self._lock = threading.Lock()
        self._open = True
        self.asked = False

    def interrupt(self) -> bool:
        """Interrupt the run if it is still under way; False once it is over (then ignore)."""
        with self._lock:
            if not self._open:
                return False
            self.asked = True
            self._machine.interrupt()
            return True

    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        with self._lock:
            self._open = False


class _Session:
    """One gdb connection: packet handlers and the state gdb set up (no-ack, break/watchpoints)."""

    def __init__(self, server: Server, conn: socket.socket, peer: str,
                 received: bytes = b"") -> None:
        self.server = server
        self.machine = server.machine
        self.conn = conn
        self.peer = peer
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.phys_mode = False
        self.no_ack = False
        self._packets = server.packets
        self._received = received  # read by the lobby before the seat was ours: replayed first
        self._ack = b""  # "+" owed for the packet being handled, sent with its reply
        self._last = b""  # last framed reply, for "-" resends
        self._send_lock = threading.Lock()
        self._conn_lock = threading.Lock()  # the lobby peeks at the socket while this closes it
        self._decoder = rsp.Decoder()
        self._events: collections.deque[tuple[rsp.Event, bytes]] = collections.deque()
        self._eof = False
        self._closing = False
        self._closed = False
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._console: list[str] = []
        self._gdb_swbreak = self._gdb_hwbreak = False
        self._bps: dict[int, set[int]] = {}  # address -> Z types (0 sw, 1 hw) holding it
        self._wps: set[tuple[int, int, str]] = set()
        self._simple: dict[int, Callable[[bytes], bytes | None]] = {
            ord("?"): self._h_status, ord("g"): self._h_g, ord("G"): self._h_G,
            ord("p"): self._h_p, ord("P"): self._h_P, ord("m"): self._h_m, ord("M"): self._h_M,
            ord("X"): self._h_X, ord("c"): self._h_c, ord("C"): self._h_C, ord("s"): self._h_s,
            ord("S"): self._h_S, ord("Z"): self._h_Z, ord("z"): self._h_z, ord("H"): self._h_H,
            ord("T"): self._h_T, ord("D"): self._h_D, ord("k"): self._h_k,
        }
        self._named: dict[bytes, Callable[[bytes], bytes | None]] = {
            b"qSupported": self._h_qSupported, b"QStartNoAckMode": self._h_QStartNoAckMode,
            b"vMustReplyEmpty": lambda a: b"", b"qC": lambda a: b"QC1",
            b"qAttached": lambda a: b"1", b"qfThreadInfo": lambda a: b"m1",
            b"qsThreadInfo": lambda a: b"l", b"qXfer": self._h_qXfer, b"qRcmd": self._h_qRcmd,
            b"vCont?": lambda a: b"vCont;c;C;s;S", b"vCont": self._h_vCont,
            b"qqemu.PhyMemMode": lambda a: b"1" if self.phys_mode else b"0",
            b"Qqemu.PhyMemMode": self._h_QPhyMemMode,
            **server.queries,
        }

    # --- plumbing ------------------------------------------------------------------------------
    def run(self) -> None:
        self.server.log(f"gdb connected from {self.peer}")
        if self.server.exited:
            self.server.exited = False
            self.server.exit_pending = None
            self._safe(self.machine.reset, "reset after guest exit")
        self._events.extend(self._decoder.feed(self._received))
        try:
            while not self._closing:
                if not self._events:
                    if not self._receive():
                        break
                    continue  # a partial packet yields nothing yet
                self._dispatch_event(*self._events.popleft())
        finally:
            self._closing = True
            self._drop_points()
            with self._conn_lock:
                self._closed = True
                lobby.close(self.conn)
            for end in self._wake or ():
                end.close()
            after = "" if self.server.stopping else "; waiting for the next one"
            self.server.log(f"gdb from {self.peer} gone{after}")

    def _dispatch_event(self, ev: rsp.Event, payload: bytes) -> None:
        if ev is rsp.Event.PACKET:
            self._handle(payload)
        elif ev is rsp.Event.INTERRUPT:
            self._note("Ctrl-C while stopped: ignored")  # as the protocol says
        elif ev is rsp.Event.BAD:
            self._note("bad checksum or unterminated packet")
            if not self.no_ack:
                self._send_raw(b"-")
        elif ev is rsp.Event.NAK and not self.no_ack and self._last:
            self._note("- from gdb: the last reply again")
            self._send_raw(self._last)

    def close(self) -> None:
        """From another thread: end the session (a running machine is interrupted)."""
        self._closing = True
        with self._conn_lock:
            if not self._closed:
                try:
                    self.conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def ending(self) -> bool:
        """From the lobby: this gdb has gone or is going (``D``, ``k``, its end closed), so a
        newcomer should wait for the seat rather than be refused."""
        with self._conn_lock:
            return self._closing or self._closed or _peer_gone(self.conn)

    def _note(self, text: str) -> None:
        if self._packets:
            self._packets.note(self.peer, text)

    def _recv(self) -> bytes:
        """What gdb sent next; b"" (and ``_eof`` set) when the connection is gone."""
        try:
            data = self.conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._eof = True
        return data

    def _receive(self) -> bool:
        """Read and split what gdb sent (this thread, machine stopped); False at the end."""
        data = b"" if self._eof else self._recv()
        self._events.extend(self._decoder.feed(data))
        return bool(data)

    def _watch(self, run: _Run, wake: socket.socket) -> None:
        """During a continue: Ctrl-C interrupts the run while it is under way (and is ignored
        after, like any Ctrl-C while stopped); other input waits for the run's end; a gdb that
        vanished mid-run must not leave the machine running."""
        while run.is_open():
            try:
                ready, _, _ = select.select([self.conn, wake], [], [])
            except (OSError, ValueError):
                ready = [self.conn]
            if wake in ready:
                return
            data = self._recv()
            if not data:
                run.interrupt()
                return
            for ev in self._decoder.feed(data):
                if ev[0] is not rsp.Event.INTERRUPT:
                    self._events.append(ev)
                elif run.interrupt():
                    self._note("Ctrl-C: interrupting the run")
                else:
                    self._note("Ctrl-C after the run stopped: ignored")

    def _wake_pair(self) -> tuple[socket.socket, socket.socket]:
        """The watcher's wake-up: made on the first continue and kept for the session, so a
        continue needs no new descriptor (the process may be at its open-file limit)."""
        if self._wake is None:
            self._wake = socket.socketpair()
            self._wake[0].setblocking(False)
        wake_r, wake_w = self._wake
        try:
            while wake_r.recv(64):  # a wake-up the last watcher did not take
                pass
        except BlockingIOError:
            pass
        return wake_r, wake_w

    def _run_watched(self) -> Stop:
        """``machine.run()`` with a watcher on the socket for its duration."""
        run = _Run(self.machine)
        wake_r, wake_w = self._wake_pair()
        watcher = threading.Thread(target=self._watch, args=(run, wake_r),
                                   name="vmigdb-rsp-watch", daemon=True)
        watcher.start()
        try:
            return self._run_asked(run)
        finally:
            run.close()
            wake_w.send(b"x")
            watcher.join(timeout=5)

    def _run_asked(self, run: _Run) -> Stop:
        """Run until a stop somebody asked for: an "interrupted" stop with no Ctrl-C (or hang-up)
        during this run is a leftover interrupt, consumed by that stop, so run on."""
        stop = self.machine.run()
        for _ in range(STALE_INTERRUPT_RETRIES):
            if stop.reason is not StopReason.INTERRUPTED or run.asked:
                break
            self._note("an interrupt left over from an earlier run: running on")
            stop = self.machine.run()
        return stop

    def _send_raw(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.conn.sendall(data)
            except OSError:
                self._closing = True

    def _send(self, payloads: list[bytes]) -> None:
        """Frame and send replies in one write, with the ack owed for the request."""
        framed = [rsp.frame(p) for p in payloads]
        if self._packets:
            for p in payloads:
                self._packets.send(self.peer, p)
        with self._send_lock:
            self._last = framed[-1]
            data = self._ack + b"".join(framed)
            self._ack = b""
            try:
                self.conn.sendall(data)
            except OSError:
                self._closing = True

    def _flush_ack(self) -> None:
        """Before a long run, ack now: gdb resends a packet whose ack is late."""
        if self._ack:
            with self._send_lock:
                ack, self._ack = self._ack, b""
            self._send_raw(ack)

    def _handle(self, payload: bytes) -> None:
        self._ack = b"" if self.no_ack else b"+"
        self._console = []
        if self._packets:
            self._packets.recv(self.peer, payload)
        reply = self._answer(payload)
        if reply is None:
            self._flush_ack()
            return
        out = [rsp.console_output(t[i:i + _O_CHUNK]) for t in self._console
               for i in range(0, len(t), _O_CHUNK)]
        out.append(reply)
        self._send(out)

    def _answer(self, payload: bytes) -> bytes | None:
        """The reply to one packet (None: the handler answered itself). Every failure becomes
        an error reply here, once; only what is neither malformed input nor an unreachable
        address is logged, so a bug shows instead of passing for a malformed packet."""
        try:
            handler, args = self._lookup(payload)
            return b"" if handler is None else handler(args)
        except rsp.RspError:
            return E_MALFORMED
        except MemoryFault:
            return E_FAULT
        except Refused as exc:
            self._report(payload, f"refused: {exc}")
            return E_MALFORMED
        except Exception as exc:  # noqa: BLE001 - a bug must cost one packet, not the session
            self._report(payload, f"failed: {one_line(exc)}")
            return E_INTERNAL

    def _report(self, payload: bytes, what: str) -> None:
        """One line on the stub's log (and the packet log) about a packet that went wrong."""
        self.server.log(f"packet {rsp.printable(payload, 60)} from {self.peer} {what}")
        self._note(what)

    def _lookup(self, payload: bytes) -> tuple[Callable[[bytes], bytes | None] | None, bytes]:
        """The handler for a packet and its arguments: by first byte, or for q/Q/v packets by the
        name up to the first ``:``, ``,`` or ``;``."""
        if not payload:
            return None, b""
        first = payload[0]
        if first in b"qQv":
            end = len(payload)
            for sep in (b":", b",", b";"):
                i = payload.find(sep, 0, end)
                if i >= 0:
                    end = i
            return self._named.get(payload[:end]), payload[end:]
        return self._simple.get(first), payload[1:]

    def write(self, text: str) -> None:
        """Console output (monitor commands, stop messages): sent as O packets before the reply."""
        if text:
            self._console.append(text)

    def _safe(self, fn: Callable[[], object], what: str) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - clean-up must go on; the log says what failed
            self.server.log(f"{what} failed: {exc}")

    def _drop_points(self) -> None:
        for addr in list(self._bps):
            self._safe(lambda a=addr: self.machine.remove_breakpoint(a), f"remove breakpoint {addr:#x}")
        for wp in list(self._wps):
            self._safe(lambda w=wp: self.machine.remove_watchpoint(*w), f"remove watchpoint {wp}")
        self._bps.clear()
        self._wps.clear()

    # --- set-up and queries ------------------------------------------------------------------------
    def _h_qSupported(self, args: bytes) -> bytes:
        features = args[1:].split(b";") if args.startswith(b":") else []
        self._gdb_swbreak = b"swbreak+" in features
        self._gdb_hwbreak = b"hwbreak+" in features
        return SUPPORTED

    def _h_QStartNoAckMode(self, args: bytes) -> None:
        self._send([b"OK"])  # acked, then no more acks either way
        self.no_ack = True

    def _h_H(self, args: bytes) -> bytes:
        return b"OK" if args[:1] in (b"g", b"c") else b""

    def _h_T(self, args: bytes) -> bytes:
        return b"OK" if rsp.thread_matches(*rsp.parse_thread_id(args)) else E_MALFORMED

    def _h_qXfer(self, args: bytes) -> bytes:
        obj, _, rest = args[1:].partition(b":")
        op, _, rest = rest.partition(b":")
        annex, _, offlen = rest.rpartition(b":")
        if op != b"read":
            return b""
        if obj == b"features":
            if annex != b"target.xml":
                return b"E00"
            doc = target.TARGET_XML
        elif obj == b"memory-map":
            doc = memory_map_xml(self.machine.regions())
        elif obj == b"threads":
            doc = THREADS_XML
        else:
            return b""
        offset, length = rsp.parse_addr_len(offlen)
        return rsp.qxfer_chunk(doc, offset, length)

    def _h_qRcmd(self, args: bytes) -> bytes:
        """``monitor LINE``. A command that fails prints its message and the reply is still
        ``OK``, as QEMU's gdbstub answers (system.c ``gdb_handle_query_rcmd``): gdb 13 turns an
        ``E`` reply into "Protocol error with Rcmd" after the message. A malformed packet (not
        hex) is still ``E01``."""
        if not args.startswith(b","):
            raise rsp.RspError("qRcmd without a command")
        line = rsp.hex_decode(args[1:]).decode("utf-8", "replace")
        try:
            self.server.monitor.dispatch(self, line)
        except (MonitorError, MemoryFault) as exc:
            self.write(f"{exc}\n")
        return b"OK"

    def _h_QPhyMemMode(self, args: bytes) -> bytes:
        if args == b":1":
            self.phys_mode = True
        elif args == b":0":
            self.phys_mode = False
        else:
            return E_MALFORMED
        return b"OK"

    # --- registers ---------------------------------------------------------------------------------
    def _reg_write(self, name: str, value: int) -> None:
        """``machine.reg_write``; its refusals (KeyError: not modelled, ValueError: a value it
        cannot load, such as a selector outside the GDT) become Refused."""
        try:
            self.machine.reg_write(name, value)
        except (KeyError, ValueError) as exc:
            raise Refused(f"{name} = {value:#x}: {exc}") from None

    def _h_g(self, args: bytes) -> bytes:
        return target.encode_g(self.machine.register_file().__getitem__)

    def _h_G(self, args: bytes) -> bytes:
        """All or nothing: a register the machine refuses undoes the ones written before it (in
        reverse order, so a selector goes back before the control register it depended on)."""
        before = self.machine.register_file()
        changes = [(reg.name, value) for reg, value in target.decode_g(args)
                   if before.get(reg.name) != value]
        written: list[str] = []
        try:
            for name, value in changes:
                self._reg_write(name, value)
                written.append(name)
        except BaseException:
            for name in reversed(written):
                self._safe(lambda n=name: self.machine.reg_write(n, before[n]),
                           f"undo {name} after a failed G")
            raise
        return b"OK"

    def _h_p(self, args: bytes) -> bytes:
        return target.encode_reg(target.register(rsp.parse_hex(args)), self.machine.reg_read)

    def _h_P(self, args: bytes) -> bytes:
        num, sep, value = args.partition(b"=")
        if not sep:
            raise rsp.RspError("P without =")
        reg = target.register(rsp.parse_hex(num))
        decoded = target.decode_value(reg, value)
        if decoded is not None:
            self._reg_write(reg.name, decoded)
        return b"OK"

    # --- memory --------------------------------------------------------------------------------------
    def _read(self, addr: int, length: int) -> bytes:
        if self.phys_mode:
            return self.machine.read_phys(addr, length)
        return self.machine.read_virt(addr, length)

    def _write(self, addr: int, data: bytes) -> None:
        if self.phys_mode:
            self.machine.write_phys(addr, data)
        else:
            self.machine.write_virt(addr, data)

    def _h_m(self, args: bytes) -> bytes:
        addr, length = rsp.parse_addr_len(args)
        _check_span(addr, 1)
        length = min(length, MAX_READ, target.ADDRESS_SPACE - addr)  # short at the top is fine
        if length == 0:
            return b""
        try:
            return self._read(addr, length).hex().encode()
        except MemoryFault as fault:
            # Return the readable prefix: gdb accepts a short read (e.g. up to a page end).
            if addr < fault.addr < addr + length:
                return self._read(addr, fault.addr - addr).hex().encode()
            raise

    def _h_M(self, args: bytes) -> bytes:
        head, sep, data_hex = args.partition(b":")
        if not sep:
            raise rsp.RspError("M without data")
        addr, length = rsp.parse_addr_len(head)
        data = rsp.hex_decode(data_hex)
        if len(data) != length:
            raise rsp.RspError("M length mismatch")
        _check_span(addr, length)
        if data:
            self._write(addr, data)
        return b"OK"

    def _h_X(self, args: bytes) -> bytes:
        head, sep, data = args.partition(b":")
        if not sep:
            raise rsp.RspError("X without data")
        addr, length = rsp.parse_addr_len(head)
        if len(data) != length:
            raise rsp.RspError("X length mismatch")
        _check_span(addr, length)
        if data:
            self._write(addr, data)
        return b"OK"

    # --- break- and watchpoints ---------------------------------------------------------------------
    def _parse_z(self, args: bytes) -> tuple[int, int, int]:
        """``TYPE,ADDR,KIND`` -> (type, address, length); the address must lie in the 32-bit
        space (E14 otherwise), so a breakpoint has the one address the machine uses for it."""
        kind_text, _, rest = args.partition(b",")
        rest = rest.partition(b";")[0]  # conditions are not advertised; ignore any
        addr, length = rsp.parse_addr_len(rest)
        _check_span(addr, 1)
        return rsp.parse_hex(kind_text), addr, length

    def _h_Z(self, args: bytes) -> bytes:
        ztype, addr, length = self._parse_z(args)
        if ztype in (0, 1):
            types = self._bps.get(addr)
            if types is None:
                self.machine.add_breakpoint(addr)
                types = self._bps[addr] = set()
            types.add(ztype)
            return b"OK"
        if ztype in WATCH_KINDS:
            if not 0 < length <= MAX_WATCH_LEN:
                raise rsp.RspError(f"watchpoint length {length:#x} at {addr:#x}")
            _check_span(addr, length)
            wp = (addr, length, WATCH_KINDS[ztype])
            if wp not in self._wps:
                self.machine.add_watchpoint(*wp)
                self._wps.add(wp)
            return b"OK"
        return b""  # unsupported type: empty lets gdb fall back

    def _h_z(self, args: bytes) -> bytes:
        ztype, addr, length = self._parse_z(args)
        if ztype in (0, 1):
            types = self._bps.get(addr)
            if types is not None:
                types.discard(ztype)
                if not types:
                    del self._bps[addr]
                    self.machine.remove_breakpoint(addr)
            return b"OK"
        if ztype in WATCH_KINDS:
            wp = (addr, length, WATCH_KINDS[ztype])
            if wp in self._wps:
                self._wps.discard(wp)
                self.machine.remove_watchpoint(*wp)
            return b"OK"
        return b""

    # --- run control ---------------------------------------------------------------------------------
    def _h_status(self, args: bytes) -> bytes:
        if self.server.exit_pending is not None:  # still stopped at the guest's exit
            # The same stop, without its console line: gdb takes O packets only while a
            # resume or a monitor command runs (a reconnecting gdb read one as the answer to
            # `?`, and the stop reply as the answer to its next packet).
            return self._stop_signal(SIGTRAP)
        return self._stop_reply(Stop(StopReason.STEP, self._pc()))

    def _pc(self) -> int:
        return self.machine.reg_read("eip")

    def _set_pc(self, addr_text: bytes) -> None:
        if addr_text:
            addr = rsp.parse_hex(addr_text)
            _check_span(addr, 1)
            self._reg_write("eip", addr)

    def _h_c(self, args: bytes) -> bytes:
        self._set_pc(args)
        return self._resume("c")

    def _h_s(self, args: bytes) -> bytes:
        self._set_pc(args)
        return self._resume("s")

    def _h_C(self, args: bytes) -> bytes:
        sig, _, addr = args.partition(b";")
        rsp.parse_hex(sig)  # no signals to deliver on a bare machine; validate and ignore
        self._set_pc(addr)
        return self._resume("c")

    def _h_S(self, args: bytes) -> bytes:
        sig, _, addr = args.partition(b";")
        rsp.parse_hex(sig)
        self._set_pc(addr)
        return self._resume("s")

    def _h_vCont(self, args: bytes) -> bytes:
        action = rsp.vcont_action_for(rsp.parse_vcont(args))
        if action is None:
            raise rsp.RspError("vCont names no action for thread 1")
        return self._resume(action)

    def _resume(self, action: str) -> bytes:
        self._flush_ack()
        ended = self.server.exit_pending
        if ended is not None:  # stopped at the guest's exit: resuming ends it
            self.server.exit_pending = None
            self.server.exited = True
            return rsp.exit_reply(ended.exit_code or 0)
        stop: Stop | None = None
        if action == "c":
            # A Ctrl-C already read behind this packet (sent after it) stops this run at once.
            for i, (ev, _) in enumerate(self._events):
                if ev is rsp.Event.INTERRUPT:
                    del self._events[i]
                    stop = Stop(StopReason.INTERRUPTED, self._pc())
                    break
        try:
            if stop is None:
                stop = self._run_watched() if action == "c" else self.machine.step()
        except Exception as exc:  # noqa: BLE001 - gdb needs a stop reply whatever happened
            self.server.log(f"machine error during {action!r}:\n{traceback.format_exc()}")
            self.write(f"vmigdb: machine error: {exc}\n")
            return self._stop_signal(SIGABRT)
        return self._stop_reply(stop)

    def _stop_signal(self, signal: int, reason: str = "", addr: int | None = None) -> bytes:
        read = self.machine.reg_read
        expedite = [(r.regnum, target.encode_reg(r, read)) for r in target.EXPEDITED]
        return rsp.stop_reply(signal, expedite, reason=reason, reason_addr=addr)

    def _stop_reply(self, stop: Stop) -> bytes:
        reason = stop.reason
        if reason is StopReason.EXIT:
            self.server.exit_pending = stop
            return self._exit_stop(stop)
        if reason is StopReason.BREAKPOINT:
            types = self._bps.get(stop.pc, set())
            if 0 in types and self._gdb_swbreak:
                return self._stop_signal(SIGTRAP, "swbreak")
            if 1 in types and self._gdb_hwbreak:
                return self._stop_signal(SIGTRAP, "hwbreak")
            return self._stop_signal(SIGTRAP)
        if reason is StopReason.WATCHPOINT:
            return self._stop_signal(SIGTRAP, stop.watch_kind or "watch", stop.watch_addr or 0)
        if reason is StopReason.INTERRUPTED:
            return self._stop_signal(SIGINT)
        if reason in (StopReason.FAULT, StopReason.TRIPLE_FAULT):
            self.write(f"vmigdb: {stop.message or f'{reason.value} at {stop.pc:#x}'}\n")
            return self._stop_signal(SIGNAL_BY_VECTOR.get(stop.vector, SIGSEGV)
                                     if stop.vector is not None else SIGSEGV)
        if reason is StopReason.HALT:
            self.write(f"vmigdb: {stop.message or f'halted at {stop.pc:#x}: the CPU cannot wake'}\n")
        elif reason is StopReason.HOOK and stop.message:
            self.write(f"vmigdb: {stop.message}\n")
        return self._stop_signal(SIGTRAP)

    def _exit_stop(self, stop: Stop) -> bytes:
        """The stop at the guest's exit: T05 (SIGTRAP) and the exit code as console text."""
        code = stop.exit_code or 0
        self.write(EXIT_MESSAGE.format(code=code, status=debugexit.qemu_status(code)))
        return self._stop_signal(SIGTRAP)

    # --- leaving ---------------------------------------------------------------------------------------
    def _h_D(self, args: bytes) -> None:
        self._drop_points()
        self._send([b"OK"])
        self._closing = True

    def _h_k(self, args: bytes) -> None:
        self._flush_ack()
        self._drop_points()
        self.server.exit_pending = None
        self._safe(self.machine.reset, "reset on kill")
        self.server.log("gdb killed the program: machine reset")
        self._closing = True


def _check_span(addr: int, length: int) -> None:
    """MemoryFault (E14) unless [addr, addr + length) lies in the guest's 32-bit space: the
    machine would wrap 2**32 + A to A, so such an address must never reach it."""
    if addr + length > target.ADDRESS_SPACE:
        raise MemoryFault(max(addr, target.ADDRESS_SPACE))
