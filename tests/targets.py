"""The two gdb targets the tests compare, from the one place that starts them (vmigdb.targets),
and a batch gdb to drive them.

Processes started here are ended by their pid in teardown (``Target.stop``).
"""

import os
import signal
import subprocess
from collections.abc import Sequence

from vmigdb.mi import GDB
from vmigdb.targets import (
    Target,
    free_port,
    start_qemu,
    start_qemu_linux,
    start_stub,
    stop_process,
)

__all__ = ["Target", "free_port", "gdb_batch", "start_qemu", "start_qemu_linux", "start_stub",
           "stop_process"]


def gdb_batch(commands: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``gdb -batch -nx -ex ...`` (stdout and stderr together); killed with its process group
    if it outlives ``timeout``."""
    args = [GDB, "-batch", "-nx"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, "")
