/*
 * Address translation for Unicorn's softmmu: the guest's page walk as a UC_HOOK_TLB_FILL hook
 * (Unicorn's virtual TLB mode), so that data pages get TLB entries without execute rights.
 *
 * Why: Unicorn 2.1.4 keeps every x86 TLB entry that may execute "not dirty" for ever (its
 * notdirty_write only marks a page dirty when the entry has no code address), and without NX
 * every page the CPU's own walk maps is executable. So every guest store took the slow path
 * (a memory-region lookup, a TB-invalidation check, another lookup): 92.7 million stores in a
 * Linux boot, about half of its time. Here a data access gets read/write rights only, and a
 * page's first store marks the entry dirty: later stores take TCG's inline fast path.
 *
 * Self-modifying code stays exact: a page that code was ever fetched from is a code page (a
 * bit in vm.code_pages, set by the fetch that fills its first code entry); data entries for a
 * code page keep execute rights, so stores to it keep the slow path that invalidates
 * translated blocks. When a page becomes a code page the whole TLB is flushed, so no fast data
 * entry for it survives.
 *
 * The walk is QEMU's (target/i386/excp_helper.c, handle_mmu_fault): 32-bit and PAE paging,
 * 4 MiB (PSE) and 2 MiB pages, CR0.WP, user/supervisor, NX under EFER.NXE, accessed and dirty
 * bits (a read of a clean page maps it read-only so that the first write walks again and sets
 * D), reserved bits (qemu32: 36 physical address bits, no NX). A fault is the CPU's own business: the hook returns
 * false, Unicorn stops at the faulting instruction (UC_ERR_EXCEPTION, but the hook only sees
 * the page, not the address, so it cannot set CR2), and the instruction runs again under
 * Unicorn's own page walk (vm_retry_fault), which raises the #PF with QEMU's CR2 and error
 * code; the block after it switches back to this walk. So a fault this walk sees where
 * Unicorn's sees none costs time only; the reverse would lose a fault, so where in doubt (a
 * reserved bit, SMEP or SMAP on) this walk reports one.
 *
 * The hook is not told the access's MMU index, only the CPL (CS.RPL). At CPL 3 the CPU still
 * makes supervisor accesses of its own (descriptor tables, the TSS); an access at CPL 3 to a
 * supervisor page inside the GDT, LDT, IDT or TSS is taken to be one of those. In
 * virtual-8086 mode (EFLAGS.VM) the CPL is 3 whatever CS holds.
 */
#include "vm.h"

#define UC_MEM_READ 16
#define UC_MEM_WRITE 17
#define UC_MEM_FETCH 18
#define UC_PROT_READ 1
#define UC_PROT_WRITE 2
#define UC_PROT_EXEC 4
#define UC_CTL_TLB_FLUSH_W (11u | (1u << 30))  /* UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0) */

#define CR0_WP 0x10000u
#define CR0_PG 0x80000000u
#define CR4_PSE 0x10u
#define CR4_PAE 0x20u
#define CR4_SMEP 0x100000u
#define CR4_SMAP 0x200000u
#define EFER_NXE 0x800u
#define PG_P 1u
#define PG_RW 2u
#define PG_US 4u
#define PG_A 0x20u
#define PG_D 0x40u
#define PG_PS 0x80u
#define PG_NX (1ull << 63)
#define PG_ADDRESS 0x000FFFFFFFFFF000ull
#define PG_RSVD_PHYS 0x000FFFF000000000ull  /* address bits above qemu32's 36 */
#define PG_HI_USER 0x7FF0000000000000ull    /* reserved in legacy PAE entries */
#define PG_PSE_PAT 0x1000ull
#define UC_CTL_TLB_TYPE_W (12u | (1u << 26) | (1u << 30))  /* UC_CTL_WRITE(UC_CTL_TLB_TYPE, 1) */
#define UC_TLB_CPU 0
#define UC_TLB_VIRTUAL 1

struct uc_tlb_entry {               /* libunicorn's uc_tlb_entry */
    uint64_t paddr;
    uint32_t perms;
};

static uint64_t reg(struct vm *m, void *uc, int id)
{
    uint64_t v = 0;
    m->uc_reg_read(uc, id, &v);
    return v;
}

static uint64_t load(struct vm *m, void *uc, uint64_t pa, int wide)
{
    uint64_t v = 0;
    if (pa + (wide ? 8 : 4) <= m->ram_size)
        m->uc_mem_read(uc, pa, &v, wide ? 8 : 4);
    return v;
}

