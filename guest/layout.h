/*
 * Memory and descriptor layout of the demo guest. Plain #defines only: included by C and by the
 * .S files (which get the VMI constants from the generated vmi_abi.inc instead of vmi_abi.h).
 */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

/* Memory layout, like i386 Linux: the kernel runs from its identity mapping of low memory and
 * keeps a second, "lowmem" linear map of the first MAPPED_MEMORY bytes at PAGE_OFFSET. */
#define PAGE_SIZE       4096
#define PAGE_SHIFT      12
#define PAGE_OFFSET     0xC0000000
#define MAPPED_MEMORY   (16 << 20)
#define __va(pa)        ((u32)(pa) + PAGE_OFFSET)
#define __pa(va)        ((u32)(va) - PAGE_OFFSET)

/* x86 page-table entry bits (hardware, not VMI). */
#define _PAGE_PRESENT   0x001
#define _PAGE_RW        0x002
#define _PAGE_USER      0x004
#define PTE_PFN_MASK    0xFFFFF000

/* GDT layout: SYSEXIT needs user code/data right after SYSENTER_CS (= KERNEL_CS) + 16/24. */
#define GDT_ENTRY_KERNEL_CS 1
#define GDT_ENTRY_KERNEL_DS 2
#define GDT_ENTRY_USER_CS   3
#define GDT_ENTRY_USER_DS   4
#define GDT_ENTRY_TSS       5
#define GDT_ENTRY_LDT       6
#define GDT_ENTRY_SPARE     7   /* written through WriteGDTEntry as a test data segment */
#define GDT_ENTRIES         8
#define KERNEL_CS (GDT_ENTRY_KERNEL_CS * 8)
#define KERNEL_DS (GDT_ENTRY_KERNEL_DS * 8)
#define USER_CS   (GDT_ENTRY_USER_CS * 8 + 3)
#define USER_DS   (GDT_ENTRY_USER_DS * 8 + 3)
#define TSS_SEL   (GDT_ENTRY_TSS * 8)
#define LDT_SEL   (GDT_ENTRY_LDT * 8)
#define SPARE_SEL (GDT_ENTRY_SPARE * 8)

#define IDT_ENTRIES 256
#define VEC_SELFTEST 0x30   /* software interrupt whose handler returns through the IRET site */
#define VEC_SYSCALL  0x80   /* ring-3 return path of the SYSEXIT test */
#define PIC_VEC_BASE 0x20   /* the 8259s are remapped to 0x20..0x2f and fully masked */

#define X86_EFLAGS_IF   0x200
#define X86_EFLAGS_IOPL 0x3000
#define X86_CR0_TS      0x8
#define X86_CR4_PCE     0x100
#define MSR_IA32_SYSENTER_CS  0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176

#endif
