"""vmigdb: make VMI-paravirtualized x86 guests debuggable from gdb.

The core (this package) imports neither gdb nor unicorn; see shared ARCHITECTURE.md.
"""

import os

# numpy's OpenBLAS starts a thread per core that spins after each call; vmigdb does no linear
# algebra, and a spinning thread takes the core the stub's trace writer runs on.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def __getattr__(name: str) -> str:
    """``vmigdb.__version__``: the installed distribution's version (pyproject.toml is its one
    place), looked up only when asked for."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("vmigdb")
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "unknown"
    raise AttributeError(f"module 'vmigdb' has no attribute {name!r}")
