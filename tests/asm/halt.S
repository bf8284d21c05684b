/* hlt with interrupts off; `sti_halt` is the same with interrupts on. */
        .include "multiboot.inc"
        .globl _start
_start:
        cli
        hlt
        jmp _start
sti_halt:
        sti
        hlt
        jmp sti_halt
