"""The exception family the core raises; each edge translates it once.

The CLI prints one line and exits 2, a gdb command raises ``gdb.GdbError``, the stub answers
``E NN``. Nothing below the edges prints.
"""


class VmiError(Exception):
    """Base of every error vmigdb reports to a user as one line."""


class RomError(VmiError):
    """A ROM image is malformed: bad signature, checksum, header or licence."""


class GuestImageError(VmiError):
    """A guest image cannot be loaded: not ELF, not 32-bit, no multiboot header."""


class TraceFormatError(VmiError):
    """A trace file is corrupt, truncated or foreign; carries the line number."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class BuildError(VmiError):
    """The assembler, compiler or linker failed while building the ROM or a guest."""
