/* The SYSEXIT/SYSENTER round trip Linux's system-call return path makes: SYSEXIT to ring 3,
 * the user code calls SYSENTER, and the kernel side checks what the CPU loaded. Exit codes:
 * 0x50 all right; 0x51 ring 3 was not CPL 3 or had the wrong SS; 0x52 SYSENTER landed with the
 * wrong CS/SS/ESP/EAX; 0x53 SYSENTER did not reach the kernel (the user code ran on).
 * GDT (SYSENTER's fixed layout): 0x08 ring-0 code, 0x10 ring-0 data, 0x18 ring-3 code,
 * 0x20 ring-3 data; no paging (segments are flat). */
        .include "multiboot.inc"
        .set KERNEL_CS, 0x08
        .set KERNEL_SS, 0x10
        .set USER_CS, 0x1b
        .set USER_SS, 0x23
        .globl _start, user_code, sysenter_entry, after_sysenter
_start:
        lgdt gdt_descr
        ljmp $KERNEL_CS, $1f
1:      movw $KERNEL_SS, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl $kstack_top, %esp
        movl $0x174, %ecx               /* IA32_SYSENTER_CS */
        movl $KERNEL_CS, %eax
        xorl %edx, %edx
        wrmsr
        movl $0x175, %ecx               /* IA32_SYSENTER_ESP */
        movl $sysenter_stack_top, %eax
        wrmsr
        movl $0x176, %ecx               /* IA32_SYSENTER_EIP */
        movl $sysenter_entry, %eax
        wrmsr
        pushfl                          /* IOPL 3: ring 3 may report through isa-debug-exit */
        orl $0x3000, (%esp)
        popfl
        movl $ustack_top, %ecx          /* SYSEXIT: ESP from ECX, EIP from EDX */
        movl $user_code, %edx
        movl $0x1234, %eax
        sysexit

user_code:
        movw %cs, %bx
        andw $3, %bx
        cmpw $3, %bx
        jne bad_ring
        movw %ss, %bx
        cmpw $USER_SS, %bx
        jne bad_ring
        cmpl $ustack_top, %esp
        jne bad_ring
        movl $0x5678, %eax
        sysenter
after_sysenter:
        EXIT 0x53                       /* only if SYSENTER fell through */
bad_ring:
        EXIT 0x51

sysenter_entry:
        movw %cs, %bx
        cmpw $KERNEL_CS, %bx
        jne bad_entry
        movw %ss, %bx
        cmpw $KERNEL_SS, %bx
        jne bad_entry
        cmpl $sysenter_stack_top, %esp
        jne bad_entry
        cmpl $0x5678, %eax
        jne bad_entry
        EXIT 0x50
bad_entry:
        EXIT 0x52

        .section .data
        .p2align 3
gdt:    .quad 0
        .quad 0x00CF9A000000FFFF        /* 0x08 ring-0 code */
        .quad 0x00CF92000000FFFF        /* 0x10 ring-0 data */
        .quad 0x00CFFA000000FFFF        /* 0x18 ring-3 code */
        .quad 0x00CFF2000000FFFF        /* 0x20 ring-3 data */
gdt_end:
gdt_descr:
        .word gdt_end - gdt - 1
        .long gdt

        .section .bss
        .p2align 4
        .space 1024
kstack_top:
        .space 1024
sysenter_stack_top:
        .space 1024
ustack_top:
