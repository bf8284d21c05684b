/* Try to overwrite the ROM's first dword; exit 0 when the write was dropped, 1 otherwise. */
        .include "multiboot.inc"
        .set ROM, 0xc0000
        .globl _start
_start:
        movl ROM, %ebx
        movl $0xdeadbeef, ROM
        movl ROM, %eax
        cmpl %eax, %ebx
        jne changed
        EXIT 0
changed:
        EXIT 1
