"""Real gdb on the real Linux guest (shared/linux) served by ``vmigdb serve``: what a kernel
developer does first. Breakpoints on kernel functions with the kernel's own frames below,
the system registers, a watchpoint on jiffies, Ctrl-C at any moment, detach and reconnect,
and the workload driven to its end.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from conftest import Built, Linux
from targets import start_stub

from vmigdb.mi import Gdb

APPEND = "console=ttyS0"


def _functions(g: Gdb) -> list[str]:
    frames = g.ok("-stack-list-frames").payload["stack"]
    return [f.get("func", "??") for f in frames]


def test_gdb_on_linux(built: Built, linux: Linux, tmp_path: Path) -> None:
    t = start_stub(linux.bzimage, built.rom, APPEND, tmp_path, initrd=linux.initrd)
    g = Gdb(mi_async=True)
    try:
        g.connect(str(linux.vmlinux), t.port, timeout=60)
        # Ctrl-C at any moment of the boot: each interrupt stops at once, the guest goes on
        for delay in (0.0, 0.01, 0.05, 0.1, 0.2):
            g.ok("-exec-continue")
            time.sleep(delay)
            g.interrupt()
            stopped = g.wait_stopped(timeout=30)
            assert stopped["payload"].get("signal-name") == "SIGINT", stopped
        # break do_fork, continue: the first fork is the kernel's own (kernel_init)
        g.ok("-break-insert do_fork")
        stopped = g.resume(timeout=120)
        assert stopped["payload"]["frame"]["func"] == "do_fork", stopped
        funcs = _functions(g)
        assert funcs[:4] == ["do_fork", "kernel_thread", "rest_init", "start_kernel"], funcs
        # a fork of the workload (a user stack; ~600 kernel threads fork before it), from its
        # system call through the kernel's entry code
        g.ok("-break-delete")
        g.ok('-break-insert -c "stack_start != 0" do_fork')
        stopped = g.resume(timeout=300)
        funcs = _functions(g)
        assert funcs[:3] == ["do_fork", "sys_fork", "system_call"], funcs
        current = ("(*(struct task_struct **)((char *)&per_cpu__current_task"
                   " + __per_cpu_offset[0]))")
        comm = g.evaluate(f"{current}->comm")
        assert comm.startswith('"init\\000'), comm
        # the system registers, decoded
        text = g.console("info registers cr0 cr3 cr4 efer eflags").text
        assert re.search(r"cr0\s+0x8\w+\s+\[.*PG", text), text
        assert g.value("$cr3") == g.value(f"(unsigned long){current}->mm->pgd") - 0xC0000000
        g.ok("-break-delete")
        # watch jiffies: the next timer tick stops the run with the old and new value
        before = g.value("jiffies")
        g.ok("-break-watch jiffies")
        stopped = g.resume(timeout=120)
        assert stopped["payload"]["reason"] == "watchpoint-trigger", stopped
        value = stopped["payload"]["value"]
        assert int(value["new"]) == int(value["old"]) + 1 and int(value["old"]) >= before
        g.ok("-break-delete")
        eip = g.value("$eip")
        g.ok("-target-detach")
    finally:
        g.close()
    # reconnect: the machine waited where the first gdb left it; drive it to the end
    g = Gdb(mi_async=False)
    try:
        g.connect(str(linux.vmlinux), t.port, timeout=60)
        assert g.value("$eip") == eip
        stopped = g.resume(timeout=300)  # the stop at the guest's exit (the stub's catch exit)
        assert stopped["payload"].get("signal-name") == "SIGTRAP", stopped
        stopped = g.resume(timeout=60)
        assert stopped["payload"]["reason"] in ("exited-normally", "exited"), stopped
        assert stopped["payload"].get("exit-code", "0") in ("0", "00"), stopped
    finally:
        g.close()
        t.stop()
    log = t.serial.read_bytes().decode(errors="replace")
    assert "VMIGDB-INIT: done forks=21 pages=1637 ok" in log
