/*
 * The pv-op slots that assembly needs as plain numbers: entry.S records its IRET and SYSEXIT
 * patch sites with them. Everywhere else the slot is PARAVIRT_PATCH(op), computed from struct
 * paravirt_patch_template (paravirt.h); vmi.c checks these two against it at compile time, so
 * a change to the struct that moves them fails the build instead of mislabelling the sites.
 */
#ifndef GUEST_PVSLOTS_H
#define GUEST_PVSLOTS_H

#define PV_SLOT_IRQ_ENABLE_SYSEXIT 9    /* PARAVIRT_PATCH(pv_cpu_ops.irq_enable_sysexit) */
#define PV_SLOT_IRET 10                 /* PARAVIRT_PATCH(pv_cpu_ops.iret) */

#endif
