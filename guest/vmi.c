/*
 * VMI discovery, activation and the pv-op layer, as i386 Linux does it (vmi-abi.md sections
 * 1-4 and 6): scan 0xC0000..0xE0000 in 2 KiB steps through the lowmem linear map, check the
 * header, call vmi_init through its jump point, patch the .parainstructions sites as Linux's
 * vmi_patch() does (only the interrupt-flag ops, iret and irq_enable_sysexit), and fill the
 * pv_*_ops members with the ROM entries or vmi_* wrappers (para_fill / para_wrap /
 * vmi_get_function), as activate_vmi() in 2.6.32's arch/x86/kernel/vmi_32.c.
 *
 * rom=copy (default) first copies the image to a page-aligned RAM buffer and runs the copy
 * (the 2006 mach-vmi prototype did that); its state is writable, so our ROM batches PTE updates.
 * rom=inplace runs it from shadow ROM at PAGE_OFFSET + phys, like mainline Linux; read-only
 * state, so no batching.
 */
#include "paravirt.h"
#include "mm.h"
#include "desc.h"

struct vmi_rom_info vmi;
struct batch_model bm;
u32 pv_hits[VMI_CALL_TABLE_LEN];
u8 pv_reloc[VMI_CALL_TABLE_LEN];

/* ---- native pv-op implementations (what a NONE relocation leaves in place) ------------------ */

static VMICALL void native_wrmsr(u32 lo, u32 hi, u32 msr)
{
    asm volatile("wrmsr" : : "a"(lo), "d"(hi), "c"(msr) : "memory");
}
static VMICALL u64 native_rdmsr(u32 unused_eax, u32 unused_edx, u32 msr)
{
    u64 v;
    (void)unused_eax, (void)unused_edx;
    asm volatile("rdmsr" : "=A"(v) : "c"(msr));
    return v;
}
static VMICALL u64 native_rdpmc(u32 unused_eax, u32 unused_edx, u32 counter)
{
    u64 v;
    (void)unused_eax, (void)unused_edx;
    asm volatile("rdpmc" : "=A"(v) : "c"(counter));
    return v;
}
static VMICALL void native_set_gdt(const void *d) { asm volatile("lgdt (%0)" : : "r"(d) : "memory"); }
static VMICALL void native_set_idt(const void *d) { asm volatile("lidt (%0)" : : "r"(d) : "memory"); }
static VMICALL void native_get_gdt(void *d) { asm volatile("sgdt (%0)" : : "r"(d) : "memory"); }
static VMICALL void native_get_idt(void *d) { asm volatile("sidt (%0)" : : "r"(d) : "memory"); }
static VMICALL void native_set_ldt(u32 sel) { asm volatile("lldt %w0" : : "r"(sel)); }
static VMICALL void native_set_tr(u32 sel) { asm volatile("ltr %w0" : : "r"(sel)); }
static VMICALL u32 native_get_ldt(void)
{
    u32 s = 0;
    asm volatile("sldt %w0" : "+r"(s));
    return s;
}
static VMICALL u32 native_get_tr(void)
{
    u32 s = 0;
    asm volatile("str %w0" : "+r"(s));
    return s;
}
static VMICALL void native_write_dt_entry(void *table, u32 entry, u32 lo, u32 hi)
{
    struct { u32 lo, hi; } *t = table;
    t[entry].lo = lo;
    t[entry].hi = hi;
}
static VMICALL void native_update_kernel_stack(u32 unused, u32 esp0)
{
    (void)unused;
    tss.esp0 = esp0;
}
static VMICALL void native_set_dr(u32 num, u32 v)
{
    switch (num) {
    case 0: asm volatile("mov %0, %%db0" : : "r"(v)); break;
    case 1: asm volatile("mov %0, %%db1" : : "r"(v)); break;
    case 2: asm volatile("mov %0, %%db2" : : "r"(v)); break;
    case 3: asm volatile("mov %0, %%db3" : : "r"(v)); break;
    case 6: asm volatile("mov %0, %%db6" : : "r"(v)); break;
    case 7: asm volatile("mov %0, %%db7" : : "r"(v)); break;
    }
}
static VMICALL u32 native_get_dr(u32 num)
{
    u32 v = 0;
    switch (num) {
    case 0: asm volatile("mov %%db0, %0" : "=r"(v)); break;
    case 1: asm volatile("mov %%db1, %0" : "=r"(v)); break;
    case 2: asm volatile("mov %%db2, %0" : "=r"(v)); break;
    case 3: asm volatile("mov %%db3, %0" : "=r"(v)); break;
    case 6: asm volatile("mov %%db6, %0" : "=r"(v)); break;
    case 7: asm volatile("mov %%db7, %0" : "=r"(v)); break;
    }
    return v;
}
static VMICALL void native_set_iopl_mask(u32 mask)
{
    u32 f = native_save_fl();
    f = (f & ~(u32)X86_EFLAGS_IOPL) | (mask & X86_EFLAGS_IOPL);
    asm volatile("pushl %0; popfl" : : "r"(f) : "memory", "cc");
}
static VMICALL void native_io_delay(void) { asm volatile("outb %%al, $0x80" : : : "eax"); }
static VMICALL void native_set_pxe(u32 pte, u32 ptep, u32 flags)
{
    (void)flags;
    *(volatile u32 *)ptep = pte;
}
static VMICALL void native_set_pxe_long(u32 lo, u32 hi, u32 ptep, u32 flags)
{
    (void)flags;
    ((volatile u32 *)ptep)[1] = hi;
    ((volatile u32 *)ptep)[0] = lo;
}
static VMICALL void native_nop(void) { }
static VMICALL void native_inval_page(u32 va) { asm volatile("invlpg (%0)" : : "r"(va) : "memory"); }
static VMICALL void native_flush_tlb(u32 flags)
{
    u32 cr3;
    (void)flags;
    asm volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3) : : "memory");
}

