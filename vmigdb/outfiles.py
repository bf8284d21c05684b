"""Output files of the streaming commands: checked before the work, removed when it fails.

A report over a Linux boot takes seconds; finding out at the end that ``--html /proc/version``
cannot be written wastes them, so every output path is probed first (without truncating
anything). An export that fails half-way (a trace cut short, a full disk) must not leave a file
that looks complete, so its output is removed. Both give one line (``VmiError``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from vmigdb.errors import VmiError


def _error(path: str, e: OSError) -> VmiError:
    return VmiError(f"cannot write {path}: {e.strerror or e}")


def _regular_or_missing(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def probe(path: str) -> None:
    """VmiError unless ``path`` can be written. Nothing is truncated, and a file the probe
    created is removed; a FIFO or device is not opened (a FIFO would wait for its reader)."""
    if os.path.isdir(path):
        raise VmiError(f"cannot write {path}: it is a directory")
    if not _regular_or_missing(path):
        if not os.access(path, os.W_OK):
            raise VmiError(f"cannot write {path}: permission denied")
        return
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise _error(path, e) from None
    if not existed:
        os.unlink(path)


@contextmanager
def writing(path: str, mode: str = "w", **kw: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for the length of the block; if the block fails, the file is
    removed (when it is a regular file) and an OSError becomes one line."""
    try:
        f = open(path, mode, **kw)  # noqa: SIM115 - closed below
    except OSError as e:
        raise _error(path, e) from None
    regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    try:
        yield f
        f.close()
    except BaseException as e:
        try:
            f.close()
        except OSError:
            pass
        if regular:
            try:
                os.unlink(path)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, VmiError):
            raise _error(path, e) from None
        raise
