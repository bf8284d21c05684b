/*
 * probe_asm.S: the parts of the probe /init (probe.c) that have to be exact instructions.
 *
 * C cannot say "these registers hold these values across this one instruction", and the
 * probes are about exactly that: which registers a syscall, a SYSENTER round trip, a signal
 * frame or a context switch must preserve, and where a fault must land so that a handler can
 * move EIP past it.  Everything here is a plain cdecl function (arguments on the stack,
 * %ebx/%esi/%edi/%ebp preserved, result in %eax).
 */

	.text

/* entry: %esp -> argc, argv[], NULL, envp[], NULL, auxv[] */
	.globl	_start
	.type	_start, @function
_start:
	xorl	%ebp, %ebp
	movl	%esp, %eax
	andl	$-16, %esp
	subl	$12, %esp
	pushl	%eax
	call	cmain
1:	jmp	1b
	.size	_start, . - _start

/*
 * long int80_call(long a[7]) / long vdso_call(long a[7]):
 * %eax = a[0] (the syscall number), %ebx, %ecx, %edx, %esi, %edi, %ebp = a[1..6], then the
 * syscall through `int $0x80` or through the vDSO's __kernel_vsyscall (vdso_entry, from
 * AT_SYSINFO).  Returns %eax; sets bit i of syscall_clobbered for each of %ebx, %ecx, %edx,
 * %esi, %edi, %ebp (i = 0..5) that came back changed: the kernel must preserve them all, on
 * both paths, and across a signal delivered on the way out.
 */
	.macro	SYSCALL_VIA name, insn:vararg
	.globl	\name
	.type	\name, @function
\name:
	pushl	%ebp
	pushl	%edi
	pushl	%esi
	pushl	%ebx
	movl	20(%esp), %eax
	pushl	%eax			/* 0(%esp): the argument array */
	movl	4(%eax), %ebx
	movl	8(%eax), %ecx
	movl	12(%eax), %edx
	movl	16(%eax), %esi
	movl	20(%eax), %edi
	movl	24(%eax), %ebp
	movl	0(%eax), %eax
	\insn
	xchgl	%eax, 0(%esp)		/* result to the stack, %eax = the array again */
	cmpl	4(%eax), %ebx
	je	1f
	orl	$1, syscall_clobbered
1:	cmpl	8(%eax), %ecx
	je	2f
	orl	$2, syscall_clobbered
2:	cmpl	12(%eax), %edx
	je	3f
	orl	$4, syscall_clobbered
3:	cmpl	16(%eax), %esi
	je	4f
	orl	$8, syscall_clobbered
4:	cmpl	20(%eax), %edi
	je	5f
	orl	$16, syscall_clobbered
5:	cmpl	24(%eax), %ebp
	je	6f
	orl	$32, syscall_clobbered
6:	popl	%eax
	popl	%ebx
	popl	%esi
	popl	%edi
	popl	%ebp
	ret
	.size	\name, . - \name
	.endm

	SYSCALL_VIA int80_call, int $0x80
	SYSCALL_VIA vdso_call, call *vdso_entry

/* Signal restorers for SA_RESTORER: the RT frame returns with rt_sigreturn (173), the legacy
 * (non-SA_SIGINFO) frame pops the signal number and uses sigreturn (119), as the vDSO's own
 * __kernel_rt_sigreturn / __kernel_sigreturn do. */
	.globl	rt_restorer
	.type	rt_restorer, @function
rt_restorer:
	movl	$173, %eax
	int	$0x80
	hlt
	.size	rt_restorer, . - rt_restorer

	.globl	old_restorer
	.type	old_restorer, @function
old_restorer:
	popl	%eax
	movl	$119, %eax
	int	$0x80
	hlt
	.size	old_restorer, . - old_restorer

/*
 * long thread_spawn(ulong flags, void *stack_top, int *ptid, void *tls, int *ctid,
 *                   int (*fn)(void *), void *arg):
 * clone (120) with the i386 argument order (flags, newsp, parent_tidptr, tls, child_tidptr in
 * %ebx, %ecx, %edx, %esi, %edi).  The child starts on stack_top with nothing of the parent's
 * frame, so fn and arg are placed there first; the child calls fn(arg) and ends with exit (1),
 * which ends only the thread.  The parent gets the new thread's id or -errno.
 */
	.globl	thread_spawn
	.type	thread_spawn, @function
thread_spawn:
	pushl	%ebp
	pushl	%edi
	pushl	%esi
	pushl	%ebx
	movl	24(%esp), %ecx		/* stack_top */
	movl	40(%esp), %eax		/* fn */
	movl	44(%esp), %edx		/* arg */
	movl	%edx, -4(%ecx)
	movl	%eax, -8(%ecx)
	subl	$8, %ecx
	movl	20(%esp), %ebx		/* flags */
	movl	28(%esp), %edx		/* ptid */
	movl	32(%esp), %esi		/* tls (struct user_desc *) */
	movl	36(%esp), %edi		/* ctid */
	movl	$120, %eax
	int	$0x80
	testl	%eax, %eax
	jz	1f
	popl	%ebx
	popl	%esi
	popl	%edi
	popl	%ebp
	ret
1:	xorl	%ebp, %ebp		/* the new thread: %esp -> fn, arg */
	popl	%eax
	call	*%eax			/* fn(arg) */
	movl	%eax, %ebx
	movl	$1, %eax		/* exit: this thread only */
	int	$0x80
2:	hlt
	jmp	2b
	.size	thread_spawn, . - thread_spawn

/*
 * void fpu_hold(struct fpu_frame *f): load the eight x87 registers from f->x87_in (fild) and
 * xmm0..xmm7 from f->xmm_in, make the syscall f->nr(f->a, f->b, f->c) while they are live
 * (a yield, a blocking pipe read, a kill that runs a signal handler), then store them back
 * to f->x87_out / f->xmm_out with the control words.  Whatever ran meanwhile (another process
 * with its own FPU state, a handler that clobbers it) must not show.
 * Layout (probe.c's struct fpu_frame): x87_in 0, xmm_in 32, x87_out 160, xmm_out 192,
 * nr 320, a 324, b 328, c 332, ret 336, cw 340, mxcsr 344.
 */
	.globl	fpu_hold
	.type	fpu_hold, @function
fpu_hold:
	pushl	%ebp
	pushl	%edi
	pushl	%esi
	pushl	%ebx
	movl	20(%esp), %ebp
	fildl	0(%ebp)
	fildl	4(%ebp)
	fildl	8(%ebp)
	fildl	12(%ebp)
	fildl	16(%ebp)
	fildl	20(%ebp)
	fildl	24(%ebp)
	fildl	28(%ebp)		/* st(0) = x87_in[7] ... st(7) = x87_in[0] */
	movups	32(%ebp), %xmm0
	movups	48(%ebp), %xmm1
	movups	64(%ebp), %xmm2
	movups	80(%ebp), %xmm3
	movups	96(%ebp), %xmm4
	movups	112(%ebp), %xmm5
	movups	128(%ebp), %xmm6
	movups	144(%ebp), %xmm7
	movl	320(%ebp), %eax
	movl	324(%ebp), %ebx
	movl	328(%ebp), %ecx
	movl	332(%ebp), %edx
	int	$0x80
	movl	%eax, 336(%ebp)
	fistpl	188(%ebp)
	fistpl	184(%ebp)
	fistpl	180(%ebp)
	fistpl	176(%ebp)
	fistpl	172(%ebp)
	fistpl	168(%ebp)
	fistpl	164(%ebp)
	fistpl	160(%ebp)
	movups	%xmm0, 192(%ebp)
	movups	%xmm1, 208(%ebp)
	movups	%xmm2, 224(%ebp)
	movups	%xmm3, 240(%ebp)
	movups	%xmm4, 256(%ebp)
	movups	%xmm5, 272(%ebp)
	movups	%xmm6, 288(%ebp)
	movups	%xmm7, 304(%ebp)
	fnstcw	340(%ebp)
	stmxcsr	344(%ebp)
	popl	%ebx
	popl	%esi
	popl	%edi
	popl	%ebp
	ret
	.size	fpu_hold, . - fpu_hold

/* void fpu_clobber(void): what a careless signal handler does to the FPU: a fresh x87 state
 * with other values on its stack, every xmm register overwritten. */
	.globl	fpu_clobber
	.type	fpu_clobber, @function
fpu_clobber:
	fninit
	fld1
	fldpi
	fldz
	fld1
	fldl2t
	fldl2e
	fldlg2
	fldln2
	pcmpeqd	%xmm0, %xmm0
	pcmpeqd	%xmm1, %xmm1
	xorps	%xmm2, %xmm2
	pcmpeqd	%xmm3, %xmm3
	xorps	%xmm4, %xmm4
	pcmpeqd	%xmm5, %xmm5
	xorps	%xmm6, %xmm6
	pcmpeqd	%xmm7, %xmm7
	ret
	.size	fpu_clobber, . - fpu_clobber

/*
 * void fpu_arith(u32 out[10]): 1/10 and sqrt(2) under the current rounding modes: x87 (into
 * doubles: out[0..1], out[2..3]), SSE single (out[4], out[5]), SSE2 double (out[6..7],
 * out[8..9]).  The results depend on the process's own x87 control word and MXCSR, so a
 * context switch that loses or mixes them up shows in the last bit.
 */
	.globl	fpu_arith
	.type	fpu_arith, @function
fpu_arith:
	movl	4(%esp), %ecx
	fildl	one
	fidivl	ten
	fstpl	0(%ecx)
	fildl	two
	fsqrt
	fstpl	8(%ecx)
	cvtsi2ssl one, %xmm0
	cvtsi2ssl ten, %xmm1
	divss	%xmm1, %xmm0
	movss	%xmm0, 16(%ecx)
	cvtsi2ssl two, %xmm2
	sqrtss	%xmm2, %xmm2
	movss	%xmm2, 20(%ecx)
	cvtsi2sdl one, %xmm3
	cvtsi2sdl ten, %xmm4
	divsd	%xmm4, %xmm3
	movsd	%xmm3, 24(%ecx)
	cvtsi2sdl two, %xmm5
	sqrtsd	%xmm5, %xmm5
	movsd	%xmm5, 32(%ecx)
	ret
	.size	fpu_arith, . - fpu_arith

/* void fpu_setmode(u32 cw, u32 mxcsr) / u32 fpu_getcw(void) / u32 fpu_getmxcsr(void) */
	.globl	fpu_setmode
	.type	fpu_setmode, @function
fpu_setmode:
	fninit
	fldcw	4(%esp)
	ldmxcsr	8(%esp)
	ret
	.size	fpu_setmode, . - fpu_setmode

	.globl	fpu_getcw
	.type	fpu_getcw, @function
fpu_getcw:
	xorl	%eax, %eax
	pushl	%eax
	fnstcw	(%esp)
	popl	%eax
	ret
	.size	fpu_getcw, . - fpu_getcw

	.globl	fpu_getmxcsr
	.type	fpu_getmxcsr, @function
fpu_getmxcsr:
	pushl	%eax
	stmxcsr	(%esp)
	popl	%eax
	ret
	.size	fpu_getmxcsr, . - fpu_getmxcsr

/*
 * Fault sites.  Each returns 0 (or the value read) when the instruction at fault_X_insn
 * completes normally; a signal handler that recognises the site (probe.c's fault table) moves
 * EIP in the ucontext to fault_X_resume and puts FAULT_MARKER in the saved %eax, which is then
 * what the function returns.
 */
	.macro	SITE name
	.globl	fault_\name, fault_\name\()_insn, fault_\name\()_resume
	.type	fault_\name, @function
fault_\name:
	.endm

	/* u32 fault_read(const void *p): *p */
	SITE read
	movl	4(%esp), %ecx
	xorl	%eax, %eax
fault_read_insn:
	movl	(%ecx), %eax
fault_read_resume:
	ret

	/* u32 fault_write(void *p, u32 v): *p = v, returns 0 */
	SITE write
	movl	4(%esp), %ecx
	movl	8(%esp), %edx
	xorl	%eax, %eax
fault_write_insn:
	movl	%edx, (%ecx)
fault_write_resume:
	ret

	/* u32 fault_div(u32 d): 100 / d (d = 0: #DE) */
	SITE div
	movl	4(%esp), %ecx
	movl	$100, %eax
	xorl	%edx, %edx
fault_div_insn:
	divl	%ecx
fault_div_resume:
	ret

	/* u32 fault_ud2(void): #UD */
	SITE ud2
	xorl	%eax, %eax
fault_ud2_insn:
	ud2
fault_ud2_resume:
	ret

	/* u32 fault_hlt(void): hlt at CPL 3 is #GP(0) */
	SITE hlt
	xorl	%eax, %eax
fault_hlt_insn:
	hlt
fault_hlt_resume:
	ret

	/* u32 fault_int3(void): #BP, a trap: the saved EIP is already fault_int3_resume */
	SITE int3
	xorl	%eax, %eax
fault_int3_insn:
	int3
fault_int3_resume:
	ret

	/* u32 fault_step(void): EFLAGS.TF set by popf: #DB after the instruction that follows
	 * the popf (the nop), so the saved EIP is fault_step_resume; the handler clears TF. */
	SITE step
	xorl	%eax, %eax
	pushfl
	orl	$0x100, (%esp)
	popfl
fault_step_insn:
	nop
fault_step_resume:
	ret

	/* u32 fault_x87(void): 1/0 with the zero-divide exception unmasked: the x87 reports it
	 * (#MF, CR0.NE) at the next waiting x87 instruction, the fwait; fninit after it clears the
	 * pending exception that sigreturn brings back. */
	SITE x87
	pushl	$0x037b			/* 0x037f with ZM (bit 2) clear */
	fldcw	(%esp)
	addl	$4, %esp
	xorl	%eax, %eax
	fld1
	fidivl	zero
fault_x87_insn:
	fwait
fault_x87_resume:
	fninit
	ret

	/* u32 fault_rdtsc(void): the TSC's low half; #GP(0) at CPL 3 when CR4.TSD is set
	 * (prctl(PR_SET_TSC, PR_TSC_SIGSEGV)) */
	SITE rdtsc
	xorl	%eax, %eax
fault_rdtsc_insn:
	rdtsc
fault_rdtsc_resume:
	ret

/*
 * The ptrace probes' tracee path.  ptrace_target() runs three nops from ptrace_bp (an
 * execution breakpoint in DR0, then single steps).  watch_target() writes ptrace_watch (a
 * write watchpoint in DR1: #DB after the store, EIP at watch_after_write), then reads
 * ptrace_watch2 (a read/write watchpoint in DR2: EIP at watch_after_read).
 */
	.globl	ptrace_target, ptrace_bp
	.type	ptrace_target, @function
ptrace_target:
ptrace_bp:
	nop
	nop
	nop
	ret
	.size	ptrace_target, . - ptrace_target

	.globl	watch_target, watch_after_write, watch_after_read
	.type	watch_target, @function
watch_target:
	movl	$0x1234abcd, ptrace_watch
watch_after_write:
	movl	ptrace_watch2, %eax
watch_after_read:
	ret
	.size	watch_target, . - watch_target

	.data
	.align	4
	.globl	ptrace_watch, ptrace_watch2
ptrace_watch:
	.long	0
ptrace_watch2:
	.long	0x600d0002

	.section .rodata
	.align	4
one:	.long	1
two:	.long	2
ten:	.long	10
zero:	.long	0

	.section .note.GNU-stack, "", @progbits