/* Natives of the pv_*_ops members (Linux's native_read_cr0 ...). */
static VMICALL u32 native_read_cr0(void) { u32 v; asm volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static VMICALL u32 native_read_cr2(void) { u32 v; asm volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static VMICALL u32 native_read_cr3(void) { u32 v; asm volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static VMICALL u32 native_read_cr4(void) { u32 v; asm volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static VMICALL void native_write_cr0(u32 v) { asm volatile("mov %0, %%cr0" : : "r"(v) : "memory"); }
static VMICALL void native_write_cr2(u32 v) { asm volatile("mov %0, %%cr2" : : "r"(v) : "memory"); }
static VMICALL void native_write_cr3(u32 v) { asm volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }
static VMICALL void native_write_cr4(u32 v) { asm volatile("mov %0, %%cr4" : : "r"(v) : "memory"); }
static VMICALL void native_clts(void) { asm volatile("clts"); }
static VMICALL void native_wbinvd(void) { asm volatile("wbinvd" : : : "memory"); }
static VMICALL u64 native_read_tsc(void) { u64 v; asm volatile("rdtsc" : "=A"(v)); return v; }
static VMICALL void native_cpuid(u32 *ax, u32 *bx, u32 *cx, u32 *dx)
{
    asm volatile("cpuid" : "=a"(*ax), "=b"(*bx), "=c"(*cx), "=d"(*dx) : "0"(*ax), "2"(*cx));
}
/* The interrupt-flag natives: never called (their sites hold the instructions inline), kept so
 * the members name what the native code does until para_fill replaces them. */
static VMICALL u32 native_save_fl_op(void) { return native_save_fl(); }
static VMICALL void native_restore_fl(u32 f) { asm volatile("pushl %0; popfl" : : "r"(f) : "memory", "cc"); }
static VMICALL void native_irq_disable(void) { asm volatile("cli" : : : "memory"); }
static VMICALL void native_irq_enable(void) { asm volatile("sti" : : : "memory"); }
/* Linux's vmi_nop: what a NOP relocation installs. */
static VMICALL void vmi_nop(void) { }

static u32 vmi_patch(u8 type, u16 clobbers, void *insns, u32 addr, u32 len);

/* Linux's paravirt_patch_default stands in until vmi_activate() installs vmi_patch; this guest
 * patches only once VMI is active, so the default leaves every site as it is. */
static u32 native_patch(u8 type, u16 clobbers, void *insns, u32 addr, u32 len)
{
    (void)type, (void)clobbers, (void)insns, (void)addr;
    return len;
}

struct pv_init_ops pv_init_ops = { .patch = native_patch };
struct pv_cpu_ops pv_cpu_ops = {
    .clts = native_clts,
    .read_cr0 = native_read_cr0,
    .write_cr0 = native_write_cr0,
    .read_cr4 = native_read_cr4,
    .write_cr4 = native_write_cr4,
    .wbinvd = native_wbinvd,
    .cpuid = native_cpuid,
    .read_tsc = native_read_tsc,
};
struct pv_irq_ops pv_irq_ops = {
    .save_fl = { (void *)native_save_fl_op },
    .restore_fl = { (void *)native_restore_fl },
    .irq_disable = { (void *)native_irq_disable },
    .irq_enable = { (void *)native_irq_enable },
};
struct pv_mmu_ops pv_mmu_ops = {
    .read_cr2 = native_read_cr2,
    .write_cr2 = native_write_cr2,
    .read_cr3 = native_read_cr3,
    .write_cr3 = native_write_cr3,
};

_Static_assert(PARAVIRT_PATCH(pv_cpu_ops.iret) == PV_SLOT_IRET, "pvslots.h: PV_SLOT_IRET");
_Static_assert(PARAVIRT_PATCH(pv_cpu_ops.irq_enable_sysexit) == PV_SLOT_IRQ_ENABLE_SYSEXIT,
               "pvslots.h: PV_SLOT_IRQ_ENABLE_SYSEXIT");

void *pv_call_destination(u8 type)
{
    struct paravirt_patch_template tmpl = {
        .pv_init_ops = pv_init_ops,
        .pv_cpu_ops = pv_cpu_ops,
        .pv_irq_ops = pv_irq_ops,
        .pv_mmu_ops = pv_mmu_ops,
    };
    if (type >= sizeof(tmpl) / sizeof(void *))
        return 0;
    return *((void **)&tmpl + type);
}

/* Linux's vmi_ops cache of ROM entries the vmi_* wrappers call (here only CPUID's; the other
 * wrappers use pv_fn[call]). */
static VMICALL void (*vmi_ops_cpuid)(void);

/* Linux's vmi_cpuid: the pv-op takes pointers, the ROM's CPUID the instruction's registers. */
static VMICALL void vmi_cpuid(u32 *ax, u32 *bx, u32 *cx, u32 *dx)
{
    asm volatile("call *%6" : "=a"(*ax), "=b"(*bx), "=c"(*cx), "=d"(*dx)
                 : "0"(*ax), "2"(*cx), "r"(vmi_ops_cpuid) : "memory", "cc");
}

/* Linux's vmi_ops: the ROM pointers the vmi_* wrappers below call, by call number. Native
 * until vmi_activate() fills them from get_reloc (vmi_get_function). Calls without an entry
 * here are reached only through patch sites or the pv_*_ops members. */
void *pv_fn[VMI_CALL_TABLE_LEN] = {
    [VMI_CALL_WRMSR] = native_wrmsr,
    [VMI_CALL_RDMSR] = native_rdmsr,
    [VMI_CALL_RDPMC] = native_rdpmc,
    [VMI_CALL_SetGDT] = native_set_gdt,
    [VMI_CALL_SetIDT] = native_set_idt,
    [VMI_CALL_GetGDT] = native_get_gdt,
    [VMI_CALL_GetIDT] = native_get_idt,
    [VMI_CALL_SetLDT] = native_set_ldt,
    [VMI_CALL_SetTR] = native_set_tr,
    [VMI_CALL_GetLDT] = native_get_ldt,
    [VMI_CALL_GetTR] = native_get_tr,
    [VMI_CALL_WriteGDTEntry] = native_write_dt_entry,
    [VMI_CALL_WriteLDTEntry] = native_write_dt_entry,
    [VMI_CALL_WriteIDTEntry] = native_write_dt_entry,
    [VMI_CALL_UpdateKernelStack] = native_update_kernel_stack,
    [VMI_CALL_SetDR] = native_set_dr,
    [VMI_CALL_GetDR] = native_get_dr,
    [VMI_CALL_SetIOPLMask] = native_set_iopl_mask,
    [VMI_CALL_IODelay] = native_io_delay,
    [VMI_CALL_SetPxE] = native_set_pxe,
    [VMI_CALL_SetPxELong] = native_set_pxe_long,
    [VMI_CALL_UpdatePxE] = native_nop,
    [VMI_CALL_UpdatePxELong] = native_nop,
    [VMI_CALL_AllocatePage] = native_nop,
    [VMI_CALL_ReleasePage] = native_nop,
    [VMI_CALL_InvalPage] = native_inval_page,
    [VMI_CALL_FlushTLB] = native_flush_tlb,
    [VMI_CALL_SetLinearMapping] = native_nop,
    [VMI_CALL_SetLazyMode] = native_nop,
};

typedef VMICALL u32 (*fn0_t)(void);
typedef VMICALL u32 (*fn1_t)(u32);
typedef VMICALL u32 (*fn2_t)(u32, u32);
typedef VMICALL u32 (*fn3_t)(u32, u32, u32);
typedef VMICALL u32 (*fn4_t)(u32, u32, u32, u32);
typedef VMICALL u32 (*fn5_t)(u32, u32, u32, u32, u32);
typedef VMICALL u64 (*fn3_64_t)(u32, u32, u32);

#define PV0(c) (pv_hit(VMI_CALL_##c), ((fn0_t)pv_fn[VMI_CALL_##c])())
#define PV1(c, a) (pv_hit(VMI_CALL_##c), ((fn1_t)pv_fn[VMI_CALL_##c])(a))
#define PV2(c, a, b) (pv_hit(VMI_CALL_##c), ((fn2_t)pv_fn[VMI_CALL_##c])(a, b))
#define PV3(c, a, b, d) (pv_hit(VMI_CALL_##c), ((fn3_t)pv_fn[VMI_CALL_##c])(a, b, d))
#define PV4(c, a, b, d, e) (pv_hit(VMI_CALL_##c), ((fn4_t)pv_fn[VMI_CALL_##c])(a, b, d, e))
#define PV5(c, a, b, d, e, f) \
    (pv_hit(VMI_CALL_##c), ((fn5_t)pv_fn[VMI_CALL_##c])(a, b, d, e, f))

/* ---- the batch model: what the ROM's queue does, from abi.py's documented rules ------------ */

static void model_flush(u32 trigger)
{
    if (!bm.batched || !bm.queued)
        return;     /* an empty queue does not flush */
    bm.flushes++;
    bm.by_trigger[trigger]++;
    bm.queued = 0;
}

static void model_pte_update(u32 flags)
{
    if (!bm.batched)
        return;
    if ((flags & VMI_PAGE_DEFER) && bm.lazy_mode == VMI_LAZY_MMU_UPDATES) {
        if (bm.queued == ROM_QUEUE_LEN)
            model_flush(FLUSH_TRIGGER_QueueFull);
        bm.queued++;
        bm.deferred++;
    } else {
        model_flush(FLUSH_TRIGGER_Ordering);
    }
}

/* ---- pv-op wrappers ---------------------------------------------------------------------- */

void pv_wrmsr(u32 msr, u32 lo, u32 hi) { PV3(WRMSR, lo, hi, msr); }
u64 pv_rdmsr(u32 msr)
{
    pv_hit(VMI_CALL_RDMSR);
    return ((fn3_64_t)pv_fn[VMI_CALL_RDMSR])(0, 0, msr);
}
u64 pv_rdpmc(u32 counter)
{
    pv_hit(VMI_CALL_RDPMC);
    return ((fn3_64_t)pv_fn[VMI_CALL_RDPMC])(0, 0, counter);
}
void pv_set_gdt(const void *d) { PV1(SetGDT, (u32)d); }
void pv_set_idt(const void *d) { PV1(SetIDT, (u32)d); }
void pv_get_gdt(void *d) { PV1(GetGDT, (u32)d); }
void pv_get_idt(void *d) { PV1(GetIDT, (u32)d); }
void pv_set_ldt(u32 sel) { PV1(SetLDT, sel); }
void pv_set_tr(u32 sel) { PV1(SetTR, sel); }
u32 pv_get_ldt(void) { return PV0(GetLDT) & 0xFFFF; }
u32 pv_get_tr(void) { return PV0(GetTR) & 0xFFFF; }
void pv_write_gdt_entry(void *t, u32 e, u32 lo, u32 hi) { PV4(WriteGDTEntry, (u32)t, e, lo, hi); }
void pv_write_ldt_entry(void *t, u32 e, u32 lo, u32 hi) { PV4(WriteLDTEntry, (u32)t, e, lo, hi); }
void pv_write_idt_entry(void *t, u32 e, u32 lo, u32 hi) { PV4(WriteIDTEntry, (u32)t, e, lo, hi); }
void pv_update_kernel_stack(u32 sel, u32 esp0) { PV2(UpdateKernelStack, sel, esp0); }
void pv_set_dr(u32 num, u32 v) { PV2(SetDR, num, v); }
u32 pv_get_dr(u32 num) { return PV1(GetDR, num); }
void pv_set_iopl_mask(u32 mask) { PV1(SetIOPLMask, mask); }
void pv_io_delay(void) { PV0(IODelay); }

void pv_set_pxe(u32 pte, u32 ptep, u32 flags)
{
    model_pte_update(flags);
    PV3(SetPxE, pte, ptep, flags);
}

void pv_set_pxe_long(u32 lo, u32 hi, u32 ptep, u32 flags)
{
    model_pte_update(flags);
    PV4(SetPxELong, lo, hi, ptep, flags);
}

void pv_update_pxe(u32 ptep, u32 flags)
{
    model_pte_update(flags);
    PV2(UpdatePxE, ptep, flags);
}

void pv_update_pxe_long(u32 ptep, u32 flags)
{
    model_pte_update(flags);
    PV2(UpdatePxELong, ptep, flags);
}

void pv_allocate_page(u32 pfn, u32 flags, u32 clone_pfn, u32 start, u32 count)
{
    PV5(AllocatePage, pfn, flags, clone_pfn, start, count);
}

void pv_release_page(u32 pfn, u32 flags) { PV2(ReleasePage, pfn, flags); }

void pv_inval_page(u32 va)
{
    model_flush(FLUSH_TRIGGER_InvalPage);
    PV1(InvalPage, va);
}

void pv_flush_tlb(u32 flags)
{
    model_flush(FLUSH_TRIGGER_FlushTLB);
    PV1(FlushTLB, flags);
}

void pv_set_linear_mapping(u32 slot, u32 va, u32 pages, u32 pfn)
{
    PV4(SetLinearMapping, slot, va, pages, pfn);
}

void pv_set_lazy_mode(u32 mode)
{
    if (mode != VMI_LAZY_MMU_UPDATES)
        model_flush(FLUSH_TRIGGER_SetLazyMode);
    bm.lazy_mode = mode;
    PV1(SetLazyMode, mode);
}

void pv_write_cr3(u32 cr3)
{
    model_flush(FLUSH_TRIGGER_SetCR3);
    pv_write_cr3_site(cr3);
}

/* ---- discovery (check_vmi_rom / probe_vmi_rom) -------------------------------------------- */

static u16 rd16(const u8 *p) { return (u16)(p[0] | p[1] << 8); }
static u32 rd32(const u8 *p) { return rd16(p) | (u32)rd16(p + 2) << 16; }

static u8 checksum(const u8 *p, u32 n)
{
    u8 s = 0;
    while (n--)
        s += *p++;
    return s;
}

/* 0 = not a usable VMI ROM (reason printed), 1 = accepted. *refused is set when only the
 * licence was wrong, so the exit code can say so. */
static int check_vmi_rom(u32 phys, int *refused)
{
    const u8 *rom = (const u8 *)__va(phys);
    u32 size = rom[VROM_ROM_LENGTH] * ROM_BLOCK;
    if (size == 0 || checksum(rom, size) != 0) {
        kprintf("rom 0x%x: 55aa but bad checksum, ignored\n", phys);
        return 0;
    }
    if (rd32(rom + VROM_VROM_SIGNATURE) != VMI_SIGNATURE) {
        kprintf("rom 0x%x: option rom, %u bytes, not VMI\n", phys, size);
        return 0;
    }
    u32 maj = rom[VROM_API_VERSION_MAJ], min = rom[VROM_API_VERSION_MIN];
    if (maj != VMI_API_REV_MAJOR || min + 1 < VMI_API_REV_MINOR + 1) {
        kprintf("rom 0x%x: VMI: Found mismatched rom version %u.%u\n", phys, maj, min);
        return 0;
    }
    u32 pci = rd16(rom + VROM_PCI_HEADER_OFFS);
    if (!pci) {
        kprintf("rom 0x%x: VMI: ROM does not contain PCI header\n", phys);
        return 0;
    }
    if (rd16(rom + pci + PCI_VENDORID) != PCI_VENDOR_ID_VMWARE ||
        rd16(rom + pci + PCI_DEVICEID) != PCI_DEVICE_ID_VMWARE_VMI)
        kprintf("rom 0x%x: VMI: ROM from unknown manufacturer (pci %x:%x)\n", phys,
                rd16(rom + pci + PCI_VENDORID), rd16(rom + pci + PCI_DEVICEID));
    u32 lic_offs = rd16(rom + VROM_LICENSE_OFFS);
    const char *lic = lic_offs ? (const char *)rom + lic_offs : "unspecified";
    if (strcmp(lic, "GPL") != 0 && strcmp(lic, "GPL v2") != 0) {
        kprintf("rom 0x%x: VMI: Non GPL license `%s' found for ROM. Not used.\n", phys, lic);
        *refused = 1;
        return 0;
    }
    const char *manuf = "(no PnP header)", *product = "";
    u32 pnp = rd16(rom + VROM_PNP_HEADER_OFFS);
    if (pnp) {
        manuf = (const char *)rom + rd16(rom + pnp + PNP_MANUFACTURER_OFFSET);
        product = (const char *)rom + rd16(rom + pnp + PNP_PRODUCT_OFFSET);
    }
    kprintf("rom 0x%x: VMI: Found %s%s%s, API version %u.%u, ROM version %u.%u, %u bytes, "
            "license %s\n", phys, manuf, *product ? " " : "", product, maj, min,
            rom[pci + PCI_ROM_VERSION_MAJ], rom[pci + PCI_ROM_VERSION_MIN], size, lic);
    vmi.phys = phys;
    vmi.size = size;
    return 1;
}

void vmi_probe(void)
{
    int refused = 0;
    for (u32 base = ROM_SCAN_START; base < ROM_SCAN_END; base += ROM_SCAN_STEP) {
        const u8 *p = (const u8 *)__va(base);
        if (rd16(p + VROM_ROM_SIGNATURE) == ROM_SIGNATURE && check_vmi_rom(base, &refused))
            return;
    }
    if (refused)
        fail(EXIT_ROM_LICENSE, "no VMI ROM with an acceptable licence");
    fail(EXIT_NO_ROM, "no VMI ROM in 0x%x..0x%x", ROM_SCAN_START, ROM_SCAN_END);
}

/* ---- activation ---------------------------------------------------------------------------- */

struct reloc { u32 eip; u8 type; };

static struct reloc get_reloc(u32 call)
{
    /* Linux: a regparm(2) function returning u64, overlaid on struct vmi_relocation_info. */
    VMICALL u64 (*fn)(u32) = (VMICALL u64 (*)(u32))(vmi.base + VROM_GET_RELOC);
    u64 r = fn(call);
    struct reloc rel = { (u32)r, (u8)(r >> 32) };
    if (rel.type == VMI_RELOCATION_CALL_REL || rel.type == VMI_RELOCATION_JUMP_REL)
        CHECK(rel.eip >= vmi.base && rel.eip < vmi.base + vmi.size, EXIT_RELOC,
              "get_reloc(%s) = 0x%x, outside the ROM at 0x%x", vmi_call_names[call], rel.eip,
              vmi.base);
    else
        CHECK(rel.type == VMI_RELOCATION_NONE || rel.type == VMI_RELOCATION_NOP, EXIT_RELOC,
              "get_reloc(%s): unknown relocation type %u", vmi_call_names[call], rel.type);
    return rel;
}

static void write_rel32(u8 *site, u8 opcode, u32 dest, u32 ip)
{
    site[0] = opcode;
    u32 rel = dest - (ip + 5);
    for (int i = 0; i < 4; i++)
        site[1 + i] = (u8)(rel >> (8 * i));
}

/* Linux's patch_internal(): one site, from the relocation of one VMI call. Returns the bytes
 * used (the rest becomes NOPs). Counts what it did for the summary. */
static u32 patch_internal(u32 call, u32 len, u8 *insns, u32 ip)
{
    struct reloc rel = get_reloc(call);
    switch (rel.type) {
    case VMI_RELOCATION_CALL_REL:
    case VMI_RELOCATION_JUMP_REL:
        CHECK(len >= PV_SITE_LEN, EXIT_PATCH, "patch site 0x%x (%s) is %u bytes", ip,
              vmi_call_names[call], len);
        write_rel32(insns, rel.type == VMI_RELOCATION_CALL_REL ? 0xE8 : 0xE9, rel.eip, ip);
        vmi.patched++;
        return 5;
    case VMI_RELOCATION_NOP:
        vmi.nopped++;
        return 0;       /* obliterate the whole thing */
    default:
        vmi.native++;
        return len;     /* leave native code in place */
    }
}

/* Linux's vmi_patch(): only these slots are patched; every other site keeps its native code
 * (an indirect call through its pv-op, which para_fill points at the ROM). vmigdb judges each
 * site by Linux's table (vmigdb/pvops.py PATCHED_OPS); tests/test_sites.py checks that this
 * guest's patcher agrees with it. */
static u32 vmi_patch(u8 type, u16 clobbers, void *insns, u32 ip, u32 len)
{
    (void)clobbers;
    switch (type) {
    case PARAVIRT_PATCH(pv_irq_ops.irq_disable):
        return patch_internal(VMI_CALL_DisableInterrupts, len, insns, ip);
    case PARAVIRT_PATCH(pv_irq_ops.irq_enable):
        return patch_internal(VMI_CALL_EnableInterrupts, len, insns, ip);
    case PARAVIRT_PATCH(pv_irq_ops.restore_fl):
        return patch_internal(VMI_CALL_SetInterruptMask, len, insns, ip);
    case PARAVIRT_PATCH(pv_irq_ops.save_fl):
        return patch_internal(VMI_CALL_GetInterruptMask, len, insns, ip);
    case PARAVIRT_PATCH(pv_cpu_ops.iret):
        return patch_internal(VMI_CALL_IRET, len, insns, ip);
    case PARAVIRT_PATCH(pv_cpu_ops.irq_enable_sysexit):
        return patch_internal(VMI_CALL_SYSEXIT, len, insns, ip);
    default:
        vmi.native++;
        return len;
    }
}

/* apply_paravirt(): hand every site to pv_init_ops.patch and NOP-pad what it did not use. Our
 * text runs from the identity map, which is read-write, so the sites are written in place
 * (Linux patches a copy and text_poke_early()s it back: the same bytes). */
static void apply_paravirt(void)
{
    for (struct paravirt_patch_site *s = __start_parainstructions; s < __stop_parainstructions;
         s++) {
        vmi.sites++;
        CHECK(pv_call_destination(s->instrtype) != 0 || s->instrtype == PV_SLOT_IRET ||
              s->instrtype == PV_SLOT_IRQ_ENABLE_SYSEXIT, EXIT_PATCH,
              "patch site 0x%x: slot %u has no pv-op", (u32)s->instr, s->instrtype);
        u32 used = pv_init_ops.patch(s->instrtype, s->clobbers, s->instr, (u32)s->instr, s->len);
        CHECK(used <= s->len, EXIT_PATCH, "patch site 0x%x: %u bytes used of %u",
              (u32)s->instr, used, s->len);
        for (u32 i = used; i < s->len; i++)
            s->instr[i] = 0x90;
    }
    /* Make the rewritten code visible to instruction fetch (a jump serializes enough for
     * same-CPU self-modifying code). */
    asm volatile("jmp 1f\n1:" : : : "memory");
}

/* Linux's para_fill: CALL_REL -> the ROM entry, NOP -> vmi_nop, NONE -> the native op stays. */
#define para_fill(opname, vmicall)                                              \
    do {                                                                        \
        struct reloc r_ = get_reloc(VMI_CALL_##vmicall);                        \
        if (r_.type == VMI_RELOCATION_CALL_REL)                                 \
            opname = (void *)r_.eip;                                            \
        else if (r_.type == VMI_RELOCATION_NOP)                                 \
            opname = (void *)vmi_nop;                                           \
    } while (0)

/* Linux's para_wrap: CALL_REL -> the wrapper, which calls the cached ROM entry. */
#define para_wrap(opname, wrapper, cache, vmicall)                              \
    do {                                                                        \
        struct reloc r_ = get_reloc(VMI_CALL_##vmicall);                        \
        CHECK(r_.type != VMI_RELOCATION_JUMP_REL, EXIT_RELOC, "get_reloc(%s) = JUMP_REL", \
              #vmicall);                                                        \
        if (r_.type == VMI_RELOCATION_CALL_REL) {                               \
            opname = wrapper;                                                   \
            cache = (void *)r_.eip;                                             \
        }                                                                       \
    } while (0)

/* The pv_*_ops members, as activate_vmi() fills them. */
static void fill_pv_ops(void)
{
    pv_init_ops.patch = vmi_patch;
    para_wrap(pv_cpu_ops.cpuid, vmi_cpuid, vmi_ops_cpuid, CPUID);
    para_fill(pv_cpu_ops.clts, CLTS);
    para_fill(pv_cpu_ops.read_cr0, GetCR0);
    para_fill(pv_mmu_ops.read_cr2, GetCR2);
    para_fill(pv_mmu_ops.read_cr3, GetCR3);
    para_fill(pv_cpu_ops.read_cr4, GetCR4);
    para_fill(pv_cpu_ops.write_cr0, SetCR0);
    para_fill(pv_mmu_ops.write_cr2, SetCR2);
    para_fill(pv_mmu_ops.write_cr3, SetCR3);
    para_fill(pv_cpu_ops.write_cr4, SetCR4);
    para_fill(pv_irq_ops.save_fl.func, GetInterruptMask);
    para_fill(pv_irq_ops.restore_fl.func, SetInterruptMask);
    para_fill(pv_irq_ops.irq_disable.func, DisableInterrupts);
    para_fill(pv_irq_ops.irq_enable.func, EnableInterrupts);
    para_fill(pv_cpu_ops.wbinvd, WBINVD);
    para_fill(pv_cpu_ops.read_tsc, RDTSC);
    /* "These MUST always be patched": a site left unpatched jumps to a bad address. */
    pv_cpu_ops.irq_enable_sysexit = (void *)0xfeedbab0;
    pv_cpu_ops.iret = (void *)0xbadbab0;
}

/* vmi_get_function for the wrappers' calls: CALL_REL -> the ROM entry, NOP -> vmi_nop, NONE ->
 * the native op stays. */
static void para_fill_wrapped(void)
{
    for (u32 c = 0; c < VMI_CALL_TABLE_LEN; c++) {
        if (!vmi_call_names[c])
            continue;
        struct reloc rel = get_reloc(c);
        pv_reloc[c] = rel.type;
        if (!pv_fn[c])
            continue;   /* reached only through patch sites */
        CHECK(rel.type != VMI_RELOCATION_JUMP_REL, EXIT_RELOC, "get_reloc(%s) = JUMP_REL",
              vmi_call_names[c]);
        if (rel.type == VMI_RELOCATION_CALL_REL)
            pv_fn[c] = (void *)rel.eip;
        else if (rel.type == VMI_RELOCATION_NOP)
            pv_fn[c] = vmi_nop;
    }
}

void vmi_activate(void)
{
    if (opt.rom_copy) {
        u32 pages = (vmi.size + PAGE_SIZE - 1) / PAGE_SIZE;
        vmi.copy_phys = alloc_pages_contig(pages);
        memcpy((void *)__va(vmi.copy_phys), (const void *)__va(vmi.phys), vmi.size);
        const u8 *copy = (const u8 *)__va(vmi.copy_phys);
        CHECK(memcmp(copy, (const void *)__va(vmi.phys), vmi.size) == 0 &&
              checksum(copy, vmi.size) == 0, EXIT_ROM_COPY, "ROM copy at 0x%x is corrupt",
              vmi.copy_phys);
        vmi.base = __va(vmi.copy_phys);
        kprintf("vmi: rom=copy: %u bytes copied to phys 0x%x, calling it at 0x%x\n", vmi.size,
                vmi.copy_phys, vmi.base);
    } else {
        vmi.base = __va(vmi.phys);
        kprintf("vmi: rom=inplace: calling the ROM at 0x%x\n", vmi.base);
    }
    bm.batched = opt.rom_copy;

    /* vmi_init: Linux's regparm(1) u32 (*)(void) through the jump point. */
    VMICALL u32 (*init)(void) = (VMICALL u32 (*)(void))(vmi.base + VROM_VMI_INIT);
    u32 r = init();
    CHECK(r == 0, EXIT_ROM_INIT, "vmi_init returned 0x%x", r);
    u32 cs;
    asm volatile("mov %%cs, %0" : "=r"(cs));
    kprintf("vmi: vmi_init ok, kernel_rpl=%u\n", cs & 3);

    fill_pv_ops();
    apply_paravirt();
    kprintf("vmi: patch sites=%u call=%u nop=%u native=%u\n", vmi.sites, vmi.patched,
            vmi.nopped, vmi.native);
    para_fill_wrapped();
    u32 n[4] = { 0 };
    for (u32 c = 0; c < VMI_CALL_TABLE_LEN; c++)
        if (vmi_call_names[c])
            n[pv_reloc[c] & 3]++;
    kprintf("vmi: get_reloc call_rel=%u jump_rel=%u nop=%u none=%u\n",
            n[VMI_RELOCATION_CALL_REL], n[VMI_RELOCATION_JUMP_REL], n[VMI_RELOCATION_NOP],
            n[VMI_RELOCATION_NONE]);
    /* From here on every pv call is counted. */
    memset(pv_hits, 0, sizeof(pv_hits));
}

/* Calls that reached the ROM: those made through a CALL_REL (or JUMP_REL) relocation. */
u32 pv_rom_calls(void)
{
    u32 n = 0;
    for (u32 c = 0; c < VMI_CALL_TABLE_LEN; c++)
        if (pv_reloc[c] == VMI_RELOCATION_CALL_REL || pv_reloc[c] == VMI_RELOCATION_JUMP_REL)
            n += pv_hits[c];
    return n;
}

/* Cross-check of the batch model against the ROM itself. A vmigdb ROM (VMIGDB_HEADER magic)
 * keeps its struct vmi_batch at state_offs; its seq field counts the flushes made. In copy
 * mode that state is the guest's RAM, so the prediction can be checked exactly; in place the
 * state is read-only and stays zero. Returns the ROM's count (0 for a foreign ROM). */
u32 vmi_check_batches(void)
{
    const u8 *rom = (const u8 *)vmi.base;
    if (rd32(rom + VMIGDB_VMIGDB_MAGIC) != ROM_VMIGDB_MAGIC) {
        kprintf("vmi: not a vmigdb ROM, batch count not checked\n");
        return 0;
    }
    const u8 *batch = rom + rd16(rom + VMIGDB_STATE_OFFS);
    u32 seq = rd32(batch + BATCH_SEQ);
    u32 want = bm.batched ? bm.flushes : 0;
    kprintf("vmi: rom batch seq=%u, model predicts %u\n", seq, want);
    CHECK(seq == want, EXIT_BATCH_MODEL, "the ROM flushed %u times, the model says %u", seq,
          want);
    return seq;
}
