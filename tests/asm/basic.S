/* Serial output, a call/ret, a store to a watched variable, a loop; exit 0x21. */
        .include "multiboot.inc"
        .globl _start
_start:
        movl $stack_top, %esp
        movl $hello, %esi
print:  lodsb
        testb %al, %al
        jz printed
        movw $COM1, %dx
        outb %al, %dx
        jmp print
printed:
        movl $5, %eax
        call double_it
after_call:
        movl %eax, result
        .globl before_store
before_store:
        movl $0x1234, watched
after_store:
        addl $1, counter
after_add:
        movl watched, %ebx
after_load:
        movl $3, %ecx
loop_top:
        incl loops
        decl %ecx
        jnz loop_top
        EXIT 0x21
        hlt

double_it:
        addl %eax, %eax
        ret

        .section .data
hello:  .asciz "hello from basic\n"
        .p2align 2
result: .long 0
watched: .long 0
counter: .long 0
loops:  .long 0
        .section .bss
        .p2align 4
        .skip 4096
stack_top:
