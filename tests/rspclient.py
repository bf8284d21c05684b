"""A raw RSP client for tests that speak to a stub below gdb: malformed packets, races,
refusals, reconnects. gdb itself is driven through vmigdb.mi; this is for what gdb never
sends."""

from __future__ import annotations

import socket
import struct
import time
from collections import deque

from vmigdb.stub import rsp

#: The qSupported a gdb opens with (its features are not what the stub's answer depends on).
QSUPPORTED = b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;xmlRegisters=i386"


class RspClient:
    """Frames packets, acks replies in ack mode (as gdb starts), skips stray acks and keeps
    ``O`` console output apart in ``console``."""

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = rsp.Decoder()
        self.events: deque[tuple[rsp.Event, bytes]] = deque()
        self.no_ack = False
        self.console = ""

    def event(self) -> tuple[rsp.Event, bytes]:
        while not self.events:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.events.extend(self.decoder.feed(data))
        return self.events.popleft()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ack(self) -> None:
        """Wait for the stub's ``+`` for the packet just sent (it comes before a run starts)."""
        ev, _ = self.event()
        assert ev is rsp.Event.ACK, ev

    def reply(self) -> bytes:
        """The next packet (acked in ack mode); ``O`` packets go to ``console``."""
        while True:
            ev, payload = self.event()
            if ev is not rsp.Event.PACKET:
                continue
            if not self.no_ack:
                self.sock.sendall(b"+")
            if payload.startswith(b"O") and payload != b"OK":
                self.console += bytes.fromhex(payload[1:].decode()).decode()
                continue
            return payload

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(rsp.frame(payload))
        return self.reply()

    def monitor(self, line: str) -> tuple[bytes, str]:
        """``monitor LINE``: the final reply and the console text before it."""
        self.console = ""
        reply = self.ask(b"qRcmd," + line.encode().hex().encode())
        return reply, self.console

    def handshake(self) -> bytes:
        """gdb's opening: ``+`` then qSupported; the stub's answer (features or a refusal)."""
        self.sock.sendall(b"+" + rsp.frame(QSUPPORTED))
        return self.reply()

    def resume(self, payload: bytes = b"c") -> None:
        self.sock.sendall(rsp.frame(payload))
        self.ack()

    def closed(self, within: float = 10.0) -> bool:
        """True once the server closed the connection (polled until ``within`` s)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                continue
        return False

    def close(self) -> None:
        """Close without ``D`` (FIN)."""
        self.sock.close()

    def reset(self) -> None:
        """Close without ``D`` by RST, as a killed gdb's kernel may."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
