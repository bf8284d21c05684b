"""Traces as the streaming commands read them: chunk by chunk, with progress, the ``--partial``
rule, and header values that are checked before anything trusts them.

``vmigdb.tracefile`` validates every batch; what is left for its readers is what a header
*says*: a ``guest`` or ``symbols`` path is a string, and a path is only opened when it names a
regular file (a header naming ``/dev/zero`` or a FIFO must not make a report read forever).
A trace cut short (a killed capture) is an error unless the user asked for its complete part
with ``--partial``; then it is one warning line.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from vmigdb import events as ev
from vmigdb.progress import Progress
from vmigdb.tracefile import TraceFile, TraceFormatError

#: Header keys shown in a report's first line, in this order.
SHOWN_KEYS = ("producer", "target", "source", "guest", "symbols", "cmdline", "until")
#: Header keys whose value, when present, is a string (paths and names).
STRING_KEYS = ("producer", "target", "source", "guest", "symbols", "rom", "cmdline")
#: Header keys that name files vmigdb may open.
PATH_KEYS = ("guest", "symbols")
_MAX_SHOWN = 120  # characters of one header value


def size(tf: TraceFile) -> int:
    try:
        return os.stat(tf.path).st_size
    except OSError:
        return 0


def bytes_read(tf: TraceFile) -> int:
    """How far into its file a trace's reader is (a version 1 file is read whole when it is
    opened: all of it)."""
    return tf.tell() if tf.version == 2 else size(tf)


def chunks(tf: TraceFile, *, partial: bool = False, progress: Progress | None = None,
           warn: Callable[[str], None] | None = None) -> Iterator[ev.Chunk]:
    """The trace's checked chunks. A cut trace raises TraceCutError (one line) after its
    complete chunks, or with ``partial`` ends there with one ``warn`` line."""
    for chunk in tf.chunks(partial=partial):
        if progress is not None:
            progress.update(bytes_read(tf))
        yield chunk
    if partial and not tf.complete and warn is not None:
        warn(f"warning: {tf.path} is cut off after {tf.events} events (the capture was "
             "killed or is still running); using its complete part")


def tracked(files: Sequence[TraceFile], description: str) -> Progress:
    """A progress bar over the bytes of several traces read side by side."""
    return Progress(description, sum(size(tf) for tf in files))


def update_many(progress: Progress, files: Sequence[TraceFile]) -> None:
    progress.update(sum(bytes_read(tf) for tf in files))


def check_header(tf: TraceFile) -> None:
    """TraceFormatError (one line) for a header whose values are not what producers write: a
    path that is not a string, or one naming something that exists but is no regular file (a
    device, a FIFO: reading it could take forever). A path that does not exist here is fine
    (a trace moved to another machine)."""
    for key in STRING_KEYS:
        value = tf.header.get(key)
        if value is not None and not isinstance(value, str):
            raise TraceFormatError(f"{tf.path}: header: {key} is a {type(value).__name__}, "
                                   "not a string")
    for key in PATH_KEYS:
        value = tf.header.get(key)
        if not value:
            continue
        try:
            mode = os.stat(value).st_mode
        except (OSError, ValueError):
            continue
        if not stat.S_ISREG(mode):
            raise TraceFormatError(f"{tf.path}: header: {key} {shown(value)} is not a "
                                   "regular file")


def plain(d: dict[str, Any] | None) -> dict[str, Any]:
    """The scalar values of a header or end record (what an export copies: nesting is for
    no producer, and a hostile one could nest deeper than a JSON writer recurses)."""
    return {k: v for k, v in (d or {}).items()
            if isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))}


def regular_file(path: Any) -> str | None:
    """``path`` if it is a string naming a regular file, else None. A header's paths are
    data: a number, a device or a FIFO is never opened."""
    if not isinstance(path, str) or not path or "\0" in path:
        return None
    try:
        return path if stat.S_ISREG(os.stat(path).st_mode) else None
    except (OSError, ValueError):
        return None


def shown(value: Any) -> str:
    """A header value as one short, printable line (headers are untrusted data)."""
    text = value if isinstance(value, str) else repr(value) if isinstance(
        value, (int, float, bool)) else type(value).__name__
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 1] + "…"


def describe_header(header: dict[str, Any]) -> str:
    """``key=value, ...`` of the header keys a reader cares about."""
    return ", ".join(f"{k}={shown(header[k])}" for k in SHOWN_KEYS
                     if header.get(k) not in (None, "", False))


def symbols_path(header: dict[str, Any], trace: str | None = None
                 ) -> tuple[str | None, str | None]:
    """(the ELF file a trace names for its symbols, a note when it names one that is not
    there). ``symbols`` (vmlinux for Linux) comes first, then the ``guest`` (the demo guest is
    an ELF with symbols; a bzImage is not, and the reader says so). A relative path is taken
    from the current directory, then from the trace's."""
    named = []
    for key in ("symbols", "guest"):
        value = header.get(key)
        if not isinstance(value, str) or not value:
            continue
        named.append(value)
        candidates = [value]
        if trace is not None and not os.path.isabs(value):
            candidates.append(os.path.join(os.path.dirname(trace), value))
        for candidate in candidates:
            if regular_file(candidate) is not None:
                return candidate, None
    if named:
        return None, f"no symbols: {shown(named[0])} is not a file here (give --elf)"
    return None, None
