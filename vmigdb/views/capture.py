"""What ``vmigdb capture`` shows on a terminal: a live progress line, then a summary."""

from __future__ import annotations

from rich import progress as rp
from rich.console import Console
from rich.text import Text

from vmigdb import capture


def capture_with_progress(cfg: capture.Config, console: Console) -> capture.Result:
    """Run the capture with a rich progress display (a bar over the calls for calls=N)."""
    limit = cfg.until.calls if cfg.until.kind == "calls" else None
    columns = [rp.SpinnerColumn(), rp.TextColumn("[bold]{task.description}")]
    if limit is not None:
        columns.append(rp.BarColumn())
    columns += [rp.TextColumn("{task.fields[events]} events, {task.completed:.0f} calls, "
                           "{task.fields[rate]} events/s"), rp.TimeElapsedColumn()]
    with rp.Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"capturing {cfg.guest.name} on the {cfg.target}", total=limit,
                            events=0, rate="-")

        def update(p: capture.Progress) -> None:
            rate = f"{p.events / p.seconds:,.0f}" if p.seconds > 0 and p.events else "-"
            if p.bytes and not p.events:  # the stub writes the file: its size is the news
                rate = f"{p.bytes / 1e6:.1f} MB written, -"
            bar.update(task, completed=min(p.calls, limit) if limit else p.calls,
                       events=p.events, rate=rate, description=f"{p.state} {cfg.guest.name} "
                       f"on the {cfg.target}")

        return capture.capture(cfg, on_progress=update)


def render_summary(r: capture.Result) -> Text:
    """One line: what was captured, how fast, and how the guest ended."""
    style = "green" if r.ok else "red"
    text = Text(f"captured {r.events} events ({r.calls} ROM calls) in {r.seconds:.2f} s, "
                f"{r.events_per_second:,.0f} events/s, {r.source} path -> {r.output}\n")
    text.append(f"{r.status}: {r.message}", style=f"bold {style}")
    for note in r.notes:
        text.append(f"\n  {note}", style="dim")
    return text
