/*
 * Exit codes of the demo guest, written to isa-debug-exit (port 0xf4).
 *
 * QEMU (and our machine) report (code << 1) | 1, so code 0 ("all checks passed") is process
 * status 1. Every failing check has its own code so a red test names the check without a log.
 * Exceptions exit with EXIT_EXCEPTION_BASE + vector. Usable from C and from .S files.
 */
#ifndef GUEST_EXITCODES_H
#define GUEST_EXITCODES_H

#define EXIT_OK                 0x00
#define EXIT_BAD_MAGIC          0x01  /* not started by a multiboot v1 loader */
#define EXIT_NO_MEMORY          0x02  /* mem_upper below what the guest maps */
#define EXIT_POOL_EMPTY         0x03  /* page pool exhausted */
#define EXIT_NO_ROM             0x04  /* no VMI ROM found in 0xC0000..0xE0000 */
#define EXIT_ROM_LICENSE        0x05  /* licence string is not "GPL" / "GPL v2" */
#define EXIT_ROM_INIT           0x06  /* vmi_init returned non-zero */
#define EXIT_ROM_COPY           0x07  /* the copy of the ROM differs or has a bad checksum */
#define EXIT_PATCH              0x08  /* a patch site is too short or a relocation is unusable */
#define EXIT_IRQ_FLAG           0x09  /* IF not as expected after a cli/sti/save/restore site */
#define EXIT_CR                 0x0a  /* a Get/Set CRn or CLTS round trip failed */
#define EXIT_DT                 0x0b  /* GDT/IDT/LDT/TR round trip or descriptor read-back */
#define EXIT_KSTACK             0x0c  /* UpdateKernelStack did not set TSS.esp0 */
#define EXIT_CPUID              0x0d  /* CPUID through the ROM differs from native */
#define EXIT_MSR                0x0e  /* WRMSR/RDMSR round trip on SYSENTER_CS */
#define EXIT_TSC                0x0f  /* RDTSC went backwards */
#define EXIT_DR                 0x10  /* SetDR/GetDR round trip */
#define EXIT_IOPL               0x11  /* SetIOPLMask round trip */
#define EXIT_IRET               0x12  /* int $0x30 / built frame did not return through IRET */
#define EXIT_PTE_MAP            0x13  /* data read through a new mapping is wrong */
#define EXIT_PTE_VALUE          0x14  /* a page-table entry does not hold the expected value */
#define EXIT_AS_SWITCH          0x15  /* the second address space maps the wrong frames */
#define EXIT_PXE_LONG           0x16  /* SetPxELong wrote the wrong 64-bit value */
#define EXIT_RELOC              0x17  /* get_reloc answered a type the guest cannot use */
#define EXIT_SYSEXIT            0x18  /* the ring-3 round trip through SYSEXIT failed */
#define EXIT_UNEXPECTED_IRQ     0x19  /* an external interrupt arrived (the PIC is masked) */
#define EXIT_ASSERT             0x1a  /* internal consistency check */
#define EXIT_BATCH_MODEL        0x1b  /* the ROM's flush count differs from the guest's model */
#define EXIT_EXCEPTION_BASE     0x40  /* + vector 0..31: an unexpected CPU exception */

#endif
