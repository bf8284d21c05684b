"""The emulated x86 machine on Unicorn and the gdb remote stub on top of it."""
