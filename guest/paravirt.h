/*
 * Paravirtualization layer of the demo guest, modelled on i386 Linux 2.6.21-2.6.36 (vmi-abi.md
 * sections 3.3, 4 and 6).
 *
 * Two ways into the ROM, as in Linux:
 *  - Patch sites. A native instruction sequence, NOP-padded to PV_SITE_LEN bytes, recorded in
 *    .parainstructions with Linux's 8-byte record {.long addr; .byte type; .byte len;
 *    .short clobbers}. Unlike Linux, whose types are pv-op slot indexes, our type IS the VMI call
 *    number (VMI_CALL_* from vmi_abi.h): the patcher hands it to get_reloc unchanged.
 *    CALL_REL turns the site into "call rel32" + NOPs, NOP into all NOPs, NONE leaves it native.
 *  - pv-op pointers (Linux's para_fill / vmi_get_function): pv_fn[call] starts at a native
 *    regparm(3) implementation and is replaced by the ROM's entry when get_reloc says CALL_REL.
 *
 * Every call made is counted in pv_hits[call] so the summary can say how many ROM calls ran.
 */
#ifndef GUEST_PARAVIRT_H
#define GUEST_PARAVIRT_H

#include "kernel.h"

/* The VMI calling convention: GCC regparm(3), args in EAX, EDX, ECX, then the stack. */
#define VMICALL __attribute__((regparm(3)))

/* Linux 2.6.21 clobber masks for the .parainstructions record (informational: like Linux's
 * vmi_patch, our patcher ignores them; the inline asm below declares the real clobbers). */
#define CLBR_NONE 0
#define CLBR_EAX  1
#define CLBR_ECX  2
#define CLBR_EDX  4
#define CLBR_ANY  7

/* A patch site must hold a 5-byte "call rel32". */
#define PV_SITE_LEN 5
#define __stringify_1(x) #x
#define __stringify(x) __stringify_1(x)

struct paravirt_patch_site {
    u8 *instr;
    u8 instrtype;   /* VMI call number */
    u8 len;
    u16 clobbers;
} __attribute__((packed));

extern struct paravirt_patch_site __start_parainstructions[], __stop_parainstructions[];

/* Native instructions between 771 and 772, NOP padding to PV_SITE_LEN, then the record. The
 * operands %[type] and %[clb] must be "i" constants. */
#define PV_SITE(insns)                                                          \
    "771:\n\t" insns "\n772:\n\t"                                               \
    ".skip " __stringify(PV_SITE_LEN) "-(772b-771b), 0x90\n773:\n\t"            \
    ".pushsection .parainstructions,\"a\"\n\t"                                  \
    ".balign 4\n\t"                                                             \
    ".long 771b\n\t"                                                            \
    ".byte %c[type]\n\t"                                                        \
    ".byte 773b-771b\n\t"                                                       \
    ".short %c[clb]\n\t"                                                        \
    ".popsection\n"

#define PV_TYPE(call, clobbers) [type] "i"(call), [clb] "i"(clobbers)

extern u32 pv_hits[VMI_CALL_TABLE_LEN];      /* calls made, by call number */
extern u8 pv_reloc[VMI_CALL_TABLE_LEN];      /* get_reloc's answer, by call number */
extern void *pv_fn[VMI_CALL_TABLE_LEN];      /* pv-op pointers (native or ROM) */

static inline void pv_hit(u32 call) { pv_hits[call]++; }

/* --- interrupt flag sites (flags-only clobbers, as Linux requires of the ROM) ------------- */

static inline void pv_irq_disable(void)
{
    pv_hit(VMI_CALL_DisableInterrupts);
    asm volatile(PV_SITE("cli") : : PV_TYPE(VMI_CALL_DisableInterrupts, CLBR_NONE)
                 : "memory", "cc");
}

static inline void pv_irq_enable(void)
{
    pv_hit(VMI_CALL_EnableInterrupts);
    asm volatile(PV_SITE("sti") : : PV_TYPE(VMI_CALL_EnableInterrupts, CLBR_NONE)
                 : "memory", "cc");
}

static inline u32 pv_save_fl(void)
{
    u32 f;
    pv_hit(VMI_CALL_GetInterruptMask);
    asm volatile(PV_SITE("pushfl; popl %%eax") : "=a"(f)
                 : PV_TYPE(VMI_CALL_GetInterruptMask, CLBR_EAX) : "memory", "cc");
    return f;
}

static inline void pv_restore_fl(u32 f)
{
    pv_hit(VMI_CALL_SetInterruptMask);
    asm volatile(PV_SITE("pushl %%eax; popfl") : "+a"(f)
                 : PV_TYPE(VMI_CALL_SetInterruptMask, CLBR_EAX) : "memory", "cc");
}

/* --- control registers and other sensitive instructions (standard clobbers) --------------- */

#define PV_READ_CR(n, call)                                                     \
    static inline u32 pv_read_cr##n(void)                                       \
    {                                                                           \
        u32 v;                                                                  \
        pv_hit(call);                                                           \
        asm volatile(PV_SITE("movl %%cr" #n ", %%eax") : "=a"(v)                \
                     : PV_TYPE(call, CLBR_ANY) : "ecx", "edx", "memory", "cc"); \
        return v;                                                               \
    }
PV_READ_CR(0, VMI_CALL_GetCR0)
PV_READ_CR(2, VMI_CALL_GetCR2)
PV_READ_CR(3, VMI_CALL_GetCR3)
PV_READ_CR(4, VMI_CALL_GetCR4)

#define PV_WRITE_CR(n, call)                                                    \
    static inline void pv_write_cr##n##_site(u32 v)                             \
    {                                                                           \
        pv_hit(call);                                                           \
        asm volatile(PV_SITE("movl %%eax, %%cr" #n) : "+a"(v)                   \
                     : PV_TYPE(call, CLBR_ANY) : "ecx", "edx", "memory", "cc"); \
    }
PV_WRITE_CR(0, VMI_CALL_SetCR0)
PV_WRITE_CR(2, VMI_CALL_SetCR2)
PV_WRITE_CR(3, VMI_CALL_SetCR3)
PV_WRITE_CR(4, VMI_CALL_SetCR4)

static inline void pv_clts(void)
{
    pv_hit(VMI_CALL_CLTS);
    asm volatile(PV_SITE("clts") : : PV_TYPE(VMI_CALL_CLTS, CLBR_ANY)
                 : "eax", "ecx", "edx", "memory", "cc");
}

static inline void pv_wbinvd(void)
{
    pv_hit(VMI_CALL_WBINVD);
    asm volatile(PV_SITE("wbinvd") : : PV_TYPE(VMI_CALL_WBINVD, CLBR_ANY)
                 : "eax", "ecx", "edx", "memory", "cc");
}

static inline u64 pv_rdtsc(void)
{
    u64 v;
    pv_hit(VMI_CALL_RDTSC);
    asm volatile(PV_SITE("rdtsc") : "=A"(v) : PV_TYPE(VMI_CALL_RDTSC, CLBR_ANY)
                 : "ecx", "memory", "cc");
    return v;
}

struct cpuid_regs { u32 eax, ebx, ecx, edx; };

static inline struct cpuid_regs pv_cpuid(u32 leaf, u32 subleaf)
{
    struct cpuid_regs r = { leaf, 0, subleaf, 0 };
    pv_hit(VMI_CALL_CPUID);
    asm volatile(PV_SITE("cpuid") : "+a"(r.eax), "=b"(r.ebx), "+c"(r.ecx), "=d"(r.edx)
                 : PV_TYPE(VMI_CALL_CPUID, CLBR_ANY) : "memory", "cc");
    return r;
}

/* --- pv-op pointer calls (vmi.c): each counts, calls pv_fn[call] and models batching ------- */

void pv_wrmsr(u32 msr, u32 lo, u32 hi);
u64 pv_rdmsr(u32 msr);
u64 pv_rdpmc(u32 counter);
void pv_set_gdt(const void *desc);
void pv_set_idt(const void *desc);
void pv_get_gdt(void *desc);
void pv_get_idt(void *desc);
void pv_set_ldt(u32 sel);
void pv_set_tr(u32 sel);
u32 pv_get_ldt(void);
u32 pv_get_tr(void);
void pv_write_gdt_entry(void *table, u32 entry, u32 lo, u32 hi);
void pv_write_ldt_entry(void *table, u32 entry, u32 lo, u32 hi);
void pv_write_idt_entry(void *table, u32 entry, u32 lo, u32 hi);
void pv_update_kernel_stack(u32 tss_or_sel, u32 esp0);
void pv_set_dr(u32 num, u32 value);
u32 pv_get_dr(u32 num);
void pv_set_iopl_mask(u32 mask);
void pv_io_delay(void);
void pv_set_pxe(u32 pte, u32 ptep, u32 flags);
void pv_set_pxe_long(u32 lo, u32 hi, u32 ptep, u32 flags);
void pv_update_pxe(u32 ptep, u32 flags);
void pv_update_pxe_long(u32 ptep, u32 flags);
void pv_allocate_page(u32 pfn, u32 flags, u32 clone_pfn, u32 start, u32 count);
void pv_release_page(u32 pfn, u32 flags);
void pv_inval_page(u32 va);
void pv_flush_tlb(u32 flags);
void pv_set_linear_mapping(u32 slot, u32 va, u32 pages, u32 pfn);
void pv_set_lazy_mode(u32 mode);
void pv_write_cr3(u32 cr3);     /* the SetCR3 site plus the batch model */

/* The guest's model of the ROM's PTE queue (abi.py "vmigdb identity ROM"): it predicts the
 * flushes the ROM makes, so the summary can be cross-checked against a trace. */
struct batch_model {
    int batched;        /* the guest expects the ROM to batch (copy mode: writable state) */
    u32 lazy_mode;
    u32 queued;
    u32 deferred;       /* deferred PTE updates issued while the ROM batches */
    u32 flushes;        /* flushes the ROM is expected to have made */
    u32 by_trigger[8];  /* flushes by FLUSH_TRIGGER_* */
};
extern struct batch_model bm;

/* vmi.c: discovery, initialisation, patching. */
struct vmi_rom_info {
    u32 phys;           /* where the scan found it */
    u32 size;           /* rom_length * 512 */
    u32 base;           /* linear address the guest calls it at */
    u32 copy_phys;      /* copy mode: the RAM copy */
    u32 sites, patched, nopped, native;
};
extern struct vmi_rom_info vmi;
void vmi_probe(void);
void vmi_activate(void);
u32 pv_rom_calls(void);
u32 vmi_check_batches(void);

#endif
