/*
 * The structures vmigdb's C hooks share with Python (stub/uc_ctypes.py mirrors them with ctypes).
 * Function pointers into libunicorn are passed in, so the library has no link dependency.
 */
#ifndef VMIGDB_HOOKS_H
#define VMIGDB_HOOKS_H

#include <stddef.h>
#include <stdint.h>

/* Run control (runctl.c): a stop at the next translation-block boundary, where the PC is exact. */
struct vmigdb_runctl {
    volatile int32_t stop;          /* set by the controlling thread or a C hook, cleared here */
    int32_t stopped;                /* how many stops this hook made */
    int (*emu_stop)(void *uc);      /* libunicorn's uc_emu_stop */
    volatile int32_t service;       /* a C hook wants Python to run between two emulations */
    int32_t muted;                  /* C code hooks record nothing (an instruction re-executed) */
    int32_t stepping;               /* a single step: C hooks ask for service but no stop */
};

#define TRACE_REGS 8                /* eax ecx edx ebx esp ebp esi edi, in reg_ids order */
#define TRACE_STACK_WORDS 6         /* the return address, then five stack arguments */
#define TRACE_MEM_OK 1u             /* record.flags: mem holds mem_size bytes read at the call */
#define TRACE_STACK_OK 2u           /* record.flags: stack was readable */
#define TRACE_KNOWN_SLOTS 1024      /* open-addressing set of hooked return addresses */

#define TRACE_RETURN 0xFFFFFFFFu     /* record.call of a hit on a return address */

/* vmigdb/rawtrace.py's RECORD reads these: keep the two in step. */
struct vmigdb_trace_record {
    uint32_t call;                  /* the VMI call number of the entry, or TRACE_RETURN */
    uint32_t addr;                  /* the hooked address: the entry, or the return address */
    uint32_t flags;
    uint32_t regs[TRACE_REGS];
    uint32_t stack[TRACE_STACK_WORDS];
    uint32_t mem[2];                /* the old PTE of a PTE write, read through the CPU's TLB */
};

struct vmigdb_trace {
    struct vmigdb_runctl *rc;
    struct vmigdb_trace_record *records;
    uint32_t capacity;              /* records */
    uint32_t high_water;            /* at this count, ask for a drain */
    uint32_t count;                 /* records written since the last drain */
    uint32_t lost;                  /* hits not recorded: the buffer was full */
    int reg_ids[TRACE_REGS];
    int (*reg_read_batch)(void *uc, int *regs, void **vals, int count);
    int (*vmem_read)(void *uc, uint64_t address, int prot, void *bytes, size_t size);
    uint32_t known[TRACE_KNOWN_SLOTS];  /* return addresses already hooked (0: empty slot) */
};

/* One hook's user data: which trace, what to call the hit, what memory to capture. */
struct vmigdb_trace_site {
    struct vmigdb_trace *trace;
    uint32_t call;                  /* copied into each record */
    uint32_t addr;
    int32_t mem_reg;                /* index in regs of the address to read, or -1 */
    uint32_t mem_size;              /* 4 or 8 */
    uint32_t wants_return;          /* the call has results: its return address must be hooked */
};

#endif
