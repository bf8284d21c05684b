/* Harness for tests/test_rom_calls.py: a protected-mode, paged machine on which the test calls
 * single VMI ROM entries and their native instructions from the same state, then compares.
 *
 * _start builds everything a VMI call can touch, then stops at harness_ready (hlt, IF=0):
 *  - its own GDT: flat ring-0 code 0x08 / data 0x10, flat ring-3 code 0x1b / data 0x23 (the
 *    layout SYSEXIT needs: SYSENTER_CS + 16 / + 24), TSS A 0x28 (loaded), LDT A 0x30 (loaded),
 *    TSS B 0x38 and LDT B 0x40 (available, for SetTR / SetLDT), spare slots after them;
 *    gdt2 is a copy of it (SetGDT target), idt2 a copy of the IDT (SetIDT target);
 *  - an IDT whose 32 exception gates push (vector, error code) and stop at fault_common;
 *  - paging: identity map of 0-16 MiB plus the alias 0xC0000000 -> 0 (Linux's PAGE_OFFSET, so
 *    the ROM is called at 0xC00C0000 as Linux calls it), page table pt_test (empty) for the
 *    4 MiB at TEST_VA; every entry preset Accessed and Dirty so that running code at different
 *    addresses leaves the same bits in memory (the test compares all of RAM); pd2 is a copy of
 *    the page directory (SetCR3 target);
 *  - SYSENTER_CS/ESP/EIP MSRs (SYSEXIT reads SYSENTER_CS).
 *
 * The test then sets registers and the stack, points EIP at a ROM entry or at one of the
 * native_<Call> routines below (same register convention, one native instruction each) and runs
 * to a breakpoint at ret_here. Helper routines (touch, store, do_calls, read_vas) let the guest
 * itself read through the TLB and call a ROM entry many times in a row.
 */
        .include "multiboot.inc"

        .set KCODE, 0x08
        .set KDATA, 0x10
        .set UCODE, 0x1b
        .set UDATA, 0x23
        .set TSS_A, 0x28
        .set LDT_A, 0x30
        .set TSS_B, 0x38
        .set LDT_B, 0x40
        .set GDT_ENTRIES, 16
        .set LDT_ENTRIES, 4
        .set TSS_SIZE, 104
        .set IDT_ENTRIES, 256
        .set PTE_BITS, 0x67             /* present, writable, user, accessed, dirty */
        .set PDE_BITS, 0x27             /* present, writable, user, accessed */
        .set LOW_PTS, 4                 /* identity map 0-16 MiB */
        .set KERNEL_PDE, 768            /* 0xC0000000 */
        .globl TEST_VA
        .set TEST_VA, 0x40000000        /* the 4 MiB pt_test maps */
        .set TEST_PDE, TEST_VA >> 22
        .set MSR_SYSENTER_CS, 0x174
        .set MSR_SYSENTER_ESP, 0x175
        .set MSR_SYSENTER_EIP, 0x176
        .set CR0_PG_WP, 0x80010000

/* ---- boot ------------------------------------------------------------------------------------ */

        .text
        .globl _start
_start:
        cli
        movl $boot_stack_top, %esp
        lgdt gdt_desc
        ljmp $KCODE, $1f
1:      movl $KDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        movl %eax, %fs
        movl %eax, %gs

        /* system descriptors: set_sys_desc(EAX base, ECX limit, EDX selector, EBX access) */
        movl $tss_a, %eax
        movl $TSS_SIZE - 1, %ecx
        movl $TSS_A, %edx
        movl $0x89, %ebx                /* present, 32-bit TSS (available) */
        call set_sys_desc
        movl $tss_b, %eax
        movl $TSS_B, %edx
        call set_sys_desc
        movl $ldt_a, %eax
        movl $LDT_ENTRIES * 8 - 1, %ecx
        movl $LDT_A, %edx
        movl $0x82, %ebx                /* present, LDT */
        call set_sys_desc
        movl $ldt_b, %eax
        movl $LDT_B, %edx
        call set_sys_desc
        movl $boot_stack_top, tss_a + 4 /* esp0 */
        movl $KDATA, tss_a + 8          /* ss0 */
        movl $boot_stack_top, tss_b + 4
        movl $KDATA, tss_b + 8
        movw $TSS_A, %ax
        ltr %ax
        movw $LDT_A, %ax
        lldt %ax

        /* exception gates 0-31: interrupt gates to fault_stub_N */
        xorl %ecx, %ecx
2:      movl fault_stubs(, %ecx, 4), %eax
        movw %ax, idt(, %ecx, 8)
        movw $KCODE, idt + 2(, %ecx, 8)
        movw $0x8e00, idt + 4(, %ecx, 8)
        shrl $16, %eax
        movw %ax, idt + 6(, %ecx, 8)
        incl %ecx
        cmpl $32, %ecx
        jne 2b
        lidt idt_desc

        /* paging */
        xorl %ecx, %ecx
3:      movl %ecx, %eax
        shll $12, %eax
        orl $PTE_BITS, %eax
        movl %eax, pt_low(, %ecx, 4)
        incl %ecx
        cmpl $LOW_PTS * 1024, %ecx
        jne 3b
        xorl %ecx, %ecx
4:      movl %ecx, %eax
        shll $12, %eax
        addl $pt_low + PDE_BITS, %eax
        movl %eax, pd(, %ecx, 4)
        movl %eax, pd + KERNEL_PDE * 4(, %ecx, 4)
        incl %ecx
        cmpl $LOW_PTS, %ecx
        jne 4b
        movl $pt_test + PDE_BITS, pd + TEST_PDE * 4

        /* the copies: pd2, gdt2, idt2 */
        movl $pd, %esi
        movl $pd2, %edi
        movl $1024, %ecx
        rep movsl
        movl $gdt, %esi
        movl $gdt2, %edi
        movl $GDT_ENTRIES * 2, %ecx
        rep movsl
        movl $idt, %esi
        movl $idt2, %edi
        movl $IDT_ENTRIES * 2, %ecx
        rep movsl

        movl $pd, %eax
        movl %eax, %cr3
        movl %cr0, %eax
        orl $CR0_PG_WP, %eax
        movl %eax, %cr0
        jmp 5f
5:
        movl $MSR_SYSENTER_CS, %ecx
        movl $KCODE, %eax
        xorl %edx, %edx
        wrmsr
        movl $MSR_SYSENTER_ESP, %ecx
        movl $boot_stack_top, %eax
        wrmsr
        movl $MSR_SYSENTER_EIP, %ecx
        movl $fault_common, %eax
        wrmsr

        .globl harness_ready
harness_ready:
        hlt
        jmp harness_ready

/* EAX base, ECX limit (bytes, < 1 MiB), EDX selector, EBX access byte: write a GDT descriptor. */
set_sys_desc:
        pushl %esi
        movl %ecx, %esi
        andl $0xffff, %esi
        movl %eax, gdt(%edx)
        shll $16, gdt(%edx)
        orl %esi, gdt(%edx)             /* base 15:0 << 16 | limit 15:0 */
        movl %eax, %esi
        shrl $16, %esi
        andl $0xff, %esi                /* base 23:16 */
        movl %esi, gdt + 4(%edx)
        movl %ebx, %esi
        shll $8, %esi
        orl %esi, gdt + 4(%edx)         /* access byte */
        movl %ecx, %esi
        andl $0xf0000, %esi
        orl %esi, gdt + 4(%edx)         /* limit 19:16 */
        movl %eax, %esi
        andl $0xff000000, %esi
        orl %esi, gdt + 4(%edx)         /* base 31:24 */
        popl %esi
        ret

/* ---- where every call returns ------------------------------------------------------------------ */

        .globl ret_here
ret_here:
        hlt
        jmp ret_here

/* Exceptions: fault_stub_N pushes a zero error code if the CPU pushed none, then N; every stub
 * ends at fault_common with [esp] = vector, error code, EIP, CS, EFLAGS. */
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
fault_stub_\n:
        .if (\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17)
        .else
        pushl $0
        .endif
        pushl $\n
        jmp fault_common
        .endr
        .globl fault_common
fault_common:
        hlt
        jmp fault_common

/* ---- native equivalents: the VMI register convention, one native instruction each ------------- */

        .macro NATIVE name, insn:vararg
        .globl native_\name
