"""The stub's trace file: raw log items in, a version 2 trace file (``vmigdb.tracefile``) out.

A capture writes where the events are, in the stub, so no event crosses the gdb connection.
The machine only queues the raw items it collected (``put``); a feeder thread passes them down a
pipe to a writer process
(``python -m vmigdb.stub.tracesink``) decodes them (``vmigdb.rawtrace``, vectorised) and writes
Arrow batches. A process, not a thread: the machine calls into Python for every port access and
hook, and a decoding thread holding the GIL made the guest run 2-3x slower; a process runs
beside it on the other core. The queue is bounded: when the writer falls behind (a slow disk, a
FIFO read slowly), ``put`` blocks and the guest waits, so no event is ever dropped. If the
writer fails (a full disk) it says why, once, and the stub stops sending; if the stub dies, the
writer sees the pipe close and ends the file after its last complete batch (no end record: a
cut trace).

The pipe carries: one JSON line (the path, the header keys, the decoder's state), then raw items
(``vmigdb.rawtrace`` framing), then an ``E`` item whose payload is the end record's JSON. The
writer answers on its stdout with one JSON line: what the file holds, or the error.
"""

from __future__ import annotations

import fcntl
import io
import json
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from vmigdb import rawtrace
from vmigdb.errors import VmiError
from vmigdb.rawtrace import DecoderState, RawDecoder

#: Raw bytes that may wait for the writer before the guest waits for it (~750k records: the
#: writer's start, ~0.5 s of imports, costs the guest nothing).
QUEUE_BYTES = 64 << 20
#: The pipe's size.
PIPE_BYTES = 1 << 20
#: Seconds between batches written while the guest runs, at most (a killed capture keeps all
#: but this much).
FLUSH_SECONDS = 1.0
_END = b"E"


