"""The stub's trace file: raw log items in, a version 2 trace file (``vmigdb.tracefile``) out.

A capture writes where the events are, in the stub, so no event crosses the gdb connection.
The machine thread only queues the raw items it collected (``put``); a writer thread decodes them
(``vmigdb.rawtrace``, vectorised) and writes Arrow batches. Numpy, zstd and the file writes
release the GIL, so on two cores the guest and the writer run side by side. The queue is bounded
in bytes: when the writer falls behind (a slow disk, a FIFO read slowly), ``put`` blocks and the
guest waits, so no event is ever dropped. A write error (a full disk) stops the writer; the
file keeps its complete batches, and the error is reported once, as one line.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from vmigdb import rawtrace
from vmigdb.errors import VmiError
from vmigdb.rawtrace import DecoderState, RawDecoder
from vmigdb.tracefile import TraceFileWriter

#: Raw bytes that may wait for the writer before the guest waits for it (~90k records).
QUEUE_BYTES = 8 << 20
#: Seconds between batches written while the guest runs, at most (a killed capture keeps all
#: but this much).
FLUSH_SECONDS = 1.0


class TraceSink:
    """One open trace file and the thread that writes it."""

    def __init__(self, path: str | Path, state: DecoderState, meta: dict[str, Any],
                 ns_per_tick: int = rawtrace.NS_PER_TICK) -> None:
        self.path = str(path)
        try:
            self._writer = TraceFileWriter(path, producer="vmigdb stub", clock="virtual-ns",
                                           **meta)
        except OSError as e:
            raise VmiError(f"cannot write the trace file {path}: {e.strerror or e}") from None
        self._decoder = RawDecoder(DecoderState.from_json(state.to_json()), ns_per_tick)
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._room = threading.Condition()
        self._queued = 0  # bytes in the queue
        self.waits = 0  # times the guest waited for the writer
        self.wait_seconds = 0.0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="vmigdb-trace-writer",
                                        daemon=True)
        self._thread.start()

    # --- the machine's side -----------------------------------------------------------------
    def put(self, item: bytes) -> None:
        """Queue an item; waits while the writer is QUEUE_BYTES behind."""
        if self.error is not None:
            return
        with self._room:
            if self._queued > QUEUE_BYTES:
                self.waits += 1
                t0 = time.monotonic()
                while self._queued > QUEUE_BYTES and self.error is None:
                    self._room.wait(0.5)
                self.wait_seconds += time.monotonic() - t0
            self._queued += len(item)
        self._queue.put(item)

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "events": self._writer.events, "queued": self._queued,
                "waits": self.waits, "error": self.error}

    def close(self, **end: Any) -> dict[str, Any]:
        """Write everything queued and the end record; what the file holds."""
        self._queue.put(None)
        self._thread.join()
        if self.error is None:
            try:
                self._writer.close(**end)
            except OSError as e:
                self.error = f"cannot write the trace file {self.path}: {e.strerror or e}"
        if self.error is not None:
            self._writer.abort()
        return {"path": self.path, "events": self._writer.events, "complete": self.error is None,
                "error": self.error, "waits": self.waits,
                "wait_seconds": round(self.wait_seconds, 3), **end}

    # --- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        last = time.monotonic()
        while True:
            item = self._queue.get()
            items = [item]
            while item is not None:  # take everything waiting: one decode for all of it
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
            done = items[-1] is None
            data = b"".join(i for i in items if i is not None)
            if self.error is None:
                try:
                    chunk = self._decoder.feed(data)
                    self._writer.add(chunk, self._decoder.take_tasks())
                    if time.monotonic() - last > FLUSH_SECONDS:
                        self._writer.flush()
                        last = time.monotonic()
                except OSError as e:
                    self.error = f"cannot write the trace file {self.path}: {e.strerror or e}"
                except rawtrace.RawTraceError as e:  # a bug of ours: say so, keep the file
                    self.error = f"the trace could not be decoded: {e}"
            with self._room:
                self._queued -= len(data)
                self._room.notify_all()
            if done:
                return
