"""The identity VMI ROM built from source: Linux's header layout, checksum, reproducibility, the
call table, the constants it was assembled with, and how rominfo and `vmigdb rom info` judge
good and bad images."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import capstone
import pytest

from vmigdb import abi, rominfo, romsyms, sites
from vmigdb.abi import VmiCall
from vmigdb.errors import BuildError, RomError
from vmigdb.rom import build
from vmigdb.views.console import render_text
from vmigdb.views.rom import render_rom

VMIGDB = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "vmigdb"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.build_rom(tmp_path_factory.mktemp("rom") / "vmi_rom.bin")


@pytest.fixture(scope="module")
def image(built: Path) -> bytes:
    return built.read_bytes()


@pytest.fixture(scope="module")
def symbols(built: Path) -> dict[str, int]:
    out = subprocess.run(["nm", built.with_suffix(".elf")], capture_output=True, text=True,
                         check=True).stdout
    return {name: int(value, 16) for value, _kind, name in (ln.split() for ln in out.splitlines())}


def hdr(data: bytes, name: str, table: tuple[abi.Field, ...] = abi.VROM_HEADER,
        base: int = 0) -> int:
    f = abi.field(table, name)
    return int.from_bytes(data[base + f.offset:base + f.offset + f.size], "little")


def insns(data: bytes, offset: int, mode: int, count: int) -> list[capstone.CsInsn]:
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    return list(md.disasm(data[offset:], offset, count))


def with_checksum(data: bytearray) -> bytes:
    data[-1] = 0
    data[-1] = -sum(data) & 0xFF
    return bytes(data)


# --- the image as Linux and the BIOS read it --------------------------------------------------

def test_option_rom_header(image: bytes) -> None:
    assert image[:2] == b"\x55\xaa"
    assert hdr(image, "rom_signature") == abi.ROM_SIGNATURE
    assert len(image) % abi.ROM_BLOCK == 0
    assert hdr(image, "rom_length") * abi.ROM_BLOCK == len(image)
    assert sum(image) % 256 == 0


def test_vrom_header_fields(image: bytes) -> None:
    assert image[8:12] == b"cVmi"
    assert hdr(image, "vrom_signature") == abi.VMI_SIGNATURE
    assert (hdr(image, "api_version_maj"), hdr(image, "api_version_min")) == (3, 0)
    assert hdr(image, "jump_slots") == 2
    assert hdr(image, "virtual_top") == 0
    assert hdr(image, "pnp_header_offs") == 0
    lic = hdr(image, "license_offs")
    assert image[lic:lic + 7] == b"GPL v2\0"


def test_real_mode_init_entry_far_returns_with_ax_zero(image: bytes) -> None:
    entry = abi.field(abi.VROM_HEADER, "rom_entry")
    (jmp,) = insns(image, entry.offset, capstone.CS_MODE_16, 1)
    assert jmp.mnemonic == "jmp" and jmp.size <= entry.size
    body = insns(image, int(jmp.op_str, 16), capstone.CS_MODE_16, 2)
    assert [(i.mnemonic, i.op_str) for i in body] == [("xor", "ax, ax"), ("retf", "")]


@pytest.mark.parametrize("point,target", [("vmi_init", "rom_vmi_init"),
                                          ("get_reloc", "rom_get_reloc")])
def test_jump_points_jump_into_the_body(image: bytes, symbols: dict[str, int], point: str,
                                        target: str) -> None:
    f = abi.field(abi.VROM_HEADER, point)
    (jmp,) = insns(image, f.offset, capstone.CS_MODE_32, 1)
    assert jmp.mnemonic == "jmp" and jmp.size <= f.size
    assert int(jmp.op_str, 16) == symbols[target]
    assert symbols[target] >= abi.VROM_HEADER_SIZE


def test_pci_data_structure(image: bytes) -> None:
    pci = hdr(image, "pci_header_offs")
    assert pci % 4 == 0 and image[pci:pci + 4] == b"PCIR"
    p = abi.PCI_HEADER
    assert hdr(image, "vendorID", p, pci) == abi.PCI_VENDOR_ID_VMWARE == 0x15AD
    assert hdr(image, "deviceID", p, pci) == abi.PCI_DEVICE_ID_VMWARE_VMI == 0x0801
    assert hdr(image, "size", p, pci) == abi.PCI_HEADER_SIZE
    class_at = pci + abi.field(p, "class").offset
    assert image[class_at:class_at + 3] == bytes([0x00, 0x00, 0x05])  # memory controller
    assert hdr(image, "chunks", p, pci) == hdr(image, "rom_length")
    assert (hdr(image, "rom_version_maj", p, pci), hdr(image, "rom_version_min", p, pci)) == (1, 0)
    assert hdr(image, "codetype", p, pci) == 0
    assert hdr(image, "lastRom", p, pci) & 0x80


def test_vmigdb_fields_and_state(image: bytes, symbols: dict[str, int]) -> None:
    v = abi.VMIGDB_HEADER
    assert hdr(image, "vmigdb_magic", v) == abi.ROM_VMIGDB_MAGIC
    assert image[0x24:0x28] == b"vgdb"
    assert hdr(image, "call_table_offs", v) == symbols["call_table"]
    state = hdr(image, "state_offs", v)
    assert state == symbols["rom_state"] == symbols["rom_batch"]
    assert symbols["rom_entries"] == state + abi.VMI_BATCH_SIZE
    end = symbols["rom_state_end"]
    assert end - symbols["rom_entries"] >= abi.ROM_QUEUE_LEN * abi.VMI_BATCH_ENTRY_SIZE
    assert end < len(image) and image[state:end] == bytes(end - state)  # zero, inside the image


def test_call_table_is_the_identity_rom_calls(image: bytes, symbols: dict[str, int]) -> None:
    table = hdr(image, "call_table_offs", abi.VMIGDB_HEADER)
    for call in VmiCall:
        at = table + 2 * int(call)
        entry = int.from_bytes(image[at:at + 2], "little")
        if call in abi.IDENTITY_ROM_CALLS:
            assert entry == symbols[f"vmi_{call.name}"], call.name
        else:
            assert entry == 0, call.name
    for timer in range(VmiCall.GetCycleFrequency, VmiCall.WallclockUpdated + 1):
        assert VmiCall(timer) not in abi.IDENTITY_ROM_CALLS


def _fdes(elf: Path) -> list[tuple[int, int]]:
    """(start, end) of every FDE in the ELF's call-frame information (readelf's reading)."""
    out = subprocess.run(["readelf", "--debug-dump=frames", str(elf)], capture_output=True,
                         text=True, check=True).stdout
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(r"FDE .* pc=([0-9a-f]+)\.\.([0-9a-f]+)",
                                                          out)]


def test_entries_are_named_and_unwindable(built: Path, image: bytes,
                                          symbols: dict[str, int]) -> None:
    """Every call's entry is romsyms.entry_symbol(call) (what `break` takes), every 32-bit
    routine has call-frame information covering it (gdb unwinds out of any instruction of an
    entry), and that information lives only in the ELF: the image is its allocated bytes."""
    elf = sites.ElfImage(built.with_suffix(".elf").read_bytes())
    assert romsyms.check_elf(elf, image) is None
    assert romsyms.entry_symbols(elf) == {romsyms.entry_symbol(c): symbols[f"vmi_{c.name}"]
                                          for c in abi.IDENTITY_ROM_CALLS}
    assert elf.section(".debug_frame") is not None and elf.section(".eh_frame") is None
    fdes = _fdes(built.with_suffix(".elf"))
    routines = {romsyms.entry_symbol(c) for c in abi.IDENTITY_ROM_CALLS} | {
        "rom_vmi_init", "rom_get_reloc", "rom_flush", "rom_pte_update",
        "rom_vmi_init_jump", "rom_get_reloc_jump"}
    for name in routines:
        assert any(lo <= symbols[name] < hi for lo, hi in fdes), name
    # A ROM whose code differs from the ELF's is refused (the symbols would be off).
    changed = bytearray(image)
    at = symbols["vmi_SetPxE"]
    changed[at] ^= 0xFF
    assert "differs at offset" in (romsyms.check_elf(elf, bytes(changed)) or "")


def test_rebuild_gives_identical_bytes(built: Path, tmp_path: Path) -> None:
    again = build.build_rom(tmp_path / "other" / "rom.bin")
    assert again.read_bytes() == built.read_bytes()
    assert again.with_suffix(".elf").read_bytes() == built.with_suffix(".elf").read_bytes()


def test_assembled_with_the_generated_abi_header(built: Path) -> None:
    assert (built.parent / "vmi_abi.inc").read_text() == abi.render_asm_header()


def test_constants_reach_the_code(image: bytes, symbols: dict[str, int]) -> None:
    """The ports the ROM announces on are the ones abi.py names (read from the instructions)."""
    for label, port in (("rom_init_announce", abi.ROM_INIT_PORT),
                        ("rom_flush_announce", abi.ROM_FLUSH_PORT)):
        before = insns(image, symbols[label] - 5, capstone.CS_MODE_32, 2)
        assert (before[0].mnemonic, before[0].op_str) == ("mov", f"edx, {port:#x}")
        assert (before[1].mnemonic, before[1].op_str) == ("out", "dx, eax")


def test_broken_source_is_one_line_build_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "vmi_rom.S"
    bad.write_text(build.SOURCE.read_text() + "\n\tnot_an_instruction %eax\n")
    monkeypatch.setattr(build, "SOURCE", bad)
    with pytest.raises(BuildError) as e:
        build.build_rom(tmp_path / "out" / "rom.bin")
    assert str(e.value).startswith("as failed:") and "\n" not in str(e.value)


def test_missing_tools_are_a_build_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildError, match="not found"):
        build.build_rom(tmp_path / "rom.bin")


# --- rominfo ------------------------------------------------------------------------------------

def test_parse_rom(image: bytes, symbols: dict[str, int]) -> None:
    info = rominfo.parse_rom(image)
    assert info.length == len(image) and info.checksum_ok and info.checksum == 0
    assert info.api_version == (3, 0) and info.rom_version == (1, 0)
    assert info.licence == "GPL v2"
    assert (info.pci_vendor, info.pci_device, info.pci_class) == (0x15AD, 0x0801, 0x050000)
    assert info.jump_slots == 2 and info.virtual_top == 0
    assert info.vmigdb and info.batched_capable
    assert info.state_offs == symbols["rom_state"]
    assert {c for c, off in info.call_table.items() if off} == abi.IDENTITY_ROM_CALLS
    assert info.call_table[VmiCall.SetPxE] == symbols["vmi_SetPxE"]
    assert info.call_table[VmiCall.GetCycleFrequency] is None
    assert info.relocation(VmiCall.IRET) is abi.VmiRelocation.CALL_REL
    assert info.relocation(VmiCall.SetAlarm) is abi.VmiRelocation.NONE


def _patched(image: bytes, offset: int, new: bytes, fix_sum: bool = True) -> bytes:
    data = bytearray(image)
    data[offset:offset + len(new)] = new
    return with_checksum(data) if fix_sum else bytes(data)


@pytest.mark.parametrize("what,expect", [
    ("cvmi", "not a VMI ROM"),
    ("api", "API version 2.0"),
    ("nopci", "does not contain a PCI header"),
    ("pcisig", "no PCI header at offset"),
    ("licence", "licence 'MIT' is not GPL"),
    ("nolicence", "licence 'unspecified'"),
    ("length0", "rom_length is 0 bytes"),
])
def test_check_rom_rejects(image: bytes, what: str, expect: str) -> None:
    pci = hdr(image, "pci_header_offs")
    lic = hdr(image, "license_offs")
    off = {f.name: f.offset for f in abi.VROM_HEADER}
    bad = {
        "cvmi": lambda: _patched(image, off["vrom_signature"], b"cVmj"),
        "api": lambda: _patched(image, off["api_version_maj"], b"\x02"),
        "nopci": lambda: _patched(image, off["pci_header_offs"], b"\0\0"),
        "pcisig": lambda: _patched(image, pci, b"PCIX"),
        "licence": lambda: _patched(image, lic, b"MIT\0"),
        "nolicence": lambda: _patched(image, off["license_offs"], b"\0\0"),
        "length0": lambda: _patched(image, off["rom_length"], b"\0", fix_sum=False),
    }[what]()
    with pytest.raises(RomError, match=expect):
        rominfo.parse_rom(bad)


def test_checksum_message_says_the_sum(image: bytes) -> None:
    bad = _patched(image, 0x40, bytes([image[0x40] + 3]), fix_sum=False)
    with pytest.raises(RomError, match=r"sum to 0x03"):
        rominfo.check_rom(bad)
    assert rominfo.parse_rom(bad, verify_checksum=False).checksum == 3


def test_find_roms_scans_like_linux(image: bytes) -> None:
    start = abi.ROM_SCAN_START
    memory = bytearray(abi.ROM_SCAN_END - start)
    memory[0:2] = b"\x55\xaa"  # a stray signature, no cVmi
    at = 3 * abi.ROM_SCAN_STEP
    memory[at:at + len(image)] = image
    odd = at + len(image) + 512  # not on a 2 KiB step: Linux never looks there
    memory[odd:odd + len(image)] = image
    late = 16 * abi.ROM_SCAN_STEP
    memory[late:late + len(image)] = _patched(image, 0x40, b"\x99", fix_sum=False)  # bad sum

    def read(addr: int, size: int) -> bytes:
        return bytes(memory[addr - start:addr - start + size])

    found = rominfo.find_roms(read)
    assert [f.address for f in found] == [start + at]
    assert found[0].info.licence == "GPL v2"
    lenient = rominfo.find_roms(read, verify_checksum=False)
    assert [f.address for f in lenient] == [start + at, start + late]


# --- views and CLI --------------------------------------------------------------------------------

def test_render_rom(image: bytes) -> None:
    text = render_text(render_rom(rominfo.parse_rom(image)), width=120)
    assert "15ad:0801" in text and "'GPL v2'" in text and "ok (sums to 0)" in text
    rows = {ln.split("│")[2].strip(): ln for ln in text.splitlines() if ln.count("│") >= 5}
    assert "CALL_REL" in rows["SetPxE"] and "mov" in rows["SetPxE"]
    assert "invlpg" in rows["InvalPage"]
    assert "NONE" in rows["GetCycleFrequency"]
    assert len(rows) == len(VmiCall)


def _cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMIGDB), "rom", "info", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_cli_rom_info_good(built: Path) -> None:
    r = _cli(built)
    assert r.returncode == 0, r.stderr
    assert "15ad:0801" in r.stdout and "SetLazyMode" in r.stdout


@pytest.mark.parametrize("kind,expect", [
    ("checksum", "bad checksum"),
    ("signature", "not an option ROM"),
    ("truncated", "truncated"),
])
def test_cli_rom_info_bad(image: bytes, tmp_path: Path, kind: str, expect: str) -> None:
    data = {
        "checksum": _patched(image, 0x40, b"\x77", fix_sum=False),
        "signature": _patched(image, 0, b"\x55\xab"),
        "truncated": image[:len(image) // 2],
    }[kind]
    path = tmp_path / f"{kind}.bin"
    path.write_bytes(data)
    r = _cli(path)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
