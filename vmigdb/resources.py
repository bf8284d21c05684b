"""The files vmigdb ships beside its code: the identity ROM, the demo guest and ``vmigdb.py``,
the gdb loader.

An installed package (``pip install .``) has them in ``vmigdb/share/``, built from source at
install time (setup.py). A checkout (``make venv``: an editable install) has the images in
``build/`` (``make rom guest``) and the loader at its top. Each function returns the path that
exists, the installed one first; when neither does, the one a build would create (so an error
names where the file was expected).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHARE = PACKAGE / "share"
#: The repository's root when this package is a checkout's ``vmigdb/``.
CHECKOUT = PACKAGE.parent


def in_checkout() -> bool:
    """Whether this package runs from a vmigdb checkout (its Makefile and loader beside it)."""
    return (CHECKOUT / "Makefile").is_file() and (CHECKOUT / "vmigdb.py").is_file()


def _find(name: str, checkout: Path) -> Path:
    shipped = SHARE / name
    if shipped.is_file():
        return shipped
    if checkout.is_file() or in_checkout():
        return checkout
    return shipped


def rom() -> Path:
    """The identity VMI ROM image (``--rom``'s default)."""
    return _find("vmi_rom.bin", CHECKOUT / "build" / "vmi_rom.bin")


def rom_elf() -> Path:
    """The ROM's ELF: symbols as image offsets (``add-symbol-file vmi_rom.elf -o BASE``)."""
    return _find("vmi_rom.elf", CHECKOUT / "build" / "vmi_rom.elf")


def demo_guest() -> Path:
    """The demo guest, a multiboot ELF with its symbols."""
    return _find("guest.elf", CHECKOUT / "build" / "guest.elf")


def gdb_script() -> Path:
    """``vmigdb.py``: ``gdb -x "$(vmigdb gdb-script)"`` loads the ``vmi`` commands."""
    return _find("vmigdb.py", CHECKOUT / "vmigdb.py")
