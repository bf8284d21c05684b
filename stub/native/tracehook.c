/*
 * The recording half of vmigdb's in-stub VMI tracer (stub/vmitrace.py is the other half):
 * per-address Unicorn code hooks on the ROM's entry points and on the return addresses of calls
 * with results. A hit appends one fixed-size raw record: the general registers, 24 bytes of
 * stack, for a PTE write the old PTE read through the CPU's TLB at that moment (the ROM
 * overwrites it right after), the guest's current task and the machine's clock. Readers decode
 * the records later, in bulk (vmigdb/rawtrace.py), by the rules of vmigdb.recorder that the
 * portable gdb path uses. A Python callback per hit cost ~25 us.
 *
 * The hook never stops the CPU itself: a stop inside a code hook lands before the instruction,
 * and resuming there would record the hit twice. It asks run control (runctl.c) for a stop at
 * the next block boundary instead, when the buffer is nearly full, when a call will return to
 * an address no hook watches yet, or (when Python names tasks) when the current task changed.
 */
#include "vm.h"


/* The slot holding addr, or the empty one where it would go; NULL when the set is full. */
static uint32_t *known_slot(struct vmigdb_trace *t, uint32_t addr)
{
    uint32_t i = (addr * 2654435761u) % TRACE_KNOWN_SLOTS;
    for (uint32_t n = 0; n < TRACE_KNOWN_SLOTS; n++, i = (i + 1) % TRACE_KNOWN_SLOTS)
        if (t->known[i] == addr || t->known[i] == 0)
            return &t->known[i];
    return NULL;
}

static int known(struct vmigdb_trace *t, uint32_t addr)
{
    uint32_t *slot = known_slot(t, addr);
    return slot != NULL && *slot == addr;
}

/* Python: a return address is hooked now (0 on success, -1 when the set is full). */
int vmigdb_trace_known_add(struct vmigdb_trace *t, uint32_t addr)
{
    uint32_t *slot = known_slot(t, addr);
    if (slot == NULL)
        return -1;
    *slot = addr;
    return 0;
}

/* The guest's current task, read as the kernel reads it (0 when unknown or unmapped). */
static uint32_t current_task(struct vmigdb_trace *t)
{
    uint32_t offset = 0, task = 0;
    if (t->task_var == 0)
        return 0;
    if (t->cpu_offset != 0) {
        offset = t->cpu_offset;
    } else if (t->task_offset != 0) {
        if (vm_read_cpu(t->vm, t->task_offset, &offset, 4) != 0)
            return 0;
        t->cpu_offset = offset;  /* kept once set: setup_per_cpu_areas sets it for good */
    }
    if (vm_read_cpu(t->vm, (uint32_t)(t->task_var + offset), &task, 4) != 0)
        return 0;
    return task;
}

static void request_service(struct vmigdb_trace *t)
{
    t->rc->service = 1;
    if (!t->rc->stepping)       /* a step ends after its instruction anyway */
        t->rc->stop = 1;
}

void vmigdb_trace_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vmigdb_trace_site *site = user_data;
    struct vmigdb_trace *t = site->trace;
    (void)address;
    (void)size;
    if (t->rc->muted || t->limit_hit)
        return;
    if (site->call != TRACE_RETURN) {
        if (t->call_limit != 0 && t->calls >= t->call_limit) {
            t->limit_hit = 1;       /* Python stops the run at the service */
            request_service(t);
            return;
        }
        t->calls++;
    }
    if (t->count >= t->capacity) {
        t->lost++;
        request_service(t);
        return;
    }
    struct vmigdb_trace_record *r = &t->records[t->count];
    uint64_t regs[TRACE_REGS] = {0};
    void *ptrs[TRACE_REGS];
    for (int i = 0; i < TRACE_REGS; i++)
        ptrs[i] = &regs[i];
    t->reg_read_batch(uc, t->reg_ids, ptrs, TRACE_REGS);
    for (int i = 0; i < TRACE_REGS; i++)
        r->regs[i] = (uint32_t)regs[i];
    r->call = site->call;
    r->addr = site->addr;
    r->flags = 0;
    if (vm_read_cpu(t->vm, r->regs[4], r->stack, sizeof r->stack) == 0)
        r->flags |= TRACE_STACK_OK;
    else
        for (int i = 0; i < TRACE_STACK_WORDS; i++)
            r->stack[i] = 0;
    r->mem[0] = r->mem[1] = 0;
    if (site->mem_reg >= 0 && site->mem_size <= sizeof r->mem
        && vm_read_cpu(t->vm, r->regs[site->mem_reg], r->mem, site->mem_size) == 0)
        r->flags |= TRACE_MEM_OK;
    r->task = current_task(t);
    r->ticks = t->vm->now;
    t->count++;
    int switched = r->task != t->last_task;
    t->last_task = r->task;
    if (site->wants_return && (r->flags & TRACE_STACK_OK) && !known(t, r->stack[0])) {
        t->new_return = 1;
        request_service(t);
    } else if (t->count >= t->high_water || (switched && t->drain_on_switch)) {
        /* A task's name is read at the drain after its run began, while it is that task
         * (the kernel reuses a dead task's struct for a later one) */
        request_service(t);
    }
}
