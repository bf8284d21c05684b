/*
 * vmigdb identity VMI ROM: VMware VMI API 3.0 as Linux 2.6.21-2.6.36 calls it, with every call
 * implemented by the native instruction it stands for, plus one non-native feature: PTE updates
 * flagged VMI_PAGE_DEFER are queued in lazy MMU mode and applied in order at the next flush,
 * which the ROM announces on ROM_FLUSH_PORT so the tracer sees whole batches.
 *
 * How it is called (shared/reference/vmi-abi.md sections 2-4):
 *  - SeaBIOS far-calls offset 3 in real mode once at POST (rom_init16: returns at once).
 *  - The guest near-calls the jump points at VROM_VMI_INIT and VROM_GET_RELOC, then calls the
 *    entries get_reloc hands out, in place, at whatever linear address the ROM is mapped
 *    (Linux: PAGE_OFFSET + physical, e.g. 0xC00C0000). So all 32-bit code is position
 *    independent: the image is linked at 0 and GET_BASE finds the run-time base with call/pop;
 *    `sym(%base)` then addresses anything in the image.
 *  - Convention: regparm(3), EAX EDX ECX then [esp+4] [esp+8] at entry, caller pops; 64-bit
 *    results in EDX:EAX. Unless a slot says otherwise it may clobber EAX ECX EDX and flags and
 *    preserves EBX ESI EDI EBP (abi.CALLS holds each call's clobbers).
 *  - The state sits inside the image after the code (state_offs): struct vmi_batch, the
 *    ROM_QUEUE_LEN queue entries, then the private words rom_batched, rom_lazy_mode,
 *    rom_queued and rom_probe (ELF symbols). If the image is read-only (ROM in write-protected
 *    shadow RAM, as under SeaBIOS), vmi_init finds that out and the ROM never queues: every
 *    update is written directly, which is still exactly the native behaviour.
 *
 * Every VMI and vmigdb number comes from vmi_abi.inc, generated from vmigdb/abi.py; the only
 * numbers written here are x86 (below) and PCI data-structure ones (in rom_pci_header).
 *
 * Debugging: each call's body is the symbol vmi_<Call> (VMI_ENTRY), and every 32-bit routine
 * carries DWARF call-frame information (.cfi_* directives, emitted into .debug_frame, which
 * exists only in vmi_rom.elf: the image is the ELF's allocated sections). Every push, pop and
 * stack adjustment is described where it happens, so gdb, given the ELF at the ROM's live
 * address (`vmi symbols`), unwinds from any instruction of an entry into the guest's frames.
 */

	.include "vmi_abi.inc"

	.cfi_sections .debug_frame

/* x86 architecture, not VMI. */
	.equ EFLAGS_IF, 0x200		/* interrupt enable flag */
	.equ EFLAGS_IOPL, 0x3000	/* I/O privilege level field */
	.equ CR4_PGE, 0x80		/* global pages enable */
	.equ SELECTOR_INDEX, 0xfff8	/* selector without TI and RPL */
	.equ PUSHAL_SIZE, 32		/* bytes pushed by pushal */
	.equ KBC_COMMAND_PORT, 0x64	/* 8042 command port */
	.equ KBC_PULSE_RESET, 0xfe	/* 8042 command: pulse the CPU reset line */
	.equ IO_DELAY_PORT, 0x80	/* POST code port, the traditional I/O delay */
	.equ ISA_DEBUG_EXIT_PORT, 0xf4	/* QEMU isa-debug-exit (iobase=0xf4): exit status (v<<1)|1 */
	.equ DR_SLOT_SIZE, 8		/* bytes per SetDR/GetDR dispatch slot */

/* ---- helpers ------------------------------------------------------------------------------ */

/* GET_BASE reg: reg = linear address of offset 0 of the image (the image is linked at 0).
 * The call pushes its return address for one instruction (described to the unwinder). */
	.macro GET_BASE reg
	call	9f
9:	.cfi_adjust_cfa_offset 4
	pop	\reg
	.cfi_adjust_cfa_offset -4
	sub	$9b, \reg
	.endm

/* FLUSH_QUEUE trigger: apply the queued PTE updates, if any, announcing FlushTrigger `trigger`.
 * Preserves every general register; clobbers flags. */
	.macro FLUSH_QUEUE trigger
	push	$FLUSH_TRIGGER_\trigger
	.cfi_adjust_cfa_offset 4
	call	rom_flush			/* pops the trigger (ret $4) */
	.cfi_adjust_cfa_offset -4
	.endm

/* VMI_ENTRY name: start the body of VMI call `name` (symbol vmi_<name>, listed in call_table;
 * vmigdb.romsyms.entry_symbol states the same rule). Opens its call-frame information: at entry
 * the CFA is ESP + 4, the return address at ESP. */
	.macro VMI_ENTRY name
	.text
	.balign 16
	.globl	vmi_\name
	.type	vmi_\name, @function
vmi_\name:
	.cfi_startproc
	.endm

	.macro VMI_END name
	.cfi_endproc
	.size	vmi_\name, . - vmi_\name
	.endm

/* NATIVE name, insn: a call that is its native instruction followed by ret. */
	.macro NATIVE name, insn:vararg
	VMI_ENTRY \name
	\insn
	ret
	VMI_END \name
	.endm

