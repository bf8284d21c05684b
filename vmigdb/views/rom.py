"""``vmigdb rom info``: a VMI ROM image as tables (header, PCI data, checksum, call table).

The call table rows pair each VMI call with what the ROM answers for it and the native
instruction abi.CALLS says it stands for, which is the question a reader of an identity ROM
asks: which calls leave the kernel native, and what each ROM entry replaces.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigdb import abi
from vmigdb.abi import VmiCall, VmiRelocation
from vmigdb.rominfo import RomInfo
from vmigdb.views.console import fit_columns

#: PCI base class codes worth naming here (the class code's top byte).
_PCI_BASE_CLASSES = {0x05: "memory controller"}


def _offset(value: int | None) -> str:
    return f"{value:#06x}" if value else "-"


def _header_table(info: RomInfo, live_copy: bool) -> Table:
    t = Table(title="VMI ROM", show_header=False, box=None, pad_edge=False)
    t.add_column("field", style="bold", no_wrap=True)
    t.add_column("value")
    if info.checksum_ok:
        sums = "ok (sums to 0)"
    elif live_copy:
        sums = (f"live copy (sums to {info.checksum:#04x}: a ROM running from RAM keeps its "
                "writable state inside the image)")
    else:
        sums = f"BAD (sums to {info.checksum:#04x})"
    base_class = _PCI_BASE_CLASSES.get(info.pci_class >> 16)
    pci_at = _offset(info.pci_header_offs)
    pci_class = f"class {info.pci_class:06x}" + (f" ({base_class})" if base_class else "")
    rows = (
        ("length", f"{info.length} bytes ({info.length // abi.ROM_BLOCK} x {abi.ROM_BLOCK})"),
        ("checksum", sums),
        ("API version", "{}.{}".format(*info.api_version)),
        ("ROM version", "{}.{}".format(*info.rom_version)),
        ("licence", f"{info.licence!r} at {_offset(info.license_offs)}"),
        ("PCI", f"{info.pci_vendor:04x}:{info.pci_device:04x} {pci_class} at {pci_at}"),
        ("PnP header", _offset(info.pnp_header_offs)),
        ("jump slots", str(info.jump_slots)),
        ("virtual_top", f"{info.virtual_top:#010x}"),
        ("vmi_init", f"{abi.VMI_INIT_OFFSET:#06x}"),
        ("get_reloc", f"{abi.GET_RELOC_OFFSET:#06x}"),
        ("vmigdb header", "yes" if info.vmigdb else "no"),
        ("call table", _offset(info.call_table_offs)),
        ("state", _offset(info.state_offs)
         + (" (PTE batching when writable)" if info.batched_capable else "")),
    )
    for name, value in rows:
        t.add_row(name, Text(value))
    return fit_columns(t)


def _call_table(info: RomInfo) -> Table:
    t = Table(title="calls (get_reloc as the call table predicts it)")
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("VMI call")
    t.add_column("entry", justify="right", no_wrap=True)
    t.add_column("relocation")
    t.add_column("native")
    for call in VmiCall:
        entry = info.call_table.get(call)
        reloc = info.relocation(call)
        spec = abi.CALLS.get(call)
        style = "" if reloc is VmiRelocation.CALL_REL else "dim"
        t.add_row(str(int(call)), call.name, _offset(entry), reloc.name,
                  spec.native if spec and spec.native else "-", style=style)
    return fit_columns(t)


def render_rom(info: RomInfo, live_copy: bool = False) -> RenderableType:
    """The header fields and, for a vmigdb ROM, every call with its entry and native meaning.
    ``live_copy``: the image was read from a copy the guest runs, whose sum is not 0."""
    parts: list[RenderableType] = [_header_table(info, live_copy)]
    if info.call_table:
        parts.append(_call_table(info))
    else:
        parts.append(Text("no vmigdb call table: entries are known only by calling get_reloc"))
    return Group(*parts)
