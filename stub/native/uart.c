/*
 * The 16550A on COM1 (0x3F8, IRQ 4), modelled on QEMU's hw/char/serial.c: the FIFO bits in IIR
 * whatever DLAB says (Linux's autoconfig concludes "16550A" from them), THRE interrupts that
 * re-arm when IER.THRI goes 0 -> 1 with THR empty and clear when IIR is read showing them,
 * line status and modem status interrupts, loopback through MCR, a 16-byte receive FIFO with
 * its trigger level and character timeout. A byte written to THR goes out at once: it is
 * appended to vm.serial_out and Python is asked for at the end of each line.
 */
#include "vm.h"

#define IER_RDI 0x01
#define IER_THRI 0x02
#define IER_RLSI 0x04
#define IER_MSI 0x08
#define IIR_NO_INT 0x01
#define IIR_ID 0x06
#define IIR_MSI 0x00
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_RLSI 0x06
#define IIR_CTI 0x0C
#define IIR_FE 0xC0
#define LCR_DLAB 0x80
#define MCR_LOOP 0x10
#define MCR_OUT2 0x08
#define LSR_DR 0x01
#define LSR_OE 0x02
#define LSR_BI 0x10
#define LSR_INT_ANY 0x1E
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define MSR_DCD 0x80
#define MSR_DSR 0x20
#define MSR_CTS 0x10
#define MSR_ANY_DELTA 0x0F
#define FCR_FE 0x01
#define FCR_RFR 0x02
#define FCR_XFR 0x04
#define FIFO_LEN 16

static void update_irq(struct vm *m)
{
    struct vm_uart *s = &m->com1;
    uint8_t iir = IIR_NO_INT;
    if ((s->ier & IER_RLSI) && (s->lsr & LSR_INT_ANY))
        iir = IIR_RLSI;
    else if ((s->ier & IER_RDI) && s->timeout_ipending)
        iir = IIR_CTI;
    else if ((s->ier & IER_RDI) && (s->lsr & LSR_DR)
             && (!(s->fcr & FCR_FE) || s->rx_count >= s->recv_fifo_itl))
        iir = IIR_RDI;
    else if ((s->ier & IER_THRI) && s->thr_ipending)
        iir = IIR_THRI;
    else if ((s->ier & IER_MSI) && (s->msr & MSR_ANY_DELTA))
        iir = IIR_MSI;
    s->iir = iir | (s->iir & 0xF0);
    uint8_t level = iir != IIR_NO_INT;
    if (level != s->irq_level) {
        s->irq_level = level;
        vm_set_irq(m, s->irq, level);
    }
}

static uint64_t char_ticks(const struct vm_uart *s)
{
    /* start bit, 5-8 data bits, parity, 1-2 stop bits at 115200 / divider baud */
    uint64_t bits = 1 + 5 + (s->lcr & 3) + ((s->lcr >> 3) & 1) + 1 + ((s->lcr >> 2) & 1);
    uint64_t div = s->divider ? s->divider : 1;
    return div * bits * 1000000000u / 115200u / VM_NS_PER_TICK;
}

static void fifo_reset(struct vm_uart *s)
{
    s->rx_head = s->rx_count = 0;
}

static void receive1(struct vm *m, uint8_t byte)
{
    struct vm_uart *s = &m->com1;
    if (s->fcr & FCR_FE) {
        if (s->rx_count >= FIFO_LEN) {
            s->lsr |= LSR_OE;
        } else {
            s->rx[(s->rx_head + s->rx_count) % VM_SERIAL_RX] = byte;
            s->rx_count++;
        }
        s->lsr |= LSR_DR;
        s->timeout_at = m->now + 4 * char_ticks(s);
        vm_update_deadline(m);
    } else {
        if (s->lsr & LSR_DR)
            s->lsr |= LSR_OE;
        s->rbr = byte;
        s->lsr |= LSR_DR;
    }
    update_irq(m);
}

/* Bytes from the host (stdin); how many the UART took (it takes none while its FIFO is full). */
int vm_uart_receive(struct vm *m, const uint8_t *data, uint32_t len)
{
    struct vm_uart *s = &m->com1;
    uint32_t taken = 0;
    while (taken < len && !(s->mcr & MCR_LOOP)) {
        if ((s->fcr & FCR_FE) ? s->rx_count >= FIFO_LEN : (s->lsr & LSR_DR) != 0)
            break;
        receive1(m, data[taken++]);
    }
    return (int)taken;
}

static void transmit(struct vm *m, uint8_t byte)
{
    struct vm_uart *s = &m->com1;
    if (s->mcr & MCR_LOOP) {
        receive1(m, byte);
        return;
    }
    if (m->serial_len < VM_SERIAL_BUF)
        m->serial_out[m->serial_len++] = byte;
    if (byte == '\n' || m->serial_len >= VM_SERIAL_BUF * 3 / 4)
        vm_request(m, VM_REQ_SERIAL);
}

void vm_uart_reset(struct vm *m)
{
    struct vm_uart *s = &m->com1;
    uint8_t irq = s->irq ? s->irq : 4;
    *s = (struct vm_uart){0};
    s->irq = irq;
    s->iir = IIR_NO_INT;
    s->lsr = LSR_TEMT | LSR_THRE;
    s->msr = MSR_DCD | MSR_DSR | MSR_CTS;
    s->divider = 0x0C;
    s->mcr = MCR_OUT2;
    s->recv_fifo_itl = 1;
    s->timeout_at = VM_NEVER;
    vm_set_irq(m, s->irq, 0);
}

void vm_uart_write(struct vm *m, uint32_t reg, uint32_t value)
{
    struct vm_uart *s = &m->com1;
    uint8_t val = value & 0xFF;
    switch (reg & 7) {
    case 0:
        if (s->lcr & LCR_DLAB) {
            s->divider = (s->divider & 0xFF00) | val;
        } else {
            s->thr = val;
            s->thr_ipending = 0;
            s->lsr &= ~(LSR_THRE | LSR_TEMT);
            update_irq(m);
            transmit(m, val);  /* gone at once: the holding register is empty again */
            s->lsr |= LSR_THRE | LSR_TEMT;
            if (!s->thr_ipending) {
                s->thr_ipending = 1;
                update_irq(m);
            }
        }
        break;
    case 1:
        if (s->lcr & LCR_DLAB) {
            s->divider = (uint16_t)((s->divider & 0x00FF) | (val << 8));
        } else {
            uint8_t changed = (s->ier ^ val) & 0x0F;
            s->ier = val & 0x0F;
            if (changed & IER_THRI)  /* re-armed on THRI 0 -> 1 with THR empty (QEMU, Bochs) */
                s->thr_ipending = (s->ier & IER_THRI) && (s->lsr & LSR_THRE);
            if (changed)
                update_irq(m);
        }
        break;
    case 2:
        if ((val ^ s->fcr) & FCR_FE)
            val |= FCR_XFR | FCR_RFR;
        if (val & FCR_RFR) {
            s->lsr &= ~(LSR_DR | LSR_BI);
            s->timeout_at = VM_NEVER;
            s->timeout_ipending = 0;
            fifo_reset(s);
        }
        if (val & FCR_XFR) {
            s->lsr |= LSR_THRE;
            s->thr_ipending = 1;
        }
        s->fcr = val & 0xC9;
        if (s->fcr & FCR_FE) {
            static const uint8_t itl[4] = {1, 4, 8, 14};
            s->iir |= IIR_FE;
            s->recv_fifo_itl = itl[(val >> 6) & 3];
        } else {
            s->iir &= ~IIR_FE;
        }
        update_irq(m);
        break;
    case 3:
        s->lcr = val;
        break;
    case 4:
        s->mcr = val & 0x1F;
        break;
    case 7:
        s->scr = val;
        break;
    default:
        break;
    }
}

uint32_t vm_uart_read(struct vm *m, uint32_t reg)
{
    struct vm_uart *s = &m->com1;
    uint32_t ret = 0;
    switch (reg & 7) {
    case 0:
        if (s->lcr & LCR_DLAB) {
            ret = s->divider & 0xFF;
        } else if (s->fcr & FCR_FE) {
            if (s->rx_count) {
                ret = s->rx[s->rx_head];
                s->rx_head = (s->rx_head + 1) % VM_SERIAL_RX;
                s->rx_count--;
            }
            if (s->rx_count == 0) {
                s->lsr &= ~(LSR_DR | LSR_BI);
                s->timeout_at = VM_NEVER;
            } else {
                s->timeout_at = m->now + 4 * char_ticks(s);
                vm_update_deadline(m);
            }
            s->timeout_ipending = 0;
            update_irq(m);
        } else {
            ret = s->rbr;
            s->lsr &= ~(LSR_DR | LSR_BI);
            update_irq(m);
        }
        break;
    case 1:
        ret = (s->lcr & LCR_DLAB) ? (s->divider >> 8) & 0xFF : s->ier;
        break;
    case 2:
        ret = s->iir;
        if ((ret & IIR_ID) == IIR_THRI) {
            s->thr_ipending = 0;
            update_irq(m);
        }
        break;
    case 3:
        ret = s->lcr;
        break;
    case 4:
        ret = s->mcr;
        break;
    case 5:
        ret = s->lsr;
        if (s->lsr & (LSR_BI | LSR_OE)) {
            s->lsr &= ~(LSR_BI | LSR_OE);
            update_irq(m);
        }
        break;
    case 6:
        if (s->mcr & MCR_LOOP) {  /* the modem outputs come back on the inputs */
            ret = (s->mcr & 0x0C) << 4;
            ret |= (s->mcr & 0x02) << 3;
            ret |= (s->mcr & 0x01) << 5;
        } else {
            ret = s->msr;
            if (s->msr & MSR_ANY_DELTA) {
                s->msr &= 0xF0;
                update_irq(m);
            }
        }
        break;
    case 7:
        ret = s->scr;
        break;
    }
    return ret;
}

void vm_uart_run(struct vm *m, uint64_t now)
{
    struct vm_uart *s = &m->com1;
    if (s->timeout_at <= now) {
        s->timeout_at = VM_NEVER;
        if (s->rx_count) {
            s->timeout_ipending = 1;
            update_irq(m);
        }
    }
}
