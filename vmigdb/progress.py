"""Progress for the streaming commands (report, diff, export): a rich bar on stderr, shown only
when the work has taken more than a second and stderr is a terminal.

Why the delay: most traces take a fraction of a second, and a bar that flashes for 100 ms is
noise; a Linux boot takes seconds and deserves one. Why only on a terminal: a pipe or a log file
must receive no control sequences at all. The bar is transient: it goes away when the work ends,
so the command's own output is what stays on the screen.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

#: Seconds of work before the bar appears.
DELAY = 1.0


def wanted(stream: IO[str] | None = None) -> bool:
    """Whether a bar may be drawn on ``stream`` (stderr by default): only on a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A byte-counting bar: ``update(done)`` with the bytes read so far out of ``total``.

    ``console`` forces a console (tests); by default stderr, and nothing at all when stderr is
    not a terminal. Use it as a context manager so the bar is gone before the command prints."""

    def __init__(self, description: str, total: int, *, console: Console | None = None,
                 delay: float = DELAY) -> None:
        self._enabled = console is not None or wanted()
        self._delay = delay
        self._t0 = time.monotonic()
        self._started = False
        self._bar: RichProgress | None = None
        if self._enabled:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                DownloadColumn(), TimeRemainingColumn(),
                console=console or Console(stderr=True), transient=True)
            self._task = self._bar.add_task(description, total=max(total, 1))

    def update(self, done: int, total: int | None = None) -> None:
        """The work so far (and a new total, when it became known)."""
        if self._bar is None:
            return
        self._bar.update(self._task, completed=done,
                         **({"total": max(total, 1)} if total is not None else {}))
        if not self._started and time.monotonic() - self._t0 >= self._delay:
            self._started = True
            self._bar.start()

    @property
    def shown(self) -> bool:
        return self._started

    def close(self) -> None:
        if self._bar is not None and self._started:
            self._bar.stop()
        self._started = False
        self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
