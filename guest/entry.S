/*
 * Demo VMI guest: multiboot v1 header, entry, exception and interrupt stubs, and the two patch
 * sites that never return (IRET, SYSEXIT), which must be in assembly.
 *
 * Patch-site records use Linux's 8-byte .parainstructions layout with a pv-op slot as the type
 * (PARAVIRT_PATCH(pv_cpu_ops.iret), see paravirt.h and pvslots.h). VMI numbers come from the
 * generated vmi_abi.inc.
 */
#include "layout.h"
#include "exitcodes.h"
#include "pvslots.h"
#include "vmi_abi.inc"

#define MULTIBOOT_MAGIC 0x1BADB002
#define MULTIBOOT_FLAGS 0x00000003      /* page-align modules, provide memory info */
#define BOOT_STACK_SIZE 16384
#define CLBR_ANY 7                      /* Linux 2.6.21 clobber mask (informational) */

/* PV_SITE_ASM type, insn1[, insn2]: the native instructions NOP-padded to 5 bytes, plus the record. */
.macro PV_SITE_ASM type, insn1, insn2
771:	\insn1
	\insn2
772:	.skip 5-(772b-771b), 0x90
773:
	.pushsection .parainstructions, "a"
	.balign 4
	.long 771b
	.byte \type
	.byte 773b-771b
	.short CLBR_ANY
	.popsection
.endm

	.section .multiboot, "a"
	.balign 4
multiboot_header:
	.long MULTIBOOT_MAGIC
	.long MULTIBOOT_FLAGS
	.long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

	.text
	.globl _start
	.type _start, @function
_start:
	/* EAX = 0x2BADB002, EBX = multiboot info; paging off, IF = 0, loader's GDT. */
	cli
	cld
	mov	%eax, %esi
	/* Zero .bss (QEMU's loader does; a minimal loader might not). Nothing is on the stack
	 * yet, and the boot stack itself lives in .bss. */
	mov	$__bss_start, %edi
	mov	$_end, %ecx
	sub	%edi, %ecx
	xor	%eax, %eax
	rep stosb
	mov	$boot_stack_top, %esp
	xor	%ebp, %ebp
	push	%ebx			/* struct multiboot_info * */
	push	%esi			/* magic */
	call	kmain
	push	$EXIT_ASSERT		/* kmain never returns */
	call	guest_exit
	.size _start, . - _start

/* ---- CPU exceptions 0..31: push a dummy error code where the CPU pushes none ------------- */

.macro EXC_NOERR vec
	.balign 8
exc_\vec:
	pushl	$0
	pushl	$\vec
	jmp	exc_common
.endm
.macro EXC_ERR vec
	.balign 8
exc_\vec:
	pushl	$\vec
	jmp	exc_common
.endm

	EXC_NOERR 0
	EXC_NOERR 1
	EXC_NOERR 2
	EXC_NOERR 3
	EXC_NOERR 4
	EXC_NOERR 5
	EXC_NOERR 6
	EXC_NOERR 7
	EXC_ERR   8
	EXC_NOERR 9
	EXC_ERR   10
	EXC_ERR   11
	EXC_ERR   12
	EXC_ERR   13
	EXC_ERR   14
	EXC_NOERR 15
	EXC_NOERR 16
	EXC_ERR   17
	EXC_NOERR 18
	EXC_NOERR 19
	EXC_NOERR 20
	EXC_ERR   21
	EXC_NOERR 22
	EXC_NOERR 23
	EXC_NOERR 24
	EXC_NOERR 25
	EXC_NOERR 26
	EXC_NOERR 27
	EXC_NOERR 28
	EXC_ERR   29
	EXC_ERR   30
	EXC_NOERR 31

/* Frame for exception_handler(): pushal registers, vector, error code, eip, cs, eflags. */
exc_common:
	pushal
	mov	$KERNEL_DS, %eax
	mov	%eax, %ds
	mov	%eax, %es
	push	%esp
	call	exception_handler	/* prints and exits; never returns */
1:	cli
	hlt
	jmp	1b

	.section .rodata
	.balign 4
	.globl exception_stubs
exception_stubs:
	.irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long exc_\vec
	.endr
	.text

/* ---- external interrupts 0x20..0x2f: the PIC is masked, so any of them is a failure ------- */
	.globl irq_unexpected
irq_unexpected:
	pushl	$0
	pushl	$-1
	jmp	exc_common

/* ---- int $VEC_SELFTEST: count, remember the interrupted CS, return through the IRET site --- */
	.globl selftest_interrupt
selftest_interrupt:
	push	%eax
	incl	selftest_count
	mov	8(%esp), %eax		/* frame: eip, cs, eflags above the saved eax */
	mov	%eax, selftest_cs
	pop	%eax
	jmp	pv_iret

/* pv_iret: the guest's only IRET, a patch site (slot pv_cpu_ops.iret). Patched to "call" the
 * ROM's IRET, which drops the return address and irets, so the frame is the same either way. */
	.globl pv_iret
pv_iret:
	incl	pv_hits + 4 * VMI_CALL_IRET
	PV_SITE_ASM PV_SLOT_IRET, iret

/* u32 iret_built_frame(void): build an interrupt frame by hand (EFLAGS, CS, EIP) and return
 * to 1: through pv_iret; returns 1. */
	.globl iret_built_frame
iret_built_frame:
	pushfl
	pushl	%cs
	pushl	$1f
	jmp	pv_iret
1:	mov	$1, %eax
	ret

/* ---- SYSEXIT round trip ---------------------------------------------------------------------
 * u32 sysexit_roundtrip(u32 user_eip, u32 user_esp): leave ring 0 through the SYSEXIT patch
 * site (native: sti; sysexit) to user code that does int $VEC_SYSCALL with EAX = a value; the
 * trap gate lands in syscall_entry on TSS.esp0, which restores the saved kernel stack and
 * returns that EAX from this function. */
	.globl sysexit_roundtrip
sysexit_roundtrip:
	push	%ebp
	push	%ebx
	push	%esi
	push	%edi
	mov	%esp, sysexit_saved_esp
	mov	20(%esp), %edx		/* user EIP */
	mov	24(%esp), %ecx		/* user ESP */
	incl	pv_hits + 4 * VMI_CALL_SYSEXIT
	PV_SITE_ASM PV_SLOT_IRQ_ENABLE_SYSEXIT, sti, sysexit
	ud2

	.globl syscall_entry
syscall_entry:
	/* On the TSS.esp0 stack: eip, cs, eflags, esp, ss of the user code. DS is still the
	 * kernel's (SYSEXIT does not change it). */
	mov	%eax, syscall_eax
	mov	4(%esp), %eax
	mov	%eax, syscall_cs
	mov	sysexit_saved_esp, %esp
	mov	syscall_eax, %eax
	pop	%edi
	pop	%esi
	pop	%ebx
	pop	%ebp
	ret

/* The user program, copied to a user page: says hello through int $VEC_SYSCALL. */
	.globl user_code_start, user_code_end
user_code_start:
	mov	$0x600d, %eax
	int	$VEC_SYSCALL
	ud2
user_code_end:

	.bss
	.balign 16
boot_stack:
	.skip BOOT_STACK_SIZE
	.globl boot_stack_top
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
