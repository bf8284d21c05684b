/* Code rewritten through another virtual address than the one it runs at. The machine's page
 * walk (stub/native/mmu.c) gives data pages TLB entries that cannot execute, so their stores
 * skip the slow path that invalidates translated code; this checks that a page becomes a code
 * page, with every fast entry for it gone, the moment code is fetched from it.
 * Memory: identity map of 0-4 MiB; VA 0xC0000000 -> PA 0x210000 (the code page).
 * 1. write `mov $1, %eax; ret` at PA 0x210000 through its identity address (a data entry,
 *    made dirty by the write); 2. call it at 0xC0000000; 3. rewrite it to return 2, through
 *    the same data entry; 4. call it again; 5. rewrite the page's last bytes and run them.
 * Exit code: r1 | r2 << 2 | r3 << 4, 57 when every rewrite was seen (stale code gives 21). */
        .include "multiboot.inc"
        .set PD, 0x200000
        .set PT0, 0x201000
        .set PT768, 0x202000
        .set CODE_PA, 0x210000
        .set CODE_VA, 0xC0000000

        .globl _start
_start:
        movl $stack_top, %esp
        IDENTITY_PT32 PT0
        movl $(CODE_PA | 3), PT768
        movl $(PT0 | 3), PD
        movl $(PT768 | 3), PD + 768 * 4
        PAGING_ON PD
        jmp paging_on
paging_on:
        /* 1. the first version, written as data */
        movl ret1, %eax
        movl %eax, CODE_PA
        movl ret1 + 4, %eax
        movl %eax, CODE_PA + 4
        movl $CODE_VA, %eax
        call *%eax
        movl %eax, %esi
        /* 3. the second version, through the same (identity) address */
        movl ret2, %eax
        movl %eax, CODE_PA
        movl ret2 + 4, %eax
        movl %eax, CODE_PA + 4
        movl $CODE_VA, %eax
        call *%eax
        shll $2, %eax
        orl %eax, %esi
        /* 5. the end of the page, never run before: written, run, rewritten, run */
        movl ret1, %eax
        movl %eax, CODE_PA + 0xFF8
        movl ret1 + 4, %eax
        movl %eax, CODE_PA + 0xFFC
        movl $(CODE_VA + 0xFF8), %eax
        call *%eax
        movl ret3, %eax
        movl %eax, CODE_PA + 0xFF8
        movl ret3 + 4, %eax
        movl %eax, CODE_PA + 0xFFC
        movl $(CODE_VA + 0xFF8), %eax
        call *%eax
        shll $4, %eax
        orl %esi, %eax
        .globl done
done:   outl %eax, $DEBUG_EXIT
        hlt

        .section .data
        .p2align 3
ret1:   movl $1, %eax
        ret
        .p2align 3
ret2:   movl $2, %eax
        ret
        .p2align 3
ret3:   movl $3, %eax
        ret
        .section .bss
        .p2align 4
        .skip 4096
stack_top:
