"""The identity VMI ROM: GNU assembler source, linker script and the reproducible builder."""
