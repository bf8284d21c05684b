/* PAE paging through the machine's page walk (stub/native/mmu.c), checked by the guest itself;
 * the same image on QEMU must agree. Memory: PDPT at 0x200000; its PD maps 0-2 MiB with one
 * 2 MiB page and 2-4 MiB with 4 KiB pages (PT at 0x202000), where HOLE is not present and
 * NXPAGE's PTE has bit 63 (NX) set. qemu32 has no NX, so the guest's attempt to set EFER.NXE
 * leaves it clear and bit 63 is a reserved bit. Checks, one exit-code bit each:
 *  1  a read of HOLE+0x10 faults: error 0, CR2 = HOLE+0x10
 *  2  a write to HOLE+0x24 faults: error 2, CR2 = HOLE+0x24
 *  4  a call into NXPAGE faults on the reserved bit: error 8 or 9 (RSVD, and P as the SDM
 *     has it; QEMU 7.2 leaves P clear, Unicorn's QEMU 5.0 sets it), CR2 = NXPAGE
 *  8  a write to DPAGE sets its PTE's accessed and dirty bits
 * 16  a read of RPAGE sets accessed, not dirty
 * 32  a write to the 2 MiB page sets the PDE's dirty bit
 * Exit code 63 when all hold. */
        .include "multiboot.inc"
        .set PDPT, 0x200000
        .set PD0, 0x201000
        .set PT1, 0x202000
        .set HOLE, 0x280000
        .set NXPAGE, 0x290000
        .set DPAGE, 0x2A0000
        .set RPAGE, 0x2B0000

        .globl _start
_start:
        movl $stack_top, %esp
        /* PT1: identity 4 KiB pages for 2-4 MiB, present and writable */
        xorl %ecx, %ecx
1:      movl %ecx, %eax
        shll $12, %eax
        addl $0x200000, %eax
        orl $3, %eax
        movl %eax, PT1(, %ecx, 8)
        movl $0, PT1 + 4(, %ecx, 8)
        incl %ecx
        cmpl $512, %ecx
        jne 1b
        movl $0, PT1 + ((HOLE - 0x200000) >> 12) * 8
        movl $0x80000000, PT1 + ((NXPAGE - 0x200000) >> 12) * 8 + 4
        movl $(0x83), PD0                  /* 2 MiB page at 0: P, RW, PS */
        movl $0, PD0 + 4
        movl $(PT1 | 3), PD0 + 8
        movl $0, PD0 + 12
        movl $(PD0 | 1), PDPT
        movl $0, PDPT + 4
        /* an IDT with the #PF handler */
        GATE 14, h_pf
        lidt idt_desc
        /* the code to call in NXPAGE (written while it is still only data) */
        movb $0xC3, NXPAGE
        /* PAE, NXE, paging */
        movl %cr4, %eax
        orl $0x20, %eax
        movl %eax, %cr4
        movl $0xC0000080, %ecx
        rdmsr
        orl $0x800, %eax
        wrmsr
        PAGING_ON PDPT
        jmp paging_on
paging_on:
        xorl %esi, %esi                    /* the checks that held */
        movl $r1, resume
        movl HOLE + 0x10, %eax
r1:     cmpl $0, pf_error
        jne 1f
        cmpl $(HOLE + 0x10), pf_cr2
        jne 1f
        orl $1, %esi
1:      movl $r2, resume
        movl %eax, HOLE + 0x24
r2:     cmpl $2, pf_error
        jne 1f
        cmpl $(HOLE + 0x24), pf_cr2
        jne 1f
        orl $2, %esi
1:      movl $r3, resume
        movl $NXPAGE, %eax
        call *%eax
r3:     movl pf_error, %eax
        andl $~1, %eax
        cmpl $8, %eax
        jne 1f
        cmpl $NXPAGE, pf_cr2
        jne 1f
        orl $4, %esi
1:      movl $7, DPAGE + 8
        movl PT1 + ((DPAGE - 0x200000) >> 12) * 8, %eax
        andl $0x60, %eax
        cmpl $0x60, %eax
        jne 1f
        orl $8, %esi
1:      movl RPAGE + 8, %eax
        movl PT1 + ((RPAGE - 0x200000) >> 12) * 8, %eax
        andl $0x60, %eax
        cmpl $0x20, %eax
        jne 1f
        orl $16, %esi
1:      movl $5, 0x1F0000
        testl $0x40, PD0
        jz 1f
        orl $32, %esi
1:      movl %esi, %eax
        .globl done
done:   outl %eax, $DEBUG_EXIT
        hlt

/* #PF: note the error code and CR2, then go on at `resume` */
h_pf:   popl pf_error
        pushl %eax
        movl %cr2, %eax
        movl %eax, pf_cr2
        movl resume, %eax
        movl %eax, 4(%esp)
        popl %eax
        iret

        IDT_DATA
        .section .data
pf_error: .long 0xFFFFFFFF
pf_cr2: .long 0
        .section .bss
        .p2align 4
        .skip 4096
stack_top:
