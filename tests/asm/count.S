/* A loop whose memory counter and register counter must agree at the end, however often the
   run is interrupted and resumed: any re-executed or skipped instruction breaks the equality. */
        .include "multiboot.inc"
        .globl _start
_start:
        movl $stack_top, %esp
        xorl %ebx, %ebx
        movl iterations, %ecx
count_loop:
        incl counter
        incl %ebx
        pushl %ebx
        popl %eax
        decl %ecx
        jnz count_loop
        cmpl counter, %ebx
        jne mismatch
        EXIT 0
mismatch:
        EXIT 0x33

        .section .data
        .p2align 2
        .globl iterations, counter
iterations: .long 5000000
counter: .long 0
        .section .bss
        .p2align 4
        .skip 4096
stack_top:
