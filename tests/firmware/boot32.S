/* A firmware for QEMU's pc machine that does nothing but the Linux 32-bit boot protocol, so
 * QEMU can boot a kernel the way vmigdb's machine does: no BIOS tables (ACPI, MP, DMI, PCI
 * BIOS, $PIR), no EBDA, an all-zero BDA, the zero page, command line, GDT, kernel and initrd
 * put in RAM by `-device loader` at the addresses vmigdb's loader uses
 * (stub/machine/boot/linux.py). shared/reference/linux-pc.md's "minimal machine" is this.
 *
 * QEMU maps the last 64 KiB of the -bios image at 0xF0000; the CPU starts at F000:FFF0. */
        .set ZERO_PAGE, 0x10000
        .set KERNEL, 0x100000
        .set BOOT_CS, 0x10
        .set BOOT_DS, 0x18

        .code16
        .section .text
image:                                  /* 0xF0000 */
        .globl start16
start16:
        cli
        cld
        xorw %ax, %ax
        movw %ax, %ds
        lgdtl %cs:gdt_descr - image      /* real mode: CS base 0xF0000 = image */
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $BOOT_CS, $start32

        .code32
start32:
        movw $BOOT_DS, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %fs
        movw %ax, %gs
        movw %ax, %ss
        movl $ZERO_PAGE, %esp
        movl $ZERO_PAGE, %esi
        xorl %ebx, %ebx
        xorl %ebp, %ebp
        xorl %edi, %edi
        xorl %eax, %eax
        xorl %ecx, %ecx
        xorl %edx, %edx
        ljmpl $BOOT_CS, $KERNEL

        .p2align 3
gdt:    .quad 0, 0
        .quad 0x00CF9B000000FFFF        /* 0x10 __BOOT_CS */
        .quad 0x00CF93000000FFFF        /* 0x18 __BOOT_DS */
gdt_end:
gdt_descr:
        .word gdt_end - gdt - 1
        .long gdt

        .code16
        .org 0xFFF0                     /* the reset vector: F000:FFF0 */
reset:
        ljmp $0xF000, $start16 - image
        .org 0x10000, 0
