/*
 * Workloads for the VMI calls other than the MMU ones (those are in ptwork.c). Each check
 * prints one line; any mismatch exits with its own code (exitcodes.h). Values that depend on
 * the machine (CPUID, TSC) are printed here but never enter the summary line.
 */
#include "paravirt.h"
#include "desc.h"
#include "mm.h"

#define USER_VA 0x50000000u     /* ring-3 code page, then its stack page */
#define IF_ON(f) (((f) & X86_EFLAGS_IF) != 0)

static u8 ring0_stack[PAGE_SIZE] __attribute__((aligned(16)));
static volatile u32 gdt_test_word = 0x6d647467;    /* read through the SPARE_SEL segment */
static volatile u32 ldt_test_word = 0x7464646c;    /* read through an LDT segment */
static volatile u64 pxe_long __attribute__((aligned(8)));

static void expect_if(int want, const char *what)
{
    int native = IF_ON(native_save_fl()), site = IF_ON(pv_save_fl());
    CHECK(native == want && site == want, EXIT_IRQ_FLAG, "%s: IF native=%d site=%d, want %d",
          what, native, site, want);
}

void test_irq_flags(void)
{
    pv_irq_disable();
    expect_if(0, "cli site");
    pv_irq_enable();
    expect_if(1, "sti site");
    u32 f = pv_save_fl();
    pv_irq_disable();
    expect_if(0, "cli after save");
    pv_restore_fl(f);
    expect_if(1, "restore(IF=1)");
    pv_irq_disable();
    f = pv_save_fl();
    pv_irq_enable();
    pv_restore_fl(f);
    expect_if(0, "restore(IF=0)");
    kprintf("irq: cli/sti/save/restore sites ok\n");
}

void test_control_registers(void)
{
    u32 cr0 = pv_read_cr0();
    CHECK((cr0 & 0x80000001u) == 0x80000001u, EXIT_CR, "GetCR0 = 0x%x: PG/PE clear", cr0);
    pv_write_cr0_site(cr0 | X86_CR0_TS);
    CHECK(pv_read_cr0() == (cr0 | X86_CR0_TS), EXIT_CR, "SetCR0(TS) did not set TS");
    pv_clts();
    CHECK(pv_read_cr0() == (cr0 & ~X86_CR0_TS), EXIT_CR, "CLTS did not clear TS");
    pv_write_cr0_site(cr0);

    pv_write_cr2_site(0x12345678);
    CHECK(pv_read_cr2() == 0x12345678, EXIT_CR, "SetCR2/GetCR2 round trip");

    u32 cr3 = pv_read_cr3();
    CHECK(cr3 == (u32)swapper_pg_dir, EXIT_CR, "GetCR3 = 0x%x", cr3);
    kprintf("setcr3 0x%x (A)\n", cr3);
    pv_write_cr3(cr3);
    CHECK(pv_read_cr3() == cr3, EXIT_CR, "SetCR3/GetCR3 round trip");

    u32 cr4 = pv_read_cr4();
    pv_write_cr4_site(cr4 | X86_CR4_PCE);
    CHECK(pv_read_cr4() == (cr4 | X86_CR4_PCE), EXIT_CR, "SetCR4(PCE) did not stick");
    pv_write_cr4_site(cr4);
    CHECK(pv_read_cr4() == cr4, EXIT_CR, "SetCR4 restore");
    kprintf("cr: cr0=0x%x cr3=0x%x cr4=0x%x; TS set/CLTS, CR2, CR3, CR4.PCE round trips ok\n",
            cr0, cr3, cr4);
}

static void native_cpuid(u32 leaf, struct cpuid_regs *r)
{
    asm volatile("cpuid" : "=a"(r->eax), "=b"(r->ebx), "=c"(r->ecx), "=d"(r->edx)
                 : "a"(leaf), "c"(0));
}

void test_cpuid(void)
{
    for (u32 leaf = 0; leaf <= 1; leaf++) {
        struct cpuid_regs r = pv_cpuid(leaf, 0), n;
        native_cpuid(leaf, &n);
        kprintf("cpuid leaf=0x%x -> eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x\n", leaf, r.eax, r.ebx,
                r.ecx, r.edx);
        CHECK(r.eax == n.eax && r.ebx == n.ebx && r.ecx == n.ecx && r.edx == n.edx, EXIT_CPUID,
              "CPUID leaf %u through the ROM differs from native", leaf);
        if (leaf == 0) {
            char v[13];
            memcpy(v, &r.ebx, 4);
            memcpy(v + 4, &r.edx, 4);
            memcpy(v + 8, &r.ecx, 4);
            v[12] = 0;
            kprintf("cpuid vendor=%s\n", v);
        }
    }
}

void test_msr_tsc_dr(void)
{
    pv_wrmsr(MSR_IA32_SYSENTER_CS, KERNEL_CS, 0);
    u64 v = pv_rdmsr(MSR_IA32_SYSENTER_CS);
    CHECK(v == KERNEL_CS, EXIT_MSR, "RDMSR(SYSENTER_CS) = 0x%x, want 0x%x", (u32)v, KERNEL_CS);
    kprintf("msr: WRMSR/RDMSR SYSENTER_CS=0x%x ok\n", (u32)v);

    u64 t0 = pv_rdtsc(), t1 = pv_rdtsc();
    CHECK(t1 >= t0, EXIT_TSC, "RDTSC went backwards");
    kprintf("tsc: RDTSC monotonic ok\n");

    for (u32 n = 0; n < 4; n++) {
        u32 val = USER_VA + 0x100 * (n + 1);
        pv_set_dr(n, val);
        u32 got = pv_get_dr(n);
        CHECK(got == val, EXIT_DR, "GetDR(%u) = 0x%x, want 0x%x", n, got, val);
        pv_set_dr(n, 0);
    }
    kprintf("dr: SetDR/GetDR DR0-3 round trips ok\n");

    pv_wbinvd();
    pv_io_delay();
    kprintf("misc: WBINVD, IODelay ok\n");

    u32 iopl0 = native_save_fl() & X86_EFLAGS_IOPL;
    pv_set_iopl_mask(X86_EFLAGS_IOPL);
    CHECK((native_save_fl() & X86_EFLAGS_IOPL) == X86_EFLAGS_IOPL, EXIT_IOPL,
          "SetIOPLMask(3<<12) did not raise IOPL");
    pv_set_iopl_mask(iopl0);
    CHECK((native_save_fl() & X86_EFLAGS_IOPL) == iopl0, EXIT_IOPL, "SetIOPLMask restore");
    kprintf("iopl: SetIOPLMask 0x%x -> 0x3000 -> 0x%x ok\n", iopl0, iopl0);
}

static void write_gdt(u32 entry, struct desc_struct d)
{
    pv_write_gdt_entry(gdt, entry, d.lo, d.hi);
    CHECK(gdt[entry].lo == d.lo && gdt[entry].hi == d.hi, EXIT_DT,
          "WriteGDTEntry(%u) read back 0x%x:%x", entry, gdt[entry].hi, gdt[entry].lo);
}

static u32 read_via(u32 sel, int fs)
{
    u32 v;
    if (fs)
        asm volatile("mov %w1, %%fs; movl %%fs:0, %0; mov %w2, %%fs" : "=&r"(v)
                     : "r"(sel), "r"(KERNEL_DS) : "memory");
    else
        asm volatile("mov %w1, %%gs; movl %%gs:0, %0; mov %w2, %%gs" : "=&r"(v)
                     : "r"(sel), "r"(KERNEL_DS) : "memory");
    return v;
}

void test_descriptor_tables(void)
{
    struct desc_ptr d = { 0, 0 };
    pv_get_gdt(&d);
    CHECK(d.base == (u32)gdt && d.limit == sizeof(gdt) - 1, EXIT_DT, "GetGDT = 0x%x/0x%x",
          d.base, d.limit);
    pv_set_gdt(&d);
    struct desc_ptr i = { 0, 0 };
    pv_get_idt(&i);
    CHECK(i.base == (u32)idt && i.limit == sizeof(idt) - 1, EXIT_DT, "GetIDT = 0x%x/0x%x",
          i.base, i.limit);
    pv_set_idt(&i);
    kprintf("dt: GetGDT 0x%x/0x%x, GetIDT 0x%x/0x%x, SetGDT/SetIDT reloaded\n", d.base,
            d.limit, i.base, i.limit);

    /* A data segment whose base is gdt_test_word, read through %gs. */
    write_gdt(GDT_ENTRY_SPARE, make_seg((u32)&gdt_test_word, 3, ACC_DATA0, FLG_BYTE32));
    CHECK(read_via(SPARE_SEL, 0) == gdt_test_word, EXIT_DT, "read through GDT segment");

    /* LDT: descriptor into the GDT, load it, then an LDT data segment read through %fs. */
    write_gdt(GDT_ENTRY_LDT, make_seg((u32)ldt, sizeof(ldt) - 1, ACC_LDT, 0));
    pv_set_ldt(LDT_SEL);
    CHECK(pv_get_ldt() == LDT_SEL, EXIT_DT, "GetLDT = 0x%x", pv_get_ldt());
    struct desc_struct ld = make_seg((u32)&ldt_test_word, 3, ACC_DATA0, FLG_BYTE32);
    pv_write_ldt_entry(ldt, 1, ld.lo, ld.hi);
    CHECK(ldt[1].lo == ld.lo && ldt[1].hi == ld.hi, EXIT_DT, "WriteLDTEntry read back");
    CHECK(read_via(1 * 8 + 4, 1) == ldt_test_word, EXIT_DT, "read through LDT segment");

    /* TSS: descriptor, then ltr (marks it busy), then esp0 through UpdateKernelStack. */
    write_gdt(GDT_ENTRY_TSS, make_seg((u32)&tss, sizeof(tss) - 1, ACC_TSS, 0));
    pv_set_tr(TSS_SEL);
    CHECK(pv_get_tr() == TSS_SEL, EXIT_DT, "GetTR = 0x%x", pv_get_tr());
    CHECK(((gdt[GDT_ENTRY_TSS].hi >> 8) & 0xFF) == ACC_TSS_BUSY, EXIT_DT,
          "TSS descriptor not busy after SetTR");
    u32 esp0 = (u32)ring0_stack + sizeof(ring0_stack);
    /* A context switch, as 2.6.30+ Linux does it: lazy CPU mode around the TSS update. */
    pv_set_lazy_mode(VMI_LAZY_CPU_STATE);
    pv_update_kernel_stack(KERNEL_DS, esp0);
    pv_set_lazy_mode(VMI_LAZY_MODE_OFF);
    CHECK(tss.esp0 == esp0, EXIT_KSTACK, "TSS.esp0 = 0x%x, want 0x%x", tss.esp0, esp0);
    kprintf("dt: WriteGDTEntry/WriteLDTEntry read back, SetLDT 0x%x, SetTR 0x%x, "
            "UpdateKernelStack esp0=0x%x ok\n", LDT_SEL, TSS_SEL, esp0);

    /* Gates through WriteIDTEntry. */
    struct desc_struct g = make_gate(selftest_interrupt, GATE_INTR0);
    pv_write_idt_entry(idt, VEC_SELFTEST, g.lo, g.hi);
    CHECK(idt[VEC_SELFTEST].lo == g.lo && idt[VEC_SELFTEST].hi == g.hi, EXIT_DT,
          "WriteIDTEntry read back");
    g = make_gate(syscall_entry, GATE_TRAP3);
    pv_write_idt_entry(idt, VEC_SYSCALL, g.lo, g.hi);
    kprintf("dt: WriteIDTEntry 0x%x, 0x%x ok\n", VEC_SELFTEST, VEC_SYSCALL);
}

