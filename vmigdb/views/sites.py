"""The redirection map: patch sites and ROM entries, as rich renderables.

``vmi sites`` pairs every ``.parainstructions`` record with the native instructions the file
holds and what memory holds now; ``vmi rom`` lists each ROM entry with its first instructions and
the native instruction it stands for; ``vmi decode`` explains one of either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi, decode
from vmigdb.abi import VmiCall
from vmigdb.rominfo import RomInfo
from vmigdb.sites import Site, SiteState, describe_clobbers, describe_insns


@dataclass(frozen=True)
class SiteRow:
    """One site as ``vmi sites`` shows it."""

    site: Site
    symbol: str
    original: tuple[decode.Insn, ...]
    state: SiteState


def _redirect(state: SiteState) -> Text:
    if state.kind in ("call", "jump"):
        name = state.target_call.name if state.target_call is not None else "?"
        return Text(f"{state.kind} {name} entry {state.target:#x}")
    if state.kind == "nop":
        return Text("NOPs (call not needed)")
    if state.kind == "native":
        return Text("unchanged native", style="yellow")
    return Text("modified (not a patcher's output)", style="red")


def _verdict(row: SiteRow) -> Text:
    if row.state.kind in ("call", "jump"):
        return Text("ok", style="green") if row.state.consistent else Text("WRONG", style="red")
    if row.state.kind == "nop":
        return Text("ok", style="green")
    return Text("-", style="dim")


def render_sites(rows: Sequence[SiteRow], *, title: str = "") -> RenderableType:
    """Every patch site: where, which call, the file's native code, and what memory holds."""
    t = Table(title=title or f"{len(rows)} patch sites (.parainstructions)")
    t.add_column("#", justify="right")
    t.add_column("site")
    t.add_column("symbol")
    t.add_column("type (VMI call)")
    t.add_column("len", justify="right")
    t.add_column("clobbers")
    t.add_column("native (ELF)")
    t.add_column("now (memory)")
    t.add_column("redirects to")
    t.add_column("")
    for n, row in enumerate(rows):
        s = row.site
        t.add_row(str(n), f"{s.addr:#x}", Text(row.symbol or "-"), s.call_name, str(s.len),
                  describe_clobbers(s.clobbers), Text(describe_insns(row.original)),
                  Text(describe_insns(row.state.insns)), _redirect(row.state), _verdict(row))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state.kind] = counts.get(row.state.kind, 0) + 1
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    consistent = sum(1 for r in rows if r.state.consistent)
    return Group(t, Text(f"sites={len(rows)} {summary}; redirected to the entry of their own "
                         f"call: {consistent}"))


def _body(image: bytes, base: int, entry: int, max_insns: int) -> list[decode.Insn]:
    off = entry - base
    return decode.disassemble_until_ret(image[off:off + 16 * max_insns], entry, max_insns)


def render_rom_entries(base: int, info: RomInfo, image: bytes, *, max_insns: int = 4
                       ) -> RenderableType:
    """Each call the ROM implements: entry, relocation, first instructions, native meaning."""
    t = Table(title=f"ROM entries at {base:#x} (get_reloc answers as the call table says)")
    t.add_column("#", justify="right")
    t.add_column("VMI call")
    t.add_column("entry", justify="right")
    t.add_column("relocation")
    t.add_column("body (capstone)")
    t.add_column("native")
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
        t.add_row(str(int(call)), call.name, f"{entry:#x}", info.relocation(call).name,
                  Text(text), spec.native if spec and spec.native else "-")
    missing = [c.name for c in VmiCall if not info.call_table.get(c)]
    note = Text(f"relocation NONE (native code stays): {', '.join(missing)}" if missing
                else "every call has an entry")
    return Group(t, note)


def render_call_spec(call: VmiCall) -> RenderableType:
    """The ABI of one call: where each argument is, results, clobbers, native instruction."""
    spec = abi.CALLS[call]
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("", style="bold")
    t.add_column("")
    args = ", ".join(f"{a.name} in {a.loc} ({a.kind})" for a in spec.args) or "none"
    t.add_row("VMI call", f"{call.name} (#{int(call)})")
    t.add_row("arguments", Text(args))
    t.add_row("results", ", ".join(spec.results) or "none")
    t.add_row("clobbers", " ".join(f.name for f in abi.Clobbers if f in spec.clobbers
                                   and f is not abi.Clobbers.STANDARD) or "none")
    t.add_row("native", spec.native or "-")
    t.add_row("returns", "yes" if spec.returns else "no (does not return to the caller)")
    return t


def render_entry(call: VmiCall, entry: int, body: Sequence[decode.Insn],
                 symbolize: Callable[[int], str] | None = None) -> RenderableType:
    """One ROM entry: its ABI and its whole body."""
    code = Table(title=f"{call.name} entry at {entry:#x}", show_header=False, box=None)
    code.add_column("addr")
    code.add_column("insn")
    code.add_column("")
    for i in body:
        code.add_row(f"{i.address:#x}", Text(i.text),
                     Text(symbolize(i.address) if symbolize else ""))
    return Group(render_call_spec(call), code)


def render_site(row: SiteRow, entry_body: Sequence[decode.Insn] = ()) -> RenderableType:
    """One patch site in full: the record, the native code, the patched code, the target."""
    s = row.site
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("patch site", Text(f"{s.addr:#x} {row.symbol}".rstrip()))
    t.add_row("record", f"type {s.type} ({s.call_name}), len {s.len}, clobbers "
                        f"{describe_clobbers(s.clobbers)}")
    t.add_row("native (ELF)",
              Text("\n".join(f"{i.address:#x}  {i.text}" for i in row.original)))
    t.add_row("now (memory)",
              Text("\n".join(f"{i.address:#x}  {i.text}" for i in row.state.insns)))
    t.add_row("redirects to", _redirect(row.state))
    t.add_row("verdict", _verdict(row))
    parts: list[RenderableType] = [t]
    if s.call is not None:
        parts.append(render_call_spec(s.call))
    if entry_body:
        parts.append(Text("ROM entry body:"))
        parts.append(Text("\n".join(f"  {i.address:#x}  {i.text}" for i in entry_body)))
    return Group(*parts)


def render_locations(roms: Sequence[tuple[int, str, int | None, bool]]) -> RenderableType:
    """Where the ROM was found: (linear address, how, physical address, active)."""
    t = Table(title="VMI ROM locations")
    t.add_column("linear")
    t.add_column("physical")
    t.add_column("found")
    t.add_column("")
    for addr, how, phys, active in roms:
        t.add_row(f"{addr:#x}", f"{phys:#x}" if phys is not None else "-", how,
                  Text("active (the guest calls this one)", style="bold") if active else "")
    return t
