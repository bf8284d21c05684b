/*
 * Event delivery through the guest's IDT, and SYSENTER: what Unicorn leaves to its user.
 *
 * Unicorn calls its INTR hook instead of QEMU's do_interrupt, so nothing is pushed or vectored
 * unless we do it, and external interrupts have no way into Unicorn at all. vm_deliver follows
 * QEMU's do_interrupt_protected (the SDM's protected-mode path) for 32-bit interrupt and trap
 * gates: read the gate, check it and its code segment, switch to the TSS's SS0:ESP0 for an
 * inward transfer (pushing SS:ESP), push EFLAGS, CS, EIP and the error code, clear IF for an
 * interrupt gate and TF/VM/RF/NT always, load CS:EIP. The segment caches and hflags are written
 * as cpu_x86_load_seg_cache would (Unicorn's reg_write would load CS from the GDT with the
 * checks of a far jump, which an inward transfer fails). Task gates, 16-bit gates, LDT
 * selectors and vm86 are not delivered: the caller escalates as the CPU would (#DF, then a
 * triple fault). A Python version of this cost ~240 us per event, a third of a Linux boot.
 *
 * The tables live in kernel memory, which the CPU's current-privilege view refuses while ring
 * 3 runs, so they are read through the machine's own page walk with supervisor rights
 * (mmu.c: vm_walk_super).
 *
 * Clock: an exception leaves its block early; vm_settle counts, with capstone, the
 * instructions of the block that really ran, so the clock stays exact.
 */
#include <stdio.h>
#include <string.h>

#include "vm.h"

#define DESC_P (1u << 15)
#define DESC_S (1u << 12)
#define DESC_CS (1u << 11)
#define DESC_C (1u << 10)
#define DESC_W (1u << 9)
#define DESC_B (1u << 22)
#define DESC_G (1u << 23)
#define HF_CPL 3u
#define HF_CS32 (1u << 4)
#define HF_SS32 (1u << 5)
#define HF_ADDSEG (1u << 6)
#define SEG_ES 0
#define SEG_CS 1
#define SEG_SS 2
#define SEG_DS 3
#define SEG_SIZE 24

static uint32_t reg32(struct vm *m, int id)
{
    uint64_t v = 0;
    m->uc_reg_read(m->uc, id, &v);
    return (uint32_t)v;
}

static void set_reg32(struct vm *m, int id, uint32_t value)
{
    m->uc_reg_write(m->uc, id, &value);
}

/* Supervisor-view access to guest-virtual memory, page by page; -1 if any page is missing. */
static int access_super(struct vm *m, uint32_t va, void *buf, size_t n, int write)
{
    uint8_t *p = buf;
    while (n) {
        size_t chunk = 0x1000 - (va & 0xFFF);
        if (chunk > n)
            chunk = n;
        int64_t pa = vm_walk_super(m, va);
        if (pa < 0 || (uint64_t)pa + chunk > m->ram_size)
            return -1;
        if (write) {
            if ((uint64_t)pa >= m->rom_base && (uint64_t)pa < m->rom_end)
                return -1;  /* a stack in ROM: the CPU's write would fault */
            if (m->uc_mem_write(m->uc, (uint64_t)pa, p, chunk) != 0)
                return -1;
        } else if (m->uc_mem_read(m->uc, (uint64_t)pa, p, chunk) != 0) {
            return -1;
        }
        va += (uint32_t)chunk;
        p += chunk;
        n -= chunk;
    }
    return 0;
}

int vm_read_super(struct vm *m, uint32_t va, void *buf, size_t n)
{
    return access_super(m, va, buf, n, 0);
}

static int fail(struct vm *m, const char *fmt, unsigned a, unsigned b)
{
    snprintf(m->deliver_error, sizeof m->deliver_error, fmt, a, b);
    return -1;
}

/* The 8-byte descriptor a GDT selector names; its low and high dwords. */
static int descriptor(struct vm *m, uint32_t selector, uint32_t *e1, uint32_t *e2)
{
    if (selector & 4)
        return fail(m, "selector %#x is in the LDT (not supported)", selector, 0);
    struct mmr gdtr;
    m->uc_reg_read(m->uc, m->reg_gdtr, &gdtr);
    if ((selector & ~7u) == 0 || (selector & ~7u) + 7 > gdtr.limit)
        return fail(m, "selector %#x is outside the GDT (limit %#x)", selector, gdtr.limit);
    uint32_t d[2];
    if (vm_read_super(m, (uint32_t)gdtr.base + (selector & ~7u), d, 8))
        return fail(m, "GDT entry of selector %#x at %#x is not mapped", selector,
                    (uint32_t)gdtr.base + (selector & ~7u));
    *e1 = d[0];
    *e2 = d[1];
    return 0;
}

static uint32_t seg_base(uint32_t e1, uint32_t e2)
{
    return (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000u);
}

static uint32_t seg_limit(uint32_t e1, uint32_t e2)
{
    uint32_t limit = (e1 & 0xFFFF) | (e2 & 0x000F0000u);
    return (e2 & DESC_G) ? (limit << 12) | 0xFFF : limit;
}

/* Write a segment cache into the saved CPU state, as cpu_x86_load_seg_cache does. */
static void load_seg(struct vm *m, int seg, uint32_t sel, uint32_t base, uint32_t limit,
                     uint32_t flags)
{
    uint8_t *s = (uint8_t *)m->ctx + m->ctx_segs + seg * SEG_SIZE;
    uint64_t base64 = base;
    memcpy(s, &sel, 4);
    memcpy(s + 8, &base64, 8);
    memcpy(s + 16, &limit, 4);
    memcpy(s + 20, &flags, 4);
    uint32_t hflags;
    memcpy(&hflags, (uint8_t *)m->ctx + m->ctx_hflags, 4);
    if (seg == SEG_CS)
        hflags = (hflags & ~HF_CS32) | ((flags & DESC_B) ? HF_CS32 : 0);
    if (seg == SEG_SS)
        hflags = (hflags & ~(HF_CPL | HF_SS32)) | ((flags >> 13) & 3) | ((flags & DESC_B) ? HF_SS32 : 0);
    uint64_t bases = 0;
    static const int data_segs[] = {SEG_ES, SEG_SS, SEG_DS};
    for (int i = 0; i < 3; i++) {
        uint64_t b;
        memcpy(&b, (uint8_t *)m->ctx + m->ctx_segs + data_segs[i] * SEG_SIZE + 8, 8);
        bases |= b;
    }
    hflags = (hflags & ~HF_ADDSEG) | (bases ? HF_ADDSEG : 0);
    memcpy((uint8_t *)m->ctx + m->ctx_hflags, &hflags, 4);
}

int vm_deliver(struct vm *m, int vector, int has_error, uint32_t error_code, uint32_t return_eip)
{
    struct mmr idtr;
    m->deliver_error[0] = 0;
    m->uc_reg_read(m->uc, m->reg_idtr, &idtr);
    if ((uint32_t)vector * 8 + 7 > idtr.limit)
        return fail(m, "vector %u is beyond the IDT limit %#x", vector, idtr.limit);
    uint32_t g[2];
    if (vm_read_super(m, (uint32_t)idtr.base + vector * 8, g, 8))
        return fail(m, "IDT entry %u at %#x is not mapped", vector,
                    (uint32_t)idtr.base + vector * 8);
    uint32_t type = (g[1] >> 8) & 0x1F;
    if (!(g[1] & DESC_P))
        return fail(m, "IDT gate %u is not present", vector, 0);
    if (type != 0xE && type != 0xF)
        return fail(m, "IDT gate %u has unsupported type %#x", vector, type);
    uint32_t selector = g[0] >> 16, offset = (g[0] & 0xFFFF) | (g[1] & 0xFFFF0000u);
    uint32_t e1, e2;
    if (descriptor(m, selector, &e1, &e2))
        return -1;
    if (!(e2 & DESC_S) || !(e2 & DESC_CS) || !(e2 & DESC_P))
        return fail(m, "IDT gate %u selector %#x is not a present code segment", vector,
                    selector);
    m->uc_context_save(m->uc, m->ctx);
    uint32_t cs = reg32(m, m->reg_cs), ss = reg32(m, m->reg_ss);
    uint32_t hflags;
    memcpy(&hflags, (uint8_t *)m->ctx + m->ctx_hflags, 4);
    uint32_t cpl = hflags & HF_CPL, dpl = (e2 >> 13) & 3;
    if (dpl > cpl)
        return fail(m, "IDT gate %u code segment DPL %u is less privileged", vector, dpl);
    if (e2 & DESC_C)
        dpl = cpl;
    uint32_t eflags = reg32(m, m->reg_eflags), esp = reg32(m, m->reg_esp);
    uint32_t frame[6], n = 0, new_ss = 0, ss_e1 = 0, ss_e2 = 0;
    int inward = dpl < cpl;
    if (eflags & EFLAGS_VM)
        return fail(m, "vm86 mode interrupted (not supported)", 0, 0);
    if (inward) {
        struct mmr tr;
        m->uc_reg_read(m->uc, m->reg_tr, &tr);
        if (tr.limit < 8 * dpl + 9)
            return fail(m, "inward interrupt with no usable TSS (limit %#x)", tr.limit, 0);
        uint32_t stack[2];
        if (vm_read_super(m, (uint32_t)tr.base + 4 + 8 * dpl, stack, 8))
            return fail(m, "TSS at %#x is not mapped", (uint32_t)tr.base, 0);
        new_ss = stack[1] & 0xFFFF;
        if ((new_ss & 0xFFFC) == 0 || (new_ss & 3) != dpl)
            return fail(m, "TSS stack selector %#x for ring %u is bad", new_ss, dpl);
        if (descriptor(m, new_ss, &ss_e1, &ss_e2))
            return -1;
        if (((ss_e2 >> 13) & 3) != dpl || !(ss_e2 & DESC_S) || (ss_e2 & DESC_CS)
            || !(ss_e2 & DESC_W) || !(ss_e2 & DESC_P))
            return fail(m, "TSS stack segment %#x is not a writable ring-%u data segment",
                        new_ss, dpl);
        frame[n++] = ss;
        frame[n++] = esp;
        esp = stack[0];
    }
    frame[n++] = eflags;
    frame[n++] = cs;
    frame[n++] = return_eip;
    if (has_error)
        frame[n++] = error_code;
    uint32_t words[6];
    for (uint32_t i = 0; i < n; i++)
        words[i] = frame[n - 1 - i];  /* lowest address first */
    esp -= 4 * n;
    uint32_t stack_base = inward ? seg_base(ss_e1, ss_e2) : 0;
    if (!inward) {
        uint64_t b;
        memcpy(&b, (uint8_t *)m->ctx + m->ctx_segs + SEG_SS * SEG_SIZE + 8, 8);
        stack_base = (uint32_t)b;
    }
    if (access_super(m, stack_base + esp, words, 4 * n, 1))
        return fail(m, "stack at %#x is not mapped", stack_base + esp, 0);
    if (inward)
        load_seg(m, SEG_SS, (new_ss & ~3u) | dpl, seg_base(ss_e1, ss_e2),
                 seg_limit(ss_e1, ss_e2), ss_e2);
    load_seg(m, SEG_CS, (selector & ~3u) | dpl, seg_base(e1, e2), seg_limit(e1, e2), e2);
    int32_t none = -1;
    memcpy((uint8_t *)m->ctx + m->ctx_old_exception, &none, 4);
    m->uc_context_restore(m->uc, m->ctx);
    eflags &= ~(EFLAGS_TF | EFLAGS_VM | EFLAGS_RF | EFLAGS_NT);
    if (type == 0xE)
        eflags &= ~EFLAGS_IF;
    set_reg32(m, m->reg_esp, esp);
    set_reg32(m, m->reg_eflags, eflags);
    set_reg32(m, m->reg_eip, offset);
    m->deliveries++;
    m->if_stale = 1;
    return 0;
}

/* The clock after the CPU left the last counted block at `at`: the instructions before it. */
void vm_settle(struct vm *m, uint32_t at)
{
    uint32_t start = m->block_pc, size = at - start;
    if (at < start || at >= start + m->block_size || m->ticks != m->now + m->block_icount)
        return;
    if (size == 0) {
        m->ticks = m->now;
        return;
    }
    uint8_t code[4096];
    if (size > sizeof code || vm_read_cpu(m, start, code, size) != 0)
        return;
    void *insn = NULL;
    size_t count = m->cs_disasm(m->cs_handle, code, size, start, 0, &insn);
    if (insn != NULL)
        m->cs_free(insn, count);
    m->ticks = m->now + count;
}

static const int error_code_vectors = (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13)
                                       | (1 << 14) | (1 << 17);

/* Deliver, or #DF, or give up with a triple fault (a stop with the reason in deliver_error). */
static void deliver_or_escalate(struct vm *m, int vector, int has_error, uint32_t error_code,
                                uint32_t eip)
{
    if (vm_deliver(m, vector, has_error, error_code, eip) == 0)
        return;
    char first[sizeof m->deliver_error];
    memcpy(first, m->deliver_error, sizeof first);
    if (vector != 8 && vm_deliver(m, 8, 1, 0, eip) == 0)
        return;
    char both[sizeof m->deliver_error];
    snprintf(both, sizeof both, "%s%s%s", first, vector != 8 ? "; then #DF: " : "",
             vector != 8 ? m->deliver_error : "");
    memcpy(m->deliver_error, both, sizeof both);
    m->fault_vector = vector;
    m->fault_eip = eip;
    m->stop_reason = VM_STOP_TRIPLE;
    m->rc.emu_stop(m->uc);
}

/* UC_HOOK_INTR: an exception or INT n the CPU raised, with EIP at the faulting instruction
 * (or after INT n). */
void vm_intr_hook(void *uc, uint32_t intno, void *user_data)
{
    struct vm *m = user_data;
    (void)uc;
    if (m->stop_reason == VM_STOP_TRIPLE)
        return;  /* a triple fault re-raising while Unicorn unwinds */
    m->uc_context_save(m->uc, m->ctx);
    uint8_t *ctx = m->ctx;
    uint32_t error_code;
    int32_t is_int;
    uint64_t next_eip;
    memcpy(&error_code, ctx + m->ctx_error_code, 4);
    memcpy(&is_int, ctx + m->ctx_is_int, 4);
    memcpy(&next_eip, ctx + m->ctx_next_eip, 8);
    uint32_t eip = reg32(m, m->reg_eip);
    uint32_t ret = is_int ? (uint32_t)next_eip : eip;
    vm_settle(m, ret);
    int has_error = !is_int && intno < 32 && ((error_code_vectors >> intno) & 1);
    m->exceptions++;
    deliver_or_escalate(m, (int)intno, has_error, error_code, ret);
}

/* UC_HOOK_INSN_INVALID: #UD. */
int vm_invalid_hook(void *uc, void *user_data)
{
    struct vm *m = user_data;
    (void)uc;
    if (m->stop_reason == VM_STOP_TRIPLE)
        return 0;
    uint32_t eip = reg32(m, m->reg_eip);
    vm_settle(m, eip);
    m->exceptions++;
    deliver_or_escalate(m, 6, 0, 0, eip);
    return m->stop_reason != VM_STOP_TRIPLE;
}

/* UC_HOOK_INSN SYSENTER: Unicorn 2.1.4's helper only calls hooks and steps over the
 * instruction (its stand-in for user-mode syscalls), so a guest's SYSENTER never reached the
 * kernel and ran on in ring 3 two bytes later. Do what the SDM says (flat ring-0 CS from
 * IA32_SYSENTER_CS, SS after it, ESP and EIP from their MSRs, VM/IF/RF cleared), leaving EIP
 * two bytes short because the helper adds the instruction's length after its hooks. */
void vm_sysenter_hook(void *uc, void *user_data)
{
    struct vm *m = user_data;
    (void)uc;
    struct msr cs = {0x174, 0}, esp = {0x175, 0}, eip = {0x176, 0};
    m->uc_reg_read(m->uc, m->reg_msr, &cs);
    m->uc_reg_read(m->uc, m->reg_msr, &esp);
    m->uc_reg_read(m->uc, m->reg_msr, &eip);
    uint32_t sel = (uint32_t)cs.value & 0xFFFC;
    uint32_t here = reg32(m, m->reg_eip);
    if (sel == 0) {
        deliver_or_escalate(m, 13, 1, 0, here);
        return;
    }
    uint32_t eflags = reg32(m, m->reg_eflags) & ~(EFLAGS_VM | EFLAGS_IF | EFLAGS_RF);
    m->uc_context_save(m->uc, m->ctx);
    uint32_t flat = DESC_G | DESC_B | DESC_P | DESC_S | (1u << 8);
    load_seg(m, SEG_CS, sel, 0, 0xFFFFFFFFu, flat | DESC_CS | (1u << 9));
    load_seg(m, SEG_SS, sel + 8, 0, 0xFFFFFFFFu, flat | DESC_W);
    m->uc_context_restore(m->uc, m->ctx);
    set_reg32(m, m->reg_esp, (uint32_t)esp.value);
    set_reg32(m, m->reg_eflags, eflags);
    set_reg32(m, m->reg_eip, (uint32_t)eip.value - 2);
    m->sysenters++;
}