void test_iret(void)
{
    pv_irq_enable();
    asm volatile("int %0" : : "i"(VEC_SELFTEST) : "memory");
    CHECK(selftest_count == 1 && selftest_cs == KERNEL_CS, EXIT_IRET,
          "int $0x%x: count=%u cs=0x%x", VEC_SELFTEST, selftest_count, selftest_cs);
    expect_if(1, "after iret (IF=1 frame)");
    pv_irq_disable();
    asm volatile("int %0" : : "i"(VEC_SELFTEST) : "memory");
    CHECK(selftest_count == 2, EXIT_IRET, "second int $0x%x", VEC_SELFTEST);
    expect_if(0, "after iret (IF=0 frame)");
    CHECK(iret_built_frame() == 1, EXIT_IRET, "built frame");
    kprintf("iret: int $0x%x twice and a built frame returned through the IRET site\n",
            VEC_SELFTEST);
}

void test_pxe_long(void)
{
    u32 p = __va((u32)&pxe_long);
    pv_set_pxe_long(0x12345067, 0x9, p, VMI_PAGE_PT);
    CHECK(pxe_long == 0x912345067ull, EXIT_PXE_LONG, "SetPxELong wrote 0x%x:%x",
          (u32)(pxe_long >> 32), (u32)pxe_long);
    pv_update_pxe_long(p, VMI_PAGE_PT);
    kprintf("pae: SetPxELong/UpdatePxELong on a scratch entry ok\n");
}

/* Leave ring 0 through the SYSEXIT site to a user page, come back with int $VEC_SYSCALL. */
void test_sysexit(void)
{
    u32 pt = alloc_page(), code = alloc_page(), stack = alloc_page();
    u32 pdi = USER_VA >> 22;
    memcpy((void *)__va(code), user_code_start, (u32)(user_code_end - user_code_start));
    pv_allocate_page(pt >> PAGE_SHIFT, VMI_PAGE_L1, 0, 0, 0);
    pv_set_pxe(pt | _PAGE_PRESENT | _PAGE_RW | _PAGE_USER, pte_va((u32)swapper_pg_dir, pdi),
               VMI_PAGE_PD);
    for (u32 k = 0; k < 2; k++) {
        u32 va = USER_VA + k * PAGE_SIZE;
        u32 pte = (k ? stack | _PAGE_RW : code) | _PAGE_PRESENT | _PAGE_USER;
        pv_set_pxe(pte, pte_va(pt, (va >> PAGE_SHIFT) & 1023),
                   VMI_PAGE_PT | VMI_PAGE_CURRENT_AS | (va & VMI_PAGE_VA_MASK));
    }
    u32 r = sysexit_roundtrip(USER_VA, USER_VA + 2 * PAGE_SIZE);
    pv_irq_disable();   /* SYSEXIT enabled interrupts for ring 3 */
    CHECK(r == 0x600d && syscall_cs == USER_CS, EXIT_SYSEXIT,
          "ring 3 returned eax=0x%x cs=0x%x", r, syscall_cs);
    for (u32 k = 0; k < 2; k++) {
        u32 va = USER_VA + k * PAGE_SIZE;
        pv_set_pxe(0, pte_va(pt, (va >> PAGE_SHIFT) & 1023),
                   VMI_PAGE_PT | VMI_PAGE_CURRENT_AS | (va & VMI_PAGE_VA_MASK));
        pv_inval_page(va);
    }
    pv_set_pxe(0, pte_va((u32)swapper_pg_dir, pdi), VMI_PAGE_PD);
    pv_flush_tlb(VMI_FLUSH_TLB);
    pv_release_page(pt >> PAGE_SHIFT, VMI_PAGE_L1);
    free_page(stack);
    free_page(code);
    free_page(pt);
    kprintf("sysexit: ring 3 at 0x%x ran and came back by int $0x%x (eax=0x%x cs=0x%x)\n",
            USER_VA, VEC_SYSCALL, r, syscall_cs);
}

/* Off by default: QEMU's TCG and Unicorn do not implement rdpmc and raise #UD even with
 * CR4.PCE set, so this ends the run through the exception handler (code 0x46). */
void test_rdpmc(void)
{
    u32 cr4 = pv_read_cr4();
    pv_write_cr4_site(cr4 | X86_CR4_PCE);
    u64 v = pv_rdpmc(0);
    pv_write_cr4_site(cr4);
    kprintf("rdpmc: counter 0 = 0x%x%08x\n", (u32)(v >> 32), (u32)v);
}
