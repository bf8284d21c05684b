/* A counted ALU loop (for the performance check), then an endless loop (for interrupt()). */
        .include "multiboot.inc"
        .globl _start
_start:
        movl $stack_top, %esp
        movl iterations, %ecx
count_loop:
        addl $3, %eax
        xorl %eax, %edx
        decl %ecx
        jnz count_loop
counted:
        EXIT 0x11
forever:
        incl %eax
        jmp forever

        .section .data
        .p2align 2
        .globl iterations
iterations: .long 10000000
        .section .bss
        .p2align 4
        .skip 4096
stack_top:
