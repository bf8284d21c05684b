/* Per-event costs of vmigdb's machine: each loop runs ECX times (the bench sets ECX and EIP,
 * and stops at bench_done) and differs from base_loop only by the event it makes.
 * Events: a port write to 0x80 (IODelay), a read of port 0x61 (a device computing from the
 * clock), a read of COM1's LSR, `int $0x80` (an exception through the IDT), a timer interrupt
 * (PIT channel 0 in mode 2 through the 8259A) with the CPU spinning, and one with it halted. */
        .include "multiboot.inc"
        .set CODE, 0x08
        .set DATA, 0x10
        .set IRQ0_VECTOR, 0x20
        .globl _start, bench_done, base_loop, out80_loop, in61_loop, lsr_loop, int80_loop
        .globl irq_spin_loop, irq_hlt_loop, irq_count
_start:
        lgdt gdt_descr
        ljmp $CODE, $1f
1:      movw $DATA, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl $stack_top, %esp
        movl $handler_int80, %eax
        movl $0x80, %ebx
        call set_gate
        movl $handler_irq0, %eax
        movl $IRQ0_VECTOR, %ebx
        call set_gate
        lidt idt_descr
        /* 8259A as Linux sets it up (vectors 0x20/0x28), every line masked */
        movb $0x11, %al
        outb %al, $0x20
        outb %al, $0xA0
        movb $IRQ0_VECTOR, %al
        outb %al, $0x21
        movb $0x28, %al
        outb %al, $0xA1
        movb $0x04, %al
        outb %al, $0x21
        movb $0x02, %al
        outb %al, $0xA1
        movb $0x01, %al
        outb %al, $0x21
        outb %al, $0xA1
        movb $0xFF, %al
        outb %al, $0x21
        outb %al, $0xA1
        jmp bench_done

/* set_gate: IDT entry %ebx -> handler %eax, 32-bit interrupt gate, ring 0 */
set_gate:
        movw %ax, idt(,%ebx,8)
        movw $CODE, idt+2(,%ebx,8)
        movw $0x8E00, idt+4(,%ebx,8)
        shrl $16, %eax
        movw %ax, idt+6(,%ebx,8)
        ret

base_loop:
1:      nop
        decl %ecx
        jnz 1b
        jmp bench_done

out80_loop:
1:      outb %al, $0x80
        decl %ecx
        jnz 1b
        jmp bench_done

in61_loop:
1:      inb $0x61, %al
        decl %ecx
        jnz 1b
        jmp bench_done

lsr_loop:
        movw $COM1 + 5, %dx
1:      inb %dx, %al
        decl %ecx
        jnz 1b
        jmp bench_done

int80_loop:
1:      int $0x80
        decl %ecx
        jnz 1b
        jmp bench_done

/* the PIT at its fastest steady rate Linux-like code would use (count 2: 1.68 us), IRQ 0
 * unmasked, interrupts on; spin until ECX interrupts were taken */
irq_spin_loop:
        call timer_on
1:      cmpl %ecx, irq_count
        jb 1b
        jmp timer_off

/* the same with the CPU halted between interrupts (Linux's idle loop: sti; hlt) */
irq_hlt_loop:
        call timer_on
1:      hlt
        cmpl %ecx, irq_count
        jb 1b
        jmp timer_off

timer_on:
        movl $0, irq_count
        movb $0x34, %al                 /* channel 0, LSB/MSB, mode 2 */
        outb %al, $0x43
        movb $2, %al
        outb %al, $0x40
        movb $0, %al
        outb %al, $0x40
        movb $0xFE, %al                 /* unmask IRQ 0 */
        outb %al, $0x21
        sti
        ret

timer_off:
        cli
        movb $0xFF, %al
        outb %al, $0x21
        movb $0x30, %al                 /* channel 0 shut down */
        outb %al, $0x43
        movb $0, %al
        outb %al, $0x40
        outb %al, $0x40
        jmp bench_done

handler_int80:
        iret

handler_irq0:
        pushl %eax
        movb $0x60, %al                 /* specific EOI for IRQ 0, as Linux sends it */
        outb %al, $0x20
        incl irq_count
        popl %eax
        iret

        .p2align 12
bench_done:
        nop
        jmp bench_done

        .section .data
        .p2align 3
gdt:    .quad 0
        .quad 0x00CF9A000000FFFF        /* 0x08 code */
        .quad 0x00CF92000000FFFF        /* 0x10 data */
gdt_end:
gdt_descr:
        .word gdt_end - gdt - 1
        .long gdt
idt_descr:
        .word 256 * 8 - 1
        .long idt
irq_count:
        .long 0

        .section .bss
        .p2align 4
idt:    .space 256 * 8
        .space 4096
stack_top:
