"""Build the probe userspace: compile probe.c + probe_asm.S into a static i386 /init and pack it
with a data file into a gzip'd newc cpio for a Linux kernel's ``--initrd``.

Why here and in Python: the tests need the initramfs from source on every machine that has gcc
and binutils, without a kernel tree (whose ``usr/gen_init_cpio`` packs the shared workload) and
without a 32-bit libc; the newc format is a few lines to write, and writing it ourselves keeps
every byte fixed (mtimes, inode numbers, gzip header), so the same sources give the same initrd
and the machine's logs can be compared byte for byte.

Usage: ``python tests/linux/initramfs.py [OUT_DIR]`` (default ``build/linux-probe``), or
:func:`build_initramfs` from a test.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SOURCES = (HERE / "probe.c", HERE / "probe_asm.S")

#: Size of /data; probe.c's DATA_SIZE (three pages and a partial fourth, so that the file has a
#: tail past its end within its last page and a page past that which raises SIGBUS).
DATA_SIZE = 3 * 4096 + 100

CFLAGS = (
    "-m32", "-march=i686", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-fno-builtin",
)

S_IFDIR = 0o040000
S_IFCHR = 0o020000
S_IFREG = 0o100000


def probe_names() -> list[str]:
    """The probe names of probe.c's ``probes[]`` table, in the order the probe runs them.

    Read from the source so that the tests parametrize over exactly the probes that exist,
    with the C table as the one list."""
    text = (HERE / "probe.c").read_text()
    start = text.index("probes[] = {")
    table = text[start:text.index("};", start)]
    names = re.findall(r'\{\s*"([^"]+)",\s*p_\w+\s*\}', table)
    if not names:
        raise RuntimeError("no probes found in probe.c's probes[] table")
    return names


def data_bytes(size: int = DATA_SIZE) -> bytes:
    """The contents of /data: byte i = (i * 131 + (i >> 9) * 7 + 0x5a) mod 256, as probe.c's
    data_byte() expects (a pattern that differs between pages, so an offset mapping that maps
    the wrong page is caught)."""
    return bytes((i * 131 + (i >> 9) * 7 + 0x5A) & 0xFF for i in range(size))


@dataclass(frozen=True)
class Entry:
    """One cpio member: a path without the leading slash, its mode (type and permissions), the
    contents of a regular file, and the device numbers of a device node."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc(entries: Iterable[Entry]) -> bytes:
    """The entries as a newc ("070701") cpio archive, with its TRAILER!!! member.

    Every header field is 8 hex digits; the name (with its NUL) is padded so that the data
    starts on a 4-byte boundary, and the data is padded likewise. mtime 0, uid/gid 0 and
    inode numbers in order keep the archive reproducible.
    """
    out = bytearray()
    members = [*entries, Entry("TRAILER!!!", 0)]
    for ino, e in enumerate(members, start=1):
        name = e.name.encode() + b"\0"
        is_dir = (e.mode & 0o170000) == S_IFDIR
        fields = (
            ino if e.name != "TRAILER!!!" else 0,   # c_ino
            e.mode,                                  # c_mode
            0, 0,                                    # c_uid, c_gid
            2 if is_dir else 1,                      # c_nlink
            0,                                       # c_mtime
            len(e.data),                             # c_filesize
            0, 0,                                    # c_devmajor, c_devminor
            e.rdev[0], e.rdev[1],                    # c_rdevmajor, c_rdevminor
            len(name),                               # c_namesize
            0,                                       # c_check
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += e.data + _pad4(len(e.data))
    out += b"\0" * (-len(out) % 512)   # block padding, as cpio(1) does
    return bytes(out)


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")


def compile_init(out_dir: Path) -> Path:
    """Compile and link the probe into ``out_dir/init`` (a static ELF32 executable, entry
    ``_start``) with gcc and GNU ld; objects go beside it. Returns the executable's path."""
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: the probe is built with gcc -m32 and GNU ld")
    out_dir.mkdir(parents=True, exist_ok=True)
    objs = []
    for src in SOURCES:
        obj = out_dir / (src.name + ".o")
        _run(["gcc", *CFLAGS, "-c", str(src), "-o", str(obj)])
        objs.append(str(obj))
    init = out_dir / "init"
    _run(["ld", "-m", "elf_i386", "-static", "-nostdlib", "-e", "_start", "--build-id=none",
          "-o", str(init), *objs])
    return init


def build_initramfs(out_dir: Path) -> Path:
    """Build ``out_dir/probe-initramfs.cpio.gz``: /dev, /dev/console (c 5:1, 0600), /proc (a
    mount point), /init (the probe) and /data (:func:`data_bytes`). Returns its path."""
    init = compile_init(out_dir)
    archive = newc([
        Entry("dev", S_IFDIR | 0o755),
        Entry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("proc", S_IFDIR | 0o755),
        Entry("init", S_IFREG | 0o755, init.read_bytes()),
        Entry("data", S_IFREG | 0o644, data_bytes()),
    ])
    (out_dir / "probe-initramfs.cpio").write_bytes(archive)
    out = out_dir / "probe-initramfs.cpio.gz"
    out.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
    return out


def build_echo_initramfs(out_dir: Path) -> Path:
    """``out_dir/echo-initramfs.cpio.gz``: /dev/console and /init = echo.c (a console session
    through the 8250's receive interrupt). Returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    obj, init = out_dir / "echo.o", out_dir / "echo-init"
    _run(["gcc", *CFLAGS, "-c", str(HERE / "echo.c"), "-o", str(obj)])
    _run(["ld", "-m", "elf_i386", "-static", "-nostdlib", "-e", "_start", "--build-id=none",
          "-o", str(init), str(obj)])
    archive = newc([Entry("dev", S_IFDIR | 0o755),
                    Entry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
                    Entry("init", S_IFREG | 0o755, init.read_bytes())])
    out = out_dir / "echo-initramfs.cpio.gz"
    out.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
    return out


def main(argv: list[str]) -> int:
    """Command line: build into argv[1] (default build/linux-probe) and print the path."""
    out_dir = Path(argv[1]) if len(argv) > 1 else REPO / "build" / "linux-probe"
    print(build_initramfs(out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
