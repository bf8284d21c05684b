"""vmigdb: make VMI-paravirtualized x86 guests debuggable from gdb.

The core (this package) imports neither gdb nor unicorn; see shared ARCHITECTURE.md.
"""

__version__ = "0.1.0"
