"""The ``vmi`` prefix command, its settings, and the plumbing every subcommand shares.

Subcommands are one class each whose docstring is the help. User errors become ``gdb.GdbError``
(one line, no traceback) unless ``set vmi debug on``. Output goes through ``write``: one
``gdb.write`` per view, at gdb's width, coloured only for a terminal, and padded so that gdb's
pager (which prompts per line) never splits a table row across two pages.
"""

from __future__ import annotations

import argparse
import functools
import os
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gdb

from vmigdb import resources
from vmigdb.abi import VmiCall
from vmigdb.commands import target
from vmigdb.errors import VmiError
from vmigdb.views.console import paginate, render_text


class VmiPrefix(gdb.Command):
    """Inspect a VMI-paravirtualized guest: its ROM, its ROM calls, patch sites and PTE batches.

Subcommands: vmi rom, vmi symbols, vmi trace, vmi profile, vmi sites, vmi pvops, vmi decode,
vmi batches, vmi batch, vmi pte. Settings: show vmi. Use "help vmi SUBCOMMAND" for each."""

    def __init__(self) -> None:
        super().__init__("vmi", gdb.COMMAND_USER, gdb.COMPLETE_COMMAND, prefix=True)


class VmiSetPrefix(gdb.Command):
    """vmigdb settings."""

    def __init__(self) -> None:
        super().__init__("set vmi", gdb.COMMAND_DATA, prefix=True)


class VmiShowPrefix(gdb.Command):
    """vmigdb settings: "show vmi" lists them all with their values."""

    def __init__(self) -> None:
        super().__init__("show vmi", gdb.COMMAND_DATA, prefix=True)

    def invoke(self, arg: str, from_tty: bool) -> None:
        if arg.strip():
            raise gdb.GdbError(f'Undefined show vmi command: "{arg.strip()}".  '
                               'Try "help show vmi".')
        for name in _settings:
            text = gdb.execute(f"show vmi {name}", to_string=True).strip()
            gdb.write(f"vmi {name}:  {text}\n")


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


def default_rom_elf() -> str:
    """The ROM's ELF vmigdb ships or its checkout built (``vmigdb.resources``), or ''."""
    path = resources.rom_elf()
    return str(path) if path.is_file() else ""


class RomElfParameter(gdb.Parameter):
    """The VMI ROM's ELF file (its symbols and unwind information, linked at offset 0). vmigdb
loads it at the address the guest calls the ROM (`vmi symbols`, or on each stop with `set vmi
rom-symbols on`), so `bt` walks out of a ROM call and `break vmi_SetPxE` works. Default: the
vmi_rom.elf vmigdb ships (an installed package) or its checkout built (build/)."""

    set_doc = "Set the VMI ROM's ELF file (symbols and unwind information)."
    show_doc = "Show the VMI ROM's ELF file."

    def __init__(self) -> None:
        super().__init__("vmi rom-elf", gdb.COMMAND_DATA, gdb.PARAM_OPTIONAL_FILENAME)
        self.value = default_rom_elf()

    def get_show_string(self, svalue: str) -> str:
        return f"the VMI ROM's ELF is {svalue!r}." if svalue else "no VMI ROM ELF is set."


class RomSymbolsParameter(gdb.Parameter):
    """Load the ROM's symbols automatically: whenever the target stops, if the ROM the guest
calls sits somewhere else than where its symbols are loaded, vmigdb loads `vmi rom-elf` there
(one memory read per stop to follow the guest's ROM pointer)."""

    set_doc = "Set whether vmigdb loads the ROM's symbols at the live ROM on each stop."
    show_doc = "Show whether vmigdb loads the ROM's symbols at the live ROM on each stop."

    def __init__(self) -> None:
        super().__init__("vmi rom-symbols", gdb.COMMAND_DATA, gdb.PARAM_BOOLEAN)
        self.value = True

    def get_show_string(self, svalue: str) -> str:
        return f"automatic ROM symbols are {svalue}."


_debug: DebugParameter | None = None
_color: ColorParameter | None = None
_settings: dict[str, gdb.Parameter] = {}


def setting(name: str) -> Any:
    """The value of ``set vmi NAME`` (None before registration)."""
    p = _settings.get(name)
    return p.value if p is not None else None


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

    def count(self, text: str | int, what: str = "N") -> int:
        """A positive count (rows, instructions), evaluated by gdb; 0 and negatives are errors."""
        n = text if isinstance(text, int) else self.number(text)
        if n >= 1 << 63:
            n -= 1 << 64  # gdb's two's complement for a negative number
        if n < 1:
            self.error(f"{what} must be at least 1, not {n}")
        return n

    def call_name(self, name: str) -> VmiCall:
        """A VMI call as abi.py spells it; anything else fails with the usage."""
        if name not in VmiCall.__members__:
            self.error(f"unknown VMI call {name!r} (names as abi.py spells them, e.g. SetPxE)")
        return VmiCall[name]


def parse_number(text: str) -> int:
    """A number or expression evaluated by gdb (``$esp+4``, ``&pgdir``, ``0xc0000``); a function
    or array name means its address (``vmi decode native_save_fl``)."""
    try:
        value = gdb.parse_and_eval(text)
        if value.type.strip_typedefs().code in (gdb.TYPE_CODE_FUNC, gdb.TYPE_CODE_ARRAY):
            value = value.address
        return int(value) & 0xFFFFFFFFFFFFFFFF
    except gdb.error as e:
        raise UsageError(f"cannot evaluate {text!r}: {e}") from None


# --- completion ------------------------------------------------------------------------------------


