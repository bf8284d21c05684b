/*
 * Paging for the demo guest: 2-level, non-PAE, 4 KiB pages. One set of page tables maps the
 * first MAPPED_MEMORY bytes twice, at 0 (identity: the kernel runs there) and at PAGE_OFFSET
 * (the lowmem linear map, where Linux reaches the ROM and its page tables), the way early i386
 * Linux shared pg0 between both halves of swapper_pg_dir. Page 0 stays unmapped to catch NULL.
 *
 * Pages for page tables, the second address space, the ROM copy and the workload's data frames
 * come from a pool above the kernel image: a bump allocator plus a free list.
 */
#include "mm.h"
#include "paravirt.h"

#define KERNEL_PTS (MAPPED_MEMORY / (1024 * PAGE_SIZE))

u32 swapper_pg_dir[1024] __attribute__((aligned(PAGE_SIZE)));
static u32 kernel_pt[KERNEL_PTS][1024] __attribute__((aligned(PAGE_SIZE)));

extern u8 _end[];
static u32 pool_next, pool_end, free_list, free_count;

void paging_init(u32 mem_upper_kib)
{
    u32 ram_end = (1u << 20) + mem_upper_kib * 1024;
    CHECK(ram_end >= MAPPED_MEMORY, EXIT_NO_MEMORY, "need %u MiB of RAM, have %u KiB",
          MAPPED_MEMORY >> 20, ram_end >> 10);
    pool_next = ((u32)_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    pool_end = MAPPED_MEMORY;

    for (u32 t = 0; t < KERNEL_PTS; t++) {
        for (u32 i = 0; i < 1024; i++) {
            u32 phys = (t * 1024 + i) * PAGE_SIZE;
            kernel_pt[t][i] = phys ? phys | _PAGE_PRESENT | _PAGE_RW : 0;
        }
        u32 pde = (u32)kernel_pt[t] | _PAGE_PRESENT | _PAGE_RW;
        swapper_pg_dir[t] = pde;
        swapper_pg_dir[(PAGE_OFFSET >> 22) + t] = pde;
    }
    /* Native: the ROM is found only once paging is on. CR0.PG | CR0.WP. */
    asm volatile("mov %0, %%cr3\n\t"
                 "mov %%cr0, %%eax\n\t"
                 "or $0x80010000, %%eax\n\t"
                 "mov %%eax, %%cr0\n\t"
                 "jmp 1f\n1:"
                 : : "r"(swapper_pg_dir) : "eax", "memory");
    kprintf("paging: on, cr3=0x%x, identity + 0x%x map %u MiB, pool 0x%x..0x%x\n",
            (u32)swapper_pg_dir, PAGE_OFFSET, MAPPED_MEMORY >> 20, pool_next, pool_end);
}

/* After VMI is up: tell the ROM where lowmem lives, like vmi_bringup(). */
void mm_activate(void)
{
    pv_set_linear_mapping(0, PAGE_OFFSET, MAPPED_MEMORY >> PAGE_SHIFT, 0);
    kprintf("mm: SetLinearMapping(0, 0x%x, %u pages, pfn 0)\n", PAGE_OFFSET,
            MAPPED_MEMORY >> PAGE_SHIFT);
}

u32 alloc_pages_contig(u32 n)
{
    CHECK(pool_next + n * PAGE_SIZE <= pool_end, EXIT_POOL_EMPTY, "page pool exhausted");
    u32 p = pool_next;
    pool_next += n * PAGE_SIZE;
    memset((void *)__va(p), 0, n * PAGE_SIZE);
    return p;
}

u32 alloc_page(void)
{
    if (free_list) {
        u32 p = free_list;
        free_list = *(u32 *)__va(p);
        free_count--;
        memset((void *)__va(p), 0, PAGE_SIZE);
        return p;
    }
    return alloc_pages_contig(1);
}

void free_page(u32 phys)
{
    *(u32 *)__va(phys) = free_list;
    free_list = phys;
    free_count++;
}

u32 pool_free_pages(void)
{
    return (pool_end - pool_next) / PAGE_SIZE + free_count;
}
