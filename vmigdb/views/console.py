"""Consoles for the edges: where views are printed decides colour and width, never the view.

Also the two layout rules every view follows, so output reads at 80 columns as well as at 200:

- addresses and hex values are never cut: they sit in ``no_wrap`` columns (``add_hex_column``), or
  in prose columns whose minimum width is the longest hex-bearing word of their cells
  (``fit_columns``), so rich wraps the prose at spaces and never folds inside ``0xc00c0640``;
- a table row may wrap over several lines, and a pager must not split it: ``row_groups`` finds
  the lines of each row in rendered text and ``paginate`` moves a row that would straddle a
  page boundary to the next page (gdb 13 prompts per line, not per write).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import IO

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: A hex number as views print them (``0xc00c0640``), in any word.
HEX = re.compile(r"0x[0-9a-fA-F]+")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: Vertical rules rich draws at the left edge of a table's header and body lines.
_RULES = "│┃|║"


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


# --- columns that never cut a hex value -----------------------------------------------------------


def add_hex_column(table: Table, header: str = "", *, justify: str = "left") -> None:
    """A column of addresses or hex values: never wrapped (``fit_columns`` makes it as wide as
    its widest value)."""
    table.add_column(header, no_wrap=True, justify=justify)  # type: ignore[arg-type]


def add_prose_column(table: Table, header: str = "") -> None:
    """A column of words that wraps at spaces; ``fit_columns`` keeps its hex words whole."""
    table.add_column(header, overflow="fold")


#: A word that is a number (``3954``, ``65-128``, ``1.5%``), possibly bracketed.
_NUMBER = re.compile(r"^[(\[]?\d[\d.,:%/-]*[)\];,]*$")


def longest_value_word(cells: Iterable[str | Text]) -> int:
    """The length of the longest space-separated word that holds a hex value or is a number:
    the words a squeezed table must never cut (a symbol with an offset, ``func+120``, may
    fold like any other long word)."""
    best = 0
    for cell in cells:
        for word in str(cell).split():
            if HEX.search(word) or _NUMBER.match(word):
                best = max(best, len(word))
    return best


def fit_columns(table: Table) -> Table:
    """Keep every value whole when the table is squeezed: a wrapping column gets a minimum
    width of its longest number-bearing word (rich then wraps the prose around it, and folds
    only long plain words), a no_wrap column the width of its longest cell. Call it after the
    rows are added; returns the table."""
    for column in table.columns:
        cells = [str(c) for c in column.cells if isinstance(c, (str, Text))]
        if column.no_wrap:
            need = max((len(c) for c in cells), default=0)
        else:
            need = longest_value_word(cells)
            if column.overflow == "ellipsis":
                column.overflow = "fold"
        if need:
            column.min_width = max(column.min_width or 0, need)
    return table


class ByWidth:
    """A renderable that picks its layout by the width it is rendered at: ``narrow()`` below
    ``at`` columns, ``wide()`` from there. Views stay pure (no console in sight) and one view
    reads at 80 columns and at 200."""

    def __init__(self, at: int, narrow: Callable[[], RenderableType],
                 wide: Callable[[], RenderableType]) -> None:
        self.at = at
        self.narrow = narrow
        self.wide = wide

    def _pick(self, width: int) -> RenderableType:
        return self.wide() if width >= self.at else self.narrow()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._pick(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self._pick(options.max_width))


# --- paging whole rows ------------------------------------------------------------------------------


def plain(line: str) -> str:
    """A rendered line without its ANSI styles."""
    return _ANSI.sub("", line)


def _continues_row(line: str) -> bool:
    """True for a table line that continues the row above it: it starts with a vertical rule
    and its first cell is blank (views put a no_wrap identifier in the first column, so the
    first line of a row always has one)."""
    text = plain(line).rstrip("\n")
    if not text or text[0] not in _RULES:
        return False
    end = next((i for i in range(1, len(text)) if text[i] in _RULES), len(text))
    return not text[1:end].strip()


def row_groups(lines: Sequence[str]) -> list[list[str]]:
    """The lines of rendered text grouped so that each table row (with its wrapped
    continuation lines) is one group; every other line is a group of its own."""
    groups: list[list[str]] = []
    for line in lines:
        if groups and _continues_row(line):
            groups[-1].append(line)
        else:
            groups.append([line])
    return groups


def line_cost(line: str, width: int | None) -> int:
    """How many lines gdb's pager counts for one output line. gdb 13 counts bytes, not
    characters (a table rule of 79 box-drawing characters is 237 bytes of UTF-8), skips ANSI
    styles, and counts one more line each time the count reaches ``width`` (then the newline),
    prompting there even in the middle of a line."""
    if not width:
        return 1
    return len(plain(line).rstrip("\n").encode()) // width + 1


def paginate(text: str, page: int, used: int = 0, width: int | None = None) -> str:
    """``text`` with blank lines added so that a pager showing ``page`` lines at a time
    (counting as gdb does at ``width`` columns), with ``used`` lines of the current page
    already shown, never prompts inside a table row: a row that would straddle the boundary
    is moved to the next page. A row taller than a page is left as it is (it fits nowhere)."""
    if page < 2:
        return text
    out: list[str] = []
    for group in row_groups(text.splitlines(keepends=True)):
        k = sum(line_cost(line, width) for line in group)
        if used and used + k > page and k <= page:
            out.append("\n" * (page - used))
            used = 0
        out.extend(group)
        used = (used + k) % page
    return "".join(out)
