/*
 * The machine's hot paths, as Unicorn callbacks: the block hook (the virtual clock, device
 * timers, stop requests, interrupt delivery points), the IN/OUT hooks (the port bus), RDTSC
 * (the clock, not the host's) and CPUID (the CPU model minus what the machine lacks).
 *
 * The block hook runs before each translation block with the guest PC synced to the block's
 * start, so a stop from here is exact (a cross-thread uc_emu_stop can leave the PC stale in
 * Unicorn 2.1.4 when the stop lands between chained blocks). Its common path is one compare and
 * a cache lookup; everything else (timers, Ctrl-C, a deliverable interrupt) waits behind the
 * deadline test. Instruction counts come from Unicorn's own translation block (its icount),
 * cached by (pc, size).
 */
#include "vm.h"

#define UC_CTL_TB_REQUEST_CACHE_RW (8 | (2u << 26) | (3u << 30)) /* UC_CTL_READ_WRITE(.., 2) */

struct uc_tb {                      /* libunicorn's uc_tb */
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
};

void vm_init(struct vm *m, void *uc, void *emu_stop, void *ctl, void *reg_read, void *reg_write,
             void *vmem_read)
{
    m->uc = uc;
    m->rc.emu_stop = (int (*)(void *))emu_stop;
    m->uc_ctl = (int (*)(void *, int, ...))ctl;
    m->uc_reg_read = (int (*)(void *, int, void *))reg_read;
    m->uc_reg_write = (int (*)(void *, int, const void *))reg_write;
    m->uc_vmem_read = (int (*)(void *, uint64_t, int, void *, size_t))vmem_read;
    m->deadline = VM_NEVER;
    m->alarm = VM_NEVER;
    m->irq_delivery = 1;
    for (int i = 0; i < VM_PCI_FUNCTIONS; i++)
        m->pci.fn[i].devfn = 0xFF;
}

void vm_reset_devices(struct vm *m)
{
    m->requests = 0;
    m->exit_code = 0;
    m->serial_len = 0;
    m->stop_reason = VM_STOP_NONE;
    vm_pic_reset(m);
    vm_pit_reset(m);
    vm_uart_reset(m);
    vm_kbc_reset(m);
    vm_pci_reset(m);
    vm_ide_reset(m);
    vm_misc_reset(m);
    vm_update_deadline(m);
}

uint64_t vm_now_ns(struct vm *m)
{
    return m->now * VM_NS_PER_TICK;
}

void vm_request(struct vm *m, uint32_t what)
{
    m->requests |= what;
    m->deadline = 0;  /* the next block boundary stops for Python */
}

uint64_t vm_next_event(struct vm *m)
{
    uint64_t next = vm_pit_next_event(m), t = vm_rtc_next_event(m);
    if (t < next)
        next = t;
    if (m->com1.timeout_at < next)
        next = m->com1.timeout_at;
    if (m->alarm < next)
        next = m->alarm;
    return next;
}

void vm_update_deadline(struct vm *m)
{
    m->deadline = (m->requests || m->tlb_restore) ? 0 : vm_next_event(m);
}

void vm_run_timers(struct vm *m)
{
    uint64_t now = m->now;
    vm_pit_run(m, now);
    vm_rtc_run(m, now);
    vm_uart_run(m, now);
    if (m->alarm <= now) {
        m->alarm = VM_NEVER;
        m->requests |= VM_REQ_ALARM;
    }
    vm_update_deadline(m);
}

int vm_interrupt_ack(struct vm *m)
{
    return vm_pic_ack(m);
}

static void stop(struct vm *m, void *uc, int32_t why)
{
    m->stop_reason = why;
    m->rc.emu_stop(uc);
}

static struct vm_tb_entry *tb_slot(struct vm *m, uint32_t pc, uint32_t size)
{
    return &m->tb[(pc ^ (pc >> 11) ^ (size << 5)) & (VM_TB_SLOTS - 1)];
}

/* The clock counts the block about to run. */
static inline void count_block(struct vm *m, uint32_t pc, uint32_t size, uint32_t entry)
{
    uint32_t n = entry & VM_TB_ICOUNT;
    m->block_pc = pc;
    m->block_size = size;
    m->block_icount = n;
    m->block_keeps_if = entry & VM_TB_KEEPS_IF;
    m->ticks += n;
}

/* A block cache miss: ask Unicorn for the block's instruction count (kept off the hot path). */
__attribute__((noinline)) static void count_uncached_block(struct vm *m, void *uc,
                                                           uint32_t pc, uint32_t size)
{
    struct vm_tb_entry *e = tb_slot(m, pc, size);
    struct uc_tb tb = {0};
    uint32_t n = 1;  /* if Unicorn has no such block (it cannot happen for a block being run) */
    m->tb_misses++;
    if (m->uc_ctl(uc, UC_CTL_TB_REQUEST_CACHE_RW, (uint64_t)pc, &tb) == 0 && tb.icount != 0) {
        e->pc = pc;
        e->size = (uint16_t)size;
        e->icount = tb.icount & VM_TB_ICOUNT;  /* whether it keeps IF: not known yet */
        n = e->icount;
    }
    count_block(m, pc, size, n);
}

/* Count a block: the hot path, a leaf with a tail call on a cache miss. */
static inline void count(struct vm *m, void *uc, uint32_t pc, uint32_t size)
{
    struct vm_tb_entry *e = tb_slot(m, pc, size);
    if (__builtin_expect(e->pc == pc && e->size == size, 1))
        count_block(m, pc, size, e->icount);
    else
        count_uncached_block(m, uc, pc, size);
}

/*
 * Whether the block that ran last may have set EFLAGS.IF. Reading EFLAGS costs Unicorn a flags
 * computation (about 25 ns), and a pending interrupt can wait for IF=1 through millions of
 * blocks (the bzImage decompressor runs with IF=0 and the BIOS's timer pending: 33 million
 * blocks, half of a Linux boot's time). STI, POPF and IRET each end their translation block,
 * so only a block whose last byte is 0xFB, 0x9D or 0xCF can have set IF; the answer is kept in
 * the block cache. Everything else that can set IF (the run's start, a register write, an
 * event delivery, the end of an interrupt shadow, a device timer) sets vm.if_stale instead.
 */
static int last_block_may_set_if(struct vm *m, void *uc)
{
    uint32_t pc = m->block_pc, size = m->block_size;
    if (m->block_keeps_if)
        return 0;
    if (size == 0)
        return 1;
    struct vm_tb_entry *e = tb_slot(m, pc, size);
    int cached = e->pc == pc && e->size == size;
    if (cached && (e->icount & VM_TB_IF_CHECKED))
        return !(e->icount & VM_TB_KEEPS_IF);
    uint8_t last = 0;
    int maybe = 1;
    if (m->uc_vmem_read(uc, pc + size - 1, 1 /* UC_PROT_READ */, &last, 1) == 0)
        maybe = last == 0xFB || last == 0x9D || last == 0xCF;
    if (cached)
        e->icount |= VM_TB_IF_CHECKED | (maybe ? 0 : VM_TB_KEEPS_IF);
    return maybe;
}

/* Everything behind the deadline test; 1 when emulation is to stop before this block. */
static int slow_path(struct vm *m, void *uc)
{
    if (m->rc.stop) {
        m->rc.stop = 0;
        m->rc.stopped++;
        stop(m, uc, VM_STOP_REQUEST);
        return 1;
    }
    if (m->ticks >= m->deadline) {
        m->if_stale = 1;  /* a safety net: IF is read at least once per device event */
        vm_tlb_restore_step(m);
        vm_run_timers(m);
        if (m->requests) {
            stop(m, uc, VM_STOP_DEVICE);
            return 1;
        }
    }
    if (m->irq_check && m->irq_delivery && (m->if_stale || last_block_may_set_if(m, uc))) {
        uint32_t eflags = 0;
        m->uc_reg_read(uc, m->reg_eflags, &eflags);
        if (eflags & EFLAGS_IF) {
            stop(m, uc, VM_STOP_IRQ);
            return 1;
        }
        m->if_stale = 0;
    }
    return 0;
}

/* The block hook's rare half: an interrupt shadow, a device event, a stop, a pending IRQ. */
__attribute__((noinline)) static void block_hook_slow(struct vm *m, void *uc, uint32_t pc,
                                                      uint32_t size)
{
    if (m->irq_holdoff) {  /* the one-instruction block in an STI/MOV SS shadow */
        m->irq_holdoff = 0;
        m->if_stale = 1;
    } else if (slow_path(m, uc)) {
        return;
    }
    count(m, uc, pc, size);
}

void vm_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vm *m = user_data;
    m->now = m->ticks;
    /* A pending interrupt needs a look only when IF may have changed (last_block_may_set_if) */
    int irq = m->irq_check && (m->if_stale | (m->block_keeps_if == 0));
    if (__builtin_expect((m->ticks >= m->deadline) | m->rc.stop | irq, 0))
        block_hook_slow(m, uc, (uint32_t)address, size);
    else
        count(m, uc, (uint32_t)address, size);
}

/* A block hook that does nothing: the bench measures what any per-block callback costs. */
void vm_null_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
}

/* --- the port bus ---------------------------------------------------------------------------- */

/* Devices with byte registers: a wider access reaches consecutive ports, as QEMU splits it. */
static int byte_wide(uint8_t owner)
{
    switch (owner) {
    case VM_DEV_PIC: case VM_DEV_PIT: case VM_DEV_SPEAKER: case VM_DEV_COM1: case VM_DEV_RTC:
    case VM_DEV_KBC: case VM_DEV_PORT92: case VM_DEV_ELCR: case VM_DEV_DMA:
        return 1;
    default:
        return 0;
    }
}

static uint32_t read8(struct vm *m, uint8_t owner, uint32_t port)
{
    switch (owner) {
    case VM_DEV_PIC:
        return vm_pic_read(m, port);
    case VM_DEV_ELCR:
        return m->pic.chip[port & 1].elcr;
    case VM_DEV_PIT:
        return vm_pit_read(m, port);
    case VM_DEV_SPEAKER:
        return vm_speaker_read(m);
    case VM_DEV_COM1:
        return vm_uart_read(m, port & 7);
    case VM_DEV_RTC:
        return vm_rtc_read(m, port);
    case VM_DEV_KBC:
        return vm_kbc_read(m, port);
    default:
        return vm_misc_read(m, owner, port, 1);
    }
}

static void write8(struct vm *m, uint8_t owner, uint32_t port, uint32_t value)
{
    switch (owner) {
    case VM_DEV_PIC:
        vm_pic_write(m, port, value);
        break;
    case VM_DEV_ELCR:
        vm_elcr_write(m, port, value);
        break;
    case VM_DEV_PIT:
        vm_pit_write(m, port, value);
        break;
    case VM_DEV_SPEAKER:
        vm_speaker_write(m, value);
        break;
    case VM_DEV_COM1:
        vm_uart_write(m, port & 7, value);
        break;
    case VM_DEV_RTC:
        vm_rtc_write(m, port, value);
        break;
    case VM_DEV_KBC:
        vm_kbc_write(m, port, value);
        break;
    default:
        vm_misc_write(m, owner, port, 1, value);
        break;
    }
}

uint32_t vm_device_in(struct vm *m, uint32_t owner, uint32_t port, int size)
{
    switch (owner) {
    case VM_DEV_NONE:
    case VM_DEV_PYTHON:
        return size == 1 ? 0xFF : size == 2 ? 0xFFFF : 0xFFFFFFFFu;
    case VM_DEV_PCI:
        return vm_pci_read(m, port, size);
    case VM_DEV_DEBUG_EXIT:
    case VM_DEV_DELAY:
        return vm_misc_read(m, owner, port, size);
    case VM_DEV_IDE:
        return vm_ide_read(m, port, size);
    case VM_DEV_BMDMA:
        return vm_bmdma_read(m, port, size);
    default: {  /* byte-wide devices: a wider access reads consecutive ports */
        uint32_t v = read8(m, (uint8_t)owner, port) & 0xFF;
        for (int i = 1; i < size; i++) {
            uint32_t p = (port + i) & 0xFFFF;
            uint8_t o = m->port_owner[p];
            uint32_t b = byte_wide(o) ? read8(m, o, p) & 0xFF : 0xFF;
            v |= b << (8 * i);
        }
        return v;
    }
    }
}

void vm_device_out(struct vm *m, uint32_t owner, uint32_t port, int size, uint32_t value)
{
    switch (owner) {
    case VM_DEV_NONE:
    case VM_DEV_PYTHON:
        return;
    case VM_DEV_PCI:
        vm_pci_write(m, port, size, value);
        return;
    case VM_DEV_DEBUG_EXIT:
    case VM_DEV_DELAY:
        vm_misc_write(m, owner, port, size, value);
        return;
    case VM_DEV_IDE:
        return;  /* an empty bus */
    case VM_DEV_BMDMA:
        vm_bmdma_write(m, port, size, value);
        return;
    default:
        write8(m, (uint8_t)owner, port, value & 0xFF);
        for (int i = 1; i < size; i++) {
            uint32_t p = (port + i) & 0xFFFF;
            uint8_t o = m->port_owner[p];
            if (byte_wide(o))
                write8(m, o, p, (value >> (8 * i)) & 0xFF);
        }
        return;
    }
}

uint32_t vm_port_in(void *uc, uint32_t port, int size, void *user_data)
{
    struct vm *m = user_data;
    (void)uc;
    port &= 0xFFFF;
    m->port_accesses++;
    uint8_t owner = m->port_owner[port];
    if (owner == VM_DEV_PYTHON)
        return m->py_in(port, size);
    return vm_device_in(m, owner, port, size);
}

void vm_port_out(void *uc, uint32_t port, int size, uint32_t value, void *user_data)
{
    struct vm *m = user_data;
    (void)uc;
    port &= 0xFFFF;
    m->port_accesses++;
    uint8_t owner = m->port_owner[port];
    if (owner == VM_DEV_PYTHON)
        m->py_out(port, size, value);
    else
        vm_device_out(m, owner, port, size, value);
}

/* --- instructions whose answers are the machine's ---------------------------------------------- */

int vm_rdtsc_hook(void *uc, void *user_data)
{
    struct vm *m = user_data;
    uint64_t tsc = m->now * VM_NS_PER_TICK;  /* 1 GHz, like QEMU's TSC under -icount */
    uint32_t lo = (uint32_t)tsc, hi = (uint32_t)(tsc >> 32);
    m->uc_reg_write(uc, m->reg_eax, &lo);
    m->uc_reg_write(uc, m->reg_edx, &hi);
    return 1;
}

int vm_cpuid_hook(void *uc, void *user_data)
{
    struct vm *m = user_data;
    uint32_t leaf = 0, subleaf = 0;
    m->uc_reg_read(uc, m->reg_eax, &leaf);
    m->uc_reg_read(uc, m->reg_ecx, &subleaf);
    /* Past the highest leaf of a range, Intel CPUs answer the highest basic leaf. */
    if ((leaf < 0x80000000u && leaf > m->cpuid_max_basic && (leaf & 0xF0000000u) != 0x40000000u)
        || (leaf >= 0x80000000u && leaf > m->cpuid_max_ext))
        leaf = m->cpuid_max_basic;
    uint32_t out[4] = {0, 0, 0, 0};
    for (uint32_t i = 0; i < m->cpuid_count; i++) {
        struct vm_cpuid_leaf *c = &m->cpuid[i];
        if (c->leaf == leaf && (!c->has_subleaf || c->subleaf == subleaf)) {
            out[0] = c->eax;
            out[1] = c->ebx;
            out[2] = c->ecx;
            out[3] = c->edx;
            break;
        }
    }
    m->uc_reg_write(uc, m->reg_eax, &out[0]);
    m->uc_reg_write(uc, m->reg_ebx, &out[1]);
    m->uc_reg_write(uc, m->reg_ecx, &out[2]);
    m->uc_reg_write(uc, m->reg_edx, &out[3]);
    return 1;
}

/* A CPUID probe for Python to run on a scratch engine (the machine's answers start from what
 * the CPU model says): GNU as encodes it, as every piece of guest code here is. */
__asm__(".pushsection .rodata.vm_cpuid_probe,\"a\"\n"
        "vm_cpuid_probe_start:\n"
        ".code32\n"
        "cpuid\n"
        ".code64\n"
        "vm_cpuid_probe_end:\n"
        ".popsection\n");
extern const uint8_t vm_cpuid_probe_start[], vm_cpuid_probe_end[];

const uint8_t *vm_cpuid_probe(uint32_t *len)
{
    *len = (uint32_t)(vm_cpuid_probe_end - vm_cpuid_probe_start);
    return vm_cpuid_probe_start;
}

/* Read guest memory as the CPU sees it now (its TLB, its CPL): 0, or -1 if a page is not
 * reachable. A failed lookup in Unicorn 2.1.4 runs QEMU's page-fault code in probe mode, which
 * still writes CR2 (and the error code): put CR2 back, or the guest's next page-fault handler
 * reads the debugger's address (a ring-3 interrupt reading the TSS left CR2 = tss+4). */
int vm_read_cpu(struct vm *m, uint64_t address, void *buf, size_t size)
{
    uint64_t cr2 = 0;
    m->uc_reg_read(m->uc, m->reg_cr2, &cr2);
    if (m->uc_vmem_read(m->uc, address, 1 /* UC_PROT_READ */, buf, size) == 0)
        return 0;
    m->uc_reg_write(m->uc, m->reg_cr2, &cr2);
    return -1;
}
