"""``vmi symbols``: the ROM's symbols and unwind information, loaded where the guest calls it.

gdb learns the ROM's code from its ELF (``set vmi rom-elf``): ``add-symbol-file ELF -o ADDR``,
ADDR being the live ROM's linear address (the rule is the core's, ``romsyms.live_address``).
The ELF carries CFI for every instruction of every entry (rom/vmi_rom.S), so gdb unwinds out of
a ROM call into the guest's frames, ``finish`` returns to the caller and ``break vmi_SetPxE``
stops in the entry. With ``set vmi rom-symbols on`` (the default) this follows the guest on
each stop: once the ROM is found, and again when the guest moves it (a copy in RAM).
"""

from __future__ import annotations

import traceback

import gdb

from vmigdb import romsyms
from vmigdb.commands import target
from vmigdb.commands.vmi import ArgParser, complete_options, guarded, setting
from vmigdb.errors import GuestImageError, VmiError
from vmigdb.sites import ElfImage

#: (ELF path, address) of the ROM symbols vmigdb added, or None.
_loaded: tuple[str, int] | None = None
#: Messages the stop handler already gave (once each, not on every stop).
_warned: set[str] = set()


def loaded() -> tuple[str, int] | None:
    return _loaded


def _elf(path: str) -> ElfImage:
    try:
        with open(path, "rb") as f:
            return ElfImage(f.read())
    except OSError as e:
        raise VmiError(f"cannot read the ROM's ELF {path}: {e.strerror} (set vmi rom-elf FILE)"
                       ) from None
    except GuestImageError as e:
        raise VmiError(f"{path}: {e}") from None


def placement(addr: int | None = None) -> tuple[romsyms.Placement, target.LocatedRom]:
    """Where the guest calls its ROM, and the ROM as read from the guest."""
    if addr is not None:
        rom = target.find_rom(addr)
        return romsyms.Placement(addr, "the given address"), rom
    roms = target.locate_roms()
    rom = next(r for r in roms if r.active)
    place = romsyms.live_address(pointer=target.guest_rom_pointer(), found_at=rom.address,
                                 found_phys=rom.phys,
                                 pointer_exists=target.guest_rom_pointer_expr())
    assert place is not None  # found_at is always known here
    return place, rom


def _quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unload() -> None:
    """Remove the ROM symbols vmigdb added (by an address inside them)."""
    global _loaded
    if _loaded is None:
        return
    _path, addr = _loaded
    _loaded = None
    try:
        gdb.execute(f"remove-symbol-file -a {addr:#x}", to_string=True)
    except gdb.error:
        pass  # already gone (the user removed it, or `file` reloaded everything)


def load(path: str, addr: int) -> bool:
    """Add the ROM's ELF at ``addr``, replacing an earlier placement; False if already there."""
    global _loaded
    if _loaded == (path, addr) and any(o.filename == path for o in gdb.objfiles()):
        return False
    unload()
    with gdb.with_parameter("confirm", False):
        gdb.execute(f"add-symbol-file {_quote(path)} -o {addr:#x}", to_string=True)
    _loaded = (path, addr)
    return True


def place_symbols(addr: int | None = None, path: str | None = None
                  ) -> tuple[romsyms.Placement, str, int, bool]:
    """Check the ELF against the live ROM and load it there: (placement, path, number of
    entry symbols, whether gdb had to load it)."""
    path = path or setting("rom-elf") or ""
    if not path:
        raise VmiError("no ROM ELF: set vmi rom-elf FILE (the vmi_rom.elf `make rom` builds)")
    elf = _elf(path)
    place, rom = placement(addr)
    mismatch = romsyms.check_elf(elf, rom.image)
    if mismatch:
        raise VmiError(f"{path} does not match the ROM at {rom.address:#x}: {mismatch}")
    changed = load(path, place.address)
    return place, path, len(romsyms.entry_symbols(elf)), changed


