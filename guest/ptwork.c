/*
 * The page-table workload: what Linux's mm does through the VMI MMU calls, in lazy MMU mode.
 *
 * Two address spaces: A is swapper_pg_dir, B a second page directory cloned from it
 * (AllocatePage L2|CLONE). Each owns two page tables (AllocatePage L1) covering WL_PAGES pages
 * at WL_BASE, which straddles a 4 MiB boundary. For each batch size n the guest runs five lazy
 * regions (SetLazyMode(1) ... SetLazyMode(0)) and checks memory after each one ends:
 *   map      VA[i] -> F[i] RW, deferred SetPxE                 write via VA, read via lowmem
 *   remap    VA[i] -> G[i] RW, one InvalPage/FlushTLB inside   read G's pattern via VA
 *   protect  VA[i] -> G[i] RO, every third entry written by    PTE values, read via VA
 *            the guest then UpdatePxE (deferred notification)
 *   switch   A: VA[0], VA[1] -> F (deferred); B: VA[i] ->      B sees F reversed, A sees F[0]
 *            F[n-1-i] (not current AS: undeferred, Ordering); SetCR3(B) inside the region
 *   unmap    VA[i] -> 0, the last one undeferred (Ordering)    PTEs are 0 (never touched)
 * Deferred updates carry VMI_PAGE_PT | CURRENT_AS | (va & VA_MASK) | DEFER, like Linux's
 * vmi_flags_addr_defer. As Linux does, the guest itself flushes the TLB after changing live
 * mappings (the ROM only applies its queue); an empty queue never flushes, so the model in
 * vmi.c predicts the ROM's flushes exactly.
 */
#include "mm.h"
#include "paravirt.h"

#define WL_PAGES 200
#define WL_BASE (0x40000000u - 64 * PAGE_SIZE)
#define WL_PDE0 (WL_BASE >> 22)
#define VA(i) (WL_BASE + (u32)(i) * PAGE_SIZE)

static const u32 sizes[] = { 1, 2, 7, 16, 17, 64, 127, 128, 129, 200 };

u32 log_quiet;
static u32 frames_f[WL_PAGES], frames_g[WL_PAGES];

struct aspace {
    const char *name;
    u32 pd;         /* physical address of the page directory */
    u32 pt[2];      /* the workload's page tables, for PDEs WL_PDE0 and WL_PDE0 + 1 */
};
static struct aspace as_a = { "A", 0, { 0, 0 } }, as_b = { "B", 0, { 0, 0 } };

static u32 ptep(const struct aspace *as, u32 i)
{
    u32 va = VA(i);
    return pte_va(as->pt[(va >> 22) - WL_PDE0], (va >> PAGE_SHIFT) & 1023);
}

static u32 pte_read(const struct aspace *as, u32 i)
{
    /* The CPU may set Accessed/Dirty: compare without them. */
    return *(volatile u32 *)ptep(as, i) & ~0x60u;
}

static u32 flags_defer(u32 i)
{
    return VMI_PAGE_PT | VMI_PAGE_CURRENT_AS | (VA(i) & VMI_PAGE_VA_MASK) | VMI_PAGE_DEFER;
}

static u32 pat_f(u32 n, u32 i) { return 0xF0000000u ^ (n << 16) ^ i; }
static u32 pat_g(u32 n, u32 i) { return 0x60000000u ^ (n << 16) ^ i; }
static volatile u32 *word(u32 va, u32 off) { return (volatile u32 *)(va + off); }

static void set_cr3(const struct aspace *as)
{
    if (!log_quiet)
        kprintf("setcr3 0x%x (%s)\n", as->pd, as->name);
    pv_write_cr3(as->pd);
}

/* Linux's flush after changing live mappings: per page for a few, whole TLB otherwise. */
static void flush_range(u32 n)
{
    if (n <= ROM_INVLPG_MAX)
        for (u32 i = 0; i < n; i++)
            pv_inval_page(VA(i));
    else
        pv_flush_tlb(VMI_FLUSH_TLB);
}

static void new_pt(struct aspace *as, u32 k)
{
    u32 pt = alloc_page();
    pv_allocate_page(pt >> PAGE_SHIFT, VMI_PAGE_L1, 0, 0, 0);
    pv_set_pxe(pt | _PAGE_PRESENT | _PAGE_RW, pte_va(as->pd, WL_PDE0 + k), VMI_PAGE_PD);
    as->pt[k] = pt;
}

static void free_pt(struct aspace *as, u32 k)
{
    pv_set_pxe(0, pte_va(as->pd, WL_PDE0 + k), VMI_PAGE_PD);
    pv_release_page(as->pt[k] >> PAGE_SHIFT, VMI_PAGE_L1);
    free_page(as->pt[k]);
    as->pt[k] = 0;
}

static void setup(void)
{
    as_a.pd = (u32)swapper_pg_dir;
    /* pgd_alloc: copy the kernel's directory (here all of it: our kernel runs in the identity
     * map too), then tell the ROM it is a clone. */
    as_b.pd = alloc_page();
    memcpy((void *)__va(as_b.pd), (const void *)__va(as_a.pd), PAGE_SIZE);
    pv_allocate_page(as_b.pd >> PAGE_SHIFT, VMI_PAGE_L2 | VMI_PAGE_CLONE,
                     as_a.pd >> PAGE_SHIFT, 0, 1024);
    for (u32 k = 0; k < 2; k++) {
        new_pt(&as_a, k);
        new_pt(&as_b, k);
    }
}

static void teardown(void)
{
    for (u32 k = 0; k < 2; k++) {
        free_pt(&as_a, k);
        free_pt(&as_b, k);
    }
    pv_flush_tlb(VMI_FLUSH_TLB);
    pv_release_page(as_b.pd >> PAGE_SHIFT, VMI_PAGE_L2);
    free_page(as_b.pd);
}

static void expect_pte(const struct aspace *as, u32 i, u32 want, u32 n, const char *phase)
{
    u32 got = pte_read(as, i);
    CHECK(got == want, EXIT_PTE_VALUE, "%s n=%u: pte[%u] of %s = 0x%x, want 0x%x", phase, n, i,
          as->name, got, want);
}

static void expect_word(u32 va, u32 off, u32 want, u32 n, u32 code, const char *phase)
{
    u32 got = *word(va, off);
    CHECK(got == want, code, "%s n=%u: [0x%x] = 0x%x, want 0x%x", phase, n, va + off, got, want);
}

static void one_size(u32 n)
{
    /* map: fresh entries need no TLB flush */
    pv_set_lazy_mode(VMI_LAZY_MMU_UPDATES);
    for (u32 i = 0; i < n; i++) {
        u32 pte = frames_f[i] | _PAGE_PRESENT | _PAGE_RW;
        if (i == 0 && !log_quiet)
            kprintf("setpxe pte=0x%x ptep=0x%x flags=0x%x\n", pte, ptep(&as_a, i),
                    flags_defer(i));
        pv_set_pxe(pte, ptep(&as_a, i), flags_defer(i));
    }
    pv_set_lazy_mode(VMI_LAZY_MODE_OFF);
    for (u32 i = 0; i < n; i++) {
        expect_pte(&as_a, i, frames_f[i] | _PAGE_PRESENT | _PAGE_RW, n, "map");
        *word(VA(i), 0) = pat_f(n, i);
        *word(VA(i), PAGE_SIZE - 4) = ~pat_f(n, i);
        expect_word(__va(frames_f[i]), 0, pat_f(n, i), n, EXIT_PTE_MAP, "map");
        expect_word(__va(frames_f[i]), PAGE_SIZE - 4, ~pat_f(n, i), n, EXIT_PTE_MAP, "map");
        *word(__va(frames_g[i]), 0) = pat_g(n, i);
    }

    /* remap to G, with one invalidation inside the region */
    pv_set_lazy_mode(VMI_LAZY_MMU_UPDATES);
    for (u32 i = 0; i < n; i++) {
        pv_set_pxe(frames_g[i] | _PAGE_PRESENT | _PAGE_RW, ptep(&as_a, i), flags_defer(i));
        if (i == n / 2) {
            if (n & 1)
                pv_inval_page(VA(0));
            else
                pv_flush_tlb(VMI_FLUSH_TLB);
        }
    }
    pv_set_lazy_mode(VMI_LAZY_MODE_OFF);
    flush_range(n);
    for (u32 i = 0; i < n; i++)
        expect_word(VA(i), 0, pat_g(n, i), n, EXIT_PTE_MAP, "remap");

    /* protect: clear RW; every third entry written directly and announced with UpdatePxE */
    pv_set_lazy_mode(VMI_LAZY_MMU_UPDATES);
    for (u32 i = 0; i < n; i++) {
        u32 pte = frames_g[i] | _PAGE_PRESENT;
        if (i % 3 == 2) {
            *(volatile u32 *)ptep(&as_a, i) = pte;
            pv_update_pxe(ptep(&as_a, i), flags_defer(i));
        } else {
            pv_set_pxe(pte, ptep(&as_a, i), flags_defer(i));
        }
    }
    pv_set_lazy_mode(VMI_LAZY_MODE_OFF);
    flush_range(n);
    for (u32 i = 0; i < n; i++) {
        expect_pte(&as_a, i, frames_g[i] | _PAGE_PRESENT, n, "protect");
        expect_word(VA(i), 0, pat_g(n, i), n, EXIT_PTE_MAP, "protect");
    }

    /* switch: B is not the current address space, so its updates are not deferred (Linux only
     * defers current-AS updates) and the first one flushes what A queued (Ordering). */
    u32 second = n > 1 ? 1 : 0;
    pv_set_lazy_mode(VMI_LAZY_MMU_UPDATES);
    pv_set_pxe(frames_f[0] | _PAGE_PRESENT | _PAGE_RW, ptep(&as_a, 0), flags_defer(0));
    for (u32 i = 0; i < n; i++)
        pv_set_pxe(frames_f[n - 1 - i] | _PAGE_PRESENT | _PAGE_RW, ptep(&as_b, i), VMI_PAGE_PT);
    pv_set_pxe(frames_f[second] | _PAGE_PRESENT | _PAGE_RW, ptep(&as_a, second),
               flags_defer(second));
    set_cr3(&as_b);     /* flushes the queued A update (SetCR3), then switches */
    pv_set_lazy_mode(VMI_LAZY_MODE_OFF);
    for (u32 i = 0; i < n; i++)
        CHECK(*word(VA(i), 0) == pat_f(n, n - 1 - i), EXIT_AS_SWITCH,
              "switch n=%u: B sees 0x%x at VA[%u], want 0x%x", n, *word(VA(i), 0), i,
              pat_f(n, n - 1 - i));
    set_cr3(&as_a);
    CHECK(*word(VA(0), 0) == pat_f(n, 0) && *word(VA(second), 0) == pat_f(n, second),
          EXIT_AS_SWITCH, "switch n=%u: A does not see F[0]/F[%u]", n, second);
    for (u32 i = 0; i < n; i++)
        pv_set_pxe(0, ptep(&as_b, i), VMI_PAGE_PT);
    for (u32 i = 0; i < n; i++)
        expect_pte(&as_b, i, 0, n, "switch");

    /* unmap: the last entry undeferred, like a pte_clear outside the gather */
    pv_set_lazy_mode(VMI_LAZY_MMU_UPDATES);
    for (u32 i = 0; i < n; i++) {
        u32 f = flags_defer(i);
        if (i == n - 1 && n > 1)
            f &= ~VMI_PAGE_DEFER;
        pv_set_pxe(0, ptep(&as_a, i), f);
    }
    pv_set_lazy_mode(VMI_LAZY_MODE_OFF);
    flush_range(n);
    for (u32 i = 0; i < n; i++)
        expect_pte(&as_a, i, 0, n, "unmap");
}

void pt_workload(u32 iteration)
{
    if (iteration == 0) {
        for (u32 i = 0; i < WL_PAGES; i++) {
            frames_f[i] = alloc_page();
            frames_g[i] = alloc_page();
        }
    }
    log_quiet = iteration != 0;
    setup();
    for (u32 k = 0; k < ARRAY_SIZE(sizes); k++) {
        u32 d0 = bm.deferred, f0 = bm.flushes;
        one_size(sizes[k]);
        if (!log_quiet)
            kprintf("pt n=%u ok deferred=%u flushes=%u\n", sizes[k], bm.deferred - d0,
                    bm.flushes - f0);
    }
    teardown();
}

void pt_workload_summary(void)
{
    kprintf("pt flushes by trigger: lazy=%u flushtlb=%u invalpage=%u setcr3=%u full=%u "
            "ordering=%u\n", bm.by_trigger[FLUSH_TRIGGER_SetLazyMode],
            bm.by_trigger[FLUSH_TRIGGER_FlushTLB], bm.by_trigger[FLUSH_TRIGGER_InvalPage],
            bm.by_trigger[FLUSH_TRIGGER_SetCR3], bm.by_trigger[FLUSH_TRIGGER_QueueFull],
            bm.by_trigger[FLUSH_TRIGGER_Ordering]);
}
