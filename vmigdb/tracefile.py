"""The vmigdb trace file, version 2: event columns in an Arrow IPC stream (docs/trace-format.md).

Why Arrow: a Linux boot is millions of events, and the consumers are numpy (reports, diffs),
pandas, polars and DuckDB. An Arrow IPC stream holds the events as the columns they are used as
(``vmigdb.events.EVENT``, plus a list column of flush entries), compressed per column with
zstd (~3 bytes an event), readable batch by batch with bounded memory, by any Arrow library, and
appendable: each batch is written whole and flushed, so a file cut by SIGKILL keeps every batch
before the cut. The schema's metadata holds the header, a batch's metadata the task names first
seen in it, and a last, empty batch the end record.

Readers: ``open_trace`` (either version: a version 1 JSON Lines file is converted as it is
read), then ``chunks()``; every batch is checked before it is handed out (``TraceFormatError``,
one line, never a traceback).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Self

import numpy as np

from vmigdb import abi
from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.errors import VmiError

FORMAT_NAME = tr.FORMAT_NAME
VERSION = 2
#: Events per batch: ~200 KB compressed, ~5 MB in memory.
BATCH_EVENTS = 1 << 16
META_KEY = b"vmigdb"
ENTRY_COLUMN = "entries"
#: What a vmigdb trace's producers write into the header, by key (readers ignore others).
_COMPRESSION = "zstd"
_MAX_META = 1 << 20  # bytes of JSON in one metadata value
_MAX_JSON_DEPTH = 32


class TraceFormatError(VmiError):
    """Not a vmigdb trace, or a damaged one: the message names the batch and what is wrong."""


class TraceCutError(TraceFormatError):
    """The trace ends early (a capture that was killed): ``events`` complete events before."""

    def __init__(self, message: str, events: int) -> None:
        super().__init__(message)
        self.events = events


def _pa() -> Any:
    import pyarrow as pa  # a second of import time: only where traces are read or written

    return pa


def schema() -> Any:
    pa = _pa()
    fields = [pa.field(name, pa.from_numpy_dtype(ev.EVENT[name]), nullable=False)
              for name in ev.EVENT.names]
    entry = pa.list_(pa.uint32(), 4)
    fields.append(pa.field(ENTRY_COLUMN, pa.list_(entry), nullable=False))
    return pa.schema(fields)


def _json_meta(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _depth(value: Any, limit: int) -> int:
    """How deep a decoded JSON value nests (stops counting past ``limit``)."""
    if limit <= 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def _load_meta(raw: bytes | None, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if len(raw) > _MAX_META:
        raise TraceFormatError(f"{what}: {len(raw)} bytes of metadata (at most {_MAX_META})")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError: also a 5,000-digit number
        raise TraceFormatError(f"{what}: metadata is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise TraceFormatError(f"{what}: metadata is not a JSON object")
    if _depth(value, _MAX_JSON_DEPTH) >= _MAX_JSON_DEPTH:
        raise TraceFormatError(f"{what}: metadata nests deeper than {_MAX_JSON_DEPTH}")
    return value


# --- writing -------------------------------------------------------------------------------------


class TraceFileWriter:
    """Writes chunks as they come; each batch is complete on disk before the next one starts.

    ``out`` is a path or a binary file (a FIFO works: nothing is ever read back or seeked).
    OSError (a full disk, a closed reader) reaches the caller; the file up to the last whole
    batch stays readable."""

    def __init__(self, out: str | Path | IO[bytes], **header: Any) -> None:
        pa = _pa()
        self._own = not hasattr(out, "write")
        self.path = str(out) if self._own else getattr(out, "name", "<stream>")
        self._file: IO[bytes] = open(out, "wb") if self._own else out  # type: ignore[arg-type]  # noqa: SIM115
        self.header = {"format": FORMAT_NAME, "version": VERSION, **header}
        self._schema = schema().with_metadata({META_KEY: _json_meta(self.header)})
        options = pa.ipc.IpcWriteOptions(compression=_COMPRESSION)
        try:
            self._writer = pa.ipc.new_stream(self._file, self._schema, options=options)
            self._file.flush()
        except BaseException:
            if self._own:
                self._file.close()
            raise
        self._held: list[ev.Chunk] = []
        self._held_events = 0
        self._tasks: dict[int, tuple[int, str]] = {}  # names not written yet
        self.events = 0
        self.closed = False

    def add(self, chunk: ev.Chunk, tasks: dict[int, tuple[int, str]] | None = None) -> None:
        """Queue events (and task names) for the file; a batch goes out every BATCH_EVENTS."""
        if tasks:
            self._tasks.update(tasks)
        if len(chunk):
            self._held.append(chunk)
            self._held_events += len(chunk)
        while self._held_events >= BATCH_EVENTS:
            whole = ev.concat(self._held)
            self._write(whole.select(slice(0, BATCH_EVENTS)))
            rest = whole.select(slice(BATCH_EVENTS, None))
            self._held, self._held_events = ([rest], len(rest)) if len(rest) else ([], 0)

    def flush(self) -> None:
        """Write what is held as a batch now (a capture's progress on disk)."""
        if self._held_events or self._tasks:
            self._write(ev.concat(self._held))
            self._held, self._held_events = [], 0

    def close(self, **end: Any) -> None:
        """Write what is held, then the end record: the file is complete."""
        if self.closed:
            return
        try:
            self.flush()
            self._write(ev.Chunk.empty(), {"end": {"events": self.events, **end}})
            self._writer.close()
            self._file.flush()
        finally:
            self.closed = True
            if self._own:
                self._file.close()

    def abort(self) -> None:
        """Stop without an end record (the file stays readable up to its last batch)."""
        self.closed = True
        if self._own:
            try:
                self._file.close()
            except OSError:
                pass

    def _write(self, chunk: ev.Chunk, meta: dict[str, Any] | None = None) -> None:
        meta = dict(meta or {})
        if self._tasks:
            meta["tasks"] = {f"{k:#x}": [pid, comm] for k, (pid, comm) in self._tasks.items()}
            self._tasks = {}
        batch = to_batch(chunk, self._schema)
        self._writer.write_batch(batch, custom_metadata=(
            {META_KEY: _json_meta(meta)} if meta else None))
        self._file.flush()
        self.events += len(chunk)


def _arrow(values: np.ndarray) -> Any:
    """A numeric numpy column as an Arrow array over the same bytes. (``pa.array`` would
    import pandas, when it is installed, to check for pandas types: a third of a second in
    the stub's trace writer, for nothing.)"""
    pa = _pa()
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                 [None, pa.py_buffer(values)])


def to_batch(chunk: ev.Chunk, sch: Any = None) -> Any:
    """A chunk as an Arrow record batch of the trace schema."""
    pa = _pa()
    sch = sch or schema()
    kinds = chunk["kind"]
    counts = np.where(kinds == ev.Kind.FLUSH, chunk["a1"], 0).astype(np.int32)
    if int(counts.sum()) != len(chunk.entries):
        raise ValueError(f"{len(chunk.entries)} flush entries for counts adding to "
                         f"{int(counts.sum())}")
    offsets = np.zeros(len(chunk) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    values = np.stack([chunk.entries[n] for n in ("ptep", "flags", "lo", "hi")], axis=1)
    entry = pa.FixedSizeListArray.from_arrays(_arrow(values.reshape(-1).astype(np.uint32, copy=False)), 4)
    lists = pa.ListArray.from_arrays(_arrow(offsets), entry)
    arrays = [_arrow(chunk[name]) for name in ev.EVENT.names]
    return pa.RecordBatch.from_arrays([*arrays, lists], schema=sch)


# --- reading -------------------------------------------------------------------------------------


class TraceFile:
    """A trace being read: ``header`` now, then ``chunks()`` one batch at a time; ``tasks`` and
    ``end`` fill in as the batches go by."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.header: dict[str, Any] = {}
        self.version = 0
        self.tasks: dict[int, tuple[int, str]] = {}
        self.end: dict[str, Any] | None = None
        self.events = 0  # events handed out so far
        self._v1: tr.Trace | None = None
        self._reader: Any = None
        self._file: IO[bytes] | None = None
        self._open()

    def _open(self) -> None:
        p = Path(self.path)
        try:
            if not p.is_file():
                raise TraceFormatError(f"{self.path}: not a regular file")
            self._file = open(p, "rb")  # noqa: SIM115 - closed by close()
            head = self._file.read(8)
        except OSError as e:
            raise TraceFormatError(f"{self.path}: {e.strerror or e}") from None
        if head[:1] == b"{":
            self._file.close()
            self._file = None
            self._open_v1()
            return
        if head[:4] != b"\xff\xff\xff\xff":
            raise TraceFormatError(f"{self.path}: not a vmigdb trace (neither JSON Lines nor "
                                   "an Arrow stream)")
        self._file.seek(0)
        pa = _pa()
        try:
            self._reader = pa.ipc.open_stream(self._file)
        except MemoryError:  # a corrupt length: Arrow asked for more than there is
            raise TraceFormatError(f"{self.path}: not a vmigdb trace (its schema claims more "
                                   "memory than there is)") from None
        except (pa.ArrowException, OSError) as e:
            raise TraceFormatError(f"{self.path}: not a vmigdb trace ({_one_line(e)})") from None
        sch = self._reader.schema
        self.header = _load_meta((sch.metadata or {}).get(META_KEY), f"{self.path}: header")
        if self.header.get("format") != FORMAT_NAME:
            raise TraceFormatError(f"{self.path}: an Arrow stream, but not a vmigdb trace")
        if self.header.get("version") != VERSION:
            raise TraceFormatError(f"{self.path}: trace format version "
                                   f"{self.header.get('version')!r}; this vmigdb reads "
                                   f"{tr.FORMAT_VERSION} and {VERSION}")
        if not sch.remove_metadata().equals(schema()):
            raise TraceFormatError(f"{self.path}: columns are not the version {VERSION} ones")
        self.version = VERSION

    def _open_v1(self) -> None:
        try:
            self._v1 = tr.read_trace(self.path)
        except tr.TraceFormatError as e:
            raise TraceFormatError(f"{self.path}: {e}") from None
        except OSError as e:
            raise TraceFormatError(f"{self.path}: {e.strerror or e}") from None
        self.header = dict(self._v1.meta)
        self.version = tr.FORMAT_VERSION

    def tell(self) -> int:
        """Bytes of the file read so far (a progress bar's position)."""
        try:
            return self._file.tell() if self._file is not None and not self._file.closed else 0
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def complete(self) -> bool:
        """The end record was read: nothing is missing."""
        return self.end is not None

    def chunks(self, *, partial: bool = False) -> Iterator[ev.Chunk]:
        """Each batch's events, checked. A trace that ends early raises TraceCutError after
        its complete batches, unless ``partial``."""
        if self._v1 is not None:
            yield from self._chunks_v1(partial)
            return
        pa = _pa()
        last_seq = -1
        n = 0
        while True:
            try:
                batch, meta = self._reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            except MemoryError:  # a corrupt length (a writer's batches are BATCH_EVENTS long)
                raise TraceFormatError(f"{self.path}: batch {n}: claims more memory than "
                                       "there is (corrupt)") from None
            except (pa.ArrowException, OSError) as e:
                if _is_cut(e):
                    break
                raise TraceFormatError(f"{self.path}: batch {n}: {_one_line(e)}") from None
            what = f"{self.path}: batch {n}"
            if self.end is not None:
                raise TraceFormatError(f"{what}: comes after the end record")
            info = _load_meta((meta or {}).get(META_KEY) if meta else None, what)
            chunk = _check(batch, what, last_seq)
            self._tasks_from(info.get("tasks"), what)
            if "end" in info:
                end = info["end"]
                if not isinstance(end, dict) or end.get("events") != self.events + len(chunk):
                    raise TraceFormatError(f"{what}: the end record does not count "
                                           f"{self.events + len(chunk)} events")
                self.end = end
            if len(chunk):
                last_seq = int(chunk["seq"][-1])
                self.events += len(chunk)
                yield chunk
            n += 1
        if self.end is None and not partial:
            raise TraceCutError(f"{self.path} is cut off after {self.events} events (no end "
                                "record: the capture was killed or is still running); "
                                "--partial uses them", self.events)

    def _tasks_from(self, tasks: Any, what: str) -> None:
        if tasks is None:
            return
        if not isinstance(tasks, dict):
            raise TraceFormatError(f"{what}: tasks is not an object")
        for key, value in tasks.items():
            try:
                ptr = int(key, 16)
                pid, comm = value
                if not isinstance(pid, int) or not isinstance(comm, str) or not 0 <= ptr < 1 << 32:
                    raise ValueError
            except (ValueError, TypeError):
                raise TraceFormatError(f"{what}: bad task entry {key!r}") from None
            self.tasks[ptr] = (pid, comm[:64])

    def _chunks_v1(self, partial: bool) -> Iterator[ev.Chunk]:
        t = self._v1
        assert t is not None
        if t.truncated and not partial:
            why = (f"line {t.lines + 1} is incomplete" if t.partial_line
                   else "it has no end record")
            raise TraceCutError(f"{self.path} is cut off after {len(t.events)} events ({why}: "
                                "the capture was killed or is still running); --partial uses "
                                "them", len(t.events))
        for at in range(0, len(t.events), BATCH_EVENTS):
            try:
                chunk = ev.from_events(t.events[at:at + BATCH_EVENTS])
            except (ValueError, TypeError) as e:
                raise TraceFormatError(f"{self.path}: {e}") from None
            self.events += len(chunk)
            yield chunk
        if not t.truncated:  # a cut file has no end: ``complete`` stays False, as in version 2
            self.end = dict(t.end) if t.end else {"events": len(t.events)}


def _is_cut(e: Exception) -> bool:
    text = str(e)
    return any(s in text for s in ("Expected to read", "Expected to be able to read",
                                   "only 0 bytes available", "bytes available"))


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


_CALLS_OK = np.zeros(256, bool)
for _c in abi.CALLS:
    _CALLS_OK[int(_c)] = True


def _check(batch: Any, what: str, last_seq: int) -> ev.Chunk:
    """A batch as a chunk, if it is what a writer makes; TraceFormatError otherwise."""
    pa = _pa()
    try:
        batch.validate(full=True)
    except pa.ArrowException as e:
        raise TraceFormatError(f"{what}: {_one_line(e)}") from None
    if not batch.schema.remove_metadata().equals(schema()):
        raise TraceFormatError(f"{what}: columns are not the trace's")
    # np.asarray, not to_numpy(): that imports pandas when it is installed (0.2 s a command).
    cols = {name: np.asarray(batch.column(name)) for name in ev.EVENT.names}
    lists = batch.column(ENTRY_COLUMN)
    if lists.null_count or lists.values.null_count or lists.values.values.null_count:
        raise TraceFormatError(f"{what}: missing values")
    for name in ev.EVENT.names:
        if batch.column(name).null_count:
            raise TraceFormatError(f"{what}: missing values in {name}")
    chunk_len = len(cols["seq"])
    kinds, calls, seqs = cols["kind"], cols["call"], cols["seq"]
    if chunk_len:
        if (kinds > max(ev.Kind)).any():
            raise TraceFormatError(f"{what}: unknown event kind {int(kinds.max())}")
        if int(seqs[0]) <= last_seq or (chunk_len > 1 and (np.diff(seqs.astype(np.int64)) <= 0
                                                           ).any()):
            raise TraceFormatError(f"{what}: seq does not grow")
        is_call = (kinds == ev.Kind.CALL) | (kinds == ev.Kind.RETURN)
        if (is_call & ~_CALLS_OK[calls]).any():
            raise TraceFormatError(f"{what}: a call number the VMI ABI does not have")
        rets = kinds == ev.Kind.RETURN
        if (cols["link"][rets] >= seqs[rets]).any():
            raise TraceFormatError(f"{what}: a return before its call")
        sites = kinds == ev.Kind.SITE
        if sites.any() and not np.isin(calls[sites], [int(r) for r in abi.VmiRelocation]).all():
            raise TraceFormatError(f"{what}: a patch site with an unknown relocation")
    counts = np.asarray(lists.value_lengths().fill_null(0))
    flushes = kinds == ev.Kind.FLUSH
    if (counts[~flushes] != 0).any() or (counts[flushes] != cols["a1"][flushes]).any():
        raise TraceFormatError(f"{what}: flush entries do not match their counts")
    flat = np.asarray(lists.flatten().flatten()).reshape(-1, 4)
    entries = np.zeros(len(flat), ev.ENTRY)
    entries["seq"] = np.repeat(seqs, counts)
    for i, name in enumerate(("ptep", "flags", "lo", "hi")):
        entries[name] = flat[:, i]
    return ev.Chunk({k: np.ascontiguousarray(v) for k, v in cols.items()}, entries)


def open_trace(path: str | Path) -> TraceFile:
    """A trace file of either version, ready for ``chunks()``; TraceFormatError if not."""
    return TraceFile(path)


def write_chunks(path: str | Path, chunks: Iterator[ev.Chunk] | list[ev.Chunk],
                 **header: Any) -> int:
    """A whole trace from chunks (tests, conversions); returns the events written."""
    w = TraceFileWriter(path, **header)
    try:
        for c in chunks:
            w.add(c)
        w.close()
    except BaseException:
        w.abort()
        raise
    return w.events


def file_size(path: str | Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
