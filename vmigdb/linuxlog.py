"""What a Linux console says that a runner must act on: a panic (the kernel then spins forever,
unless ``panic=N`` makes it reboot). Test harnesses that boot kernels (KernelCI, syzkaller)
watch the console for the same line.
"""

from __future__ import annotations

PANIC = b"Kernel panic - not syncing: "
#: Virtual time a panicked kernel gets to print its stack dump before the run is ended.
PANIC_GRACE_NS = 50_000_000


class ConsoleWatch:
    """Feed it the serial stream; ``panic`` is the first panic message seen, or None."""

    def __init__(self) -> None:
        self.panic: str | None = None
        self._line = bytearray()

    def feed(self, data: bytes) -> bool:
        """True when this chunk completed the first panic line."""
        found = False
        for chunk in data.splitlines(keepends=True):
            self._line += chunk
            if not chunk.endswith((b"\n", b"\r")):
                continue
            line, self._line = bytes(self._line), bytearray()
            at = line.find(PANIC)
            if at >= 0 and self.panic is None:
                self.panic = line[at + len(PANIC):].decode(errors="replace").strip()
                found = True
        return found
