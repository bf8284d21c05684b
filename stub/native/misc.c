/*
 * The small legacy ports, as QEMU's pc machine has them: port 0x92 (System Control Port A: A20
 * in bit 1, a rising bit 0 resets; Q:hw/i386/port92.c), the two 8237 DMA controllers and their
 * page registers (accepted and ignored: nothing here does ISA DMA), port 0x80 (the POST/delay
 * port: writes are a delay), and isa-debug-exit at 0xF4-0xF7 (Q:hw/misc/debugexit.c: the value
 * written ends the run, QEMU's exit status being (value << 1) | 1).
 */
#include "vm.h"

void vm_misc_reset(struct vm *m)
{
    m->misc.port92 = 0;
    m->misc.dma_flipflop = 0;
}

uint32_t vm_misc_read(struct vm *m, uint32_t owner, uint32_t port, int size)
{
    uint32_t ones = size == 1 ? 0xFF : size == 2 ? 0xFFFF : 0xFFFFFFFFu;
    switch (owner) {
    case VM_DEV_PORT92:
        return m->misc.port92;
    case VM_DEV_DMA:
        (void)port;
        return 0;
    default:
        return ones;  /* port 0x80 and isa-debug-exit read as unassigned */
    }
}

void vm_misc_write(struct vm *m, uint32_t owner, uint32_t port, int size, uint32_t value)
{
    switch (owner) {
    case VM_DEV_PORT92: {
        uint8_t old = m->misc.port92;
        m->misc.port92 = value & 0xFE;  /* bit 0 reads back as 0 after the pulse */
        if ((value & 1) && !(old & 1))
            vm_request(m, VM_REQ_RESET);
        break;
    }
    case VM_DEV_DEBUG_EXIT:
        if (!(m->requests & VM_REQ_EXIT)) {  /* the first write wins, as QEMU exits at once */
            m->exit_code = (int32_t)(size == 1 ? value & 0xFF : size == 2 ? value & 0xFFFF
                                                                           : value);
            vm_request(m, VM_REQ_EXIT);
        }
        break;
    case VM_DEV_DMA:
        if ((port & 0xFF) == 0x0C || port == 0xD8)
            m->misc.dma_flipflop = 0;
        break;
    default:
        (void)port;
        break;  /* port 0x80: a delay */
    }
}