/* ---- vrom_header (Linux's struct vrom_header, packed, 144 bytes) ---------------------------- */

	.section .header, "ax"
	.globl	rom_start
rom_start:
	.code16
	.org	VROM_ROM_SIGNATURE
	.word	ROM_SIGNATURE
	.org	VROM_ROM_LENGTH
	.byte	rom_blocks			/* image size / ROM_BLOCK, from vmi_rom.ld */
	.org	VROM_ROM_ENTRY
	jmp	rom_init16			/* the BIOS far-calls here in real mode */
	.org	VROM_VROM_SIGNATURE
	.long	VMI_SIGNATURE			/* "cVmi" */
	.org	VROM_API_VERSION_MIN
	.byte	VMI_API_REV_MINOR
	.org	VROM_API_VERSION_MAJ
	.byte	VMI_API_REV_MAJOR
	.org	VROM_JUMP_SLOTS
	.byte	(VROM_HEADER_SIZE - VROM_VMI_INIT) / (VROM_GET_RELOC - VROM_VMI_INIT)
	.org	VROM_VIRTUAL_TOP
	.long	0				/* reserve no linear space: the identity ROM needs none */
	.org	VROM_LICENSE_OFFS
	.word	rom_license
	.org	VROM_PCI_HEADER_OFFS
	.word	rom_pci_header
	.org	VROM_PNP_HEADER_OFFS
	.word	0				/* no PnP header: SeaBIOS then runs the init entry */
	.org	VMIGDB_CALL_TABLE_OFFS
	.word	call_table			/* vmigdb: per-call entry offsets */
	.org	VMIGDB_STATE_OFFS
	.word	rom_state			/* vmigdb: the writable state (struct vmi_batch first) */
	.org	VMIGDB_VMIGDB_MAGIC
	.long	ROM_VMIGDB_MAGIC		/* vmigdb: "vgdb", says the two fields above are ours */

	.code32
	/* Jump points: Linux near-calls the address of these 8-byte fields. */
	.org	VROM_VMI_INIT
	.globl	rom_vmi_init_jump
rom_vmi_init_jump:
	.cfi_startproc
	jmp	rom_vmi_init
	.cfi_endproc
	.org	VROM_GET_RELOC
	.globl	rom_get_reloc_jump
rom_get_reloc_jump:
	.cfi_startproc
	jmp	rom_get_reloc
	.cfi_endproc
	.org	VROM_HEADER_SIZE

/* BIOS init entry (real mode, far call): nothing to set up; AX = 0, far return. */
	.code16
	.globl	rom_init16
rom_init16:
	xor	%ax, %ax
	lret
	.code32

/* ---- read-only data ------------------------------------------------------------------------ */

	.section .rodata, "a"

/* PCI data structure ("PCIR", Linux's struct pci_header). Linux checks vendor/device; SeaBIOS
 * ignores it for a ROM loaded with -option-rom. */
	.balign	4
	.globl	rom_pci_header
rom_pci_header:
	.ascii	"PCIR"
	.org	rom_pci_header + PCI_VENDORID
	.word	PCI_VENDOR_ID_VMWARE
	.org	rom_pci_header + PCI_DEVICEID
	.word	PCI_DEVICE_ID_VMWARE_VMI
	.org	rom_pci_header + PCI_VPDDATA
	.word	0
	.org	rom_pci_header + PCI_SIZE
	.word	PCI_HEADER_SIZE
	.org	rom_pci_header + PCI_REV
	.byte	0				/* PCI data structure revision 0 (PCI 2.x) */
	/* The 3-byte class code: the PCI firmware spec stores it interface, subclass, base class
	 * (Linux names these bytes class, subclass, interface). 05 00 00 = memory controller,
	 * RAM, which is what an ESX VM with VMI shows. */
	.org	rom_pci_header + PCI_CLASS
	.byte	0x00				/* programming interface */
	.org	rom_pci_header + PCI_SUBCLASS
	.byte	0x00				/* subclass: RAM */
	.org	rom_pci_header + PCI_INTERFACE
	.byte	0x05				/* base class: memory controller */
	.org	rom_pci_header + PCI_CHUNKS
	.word	rom_blocks			/* image length in ROM_BLOCK units */
	.org	rom_pci_header + PCI_ROM_VERSION_MIN
	.byte	0				/* ROM version 1.0 */
	.org	rom_pci_header + PCI_ROM_VERSION_MAJ
	.byte	1
	.org	rom_pci_header + PCI_CODETYPE
	.byte	0				/* x86 (PC-AT compatible) code */
	.org	rom_pci_header + PCI_LASTROM
	.byte	0x80				/* indicator bit 7: last image */
	.org	rom_pci_header + PCI_HEADER_SIZE

/* Linux refuses a ROM whose licence is not exactly "GPL" or "GPL v2". */
	.globl	rom_license
rom_license:
	.asciz	"GPL v2"

/* call_table[n]: u16 offset of the entry of VMI call n, 0 = not implemented (get_reloc answers
 * VMI_RELOCATION_NONE). An entry is filled only if abi.IDENTITY_ROM_CALLS lists the call
 * (ROM_IMPLEMENTS_<name>); a listed call without a body fails to link. */
	.macro TABLE name
	.org	call_table + 2 * VMI_CALL_\name
	.ifdef ROM_IMPLEMENTS_\name
	.word	vmi_\name
	.else
	.word	0
	.endif
	.endm

	.balign	2
	.globl	call_table
call_table:
	TABLE CPUID
	TABLE WRMSR
	TABLE RDMSR
	TABLE SetGDT
	TABLE SetLDT
	TABLE SetIDT
	TABLE SetTR
	TABLE GetGDT
	TABLE GetLDT
	TABLE GetIDT
	TABLE GetTR
	TABLE WriteGDTEntry
	TABLE WriteLDTEntry
	TABLE WriteIDTEntry
	TABLE UpdateKernelStack
	TABLE SetCR0
	TABLE SetCR2
	TABLE SetCR3
	TABLE SetCR4
	TABLE GetCR0
	TABLE GetCR2
	TABLE GetCR3
	TABLE GetCR4
	TABLE WBINVD
	TABLE SetDR
	TABLE GetDR
	TABLE RDPMC
	TABLE RDTSC
	TABLE CLTS
	TABLE EnableInterrupts
	TABLE DisableInterrupts
	TABLE GetInterruptMask
	TABLE SetInterruptMask
	TABLE IRET
	TABLE SYSEXIT
	TABLE Halt
	TABLE Reboot
	TABLE Shutdown
	TABLE SetPxE
	TABLE SetPxELong
	TABLE UpdatePxE
	TABLE UpdatePxELong
	TABLE MachineToPhysical
	TABLE PhysicalToMachine
	TABLE AllocatePage
	TABLE ReleasePage
	TABLE InvalPage
	TABLE FlushTLB
	TABLE SetLinearMapping
	TABLE SetIOPLMask
	TABLE SetInitialAPState
	TABLE APICWrite
	TABLE APICRead
	TABLE IODelay
	TABLE GetCycleFrequency
	TABLE GetCycleCounter
	TABLE SetAlarm
	TABLE CancelAlarm
	TABLE GetWallclockTime
	TABLE WallclockUpdated
	TABLE SetLazyMode
	.org	call_table + 2 * VMI_CALL_TABLE_LEN

/* ---- writable state (zero in the image; see vmi_rom.ld) ------------------------------------- */

	.section .state, "aw", @progbits
	.balign	64
	.globl	rom_state, rom_batch, rom_entries, rom_batched, rom_lazy_mode, rom_queued, rom_probe
rom_state:
rom_batch:			/* struct vmi_batch: the last flush, as ROM_FLUSH_PORT announced it */
	.skip	VMI_BATCH_SIZE
rom_entries:			/* struct vmi_batch_entry[ROM_QUEUE_LEN], applied in order */
	.skip	VMI_BATCH_ENTRY_SIZE * ROM_QUEUE_LEN
rom_batched:			/* u32: 1 once vmi_init found the state writable */
	.skip	4
rom_lazy_mode:			/* u32: the last SetLazyMode mode (kept only when batched) */
	.skip	4
rom_queued:			/* u32: updates queued in rom_entries, not yet applied */
	.skip	4
rom_probe:			/* u32: scratch word vmi_init writes to test writability */
	.skip	4
	.globl	rom_state_end
rom_state_end:

/* ---- jump-point bodies ---------------------------------------------------------------------- */

	.text

/* VMI_Init (jump point at VROM_VMI_INIT): in nothing; out EAX = 0 (success).
 * Finds out whether the state is writable (write a pattern, read it back, restore); only then
 * turns batching on. Announces itself with outl on ROM_INIT_PORT, EAX = linear base, ORed with
 * ROM_INIT_BATCHED when batching. Clobbers EAX ECX EDX flags. */
	.balign	16
	.globl	rom_vmi_init
	.type	rom_vmi_init, @function
rom_vmi_init:
	.cfi_startproc
	GET_BASE %ecx
	mov	rom_probe(%ecx), %edx		/* original value */
	mov	%edx, %eax
	not	%eax				/* pattern: differs from it in every bit */
	mov	%eax, rom_probe(%ecx)
	cmp	rom_probe(%ecx), %eax		/* read back: equal only if the write landed */
	mov	%edx, rom_probe(%ecx)		/* restore (dropped by a read-only image) */
	mov	%ecx, %eax
	jne	1f
	movl	$1, rom_batched(%ecx)
	movl	$VMI_LAZY_MODE_OFF, rom_lazy_mode(%ecx)
	movl	$ROM_BATCH_MAGIC, rom_batch+BATCH_MAGIC(%ecx)
	movl	$0, rom_queued(%ecx)
	or	$ROM_INIT_BATCHED, %eax
1:	mov	$ROM_INIT_PORT, %edx
	.globl	rom_init_announce
rom_init_announce:
	outl	%eax, (%dx)
	xor	%eax, %eax
	ret
	.cfi_endproc
	.size	rom_vmi_init, . - rom_vmi_init

/* VMI_GetRelocationInfo (jump point at VROM_GET_RELOC): EAX = call number ->
 * EDX:EAX = struct vmi_relocation_info: EAX = linear entry address, DL = relocation type
 * (CALL_REL for an implemented call, NONE with EAX = 0 otherwise).
 * Clobbers EAX ECX EDX flags only. */
	.balign	16
	.globl	rom_get_reloc
	.type	rom_get_reloc, @function
rom_get_reloc:
	.cfi_startproc
	cmp	$VMI_CALL_TABLE_LEN, %eax
	jae	1f				/* out of range (unsigned: negatives too) */
	GET_BASE %ecx
	movzwl	call_table(%ecx,%eax,2), %eax
	test	%eax, %eax
	jz	1f
	add	%ecx, %eax
	mov	$VMI_RELOCATION_CALL_REL, %edx
	ret
1:	xor	%eax, %eax
	mov	$VMI_RELOCATION_NONE, %edx
	ret
	.cfi_endproc
	.size	rom_get_reloc, . - rom_get_reloc

/* ---- the PTE queue -------------------------------------------------------------------------- */

/* rom_flush: [esp+4] = FlushTrigger (popped by `ret $4`). If updates are queued, write each in
 * order (long: hi then lo; notify: nothing), do ONE TLB action, fill the vmi_batch header,
 * announce it with one outl on ROM_FLUSH_PORT (EAX = linear address of the header), then empty
 * the queue (rom_queued = 0; the header and entries keep describing this batch until the next
 * update is queued over them). TLB action: NONE when the trigger (FlushTLB, SetCR3) flushes by itself; INVLPG of
 * each VA when every entry carries VMI_PAGE_CURRENT_AS and there are at most ROM_INVLPG_MAX;
 * FULL (CR3 reload) otherwise. Preserves every general register; clobbers flags. */
	.balign	16
	.globl	rom_flush
	.type	rom_flush, @function
rom_flush:
	.cfi_startproc
	pushal					/* eax ecx edx ebx esp ebp esi edi, edi lowest */
	.cfi_adjust_cfa_offset PUSHAL_SIZE
	.cfi_rel_offset %edi, 0
	.cfi_rel_offset %esi, 4
	.cfi_rel_offset %ebp, 8
	.cfi_rel_offset %ebx, 16
	pushf
	.cfi_adjust_cfa_offset 4
	cli					/* an interrupt handler's PTE update must not */
	GET_BASE %ebx				/* see a half-applied queue */
	mov	rom_queued(%ebx), %ecx
	test	%ecx, %ecx
	jz	.Lflush_out			/* nothing queued (always so when not batched) */
	mov	4+PUSHAL_SIZE+4(%esp), %ebp	/* trigger, above EFLAGS, the saves, the return */

	/* 1. apply the updates in queue order */
	lea	rom_entries(%ebx), %esi
	mov	%ecx, %edx
.Lflush_write:
	mov	BATCH_ENTRY_FLAGS(%esi), %eax
	test	$ENTRY_NOTIFY, %eax
	jnz	2f				/* UpdatePxE: the guest already wrote it */
	mov	BATCH_ENTRY_PTEP(%esi), %edi
	test	$ENTRY_LONG, %eax
	jz	1f
	mov	BATCH_ENTRY_HI(%esi), %eax	/* PAE: high dword first, like set_64bit */
	mov	%eax, 4(%edi)
1:	mov	BATCH_ENTRY_LO(%esi), %eax
	mov	%eax, (%edi)
2:	add	$VMI_BATCH_ENTRY_SIZE, %esi
	dec	%edx
	jnz	.Lflush_write

	/* 2. one TLB action */
	mov	$TLB_ACTION_NONE, %edi
	cmp	$FLUSH_TRIGGER_FlushTLB, %ebp
	je	.Lflush_announce
	cmp	$FLUSH_TRIGGER_SetCR3, %ebp
	je	.Lflush_announce
	mov	$TLB_ACTION_FULL, %edi
	cmp	$ROM_INVLPG_MAX, %ecx
	ja	.Lflush_full
	lea	rom_entries(%ebx), %esi
	mov	%ecx, %edx
1:	testl	$VMI_PAGE_CURRENT_AS, BATCH_ENTRY_FLAGS(%esi)
	jz	.Lflush_full			/* a VA is unknown */
	add	$VMI_BATCH_ENTRY_SIZE, %esi
	dec	%edx
	jnz	1b
	lea	rom_entries(%ebx), %esi
	mov	%ecx, %edx
1:	mov	BATCH_ENTRY_FLAGS(%esi), %eax
	and	$VMI_PAGE_VA_MASK, %eax
	invlpg	(%eax)
	add	$VMI_BATCH_ENTRY_SIZE, %esi
	dec	%edx
	jnz	1b
	mov	$TLB_ACTION_INVLPG, %edi
	jmp	.Lflush_announce
.Lflush_full:
	mov	%cr3, %eax
	mov	%eax, %cr3

	/* 3. fill the header and announce it */
.Lflush_announce:
	lea	rom_batch(%ebx), %esi
	movl	$ROM_BATCH_MAGIC, BATCH_MAGIC(%esi)
	incl	BATCH_SEQ(%esi)
	mov	%ecx, BATCH_COUNT(%esi)
	mov	%ebp, BATCH_TRIGGER(%esi)
	mov	%edi, BATCH_TLB_ACTION(%esi)
	mov	rom_lazy_mode(%ebx), %eax
	mov	%eax, BATCH_LAZY_MODE(%esi)
	mov	%esi, %eax
	mov	$ROM_FLUSH_PORT, %edx
	.globl	rom_flush_announce
rom_flush_announce:
	outl	%eax, (%dx)
	movl	$0, rom_queued(%ebx)
.Lflush_out:
	popf
	.cfi_adjust_cfa_offset -4
	popal
	.cfi_adjust_cfa_offset -PUSHAL_SIZE
	.cfi_restore %edi
	.cfi_restore %esi
	.cfi_restore %ebp
	.cfi_restore %ebx
	ret	$4
	.cfi_endproc
	.size	rom_flush, . - rom_flush

/* rom_pte_update: [esp+4] = a struct vmi_batch_entry built by the caller on its stack (ptep,
 * flags with ENTRY_LONG / ENTRY_NOTIFY, lo, hi). Queues it when batching, in lazy MMU mode, with
 * VMI_PAGE_DEFER; a full queue is flushed first (QueueFull). Otherwise any queued updates are
 * flushed first (Ordering) and the update is done directly: SetPxE writes lo, SetPxELong writes
 * hi then lo, UpdatePxE invalidates the VA (CURRENT_AS) or reloads CR3. Runs with interrupts
 * off, so an interrupt handler's own PTE update cannot interleave with a half-made queue entry.
 * Clobbers EAX ECX EDX flags; preserves EBX ESI EDI EBP. */
	.balign	16
	.globl	rom_pte_update
	.type	rom_pte_update, @function
rom_pte_update:
	.cfi_startproc
	push	%esi
	.cfi_adjust_cfa_offset 4
	.cfi_rel_offset %esi, 0
	push	%ebx
	.cfi_adjust_cfa_offset 4
	.cfi_rel_offset %ebx, 0
	pushf
	.cfi_adjust_cfa_offset 4
	cli					/* the queue and its count change together */
	lea	16(%esp), %esi			/* the entry (above EFLAGS, two saves, the return) */
	GET_BASE %ebx
	cmpl	$0, rom_batched(%ebx)
	je	.Lpte_direct
	testl	$VMI_PAGE_DEFER, BATCH_ENTRY_FLAGS(%esi)
	jz	.Lpte_ordering
	cmpl	$VMI_LAZY_MMU_UPDATES, rom_lazy_mode(%ebx)
	jne	.Lpte_ordering

	/* queue it */
	cmpl	$ROM_QUEUE_LEN, rom_queued(%ebx)
	jb	1f
	FLUSH_QUEUE QueueFull
1:	mov	rom_queued(%ebx), %edx
	imul	$VMI_BATCH_ENTRY_SIZE, %edx, %edx
	lea	rom_entries(%ebx,%edx), %edx
	mov	BATCH_ENTRY_PTEP(%esi), %eax
	mov	%eax, BATCH_ENTRY_PTEP(%edx)
	mov	BATCH_ENTRY_FLAGS(%esi), %eax
	mov	%eax, BATCH_ENTRY_FLAGS(%edx)
	mov	BATCH_ENTRY_LO(%esi), %eax
	mov	%eax, BATCH_ENTRY_LO(%edx)
	mov	BATCH_ENTRY_HI(%esi), %eax
	mov	%eax, BATCH_ENTRY_HI(%edx)
	incl	rom_queued(%ebx)
	jmp	.Lpte_out

.Lpte_ordering:
	FLUSH_QUEUE Ordering			/* keep queued updates before this one */
.Lpte_direct:
	mov	BATCH_ENTRY_FLAGS(%esi), %eax
	test	$ENTRY_NOTIFY, %eax
	jnz	.Lpte_notify
	mov	BATCH_ENTRY_PTEP(%esi), %edx
	test	$ENTRY_LONG, %eax
	jz	1f
	mov	BATCH_ENTRY_HI(%esi), %ecx	/* high dword first, like set_64bit */
	mov	%ecx, 4(%edx)
1:	mov	BATCH_ENTRY_LO(%esi), %ecx
	mov	%ecx, (%edx)
	jmp	.Lpte_out
.Lpte_notify:
	test	$VMI_PAGE_CURRENT_AS, %eax
	jz	1f
	and	$VMI_PAGE_VA_MASK, %eax
	invlpg	(%eax)
	jmp	.Lpte_out
1:	mov	%cr3, %eax
	mov	%eax, %cr3
.Lpte_out:
	popf
	.cfi_adjust_cfa_offset -4
	pop	%ebx
	.cfi_adjust_cfa_offset -4
	.cfi_restore %ebx
	pop	%esi
	.cfi_adjust_cfa_offset -4
	.cfi_restore %esi
	ret
	.cfi_endproc
	.size	rom_pte_update, . - rom_pte_update

/* ---- the calls, in call-number order -------------------------------------------------------- */

/* CPUID: EAX leaf, ECX subleaf -> EAX EBX ECX EDX; clobbers flags only. Native: cpuid. */
	NATIVE CPUID, cpuid

/* WRMSR: ECX msr, EAX low, EDX high. Native: wrmsr. */
	NATIVE WRMSR, wrmsr

/* RDMSR: ECX msr -> EDX:EAX. Native: rdmsr. */
	NATIVE RDMSR, rdmsr

/* SetGDT: EAX -> 6-byte limit/base. Native: lgdt. */
	NATIVE SetGDT, lgdt (%eax)

/* SetLDT: EAX selector (0 = none). Native: lldt. */
	NATIVE SetLDT, lldt %ax

/* SetIDT: EAX -> 6-byte limit/base. Native: lidt. */
	NATIVE SetIDT, lidt (%eax)

/* SetTR: EAX selector. Native: ltr. */
	NATIVE SetTR, ltr %ax

/* GetGDT: EAX -> 6-byte buffer. Native: sgdt. */
	NATIVE GetGDT, sgdt (%eax)

/* GetLDT: -> EAX selector. Native: sldt (zero-extended). */
	VMI_ENTRY GetLDT
	xor	%eax, %eax
	sldt	%ax
	ret
	VMI_END GetLDT

/* GetIDT: EAX -> 6-byte buffer. Native: sidt. */
	NATIVE GetIDT, sidt (%eax)

/* GetTR: -> EAX selector. Native: str (zero-extended). */
	VMI_ENTRY GetTR
	xor	%eax, %eax
	str	%ax
	ret
	VMI_END GetTR

/* Write{GDT,LDT,IDT}Entry: EAX table base, EDX index, ECX descriptor low dword, [esp+4] high
 * dword. Native: two movs to base + 8*index. */
	.macro WRITE_DT_ENTRY name
	VMI_ENTRY \name
	lea	(%eax,%edx,8), %eax
	mov	%ecx, (%eax)
	mov	4(%esp), %ecx
	mov	%ecx, 4(%eax)
	ret
	VMI_END \name
	.endm
	WRITE_DT_ENTRY WriteGDTEntry
	WRITE_DT_ENTRY WriteLDTEntry
	WRITE_DT_ENTRY WriteIDTEntry

/* UpdateKernelStack: EAX ignored (Linux passes __KERNEL_DS, the spec a TSS pointer), EDX esp0.
 * Native: mov to TSS.esp0 (offset 4) of the current TSS, found from TR's GDT descriptor
 * (str + sgdt). TR = 0 (no TSS loaded): nothing to do. */
	VMI_ENTRY UpdateKernelStack
	push	%ebx
	.cfi_adjust_cfa_offset 4
	.cfi_rel_offset %ebx, 0
	xor	%eax, %eax
	str	%ax
	and	$SELECTOR_INDEX, %eax
	jz	1f
	sub	$8, %esp
	.cfi_adjust_cfa_offset 8
	sgdt	(%esp)
	mov	2(%esp), %ecx			/* GDT base */
	add	$8, %esp
	.cfi_adjust_cfa_offset -8
	add	%eax, %ecx			/* the TSS descriptor */
	movzwl	2(%ecx), %eax			/* base 15:0 */
	movzbl	4(%ecx), %ebx			/* base 23:16 */
	shl	$16, %ebx
	or	%ebx, %eax
	movzbl	7(%ecx), %ebx			/* base 31:24 */
	shl	$24, %ebx
	or	%ebx, %eax
	mov	%edx, 4(%eax)			/* tss.esp0 */
1:	pop	%ebx
	.cfi_adjust_cfa_offset -4
	.cfi_restore %ebx
	ret
	VMI_END UpdateKernelStack

/* SetCR0: EAX value. Native: mov to %cr0. */
	NATIVE SetCR0, mov %eax, %cr0

/* SetCR2: EAX value. Native: mov to %cr2. */
	NATIVE SetCR2, mov %eax, %cr2

/* SetCR3: EAX value. Flushes the PTE queue first (trigger SetCR3, no TLB action: the CR3 load
 * is it). Native: mov to %cr3. */
	VMI_ENTRY SetCR3
	FLUSH_QUEUE SetCR3
	mov	%eax, %cr3
	ret
	VMI_END SetCR3

/* SetCR4: EAX value. Native: mov to %cr4. */
	NATIVE SetCR4, mov %eax, %cr4

/* GetCR0..GetCR4: -> EAX. Native: mov from %crN. */
	NATIVE GetCR0, mov %cr0, %eax
	NATIVE GetCR2, mov %cr2, %eax
	NATIVE GetCR3, mov %cr3, %eax
	NATIVE GetCR4, mov %cr4, %eax

/* WBINVD. Native: wbinvd. */
	NATIVE WBINVD, wbinvd

/* SetDR: EAX register number 0-7, EDX value; GetDR: EAX number -> EAX value. Native: mov to /
 * from %dbN, dispatched through DR_SLOT_SIZE-byte slots indexed by the number. A number above
 * 7 does nothing (GetDR returns 0). */
	.macro DR_SLOT insn:vararg
	.balign	DR_SLOT_SIZE
9:	\insn
	ret
	.if	. - 9b > DR_SLOT_SIZE
	.error	"DR slot too long"
	.endif
	.endm

	VMI_ENTRY SetDR
	cmp	$7, %eax
	ja	1f
	GET_BASE %ecx
	lea	8f(%ecx,%eax,DR_SLOT_SIZE), %ecx
	jmp	*%ecx
1:	ret
	.balign	DR_SLOT_SIZE
8:	DR_SLOT mov %edx, %db0
	DR_SLOT mov %edx, %db1
	DR_SLOT mov %edx, %db2
	DR_SLOT mov %edx, %db3
	DR_SLOT mov %edx, %db4
	DR_SLOT mov %edx, %db5
	DR_SLOT mov %edx, %db6
	DR_SLOT mov %edx, %db7
	VMI_END SetDR

	VMI_ENTRY GetDR
	cmp	$7, %eax
	ja	1f
	GET_BASE %ecx
	lea	8f(%ecx,%eax,DR_SLOT_SIZE), %ecx
	jmp	*%ecx
1:	xor	%eax, %eax
	ret
	.balign	DR_SLOT_SIZE
8:	DR_SLOT mov %db0, %eax
	DR_SLOT mov %db1, %eax
	DR_SLOT mov %db2, %eax
	DR_SLOT mov %db3, %eax
	DR_SLOT mov %db4, %eax
	DR_SLOT mov %db5, %eax
	DR_SLOT mov %db6, %eax
	DR_SLOT mov %db7, %eax
	VMI_END GetDR

/* RDPMC: ECX counter -> EDX:EAX. Native: rdpmc. */
	NATIVE RDPMC, rdpmc

/* RDTSC: -> EDX:EAX. Native: rdtsc. */
	NATIVE RDTSC, rdtsc

/* CLTS. Native: clts. */
	NATIVE CLTS, clts

/* EnableInterrupts: clobbers flags only. Native: sti. */
	NATIVE EnableInterrupts, sti

/* DisableInterrupts: clobbers flags only. Native: cli. */
	NATIVE DisableInterrupts, cli

/* GetInterruptMask: -> EAX = EFLAGS & IF; clobbers flags only. Native: pushf; pop. */
	VMI_ENTRY GetInterruptMask
	pushf
	.cfi_adjust_cfa_offset 4
	pop	%eax
	.cfi_adjust_cfa_offset -4
	and	$EFLAGS_IF, %eax
	ret
	VMI_END GetInterruptMask

/* SetInterruptMask: EAX mask; sets IF from its bit 9, nothing else; clobbers flags only.
 * Native: push; popf (of IF). */
	VMI_ENTRY SetInterruptMask
	test	$EFLAGS_IF, %eax
	jz	1f
	sti
	ret
1:	cli
	ret
	VMI_END SetInterruptMask

/* IRET: entered by CALL with the interrupt frame above the return address: drop it, then
 * iret. Never returns. Native: iret. Unwinding: once the return address is dropped, the CFA
 * rule (ESP + 4, return address at ESP) names the frame's EIP, which is where iret goes. */
	VMI_ENTRY IRET
	add	$4, %esp
	iret
	VMI_END IRET

/* SYSEXIT: EDX user EIP, ECX user ESP; entered by CALL: drop the return address, then
 * sti; sysexit (sti's shadow covers sysexit). Never returns. Native: sti; sysexit. */
	VMI_ENTRY SYSEXIT
	add	$4, %esp
	.cfi_def_cfa %ecx, 0			/* unwinding: sysexit returns to ECX:EDX (user) */
	.cfi_register %eip, %edx
	sti
	sysexit
	VMI_END SYSEXIT

/* Halt: interruptible halt. Native: sti; hlt. */
	VMI_ENTRY Halt
	sti
	hlt
	ret
	VMI_END Halt

/* Reboot: EAX how (ignored). Native: pulse the reset line through the 8042
 * (out KBC_PULSE_RESET to KBC_COMMAND_PORT). Returns if the machine does not reset. */
	VMI_ENTRY Reboot
	mov	$KBC_PULSE_RESET, %al
	out	%al, $KBC_COMMAND_PORT
	ret
	VMI_END Reboot

/* Shutdown: outl 0 to QEMU's isa-debug-exit at ISA_DEBUG_EXIT_PORT (QEMU exits with status 1).
 * Returns if there is no such device. */
	VMI_ENTRY Shutdown
	xor	%eax, %eax
	out	%eax, $ISA_DEBUG_EXIT_PORT
	ret
	VMI_END Shutdown

/* SetPxE: EAX pte, EDX ptep, ECX flags. Native: mov %eax, (%edx). Queued when deferred. */
	VMI_ENTRY SetPxE
	sub	$VMI_BATCH_ENTRY_SIZE, %esp
	.cfi_adjust_cfa_offset VMI_BATCH_ENTRY_SIZE
	mov	%edx, BATCH_ENTRY_PTEP(%esp)
	mov	%ecx, BATCH_ENTRY_FLAGS(%esp)
	mov	%eax, BATCH_ENTRY_LO(%esp)
	movl	$0, BATCH_ENTRY_HI(%esp)
	call	rom_pte_update
	add	$VMI_BATCH_ENTRY_SIZE, %esp
	.cfi_adjust_cfa_offset -VMI_BATCH_ENTRY_SIZE
	ret
	VMI_END SetPxE

/* SetPxELong: EAX low, EDX high, ECX ptep, [esp+4] flags. Native: mov %edx, 4(%ecx);
 * mov %eax, (%ecx) (high first, like Linux's set_64bit). Queued when deferred. */
	VMI_ENTRY SetPxELong
	sub	$VMI_BATCH_ENTRY_SIZE, %esp
	.cfi_adjust_cfa_offset VMI_BATCH_ENTRY_SIZE
	mov	%ecx, BATCH_ENTRY_PTEP(%esp)
	mov	VMI_BATCH_ENTRY_SIZE+4(%esp), %ecx
	or	$ENTRY_LONG, %ecx
	mov	%ecx, BATCH_ENTRY_FLAGS(%esp)
	mov	%eax, BATCH_ENTRY_LO(%esp)
	mov	%edx, BATCH_ENTRY_HI(%esp)
	call	rom_pte_update
	add	$VMI_BATCH_ENTRY_SIZE, %esp
	.cfi_adjust_cfa_offset -VMI_BATCH_ENTRY_SIZE
	ret
	VMI_END SetPxELong

/* UpdatePxE / UpdatePxELong: EAX ptep, EDX flags; the guest already wrote the entry.
 * Native: invlpg of the VA in the flags (CURRENT_AS), else a CR3 reload. Queued when deferred
 * (as a notification: the flush writes nothing for it). */
	.macro UPDATE_PXE name, bits
	VMI_ENTRY \name
	sub	$VMI_BATCH_ENTRY_SIZE, %esp
	.cfi_adjust_cfa_offset VMI_BATCH_ENTRY_SIZE
	mov	%eax, BATCH_ENTRY_PTEP(%esp)
	or	$\bits, %edx
	mov	%edx, BATCH_ENTRY_FLAGS(%esp)
	movl	$0, BATCH_ENTRY_LO(%esp)
	movl	$0, BATCH_ENTRY_HI(%esp)
	call	rom_pte_update
	add	$VMI_BATCH_ENTRY_SIZE, %esp
	.cfi_adjust_cfa_offset -VMI_BATCH_ENTRY_SIZE
	ret
	VMI_END \name
	.endm
	UPDATE_PXE UpdatePxE, ENTRY_NOTIFY
	UPDATE_PXE UpdatePxELong, ENTRY_NOTIFY | ENTRY_LONG

/* AllocatePage: EAX pfn, EDX flags, ECX clone pfn, [esp+4] start, [esp+8] count;
 * ReleasePage: EAX pfn, EDX flags. Identity: no shadow page tables, nothing to do. */
	NATIVE AllocatePage, nop
	NATIVE ReleasePage, nop

/* InvalPage: EAX linear address. Flushes the PTE queue first (trigger InvalPage).
 * Native: invlpg. */
	VMI_ENTRY InvalPage
	FLUSH_QUEUE InvalPage
	invlpg	(%eax)
	ret
	VMI_END InvalPage

/* FlushTLB: EAX = VMI_FLUSH_TLB [| VMI_FLUSH_GLOBAL]. Flushes the PTE queue first (trigger
 * FlushTLB, no TLB action: this is it). Native: CR3 reload; with GLOBAL and CR4.PGE set, toggle
 * CR4.PGE instead (which also drops global entries). */
	VMI_ENTRY FlushTLB
	FLUSH_QUEUE FlushTLB
	test	$VMI_FLUSH_GLOBAL, %eax
	jz	1f
	mov	%cr4, %edx
	test	$CR4_PGE, %edx
	jz	1f
	mov	%edx, %ecx
	and	$~CR4_PGE, %ecx
	mov	%ecx, %cr4
	mov	%edx, %cr4
	ret
1:	mov	%cr3, %ecx
	mov	%ecx, %cr3
	ret
	VMI_END FlushTLB

/* SetLinearMapping: EAX slot, EDX va, ECX pages, [esp+4] pfn. Identity: a hint, ignored. */
	NATIVE SetLinearMapping, nop

/* SetIOPLMask: EAX = IOPL pre-shifted (bits 12-13). Native: pushf; popf with IOPL replaced. */
	VMI_ENTRY SetIOPLMask
	pushf
	.cfi_adjust_cfa_offset 4
	andl	$~EFLAGS_IOPL, (%esp)
	and	$EFLAGS_IOPL, %eax
	or	%eax, (%esp)
	popf
	.cfi_adjust_cfa_offset -4
	ret
	VMI_END SetIOPLMask

/* IODelay. Native: outb to the POST code port. */
	NATIVE IODelay, out %al, $IO_DELAY_PORT

/* SetLazyMode: EAX mode (VMI_LAZY_MODE_OFF / MMU_UPDATES / CPU_STATE). Any mode but MMU ends
 * lazy MMU mode: the PTE queue is flushed (trigger SetLazyMode) before the mode is recorded.
 * Native: nothing. */
	VMI_ENTRY SetLazyMode
	cmp	$VMI_LAZY_MMU_UPDATES, %eax
	je	1f
	FLUSH_QUEUE SetLazyMode
1:	GET_BASE %ecx
	cmpl	$0, rom_batched(%ecx)
	je	2f
	mov	%eax, rom_lazy_mode(%ecx)
2:	ret
	VMI_END SetLazyMode

	.section .note.GNU-stack, "", @progbits
