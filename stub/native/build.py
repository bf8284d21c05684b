"""cffi build of vmigdb's native machine (``vmigdb.stub._native``), run at install time.

The C files include ``vm.h``; cffi reads the same header (without its include guard and
``#include`` lines) as its declarations, so a struct or constant is declared once for both
languages and Python reaches every field by name.
"""

from __future__ import annotations

from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
HEADER = HERE / "vm.h"
SOURCES = sorted(HERE.glob("*.c"))


def declarations(text: str) -> str:
    """The header as cffi's cdef takes it: no include guard, no #include."""
    out = []
    for line in text.splitlines():
        if line.startswith(("#ifndef", "#endif", "#include", "#define VMIGDB_VM_H")):
            continue
        out.append(line)
    return "\n".join(out)


ffibuilder = cffi.FFI()
ffibuilder.cdef(declarations(HEADER.read_text()))
ffibuilder.set_source(
    "vmigdb.stub._native", '#include "vm.h"',
    sources=[str(p.relative_to(ROOT)) for p in SOURCES],
    include_dirs=[str(HERE.relative_to(ROOT))],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
