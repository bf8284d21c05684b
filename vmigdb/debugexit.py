"""QEMU's isa-debug-exit device: the one place for its rules (QEMU hw/misc/debugexit.c).

A guest ends a run by writing a value to the device's port; QEMU's process then exits with
``(value << 1) | 1``, so its status is never 0 for a guest exit (a guest that succeeds, value 0,
makes QEMU exit 1). vmigdb's machine reports the value itself (``Stop.exit_code``, and
``vmigdb run`` exits with it); this module turns one into the other. Pure: no processes.
"""

from __future__ import annotations

IOBASE = 0xF4
IOSIZE = 4
#: The ``-device`` argument every QEMU reference run uses.
QEMU_DEVICE = f"isa-debug-exit,iobase={IOBASE:#x},iosize={IOSIZE}"


def qemu_status(value: int) -> int:
    """QEMU's process exit status after the guest wrote ``value`` (as a byte, as a process
    status is)."""
    return ((value << 1) | 1) & 0xFF


def guest_code(status: int | None) -> int | None:
    """The value the guest wrote, from QEMU's exit status; None when QEMU ended another way
    (still running, status 0, a signal: negative in ``subprocess``, or an even status)."""
    if status is None or status <= 0 or not status & 1:
        return None
    return status >> 1
