"""The ``vmi`` prefix command, its settings, and the plumbing every subcommand shares.

Subcommands are one class each whose docstring is the help. User errors become ``gdb.GdbError``
(one line, no traceback) unless ``set vmi debug on``.
"""

from __future__ import annotations

import argparse
import functools
import os
import traceback
from collections.abc import Callable
from typing import Any

import gdb

from vmigdb.errors import VmiError
from vmigdb.views.console import render_text


class VmiPrefix(gdb.Command):
    """Inspect a VMI-paravirtualized guest: its ROM, its ROM calls, patch sites and PTE batches.

Subcommands: vmi rom, vmi trace, vmi sites, vmi decode, vmi batches, vmi batch, vmi pte.
Use "help vmi SUBCOMMAND" for each."""

    def __init__(self) -> None:
        super().__init__("vmi", gdb.COMMAND_USER, gdb.COMPLETE_COMMAND, prefix=True)


class VmiSetPrefix(gdb.Command):
    """vmigdb settings."""

    def __init__(self) -> None:
        super().__init__("set vmi", gdb.COMMAND_DATA, prefix=True)


class VmiShowPrefix(gdb.Command):
    """vmigdb settings."""

    def __init__(self) -> None:
        super().__init__("show vmi", gdb.COMMAND_DATA, prefix=True)


class DebugParameter(gdb.Parameter):
    """Show Python tracebacks from vmi commands (for vmigdb developers)."""

    set_doc = "Set whether vmi commands show Python tracebacks."
    show_doc = "Show whether vmi commands show Python tracebacks."

    def __init__(self) -> None:
        super().__init__("vmi debug", gdb.COMMAND_DATA, gdb.PARAM_BOOLEAN)
        self.value = False

    def get_show_string(self, svalue: str) -> str:
        return f"vmi debug is {svalue}."


class ColorParameter(gdb.Parameter):
    """Colour in vmi views: auto follows gdb's `set style enabled` on a terminal; on forces
ANSI colour (a pager or `less -R` that shows it); off never. NO_COLOR in the environment wins."""

    set_doc = "Set when vmi views use colour (auto, on, off)."
    show_doc = "Show when vmi views use colour."

    def __init__(self) -> None:
        super().__init__("vmi color", gdb.COMMAND_DATA, gdb.PARAM_ENUM, ["auto", "on", "off"])
        self.value = "auto"

    def get_show_string(self, svalue: str) -> str:
        return f"vmi color is {svalue}."


_debug: DebugParameter | None = None
_color: ColorParameter | None = None


class UsageError(VmiError):
    """Wrong arguments: the message is the command's usage."""


class ArgParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so gdb shows one line and keeps running."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.format_usage().strip()}\n{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UsageError(message or self.format_usage().strip())

    def number(self, text: str) -> int:
        """``parse_number``, failing with this command's usage when ``text`` does not evaluate."""
        try:
            return parse_number(text)
        except UsageError as e:
            self.error(str(e))
            raise  # not reached: error() raises


def parse_number(text: str) -> int:
    """A number or expression evaluated by gdb (``$esp+4``, ``&pgdir``, ``0xc0000``)."""
    try:
        return int(gdb.parse_and_eval(text)) & 0xFFFFFFFFFFFFFFFF
    except gdb.error as e:
        raise UsageError(f"cannot evaluate {text!r}: {e}") from None


#: gdb's words for a target that went away under a command.
_GONE = ("Remote connection closed", "Remote communication error", "Target disconnected",
         "not being run", "No registers")


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn every failure of a command into one gdb error line (tracebacks with vmi debug)."""

    @functools.wraps(fn)
    def wrapper(self: gdb.Command, arg: str, from_tty: bool) -> None:
        try:
            fn(self, arg, from_tty)
        except gdb.GdbError:
            raise
        except (VmiError, gdb.MemoryError) as e:
            if _debug is not None and _debug.value:
                traceback.print_exc()
            raise gdb.GdbError(str(e)) from None
        except gdb.error as e:
            msg = str(e)
            if any(m in msg for m in _GONE):
                raise gdb.GdbError(f"vmi: the target is gone ({msg})") from None
            raise gdb.GdbError(msg) from None
        except Exception as e:  # noqa: BLE001 - the edge: one line unless debugging
            if _debug is not None and _debug.value:
                traceback.print_exc()
            raise gdb.GdbError(f"vmi: internal error: {type(e).__name__}: {e}") from None

    return wrapper


def use_color() -> bool:
    """NO_COLOR wins; then ``set vmi color``; auto = gdb styles and writes to a terminal."""
    if os.environ.get("NO_COLOR"):
        return False
    mode = _color.value if _color is not None else "auto"
    if mode != "auto":
        return mode == "on"
    try:
        styled = bool(gdb.parameter("style enabled"))
    except gdb.error:
        styled = False
    return styled and _is_tty()


def _width() -> int:
    try:
        w = gdb.parameter("width")
    except gdb.error:
        w = None
    return int(w) if w and int(w) > 20 else 100


def write(renderable: Any) -> None:
    """One gdb.write per view, coloured as ``use_color`` says, at gdb's width."""
    gdb.write(render_text(renderable, width=_width(), color=use_color()))


def _is_tty() -> bool:
    try:
        return os.isatty(1)
    except OSError:
        return False


def register() -> None:
    """Create the prefix, the settings and every subcommand."""
    global _debug, _color
    VmiPrefix()
    VmiSetPrefix()
    VmiShowPrefix()
    _debug = DebugParameter()
    _color = ColorParameter()
    from vmigdb.commands import batches, mi, pte, rom, sites, trace, tracesource

    for command in (rom.VmiRom, sites.VmiSites, sites.VmiDecode, trace.VmiTrace,
                    batches.VmiBatches, batches.VmiBatch, pte.VmiPte):
        command()
    tracesource.connect_events()
    mi.register()
