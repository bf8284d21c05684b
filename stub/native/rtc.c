/*
 * The MC146818 RTC and its CMOS (index 0x70, data 0x71, IRQ 8), modelled on QEMU's
 * hw/rtc/mc146818rtc.c with -rtc clock=vm: the date is a base time (vmigdb's --rtc, fixed by
 * default so that runs repeat) plus the virtual clock. UIP is set in the last 244 us of each
 * second, BCD/binary and 12/24-hour formats follow register B, SET freezes the registers and a
 * write of the time moves the base, register C reports and clears PF/AF/UF with IRQF (UF is
 * set by every update cycle, interrupt enabled or not), and the periodic, alarm and update-ended
 * interrupts fire from the clock. The CMOS holds the memory sizes (python fills them as QEMU's
 * pc_cmos_init does).
 */
#include "vm.h"

#define REG_A 0x0A
#define REG_B 0x0B
#define REG_C 0x0C
#define REG_D 0x0D
#define CENTURY 0x32
#define A_UIP 0x80
#define B_SET 0x80
#define B_PIE 0x40
#define B_AIE 0x20
#define B_UIE 0x10
#define B_DM 0x04
#define B_24H 0x02
#define C_IRQF 0x80
#define C_PF 0x40
#define C_AF 0x20
#define C_UF 0x10
#define NS 1000000000ull
#define UIP_HOLD_NS (8 * NS / 32768)

static uint64_t now_ns(const struct vm *m)
{
    return m->now * VM_NS_PER_TICK;
}

static int64_t seconds(const struct vm *m)
{
    return m->rtc.base_seconds + m->rtc.offset_seconds + (int64_t)(now_ns(m) / NS);
}

static int running(const struct vm *m)
{
    return (m->rtc.cmos[REG_A] & 0x70) == 0x20 && !(m->rtc.cmos[REG_B] & B_SET);
}

static uint8_t to_reg(const struct vm *m, int v)
{
    if (m->rtc.cmos[REG_B] & B_DM)
        return (uint8_t)v;
    return (uint8_t)(((v / 10) << 4) | (v % 10));
}

static int from_reg(const struct vm *m, uint8_t v)
{
    if (m->rtc.cmos[REG_B] & B_DM)
        return v;
    return ((v >> 4) & 0x0F) * 10 + (v & 0x0F);
}

/* Howard Hinnant's days-from-civil and its inverse: dates without the C library's time zone. */
static int64_t days_from_civil(int64_t y, int mon, int d)
{
    y -= mon <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (mon + (mon > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *mon, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *mon = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*mon <= 2);
}

/* Write the running time into the time registers (what a read sees). */
static void latch_time(struct vm *m)
{
    int64_t t = seconds(m);
    int64_t days = t >= 0 ? t / 86400 : (t - 86399) / 86400;
    int64_t sod = t - days * 86400, year;
    int mon, day;
    civil_from_days(days, &year, &mon, &day);
    uint8_t *c = m->rtc.cmos;
    int hour = (int)(sod / 3600);
    c[0] = to_reg(m, (int)(sod % 60));
    c[2] = to_reg(m, (int)((sod / 60) % 60));
    if (c[REG_B] & B_24H) {
        c[4] = to_reg(m, hour);
    } else {
        int h12 = hour % 12 == 0 ? 12 : hour % 12;
        c[4] = (uint8_t)(to_reg(m, h12) | (hour >= 12 ? 0x80 : 0));
    }
    c[6] = to_reg(m, (int)(((days % 7) + 11) % 7) + 1);  /* 1970-01-01 was a Thursday (5) */
    c[7] = to_reg(m, day);
    c[8] = to_reg(m, mon);
    c[9] = to_reg(m, (int)(year % 100));
    c[CENTURY] = to_reg(m, (int)(year / 100));
}

/* The guest set the time registers (SET just cleared): move the offset to match them. */
static void take_time(struct vm *m)
{
    uint8_t *c = m->rtc.cmos;
    int hour;
    if (c[REG_B] & B_24H) {
        hour = from_reg(m, c[4]);
    } else {
        hour = from_reg(m, c[4] & 0x7F) % 12 + ((c[4] & 0x80) ? 12 : 0);
    }
    int64_t year = from_reg(m, c[CENTURY]) * 100 + from_reg(m, c[9]);
    int64_t t = days_from_civil(year, from_reg(m, c[8]), from_reg(m, c[7])) * 86400
                + hour * 3600 + from_reg(m, c[2]) * 60 + from_reg(m, c[0]);
    m->rtc.offset_seconds = t - m->rtc.base_seconds - (int64_t)(now_ns(m) / NS);
}

static void update_irq(struct vm *m)
{
    uint8_t *c = m->rtc.cmos;
    /* IRQF = PF.PIE + AF.AIE + UF.UIE (each flag sits at its enable's bit): it follows register
     * B both ways, so turning an enable off with its flag still set clears IRQF (QEMU's
     * register B write does the same) */
    int level = (c[REG_C] & c[REG_B] & (C_PF | C_AF | C_UF)) != 0;
    c[REG_C] = (uint8_t)((c[REG_C] & ~C_IRQF) | (level ? C_IRQF : 0));
    if (level != m->rtc.irq_level) {
        m->rtc.irq_level = level;
        vm_set_irq(m, 8, level);
    }
}

static uint64_t period_ticks(const struct vm *m)
{
    int code = m->rtc.cmos[REG_A] & 0x0F;
    if (code == 0)
        return 0;
    if (code <= 2)
        code += 7;
    uint64_t period32k = 1ull << (code - 1);
    return period32k * NS / 32768 / VM_NS_PER_TICK;
}

static void schedule(struct vm *m)
{
    uint8_t *c = m->rtc.cmos;
    uint64_t p = period_ticks(m);
    if ((c[REG_B] & B_PIE) && p && running(m)) {
        if (m->rtc.next_periodic == VM_NEVER)
            m->rtc.next_periodic = (m->now / p + 1) * p;
    } else {
        m->rtc.next_periodic = VM_NEVER;
    }
    if (running(m)) {  /* the update cycle runs whatever UIE/AIE say: UF is set each second */
        uint64_t sec = NS / VM_NS_PER_TICK;
        m->rtc.next_update = (m->now / sec + 1) * sec;
    } else {
        m->rtc.next_update = VM_NEVER;
    }
    vm_update_deadline(m);
}

static int alarm_matches(struct vm *m)
{
    const uint8_t *c = m->rtc.cmos;
    for (int i = 0; i < 3; i++) {  /* seconds, minutes, hours; 0xC0-0xFF means any */
        uint8_t alarm = c[1 + 2 * i];
        if ((alarm & 0xC0) != 0xC0 && alarm != c[2 * i])
            return 0;
    }
    return 1;
}

void vm_rtc_reset(struct vm *m, int64_t base_seconds)
{
    struct vm_rtc *r = &m->rtc;
    r->base_seconds = base_seconds;
    r->offset_seconds = 0;
    r->index = 0;
    r->cmos[REG_A] = 0x26;
    r->cmos[REG_B] = B_24H;
    r->cmos[REG_C] = 0;
    r->cmos[REG_D] = 0x80;
    r->next_periodic = VM_NEVER;
    r->irq_level = 0;
    latch_time(m);
    schedule(m);
    vm_set_irq(m, 8, 0);
}

/* An update cycle that ended without an event (vm_rtc_next_event says why) sets its flags
 * before register C is read or the cycle is rescheduled. */
static void catch_up(struct vm *m)
{
    if (m->rtc.next_update <= m->now)
        vm_rtc_run(m, m->now);
}

uint32_t vm_rtc_read(struct vm *m, uint32_t port)
{
    if ((port & 1) == 0)
        return 0xFF;
    uint8_t *c = m->rtc.cmos;
    uint8_t i = m->rtc.index;
    switch (i) {
    case 0: case 2: case 4: case 6: case 7: case 8: case 9: case CENTURY:
        if (running(m))
            latch_time(m);
        return c[i];
    case REG_A: {
        uint8_t a = c[REG_A] & ~A_UIP;
        if (running(m) && now_ns(m) % NS >= NS - UIP_HOLD_NS)
            a |= A_UIP;
        return a;
    }
    case REG_C: {
        catch_up(m);
        uint8_t ret = c[REG_C];
        c[REG_C] = 0;
        update_irq(m);
        return ret;
    }
    default:
        return c[i];
    }
}

void vm_rtc_write(struct vm *m, uint32_t port, uint32_t value)
{
    uint8_t val = value & 0xFF;
    if ((port & 1) == 0) {
        m->rtc.index = val & 0x7F;
        return;
    }
    uint8_t *c = m->rtc.cmos;
    uint8_t i = m->rtc.index;
    switch (i) {
    case 0: case 2: case 4: case 6: case 7: case 8: case 9: case CENTURY:
        if (running(m))
            latch_time(m);
        c[i] = val;
        if (running(m))  /* a write while running takes effect at once */
            take_time(m);
        break;
    case REG_A:
        catch_up(m);
        c[REG_A] = val & ~A_UIP;
        m->rtc.next_periodic = VM_NEVER;
        schedule(m);
        break;
    case REG_B:
        catch_up(m);
        if (val & B_SET) {
            if (running(m))
                latch_time(m);
            val &= ~B_UIE;
        } else if (c[REG_B] & B_SET) {
            c[REG_B] = val;  /* leaving SET mode: the registers become the time */
            take_time(m);
        }
        c[REG_B] = val;
        m->rtc.next_periodic = VM_NEVER;
        schedule(m);
        update_irq(m);
        break;
    case REG_C:
    case REG_D:
        break;  /* read-only */
    default:
        c[i] = val;
        break;
    }
}

/* The next time IRQ 8 may change. The update cycle counts only with UIE or AIE: without them
 * its flags reach nobody until register C is read, which catches up (catch_up), and a machine
 * halted with IRQ 8 open is not woken every second for nothing. */
uint64_t vm_rtc_next_event(struct vm *m)
{
    uint64_t update = (m->rtc.cmos[REG_B] & (B_UIE | B_AIE)) ? m->rtc.next_update : VM_NEVER;
    return m->rtc.next_periodic < update ? m->rtc.next_periodic : update;
}

void vm_rtc_run(struct vm *m, uint64_t now)
{
    uint8_t *c = m->rtc.cmos;
    uint64_t saved = m->now;
    if (m->rtc.next_periodic <= now) {
        c[REG_C] |= C_PF;
        uint64_t p = period_ticks(m);
        m->rtc.next_periodic = p ? (now / p + 1) * p : VM_NEVER;
    }
    if (m->rtc.next_update <= now) {
        m->now = m->rtc.next_update;
        latch_time(m);
        c[REG_C] |= C_UF;
        if (alarm_matches(m))
            c[REG_C] |= C_AF;
        uint64_t sec = NS / VM_NS_PER_TICK;
        m->rtc.next_update = (now / sec + 1) * sec;
        m->now = saved;
    }
    update_irq(m);
}
