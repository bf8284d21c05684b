"""COM1's input from the host: bytes from a file descriptor (vmigdb's stdin), fed to the UART
between runs, as QEMU's ``-serial stdio`` does.

The bytes go in whenever the UART has room, at the next pause of the run (a timer interrupt
stops it every virtual millisecond or so, and a halted CPU waits here). A terminal paces the
guest's idle time to real time, so a shell waiting for a key does not race through virtual
seconds; a pipe does not. The terminal stays in its normal (line) mode: Ctrl-C still ends
vmigdb. Input makes a run depend on when it arrives: runs repeat exactly only without it.
"""

from __future__ import annotations

import os
import select
import stat


class SerialInput:
    """Bytes waiting for COM1's receiver, read from ``fd`` without ever blocking a run."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.interactive = os.isatty(fd)
        self.pending = bytearray()
        self.eof = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)

    @staticmethod
    def usable(fd: int) -> bool:
        """A terminal or a pipe (not /dev/null, not a file: those are not a console)."""
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        return os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)

    def _read_ready(self, timeout: float | None) -> bool:
        """Read what ``fd`` has (waiting up to ``timeout``); False if woken or timed out."""
        if self.eof:
            if timeout is None:
                return False  # nothing will ever come: the caller reports the halt
            select.select([self._wake_r], [], [], timeout)
            self._drain_wake()
            return False
        ready, _, _ = select.select([self.fd, self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            self._drain_wake()
        if self.fd not in ready:
            return False
        data = os.read(self.fd, 4096)
        if not data:
            self.eof = True
            return False
        self.pending += data
        return True

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def poll(self, feed) -> None:  # feed: Callable[[bytes], int]
        """Take what has arrived and give the UART as much as it accepts now."""
        if not self.eof:
            self._read_ready(0)
        if self.pending:
            taken = feed(bytes(self.pending))
            del self.pending[:taken]

    def wait(self, seconds: float | None) -> bool:
        """While the CPU is halted: wait for input (for ever if ``seconds`` is None, up to
        ``seconds`` on a terminal, not at all on a pipe); True if input is there to feed."""
        if self.pending:
            return True
        if seconds is not None and not self.interactive:
            return False
        return self._read_ready(seconds)

    def wake(self) -> None:
        """From another thread (Ctrl-C from gdb): end a wait."""
        os.write(self._wake_w, b"!")

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