def complete_options(parser: argparse.ArgumentParser, text: str, word: str, *,
                     calls: Iterable[str] = (),
                     choices: Mapping[str, Callable[[], Iterable[str]]] | None = None,
                     files: Iterable[str] = (),
                     words: Iterable[str] = (), expression: bool = False) -> object:
    """Completions for a ``vmi`` command line: option names after ``-``, VMI call names after
    an option of ``calls`` (comma lists too), ``choices[option]()`` after such an option, file
    names after an option of ``files``, ``words`` (subcommands) in first position, and
    otherwise gdb's symbol completer when the command takes an expression. ``text`` is the line
    so far, ``word`` the part gdb replaces (gdb breaks words at ``-`` and ``,`` too, so
    candidates are cut to fit it)."""
    tokens = text.split()
    current = "" if not tokens or text[-1:].isspace() else tokens[-1]
    previous = tokens[-1] if current == "" and tokens else (tokens[-2] if len(tokens) > 1
                                                          else "")
    candidates: list[str] = []
    if previous in set(files):
        return gdb.COMPLETE_FILENAME
    if previous in set(calls):
        head, _, part = current.rpartition(",")
        prefix = f"{head}," if head else ""
        candidates = [f"{prefix}{c}" for c in VmiCall.__members__ if c.startswith(part)]
    elif choices and previous in choices:
        candidates = [c for c in choices[previous]() if c.startswith(current)]
    elif current.startswith("-"):
        candidates = sorted(o for action in parser._actions for o in action.option_strings
                            if o.startswith("--") and o.startswith(current))
    elif len(tokens) - (0 if current == "" else 1) == 0 and words:
        candidates = [w for w in words if w.startswith(current)]
        if expression and not candidates:
            return gdb.COMPLETE_SYMBOL
    elif expression:
        return gdb.COMPLETE_SYMBOL
    cut = len(current) - len(word)
    return [c[cut:] for c in candidates if c.startswith(current[:cut])] if cut >= 0 else candidates


#: Whether the command running now was typed at gdb's terminal (its from_tty).
_from_tty = False


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn every failure of a command into one gdb error line (tracebacks with vmi debug)."""

    @functools.wraps(fn)
    def wrapper(self: gdb.Command, arg: str, from_tty: bool) -> None:
        global _from_tty
        _from_tty = bool(from_tty)
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
            if target.gone(e):
                raise gdb.GdbError(f"vmi: the target is gone ({msg})") from None
            raise gdb.GdbError(msg) from None
        except KeyboardInterrupt:
            raise gdb.GdbError("Quit") from None  # `q` at gdb's pager prompt
        except Exception as e:  # noqa: BLE001 - the edge: one line unless debugging
            if _debug is not None and _debug.value:
                traceback.print_exc()
            raise gdb.GdbError(f"vmi: internal error: {type(e).__name__}: {e}") from None
        finally:
            _from_tty = False

    return wrapper


def _parameter(name: str) -> Any:
    try:
        return gdb.parameter(name)
    except gdb.error:
        return None


def _redirected() -> bool:
    """True while gdb writes to a pipe or a string (``pipe vmi ... | cat``, ``to_string``): it
    then runs the command as in batch mode, with unlimited width and height, and does not
    style; a terminal session has a width. (A terminal set to ``width 0`` and ``height 0``
    reads the same; ``set vmi color on`` still colours it.)"""
    return _parameter("width") is None and _parameter("height") is None


def use_color() -> bool:
    """NO_COLOR wins; then ``set vmi color``; auto = gdb styles, writes to a terminal, and the
    output is not redirected (``pipe``)."""
    if os.environ.get("NO_COLOR"):
        return False
    mode = _color.value if _color is not None else "auto"
    if mode != "auto":
        return mode == "on"
    styled = bool(_parameter("style enabled"))
    return styled and _is_tty() and not _redirected()


def _width() -> int:
    """gdb's width less one (gdb counts a line of exactly its width as two lines, which would
    throw its pager off); unlimited (batch, pipe): $COLUMNS, the terminal's width, or 100."""
    w = _parameter("width")
    if w and int(w) > 20:
        return int(w) - 1
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 20:
        return columns
    try:
        return max(os.get_terminal_size(1).columns - 1, 21)
    except OSError:
        return 100


def _page() -> int | None:
    """Lines gdb's pager shows before it prompts, when it will page this command's output:
    pagination on, a height, a command typed at the terminal, output not redirected."""
    if not _from_tty or _redirected() or not _parameter("pagination"):
        return None
    height = _parameter("height")
    if not height or int(height) < 3:
        return None
    return int(height) - 1


def write(renderable: Any) -> None:
    """One gdb.write per view, coloured as ``use_color`` says, at gdb's width, with whole table
    rows per page of gdb's pager (``views.console.paginate``; the command's output is taken to
    start a page, which holds for a command typed at the prompt)."""
    text = render_text(renderable, width=_width(), color=use_color())
    page = _page()
    if page:
        width = _parameter("width")
        text = paginate(text, page, width=int(width) if width else None)
    gdb.write(text)


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
    _settings.update({"color": _color, "debug": _debug, "rom-elf": RomElfParameter(),
                      "rom-symbols": RomSymbolsParameter()})
    from vmigdb.commands import (
        batches,
        mi,
        pte,
        pvops,
        rom,
        romsyms,
        sites,
        trace,
        tracesource,
    )

    for command in (rom.VmiRom, romsyms.VmiSymbols, sites.VmiSites, pvops.VmiPvops,
                    sites.VmiDecode, trace.VmiTrace, trace.VmiProfile, batches.VmiBatches,
                    batches.VmiBatch, pte.VmiPte):
        command()
    tracesource.connect_events()
    romsyms.connect_events()
    mi.register()
