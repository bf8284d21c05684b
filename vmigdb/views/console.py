"""Consoles for the edges: where views are printed decides colour and width, never the view."""

from __future__ import annotations

import os
from typing import IO

from rich.console import Console


def make_console(file: IO[str] | None = None, *, width: int | None = None,
                 color: bool | None = None) -> Console:
    """A console that follows NO_COLOR and the terminal; plain text when not a terminal.

    ``color=None`` decides from the stream; ``True``/``False`` force it (gdb's ``set style``).
    """
    if os.environ.get("NO_COLOR"):
        color = False
    return Console(
        file=file,
        width=width,
        force_terminal=True if color else None,
        no_color=color is False,
        color_system="auto" if color is not False else None,
        highlight=False,
        soft_wrap=False,
    )


def render_text(renderable: object, *, width: int = 100, color: bool = False) -> str:
    """Render to a string (tests, gdb's single ``gdb.write``, monitor replies)."""
    console = Console(width=width, record=True, force_terminal=color, no_color=not color,
                      color_system="truecolor" if color else None, highlight=False,
                      file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the console
    console.print(renderable)
    text = console.export_text(styles=color)
    console.file.close()
    return text
