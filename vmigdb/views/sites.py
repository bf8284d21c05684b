"""The redirection map: patch sites and ROM entries, as rich renderables.

``vmi sites`` pairs every ``.parainstructions`` record with its pv-op, what Linux's rule makes of
it with the live ROM (``vmigdb.sites.expect``), the native instructions the file holds and what
memory holds now, and the verdict; ``vmi rom`` lists each ROM entry with its first instructions
and the native instruction it stands for; ``vmi decode`` explains one of either. Every table
keeps addresses whole and wraps its prose (``views.console``), so it reads at 80 columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi, decode
from vmigdb.abi import VmiCall
from vmigdb.rominfo import RomInfo
from vmigdb.sites import Expectation, Site, SiteState, describe_clobbers, describe_insns
from vmigdb.views.console import ByWidth, add_hex_column, add_prose_column, fit_columns

#: Below this width the sites table folds its columns into fewer, taller cells.
WIDE_SITES = 110

#: The verdicts ``sites.judge`` gives, and how each is shown.
_VERDICT_STYLE = {"ok": "green", "WRONG": "bold red", "freed": "dim", "?": "yellow"}


@dataclass(frozen=True)
class SiteRow:
    """One site as ``vmi sites`` shows it: the record, its symbol, the file's instructions, what
    memory holds, what Linux's rule expects, and the verdict (``sites.judge``)."""

    site: Site
    symbol: str
    original: tuple[decode.Insn, ...]
    state: SiteState
    expected: Expectation
    verdict: str


def _now(state: SiteState) -> Text:
    text = describe_insns(state.insns)
    if state.kind in ("call", "jump") and state.target_call is not None:
        text += f" ({state.target_call.name})"
    if state.kind == "native":
        return Text("unchanged", style="dim")
    if state.kind == "modified":
        return Text(text, style="red")
    return Text(text)


def _verdict(verdict: str) -> Text:
    return Text(verdict, style=_VERDICT_STYLE.get(verdict, ""))


def _summary(rows: Sequence[SiteRow]) -> Text:
    kinds = Counter(r.state.kind for r in rows)
    verdicts = Counter(r.verdict for r in rows)
    patched = sum(1 for r in rows if r.expected.patched)
    text = (f"sites={len(rows)} " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
            + f"; slots vmi_patch rewrites: {patched}; Linux's rule: "
            + " ".join(f"{k}={verdicts[k]}" for k in ("ok", "WRONG", "freed", "?")
                       if verdicts[k] or k in ("ok", "WRONG")))
    if verdicts["freed"]:
        text += " (freed: in init text, which Linux frees after boot)"
    return Text(text)


def _narrow(rows: Sequence[SiteRow], title: str) -> Table:
    t = Table(title=title)
    t.add_column("#", justify="right", no_wrap=True)
    add_prose_column(t, "site")
    add_prose_column(t, "pv-op -> VMI call")
    add_prose_column(t, "native (ELF) -> now (memory)")
    add_hex_column(t, "")
    for n, row in enumerate(rows):
        code = Text(describe_insns(row.original) or "-")
        code.append("\n-> ")
        code.append_text(_now(row.state))
        t.add_row(str(n), Text(f"{row.site.addr:#x} {row.symbol or '-'}"),
                  Text(row.expected.describe()), code, _verdict(row.verdict))
    return fit_columns(t)


def _wide(rows: Sequence[SiteRow], title: str) -> Table:
    t = Table(title=title)
    t.add_column("#", justify="right", no_wrap=True)
    add_hex_column(t, "site")
    add_prose_column(t, "symbol")
    add_prose_column(t, "pv-op -> VMI call")
    add_hex_column(t, "len", justify="right")
    add_prose_column(t, "native (ELF)")
    add_prose_column(t, "now (memory)")
    add_hex_column(t, "")
    for n, row in enumerate(rows):
        s = row.site
        t.add_row(str(n), f"{s.addr:#x}", Text(row.symbol or "-"),
                  Text(row.expected.describe()), str(s.len),
                  Text(describe_insns(row.original) or "-"), _now(row.state),
                  _verdict(row.verdict))
    return fit_columns(t)


def render_sites(rows: Sequence[SiteRow], *, title: str = "") -> RenderableType:
    """Every patch site: where, its pv-op and what Linux's rule makes of it, the file's native
    code, what memory holds, and the verdict; then the counts."""
    title = title or f"{len(rows)} patch sites (.parainstructions)"
    table = ByWidth(WIDE_SITES, lambda: _narrow(rows, title), lambda: _wide(rows, title))
    return Group(table, _summary(rows))


def _body(image: bytes, base: int, entry: int, max_insns: int) -> list[decode.Insn]:
    off = entry - base
    return decode.disassemble_until_ret(image[off:off + 16 * max_insns], entry, max_insns)


def render_rom_entries(base: int, info: RomInfo, image: bytes, *, max_insns: int = 4,
                       symbols: Callable[[VmiCall], str] | None = None) -> RenderableType:
    """Each call the ROM implements: entry, its symbol (``symbols(call)``: the name gdb breaks
    on), relocation, first instructions, native meaning."""
    t = Table(title=f"ROM entries at {base:#x} (get_reloc answers as the call table says)")
    t.add_column("#", justify="right", no_wrap=True)
    add_prose_column(t, "VMI call")
    add_hex_column(t, "entry", justify="right")
    add_prose_column(t, "relocation")
    add_prose_column(t, "body (capstone)")
    add_prose_column(t, "native")
    for call in VmiCall:
        off = info.call_table.get(call)
        if not off:
            continue
        entry = base + off
        body = _body(image, base, entry, max_insns)
        text = "; ".join(i.text for i in body)
        if body and body[-1].mnemonic not in ("ret", "jmp", "iretd", "sysexit"):
            text += "; ..."
        spec = abi.CALLS.get(call)
        name = Text(call.name)
        if symbols is not None:
            name.append(f" {symbols(call)}", style="dim")
        t.add_row(str(int(call)), name, f"{entry:#x}", info.relocation(call).name,
                  Text(text), spec.native if spec and spec.native else "-")
    missing = [c.name for c in VmiCall if not info.call_table.get(c)]
    note = Text(f"relocation NONE (native code stays): {', '.join(missing)}" if missing
                else "every call has an entry")
    return Group(fit_columns(t), note)


def render_call_spec(call: VmiCall) -> RenderableType:
    """The ABI of one call: where each argument is, results, clobbers, native instruction."""
    spec = abi.CALLS[call]
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("", style="bold", no_wrap=True)
    add_prose_column(t, "")
    args = ", ".join(f"{a.name} in {a.loc} ({a.kind})" for a in spec.args) or "none"
    t.add_row("VMI call", f"{call.name} (#{int(call)})")
    t.add_row("arguments", Text(args))
    t.add_row("results", ", ".join(spec.results) or "none")
    t.add_row("clobbers", " ".join(f.name for f in abi.Clobbers if f in spec.clobbers
                                   and f is not abi.Clobbers.STANDARD) or "none")
    t.add_row("native", spec.native or "-")
    t.add_row("returns", "yes" if spec.returns else "no (does not return to the caller)")
    return fit_columns(t)


def render_entry(call: VmiCall, entry: int, body: Sequence[decode.Insn],
                 symbolize: Callable[[int], str] | None = None) -> RenderableType:
    """One ROM entry: its ABI and its whole body."""
    code = Table(title=f"{call.name} entry at {entry:#x}", show_header=False, box=None)
    add_hex_column(code, "addr")
    add_prose_column(code, "insn")
    add_prose_column(code, "")
    for i in body:
        code.add_row(f"{i.address:#x}", Text(i.text),
                     Text(symbolize(i.address) if symbolize else ""))
    return Group(render_call_spec(call), fit_columns(code))


def render_site(row: SiteRow, entry_body: Sequence[decode.Insn] = ()) -> RenderableType:
    """One patch site in full: the record, its pv-op and Linux's rule for it, the native code,
    the code in memory now, the verdict, and the ROM entry it reaches."""
    s = row.site
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("", style="bold", no_wrap=True)
    add_prose_column(t, "")
    t.add_row("patch site", Text(f"{s.addr:#x} {row.symbol}".rstrip()))
    t.add_row("record", Text(f"type {s.type} ({row.expected.op}), len {s.len}, clobbers "
                             f"{describe_clobbers(s.clobbers)}"))
    t.add_row("Linux's rule", Text(row.expected.describe()))
    t.add_row("native (ELF)",
              Text("\n".join(f"{i.address:#x}  {i.text}" for i in row.original) or "-"))
    t.add_row("now (memory)",
              Text("\n".join(f"{i.address:#x}  {i.text}" for i in row.state.insns)))
    t.add_row("holds", Text(_holds(row.state)))
    t.add_row("verdict", _verdict(row.verdict))
    parts: list[RenderableType] = [fit_columns(t)]
    call = row.state.target_call or row.expected.call
    if call is not None:
        parts.append(render_call_spec(call))
    if entry_body:
        parts.append(Text("ROM entry body:"))
        parts.append(Text("\n".join(f"  {i.address:#x}  {i.text}" for i in entry_body)))
    return Group(*parts)


def _holds(state: SiteState) -> str:
    if state.kind in ("call", "jump"):
        name = state.target_call.name if state.target_call is not None else "not a ROM entry"
        return f"{state.kind} {state.target:#x} ({name})"
    return {"nop": "NOPs (the call is not needed)", "native": "the native code, unchanged",
            "modified": "neither the native code nor a patcher's output",
            "unverified": "not a patcher's output (no file to compare with)"}[state.kind]


def render_locations(roms: Sequence[tuple[int, str, int | None, bool]]) -> RenderableType:
    """Where the ROM was found: (linear address, how, physical address, active)."""
    t = Table(title="VMI ROM locations")
    add_hex_column(t, "linear")
    add_hex_column(t, "physical")
    add_prose_column(t, "found")
    add_prose_column(t, "")
    for addr, how, phys, active in roms:
        t.add_row(f"{addr:#x}", f"{phys:#x}" if phys is not None else "-", Text(how),
                  Text("active (the guest calls this one)", style="bold") if active else "")
    return fit_columns(t)
