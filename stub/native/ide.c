/*
 * The PIIX3 IDE function with no drives, as QEMU's pc machine always has it (hw/ide/piix.c,
 * hw/ide/core.c, hw/ide/pci.c): the legacy command and control blocks of both channels read
 * as an empty bus (0; nothing answers, so nothing is found), and the bus-master DMA registers
 * behind BAR 4 (command, status, PRD address per channel). Linux's ata_piix binds to it, reads
 * the bus-master status and prints its two PATA ports; with the channels' decode bits clear in
 * IDETIM it probes no drive, as on QEMU.
 */
#include "vm.h"

void vm_ide_reset(struct vm *m)
{
    for (int i = 0; i < 2; i++) {
        m->ide.bm[i].cmd = 0;
        m->ide.bm[i].status = 0;
        m->ide.bm[i].addr = 0;
    }
}

uint32_t vm_ide_read(struct vm *m, uint32_t port, int size)
{
    (void)port;
    (void)size;
    (void)m;
    return 0;  /* no drive on either channel: QEMU's ide_ioport_read/ide_status_read say 0 */
}

uint32_t vm_bmdma_read(struct vm *m, uint32_t port, int size)
{
    uint32_t off = port - m->pci.fn[m->ide.function].io_mapped;
    struct vm_bmdma *bm = &m->ide.bm[(off >> 3) & 1];
    switch (off & 7) {
    case 0:
        return bm->cmd;
    case 2:
        return bm->status;
    case 4:
        return size == 4 ? bm->addr : (bm->addr >> (8 * (off & 3))) & (size == 1 ? 0xFF : 0xFFFF);
    default:
        return size == 1 ? 0xFF : size == 2 ? 0xFFFF : 0xFFFFFFFFu;
    }
}

void vm_bmdma_write(struct vm *m, uint32_t port, int size, uint32_t value)
{
    uint32_t off = port - m->pci.fn[m->ide.function].io_mapped;
    struct vm_bmdma *bm = &m->ide.bm[(off >> 3) & 1];
    switch (off & 7) {
    case 0:
        bm->cmd = value & 0x09;  /* start/stop and direction; no drive ever transfers */
        break;
    case 2:  /* bits 5-6 drive DMA capable; 1 and 2 (error, interrupt) write-1-to-clear */
        bm->status = (uint8_t)((value & 0x60) | (bm->status & 1) | (bm->status & ~value & 0x06));
        break;
    case 4:
        if (size == 4)
            bm->addr = value & ~3u;
        break;
    default:
        break;
    }
}