static void store(struct vm *m, void *uc, uint64_t pa, uint64_t v, int wide)
{
    if (pa >= m->rom_base && pa < m->rom_end)
        return;  /* a page table in the ROM: its A/D bits are dropped, as QEMU drops them */
    if (pa + (wide ? 8 : 4) <= m->ram_size)
        m->uc_mem_write(uc, pa, &v, wide ? 8 : 4);
}

/* Whether a CPL-3 access to a supervisor page is the CPU's own: in a descriptor table. */
static int system_table(struct vm *m, void *uc, uint64_t va)
{
    int regs[] = {m->reg_gdtr, m->reg_idtr, m->reg_ldtr, m->reg_tr};
    for (unsigned i = 0; i < sizeof regs / sizeof regs[0]; i++) {
        struct mmr t = {0};
        if (m->uc_reg_read(uc, regs[i], &t) != 0)
            continue;
        uint64_t base = (uint32_t)t.base, end = base + t.limit;
        if (va + 0x1000 > (base & ~0xFFFull) && va <= end)
            return 1;
    }
    return 0;
}

static void mark_code_page(struct vm *m, void *uc, uint64_t pa)
{
    uint64_t page = pa >> 12;
    if (page >= m->code_pages_count)
        return;
    uint8_t bit = (uint8_t)(1u << (page & 7));
    if (m->code_pages[page >> 3] & bit)
        return;
    m->code_pages[page >> 3] |= bit;
    m->code_page_flushes++;
    m->uc_ctl(uc, UC_CTL_TLB_FLUSH_W);  /* no fast data entry for this page may survive */
}

/* Where a ROM or code page is: its stores keep the slow path (ROM writes are dropped there). */
static int is_code_page(struct vm *m, uint64_t pa)
{
    uint64_t page = pa >> 12;
    if (pa >= m->rom_base && pa < m->rom_end)
        return 1;
    return page >= m->code_pages_count || (m->code_pages[page >> 3] >> (page & 7)) & 1;
}

/*
 * The guest's page walk for an access of ``type`` (UC_MEM_*) from user or supervisor rights:
 * 1 with the page's physical address, its rights (before any execute right) and whether it
 * is a user page; 0 for a fault.
 * ``update`` sets the accessed and dirty bits, as the CPU does.
 */
static int walk(struct vm *m, void *uc, uint64_t va, int type, int is_user, int update,
                uint64_t *pa_out, uint32_t *prot_out, int *user_page)
{
    int is_write = type == UC_MEM_WRITE, is_fetch = type == UC_MEM_FETCH;
    uint32_t cr0 = (uint32_t)reg(m, uc, m->reg_cr0);
    va &= 0xFFFFFFFFull;
    if (!(cr0 & CR0_PG)) {
        *pa_out = va & ~0xFFFull;
        *prot_out = UC_PROT_READ | UC_PROT_WRITE;
        *user_page = 1;
        return 1;
    }
    uint32_t cr3 = (uint32_t)reg(m, uc, m->reg_cr3), cr4 = (uint32_t)reg(m, uc, m->reg_cr4);
    int pae = (cr4 & CR4_PAE) != 0, nxe = 0;
    uint64_t ptep, pte, pte_addr, page_size;
    if (pae) {
        struct msr efer = {0xC0000080u, 0};
        m->uc_reg_read(uc, m->reg_msr, &efer);
        nxe = (efer.value & EFER_NXE) != 0;
        uint64_t rsvd = PG_RSVD_PHYS | PG_HI_USER | (nxe ? 0 : PG_NX);
        uint64_t pdpe = load(m, uc, (cr3 & ~0x1Fu) + ((va >> 27) & 0x18), 1);
        if (!(pdpe & PG_P) || (pdpe & (rsvd | PG_NX)))
            return 0;
        uint64_t pde_addr = (pdpe & PG_ADDRESS) + (((va >> 21) & 0x1FF) << 3);
        uint64_t pde = load(m, uc, pde_addr, 1);
        if (!(pde & PG_P) || (pde & rsvd))
            return 0;
        ptep = (PG_NX | PG_US | PG_RW) & (pde ^ PG_NX);
        if (pde & PG_PS) {
            if (pde & (0x1FF000ull & ~PG_PSE_PAT))
                return 0;
            page_size = 0x200000;
            pte_addr = pde_addr;
            pte = pde;
        } else {
            if (update && !(pde & PG_A))
                store(m, uc, pde_addr, pde | PG_A, 1);
            pte_addr = (pde & PG_ADDRESS) + (((va >> 12) & 0x1FF) << 3);
            pte = load(m, uc, pte_addr, 1);
            if (!(pte & PG_P) || (pte & rsvd))
                return 0;
            ptep &= pte ^ PG_NX;
            page_size = 0x1000;
        }
        ptep ^= PG_NX;
        if (!nxe)
            ptep &= ~PG_NX;
    } else {
        uint64_t pde_addr = (cr3 & ~0xFFFu) + ((va >> 20) & 0xFFC);
        uint64_t pde = load(m, uc, pde_addr, 0);
        if (!(pde & PG_P))
            return 0;
        if ((pde & PG_PS) && (cr4 & CR4_PSE)) {
            if (pde & 0x3E0000u)  /* bit 21, and PSE-36 bits beyond 36 address bits */
                return 0;
            page_size = 0x400000;
            pte_addr = pde_addr;
            pte = pde | ((pde & 0x1FE000ull) << (32 - 13));  /* PSE-36 */
            ptep = pde;
        } else {
            if (update && !(pde & PG_A))
                store(m, uc, pde_addr, pde | PG_A, 0);
            pte_addr = (pde & ~0xFFFull) + ((va >> 10) & 0xFFC);
            pte = load(m, uc, pte_addr, 0);
            if (!(pte & PG_P))
                return 0;
            ptep = pde & pte;
            page_size = 0x1000;
        }
    }
    if (is_user && !(ptep & PG_US)) {
        if (!system_table(m, uc, va))
            return 0;
        is_user = 0;  /* the CPU's own access to a descriptor table */
    }
    uint32_t prot = UC_PROT_READ;
    if ((ptep & PG_RW) || (!is_user && !(cr0 & CR0_WP)))
        prot |= UC_PROT_WRITE;
    if (is_write && !(prot & UC_PROT_WRITE))
        return 0;
    if (is_fetch && (ptep & PG_NX))
        return 0;
    if (update) {
        int dirty = is_write && !(pte & PG_D);
        if (!(pte & PG_A) || dirty) {
            pte |= PG_A | (dirty ? PG_D : 0);
            store(m, uc, pte_addr, pae ? pte : (uint32_t)pte, pae);
        }
        if (!(pte & PG_D))
            prot &= ~UC_PROT_WRITE;  /* the first write walks again and sets D */
    }
    *pa_out = (pte & PG_ADDRESS & ~(page_size - 1)) | (va & (page_size - 1) & ~0xFFFull);
    *prot_out = prot;
    *user_page = (ptep & PG_US) != 0;
    return 1;
}

int vm_tlb_fill(void *uc, uint64_t va, int type, struct uc_tlb_entry *result, void *user_data)
{
    struct vm *m = user_data;
    uint64_t pa;
    uint32_t prot;
    int user_page;
    m->tlb_fills++;
    int is_user = (reg(m, uc, m->reg_cs) & 3) == 3
        || (reg(m, uc, m->reg_eflags) & EFLAGS_VM) != 0;  /* virtual-8086 runs at CPL 3 */
    uint32_t cr4 = (uint32_t)reg(m, uc, m->reg_cr4);
    if (!walk(m, uc, va, type, is_user, 1, &pa, &prot, &user_page)
        || ((cr4 & (CR4_SMEP | CR4_SMAP)) && !is_user && user_page)) {  /* Unicorn decides */
        m->pf_pending = 1;
        return 0;
    }
    if (type == UC_MEM_FETCH)
        mark_code_page(m, uc, pa);
    if (is_code_page(m, pa))
        prot |= UC_PROT_EXEC;
    result->paddr = pa;
    result->perms = prot;
    return 1;
}

/* Guest-virtual to physical with supervisor rights, as event delivery reads and writes its
 * frames (no accessed or dirty bits set); -1 if not mapped. */
int64_t vm_walk_super(struct vm *m, uint32_t va)
{
    uint64_t pa;
    uint32_t prot;
    int user_page;
    if (!walk(m, m->uc, va, UC_MEM_READ, 0, 0, &pa, &prot, &user_page))
        return -1;
    return (int64_t)(pa | (va & 0xFFFu));
}

/* The fill found a fault: run the faulting instruction again under Unicorn's own page walk,
 * which raises #PF exactly; the block hook switches back two block starts later (the first is
 * the retried instruction's own block). */
void vm_retry_fault(struct vm *m)
{
    m->pf_pending = 0;
    m->uc_ctl(m->uc, UC_CTL_TLB_TYPE_W, UC_TLB_CPU);
    m->tlb_restore = 2;
    vm_update_deadline(m);
}

/* The block hook's half of vm_retry_fault. */
void vm_tlb_restore_step(struct vm *m)
{
    if (m->tlb_restore && --m->tlb_restore == 0)
        m->uc_ctl(m->uc, UC_CTL_TLB_TYPE_W, UC_TLB_VIRTUAL);
}
