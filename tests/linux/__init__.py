"""Guest userspace for the Linux tests: the probe /init (probe.c, probe_asm.S) and its builder.

A package so that the tests (``pythonpath = ["tests"]``) import the builder as
``linux.initramfs``.
"""
