/*
 * The 8259A pair (master 0x20/0x21, slave 0xA0/0xA1 cascaded on IRQ 2) and the ELCR
 * (0x4D0/0x4D1), modelled on QEMU's hw/intc/i8259.c so that Linux sees what it sees on QEMU:
 * ICW1-4, OCW1-3 (poll, read IRR/ISR, special mask), specific and non-specific EOI, rotation,
 * auto-EOI, edge detection on the last input level (level mode through the ELCR), a spurious
 * IRQ 7 when nothing is pending at the acknowledge.
 */
#include "vm.h"

static struct vm_pic_chip *chip(struct vm *m, uint32_t port)
{
    return &m->pic.chip[(port & 0x80) ? 1 : 0];
}

/* The priority (0 = highest) of the highest-priority bit in mask, 8 if none. */
static int get_priority(const struct vm_pic_chip *s, int mask)
{
    if (mask == 0)
        return 8;
    int priority = 0;
    while ((mask & (1 << ((priority + s->priority_add) & 7))) == 0)
        priority++;
    return priority;
}

/* The IRQ this chip asks the CPU (or the master) for, -1 if none. */
static int get_irq(const struct vm_pic_chip *s)
{
    int priority = get_priority(s, s->irr & ~s->imr);
    if (priority == 8)
        return -1;
    int mask = s->isr;
    if (s->special_mask)
        mask &= ~s->imr;
    if (s->special_fully_nested_mode && s->master)
        mask &= ~(1 << 2);  /* the slave's IRQs do not count for the master's current priority */
    int cur_priority = get_priority(s, mask);
    if (priority < cur_priority)
        return (priority + s->priority_add) & 7;
    return -1;
}

static void chip_set_irq(struct vm_pic_chip *s, int irq, int level);

/* Recompute both INT outputs: the slave's feeds the master's IRQ 2, the master's the CPU. */
static void update(struct vm *m)
{
    chip_set_irq(&m->pic.chip[0], 2, get_irq(&m->pic.chip[1]) >= 0);
    int out = get_irq(&m->pic.chip[0]) >= 0;
    m->pic.output = out;
    m->irq_check = out;
    m->if_stale |= out;
}

static void chip_set_irq(struct vm_pic_chip *s, int irq, int level)
{
    int mask = 1 << irq;
    if (s->elcr & mask) {  /* level triggered */
        if (level) {
            s->irr |= mask;
            s->last_irr |= mask;
        } else {
            s->irr &= ~mask;
            s->last_irr &= ~mask;
        }
    } else if (level) {  /* edge triggered: IRR on a rising input */
        if ((s->last_irr & mask) == 0)
            s->irr |= mask;
        s->last_irr |= mask;
    } else {
        s->last_irr &= ~mask;
    }
}

void vm_set_irq(struct vm *m, int irq, int level)
{
    if (irq < 0 || irq > 15)
        return;
    if (level)
        m->irqs_raised++;
    chip_set_irq(&m->pic.chip[irq >> 3], irq & 7, level);
    update(m);
}

static void chip_reset(struct vm_pic_chip *s)
{
    s->last_irr = 0;
    s->irr &= s->elcr;
    s->imr = 0;
    s->isr = 0;
    s->priority_add = 0;
    s->irq_base = 0;
    s->read_reg_select = 0;
    s->poll = 0;
    s->special_mask = 0;
    s->init_state = 0;
    s->auto_eoi = 0;
    s->rotate_on_auto_eoi = 0;
    s->special_fully_nested_mode = 0;
    s->init4 = 0;
    s->single_mode = 0;  /* the ELCR survives a reset */
}

void vm_pic_reset(struct vm *m)
{
    for (int i = 0; i < 2; i++) {
        struct vm_pic_chip *s = &m->pic.chip[i];
        s->elcr = 0;
        s->irr = 0;
        chip_reset(s);
        s->master = (i == 0);
        s->elcr_mask = i == 0 ? 0xF8 : 0xDE;
    }
    update(m);
}

static void intack(struct vm_pic_chip *s, int irq)
{
    if (s->auto_eoi) {
        if (s->rotate_on_auto_eoi)
            s->priority_add = (irq + 1) & 7;
    } else {
        s->isr |= 1 << irq;
    }
    if (!(s->elcr & (1 << irq)))  /* a level-triggered request stays until its line drops */
        s->irr &= ~(1 << irq);
}

/* The INTA cycle: the vector the CPU takes, with both chips updated. */
int vm_pic_ack(struct vm *m)
{
    struct vm_pic_chip *master = &m->pic.chip[0], *slave = &m->pic.chip[1];
    int irq = get_irq(master), intno;
    if (irq >= 0) {
        if (irq == 2) {
            int irq2 = get_irq(slave);
            if (irq2 >= 0)
                intack(slave, irq2);
            else
                irq2 = 7;  /* spurious on the slave */
            intno = slave->irq_base + irq2;
        } else {
            intno = master->irq_base + irq;
        }
        intack(master, irq);
    } else {
        intno = master->irq_base + 7;  /* spurious on the master */
    }
    update(m);
    return intno;
}

void vm_pic_write(struct vm *m, uint32_t port, uint32_t value)
{
    struct vm_pic_chip *s = chip(m, port);
    uint8_t val = value & 0xFF;
    if ((port & 1) == 0) {
        if (val & 0x10) {  /* ICW1 */
            chip_reset(s);
            s->init_state = 1;
            s->init4 = val & 1;
            s->single_mode = (val >> 1) & 1;
        } else if (val & 0x08) {  /* OCW3 */
            if (val & 0x04)
                s->poll = 1;
            if (val & 0x02)
                s->read_reg_select = val & 1;
            if (val & 0x40)
                s->special_mask = (val >> 5) & 1;
        } else {  /* OCW2 */
            int cmd = val >> 5, priority, irq;
            switch (cmd) {
            case 0:
            case 4:
                s->rotate_on_auto_eoi = cmd >> 2;
                break;
            case 1:  /* non-specific EOI */
            case 5:  /* rotate on non-specific EOI */
                priority = get_priority(s, s->isr);
                if (priority != 8) {
                    irq = (priority + s->priority_add) & 7;
                    s->isr &= ~(1 << irq);
                    if (cmd == 5)
                        s->priority_add = (irq + 1) & 7;
                }
                break;
            case 3:  /* specific EOI */
                s->isr &= ~(1 << (val & 7));
                break;
            case 6:  /* set priority */
                s->priority_add = (val + 1) & 7;
                break;
            case 7:  /* rotate on specific EOI */
                irq = val & 7;
                s->isr &= ~(1 << irq);
                s->priority_add = (irq + 1) & 7;
                break;
            default:
                break;
            }
        }
    } else {
        switch (s->init_state) {
        case 0:  /* OCW1 */
            s->imr = val;
            break;
        case 1:  /* ICW2 */
            s->irq_base = val & 0xF8;
            s->init_state = s->single_mode ? (s->init4 ? 3 : 0) : 2;
            break;
        case 2:  /* ICW3 */
            s->init_state = s->init4 ? 3 : 0;
            break;
        case 3:  /* ICW4 */
            s->special_fully_nested_mode = (val >> 4) & 1;
            s->auto_eoi = (val >> 1) & 1;
            s->init_state = 0;
            break;
        }
    }
    update(m);
}

uint32_t vm_pic_read(struct vm *m, uint32_t port)
{
    struct vm_pic_chip *s = chip(m, port);
    uint32_t ret;
    if (s->poll) {  /* the poll command: the highest request, acknowledged */
        int irq = get_irq(s);
        if (irq >= 0) {
            intack(s, irq);
            ret = 0x80 | irq;
        } else {
            ret = 0;
        }
        s->poll = 0;
        update(m);
    } else if ((port & 1) == 0) {
        ret = s->read_reg_select ? s->isr : s->irr;
    } else {
        ret = s->imr;
    }
    return ret;
}

void vm_elcr_write(struct vm *m, uint32_t port, uint32_t value)
{
    struct vm_pic_chip *s = &m->pic.chip[port & 1];
    s->elcr = value & s->elcr_mask;
    update(m);
}
