/* Print CPUID's answers on COM1, one line per leaf and subleaf: "LLLLLLLL SS EAX EBX ECX EDX"
 * in hex, for the basic leaves up to leaf 0's maximum (subleaves 0-3 of leaf 4, 0 of the
 * others) and the extended ones up to 0x80000000's maximum; then exit 0x10. */
        .include "multiboot.inc"
        .globl _start
_start:
        movl $stack_top, %esp
        xorl %eax, %eax
        cpuid
        movl %eax, max_basic
        xorl %esi, %esi                 /* leaf */
basic:  cmpl max_basic, %esi
        ja extended
        xorl %edi, %edi                 /* subleaf */
1:      call show
        incl %edi
        cmpl $4, %esi
        jne 2f
        cmpl $4, %edi
        jb 1b
2:      incl %esi
        jmp basic
extended:
        movl $0x80000000, %eax
        cpuid
        movl %eax, max_ext
        movl $0x80000000, %esi
3:      cmpl max_ext, %esi
        ja done
        xorl %edi, %edi
        call show
        incl %esi
        jmp 3b
done:   EXIT 0x10

/* show: CPUID leaf %esi subleaf %edi, printed */
show:   movl %esi, %eax
        call hex32
        movb $' ', %al
        call putc
        movl %edi, %eax
        call hex32
        movl %esi, %eax
        movl %edi, %ecx
        cpuid
        pushl %edx
        pushl %ecx
        pushl %ebx
        pushl %eax
        movl $4, %ebp
4:      movb $' ', %al
        call putc
        popl %eax
        call hex32
        decl %ebp
        jnz 4b
        movb $'\n', %al
        call putc
        ret

hex32:  pushl %ecx
        movl $8, %ecx
5:      roll $4, %eax
        pushl %eax
        andl $0xf, %eax
        movb digits(%eax), %al
        call putc
        popl %eax
        decl %ecx
        jnz 5b
        popl %ecx
        ret

putc:   pushl %edx
        movw $COM1, %dx
        outb %al, %dx
        popl %edx
        ret

        .section .data
digits: .ascii "0123456789abcdef"
        .p2align 2
max_basic: .long 0
max_ext: .long 0
        .section .bss
        .space 4096
stack_top:
