"""Parse and check a VMI option ROM image the way the BIOS and Linux do.

Pure: works on bytes (a file, or memory read through a callable), so the CLI, gdb commands and
the stub share it. Every offset comes from the layout tables in ``vmigdb.abi``. The checks follow
Linux's ``check_vmi_rom()`` (vmi-abi.md section 1) plus the BIOS checksum, and each failure is a
``RomError`` with one line a user can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmigdb import abi
from vmigdb.abi import VmiCall, VmiRelocation
from vmigdb.errors import RomError


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "little")


def _get(data: bytes, table: tuple[abi.Field, ...], name: str, base: int = 0) -> int:
    f = abi.field(table, name)
    return _u(data, base + f.offset, f.size)


@dataclass(frozen=True)
class RomInfo:
    """What a VMI ROM image declares: header, PCI data structure, licence and vmigdb's table.

    ``call_table`` is only known for a vmigdb ROM (its header carries the table offset); a
    foreign ROM answers get_reloc at run time only, so the mapping is empty for it.
    """

    length: int  # rom_length * ROM_BLOCK: the bytes the BIOS checksums and shadows
    checksum: int  # byte sum of those bytes mod 256
    checksum_ok: bool
    api_version: tuple[int, int]  # (major, minor)
    rom_version: tuple[int, int]  # (major, minor) from the PCI header
    licence: str
    pci_vendor: int
    pci_device: int
    pci_class: int  # 24-bit class code: base class << 16 | subclass << 8 | interface
    pci_header_offs: int
    pnp_header_offs: int
    license_offs: int
    jump_slots: int
    virtual_top: int
    vmigdb: bool  # the header carries vmigdb's fields (magic "vgdb")
    call_table_offs: int | None
    state_offs: int | None
    call_table: dict[VmiCall, int | None]  # entry offset, None = not implemented

    @property
    def batched_capable(self) -> bool:
        """True when the ROM has a state area, so it can queue PTE updates if it is writable."""
        return self.state_offs is not None

    def relocation(self, call: VmiCall) -> VmiRelocation:
        """What get_reloc answers for ``call``, as the call table predicts it."""
        return VmiRelocation.CALL_REL if self.call_table.get(call) else VmiRelocation.NONE


def byte_sum(data: bytes) -> int:
    """The option-ROM checksum: all bytes summed mod 256 (0 for a valid ROM)."""
    return sum(data) & 0xFF


def _licence(data: bytes, offset: int) -> str:
    if offset == 0 or offset >= len(data):
        return "unspecified"  # Linux's word for a missing licence
    end = data.find(b"\0", offset)
    raw = data[offset:] if end < 0 else data[offset:end]
    return raw.decode("ascii", errors="replace")


def check_rom(data: bytes, *, verify_checksum: bool = True) -> None:
    """Raise ``RomError`` (one line) unless ``data`` is a VMI ROM Linux would use.

    ``verify_checksum=False`` is for a ROM read from a running machine: a vmigdb ROM running
    from RAM keeps its writable state inside the image, so its live bytes no longer sum to 0.
    """
    hdr = abi.VROM_HEADER
    if len(data) < abi.VROM_HEADER_SIZE:
        raise RomError(f"ROM image too short: {len(data)} bytes, a VMI ROM header needs "
                       f"{abi.VROM_HEADER_SIZE}")
    sig = _get(data, hdr, "rom_signature")
    if sig != abi.ROM_SIGNATURE:
        raise RomError(f"not an option ROM: signature bytes {data[0]:02x} {data[1]:02x}, "
                       "expected 55 aa")
    length = _get(data, hdr, "rom_length") * abi.ROM_BLOCK
    if length < abi.VROM_HEADER_SIZE:
        raise RomError(f"rom_length is {length} bytes, too short for a VMI ROM header")
    if len(data) < length:
        raise RomError(f"ROM image truncated: header says {length} bytes, image has {len(data)}")
    vsig = _get(data, hdr, "vrom_signature")
    if vsig != abi.VMI_SIGNATURE:
        f = abi.field(hdr, "vrom_signature")
        got = data[f.offset:f.offset + f.size]
        raise RomError(f"not a VMI ROM: vrom_signature {got!r}, expected b'cVmi'")
    total = byte_sum(data[:length])
    if verify_checksum and total != 0:
        raise RomError(f"bad checksum: the {length} ROM bytes sum to {total:#04x} mod 256, "
                       "must be 0")
    major = _get(data, hdr, "api_version_maj")
    minor = _get(data, hdr, "api_version_min")
    if major != abi.VMI_API_REV_MAJOR:
        raise RomError(f"VMI API version {major}.{minor}, Linux needs major version "
                       f"{abi.VMI_API_REV_MAJOR}")
    pci = _get(data, hdr, "pci_header_offs")
    if pci == 0:
        raise RomError("ROM does not contain a PCI header (pci_header_offs is 0)")
    if pci + abi.PCI_HEADER_SIZE > length or data[pci:pci + 4] != b"PCIR":
        raise RomError(f"no PCI header at offset {pci:#x} (expected 'PCIR')")
    licence = _licence(data[:length], _get(data, hdr, "license_offs"))
    if licence not in abi.ACCEPTED_LICENSES:
        raise RomError(f"licence {licence!r} is not GPL or GPL v2: Linux refuses the ROM")


def _call_table(data: bytes, length: int, offs: int) -> dict[VmiCall, int | None]:
    end = offs + 2 * abi.VMI_CALL_TABLE_LEN
    if end > length:
        raise RomError(f"call table at {offs:#x} runs past the ROM end ({length:#x})")
    table: dict[VmiCall, int | None] = {}
    for call in VmiCall:
        entry = _u(data, offs + 2 * int(call), 2)
        if entry >= length:
            raise RomError(f"call table entry for {call.name} ({entry:#x}) is outside the ROM")
        table[call] = entry or None
    return table


def parse_rom(data: bytes, *, verify_checksum: bool = True) -> RomInfo:
    """Check ``data`` (``check_rom``) and describe it. Raises ``RomError`` on a bad image."""
    check_rom(data, verify_checksum=verify_checksum)
    hdr = abi.VROM_HEADER
    length = _get(data, hdr, "rom_length") * abi.ROM_BLOCK
    image = data[:length]
    pci = _get(image, hdr, "pci_header_offs")
    # The 3-byte class code, little-endian (PCI firmware spec: interface, subclass, base class;
    # Linux's struct names the same bytes class, subclass, interface).
    pci_class = _u(image, pci + abi.field(abi.PCI_HEADER, "class").offset, 3)
    vmigdb = _get(image, abi.VMIGDB_HEADER, "vmigdb_magic") == abi.ROM_VMIGDB_MAGIC
    table_offs = _get(image, abi.VMIGDB_HEADER, "call_table_offs") if vmigdb else 0
    state_offs = _get(image, abi.VMIGDB_HEADER, "state_offs") if vmigdb else 0
    if state_offs and state_offs + abi.VMI_BATCH_SIZE > length:
        raise RomError(f"state at {state_offs:#x} runs past the ROM end ({length:#x})")
    return RomInfo(
        length=length,
        checksum=byte_sum(image),
        checksum_ok=byte_sum(image) == 0,
        api_version=(_get(image, hdr, "api_version_maj"), _get(image, hdr, "api_version_min")),
        rom_version=(_get(image, abi.PCI_HEADER, "rom_version_maj", pci),
                     _get(image, abi.PCI_HEADER, "rom_version_min", pci)),
        licence=_licence(image, _get(image, hdr, "license_offs")),
        pci_vendor=_get(image, abi.PCI_HEADER, "vendorID", pci),
        pci_device=_get(image, abi.PCI_HEADER, "deviceID", pci),
        pci_class=pci_class,
        pci_header_offs=pci,
        pnp_header_offs=_get(image, hdr, "pnp_header_offs"),
        license_offs=_get(image, hdr, "license_offs"),
        jump_slots=_get(image, hdr, "jump_slots"),
        virtual_top=_get(image, hdr, "virtual_top"),
        vmigdb=vmigdb,
        call_table_offs=table_offs or None,
        state_offs=state_offs or None,
        call_table=_call_table(image, length, table_offs) if table_offs else {},
    )


@dataclass(frozen=True)
class FoundRom:
    """A VMI ROM found by ``find_roms``: where it is and what it says."""

    address: int
    info: RomInfo


def find_roms(
    read: Callable[[int, int], bytes],
    start: int = abi.ROM_SCAN_START,
    end: int = abi.ROM_SCAN_END,
    *,
    verify_checksum: bool = True,
) -> list[FoundRom]:
    """Scan ``[start, end)`` in ROM_SCAN_STEP steps as Linux's ``probe_vmi_rom()`` does.

    ``read(address, size)`` returns memory (physical, or through Linux's linear map). A
    candidate needs 55 AA and "cVmi" and then must pass ``check_rom``; the rest (stray 55 AA
    in RAM, other option ROMs) is skipped silently, as Linux skips it.
    """
    found: list[FoundRom] = []
    sig_at = abi.field(abi.VROM_HEADER, "vrom_signature").offset
    len_at = abi.field(abi.VROM_HEADER, "rom_length").offset
    for addr in range(start, end, abi.ROM_SCAN_STEP):
        head = read(addr, abi.VROM_HEADER_SIZE)
        if (_u(head, 0, 2) != abi.ROM_SIGNATURE
                or _u(head, sig_at, 4) != abi.VMI_SIGNATURE):
            continue
        data = read(addr, head[len_at] * abi.ROM_BLOCK)
        try:
            info = parse_rom(data, verify_checksum=verify_checksum)
        except RomError:
            continue
        found.append(FoundRom(addr, info))
    return found
