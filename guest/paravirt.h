/*
 * Paravirtualization layer of the demo guest, modelled on i386 Linux 2.6.24-2.6.36 (vmi-abi.md
 * sections 3.3, 4 and 6; arch/x86/include/asm/paravirt_types.h and arch/x86/kernel/vmi_32.c of
 * 2.6.32).
 *
 * Two ways into the ROM, as in Linux:
 *  - Patch sites. An instruction sequence, NOP-padded to at least PV_SITE_LEN bytes, recorded in
 *    .parainstructions with Linux's 8-byte record {.long addr; .byte type; .byte len;
 *    .short clobbers}. As in Linux the type is a pv-op slot, PARAVIRT_PATCH(op): the op's
 *    offset in struct paravirt_patch_template divided by the size of a pointer (DWARF in
 *    guest.elf describes the struct, which is how vmigdb names the slots). The patcher is
 *    Linux's vmi_patch(): the interrupt-flag ops, iret and irq_enable_sysexit are rewritten
 *    to "call rel32" into the ROM entry get_reloc names (CALL_REL), to NOPs (NOP) or left alone
 *    (NONE); every other site keeps its native code, which for those ops is an indirect call
 *    through the pv-op pointer (Linux's PVOP_CALL: "call *pv_cpu_ops+off").
 *  - pv-op pointers (Linux's para_fill / para_wrap / vmi_get_function): the pv_*_ops members
 *    start at native regparm(3) implementations and are replaced by the ROM's entries (or a
 *    vmi_* wrapper calling one) when get_reloc says CALL_REL; the calls Linux reaches only
 *    through its vmi_* wrappers use pv_fn[call] (Linux's vmi_ops cache).
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
    u8 instrtype;   /* pv-op slot: PARAVIRT_PATCH(op) */
    u8 len;
    u16 clobbers;
} __attribute__((packed));

extern struct paravirt_patch_site __start_parainstructions[], __stop_parainstructions[];

/* --- the pv-op structures (Linux's names; a subset of 2.6.32's members) --------------------- */

typedef VMICALL u32 (*pv_get_fn)(void);
typedef VMICALL void (*pv_set_fn)(u32);
typedef VMICALL void (*pv_void_fn)(void);
typedef VMICALL u64 (*pv_get64_fn)(void);
typedef VMICALL void (*pv_cpuid_fn)(u32 *ax, u32 *bx, u32 *cx, u32 *dx);

/* Linux's wrapper for ops its callers reach through a callee-saved thunk. */
struct paravirt_callee_save {
    void *func;
};

struct pv_init_ops {
    /* The patcher: Linux's vmi_patch once VMI is active. */
    u32 (*patch)(u8 type, u16 clobbers, void *insns, u32 addr, u32 len);
};

struct pv_cpu_ops {
    pv_void_fn clts;
    pv_get_fn read_cr0;
    pv_set_fn write_cr0;
    pv_get_fn read_cr4;
    pv_set_fn write_cr4;
    pv_void_fn wbinvd;
    pv_cpuid_fn cpuid;
    pv_get64_fn read_tsc;
    /* Never called through: Linux poisons them, so a site that was not patched faults. */
    void *irq_enable_sysexit;
    void *iret;
};

struct pv_irq_ops {
    struct paravirt_callee_save save_fl;
    struct paravirt_callee_save restore_fl;
    struct paravirt_callee_save irq_disable;
    struct paravirt_callee_save irq_enable;
};

struct pv_mmu_ops {
    pv_get_fn read_cr2;
    pv_set_fn write_cr2;
    pv_get_fn read_cr3;
    pv_set_fn write_cr3;
};

/* Linux's struct paravirt_patch_template: every ops structure in one, so an op's slot is its
 * pointer index across them. */
struct paravirt_patch_template {
    struct pv_init_ops pv_init_ops;
    struct pv_cpu_ops pv_cpu_ops;
    struct pv_irq_ops pv_irq_ops;
    struct pv_mmu_ops pv_mmu_ops;
};

extern struct pv_init_ops pv_init_ops;
extern struct pv_cpu_ops pv_cpu_ops;
extern struct pv_irq_ops pv_irq_ops;
extern struct pv_mmu_ops pv_mmu_ops;

#define PARAVIRT_PATCH(x) \
    (__builtin_offsetof(struct paravirt_patch_template, x) / sizeof(void *))

#include "pvslots.h"  /* the slots entry.S needs as numbers */

/* Linux's get_call_destination(): the pointer a slot's indirect call goes through. */
void *pv_call_destination(u8 type);

/* The instructions between 771 and 772, NOP padding to PV_SITE_LEN, then the record. The
 * operands %[type] and %[clb] must be "i" constants. */
#define PV_SITE(insns)                                                          \
    "771:\n\t" insns "\n772:\n\t"                                               \
    ".if (772b-771b) < " __stringify(PV_SITE_LEN) "\n\t"                        \
    ".skip " __stringify(PV_SITE_LEN) "-(772b-771b), 0x90\n\t"                  \
    ".endif\n773:\n\t"                                                          \
    ".pushsection .parainstructions,\"a\"\n\t"                                  \
    ".balign 4\n\t"                                                             \
    ".long 771b\n\t"                                                            \
    ".byte %c[type]\n\t"                                                        \
    ".byte 773b-771b\n\t"                                                       \
    ".short %c[clb]\n\t"                                                        \
    ".popsection\n"

#define PV_TYPE(op, clobbers) [type] "i"(PARAVIRT_PATCH(op)), [clb] "i"(clobbers)

/* Linux's PVOP_CALL: the site is an indirect call through the op; %[opptr] is its address. */
#define PV_CALL_SITE PV_SITE("call *%c[opptr]")
#define PV_OP(pvop, clobbers) PV_TYPE(pvop, clobbers), [opptr] "i"(&(pvop))

extern u32 pv_hits[VMI_CALL_TABLE_LEN];      /* calls made, by call number */
extern u8 pv_reloc[VMI_CALL_TABLE_LEN];      /* get_reloc's answer, by call number */
extern void *pv_fn[VMI_CALL_TABLE_LEN];      /* ROM pointers the wrappers call (vmi_ops) */

static inline void pv_hit(u32 call) { pv_hits[call]++; }

/* --- interrupt flag sites: native code inline, patched to a ROM call (flags-only clobbers, as
 * Linux requires of the ROM) ----------------------------------------------------------------- */

static inline void pv_irq_disable(void)
{
    pv_hit(VMI_CALL_DisableInterrupts);
    asm volatile(PV_SITE("cli") : : PV_TYPE(pv_irq_ops.irq_disable, CLBR_NONE)
                 : "memory", "cc");
}

static inline void pv_irq_enable(void)
{
    pv_hit(VMI_CALL_EnableInterrupts);
    asm volatile(PV_SITE("sti") : : PV_TYPE(pv_irq_ops.irq_enable, CLBR_NONE)
                 : "memory", "cc");
}

static inline u32 pv_save_fl(void)
{
    u32 f;
    pv_hit(VMI_CALL_GetInterruptMask);
    asm volatile(PV_SITE("pushfl; popl %%eax") : "=a"(f)
                 : PV_TYPE(pv_irq_ops.save_fl, CLBR_EAX) : "memory", "cc");
    return f;
}

static inline void pv_restore_fl(u32 f)
{
    pv_hit(VMI_CALL_SetInterruptMask);
    asm volatile(PV_SITE("pushl %%eax; popfl") : "+a"(f)
                 : PV_TYPE(pv_irq_ops.restore_fl, CLBR_EAX) : "memory", "cc");
}

/* --- pv-op call sites: "call *op", left as they are by vmi_patch; the op points into the ROM
 * after para_fill (standard clobbers: EAX ECX EDX and flags) -------------------------------- */

#define PV_READ_CR(n, ops, call)                                                \
    static inline u32 pv_read_cr##n(void)                                       \
    {                                                                           \
        u32 v;                                                                  \
        pv_hit(call);                                                           \
        asm volatile(PV_CALL_SITE : "=a"(v)                                     \
                     : PV_OP(ops.read_cr##n, CLBR_ANY) : "ecx", "edx", "memory", "cc"); \
        return v;                                                               \
    }
PV_READ_CR(0, pv_cpu_ops, VMI_CALL_GetCR0)
PV_READ_CR(2, pv_mmu_ops, VMI_CALL_GetCR2)
PV_READ_CR(3, pv_mmu_ops, VMI_CALL_GetCR3)
PV_READ_CR(4, pv_cpu_ops, VMI_CALL_GetCR4)

#define PV_WRITE_CR(n, ops, call)                                               \
    static inline void pv_write_cr##n##_site(u32 v)                             \
    {                                                                           \
        pv_hit(call);                                                           \
        asm volatile(PV_CALL_SITE : "+a"(v)                                     \
                     : PV_OP(ops.write_cr##n, CLBR_ANY) : "ecx", "edx", "memory", "cc"); \
    }
PV_WRITE_CR(0, pv_cpu_ops, VMI_CALL_SetCR0)
PV_WRITE_CR(2, pv_mmu_ops, VMI_CALL_SetCR2)
PV_WRITE_CR(3, pv_mmu_ops, VMI_CALL_SetCR3)
PV_WRITE_CR(4, pv_cpu_ops, VMI_CALL_SetCR4)

static inline void pv_clts(void)
{
    pv_hit(VMI_CALL_CLTS);
    asm volatile(PV_CALL_SITE : : PV_OP(pv_cpu_ops.clts, CLBR_ANY)
                 : "eax", "ecx", "edx", "memory", "cc");
}

static inline void pv_wbinvd(void)
{
    pv_hit(VMI_CALL_WBINVD);
    asm volatile(PV_CALL_SITE : : PV_OP(pv_cpu_ops.wbinvd, CLBR_ANY)
                 : "eax", "ecx", "edx", "memory", "cc");
}

static inline u64 pv_rdtsc(void)
{
    u64 v;
    pv_hit(VMI_CALL_RDTSC);
    asm volatile(PV_CALL_SITE : "=A"(v) : PV_OP(pv_cpu_ops.read_tsc, CLBR_ANY)
                 : "ecx", "memory", "cc");
    return v;
}

struct cpuid_regs { u32 eax, ebx, ecx, edx; };

/* Linux's __cpuid: the op takes four pointers (regparm: EAX EDX ECX, the fourth pushed); with
 * VMI it is the vmi_cpuid wrapper, since the ROM's CPUID has the instruction's registers. */
static inline struct cpuid_regs pv_cpuid(u32 leaf, u32 subleaf)
{
    struct cpuid_regs r = { leaf, 0, subleaf, 0 };
    u32 *ax = &r.eax, *bx = &r.ebx, *cx = &r.ecx;
    pv_hit(VMI_CALL_CPUID);
    asm volatile("pushl %[dx]\n\t" PV_CALL_SITE "addl $4, %%esp"
                 : "+a"(ax), "+d"(bx), "+c"(cx)
                 : [dx] "r"(&r.edx), PV_OP(pv_cpu_ops.cpuid, CLBR_ANY) : "memory", "cc");
    return r;
}

/* --- calls through vmi_* wrappers (vmi.c): each counts, calls pv_fn[call], models batching - */

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
