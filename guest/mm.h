/* Paging and the page pool of the demo guest (mm.c), and the page-table workload (ptwork.c). */
#ifndef GUEST_MM_H
#define GUEST_MM_H

#include "kernel.h"

extern u32 swapper_pg_dir[1024];    /* the kernel page directory (address space A) */

void paging_init(u32 mem_upper_kib);
void mm_activate(void);
u32 alloc_page(void);               /* physical address of a zeroed page */
u32 alloc_pages_contig(u32 n);
void free_page(u32 phys);
u32 pool_free_pages(void);

/* The linear address of a page-table entry through the lowmem map, as Linux passes ptep. */
static inline u32 pte_va(u32 table_phys, u32 index) { return __va(table_phys + 4 * index); }

void pt_workload(u32 iteration);
void pt_workload_summary(void);
extern u32 log_quiet;               /* nonzero: skip the per-call log lines (stress > 1) */

#endif