def _follow() -> None:
    """On a stop: load the ROM symbols once the ROM is found, reload when the guest's ROM
    pointer moves. One pointer read per stop once loaded."""
    if _loaded is not None:
        pointer = target.guest_rom_pointer()
        if pointer is None or pointer[1] == _loaded[1]:
            return
    try:
        place, path, _n, changed = place_symbols()
    except VmiError as e:
        msg = str(e)
        if "does not match" in msg and msg not in _warned:
            _warned.add(msg)
            gdb.write(f"vmi: ROM symbols not loaded: {msg}\n", gdb.STDERR)
        return
    if changed:
        gdb.write(f"vmi: ROM symbols from {path} at {place.address:#x} ({place.why})\n")


def _on_stop(_event: object) -> None:
    if not setting("rom-symbols") or not setting("rom-elf"):
        return
    try:
        inf = gdb.selected_inferior()
        if inf.pid == 0 or not inf.threads():
            return
        _follow()
    except Exception:  # noqa: BLE001 - a stop handler must never break the stop
        if setting("debug"):
            traceback.print_exc()


def _on_new_objfile(event: object) -> None:
    """``file`` or ``symbol-file`` drop every symbol file: vmigdb's ROM symbols went too."""
    global _loaded
    if _loaded is not None and not any(o.filename == _loaded[0] for o in gdb.objfiles()):
        _loaded = None


def connect_events() -> None:
    gdb.events.stop.connect(_on_stop)
    gdb.events.new_objfile.connect(_on_new_objfile)
    if hasattr(gdb.events, "clear_objfiles"):
        gdb.events.clear_objfiles.connect(_on_new_objfile)


class VmiSymbols(gdb.Command):
    """Load the VMI ROM's symbols and unwind information where the guest calls the ROM.

Usage: vmi symbols [ADDR] [--file ELF] [--remove]

gdb then knows the ROM's code: every call's entry is named vmi_<Call> as abi.py spells the call
(vmi_SetPxE, vmi_GetInterruptMask, ...; `vmi rom` lists them), its helpers rom_pte_update,
rom_flush, rom_get_reloc, rom_vmi_init. So `break vmi_SetPxE` stops in the entry, `bt` inside
a ROM call shows the entry and then the guest's frames, and `finish`, `up` and `x/i` work.
The ELF (`set vmi rom-elf`, default build/vmi_rom.elf) is checked against the ROM read from the
guest, then loaded with add-symbol-file at the live ROM's address: the guest's ROM pointer
(Linux's vmi_rom, the demo guest's vmi.base), for Linux before it found the ROM PAGE_OFFSET +
the physical address (0xc00c0000), else where the scan found it. ADDR places it there instead.
`set vmi rom-symbols on` (the default) does this on every stop, following a ROM the guest moves.
Example: vmi symbols        vmi symbols 0xc00c0000        vmi symbols --remove"""

    def __init__(self) -> None:
        super().__init__("vmi symbols", gdb.COMMAND_FILES)
        self.parser = ArgParser(prog="vmi symbols", add_help=False)
        self.parser.add_argument("addr", nargs="?", help="linear address of the ROM")
        self.parser.add_argument("--file", help="the ROM's ELF (default: set vmi rom-elf)")
        self.parser.add_argument("--remove", action="store_true",
                                 help="remove the ROM symbols vmigdb loaded")

    def complete(self, text: str, word: str) -> object:
        return complete_options(self.parser, text, word, files=("--file",), expression=True)

    @guarded
    def invoke(self, arg: str, from_tty: bool) -> None:
        self.dont_repeat()
        args = self.parser.parse_args(gdb.string_to_argv(arg))
        if args.remove:
            if _loaded is None:
                raise VmiError("vmi symbols: no ROM symbols loaded by vmigdb")
            path, addr = _loaded
            unload()
            gdb.write(f"vmi symbols: removed {path} (was at {addr:#x}); `set vmi rom-symbols "
                      "off` keeps the next stop from loading them again\n")
            return
        addr = self.parser.number(args.addr) & 0xFFFFFFFF if args.addr else None
        target.require_target()
        place, path, entries, _changed = place_symbols(addr, args.file)
        gdb.write(f"vmi symbols: {path} at {place.address:#x} ({place.why}); {entries} entry "
                  "symbols vmi_<Call>, e.g. break vmi_SetPxE\n")
