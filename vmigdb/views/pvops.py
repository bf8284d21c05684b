"""``vmi pvops``: the pv-op table as a rich renderable (what each member points to, which VMI
call that reaches), from ``vmigdb.pvops.OpState`` values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb.pvops import OpState
from vmigdb.views.console import add_hex_column, add_prose_column, fit_columns


def describe_op(state: OpState) -> Text:
    """What the pointer is and the VMI call it reaches, in a few words."""
    calls = state.call_names
    rule = state.rule
    if state.kind == "rom entry":
        text = Text(f"ROM entry: {calls}")
        if not state.consistent and rule is not None:
            text.append(f" (Linux fills it with {rule.call_names}: WRONG)", style="bold red")
        return text
    if state.kind == "wrapper":
        if rule is not None and rule.how == "linux":
            name = state.symbol.split("+")[0] or rule.wrapper
            return Text(f"Linux's {name} -> {calls}" if calls else f"Linux's {name}")
        return Text(f"Linux's wrapper -> {calls}" if calls else "Linux's wrapper")
    if state.kind == "poisoned":
        return Text(f"poisoned: its sites must be patched ({calls})", style="yellow")
    if state.kind == "nop":
        return Text("vmi_nop (the ROM answered NOP)", style="dim")
    if state.kind == "rom":
        return Text("inside the ROM, not an entry", style="bold red")
    if state.kind == "null":
        return Text("NULL", style="dim")
    if rule is not None and rule.calls and rule.how != "patch":
        return Text(f"native (VMI would use {calls})", style="dim")
    return Text("native", style="dim")


def render_pvops(states: Sequence[tuple[int, OpState]], *, title: str = "") -> RenderableType:
    """One row per pv-op: slot, name, pointer, gdb's symbol for it, what it reaches."""
    t = Table(title=title or f"{len(states)} pv-ops")
    add_hex_column(t, "slot", justify="right")
    add_prose_column(t, "pv-op")
    add_hex_column(t, "pointer")
    add_prose_column(t, "symbol")
    add_prose_column(t, "reaches")
    for slot, s in states:
        t.add_row(str(slot), Text(s.op), f"{s.value:#x}", Text(s.symbol or "-"), describe_op(s))
    kinds = Counter(s.kind for _slot, s in states)
    wrong = sum(1 for _slot, s in states if not s.consistent)
    summary = Text(" ".join(f"{k.replace(' ', '_')}={v}" for k, v in sorted(kinds.items()))
                   + f"; WRONG={wrong}")
    return Group(fit_columns(t), summary)
