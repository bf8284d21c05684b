/* Descriptor tables of the demo guest: GDT, IDT, TSS, LDT (desc.c). */
#ifndef GUEST_DESC_H
#define GUEST_DESC_H

#include "kernel.h"

struct desc_ptr {
    u16 limit;
    u32 base;
} __attribute__((packed));

struct desc_struct {
    u32 lo, hi;
};

/* The 32-bit TSS; only esp0/ss0 and the I/O map base matter here. */
struct tss_struct {
    u32 link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    u32 eax, ecx, edx, ebx, esp, ebp, esi, edi;
    u32 es, cs, ss, ds, fs, gs, ldt;
    u16 trap, io_bitmap_base;
} __attribute__((packed));

#define LDT_ENTRIES 2

extern struct desc_struct gdt[GDT_ENTRIES];
extern struct desc_struct idt[IDT_ENTRIES];
extern struct desc_struct ldt[LDT_ENTRIES];
extern struct tss_struct tss;

/* Segment access bytes (present, DPL, type) and the flags nibble (G, D/B). */
#define ACC_CODE0 0x9A
#define ACC_DATA0 0x92
#define ACC_CODE3 0xFA
#define ACC_DATA3 0xF2
#define ACC_TSS   0x89  /* available 32-bit TSS */
#define ACC_TSS_BUSY 0x8B
#define ACC_LDT   0x82
#define FLG_4K32  0xC   /* 4 KiB granularity, 32-bit */
#define FLG_BYTE32 0x4  /* byte granularity, 32-bit */
#define GATE_INTR0 0x8E /* 32-bit interrupt gate, DPL 0 */
#define GATE_TRAP3 0xEF /* 32-bit trap gate, DPL 3 */

struct desc_struct make_seg(u32 base, u32 limit, u8 access, u8 flags);
struct desc_struct make_gate(void (*handler)(void), u8 access);
u32 desc_base(struct desc_struct d);

void desc_init_native(void);

/* entry.S */
extern const u32 exception_stubs[32];
void irq_unexpected(void);
void selftest_interrupt(void);
void syscall_entry(void);
u32 iret_built_frame(void);
u32 sysexit_roundtrip(u32 user_eip, u32 user_esp);
extern u8 user_code_start[], user_code_end[];
extern u8 boot_stack_top[];
extern volatile u32 selftest_count, selftest_cs;
extern volatile u32 syscall_eax, syscall_cs;

#endif
