"""gdb commands that ``gdb -x vmigdb.py`` adds: the ``vmi`` prefix and its subcommands.

Commands only adapt: they read from gdb, call the core (``vmigdb``), and write what it renders.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Register every command once, however often vmigdb.py is sourced."""
    global _registered
    if _registered:
        return
    from vmigdb.commands import vmi

    vmi.register()
    _registered = True
