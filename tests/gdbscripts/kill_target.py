"""Sourced inside a gdb session: kill the target process ``$target_pid`` (SIGKILL) and wait,
polling with a deadline, until it is gone (a zombie: its sockets are closed), so the next
command meets a lost connection without a race."""

import os
import signal
import time

import gdb

pid = int(gdb.parse_and_eval("$target_pid"))
os.kill(pid, signal.SIGKILL)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        break
    if state in ("Z", "X"):
        break
    time.sleep(0.01)
else:
    raise gdb.GdbError(f"process {pid} still running after SIGKILL")
