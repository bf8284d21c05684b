/* A minimal 2 KiB VMI-shaped option ROM for the machine tests: 55 AA, "cVmi" API 3.0, a PCI
 * data structure and a GPL licence, so vmigdb.rominfo.check_rom accepts it. The test sets the
 * checksum byte (the last one). Offsets follow vmigdb/abi.py's VROM_HEADER. */
        .code16
        .section .text
        .byte 0x55, 0xaa, 4         /* rom_signature, rom_length (512-byte blocks) */
        jmp init                    /* rom_entry */
        .org 0x08
        .ascii "cVmi"               /* vrom_signature */
        .byte 0, 3                  /* api_version_min, api_version_maj */
        .org 0x16
        .word licence               /* license_offs */
        .word pcir                  /* pci_header_offs */
        .org 0x90
init:   lret
        .code32
        .org 0xa0
        .globl rom_fn
rom_fn: movl $0x1234, %eax          /* the tests call ROM+0xa0 */
        ret
        .p2align 2
pcir:   .ascii "PCIR"
        .word 0x15ad, 0x0801, 0, 24
        .byte 0, 0x80, 0, 0
        .word 4
        .byte 0, 1, 0, 0x80
        .word 0
licence: .asciz "GPL"
        .org 0x7ff
        .byte 0                     /* checksum, set by the test */