class TraceSink:
    """One open trace file and the process that writes it."""

    def __init__(self, path: str | Path, state: DecoderState, meta: dict[str, Any],
                 ns_per_tick: int = rawtrace.NS_PER_TICK,
                 queue_bytes: int = QUEUE_BYTES) -> None:
        self.path = str(path)
        self.queue_bytes = queue_bytes
        self.error: str | None = None
        self.sent = 0  # raw bytes passed on
        self.wait_seconds = 0.0  # time the guest waited for the writer
        try:  # here, so a bad path is the monitor command's error (a FIFO's reader would
            if not Path(path).is_fifo():  # see its end if it were opened and closed here)
                with open(path, "wb"):
                    pass
        except OSError as e:
            raise VmiError(f"cannot write the trace file {path}: {e.strerror or e}") from None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vmigdb.stub.tracesink"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        assert self._proc.stdin is not None
        self._pipe: IO[bytes] = self._proc.stdin
        try:
            fcntl.fcntl(self._pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # the system's limit is lower: a smaller bound, the same behaviour
        first = {"path": self.path, "state": state.to_json(), "ns_per_tick": ns_per_tick,
                 "header": {"producer": "vmigdb stub", "clock": "virtual-ns", **meta}}
        self._room = threading.Condition()
        self._queue: deque[bytes | None] = deque([json.dumps(first).encode() + b"\n"])
        self._queued = 0
        self._feeder = threading.Thread(target=self._feed, name="vmigdb-trace-feeder",
                                        daemon=True)
        self._feeder.start()

    def put(self, item: bytes) -> None:
        """Pass an item on; blocks while ``queue_bytes`` wait for the writer."""
        with self._room:
            if self._queued > self.queue_bytes and self.error is None:
                t0 = time.monotonic()
                while self._queued > self.queue_bytes and self.error is None:
                    self._room.wait(0.5)
                self.wait_seconds += time.monotonic() - t0
            if self.error is not None:
                return
            self._queue.append(item)
            self._queued += len(item)
            self._room.notify_all()

    def _feed(self) -> None:
        """The feeder thread: queue to pipe. It holds the GIL only between writes, so the
        machine runs while the writer process starts or catches up."""
        while True:
            with self._room:
                while not self._queue:
                    self._room.wait()
                item = self._queue.popleft()
            if item is None:
                return
            self._send(item)
            with self._room:
                self._queued -= len(item)
                self._room.notify_all()

    def _send(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self._pipe.write(data)
        except (BrokenPipeError, OSError):
            self.error = self._writer_error() or "the trace writer stopped"
            return
        self.sent += len(data)

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "raw_bytes": self.sent, "queued": self._queued,
                "error": self.error}

    def close(self, **end: Any) -> dict[str, Any]:
        """Send the end record, wait for the writer; what the file holds."""
        self.put(rawtrace.item(_END, json.dumps(end).encode()))
        with self._room:
            self._queue.append(None)
            self._room.notify_all()
        self._feeder.join()
        try:
            self._pipe.close()
        except OSError:
            pass
        answer = self._answer()
        if self.error is None and answer.get("error"):
            self.error = answer["error"]
        return {"path": self.path, "events": answer.get("events", 0),
                "complete": self.error is None, "error": self.error,
                "wait_seconds": round(self.wait_seconds, 3), "state": answer.get("state"),
                **end}

    def _answer(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        try:
            out = self._proc.stdout.read()
            self._proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            return {"error": "the trace writer did not finish"}
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"the trace writer ended without an answer (status "
                             f"{self._proc.returncode})"}
        return answer if isinstance(answer, dict) else {"error": "a bad answer from the writer"}

    def _writer_error(self) -> str | None:
        if self._proc.poll() is None:
            return None
        return self._answer().get("error")


# --- the writer process ------------------------------------------------------------------------


def _write(stdin: io.BufferedReader) -> dict[str, Any]:
    from vmigdb.tracefile import TraceFileWriter

    first = json.loads(stdin.readline())
    path = first["path"]
    decoder = RawDecoder(DecoderState.from_json(first["state"]), int(first["ns_per_tick"]))
    try:
        writer = TraceFileWriter(path, **first["header"])
    except OSError as e:
        return {"error": f"cannot write the trace file {path}: {e.strerror or e}"}
    last = time.monotonic()
    end: dict[str, Any] | None = None
    buf = b""
    try:
        while end is None:
            data = stdin.read1(4 << 20)  # after readline: its buffer first
            if not data:
                break  # the stub is gone: keep what is complete, no end record
            buf += data
            whole, buf, end = _split_end(buf)
            chunk = decoder.feed(whole)
            writer.add(chunk, decoder.take_tasks())
            if time.monotonic() - last > FLUSH_SECONDS:
                writer.flush()
                last = time.monotonic()
        if end is None:
            writer.flush()
            writer.abort()
            return {"events": writer.events, "error": "the stub closed the pipe early"}
        writer.close(**end)
    except OSError as e:
        writer.abort()
        return {"events": writer.events,
                "error": f"cannot write the trace file {path}: {e.strerror or e}"}
    except rawtrace.RawTraceError as e:  # a bug of ours: say so, keep the file
        writer.abort()
        return {"events": writer.events, "error": f"the trace could not be decoded: {e}"}
    return {"events": writer.events, "state": decoder.state.to_json()}


def _split_end(buf: bytes) -> tuple[bytes, bytes, dict[str, Any] | None]:
    """(whole items before an end item or a cut one, the rest, the end record if it came)."""
    pos = 0
    while True:
        head = rawtrace.item_header(buf, pos)
        if head is None:
            return buf[:pos], buf[pos:], None
        kind, start, stop = head
        if kind == _END:
            return buf[:pos], b"", json.loads(buf[start:stop])
        pos = stop


def main() -> None:
    try:
        answer = _write(sys.stdin.buffer)
    except (ValueError, KeyError, TypeError) as e:
        answer = {"error": f"the trace writer got a bad start: {e}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
