"""Build the identity VMI ROM reproducibly: GNU as, ld with rom/vmi_rom.ld, objcopy, checksum.

Why a Python driver rather than Makefile rules: the image needs a post-link step (checksum byte)
and tests need to build it into temporary directories and compare bytes, so one function does
it all the same way for make, tests and the CLI. Reproducible: the tools see only relative names
in a fresh temporary directory, no build id, no debug info but the call-frame information of
.debug_frame (the unwinder's, emitted from the source's .cfi directives, with no path in it),
and local symbols are discarded, so two builds give identical .bin and .elf bytes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from vmigdb import abi
from vmigdb.errors import BuildError

ROM_DIR = Path(__file__).resolve().parent
SOURCE = ROM_DIR / "vmi_rom.S"
LINKER_SCRIPT = ROM_DIR / "vmi_rom.ld"
ABI_INCLUDE = "vmi_abi.inc"
TOOLS = ("as", "ld", "objcopy")


def _run(argv: list[str], cwd: Path) -> None:
    """Run one tool; a failure becomes a one-line BuildError quoting its first message."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise BuildError(f"cannot run {argv[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        # gas prints "file: Assembler messages:" first; the useful line is the one after it.
        useful = [ln for ln in lines if not ln.endswith("Assembler messages:")]
        detail = useful[0] if useful else f"exit status {proc.returncode}"
        raise BuildError(f"{argv[0]} failed: {detail}")


def finish_image(raw: bytes) -> bytes:
    """Pad the linked image to a ROM_BLOCK multiple and set its last byte so all bytes sum to 0.

    The linker script already ends the image on a block boundary with a zero checksum byte and
    writes the block count into the header and the PCIR; this checks that those agree with the
    padded size, so a broken linker script fails the build instead of producing a ROM the BIOS
    rejects.
    """
    if not raw:
        raise BuildError("objcopy produced an empty ROM image")
    image = bytearray(raw)
    image += bytes(-len(image) % abi.ROM_BLOCK)
    blocks = len(image) // abi.ROM_BLOCK
    length_at = abi.field(abi.VROM_HEADER, "rom_length").offset
    if image[length_at] != blocks:
        raise BuildError(f"rom_length is {image[length_at]} blocks but the image has {blocks}")
    pci_at = int.from_bytes(image[abi.field(abi.VROM_HEADER, "pci_header_offs").offset:][:2],
                            "little")
    chunks_at = pci_at + abi.field(abi.PCI_HEADER, "chunks").offset
    chunks = int.from_bytes(image[chunks_at:chunks_at + 2], "little")
    if chunks != blocks:
        raise BuildError(f"PCIR length is {chunks} blocks but the image has {blocks}")
    if image[-1] != 0:
        raise BuildError("the last byte of the image is not the (zero) checksum slot")
    image[-1] = -sum(image) & 0xFF
    return bytes(image)


def build_rom(output: Path) -> Path:
    """Assemble, link and checksum the ROM into ``output``; keep the ELF next to it.

    Writes ``output`` (the image), ``output`` with suffix ``.elf`` (symbols and call-frame
    information at image offsets: ``add-symbol-file vmi_rom.elf -o BASE`` in gdb, which
    ``vmi symbols`` does at the live ROM) and ``vmi_abi.inc`` in the same directory
    (the constants the assembler included, rendered from vmigdb/abi.py). Returns ``output``.
    """
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BuildError(f"{', '.join(missing)} not found: install GNU binutils")
    output = Path(output)
    out_dir = output.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    inc_text = abi.render_asm_header()
    inc = out_dir / ABI_INCLUDE
    if not inc.exists() or inc.read_text() != inc_text:
        inc.write_text(inc_text)
    with tempfile.TemporaryDirectory(prefix="vmigdb-rom-") as tmp:
        work = Path(tmp)
        shutil.copyfile(SOURCE, work / SOURCE.name)
        shutil.copyfile(LINKER_SCRIPT, work / LINKER_SCRIPT.name)
        shutil.copyfile(inc, work / ABI_INCLUDE)
        _run(["as", "--32", "-I", ".", "-o", "vmi_rom.o", SOURCE.name], work)
        _run(["ld", "-m", "elf_i386", "-T", LINKER_SCRIPT.name, "-x", "--no-warn-rwx-segments",
              "-o", "vmi_rom.elf", "vmi_rom.o"], work)
        _run(["objcopy", "-O", "binary", "vmi_rom.elf", "vmi_rom.raw"], work)
        image = finish_image((work / "vmi_rom.raw").read_bytes())
        elf = (work / "vmi_rom.elf").read_bytes()
    output.write_bytes(image)
    output.with_suffix(".elf").write_bytes(elf)
    return output
