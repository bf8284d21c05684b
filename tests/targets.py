"""The two gdb targets the tests compare, from the one place that starts them (vmigdb.targets).

Processes started here are ended by their pid in teardown (``Target.stop``).
"""

from vmigdb.targets import Target, free_port, start_qemu, start_stub, stop_process

__all__ = ["Target", "free_port", "start_qemu", "start_stub", "stop_process"]
