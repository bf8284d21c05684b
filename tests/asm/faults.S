/* Paging on, an IDT, then seven events in a row, each logged by its handler at LOG:
 * #PF (read), #DE, int3, #PF (write), #PF (read), #UD, int $0x80. Exit code: events logged.
 * Without resetting Unicorn's old_exception the second fault would arrive as #DF.
 * Memory: page directory at PD, identity map of 0-4 MiB except the page at HOLE;
 * VA 0xC0000000 -> PA 0x210000 and VA 0xC0001000 -> PA 0x220000; nothing else mapped. */
        .include "multiboot.inc"
        .set PD, 0x200000
        .set PT0, 0x201000
        .set PT768, 0x202000
        .set HOLE, 0x280000
        .set LOG, 0x300000

        .macro FAULT_HANDLER vec, has_error
h_\vec:
        .if \has_error == 0
        pushl $0
        .endif
        pushl $\vec
        jmp common
        .endm

        .globl _start
_start:
        movl $stack_top, %esp
        /* identity page table for 0-4 MiB, with a hole */
        IDENTITY_PT32 PT0
        movl $0, PT0 + (HOLE >> 12) * 4
        movl $(0x210000 | 3), PT768
        movl $(0x220000 | 3), PT768 + 4
        movl $(PT0 | 3), PD
        movl $(PT768 | 3), PD + 768 * 4
        PAGING_ON PD
        jmp paging_on
        .globl paging_on
paging_on:
        GATE 0, h_0
        GATE 3, h_3
        GATE 6, h_6
        GATE 14, h_14
        GATE 0x80, h_128
        lidt idt_desc
        .globl events
events:
        movl $r1, resume
        movl HOLE, %eax
r1:     movl $r2, resume
        xorl %ecx, %ecx
        divl %ecx
r2:     int3
        movl $r3, resume
        movl %eax, HOLE + 0x10
r3:     movl $r4, resume
        movl HOLE + 0x20, %eax
r4:     movl $r5, resume
        ud2
r5:     int $0x80
        .globl done
done:   movl log_count, %eax
        outl %eax, $DEBUG_EXIT
        hlt

        FAULT_HANDLER 0, 0
        FAULT_HANDLER 3, 0
        FAULT_HANDLER 6, 0
        FAULT_HANDLER 14, 1
        FAULT_HANDLER 128, 0

/* stack: edx ebx eax | vector, error, eip, cs, eflags */
common: pushl %eax
        pushl %ebx
        pushl %edx
        movl log_count, %ebx
        shll $4, %ebx
        addl $LOG, %ebx
        movl 12(%esp), %eax
        movl %eax, (%ebx)
        movl 16(%esp), %eax
        movl %eax, 4(%ebx)
        movl %cr2, %eax
        movl %eax, 8(%ebx)
        movl 20(%esp), %eax
        movl %eax, 12(%ebx)
        incl log_count
        movl resume, %eax
        testl %eax, %eax
        jz 1f
        movl %eax, 20(%esp)
        movl $0, resume
1:      popl %edx
        popl %ebx
        popl %eax
        addl $8, %esp
        iret

        IDT_DATA
        .section .data
        .globl log_count
log_count: .long 0
        .section .bss
        .p2align 4
        .skip 4096
stack_top:
