"""Boot loaders: what goes into RAM, and the CPU state the kernel is entered with.

Two kinds of kernel boot here, told apart by their bytes: a multiboot ELF (our demo guests; the
state QEMU's ``-kernel`` multiboot loader leaves) and a Linux bzImage (boot protocol 2.x,
entered at its 32-bit entry as GRUB and QEMU's linuxboot do). Neither touches Unicorn: a loader
returns a ``BootImage`` and the machine writes it, so bad input is tested on bytes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmigdb.errors import GuestImageError


@dataclass(frozen=True)
class BootImage:
    """What a loader puts in RAM and the CPU state it enters the kernel with."""

    kind: str  # "multiboot" | "linux"
    blobs: tuple[tuple[int, bytes], ...]  # (physical address, bytes), written in order
    entry: int
    regs: dict[str, int]  # general registers at entry (eip is ``entry``)
    gdt: tuple[int, int]  # (base, limit) of the GDT the loader wrote
    code_selector: int
    data_selector: int
    summary: dict[str, object] = field(default_factory=dict)  # for `monitor info boot`


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x206 and data[0x1FE:0x200] == b"\x55\xaa" and data[0x202:0x206] == b"HdrS"


def load(image: bytes, *, name: str, cmdline: str, initrd: bytes | None,
         ram_size: int) -> BootImage:
    """The boot plan for a multiboot ELF or a bzImage; GuestImageError on bad input."""
    from vmigdb.stub.machine.boot import linux, multiboot

    if is_bzimage(image):
        return linux.plan(image, cmdline=cmdline, initrd=initrd, ram_size=ram_size)
    if image[:4] == b"\x7fELF":
        if initrd is not None:
            raise GuestImageError("--initrd needs a Linux bzImage; this is a multiboot ELF")
        return multiboot.plan(image, name=name, cmdline=cmdline, ram_size=ram_size)
    raise GuestImageError("neither a Linux bzImage nor a multiboot ELF")
