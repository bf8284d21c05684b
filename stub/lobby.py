"""Admission to the gdb stub: every new connection waits in the lobby until it has sent a packet.

Why: only the active gdb session may hold the stub for as long as it likes. A connection that
never spoke used to become the session and keep every real gdb out; each refused connection kept
a thread and a descriptor for as long as it trickled bytes, until ``accept()`` failed at the
open-file limit and the accept loop ended for good (the hardening issue's loss of service).

So one thread owns the listener and every connection that has not yet sent a whole packet, with
``selectors`` (no thread per connection), and each of them is bounded:

* a connection that sends its first packet is offered to the server, which admits it (it becomes
  the session; the bytes read here are replayed to it), refuses it (``E.`` text, then close), or
  has it wait because the session it would replace is already ending: a gdb that closed without
  ``D`` and reconnected at once must not find its own old session in the way;
* no byte for ``idle`` seconds, or no packet ``handshake`` seconds after accept: closed;
* at most ``waiting`` connections: a newcomer beyond that pushes the oldest one out;
* ``accept()`` out of descriptors (EMFILE and kin): the oldest waiting connection makes room, or,
  with none to drop, accepting pauses for ``backoff`` seconds. The loop never ends on an error.
"""

from __future__ import annotations

import enum
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import rsp

#: Seconds from accept to the first complete packet (gdb sends qSupported at once).
HANDSHAKE_DEADLINE = 3.0
#: Seconds a connection may stay silent before its first packet.
IDLE_LIMIT = 1.5
#: Connections waiting for their first packet; the oldest goes when another arrives.
MAX_WAITING = 32
#: Seconds accepting pauses when the process is out of descriptors and no connection can go.
ACCEPT_BACKOFF = 0.1
#: Bytes kept for replay before the first packet: a packet cannot be longer (rsp.Decoder's bound).
MAX_PREFIX = rsp.MAX_RAW_PAYLOAD + 64
#: accept() errors that mean "out of descriptors or memory", not "that connection failed".
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: How often a tally of dropped connections is logged (a flood must not flood the log too).
REPORT_EVERY = 5.0


@dataclass(frozen=True)
class Limits:
    """The lobby's bounds; the defaults are the module's constants."""

    handshake: float = HANDSHAKE_DEADLINE
    idle: float = IDLE_LIMIT
    waiting: int = MAX_WAITING
    backoff: float = ACCEPT_BACKOFF


class Verdict(enum.Enum):
    """The server's answer for a connection that sent its first packet."""

    ADMIT = "admit"  # it is the session now; the lobby lets go of it
    WAIT = "wait"  # the session it would replace is ending: ask again when woken
    REFUSE = "refuse"  # another gdb is connected


@dataclass(eq=False)
class Candidate:
    """A connection in the lobby and what it sent so far."""

    conn: socket.socket
    peer: str
    accepted: float
    heard: float
    received: bytearray = field(default_factory=bytearray)
    decoder: rsp.Decoder = field(default_factory=rsp.Decoder)
    has_packet: bool = False

    def deadline(self, limits: Limits) -> float:
        """When it must leave: the handshake deadline, or sooner if it went silent."""
        end = self.accepted + limits.handshake
        return end if self.has_packet else min(end, self.heard + limits.idle)