native_\name:
        \insn
        ret
        .endm

        NATIVE CPUID, cpuid
        NATIVE WRMSR, wrmsr
        NATIVE RDMSR, rdmsr
        NATIVE SetGDT, lgdt (%eax)
        NATIVE SetLDT, lldt %ax
        NATIVE SetIDT, lidt (%eax)
        NATIVE SetTR, ltr %ax
        NATIVE GetGDT, sgdt (%eax)
        NATIVE GetLDT, sldt %eax
        NATIVE GetIDT, sidt (%eax)
        NATIVE GetTR, str %eax
        NATIVE UpdateKernelStack, movl %edx, tss_a + 4
        NATIVE SetCR0, movl %eax, %cr0
        NATIVE SetCR2, movl %eax, %cr2
        NATIVE SetCR3, movl %eax, %cr3
        NATIVE SetCR4, movl %eax, %cr4
        NATIVE GetCR0, movl %cr0, %eax
        NATIVE GetCR2, movl %cr2, %eax
        NATIVE GetCR3, movl %cr3, %eax
        NATIVE GetCR4, movl %cr4, %eax
        NATIVE WBINVD, wbinvd
        NATIVE RDPMC, rdpmc
        NATIVE RDTSC, rdtsc
        NATIVE CLTS, clts
        NATIVE EnableInterrupts, sti
        NATIVE DisableInterrupts, cli
        NATIVE Shutdown, outl %eax, $0xf4
        NATIVE SetPxE, movl %eax, (%edx)
        NATIVE InvalPage, invlpg (%eax)
        NATIVE IODelay, outb %al, $0x80
        NATIVE nothing, nop             /* AllocatePage, ReleasePage, SetLinearMapping, SetLazyMode */

/* Natives of more than one instruction, written out. */
        .globl native_Reboot, native_SetPxELong, native_UpdatePxE, native_FlushTLB
        .globl native_GetInterruptMask, native_SetInterruptMask, native_SetIOPLMask
        .globl native_FlushTLBGlobal, native_WriteGDTEntry, native_WriteLDTEntry
        .globl native_WriteIDTEntry
native_Reboot:                          /* pulse the reset line through the 8042 */
        movb $0xfe, %al
        outb %al, $0x64
        ret
native_WriteGDTEntry:                   /* Linux's native_write_*_entry: store the 8 bytes */
native_WriteLDTEntry:
native_WriteIDTEntry:
        movl %ecx, (%eax, %edx, 8)
        movl 4(%esp), %ecx
        movl %ecx, 4(%eax, %edx, 8)
        ret
native_SetPxELong:                      /* high dword first, like Linux's set_64bit */
        movl %edx, 4(%ecx)
        movl %eax, (%ecx)
        ret
native_UpdatePxE:                       /* invlpg of the VA the flags carry */
        andl $0xfffff000, %edx
        invlpg (%edx)
        ret
native_FlushTLB:                        /* Linux's __flush_tlb: reload CR3 */
        movl %cr3, %ecx
        movl %ecx, %cr3
        ret
native_FlushTLBGlobal:                  /* Linux's __flush_tlb_global: toggle CR4.PGE */
        movl %cr4, %edx
        movl %edx, %ecx
        andl $~0x80, %ecx
        movl %ecx, %cr4
        movl %edx, %cr4
        ret
native_GetInterruptMask:                /* Linux's native save_fl */
        pushfl
        popl %eax
        ret
native_SetInterruptMask:                /* Linux's native restore_fl */
        pushl %eax
        popfl
        ret
native_SetIOPLMask:                     /* Linux's native set_iopl_mask: replace EFLAGS.IOPL */
        pushfl
        andl $~0x3000, (%esp)
        orl %eax, (%esp)
        popfl
        ret

/* mov to / from %dbN, one routine per N (the ROM dispatches on EAX) */
        .irp n, 0, 1, 2, 3, 4, 5, 6, 7
        NATIVE SetDR\n, movl %edx, %db\n
        NATIVE GetDR\n, movl %db\n, %eax
        .endr

/* Entered by jmp with the frame at ESP (no return address). */
        .globl native_IRET
native_IRET:
        iret
        .globl native_SYSEXIT
native_SYSEXIT:
        sti
        sysexit
        .globl native_Halt
native_Halt:
        sti
        hlt
        ret

/* Where IRET and SYSEXIT tests land. */
        .globl iret_target, user_target
iret_target:
        hlt
user_target:
        nop
        jmp user_target

/* ---- helpers ---------------------------------------------------------------------------------- */

/* touch: EAX = VA -> EAX = the dword there, read through the TLB. */
        .globl touch
touch:
        movl (%eax), %eax
        ret

/* store: [EAX] = ECX (a guest write: no TLB flush). */
        .globl store
store:
        movl %ecx, (%eax)
        ret

/* do_calls: EBX = entry, ESI -> EDI triples (EAX, EDX, ECX): call the entry once per triple.
 * Relies on the entry preserving EBX ESI EDI, as the VMI convention says. */
        .globl do_calls
do_calls:
        testl %edi, %edi
        jz 2f
1:      movl (%esi), %eax
        movl 4(%esi), %edx
        movl 8(%esi), %ecx
        call *%ebx
        addl $12, %esi
        decl %edi
        jnz 1b
2:      ret

/* read_vas: ESI -> EDI VAs, EBX -> output: the dword at each VA, read by the guest. */
        .globl read_vas
read_vas:
        movl (%esi), %eax
        movl (%eax), %eax
        movl %eax, (%ebx)
        addl $4, %esi
        addl $4, %ebx
        decl %edi
        jnz read_vas
        ret

/* ---- tables ----------------------------------------------------------------------------------- */

        .data
        .p2align 3
        .globl gdt, ldt_a, ldt_b, tss_a, tss_b, dtr_buf, gdt_desc, gdt2_desc, idt_desc, idt2_desc
gdt:
        .quad 0
        .quad 0x00cf9b000000ffff        /* 0x08 ring-0 code */
        .quad 0x00cf93000000ffff        /* 0x10 ring-0 data */
        .quad 0x00cffb000000ffff        /* 0x18 ring-3 code */
        .quad 0x00cff3000000ffff        /* 0x20 ring-3 data */
        .fill GDT_ENTRIES - 5, 8, 0     /* 0x28.. system descriptors, spare slots */
gdt_end:
ldt_a:
        .quad 0x00cf9b000000ffff
        .quad 0x00cf93000000ffff
        .fill LDT_ENTRIES - 2, 8, 0
ldt_b:
        .quad 0x00cffb000000ffff
        .fill LDT_ENTRIES - 1, 8, 0
        .p2align 4
tss_a:  .fill TSS_SIZE, 1, 0
        .p2align 4
tss_b:  .fill TSS_SIZE, 1, 0

        .p2align 2
        .word 0
gdt_desc:
        .word gdt_end - gdt - 1
        .long gdt
        .word 0
gdt2_desc:
        .word gdt_end - gdt - 1
        .long gdt2
        .word 0
idt_desc:
        .word IDT_ENTRIES * 8 - 1
        .long idt
        .word 0
idt2_desc:
        .word IDT_ENTRIES * 8 - 1
        .long idt2

/* 8-byte buffer for sgdt / sidt, preset so the 6 bytes written stand out */
        .p2align 3
dtr_buf:
        .quad 0xa5a5a5a5a5a5a5a5

fault_stubs:
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .long fault_stub_\n
        .endr

        .bss
        .p2align 12
        .globl pd, pd2, pt_low, pt_test, pae_table, scratch, call_stack, call_stack_top
pd:             .skip 4096
pd2:            .skip 4096
pt_low:         .skip 4096 * LOW_PTS
pt_test:        .skip 4096
pae_table:      .skip 4096      /* 64-bit entries for SetPxELong (not walked by the CPU) */
scratch:        .skip 4096 * 4  /* argument arrays and results for do_calls / read_vas */
        .p2align 3
idt:            .skip IDT_ENTRIES * 8
idt2:           .skip IDT_ENTRIES * 8
gdt2:           .skip GDT_ENTRIES * 8
        .p2align 4
boot_stack:     .skip 4096
boot_stack_top:
call_stack:     .skip 4096
call_stack_top:
