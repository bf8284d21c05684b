"""``vmigdb export``: a trace as Parquet (pandas, polars, DuckDB), as JSON Lines (scripts), or as
Perfetto's Chrome JSON (``vmigdb.perfetto``), one chunk at a time.

The trace file stores raw columns (``a0``..``a4`` mean different things for each kind of
event); an export says what they mean. The Parquet file has one row per event and one named,
nullable column per field: ``call`` as a string, the arguments under their ABI names
(``ptep``, ``pte``, ``flags``, ``mode``, ``mask``...), the results as ``result_eax``...,
PTE writes' ``old``/``new``/``deferred``/``batch``, flushes' ``trigger``/``tlb_action``/
``entries``, and the task's ``pid``/``comm`` when the trace names them (docs/trace-format.md
lists every column). The JSON Lines file is the version 1 encoding (``vmigdb.trace``), each
event with ``clock`` and ``task`` added: it reads back as a trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from vmigdb import abi
from vmigdb import events as ev
from vmigdb import trace as tr
from vmigdb.batches import enum_name

K = ev.Kind

# --- Parquet -------------------------------------------------------------------------------------

#: Every argument name the ABI has, in the order the calls first use them.
ARG_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(
    name for names in ev.ARG_NAMES.values() for name in names))
RESULT_COLUMNS: tuple[str, ...] = tuple(f"result_{r}" for r in dict.fromkeys(
    r for names in ev.RESULT_NAMES.values() for r in names))
#: Per argument (or result) column: per call number, the a0..a4 index holding it, else -1.
_ARG_POS = {name: np.full(256, -1, np.int8) for name in ARG_COLUMNS}
_RESULT_POS = {name: np.full(256, -1, np.int8) for name in RESULT_COLUMNS}
for _c, _names in ev.ARG_NAMES.items():
    for _i, _n in enumerate(_names):
        _ARG_POS[_n][_c] = _i
for _c, _names in ev.RESULT_NAMES.items():
    for _i, _n in enumerate(_names):
        _RESULT_POS[f"result_{_n}"][_c] = _i
#: Columns that events of other kinds fill too (an argument of the same name means the same).
_SHARED = {"ptep", "flags", "count"}
assert not (set(ARG_COLUMNS) - _SHARED) & {
    "seq", "type", "call", "clock_ns", "task", "pid", "comm", "site", "rom_entry", "call_seq",
    "old", "new", "deferred", "batch", "trigger", "tlb_action", "entries", "base", "batched",
    "addr", "patch_type", "len", "clobbers", "reloc", "target"}, "an argument name clashes"


def _pa() -> Any:
    import pyarrow as pa

    return pa


def parquet_schema() -> Any:
    pa = _pa()
    dict_str = pa.dictionary(pa.int32(), pa.string())
    u32, u64 = pa.uint32(), pa.uint64()
    entry = pa.struct([("ptep", u32), ("flags", u32), ("lo", u32), ("hi", u32)])
    fields = [
        pa.field("seq", u64, nullable=False),
        pa.field("type", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("call", dict_str), pa.field("clock_ns", u64, nullable=False),
        pa.field("task", u32), pa.field("pid", pa.int32()),
        pa.field("comm", dict_str),
        pa.field("site", u32), pa.field("rom_entry", u32), pa.field("call_seq", u64),
        *(pa.field(name, u32) for name in ARG_COLUMNS),
        *(pa.field(name, u32) for name in RESULT_COLUMNS),
        pa.field("old", u64), pa.field("new", u64), pa.field("deferred", pa.bool_()),
        pa.field("batch", u32), pa.field("trigger", dict_str), pa.field("tlb_action", dict_str),
        pa.field("entries", pa.list_(entry)),
        pa.field("base", u32), pa.field("batched", pa.bool_()),
        pa.field("addr", u32), pa.field("patch_type", u32), pa.field("len", u32),
        pa.field("clobbers", u32), pa.field("reloc", dict_str), pa.field("target", u32),
    ]
    return pa.schema(fields)


def _masked(values: np.ndarray, mask: np.ndarray, typ: Any) -> Any:
    pa = _pa()
    return pa.array(values, typ, mask=~mask)


def _names(values: np.ndarray, mask: np.ndarray, name_of: Callable[[int], str]) -> Any:
    """A dictionary column of names for the masked rows (null elsewhere)."""
    pa = _pa()
    codes, index = np.unique(values[mask], return_inverse=True)
    labels = [name_of(int(c)) for c in codes.tolist()]
    full = np.zeros(len(values), np.int32)
    full[mask] = index
    return pa.DictionaryArray.from_arrays(pa.array(full, mask=~mask),
                                          pa.array(labels, pa.string()))


def _kind_names() -> list[str]:
    return [ev.KIND_NAMES[k] for k in K]


def to_table(chunk: ev.Chunk, tasks: Mapping[int, tuple[int, str]], schema: Any) -> Any:
    """A chunk as an Arrow table of ``parquet_schema``."""
    pa = _pa()
    n = len(chunk)
    kinds, calls = chunk["kind"], chunk["call"]
    u32, u64 = pa.uint32(), pa.uint64()
    is_call, is_ret = kinds == K.CALL, kinds == K.RETURN
    is_pte, is_lazy, is_flush = kinds == K.PTE, kinds == K.LAZY, kinds == K.FLUSH
    is_init, is_site = kinds == K.ROM_INIT, kinds == K.SITE
    a = np.stack([chunk[name] for name in ev.ARGS])
    rows = np.arange(n)
    cols: dict[str, Any] = {
        "seq": pa.array(chunk["seq"], u64),
        "type": pa.DictionaryArray.from_arrays(pa.array(kinds.astype(np.int8)),
                                               pa.array(_kind_names(), pa.string())),
        "call": _names(calls, is_call | is_ret, lambda c: ev.CALL_NAMES.get(c, str(c))),
        "clock_ns": pa.array(chunk["clock"], u64),
    }
    task = chunk["task"]
    cols["task"] = _masked(task, task != 0, u32)
    cols.update(_task_columns(task, tasks))
    cols["site"] = _masked(chunk["site"], is_call, u32)
    cols["rom_entry"] = _masked(chunk["entry"], is_call, u32)
    cols["call_seq"] = _masked(chunk["link"], is_ret, u64)

    def pick(pos_table: np.ndarray, rows_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = pos_table[calls].astype(np.int64)
        mask = rows_of & (pos >= 0)
        return a[np.maximum(pos, 0), rows], mask

    for name in ARG_COLUMNS:
        values, mask = pick(_ARG_POS[name], is_call)
        if name == "ptep":
            values, mask = np.where(is_pte, chunk["a0"], values), mask | is_pte
        elif name == "flags":
            values, mask = np.where(is_pte, chunk["a1"], values), mask | is_pte
        elif name == "count":
            values, mask = np.where(is_flush, chunk["a1"], values), mask | is_flush
        cols[name] = _masked(values, mask, u32)
    for name in RESULT_COLUMNS:
        values, mask = pick(_RESULT_POS[name], is_ret)
        cols[name] = _masked(values, mask, u32)
    old = np.where(is_lazy, chunk["a0"], chunk["old"])
    new = np.where(is_lazy, chunk["a1"], chunk["new"])
    cols["old"] = _masked(old, is_pte | is_lazy, u64)
    cols["new"] = _masked(new, is_pte | is_lazy, u64)
    cols["deferred"] = pa.array(chunk["a2"] & ev.PTE_DEFERRED != 0, pa.bool_(), mask=~is_pte)
    has_batch = (is_pte & (chunk["a2"] & ev.PTE_HAS_BATCH != 0)) | is_flush
    cols["batch"] = _masked(np.where(is_flush, chunk["a0"], chunk["a3"]), has_batch, u32)
    cols["trigger"] = _names(chunk["a2"], is_flush,
                             lambda v: enum_name(abi.FlushTrigger, v))
    cols["tlb_action"] = _names(chunk["a3"], is_flush, lambda v: enum_name(abi.TlbAction, v))
    cols["entries"] = _entries(chunk, is_flush, schema.field("entries").type)
    cols["base"] = _masked(chunk["entry"], is_init, u32)
    cols["batched"] = pa.array(chunk["a0"] != 0, pa.bool_(), mask=~is_init)
    for name, col in (("addr", "a0"), ("patch_type", "a1"), ("len", "a2"), ("clobbers", "a3"),
                      ("target", "a4")):
        cols[name] = _masked(chunk[col], is_site, u32)
    cols["reloc"] = _names(calls, is_site, lambda v: enum_name(abi.VmiRelocation, v))
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def _task_columns(task: np.ndarray, tasks: Mapping[int, tuple[int, str]]) -> dict[str, Any]:
    pa = _pa()
    uniq, index = np.unique(task, return_inverse=True)
    known = [tasks.get(t) for t in uniq.tolist()]
    pids = np.array([k[0] if k else 0 for k in known], np.int64)
    has = np.array([k is not None for k in known], bool)[index]
    pid = pa.array(np.clip(pids[index], -(1 << 31), (1 << 31) - 1).astype(np.int32),
                   pa.int32(), mask=~has)
    comms = [k[1] if k else "" for k in known]
    comm = pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32), mask=~has),
                                          pa.array(comms, pa.string()))
    return {"pid": pid, "comm": comm}


def _entries(chunk: ev.Chunk, is_flush: np.ndarray, typ: Any) -> Any:
    pa = _pa()
    counts = np.where(is_flush, chunk["a1"], 0).astype(np.int32)
    offsets = np.zeros(len(chunk) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    e = chunk.entries
    values = pa.StructArray.from_arrays(
        [pa.array(e[name], pa.uint32()) for name in ("ptep", "flags", "lo", "hi")],
        fields=list(typ.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=typ,
                                    mask=pa.array(~is_flush))


class ParquetExport:
    """A Parquet file written row group by row group (one per chunk)."""

    def __init__(self, out: IO[bytes], header: Mapping[str, Any]) -> None:
        import pyarrow.parquet as pq

        self.schema = parquet_schema().with_metadata(
            {b"vmigdb": json.dumps({"header": dict(header)}, default=str).encode()})
        self._writer = pq.ParquetWriter(out, self.schema, compression="zstd")
        self.events = 0

    def add(self, chunk: ev.Chunk, tasks: Mapping[int, tuple[int, str]]) -> None:
        if len(chunk):
            self._writer.write_table(to_table(chunk, tasks, self.schema))
            self.events += len(chunk)

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        """Close the writer before its file goes (the caller removes the file): else it would
        close itself at exit, into a closed file."""
        try:
            self._writer.close()
        except (OSError, ValueError):
            pass


# --- JSON Lines ----------------------------------------------------------------------------------


def _line_templates() -> dict[tuple[int, int], str]:
    """Per (kind, call) for calls and returns, (kind, pte bits) for PTE writes, (kind, 0) for
    lazy-mode changes: a %-template of the version 1 line with clock and task added, over the
    columns by name (what ``trace.Event.to_json`` writes, in its order)."""
    out: dict[tuple[int, int], str] = {}
    for c in ev.CALL_NAMES:
        args = ",".join(f'"{n}":%(a{i})d' for i, n in enumerate(ev.ARG_NAMES[c]))
        out[(K.CALL, c)] = ('{"seq":%(seq)d,"call":"' + ev.CALL_NAMES[c]
                            + '","entry":%(entry)d,"site":%(site)d,"args":{' + args
                            + '},"type":"call","clock":%(clock)d,"task":%(task)d}')
        res = ",".join(f'"{n}":%(a{i})d' for i, n in enumerate(ev.RESULT_NAMES[c]))
        out[(K.RETURN, c)] = ('{"seq":%(seq)d,"call_seq":%(link)d,"call":"' + ev.CALL_NAMES[c]
                              + '","results":{' + res
                              + '},"type":"return","clock":%(clock)d,"task":%(task)d}')
    for bits in range(4):  # PTE writes by (deferred, has a batch)
        deferred = "true" if bits & ev.PTE_DEFERRED else "false"
        batch = "%(a3)d" if bits & ev.PTE_HAS_BATCH else "null"
        out[(K.PTE, bits)] = ('{"seq":%(seq)d,"ptep":%(a0)d,"old":%(old)d,"new":%(new)d,'
                              '"flags":%(a1)d,"deferred":' + deferred + ',"batch":' + batch
                              + ',"type":"pte","clock":%(clock)d,"task":%(task)d}')
    out[(K.LAZY, 0)] = ('{"seq":%(seq)d,"old":%(a0)d,"new":%(a1)d,"type":"lazy",'
                        '"clock":%(clock)d,"task":%(task)d}')
    return out


_TEMPLATES = _line_templates()
_COLUMNS = ("seq", "entry", "site", "a0", "a1", "a2", "a3", "a4", "link", "old", "new",
            "clock", "task")


def jsonl_lines(chunk: ev.Chunk) -> list[str]:
    """The chunk's events as version 1 lines (with ``clock`` and ``task``), in order."""
    n = len(chunk)
    out: list[str] = [""] * n
    kinds, calls = chunk["kind"], chunk["call"]
    calls_or_returns = (kinds == K.CALL) | (kinds == K.RETURN)
    templated = calls_or_returns | (kinds == K.PTE) | (kinds == K.LAZY)
    minor = np.where(calls_or_returns, calls, np.where(kinds == K.PTE, chunk["a2"] & 3, 0))
    keys = kinds.astype(np.int64) << 8 | minor
    for key in np.unique(keys[templated]).tolist():
        where = np.flatnonzero(keys == key)
        template = _TEMPLATES[(key >> 8, key & 0xFF)]
        cols = [chunk[name][where].tolist() for name in _COLUMNS]
        for i, values in zip(where.tolist(), zip(*cols, strict=True), strict=True):
            out[i] = template % dict(zip(_COLUMNS, values, strict=True))
    others = np.flatnonzero(~templated)
    if len(others):
        part = chunk.select(others)
        clocks, tasks = part["clock"].tolist(), part["task"].tolist()
        for i, e, clock, task in zip(others.tolist(), ev.to_events(part), clocks, tasks,
                                     strict=True):
            d = e.to_json()
            d["clock"], d["task"] = clock, task
            out[i] = json.dumps(d, separators=(",", ":"))
    return out


class JsonlExport:
    """A version 1 trace (``vmigdb.trace``) with ``clock`` and ``task`` on every event: the
    header, the events, and an end record naming the tasks."""

    def __init__(self, out: IO[str], header: Mapping[str, Any]) -> None:
        self.out = out
        meta = {k: v for k, v in header.items() if k not in ("format", "version", "streamed")}
        out.write(json.dumps(tr.header(streamed=True, exported_from_version=header.get(
            "version"), **meta), default=str) + "\n")
        self.events = 0

    def add(self, chunk: ev.Chunk) -> None:
        if len(chunk):
            self.out.write("\n".join(jsonl_lines(chunk)) + "\n")
            self.events += len(chunk)

    def close(self, tasks: Mapping[int, tuple[int, str]], end: Mapping[str, Any] | None
              ) -> None:
        record = {k: v for k, v in (end or {}).items() if k not in ("type", "events")}
        record.update({"type": tr.END_TYPE, "events": self.events})
        if tasks:
            record["tasks"] = {f"{k:#x}": [pid, comm] for k, (pid, comm) in tasks.items()}
        self.out.write(json.dumps(record, default=str) + "\n")

