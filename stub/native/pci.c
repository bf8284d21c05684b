/*
 * PCI configuration mechanism #1 (address 0xCF8, data 0xCFC-0xCFF) on bus 0, as QEMU's
 * hw/pci/pci_host.c answers it: the address register takes dword writes only (Linux's
 * pci_check_type1 writes a byte to 0xCFB first and must read back its own dword), data accesses
 * of any width reach the selected function's 256-byte space through its write mask, and absent
 * functions read all ones. The functions themselves (the i440FX host bridge, the PIIX3 ISA
 * bridge, the PIIX3 IDE function) are described from Python (stub/machine/devices/pci.py); an
 * I/O BAR goes onto the port bus when Linux sets it and turns on I/O decoding.
 */
#include <string.h>

#include "vm.h"

void vm_pci_reset(struct vm *m)
{
    m->pci.address = 0;
    for (int i = 0; i < VM_PCI_FUNCTIONS; i++) {
        struct vm_pci_function *f = &m->pci.fn[i];
        if (f->io_mapped)
            for (uint32_t p = 0; p < f->io_size; p++)
                m->port_owner[(f->io_mapped + p) & 0xFFFF] = VM_DEV_NONE;
        f->io_mapped = 0;
    }
}

/* Put each function's I/O BAR on the port bus where its base register and command register
 * say (I/O decode on, base set), and take it off where it was: Linux assigns BARs itself when
 * no firmware did. */
void vm_pci_map_bars(struct vm *m)
{
    for (int i = 0; i < VM_PCI_FUNCTIONS; i++) {
        struct vm_pci_function *f = &m->pci.fn[i];
        if (f->devfn == 0xFF || !f->io_bar)
            continue;
        uint32_t bar = f->config[f->io_bar] | (f->config[f->io_bar + 1] << 8)
                       | ((uint32_t)f->config[f->io_bar + 2] << 16)
                       | ((uint32_t)f->config[f->io_bar + 3] << 24);
        uint32_t base = bar & 0xFFFCu;
        uint32_t want = ((f->config[4] & 1) && base && bar >> 16 == 0) ? base : 0;
        if (want == f->io_mapped)
            continue;
        for (uint32_t p = 0; f->io_mapped && p < f->io_size; p++)
            if (m->port_owner[(f->io_mapped + p) & 0xFFFF] == f->io_owner)
                m->port_owner[(f->io_mapped + p) & 0xFFFF] = VM_DEV_NONE;
        for (uint32_t p = 0; want && p < f->io_size; p++)
            if (m->port_owner[(want + p) & 0xFFFF] == VM_DEV_NONE)
                m->port_owner[(want + p) & 0xFFFF] = f->io_owner;
        f->io_mapped = want;
    }
}

int vm_pci_add(struct vm *m, uint8_t devfn, const uint8_t *config, const uint8_t *wmask)
{
    for (int i = 0; i < VM_PCI_FUNCTIONS; i++) {
        struct vm_pci_function *f = &m->pci.fn[i];
        if (f->devfn == 0xFF || f->devfn == devfn) {
            f->devfn = devfn;
            memcpy(f->config, config, sizeof f->config);
            memcpy(f->wmask, wmask, sizeof f->wmask);
            return 0;
        }
    }
    return -1;
}

static struct vm_pci_function *selected(struct vm *m)
{
    uint32_t a = m->pci.address;
    if (!(a & 0x80000000u) || ((a >> 16) & 0xFF) != 0)
        return NULL;
    uint8_t devfn = (a >> 8) & 0xFF;
    for (int i = 0; i < VM_PCI_FUNCTIONS; i++)
        if (m->pci.fn[i].devfn == devfn)
            return &m->pci.fn[i];
    return NULL;
}

uint32_t vm_pci_read(struct vm *m, uint32_t port, int size)
{
    uint32_t ones = size == 1 ? 0xFF : size == 2 ? 0xFFFF : 0xFFFFFFFFu;
    if (port < 0xCFC)
        return port == 0xCF8 && size == 4 ? m->pci.address : ones;
    struct vm_pci_function *f = selected(m);
    if (f == NULL)
        return ones;
    uint32_t reg = (m->pci.address & 0xFC) + (port & 3), v = 0;
    for (int i = 0; i < size && reg + i < 256; i++)
        v |= (uint32_t)f->config[reg + i] << (8 * i);
    return v;
}

void vm_pci_write(struct vm *m, uint32_t port, int size, uint32_t value)
{
    if (port < 0xCFC) {
        if (port == 0xCF8 && size == 4)
            m->pci.address = value;
        return;
    }
    struct vm_pci_function *f = selected(m);
    if (f == NULL)
        return;
    uint32_t reg = (m->pci.address & 0xFC) + (port & 3);
    for (int i = 0; i < size && reg + i < 256; i++) {
        uint8_t b = (value >> (8 * i)) & 0xFF, w = f->wmask[reg + i];
        f->config[reg + i] = (uint8_t)((f->config[reg + i] & ~w) | (b & w));
    }
    if (f->io_bar && (reg < 8 || (reg >= f->io_bar && reg < f->io_bar + 4u)))
        vm_pci_map_bars(m);
}
