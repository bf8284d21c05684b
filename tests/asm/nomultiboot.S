/* A valid 32-bit ELF without a multiboot header: the loader must refuse it. */
        .text
        .globl _start
_start:
        hlt
