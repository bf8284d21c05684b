/* An IDT with limit 0: the #DE cannot be delivered, nor can the #DF: triple fault. */
        .include "multiboot.inc"
        .globl _start
_start:
        lidt idt_empty
        xorl %ecx, %ecx
        movl $1, %eax
div_here:
        divl %ecx
        EXIT 0x7f

        .section .data
        .p2align 2
idt_empty:
        .word 0
        .long 0
