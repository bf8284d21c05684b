/*
 * The i8042 keyboard controller (data 0x60, status/command 0x64; IRQ 1 and 12) with a PS/2
 * keyboard and mouse behind it, modelled on QEMU's hw/input/pckbd.c (its "extended state":
 * controller replies have their own byte) and hw/input/ps2.c: the controller commands Linux's
 * i8042 driver sends (CTR read/write, self tests, port enable/disable, loopback 0xD2/0xD3, 0xD4
 * to the mouse, output port writes), the keyboard's reset/ID/LED/rate/scancode replies, the
 * mouse's reset/ID/sample-rate replies with QEMU's IntelliMouse Explorer detection. Pulsing
 * output bit 0 (0xFE, 0xF0-0xFE with bit 0 clear, or an output port write with bit 0 clear)
 * asks Python to reset the machine.
 */
#include "vm.h"

#define STAT_OBF 0x01
#define STAT_SELFTEST 0x04
#define STAT_CMD 0x08
#define STAT_UNLOCKED 0x10
#define STAT_MOUSE_OBF 0x20
#define MODE_KBD_INT 0x01
#define MODE_MOUSE_INT 0x02
#define MODE_DISABLE_KBD 0x10
#define MODE_DISABLE_MOUSE 0x20
#define MODE_KCC 0x40
#define OUT_RESET 0x01
#define OUT_A20 0x02
#define OUT_OBF 0x10
#define OUT_MOUSE_OBF 0x20
#define SRC_NONE 0
#define SRC_CTRL_KBD 1
#define SRC_CTRL_AUX 2
#define SRC_KBD 3
#define SRC_MOUSE 4
#define ACK 0xFA
#define RESEND 0xFE

static struct vm_ps2_queue *queue_of(struct vm *m, int aux)
{
    return aux ? &m->kbc.aux : &m->kbc.kbd;
}

static void queue_reset(struct vm_ps2_queue *q)
{
    q->head = q->count = 0;
}

static void set_lines(struct vm *m)
{
    struct vm_kbc *s = &m->kbc;
    int kbd = 0, mouse = 0;
    if (s->status & STAT_OBF) {
        if (s->status & STAT_MOUSE_OBF)
            mouse = (s->mode & MODE_MOUSE_INT) != 0;
        else
            kbd = (s->mode & MODE_KBD_INT) && !(s->mode & MODE_DISABLE_KBD);
    }
    if (kbd != s->irq1_level) {
        s->irq1_level = kbd;
        vm_set_irq(m, 1, kbd);
    }
    if (mouse != s->irq12_level) {
        s->irq12_level = mouse;
        vm_set_irq(m, 12, mouse);
    }
}

/* Fill the output buffer from what is pending: controller reply, then keyboard, then mouse. */
static void fill(struct vm *m)
{
    struct vm_kbc *s = &m->kbc;
    if (s->status & STAT_OBF) {
        set_lines(m);
        return;
    }
    s->outport &= ~(OUT_OBF | OUT_MOUSE_OBF);
    if (s->ctrl_pending) {  /* the controller's own reply (QEMU's cbdata) goes first */
        s->obsrc = s->ctrl_pending == 2 ? SRC_CTRL_AUX : SRC_CTRL_KBD;
        s->obdata = s->ctrl_byte;
        s->ctrl_pending = 0;
        s->status |= STAT_OBF;
        s->outport |= OUT_OBF;
        if (s->obsrc == SRC_CTRL_AUX) {
            s->status |= STAT_MOUSE_OBF;
            s->outport |= OUT_MOUSE_OBF;
        }
    } else if (s->kbd.count && !(s->mode & MODE_DISABLE_KBD)) {
        s->obsrc = SRC_KBD;
        s->status |= STAT_OBF;
        s->outport |= OUT_OBF;
    } else if (s->aux.count && !(s->mode & MODE_DISABLE_MOUSE)) {
        s->obsrc = SRC_MOUSE;
        s->status |= STAT_OBF | STAT_MOUSE_OBF;
        s->outport |= OUT_OBF | OUT_MOUSE_OBF;
    }
    set_lines(m);
}

static void ctrl_reply(struct vm *m, uint8_t b, int aux)
{
    struct vm_kbc *s = &m->kbc;
    s->ctrl_byte = b;  /* a newer reply replaces one not yet presented */
    s->ctrl_pending = aux ? 2 : 1;
    fill(m);
}

static void push(struct vm *m, int aux, uint8_t b)
{
    struct vm_ps2_queue *q = queue_of(m, aux);
    if (q->count < VM_KBC_QUEUE) {
        q->data[(q->head + q->count) % VM_KBC_QUEUE] = b;
        q->count++;
    }
    fill(m);
}

static uint8_t pop(struct vm_ps2_queue *q)
{
    if (q->count == 0)
        return q->data[(q->head + VM_KBC_QUEUE - 1) % VM_KBC_QUEUE];  /* the last byte again */
    uint8_t b = q->data[q->head];
    q->head = (q->head + 1) % VM_KBC_QUEUE;
    q->count--;
    return b;
}

static void kbd_reset_device(struct vm *m)
{
    struct vm_kbc *s = &m->kbc;
    s->kbd_scan_enabled = 1;
    s->kbd_scancode_set = 2;
    s->kbd_leds = 0;
    queue_reset(&s->kbd);
}

static void mouse_defaults(struct vm_kbc *s)
{
    s->aux_sample_rate = 100;
    s->aux_resolution = 2;
    s->aux_status = 0;
}

void vm_kbc_reset(struct vm *m)
{
    struct vm_kbc *s = &m->kbc;
    *s = (struct vm_kbc){0};
    s->mode = MODE_KBD_INT | MODE_MOUSE_INT;
    s->status = STAT_CMD | STAT_UNLOCKED;
    s->outport = OUT_RESET | OUT_A20;
    s->kbd_cmd = 0;
    s->aux_cmd = 0;
    kbd_reset_device(m);
    mouse_defaults(s);
    s->aux_type = 0;
    vm_set_irq(m, 1, 0);
    vm_set_irq(m, 12, 0);
}

static void outport_write(struct vm *m, uint8_t val)
{
    m->kbc.outport = val;
    if (!(val & OUT_RESET))
        vm_request(m, VM_REQ_RESET);
}

static void keyboard_write(struct vm *m, uint8_t val)
{
    struct vm_kbc *s = &m->kbc;
    static const uint8_t translated_set[4] = {0, 0x43, 0x41, 0x3F};
    uint8_t cmd = s->kbd_cmd;
    s->kbd_cmd = 0;
    switch (cmd) {
    case 0xF0:  /* scancode set: 0 asks which */
        if (val == 0) {
            push(m, 0, ACK);
            push(m, 0, (s->mode & MODE_KCC) ? translated_set[s->kbd_scancode_set & 3]
                                             : s->kbd_scancode_set);
        } else if (val <= 3) {
            s->kbd_scancode_set = val;
            push(m, 0, ACK);
        } else {
            push(m, 0, RESEND);
        }
        return;
    case 0xED:
        s->kbd_leds = val;
        push(m, 0, ACK);
        return;
    case 0xF3:
    case 0xFC:
        push(m, 0, ACK);
        return;
    default:
        break;
    }
    switch (val) {
    case 0x00:
        push(m, 0, ACK);
        break;
    case 0x05:
        push(m, 0, RESEND);
        break;
    case 0xF2:  /* get ID: an MF2 keyboard */
        push(m, 0, ACK);
        push(m, 0, 0xAB);
        push(m, 0, (s->mode & MODE_KCC) ? 0x41 : 0x83);
        break;
    case 0xEE:
        push(m, 0, 0xEE);
        break;
    case 0xF4:
        s->kbd_scan_enabled = 1;
        push(m, 0, ACK);
        break;
    case 0xF0:
    case 0xED:
    case 0xF3:
    case 0xFC:
        s->kbd_cmd = val;
        push(m, 0, ACK);
        break;
    case 0xF5:
        kbd_reset_device(m);
        s->kbd_scan_enabled = 0;
        push(m, 0, ACK);
        break;
    case 0xF6:
        kbd_reset_device(m);
        push(m, 0, ACK);
        break;
    case 0xFF:
        kbd_reset_device(m);
        push(m, 0, ACK);
        push(m, 0, 0xAA);
        break;
    case 0xFA:
        push(m, 0, ACK);
        break;
    default:
        push(m, 0, RESEND);
        break;
    }
}

static void mouse_write(struct vm *m, uint8_t val)
{
    struct vm_kbc *s = &m->kbc;
    uint8_t cmd = s->aux_cmd;
    s->aux_cmd = 0;
    if (cmd == 0xF3) {  /* sample rate, with QEMU's IMPS/2 (200,100,80) and IMEX (200,200,80) */
        s->aux_sample_rate = val;
        switch (s->aux_detect_state) {
        default:
        case 0:
            if (val == 200)
                s->aux_detect_state = 1;
            break;
        case 1:
            s->aux_detect_state = val == 100 ? 2 : val == 200 ? 3 : 0;
            break;
        case 2:
            if (val == 80)
                s->aux_type = 3;
            s->aux_detect_state = 0;
            break;
        case 3:
            if (val == 80)
                s->aux_type = 4;
            s->aux_detect_state = 0;
            break;
        }
        push(m, 1, ACK);
        return;
    }
    if (cmd == 0xE8) {
        s->aux_resolution = val;
        push(m, 1, ACK);
        return;
    }
    if (s->aux_wrap) {
        if (val == 0xEC) {
            s->aux_wrap = 0;
            push(m, 1, ACK);
            return;
        }
        if (val != 0xFF) {
            push(m, 1, val);
            return;
        }
    }
    switch (val) {
    case 0xE6:
        s->aux_status &= ~0x10;
        push(m, 1, ACK);
        break;
    case 0xE7:
        s->aux_status |= 0x10;
        push(m, 1, ACK);
        break;
    case 0xEA:
        s->aux_status &= ~0x40;
        push(m, 1, ACK);
        break;
    case 0xEE:
        s->aux_wrap = 1;
        push(m, 1, ACK);
        break;
    case 0xF0:
        s->aux_status |= 0x40;
        push(m, 1, ACK);
        break;
    case 0xF2:
        push(m, 1, ACK);
        push(m, 1, s->aux_type);
        break;
    case 0xE8:
    case 0xF3:
        s->aux_cmd = val;
        push(m, 1, ACK);
        break;
    case 0xE9:
        push(m, 1, ACK);
        push(m, 1, s->aux_status);
        push(m, 1, s->aux_resolution);
        push(m, 1, s->aux_sample_rate);
        break;
    case 0xEB:  /* poll: a packet without motion */
        push(m, 1, ACK);
        push(m, 1, 0x08);
        push(m, 1, 0);
        push(m, 1, 0);
        if (s->aux_type == 3 || s->aux_type == 4)
            push(m, 1, 0);
        break;
    case 0xF4:
        s->aux_status |= 0x20;
        push(m, 1, ACK);
        break;
    case 0xF5:
        s->aux_status &= ~0x20;
        push(m, 1, ACK);
        break;
    case 0xF6:
        mouse_defaults(s);
        push(m, 1, ACK);
        break;
    case 0xFF:
        mouse_defaults(s);
        s->aux_type = 0;
        queue_reset(&s->aux);
        push(m, 1, ACK);
        push(m, 1, 0xAA);
        push(m, 1, s->aux_type);
        break;
    default:
        break;
    }
}

static void command(struct vm *m, uint8_t val)
{
    struct vm_kbc *s = &m->kbc;
    if ((val & 0xF0) == 0xF0)  /* pulse output bits 3-0: only bit 0 (reset) does anything */
        val = (val & 1) ? 0xFF : 0xFE;
    switch (val) {
    case 0x20:
        ctrl_reply(m, s->mode, 0);
        break;
    case 0x60:
    case 0xD1:
    case 0xD2:
    case 0xD3:
    case 0xD4:
        s->write_cmd = val;
        break;
    case 0xA7:
        s->mode |= MODE_DISABLE_MOUSE;
        break;
    case 0xA8:
        s->mode &= ~MODE_DISABLE_MOUSE;
        fill(m);
        break;
    case 0xA9:
    case 0xAB:
        ctrl_reply(m, 0x00, 0);
        break;
    case 0xAA:
        s->status |= STAT_SELFTEST;
        ctrl_reply(m, 0x55, 0);
        break;
    case 0xAD:
        s->mode |= MODE_DISABLE_KBD;
        set_lines(m);
        break;
    case 0xAE:
        s->mode &= ~MODE_DISABLE_KBD;
        fill(m);
        break;
    case 0xC0:
        ctrl_reply(m, 0x80, 0);
        break;
    case 0xD0:
        ctrl_reply(m, s->outport, 0);
        break;
    case 0xDD:
        s->outport &= ~OUT_A20;
        break;
    case 0xDF:
        s->outport |= OUT_A20;
        break;
    case 0xFE:
        vm_request(m, VM_REQ_RESET);
        break;
    default:
        break;
    }
}

static uint8_t read_data(struct vm *m)
{
    struct vm_kbc *s = &m->kbc;
    if (s->status & STAT_OBF) {
        s->status &= ~(STAT_OBF | STAT_MOUSE_OBF);
        s->outport &= ~(OUT_OBF | OUT_MOUSE_OBF);
        set_lines(m);  /* the line drops, so the next byte is a new edge (QEMU deasserts too) */
        switch (s->obsrc) {
        case SRC_KBD:
            s->obdata = pop(&s->kbd);
            break;
        case SRC_MOUSE:
            s->obdata = pop(&s->aux);
            break;
        default:
            break;  /* a controller reply was put in obdata when presented */
        }
        s->obsrc = SRC_NONE;
        fill(m);
    }
    return s->obdata;
}

static void write_data(struct vm *m, uint8_t val)
{
    struct vm_kbc *s = &m->kbc;
    uint8_t cmd = s->write_cmd;
    s->write_cmd = 0;
    switch (cmd) {
    case 0:
        keyboard_write(m, val);
        s->mode &= ~MODE_DISABLE_KBD;  /* talking to the keyboard enables its port */
        fill(m);
        break;
    case 0x60:
        s->mode = val;
        fill(m);
        break;
    case 0xD2:
        ctrl_reply(m, val, 0);
        break;
    case 0xD3:
        ctrl_reply(m, val, 1);
        break;
    case 0xD1:
        outport_write(m, val);
        break;
    case 0xD4:
        mouse_write(m, val);
        s->mode &= ~MODE_DISABLE_MOUSE;
        fill(m);
        break;
    default:
        break;
    }
}

uint32_t vm_kbc_read(struct vm *m, uint32_t port)
{
    if ((port & 4) == 0)
        return read_data(m);
    return m->kbc.status;
}

void vm_kbc_write(struct vm *m, uint32_t port, uint32_t value)
{
    uint8_t val = value & 0xFF;
    if ((port & 4) == 0) {
        m->kbc.status &= ~STAT_CMD;
        write_data(m, val);
    } else {
        m->kbc.status |= STAT_CMD;
        command(m, val);
    }
}
