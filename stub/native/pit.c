/*
 * The 8254 PIT (0x40-0x43, input clock 1.193182 MHz) and port 0x61 (channel 2's gate and
 * output, the speaker data bit, a refresh bit toggling on every read), modelled on QEMU's
 * hw/timer/i8254.c, i8254_common.c and hw/audio/pcspk.c: modes 0-5 as QEMU computes them, LSB,
 * MSB and word access, counter latch, read-back of count and status, the gate rules, and
 * channel 0 running in mode 3 from reset. Times are ticks of the virtual clock; an output
 * change is applied at its own time, not when the clock is next looked at, so a mode 2 pulse
 * shorter than a block is never missed. QEMU schedules mode 2 from pulse to pulse and only
 * sees the fall through its clock rounding; here both edges are scheduled, exactly.
 */
#include "vm.h"

#define PIT_FREQ 1193182u
#define RW_LSB 1
#define RW_MSB 2
#define RW_WORD0 3
#define RW_WORD1 4

/* PIT input clocks between two ticks of the virtual clock. */
static uint64_t pit_clocks(uint64_t from, uint64_t to)
{
    if (to <= from)
        return 0;
    return (uint64_t)((unsigned __int128)(to - from) * VM_NS_PER_TICK * PIT_FREQ / 1000000000u);
}

/* The first tick at or after `clocks` PIT input clocks past `base`. */
static uint64_t tick_after(uint64_t base, uint64_t clocks)
{
    unsigned __int128 ns = (unsigned __int128)clocks * 1000000000u;
    unsigned __int128 per = (unsigned __int128)PIT_FREQ * VM_NS_PER_TICK;
    return base + (uint64_t)((ns + per - 1) / per);
}

static int get_count(const struct vm_pit_channel *s, uint64_t now)
{
    uint64_t d = pit_clocks(s->load_time, now);
    switch (s->mode) {
    case 0:
    case 1:
    case 4:
    case 5:
        return (int)((s->count - d) & 0xFFFF);
    case 3:
        return s->count - (int)((2 * d) % s->count);
    default:
        return s->count - (int)(d % s->count);
    }
}

static int get_out(const struct vm_pit_channel *s, uint64_t now)
{
    uint64_t d = pit_clocks(s->load_time, now), count = (uint64_t)s->count;
    switch (s->mode) {
    default:
    case 0:
        return d >= count;
    case 1:
        return d < count;
    case 2:
        return (d % count) == 0 && d != 0;
    case 3:
        return (d % count) < ((count + 1) >> 1);
    case 4:
    case 5:
        return d == count;
    }
}

/* When the output next changes, as PIT clocks since the load; 0 if it never does. */
static uint64_t next_transition_clocks(const struct vm_pit_channel *s, uint64_t now)
{
    uint64_t d = pit_clocks(s->load_time, now), count = (uint64_t)s->count, base;
    switch (s->mode) {
    default:
    case 0:
    case 1:
        return d < count ? count : 0;
    case 2:  /* a one-clock pulse at each multiple of the count: its rise, then its fall */
        base = (d / count) * count;
        return (d - base) == 0 && d != 0 ? d + 1 : base + count;
    case 3:
        base = (d / count) * count;
        return (d - base) < ((count + 1) >> 1) ? base + ((count + 1) >> 1) : base + count;
    case 4:
    case 5:
        if (d < count)
            return count;
        return d == count ? count + 1 : 0;
    }
}

/* Drive channel i's output at time t and schedule its next change (channel 0 is IRQ 0). */
static void update_channel(struct vm *m, int i, uint64_t t)
{
    struct vm_pit_channel *s = &m->pit.ch[i];
    int out = get_out(s, t);
    if (i == 0 && out != s->out)
        vm_set_irq(m, 0, out);
    s->out = out;
    uint64_t next = next_transition_clocks(s, t);
    if (next == 0) {
        s->next_transition = VM_NEVER;
    } else {
        uint64_t at = tick_after(s->load_time, next);
        s->next_transition = at > t ? at : t + 1;
    }
}

static void load_count(struct vm *m, int i, int val)
{
    struct vm_pit_channel *s = &m->pit.ch[i];
    s->count = val == 0 ? 0x10000 : val;
    s->load_time = m->now;
    update_channel(m, i, m->now);
    vm_update_deadline(m);
}

static void set_gate(struct vm *m, int i, int val)
{
    struct vm_pit_channel *s = &m->pit.ch[i];
    if ((s->mode == 1 || s->mode == 2 || s->mode == 3 || s->mode == 5) && s->gate < val) {
        s->load_time = m->now;  /* a rising gate restarts the count */
        update_channel(m, i, m->now);
        vm_update_deadline(m);
    }
    s->gate = (uint8_t)val;
}

void vm_pit_reset(struct vm *m)
{
    for (int i = 0; i < 3; i++) {
        struct vm_pit_channel *s = &m->pit.ch[i];
        *s = (struct vm_pit_channel){0};
        s->mode = 3;
        s->gate = i != 2;
        s->count = 0x10000;
        s->load_time = m->now;
        s->out = -1;
        update_channel(m, i, m->now);
    }
    m->pit.speaker_data = 0;
    m->pit.refresh = 0;
}

static void latch_count(struct vm_pit_channel *s, uint64_t now)
{
    if (!s->count_latched) {
        s->latched_count = (uint16_t)get_count(s, now);
        s->count_latched = s->rw_mode;
    }
}

void vm_pit_write(struct vm *m, uint32_t port, uint32_t value)
{
    uint8_t val = value & 0xFF;
    int addr = port & 3;
    if (addr == 3) {
        int channel = val >> 6;
        if (channel == 3) {  /* read-back */
            for (int i = 0; i < 3; i++) {
                struct vm_pit_channel *s = &m->pit.ch[i];
                if (!(val & (2 << i)))
                    continue;
                if (!(val & 0x20))
                    latch_count(s, m->now);
                if (!(val & 0x10) && !s->status_latched) {
                    s->status = (uint8_t)((get_out(s, m->now) << 7) | (s->rw_mode << 4)
                                          | (s->mode << 1) | s->bcd);
                    s->status_latched = 1;
                }
            }
        } else {
            struct vm_pit_channel *s = &m->pit.ch[channel];
            int access = (val >> 4) & 3;
            if (access == 0) {
                latch_count(s, m->now);
            } else {
                s->rw_mode = (uint8_t)access;
                s->read_state = (uint8_t)access;
                s->write_state = (uint8_t)access;
                s->mode = (val >> 1) & 7;
                if (s->mode > 5)
                    s->mode -= 4;  /* 6 and 7 are aliases of 2 and 3 */
                s->bcd = val & 1;
            }
        }
        return;
    }
    struct vm_pit_channel *s = &m->pit.ch[addr];
    switch (s->write_state) {
    default:
    case RW_LSB:
        load_count(m, addr, val);
        break;
    case RW_MSB:
        load_count(m, addr, val << 8);
        break;
    case RW_WORD0:
        s->write_latch = val;
        s->write_state = RW_WORD1;
        break;
    case RW_WORD1:
        load_count(m, addr, s->write_latch | (val << 8));
        s->write_state = RW_WORD0;
        break;
    }
}

uint32_t vm_pit_read(struct vm *m, uint32_t port)
{
    int addr = port & 3, count;
    if (addr == 3)
        return 0;  /* the control word is write-only */
    struct vm_pit_channel *s = &m->pit.ch[addr];
    uint32_t ret;
    if (s->status_latched) {
        s->status_latched = 0;
        ret = s->status;
    } else if (s->count_latched) {
        switch (s->count_latched) {
        default:
        case RW_LSB:
            ret = s->latched_count & 0xFF;
            s->count_latched = 0;
            break;
        case RW_MSB:
            ret = s->latched_count >> 8;
            s->count_latched = 0;
            break;
        case RW_WORD0:
            ret = s->latched_count & 0xFF;
            s->count_latched = RW_MSB;
            break;
        }
    } else {
        count = get_count(s, m->now);
        switch (s->read_state) {
        default:
        case RW_LSB:
            ret = count & 0xFF;
            break;
        case RW_MSB:
            ret = (count >> 8) & 0xFF;
            break;
        case RW_WORD0:
            ret = count & 0xFF;
            s->read_state = RW_WORD1;
            break;
        case RW_WORD1:
            ret = (count >> 8) & 0xFF;
            s->read_state = RW_WORD0;
            break;
        }
    }
    return ret;
}

uint32_t vm_speaker_read(struct vm *m)
{
    struct vm_pit_channel *s = &m->pit.ch[2];
    m->pit.refresh ^= 1 << 4;
    return s->gate | (m->pit.speaker_data << 1) | m->pit.refresh | (get_out(s, m->now) << 5);
}

void vm_speaker_write(struct vm *m, uint32_t value)
{
    m->pit.speaker_data = (value >> 1) & 1;
    set_gate(m, 2, value & 1);
}

uint64_t vm_pit_next_event(struct vm *m)
{
    return m->pit.ch[0].next_transition;  /* only channel 0 has a line to raise */
}

void vm_pit_run(struct vm *m, uint64_t now)
{
    struct vm_pit_channel *s = &m->pit.ch[0];
    while (s->next_transition <= now)
        update_channel(m, 0, s->next_transition);
}
