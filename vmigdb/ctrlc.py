"""Ctrl-C at the terminal for ``vmigdb run`` and ``serve``: stop the machine, never raise inside it.

The machine runs inside Unicorn (C), calling back into Python through ctypes and cffi. Python
raises KeyboardInterrupt only when the main thread next runs Python code: while a guest spins
that is never, and inside a callback the exception is swallowed ("Exception ignored on calling
ctypes callback function"). So SIGINT gets a handler that does nothing in the main thread, and
Python's C-level handler writes the signal to a wake-up pipe at once (``signal.set_wakeup_fd``),
where a thread reads it and calls ``stop`` (``Machine.interrupt``: the C block hook stops the run
at the next block boundary). A second Ctrl-C ends the process at once, should the first not.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class CtrlC:
    """``with CtrlC(stop) as ctrl_c:`` calls ``stop()`` from a helper thread on the first SIGINT;
    ``ctrl_c.pressed`` tells the caller afterwards. Outside the main thread it does nothing."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.pressed = False
        self._active = threading.current_thread() is threading.main_thread()
        self._closing = False

    def __enter__(self) -> Self:
        if not self._active:
            return self
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old_handler = signal.signal(signal.SIGINT, _ignore)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="vmigdb-ctrl-c", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while True:
            data = os.read(self._r, 64)
            if self._closing or not data:
                return
            if signal.SIGINT not in data:
                continue
            if self.pressed:  # the first did not end it: go now
                os.write(2, b"vmigdb: interrupted again: exiting at once\n")
                os._exit(EXIT_INTERRUPTED)
            self.pressed = True
            self._stop()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._active:
            return
        signal.set_wakeup_fd(self._old_fd)
        signal.signal(signal.SIGINT, self._old_handler)
        self._closing = True
        os.write(self._w, b"\0")  # not a signal number: wakes the thread to end
        self._thread.join(5)
        os.close(self._r)
        os.close(self._w)


def _ignore(signum: int, frame: object) -> None:
    """The Python-level SIGINT handler: the wake-up pipe's thread does the work."""