def peer_name(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def close(conn: socket.socket) -> None:
    """Shut down (FIN after anything sent) and close, whatever state the socket is in."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


class Lobby:
    """The listener and the connections not yet admitted, served by one thread (``start``).

    ``offer(candidate)`` runs in the lobby's thread; on ADMIT the server owns the socket from
    then on. ``wake()`` (any thread) has the lobby offer its waiting candidates again: the server
    calls it when a session ends.
    """

    def __init__(self, listener: socket.socket, offer: Callable[[Candidate], Verdict], *,
                 refusal: bytes, log: Callable[[str], None], limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or Limits()
        self._listener = listener
        self._offer = offer
        self._refusal = b"+" + rsp.frame(refusal)
        self._log = log
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[socket.socket, Candidate] = {}  # insertion order is age
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._paused_until: float | None = None
        self._dropped: dict[str, int] = {}
        self._next_report = 0.0
        self._started = False
        self._thread = threading.Thread(target=self._loop, name="vmigdb-lobby", daemon=True)

    # --- control (any thread) --------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self._listener.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"w")
        except OSError:  # full: a wake-up is pending anyway; closed: the lobby is gone
            pass

    def stop(self) -> None:
        """End the thread; waiting connections are closed, the listener is left to its owner."""
        self._stopping.set()
        self.wake()
        if not self._started:  # never ran: nothing else would release these
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
        elif self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)

    # --- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(self._timeout()):
                    self._ready_guarded(key)
                    if self._stopping.is_set():
                        return
                now = self._clock()
                self._expire(now)
                self._maybe_resume_accepting(now)
                self._report(now)
        finally:
            for cand in list(self._waiting.values()):
                self._discard(cand)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _ready_guarded(self, key: selectors.SelectorKey) -> None:
        """``_ready``; whatever goes wrong with one connection, the loop goes on."""
        try:
            self._ready(key)
        except Exception as exc:  # noqa: BLE001 - this thread is the stub's only way in
            cand = key.data if isinstance(key.data, Candidate) else None
            if cand is not None:
                self._discard(cand)
            self._log(f"lobby: {type(exc).__name__}: {exc} "
                      f"({cand.peer if cand else 'listener'}); going on")

    def _ready(self, key: selectors.SelectorKey) -> None:
        if key.fileobj is self._listener:
            self._accept_some()
        elif key.fileobj is self._wake_r:
            self._drain_wake()
            for cand in [c for c in self._waiting.values() if c.has_packet]:
                self._decide(cand)
        elif isinstance(key.data, Candidate) and self._waiting.get(key.data.conn) is key.data:
            self._read(key.data)

    def _timeout(self) -> float:
        """Until the nearest deadline (at most a second, so ``stop`` is never slow)."""
        now = self._clock()
        nearest = now + 1.0
        for cand in self._waiting.values():
            nearest = min(nearest, cand.deadline(self.limits))
        if self._paused_until is not None:
            nearest = min(nearest, self._paused_until)
        return max(0.0, nearest - now)

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    # --- accepting ----------------------------------------------------------------------------------
    def _accept_some(self) -> None:
        """Accept what the backlog holds (a bounded number per round, so reads go on too)."""
        for _ in range(4 * self.limits.waiting):
            try:
                conn, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if self._stopping.is_set() or not self._accept_failed(exc):
                    return
                continue
            self._admit_new(conn, peer_name(addr))

    def _accept_failed(self, exc: OSError) -> bool:
        """After a failed accept(): True to try again at once (room was made)."""
        if exc.errno in OUT_OF_RESOURCES:
            if self._drop_oldest("dropped a waiting connection: out of file descriptors"):
                return True
            self._pause_accepting()
            return False
        if exc.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):  # the listener is gone
            self._stopping.set()
            return False
        if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):  # that one is gone
            return True
        self._pause_accepting(exc.strerror or str(exc))  # unknown: retry later, never spin
        return False

    def _pause_accepting(self, why: str = "out of file descriptors") -> None:
        if self._paused_until is None:
            self._selector.unregister(self._listener)
        self._paused_until = self._clock() + self.limits.backoff
        self._count(f"accept paused: {why}")

    def _maybe_resume_accepting(self, now: float) -> None:
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ)

    def _admit_new(self, conn: socket.socket, peer: str) -> None:
        if len(self._waiting) >= self.limits.waiting:
            self._drop_oldest("dropped the oldest waiting connection: too many waiting")
        conn.setblocking(False)
        now = self._clock()
        cand = Candidate(conn, peer, now, now)
        self._keep(cand)
        self._read(cand)  # gdb's first packet is usually there already

    def _keep(self, cand: Candidate) -> None:
        self._waiting[cand.conn] = cand
        self._selector.register(cand.conn, selectors.EVENT_READ, cand)

    # --- candidates ---------------------------------------------------------------------------------
    def _read(self, cand: Candidate) -> None:
        try:
            data = cand.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._discard(cand)
            return
        cand.heard = self._clock()
        cand.received += data
        if not cand.has_packet:
            cand.has_packet = any(ev is rsp.Event.PACKET for ev, _ in cand.decoder.feed(data))
            if not cand.has_packet and len(cand.received) > MAX_PREFIX:
                self._discard(cand)
                self._count("dropped a connection: no packet in its first bytes")
                return
        if cand.has_packet:
            self._decide(cand)

    def _decide(self, cand: Candidate) -> None:
        """Offer a candidate with a packet to the server. It leaves the selector first: once
        admitted, the socket is the session's alone."""
        self._forget(cand)
        try:
            verdict = self._offer(cand)
        except Exception as exc:  # noqa: BLE001 - one connection's trouble, not the lobby's
            self._log(f"lobby: {cand.peer}: {type(exc).__name__}: {exc}; dropped")
            close(cand.conn)
            return
        if verdict is Verdict.REFUSE:
            self._refuse(cand)
        elif verdict is Verdict.WAIT:
            self._keep(cand)

    def _expire(self, now: float) -> None:
        for cand in [c for c in self._waiting.values() if now >= c.deadline(self.limits)]:
            if cand.has_packet:  # the seat was not vacated in time
                self._refuse(cand)
            else:
                self._discard(cand)
                self._count("dropped a connection: no packet before the deadline")

    def _drop_oldest(self, reason: str) -> bool:
        """Close the oldest connection that has not sent a packet (else the oldest at all)."""
        if not self._waiting:
            return False
        silent = [c for c in self._waiting.values() if not c.has_packet]
        self._discard(silent[0] if silent else next(iter(self._waiting.values())))
        self._count(reason)
        return True

    def _refuse(self, cand: Candidate) -> None:
        try:
            cand.conn.send(self._refusal)
        except OSError:
            pass
        self._discard(cand)

    def _discard(self, cand: Candidate) -> None:
        self._forget(cand)
        close(cand.conn)

    def _forget(self, cand: Candidate) -> None:
        if self._waiting.pop(cand.conn, None) is not None:
            try:
                self._selector.unregister(cand.conn)
            except (KeyError, ValueError):
                pass

    # --- the log --------------------------------------------------------------------------------------
    def _count(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def _report(self, now: float) -> None:
        """One line per reason every REPORT_EVERY seconds at most, with a count."""
        if not self._dropped or now < self._next_report:
            return
        for reason, n in self._dropped.items():
            self._log(f"{reason} ({n}x)")
        self._dropped.clear()
        self._next_report = now + REPORT_EVERY
