/*
 * GDT, IDT, TSS, LDT and the 8259s. desc_init_native() runs before the ROM is found, with the
 * native instructions (the multiboot loader's GDT sits inside an option ROM and its IDT is the
 * real-mode one, so the guest needs its own at once). The TSS, LDT and the test gates are
 * installed later through the ROM (calls.c), the way Linux does once VMI is active.
 */
#include "desc.h"

struct desc_struct gdt[GDT_ENTRIES] __attribute__((aligned(16)));
struct desc_struct idt[IDT_ENTRIES] __attribute__((aligned(16)));
struct desc_struct ldt[LDT_ENTRIES] __attribute__((aligned(16)));
struct tss_struct tss __attribute__((aligned(16)));

volatile u32 selftest_count, selftest_cs;
volatile u32 syscall_eax, syscall_cs;
u32 sysexit_saved_esp;

struct desc_struct make_seg(u32 base, u32 limit, u8 access, u8 flags)
{
    struct desc_struct d;
    d.lo = (limit & 0xFFFF) | (base << 16);
    d.hi = ((base >> 16) & 0xFF) | ((u32)access << 8) | (limit & 0xF0000) |
           ((u32)(flags & 0xF) << 20) | (base & 0xFF000000);
    return d;
}

struct desc_struct make_gate(void (*handler)(void), u8 access)
{
    u32 off = (u32)handler;
    struct desc_struct d = { (off & 0xFFFF) | ((u32)KERNEL_CS << 16),
                             (off & 0xFFFF0000) | ((u32)access << 8) };
    return d;
}

u32 desc_base(struct desc_struct d)
{
    return (d.lo >> 16) | ((d.hi & 0xFF) << 16) | (d.hi & 0xFF000000);
}

/* Remap the 8259s to PIC_VEC_BASE and mask every line: the guest takes no external
 * interrupts, so enabling IF in the interrupt-flag tests is safe. (SeaBIOS leaves the master
 * at vector 8, where a timer tick would look like a double fault.) */
static void pic_mask_all(void)
{
    static const u8 init[][2] = {
        { 0x20, 0x11 }, { 0xA0, 0x11 },                 /* ICW1: edge, cascade, ICW4 */
        { 0x21, PIC_VEC_BASE }, { 0xA1, PIC_VEC_BASE + 8 },  /* ICW2: vector bases */
        { 0x21, 0x04 }, { 0xA1, 0x02 },                 /* ICW3: slave on IRQ2 */
        { 0x21, 0x01 }, { 0xA1, 0x01 },                 /* ICW4: 8086 mode */
        { 0x21, 0xFF }, { 0xA1, 0xFF },                 /* OCW1: mask all */
    };
    for (u32 i = 0; i < ARRAY_SIZE(init); i++)
        outb(init[i][0], init[i][1]);
}

void desc_init_native(void)
{
    gdt[GDT_ENTRY_KERNEL_CS] = make_seg(0, 0xFFFFF, ACC_CODE0, FLG_4K32);
    gdt[GDT_ENTRY_KERNEL_DS] = make_seg(0, 0xFFFFF, ACC_DATA0, FLG_4K32);
    gdt[GDT_ENTRY_USER_CS] = make_seg(0, 0xFFFFF, ACC_CODE3, FLG_4K32);
    gdt[GDT_ENTRY_USER_DS] = make_seg(0, 0xFFFFF, ACC_DATA3, FLG_4K32);
    struct desc_ptr g = { sizeof(gdt) - 1, (u32)gdt };
    asm volatile("lgdt %0\n\t"
                 "ljmp %1, $1f\n"
                 "1:\n\t"
                 "mov %2, %%ds\n\tmov %2, %%es\n\tmov %2, %%ss\n\t"
                 "mov %2, %%fs\n\tmov %2, %%gs"
                 : : "m"(g), "i"(KERNEL_CS), "r"(KERNEL_DS) : "memory");

    for (u32 v = 0; v < 32; v++)
        idt[v] = make_gate((void (*)(void))exception_stubs[v], GATE_INTR0);
    for (u32 v = PIC_VEC_BASE; v < PIC_VEC_BASE + 16; v++)
        idt[v] = make_gate(irq_unexpected, GATE_INTR0);
    struct desc_ptr i = { sizeof(idt) - 1, (u32)idt };
    asm volatile("lidt %0" : : "m"(i) : "memory");

    pic_mask_all();

    tss.ss0 = KERNEL_DS;
    tss.esp0 = (u32)boot_stack_top;
    tss.io_bitmap_base = sizeof(tss);   /* no I/O bitmap */
}

/* Frame built by exc_common in entry.S. */
struct trap_frame {
    u32 edi, esi, ebp, esp, ebx, edx, ecx, eax;
    u32 vector, error, eip, cs, eflags;
};

void exception_handler(struct trap_frame *f);

void exception_handler(struct trap_frame *f)
{
    if (f->vector == 0xFFFFFFFFu)
        fail(EXIT_UNEXPECTED_IRQ, "unexpected external interrupt at eip=0x%x", f->eip);
    u32 cr2;
    asm volatile("mov %%cr2, %0" : "=r"(cr2));
    kprintf("exception vector=%u error=0x%x eip=0x%x cs=0x%x eflags=0x%x", f->vector,
            f->error, f->eip, f->cs, f->eflags);
    if (f->vector == 14)
        kprintf(" cr2=0x%x", cr2);
    kprintf("\neax=0x%x ebx=0x%x ecx=0x%x edx=0x%x esi=0x%x edi=0x%x ebp=0x%x\n", f->eax,
            f->ebx, f->ecx, f->edx, f->esi, f->edi, f->ebp);
    kprintf("result: fail code=0x%x\n", EXIT_EXCEPTION_BASE + f->vector);
    guest_exit(EXIT_EXCEPTION_BASE + f->vector);
}
