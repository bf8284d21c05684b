/*
 * probe.c: a libc-free, static, 32-bit /init that checks the mechanisms a Linux userspace
 * relies on, one numbered probe at a time, on a Linux 2.6.32 i386 kernel.
 *
 * Why: booting to a shell proves little about the machine underneath; a libc, a threaded
 * program, a JIT or a crash handler each lean on a different corner of the CPU and of the
 * kernel's use of it (SYSENTER, TLS descriptors in the GDT, lazy FPU switching with CR0.TS and
 * #NM, signal frames and sigreturn, page faults on file and shared mappings, highmem kmaps).
 * Each probe exercises one of those for real and checks the result, so a machine that gets one
 * wrong fails that probe by name instead of hanging a bigger workload somewhere.
 *
 * Output (on /dev/console): one line per probe, "PROBE: <name> ok" or
 * "PROBE: <name> FAIL <detail>", then "PROBE: done <passed>/<total>"; then, after iopl(3),
 * 0 (all passed) or 1 is written to port 0xf4 (QEMU's isa-debug-exit; vmigdb's machine exits
 * with that code).  Nothing printed depends on the clock, so logs compare across machines.
 *
 * The probes (probes[] at the end; tests/linux/initramfs.py reads the names from there):
 *   01-int80          syscalls through int $0x80: results, errors, registers kept
 *   02-vdso           AT_SYSINFO from the auxv, __kernel_vsyscall (SYSENTER/SYSEXIT), its
 *                     six-argument path, the vDSO's symbols
 *   03-tls            set_thread_area(-1): selectors in %gs and %fs across switches and fork
 *   04-thread         clone(CLONE_VM|...|CLONE_THREAD|CLONE_SETTLS), futex ping-pong and join,
 *                     tgkill to the thread
 *   05-fpu            two processes with live x87/SSE registers and different rounding modes
 *                     across yields and blocking handoffs (lazy FPU: CR0.TS, #NM, fxsave)
 *   06-signals        rt_sigaction/kill: RT and legacy frames, own and vDSO restorers, masks,
 *                     pending, nesting, FPU state across a handler
 *   07-faults         SIGSEGV/SIGBUS/SIGFPE/SIGILL/SIGTRAP from real faults, recovered by
 *                     editing the ucontext's EIP; RDTSC under CR4.TSD
 *   08-mmap-file      /data read, mapped private/shared/at an offset, COW, a shared file map
 *   09-mmap-shared    MAP_SHARED|MAP_ANONYMOUS between a fork child and its parent
 *   10-mremap-madvise mremap grow/move/shrink/fixed, mincore, MADV_DONTNEED
 *   11-procfs         mount("proc"), /proc/self/maps, meminfo, cpuinfo, status, exe
 *   12-exec           execve of /init: argv, envp, auxv, reset handlers, kept mask
 *   13-timers         nanosleep, clock_gettime, RDTSC, gettimeofday, setitimer + pause
 *   14-restart        SA_RESTART / -EINTR through int $0x80 and SYSENTER, restart_syscall
 *   15-ptrace         peek/poke, a DR0 execution breakpoint, PTRACE_SINGLESTEP
 *   16-watchpoint     DR1/DR2 data breakpoints (write; read/write)
 *   17-memory         64 MiB (384 MiB with highmem) touched, COW-shared with a fork child
 *
 * Every probe runs in a forked child with a watchdog alarm, so one that crashes or hangs is
 * reported (killed by signal N) and the rest still run.
 *
 * Built by tests/linux/initramfs.py with probe_asm.S (the instruction-exact parts):
 * gcc -m32 -ffreestanding -nostdlib -fno-pic ..., ld -m elf_i386 -static.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long ulong;

/* ------------------------------------------------------------------ syscall numbers (i386) */

#define NR_exit			1
#define NR_fork			2
#define NR_read			3
#define NR_write		4
#define NR_open			5
#define NR_close		6
#define NR_unlink		10
#define NR_execve		11
#define NR_getpid		20
#define NR_ptrace		26
#define NR_mount		21
#define NR_alarm		27
#define NR_pause		29
#define NR_kill			37
#define NR_pipe			42
#define NR_getppid		64
#define NR_gettimeofday		78
#define NR_readlink		85
#define NR_reboot		88
#define NR_munmap		91
#define NR_ftruncate		93
#define NR_setitimer		104
#define NR_iopl			110
#define NR_wait4		114
#define NR_sigreturn		119
#define NR_uname		122
#define NR_mprotect		125
#define NR_prctl		172
#define NR_sched_yield		158
#define NR_nanosleep		162
#define NR_mremap		163
#define NR_rt_sigaction		174
#define NR_rt_sigprocmask	175
#define NR_rt_sigpending	176
#define NR_pread64		180
#define NR_sigaltstack		186
#define NR_mmap2		192
#define NR_fstat64		197
#define NR_mincore		218
#define NR_madvise		219
#define NR_gettid		224
#define NR_futex		240
#define NR_set_thread_area	243
#define NR_get_thread_area	244
#define NR_exit_group		252
#define NR_clock_gettime	265
#define NR_tgkill		270

/* ------------------------------------------------------------------------- constants */

#define PAGE		4096u
#define PROT_NONE	0
#define PROT_READ	1
#define PROT_WRITE	2
#define MAP_SHARED	0x01
#define MAP_PRIVATE	0x02
#define MAP_FIXED	0x10
#define MAP_ANONYMOUS	0x20
#define MAP_NORESERVE	0x4000
#define MREMAP_MAYMOVE	1
#define MREMAP_FIXED	2
#define MADV_DONTNEED	4
#define O_RDONLY	0
#define O_RDWR		2
#define O_CREAT		0100
#define O_TRUNC		01000

#define SIGHUP		1
#define SIGILL		4
#define SIGTRAP		5
#define SIGBUS		7
#define SIGFPE		8
#define SIGUSR1		10
#define SIGSEGV		11
#define SIGUSR2		12
#define SIGALRM		14
#define SIGTERM		15
#define SIGKILL		9
#define SIGSTOP		19
#define SIGCONT		18
#define SA_SIGINFO	0x00000004u
#define SA_RESTORER	0x04000000u
#define SA_ONSTACK	0x08000000u
#define SA_RESTART	0x10000000u
#define SIG_BLOCK	0
#define SIG_UNBLOCK	1
#define SIG_SETMASK	2
#define SI_USER		0
#define SI_KERNEL	0x80
#define SEGV_MAPERR	1
#define SEGV_ACCERR	2
#define BUS_ADRERR	2
#define FPE_INTDIV	1
#define FPE_FLTDIV	3
#define ILL_ILLOPN	2
#define TRAP_TRACE	2

#define CLONE_VM		0x00000100u
#define CLONE_FS		0x00000200u
#define CLONE_FILES		0x00000400u
#define CLONE_SIGHAND		0x00000800u
#define CLONE_THREAD		0x00010000u
#define CLONE_SYSVSEM		0x00040000u
#define CLONE_SETTLS		0x00080000u
#define CLONE_PARENT_SETTID	0x00100000u
#define CLONE_CHILD_CLEARTID	0x00200000u

#define FUTEX_WAIT	0
#define FUTEX_WAKE	1

#define AT_NULL		0
#define AT_PAGESZ	6
#define AT_ENTRY	9
#define AT_SYSINFO	32
#define AT_SYSINFO_EHDR	33

#define EINTR		4
#define EBADF		9
#define ENOMEM		12
#define ENOSYS		38

#define FAULT_MARKER	0xfa417ed0u

/* The data file the builder packs as /data: DATA_SIZE bytes, byte i = data_byte(i).
 * initramfs.py has the same formula. */
#define DATA_SIZE	(3u * PAGE + 100u)
static u8 data_byte(u32 i) { return (u8)(i * 131u + (i >> 9) * 7u + 0x5au); }

/* ------------------------------------------------------------------------------ syscalls */

static inline long sys0(long n)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "0"(n) : "memory");
	return r;
}

static inline long sys1(long n, long a)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "0"(n), "b"(a) : "memory");
	return r;
}

static inline long sys2(long n, long a, long b)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "0"(n), "b"(a), "c"(b) : "memory");
	return r;
}

static inline long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "0"(n), "b"(a), "c"(b), "d"(c) : "memory");
	return r;
}

static inline long sys4(long n, long a, long b, long c, long d)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r)
			 : "0"(n), "b"(a), "c"(b), "d"(c), "S"(d) : "memory");
	return r;
}

static inline long sys5(long n, long a, long b, long c, long d, long e)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r)
			 : "0"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e) : "memory");
	return r;
}

/* Six arguments: the sixth goes in %ebp, which gcc may be using; the asm helper keeps it. */
long int80_call(long a[7]);
long vdso_call(long a[7]);
volatile u32 syscall_clobbered;
void *vdso_entry;

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long v[7];
	v[0] = n; v[1] = a; v[2] = b; v[3] = c; v[4] = d; v[5] = e; v[6] = f;
	return int80_call(v);
}

static int is_err(long r) { return (ulong)r >= (ulong)-4095; }

static void *xmmap(void *addr, ulong len, int prot, int flags, int fd, ulong pgoff)
{
	long r = sys6(NR_mmap2, (long)addr, (long)len, prot, flags, fd, (long)pgoff);
	return is_err(r) ? (void *)0 : (void *)r;
}

static void __attribute__((noreturn)) exit_group(int code)
{
	for (;;)
		sys1(NR_exit_group, code);
}

static long xgetpid(void) { return sys0(NR_getpid); }
static long xgettid(void) { return sys0(NR_gettid); }
static long xyield(void) { return sys0(NR_sched_yield); }
static long xkill(long pid, int sig) { return sys2(NR_kill, pid, sig); }
static long xclose(int fd) { return sys1(NR_close, fd); }

static long xwait(long pid, int *status)
{
	return sys4(NR_wait4, pid, (long)status, 0, 0);
}

static long futex(volatile int *addr, int op, int val)
{
	return sys4(NR_futex, (long)addr, op, val, 0);
}

/* ------------------------------------------------------------------------------ libc bits */

/* gcc may emit calls to these even with -ffreestanding */
void *memset(void *d, int c, ulong n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, ulong n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

static ulong slen(const char *s)
{
	ulong n = 0;
	while (s[n])
		n++;
	return n;
}

static int seq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static int prefix(const char *s, const char *p)
{
	while (*p)
		if (*s++ != *p++)
			return 0;
	return 1;
}

/* the first occurrence of needle in hay[0..n), or 0 */
static const char *find(const char *hay, ulong n, const char *needle)
{
	ulong k = slen(needle), i;
	for (i = 0; i + k <= n; i++)
		if (prefix(hay + i, needle))
			return hay + i;
	return 0;
}

/* "Key:   1234 kB" in /proc/meminfo style text: the number, or -1 */
static long field_kb(const char *text, ulong n, const char *key)
{
	const char *p = find(text, n, key);
	long v = 0;
	if (!p)
		return -1;
	p += slen(key);
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p < '0' || *p > '9')
		return -1;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (*p++ - '0');
	return v;
}

/* ---------------------------------------------------------------------------- output */

struct line {
	char buf[200];
	ulong n;
};

static void add(struct line *l, const char *s)
{
	while (*s && l->n < sizeof(l->buf) - 2)
		l->buf[l->n++] = *s++;
}

static void addu(struct line *l, ulong v)
{
	char b[12];
	int i = sizeof(b) - 1;
	b[i] = 0;
	do {
		b[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	add(l, &b[i]);
}

static void addx(struct line *l, ulong v)
{
	char b[11];
	int i;
	b[0] = '0';
	b[1] = 'x';
	for (i = 0; i < 8; i++)
		b[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 15];
	b[10] = 0;
	add(l, b);
}

/* one write() per line, so that no other process's output lands inside it */
static void emit(struct line *l)
{
	l->buf[l->n++] = '\n';
	sys3(NR_write, 1, (long)l->buf, (long)l->n);
	l->n = 0;
}

/* ------------------------------------------------------------------- probe framework */

/* What a failing probe leaves for the parent to print: in a MAP_SHARED page, since the probe
 * runs in a child process. */
struct result {
	char what[64];
	ulong a, b;
	int set;
};
static struct result *result;

/* Record the first failure: what (and, if given, which field of it: "what.field") and two
 * values, usually the one seen and the one expected. Returns 0 for `return fail(...)`. */
static int fail_field(const char *what, const char *field, ulong a, ulong b)
{
	ulong i = 0, cap = sizeof(result->what) - 1;
	if (!result->set) {
		for (; *what && i < cap; what++)
			result->what[i++] = *what;
		if (field && i < cap)
			result->what[i++] = '.';
		for (; field && *field && i < cap; field++)
			result->what[i++] = *field;
		result->what[i] = 0;
		result->a = a;
		result->b = b;
		result->set = 1;
	}
	return 0;
}

static int fail(const char *what, ulong a, ulong b) { return fail_field(what, 0, a, b); }

#define CHECK(cond, what, a, b) \
	do { if (!(cond)) return fail(what, (ulong)(a), (ulong)(b)); } while (0)
#define CHECKF(cond, what, field, a, b) \
	do { if (!(cond)) return fail_field(what, field, (ulong)(a), (ulong)(b)); } while (0)

static int argc_g;
static char **argv_g, **envp_g;
static ulong *auxv_g;

static ulong auxval(ulong type)
{
	ulong *a;
	for (a = auxv_g; a[0] != AT_NULL; a += 2)
		if (a[0] == type)
			return a[1];
	return 0;
}

/* ------------------------------------------------------------------------ signal helpers */

struct ksigaction {
	void *handler;
	ulong flags;
	void *restorer;
	u32 mask[2];
};

void rt_restorer(void);
void old_restorer(void);

static long sigact(int sig, void *handler, ulong flags, void *restorer)
{
	struct ksigaction a;
	a.handler = handler;
	a.flags = flags;
	a.restorer = restorer;
	a.mask[0] = a.mask[1] = 0;
	return sys4(NR_rt_sigaction, sig, (long)&a, 0, 8);
}

static long sigmask(int how, u32 set, u32 *old)
{
	u32 s[2], o[2];
	long r;
	s[0] = set;
	s[1] = 0;
	r = sys4(NR_rt_sigprocmask, how, (long)s, (long)o, 8);
	if (old)
		*old = o[0];
	return r;
}

static u32 sigbit(int sig) { return 1u << (sig - 1); }

/* ucontext: uc_flags, uc_link, uc_stack (12 bytes), then the sigcontext, in words */
#define MC(uc)		((ulong *)(uc) + 5)
#define MC_EAX		11
#define MC_TRAPNO	12
#define MC_ERR		13
#define MC_EIP		14
#define MC_EFLAGS	16
#define MC_CR2		21

/* ======================================================================= 01 int80 */

/* Plain `int $0x80`: results, error returns, register preservation, data in and out. */
static int p_int80(void)
{
	int fds[2];
	char buf[32], uts[6 * 65];
	static const char msg[] = "int80 through a pipe";
	long v[7], r;

	CHECK(xgetpid() > 1, "getpid", xgetpid(), 0);
	CHECK(sys0(NR_getppid) == 1, "getppid", sys0(NR_getppid), 0);
	CHECK(sys1(NR_close, 999) == -EBADF, "close-ebadf", sys1(NR_close, 999), 0);
	CHECK(sys0(4000) == -ENOSYS, "enosys", sys0(4000), 0);

	v[0] = NR_getpid; v[1] = 0x11111111; v[2] = 0x22222222; v[3] = 0x33333333;
	v[4] = 0x44444444; v[5] = 0x55555555; v[6] = 0x66666666;
	syscall_clobbered = 0;
	r = int80_call(v);
	CHECK(r == xgetpid() && syscall_clobbered == 0, "regs-preserved", r, syscall_clobbered);

	CHECK(sys1(NR_pipe, (long)fds) == 0, "pipe", 0, 0);
	r = sys3(NR_write, fds[1], (long)msg, sizeof(msg));
	CHECK(r == sizeof(msg), "write", r, 0);
	memset(buf, 0, sizeof(buf));
	r = sys3(NR_read, fds[0], (long)buf, sizeof(buf));
	CHECK(r == sizeof(msg) && seq(buf, msg), "read", r, buf[0]);
	xclose(fds[0]);
	xclose(fds[1]);

	CHECK(sys1(NR_uname, (long)uts) == 0, "uname", 0, 0);
	CHECK(seq(uts, "Linux") && prefix(uts + 2 * 65, "2.6.32"), "uname-fields", uts[0],
	      uts[2 * 65]);
	return 1;
}

/* ======================================================================== 02 vdso */

static ulong rd32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (ulong)p[3] << 24; }
static ulong rd16(const u8 *p) { return p[0] | p[1] << 8; }

/* the address of a dynamic symbol of the vDSO image at ehdr, from its section headers, or 0 */
static ulong vdso_sym(const u8 *ehdr, const char *name)
{
	ulong shoff = rd32(ehdr + 32), shnum = rd16(ehdr + 48), phoff = rd32(ehdr + 28);
	ulong base = (ulong)ehdr - rd32(ehdr + phoff + 8);	/* first PT_LOAD's p_vaddr */
	ulong i, j;
	for (i = 0; i < shnum; i++) {
		const u8 *sh = ehdr + shoff + i * 40;
		const u8 *sym, *str;
		ulong n;
		if (rd32(sh + 4) != 11)		/* SHT_DYNSYM */
			continue;
		sym = ehdr + rd32(sh + 16);
		n = rd32(sh + 20) / 16;
		str = ehdr + rd32(ehdr + shoff + rd32(sh + 24) * 40 + 16);
		for (j = 0; j < n; j++)
			if (seq((const char *)str + rd32(sym + j * 16), name))
				return base + rd32(sym + j * 16 + 4);
	}
	return 0;
}

/* The vDSO: AT_SYSINFO from the auxiliary vector, __kernel_vsyscall's SYSENTER path (the
 * kernel's SYSEXIT back), the six-argument case that reads %ebp's argument off the user
 * stack, and the symbols the kernel uses for signal returns. */
static int p_vdso(void)
{
	const u8 *ehdr = (const u8 *)auxval(AT_SYSINFO_EHDR), *code;
	ulong entry = auxval(AT_SYSINFO), i;
	long v[7], r, fd;
	int fds[2], sysenter = 0;
	char buf[16];
	const u8 *map;

	CHECK(entry && ehdr, "auxv", entry, (ulong)ehdr);
	CHECK(auxval(AT_PAGESZ) == PAGE, "at-pagesz", auxval(AT_PAGESZ), 0);
	CHECK(ehdr[0] == 0x7f && ehdr[1] == 'E' && ehdr[2] == 'L' && ehdr[3] == 'F',
	      "vdso-elf", rd32(ehdr), 0);
	CHECK(vdso_sym(ehdr, "__kernel_vsyscall") == entry, "vsyscall-sym",
	      vdso_sym(ehdr, "__kernel_vsyscall"), entry);
	CHECK(vdso_sym(ehdr, "__kernel_sigreturn") && vdso_sym(ehdr, "__kernel_rt_sigreturn"),
	      "sigreturn-syms", vdso_sym(ehdr, "__kernel_sigreturn"),
	      vdso_sym(ehdr, "__kernel_rt_sigreturn"));
	code = (const u8 *)entry;
	for (i = 0; i < 16; i++)
		if (code[i] == 0x0f && code[i + 1] == 0x34)
			sysenter = 1;
	CHECK(sysenter, "no-sysenter-in-vsyscall", rd32(code), rd32(code + 4));
	vdso_entry = (void *)entry;

	v[0] = NR_getpid; v[1] = 0x0badf00d; v[2] = 0x12345678; v[3] = 0x9abcdef0;
	v[4] = 0x0f0f0f0f; v[5] = 0x7e7e7e7e; v[6] = 0x31415926;
	syscall_clobbered = 0;
	r = vdso_call(v);
	CHECK(r == xgetpid(), "getpid", r, xgetpid());
	CHECK(syscall_clobbered == 0, "regs-clobbered", syscall_clobbered, 0);

	CHECK(sys1(NR_pipe, (long)fds) == 0, "pipe", 0, 0);
	v[0] = NR_write; v[1] = fds[1]; v[2] = (long)"sysenter"; v[3] = 8;
	r = vdso_call(v);
	CHECK(r == 8, "write", r, 0);
	memset(buf, 0, sizeof(buf));
	CHECK(sys3(NR_read, fds[0], (long)buf, sizeof(buf)) == 8 && seq(buf, "sysenter"),
	      "write-data", buf[0], 0);

	/* mmap2 with pgoff 1 in %ebp: the kernel's SYSENTER entry fetches it from the user
	 * stack where __kernel_vsyscall saved %ebp */
	fd = sys2(NR_open, (long)"/data", O_RDONLY);
	CHECK(fd >= 0, "open-data", fd, 0);
	v[0] = NR_mmap2; v[1] = 0; v[2] = PAGE; v[3] = PROT_READ; v[4] = MAP_PRIVATE;
	v[5] = fd; v[6] = 1;
	syscall_clobbered = 0;
	r = vdso_call(v);
	CHECK(!is_err(r), "mmap2", r, 0);
	CHECK(syscall_clobbered == 0, "mmap2-regs", syscall_clobbered, 0);
	map = (const u8 *)r;
	for (i = 0; i < PAGE; i++)
		CHECK(map[i] == data_byte(PAGE + i), "mmap2-pgoff-data", i, map[i]);
	return 1;
}

/* ========================================================================= 03 tls */

struct user_desc {
	u32 entry_number;
	u32 base_addr;
	u32 limit;
	u32 flags;	/* seg_32bit:1 contents:2 read_exec_only:1 limit_in_pages:1
			   seg_not_present:1 useable:1 */
};
#define UD_FLAGS	(1u | 1u << 4 | 1u << 6)

static void tls_desc(struct user_desc *d, int entry, void *base)
{
	d->entry_number = (u32)entry;
	d->base_addr = (u32)base;
	d->limit = 0xfffff;
	d->flags = UD_FLAGS;
}

static u32 gs_read(ulong off)
{
	u32 v;
	__asm__ volatile("movl %%gs:(%1), %0" : "=r"(v) : "r"(off) : "memory");
	return v;
}

static void gs_write(ulong off, u32 v)
{
	__asm__ volatile("movl %0, %%gs:(%1)" : : "r"(v), "r"(off) : "memory");
}

static u32 fs_read(ulong off)
{
	u32 v;
	__asm__ volatile("movl %%fs:(%1), %0" : "=r"(v) : "r"(off) : "memory");
	return v;
}

static u32 get_gs(void)
{
	u32 v = 0;
	__asm__ volatile("movw %%gs, %w0" : "+r"(v));
	return v;
}

static u32 get_fs(void)
{
	u32 v = 0;
	__asm__ volatile("movw %%fs, %w0" : "+r"(v));
	return v;
}

static void set_gs(u32 sel) { __asm__ volatile("movw %w0, %%gs" : : "r"(sel) : "memory"); }
static void set_fs(u32 sel) { __asm__ volatile("movw %w0, %%fs" : : "r"(sel) : "memory"); }

static volatile u32 tls_a[64] __attribute__((aligned(64)));
static volatile u32 tls_b[64] __attribute__((aligned(64)));

/* set_thread_area with entry_number -1: a GDT TLS slot; a selector on it in %gs (glibc's
 * TLS) and another in %fs (Wine's), kept across syscalls, context switches and fork. */
static int p_tls(void)
{
	struct user_desc d, q;
	u32 sel, sel2, i;
	long pid, r;
	int status;

	tls_desc(&d, -1, (void *)tls_a);
	r = sys1(NR_set_thread_area, (long)&d);
	CHECK(r == 0, "set_thread_area", r, 0);
	CHECK(d.entry_number >= 6 && d.entry_number <= 8, "entry", d.entry_number, 0);
	sel = d.entry_number * 8 + 3;
	set_gs(sel);
	CHECK(get_gs() == sel, "gs-selector", get_gs(), sel);
	gs_write(0, 0x7e570001u);
	CHECK(tls_a[0] == 0x7e570001u, "gs-write", tls_a[0], 0);
	tls_a[5] = 0xcafe0005u;
	CHECK(gs_read(20) == 0xcafe0005u, "gs-read", gs_read(20), 0);

	tls_desc(&d, -1, (void *)tls_b);
	r = sys1(NR_set_thread_area, (long)&d);
	CHECK(r == 0 && d.entry_number * 8 + 3 != sel, "second-entry", r, d.entry_number);
	sel2 = d.entry_number * 8 + 3;
	set_fs(sel2);
	tls_b[3] = 0xf5000003u;
	CHECK(fs_read(12) == 0xf5000003u, "fs-read", fs_read(12), 0);

	q.entry_number = sel / 8;
	CHECK(sys1(NR_get_thread_area, (long)&q) == 0 && q.base_addr == (u32)tls_a,
	      "get_thread_area", q.base_addr, (u32)tls_a);

	for (i = 0; i < 20; i++) {
		xyield();
		xgetpid();
		CHECK(get_gs() == sel && gs_read(0) == 0x7e570001u, "gs-after-yield", get_gs(),
		      gs_read(0));
		CHECK(get_fs() == sel2 && fs_read(12) == 0xf5000003u, "fs-after-yield",
		      get_fs(), fs_read(12));
	}

	pid = sys0(NR_fork);
	if (pid == 0) {
		/* the child inherits the descriptors and its own copy of the blocks */
		int ok = get_gs() == sel && gs_read(0) == 0x7e570001u && fs_read(12) == 0xf5000003u;
		gs_write(0, 0xc41d0000u);
		for (i = 0; i < 10; i++)
			xyield();
		ok = ok && tls_a[0] == 0xc41d0000u && gs_read(0) == 0xc41d0000u;
		exit_group(ok ? 0 : 1);
	}
	CHECK(pid > 0, "fork", pid, 0);
	for (i = 0; i < 10; i++)
		xyield();
	CHECK(xwait(pid, &status) == pid && status == 0, "child", status, 0);
	CHECK(gs_read(0) == 0x7e570001u, "gs-after-child", gs_read(0), 0);
	set_fs(0);
	return 1;
}

/* ====================================================================== 04 thread */

#define ROUNDS 16
static volatile int turn, tid_word, thread_ptid, sig_tid;
static volatile u32 thread_tls_seen, thread_pid, thread_tid, thread_out[ROUNDS];
static volatile u32 tls_thread[64] __attribute__((aligned(64)));

long thread_spawn(ulong flags, void *stack_top, volatile int *ptid, void *tls,
		  volatile int *ctid, int (*fn)(void *), void *arg);

static void usr1_tid(int sig)
{
	(void)sig;
	sig_tid = (int)xgettid();
}

/* the thread: its own TLS, the parent's memory, a futex ping-pong with the parent */
static int thread_fn(void *arg)
{
	int i, t;
	thread_tls_seen = gs_read(0);
	thread_pid = (u32)xgetpid();
	thread_tid = (u32)xgettid();
	for (i = 0; i < ROUNDS; i++) {
		while ((t = turn) != 2 * i + 1)
			futex(&turn, FUTEX_WAIT, t);
		thread_out[i] = (u32)i * 0x01010101u + (u32)arg;
		turn = 2 * i + 2;
		futex(&turn, FUTEX_WAKE, 1);
	}
	return 0;
}

/* clone(CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID) on its
 * own stack, as pthread_create does; joined through the CLEARTID futex, as pthread_join
 * does; a tgkill aimed at the thread runs the shared handler on the thread. */
static int p_thread(void)
{
	struct user_desc d, td;
	u8 *stack;
	long tid, r;
	int i, t, spins;
	u32 sel;

	tls_desc(&d, -1, (void *)tls_a);
	CHECK(sys1(NR_set_thread_area, (long)&d) == 0, "set_thread_area", 0, 0);
	sel = d.entry_number * 8 + 3;
	set_gs(sel);
	tls_a[0] = 0x9a7e0000u;
	tls_thread[0] = 0x7ead0000u;
	tls_desc(&td, (int)d.entry_number, (void *)tls_thread);
	CHECK(sigact(SIGUSR1, (void *)usr1_tid, SA_SIGINFO | SA_RESTORER | SA_RESTART,
		     (void *)rt_restorer) == 0, "sigaction", 0, 0);

	stack = xmmap(0, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(stack, "stack", 0, 0);
	turn = 0;
	tid_word = -1;
	tid = thread_spawn(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
			   CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID |
			   CLONE_CHILD_CLEARTID,
			   stack + 64 * 1024, &tid_word, &td, &tid_word, thread_fn,
			   (void *)0x00a0b000);
	CHECK(tid > 0, "clone", tid, 0);
	CHECK(tid_word == tid, "parent-settid", tid_word, tid);
	for (i = 0; i < ROUNDS; i++) {
		turn = 2 * i + 1;
		futex(&turn, FUTEX_WAKE, 1);
		while ((t = turn) != 2 * i + 2)
			futex(&turn, FUTEX_WAIT, t);
		CHECK(thread_out[i] == (u32)i * 0x01010101u + 0x00a0b000u, "round", i,
		      thread_out[i]);
		CHECK(gs_read(0) == 0x9a7e0000u, "parent-tls", i, gs_read(0));
		if (i == 5) {
			/* the thread is (about to be) blocked in FUTEX_WAIT for round 6 */
			r = sys3(NR_tgkill, xgetpid(), tid, SIGUSR1);
			CHECK(r == 0, "tgkill", r, 0);
			for (spins = 0; sig_tid == 0 && spins < 100000; spins++)
				xyield();
			CHECK(sig_tid == tid, "signal-on-thread", sig_tid, tid);
		}
	}
	/* join: the kernel clears tid_word and wakes it when the thread exits */
	while ((t = tid_word) != 0)
		futex(&tid_word, FUTEX_WAIT, t);
	CHECK(thread_pid == (u32)xgetpid(), "thread-tgid", thread_pid, xgetpid());
	CHECK(thread_tid == (u32)tid && (long)thread_tid != xgetpid(), "thread-tid", thread_tid,
	      tid);
	CHECK(thread_tls_seen == 0x7ead0000u, "thread-tls", thread_tls_seen, 0);
	CHECK(gs_read(0) == 0x9a7e0000u, "parent-tls-end", gs_read(0), 0);
	return 1;
}

/* ========================================================================= 05 fpu */

struct fpu_frame {
	int x87_in[8];
	u32 xmm_in[32];
	int x87_out[8];
	u32 xmm_out[32];
	long nr, a, b, c, ret;
	u32 cw, mxcsr;
};

void fpu_hold(struct fpu_frame *f);
void fpu_clobber(void);
void fpu_arith(u32 out[10]);
void fpu_setmode(u32 cw, u32 mxcsr);
u32 fpu_getcw(void);
u32 fpu_getmxcsr(void);

/* round to nearest (parent) and toward zero (child), both with double precision on x87 */
#define CW_NEAR		0x027fu
#define CW_TRUNC	0x0e7fu
#define MX_NEAR		0x1f80u
#define MX_TRUNC	0x7f80u

/* 1/10 and sqrt(2) as double and float bits under each rounding mode */
static const u32 arith_near[10] = { 0x9999999a, 0x3fb99999, 0x667f3bcd, 0x3ff6a09e,
				    0x3dcccccd, 0x3fb504f3, 0x9999999a, 0x3fb99999,
				    0x667f3bcd, 0x3ff6a09e };
static const u32 arith_trunc[10] = { 0x99999999, 0x3fb99999, 0x667f3bcc, 0x3ff6a09e,
				     0x3dcccccc, 0x3fb504f3, 0x99999999, 0x3fb99999,
				     0x667f3bcc, 0x3ff6a09e };

static void fpu_fill(struct fpu_frame *f, u32 seed, u32 step)
{
	u32 i;
	memset(f, 0, sizeof(*f));
	for (i = 0; i < 8; i++)
		f->x87_in[i] = (int)(seed * 1000003u + step * 101u + i * 7u);
	for (i = 0; i < 32; i++)
		f->xmm_in[i] = (seed << 24) ^ (step * 0x10001u) ^ (i * 0x9e3779b9u);
}

/* 0 when the registers survived f->nr and the control words are the process's own */
static int fpu_check(const struct fpu_frame *f, u32 cw, u32 mx)
{
	u32 i;
	for (i = 0; i < 8; i++)
		if (f->x87_out[i] != f->x87_in[i])
			return 1;
	for (i = 0; i < 32; i++)
		if (f->xmm_out[i] != f->xmm_in[i])
			return 2;
	if ((f->cw & 0xffff) != cw)
		return 3;
	if ((f->mxcsr & ~0x3fu) != mx)	/* not the sticky exception flags */
		return 4;
	return 0;
}

static int fpu_steps(u32 seed, int rfd, int wfd, u32 cw, u32 mx, const u32 *want,
		     ulong *bad)
{
	struct fpu_frame f;
	u32 res[10], step, i;
	char tok = 't';
	int e;

	for (step = 0; step < 40; step++) {
		fpu_fill(&f, seed, step);
		f.nr = NR_sched_yield;
		fpu_hold(&f);
		if ((e = fpu_check(&f, cw, mx)) != 0)
			return *bad = step, 10 + e;
		/* hand the CPU to the other process and wait until it hands it back: each
		 * read blocks, so every step switches between two live FPU states */
		fpu_fill(&f, seed, step + 1000);
		f.nr = NR_write; f.a = wfd; f.b = (long)&tok; f.c = 1;
		fpu_hold(&f);
		if (f.ret != 1)
			return *bad = (ulong)f.ret, 20;
		if ((e = fpu_check(&f, cw, mx)) != 0)
			return *bad = step, 20 + e;
		fpu_fill(&f, seed, step + 2000);
		f.nr = NR_read; f.a = rfd; f.b = (long)&tok; f.c = 1;
		fpu_hold(&f);
		if (f.ret != 1)
			return *bad = (ulong)f.ret, 30;
		if ((e = fpu_check(&f, cw, mx)) != 0)
			return *bad = step, 30 + e;
		fpu_arith(res);
		for (i = 0; i < 10; i++)
			if (res[i] != want[i])
				return *bad = i << 16 | step, 40;
	}
	return 0;
}

static int have_sse2(void)
{
	u32 a = 1, b, c, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d));
	return (d & (1u << 25)) && (d & (1u << 26)) && (d & (1u << 24));	/* SSE SSE2 FXSR */
}

/* Two processes keep x87 and SSE registers live across yields and blocking pipe handoffs,
 * with different rounding modes: the kernel's lazy FPU switching (CR0.TS, #NM, fxsave /
 * fxrstor) must give each its own registers and control words back. */
static int p_fpu(void)
{
	int p2c[2], c2p[2], status, e;
	u32 res[10], i;
	ulong bad = 0;
	long pid;
	char tok = 's';

	CHECK(have_sse2(), "no-sse2", 0, 0);
	fpu_setmode(CW_NEAR, MX_NEAR);
	CHECK(fpu_getcw() == CW_NEAR && (fpu_getmxcsr() & ~0x3fu) == MX_NEAR, "setmode",
	      fpu_getcw(), fpu_getmxcsr());
	fpu_arith(res);
	for (i = 0; i < 10; i++)
		CHECK(res[i] == arith_near[i], "arith-near", i, res[i]);
	CHECK(sys1(NR_pipe, (long)p2c) == 0 && sys1(NR_pipe, (long)c2p) == 0, "pipe", 0, 0);

	pid = sys0(NR_fork);
	if (pid == 0) {
		xclose(p2c[1]);
		xclose(c2p[0]);
		/* fork copies the FPU state: the parent's modes first */
		if (fpu_getcw() != CW_NEAR || (fpu_getmxcsr() & ~0x3fu) != MX_NEAR)
			exit_group(1);
		fpu_setmode(CW_TRUNC, MX_TRUNC);
		if (sys3(NR_read, p2c[0], (long)&tok, 1) != 1)
			exit_group(2);
		e = fpu_steps(2, p2c[0], c2p[1], CW_TRUNC, MX_TRUNC, arith_trunc, &bad);
		exit_group(e ? 3 + e : 0);
	}
	CHECK(pid > 0, "fork", pid, 0);
	xclose(p2c[0]);
	xclose(c2p[1]);
	/* the child waits for this first token, then both alternate */
	CHECK(sys3(NR_write, p2c[1], (long)&tok, 1) == 1, "start", 0, 0);
	e = fpu_steps(1, c2p[0], p2c[1], CW_NEAR, MX_NEAR, arith_near, &bad);
	xclose(p2c[1]);
	xclose(c2p[0]);
	CHECK(xwait(pid, &status) == pid, "wait", 0, 0);
	CHECK(e == 0, "parent", e, bad);
	CHECK(status == 0, "child", (ulong)status >> 8, status & 0x7f);
	return 1;
}

/* ===================================================================== 06 signals */

static volatile int usr1_n, usr2_n, hup_n, term_n, nested;
static volatile int usr1_sig, usr1_code, usr1_pid;
static volatile u32 usr1_mask, usr1_cw;
static volatile ulong usr1_eax;
static volatile int usr1_raise_usr2, usr1_clobber_fpu;

static void usr1_handler(int sig, int *si, void *uc)
{
	u32 m;
	usr1_n++;
	usr1_sig = sig;
	usr1_code = si[2];
	usr1_pid = si[3];
	usr1_eax = MC(uc)[MC_EAX];
	sigmask(SIG_BLOCK, 0, &m);
	usr1_mask = m;
	if (usr1_raise_usr2) {
		int before = usr2_n;
		xkill(xgetpid(), SIGUSR2);	/* nested: runs before this handler resumes */
		nested = usr2_n == before + 1;
	}
	if (usr1_clobber_fpu) {
		usr1_cw = fpu_getcw();	/* a fresh FPU state for the handler */
		fpu_clobber();
	}
}

static void usr2_handler(int sig)
{
	if (sig == SIGUSR2)
		usr2_n++;
}

static void hup_handler(int sig, int *si, void *uc)
{
	(void)uc;
	if (sig == SIGHUP && si[0] == SIGHUP)
		hup_n++;
}

static void term_handler(int sig)
{
	if (sig == SIGTERM)
		term_n++;
}

/* Handlers installed with rt_sigaction and run for kill(getpid()): RT frames (SA_SIGINFO)
 * and legacy frames, returning through our own restorer or the vDSO's; the interrupted
 * syscall's result and every register come back; masks, pending signals, nesting, and the
 * FPU state across a handler that clobbers it. */
static int p_signals(void)
{
	long v[7], r;
	u32 m, pend[2];
	struct fpu_frame f;

	CHECK(sigact(SIGUSR1, (void *)usr1_handler, SA_SIGINFO | SA_RESTORER,
		     (void *)rt_restorer) == 0, "sigaction-usr1", 0, 0);
	CHECK(sigact(SIGUSR2, (void *)usr2_handler, 0, 0) == 0, "sigaction-usr2", 0, 0);
	CHECK(sigact(SIGHUP, (void *)hup_handler, SA_SIGINFO, 0) == 0, "sigaction-hup", 0, 0);
	CHECK(sigact(SIGTERM, (void *)term_handler, SA_RESTORER, (void *)old_restorer) == 0,
	      "sigaction-term", 0, 0);

	/* SA_SIGINFO + own restorer; kill's registers around the delivery */
	v[0] = NR_kill; v[1] = xgetpid(); v[2] = SIGUSR1; v[3] = 0x3333cccc;
	v[4] = 0x4444dddd; v[5] = 0x5555eeee; v[6] = 0x6666ffff;
	syscall_clobbered = 0;
	r = int80_call(v);
	CHECK(r == 0, "kill", r, 0);
	CHECK(usr1_n == 1, "usr1-count", usr1_n, 0);
	CHECK(syscall_clobbered == 0, "regs-after-sigreturn", syscall_clobbered, 0);
	CHECK(usr1_sig == SIGUSR1 && usr1_code == SI_USER && usr1_pid == xgetpid(), "siginfo",
	      usr1_code, usr1_pid);
	CHECK(usr1_eax == 0, "uc-eax", usr1_eax, 0);
	CHECK(usr1_mask & sigbit(SIGUSR1), "mask-in-handler", usr1_mask, 0);
	CHECK(sigmask(SIG_BLOCK, 0, &m) == 0 && m == 0, "mask-after", m, 0);

	/* legacy frame through the vDSO's __kernel_sigreturn; RT frame through
	 * __kernel_rt_sigreturn; legacy frame through our own restorer */
	CHECK(xkill(xgetpid(), SIGUSR2) == 0 && usr2_n == 1, "usr2-vdso-sigreturn", usr2_n, 0);
	CHECK(xkill(xgetpid(), SIGHUP) == 0 && hup_n == 1, "hup-vdso-rt-sigreturn", hup_n, 0);
	CHECK(xkill(xgetpid(), SIGTERM) == 0 && term_n == 1, "term-old-restorer", term_n, 0);

	/* blocked: pending, then delivered on unblock */
	CHECK(sigmask(SIG_BLOCK, sigbit(SIGUSR1), 0) == 0, "block", 0, 0);
	CHECK(xkill(xgetpid(), SIGUSR1) == 0 && usr1_n == 1, "blocked-delivered", usr1_n, 0);
	pend[0] = pend[1] = 0;
	CHECK(sys2(NR_rt_sigpending, (long)pend, 8) == 0 && (pend[0] & sigbit(SIGUSR1)),
	      "pending", pend[0], 0);
	CHECK(sigmask(SIG_UNBLOCK, sigbit(SIGUSR1), 0) == 0 && usr1_n == 2, "unblock", usr1_n,
	      0);

	/* nested delivery: USR2 raised inside the USR1 handler */
	usr1_raise_usr2 = 1;
	CHECK(xkill(xgetpid(), SIGUSR1) == 0 && usr1_n == 3 && nested && usr2_n == 2, "nested",
	      usr1_n, usr2_n);
	usr1_raise_usr2 = 0;

	/* the FPU registers live across the kill survive a handler that clobbers them */
	usr1_clobber_fpu = 1;
	fpu_setmode(CW_TRUNC, MX_TRUNC);
	fpu_fill(&f, 7, 7);
	f.nr = NR_kill; f.a = xgetpid(); f.b = SIGUSR1;
	fpu_hold(&f);
	CHECK(f.ret == 0 && usr1_n == 4, "fpu-kill", f.ret, usr1_n);
	CHECK(fpu_check(&f, CW_TRUNC, MX_TRUNC) == 0, "fpu-after-handler",
	      fpu_check(&f, CW_TRUNC, MX_TRUNC), f.cw);
	CHECK(usr1_cw == 0x037f, "handler-fresh-fpu", usr1_cw, 0);
	return 1;
}

/* ====================================================================== 07 faults */

extern char fault_read_insn[], fault_read_resume[], fault_write_insn[], fault_write_resume[];
extern char fault_div_insn[], fault_div_resume[], fault_ud2_insn[], fault_ud2_resume[];
extern char fault_hlt_insn[], fault_hlt_resume[], fault_int3_insn[], fault_int3_resume[];
extern char fault_step_insn[], fault_step_resume[];
extern char fault_x87_insn[], fault_x87_resume[];
extern char fault_rdtsc_insn[], fault_rdtsc_resume[];
u32 fault_read(const volatile void *p);
u32 fault_write(volatile void *p, u32 v);
u32 fault_div(u32 d);
u32 fault_ud2(void);
u32 fault_hlt(void);
u32 fault_int3(void);
u32 fault_step(void);
u32 fault_x87(void);
u32 fault_rdtsc(void);

static const struct site {
	const char *insn, *resume;
} sites[] = {
	{ fault_read_insn, fault_read_resume },
	{ fault_write_insn, fault_write_resume },
	{ fault_div_insn, fault_div_resume },
	{ fault_ud2_insn, fault_ud2_resume },
	{ fault_hlt_insn, fault_hlt_resume },
	{ fault_int3_insn, fault_int3_resume },
	{ fault_step_insn, fault_step_resume },
	{ fault_x87_insn, fault_x87_resume },
	{ fault_rdtsc_insn, fault_rdtsc_resume },
};

static volatile struct {
	int n, sig, code;
	ulong addr, trapno, err, cr2, eip;
	int on_altstack;
} last;
static u8 *altstack;
#define ALTSTACK_SIZE (16 * 1024)

/* One handler for every fault: record what the kernel reports, then resume past the
 * instruction by editing the ucontext (EIP, and EAX as the marker the site returns). */
static void fault_handler(int sig, int *si, void *uc)
{
	ulong *mc = MC(uc), eip = mc[MC_EIP], i;
	u8 here;
	last.n++;
	last.sig = sig;
	last.code = si[2];
	last.addr = (ulong)si[3];
	last.trapno = mc[MC_TRAPNO];
	last.err = mc[MC_ERR];
	last.cr2 = mc[MC_CR2];
	last.eip = eip;
	last.on_altstack = &here >= altstack && &here < altstack + ALTSTACK_SIZE;
	for (i = 0; i < sizeof(sites) / sizeof(sites[0]); i++) {
		if (eip == (ulong)sites[i].insn || eip == (ulong)sites[i].resume) {
			mc[MC_EIP] = (ulong)sites[i].resume;
			mc[MC_EAX] = FAULT_MARKER;
			mc[MC_EFLAGS] &= ~0x100ul;	/* TF, for the single step */
			return;
		}
	}
	exit_group(0x7e);	/* a fault nobody expected */
}

/* the fault the site just took: the handler ran once more (n), with this signal, si_code,
 * trap number, page-fault error code (err < 0: any) and si_addr (1: any), on the alt stack */
static int expect(const char *what, u32 ret, int sig, int code, ulong trapno, long err,
		  ulong addr, int n)
{
	CHECKF(ret == FAULT_MARKER, what, "no-fault", ret, 0);
	CHECKF(last.n == n, what, "count", last.n, n);
	CHECKF(last.sig == sig, what, "signo", last.sig, sig);
	CHECKF(last.code == code, what, "si_code", last.code, code);
	CHECKF(last.trapno == trapno, what, "trapno", last.trapno, trapno);
	CHECKF(err < 0 || last.err == (ulong)err, what, "err", last.err, err);
	CHECKF(addr == 1 || last.addr == addr, what, "si_addr", last.addr, addr);
	CHECKF(last.on_altstack, what, "altstack", 0, 0);
	return 1;
}

/* Deliberate faults, each caught by a SA_SIGINFO handler on an alternate stack that checks
 * si_code, the trap number, the page-fault error code and CR2, and resumes by editing EIP:
 * page faults (unmapped, read-only, kernel address, beyond a file's end), #DE, #UD, #GP, #BP,
 * a single step (#DB), an unmasked x87 exception (#MF) and RDTSC under CR4.TSD (#GP).
 * (Not an unmasked SSE exception: QEMU's TCG, the reference, does not raise #XM.) */
static int p_faults(void)
{
	struct { void *sp; int flags; ulong size; } ss;
	volatile u32 *ro;
	const volatile u8 *file;
	long fd;
	int n = 0;

	altstack = xmmap(0, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	CHECK(altstack, "altstack-mmap", 0, 0);
	ss.sp = altstack;
	ss.flags = 0;
	ss.size = ALTSTACK_SIZE;
	CHECK(sys2(NR_sigaltstack, (long)&ss, 0) == 0, "sigaltstack", 0, 0);
	static const int sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP };
	for (unsigned k = 0; k < sizeof(sigs) / sizeof(sigs[0]); k++)
		CHECK(sigact(sigs[k], (void *)fault_handler,
			     SA_SIGINFO | SA_RESTORER | SA_ONSTACK, (void *)rt_restorer) == 0,
		      "sigaction", sigs[k], 0);

	if (!expect("unmapped-read", fault_read((void *)0x1000), SIGSEGV, SEGV_MAPERR, 14, 4,
		    0x1000, ++n))
		return 0;
	CHECK(last.cr2 == 0x1000, "unmapped-cr2", last.cr2, 0);

	ro = xmmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro, "mmap", 0, 0);
	ro[10] = 0x5eed;
	CHECK(sys3(NR_mprotect, (long)ro, PAGE, PROT_READ) == 0, "mprotect", 0, 0);
	CHECK(fault_read(ro + 10) == 0x5eed && last.n == n, "ro-read", ro[10], last.n);
	if (!expect("ro-write", fault_write(ro + 10, 1), SIGSEGV, SEGV_ACCERR, 14, 7,
		    (ulong)(ro + 10), ++n))
		return 0;
	CHECK(ro[10] == 0x5eed && last.cr2 == (ulong)(ro + 10), "ro-after", ro[10], last.cr2);

	if (!expect("kernel-read", fault_read((void *)0xc0000000), SIGSEGV, SEGV_MAPERR, 14, 5,
		    0xc0000000, ++n))
		return 0;

	/* a file mapping past the file's end: SIGBUS */
	fd = sys2(NR_open, (long)"/data", O_RDONLY);
	CHECK(fd >= 0, "open", fd, 0);
	file = xmmap(0, 6 * PAGE, PROT_READ, MAP_PRIVATE, (int)fd, 0);
	CHECK(file, "mmap-file", 0, 0);
	CHECK(fault_read(file + 3 * PAGE) == rd32((const u8 *)file + 3 * PAGE) && last.n == n,
	      "file-last-page", last.n, 0);
	if (!expect("beyond-eof", fault_read(file + 5 * PAGE), SIGBUS, BUS_ADRERR, 14, 4,
		    (ulong)(file + 5 * PAGE), ++n))
		return 0;

	if (!expect("divide", fault_div(0), SIGFPE, FPE_INTDIV, 0, -1, (ulong)fault_div_insn,
		    ++n))
		return 0;
	CHECK(fault_div(7) == 14 && last.n == n, "divide-ok", fault_div(7), 0);
	if (!expect("ud2", fault_ud2(), SIGILL, ILL_ILLOPN, 6, -1, (ulong)fault_ud2_insn, ++n))
		return 0;
	if (!expect("hlt-gp", fault_hlt(), SIGSEGV, SI_KERNEL, 13, 0, 1, ++n))
		return 0;
	if (!expect("int3", fault_int3(), SIGTRAP, SI_KERNEL, 3, -1, 1, ++n))
		return 0;
	CHECK(last.eip == (ulong)fault_int3_resume, "int3-eip", last.eip, 0);
	if (!expect("single-step", fault_step(), SIGTRAP, TRAP_TRACE, 1, -1, 1, ++n))
		return 0;
	CHECK(last.eip == (ulong)fault_step_resume, "step-eip", last.eip, 0);
	if (!expect("x87-zerodivide", fault_x87(), SIGFPE, FPE_FLTDIV, 16, -1,
		    (ulong)fault_x87_insn, ++n))
		return 0;

	/* RDTSC: allowed at CPL 3, then forbidden by CR4.TSD, then allowed again */
	fault_rdtsc();
	CHECK(last.n == n, "rdtsc", last.n, n);
	CHECK(sys2(NR_prctl, 26 /* PR_SET_TSC */, 2 /* PR_TSC_SIGSEGV */) == 0, "prctl-tsc",
	      0, 0);
	if (!expect("rdtsc-tsd", fault_rdtsc(), SIGSEGV, SI_KERNEL, 13, 0, 1, ++n))
		return 0;
	CHECK(sys2(NR_prctl, 26, 1 /* PR_TSC_ENABLE */) == 0, "prctl-tsc-enable", 0, 0);
	fault_rdtsc();
	CHECK(last.n == n, "rdtsc-enabled", last.n, n);
	return 1;
}

/* =================================================================== 08 mmap-file */

struct stat64_prefix {
	u8 pad[16];
	u32 mode;
	u8 pad2[24];
	u32 size_lo, size_hi;
	u8 rest[52];
};

/* /data from the initramfs: read(), fstat64, MAP_PRIVATE read-only (with the zero tail past
 * EOF), an offset mapping, a private writable copy that leaves the file alone, and a
 * MAP_SHARED writable mapping of a new file that read() then sees. */
static int p_mmap_file(void)
{
	struct stat64_prefix st;
	static u8 buf[DATA_SIZE + 16];
	const u8 *m, *m2;
	u8 *w, *s, inv;
	long fd, fd2, r;
	u32 i;

	fd = sys2(NR_open, (long)"/data", O_RDONLY);
	CHECK(fd >= 0, "open", fd, 0);
	CHECK(sys2(NR_fstat64, fd, (long)&st) == 0, "fstat64", 0, 0);
	CHECK(st.size_lo == DATA_SIZE && st.size_hi == 0 && (st.mode & 0170000) == 0100000,
	      "stat", st.size_lo, st.mode);
	r = sys3(NR_read, fd, (long)buf, sizeof(buf));
	CHECK(r == DATA_SIZE, "read", r, 0);
	for (i = 0; i < DATA_SIZE; i++)
		CHECK(buf[i] == data_byte(i), "read-data", i, buf[i]);

	m = xmmap(0, 4 * PAGE, PROT_READ, MAP_PRIVATE, (int)fd, 0);
	CHECK(m, "mmap", 0, 0);
	for (i = 0; i < DATA_SIZE; i++)
		CHECK(m[i] == data_byte(i), "mmap-data", i, m[i]);
	for (; i < 4 * PAGE; i++)
		CHECK(m[i] == 0, "mmap-tail", i, m[i]);

	m2 = xmmap(0, 2 * PAGE, PROT_READ, MAP_SHARED, (int)fd, 2);
	CHECK(m2, "mmap-offset", 0, 0);
	for (i = 0; i < DATA_SIZE - 2 * PAGE; i++)
		CHECK(m2[i] == data_byte(2 * PAGE + i), "offset-data", i, m2[i]);

	w = xmmap(0, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, (int)fd, 0);
	CHECK(w, "mmap-private-rw", 0, 0);
	CHECK(w[100] == data_byte(100), "private-before", w[100], 0);
	for (i = 0; i < PAGE; i++)
		w[i] = (u8)~w[i];
	inv = (u8)~data_byte(100);
	CHECK(w[100] == inv, "private-write", w[100], 0);
	CHECK(m[100] == data_byte(100), "private-leak-map", m[100], 0);
	buf[0] = 0;
	CHECK(sys5(NR_pread64, fd, (long)buf, 200, 0, 0) == 200 && buf[100] == data_byte(100),
	      "private-leak-file", buf[100], 0);
	/* MADV_DONTNEED drops the private copy: the file's bytes show again */
	CHECK(sys3(NR_madvise, (long)w, PAGE, MADV_DONTNEED) == 0, "madvise", 0, 0);
	CHECK(w[100] == data_byte(100), "dontneed-file", w[100], 0);
	xclose((int)fd);

	fd2 = sys3(NR_open, (long)"/scratch", O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd2 >= 0, "create", fd2, 0);
	CHECK(sys2(NR_ftruncate, fd2, 2 * PAGE) == 0, "ftruncate", 0, 0);
	s = xmmap(0, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd2, 0);
	CHECK(s, "mmap-shared-file", 0, 0);
	for (i = 0; i < 2 * PAGE; i++)
		s[i] = (u8)(i * 7 + 3);
	CHECK(sys5(NR_pread64, fd2, (long)buf, 2 * PAGE, 0, 0) == 2 * PAGE, "pread", 0, 0);
	for (i = 0; i < 2 * PAGE; i++)
		CHECK(buf[i] == (u8)(i * 7 + 3), "shared-file-data", i, buf[i]);
	sys2(NR_munmap, (long)s, 2 * PAGE);
	xclose((int)fd2);
	sys1(NR_unlink, (long)"/scratch");
	return 1;
}

/* ================================================================= 09 mmap-shared */

/* MAP_SHARED|MAP_ANONYMOUS: what a fork child writes, the parent reads, and back. */
static int p_mmap_shared(void)
{
	volatile u32 *sh;
	long pid;
	int status;
	u32 i, words = 8 * PAGE / 4;

	sh = xmmap(0, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(sh, "mmap", 0, 0);
	sh[0] = 0x9a4e47u;
	pid = sys0(NR_fork);
	if (pid == 0) {
		if (sh[0] != 0x9a4e47u)
			exit_group(1);
		for (i = 1; i < words; i++)
			sh[i] = i * 0x2545f491u;
		while (sh[0] != 0x60u)	/* the parent answers through the same page */
			xyield();
		exit_group(0);
	}
	CHECK(pid > 0, "fork", pid, 0);
	while (sh[words - 1] != (words - 1) * 0x2545f491u)
		xyield();
	for (i = 1; i < words; i++)
		CHECK(sh[i] == i * 0x2545f491u, "data", i, sh[i]);
	sh[0] = 0x60u;
	CHECK(xwait(pid, &status) == pid && status == 0, "child", status, 0);
	return 1;
}

/* ============================================================== 10 mremap-madvise */

static long xmremap(void *old, ulong old_len, ulong new_len, int flags, void *new_addr)
{
	return sys5(NR_mremap, (long)old, (long)old_len, (long)new_len, flags, (long)new_addr);
}

/* mremap growing in place, failing to, moving (MAYMOVE and FIXED), shrinking; mincore to
 * see what is mapped; MADV_DONTNEED zeroing an anonymous page. */
static int p_mremap(void)
{
	volatile u32 *a, *b, *c, *d;
	u8 vec[16];
	long r;
	u32 i, w = PAGE / 4;

	/* in place: the 4 pages after a are free once unmapped */
	a = xmmap(0, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(a, "mmap-a", 0, 0);
	for (i = 0; i < 8; i++)
		a[i * w] = 0xa0000000u + i;
	CHECK(sys2(NR_munmap, (long)(a + 4 * w), 4 * PAGE) == 0, "munmap", 0, 0);
	CHECK(sys3(NR_mincore, (long)(a + 4 * w), PAGE, (long)vec) == -ENOMEM, "mincore-hole",
	      0, 0);
	r = xmremap((void *)a, 4 * PAGE, 8 * PAGE, 0, 0);
	CHECK(r == (long)a, "grow-in-place", r, (ulong)a);
	for (i = 0; i < 8; i++)
		CHECK(a[i * w] == (i < 4 ? 0xa0000000u + i : 0), "grown-data", i, a[i * w]);
	a[7 * w] = 7;

	/* blocked growth: the page after b is another mapping */
	b = xmmap(0, 5 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(b, "mmap-b", 0, 0);
	for (i = 0; i < 5; i++)
		b[i * w + 3] = 0xb0000000u + i;
	CHECK(sys3(NR_mprotect, (long)(b + 4 * w), PAGE, PROT_READ) == 0, "mprotect", 0, 0);
	r = xmremap((void *)b, 4 * PAGE, 16 * PAGE, 0, 0);
	CHECK(r == -ENOMEM, "grow-blocked", r, 0);
	r = xmremap((void *)b, 4 * PAGE, 16 * PAGE, MREMAP_MAYMOVE, 0);
	CHECK(!is_err(r) && r != (long)b, "move", r, (ulong)b);
	c = (volatile u32 *)r;
	for (i = 0; i < 16; i++)
		CHECK(c[i * w + 3] == (i < 4 ? 0xb0000000u + i : 0), "moved-data", i,
		      c[i * w + 3]);
	for (i = 4; i < 16; i++)
		c[i * w] = i;
	CHECK(sys3(NR_mincore, (long)b, 4 * PAGE, (long)vec) == -ENOMEM, "old-unmapped", 0, 0);
	CHECK(b[4 * w + 3] == 0xb0000004u, "neighbour", b[4 * w + 3], 0);

	/* shrink, then move to a fixed place */
	CHECK(xmremap((void *)c, 16 * PAGE, 2 * PAGE, 0, 0) == (long)c, "shrink", 0, 0);
	CHECK(sys3(NR_mincore, (long)(c + 2 * w), PAGE, (long)vec) == -ENOMEM, "shrunk", 0, 0);
	d = xmmap(0, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(d, "mmap-d", 0, 0);
	r = xmremap((void *)c, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED,
		    (void *)(d + w));
	CHECK(r == (long)(d + w), "fixed", r, (ulong)(d + w));
	CHECK(d[w + 3] == 0xb0000000u && d[2 * w + 3] == 0xb0000001u, "fixed-data", d[w + 3],
	      d[2 * w + 3]);
	CHECK(sys3(NR_mincore, (long)(d + w), 2 * PAGE, (long)vec) == 0 && (vec[0] & 1) &&
	      (vec[1] & 1), "mincore-resident", vec[0], vec[1]);

	/* MADV_DONTNEED on anonymous memory: zero on the next touch */
	for (i = 0; i < w; i++)
		a[i] = ~i;
	CHECK(sys3(NR_madvise, (long)a, PAGE, MADV_DONTNEED) == 0, "madvise", 0, 0);
	for (i = 0; i < w; i++)
		CHECK(a[i] == 0, "dontneed-zero", i, a[i]);
	CHECK(a[w] == 0xa0000001u && a[7 * w] == 7, "dontneed-others", a[w], a[7 * w]);
	return 1;
}

/* ====================================================================== 11 procfs */

static char text[32768];

static long slurp(const char *path)
{
	long fd = sys2(NR_open, (long)path, O_RDONLY), n = 0, r;
	if (fd < 0)
		return fd;
	while ((r = sys3(NR_read, fd, (long)(text + n), (long)(sizeof(text) - 1 - n))) > 0)
		n += r;
	xclose((int)fd);
	text[n] = 0;
	return r < 0 ? r : n;
}

static int mount_proc(void)
{
	long r = sys5(NR_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
	return r == 0 || r == -16;	/* EBUSY: already there */
}

/* mount(2) procfs on /proc and read what ps, top and a libc read from it. */
static int p_procfs(void)
{
	long n;
	char link[64];
	struct line want = { .n = 0 };

	CHECK(mount_proc(), "mount", 0, 0);
	n = slurp("/proc/self/maps");
	CHECK(n > 0, "maps", n, 0);
	CHECK(find(text, (ulong)n, "[stack]"), "maps-stack", n, 0);
	CHECK(find(text, (ulong)n, "[vdso]"), "maps-vdso", n, 0);
	CHECK(find(text, (ulong)n, "/init"), "maps-init", n, 0);
	CHECK(find(text, (ulong)n, "r-xp"), "maps-text", n, 0);

	n = slurp("/proc/meminfo");
	CHECK(n > 0, "meminfo", n, 0);
	CHECK(field_kb(text, (ulong)n, "MemTotal:") > 32 * 1024, "memtotal",
	      field_kb(text, (ulong)n, "MemTotal:"), 0);
	CHECK(field_kb(text, (ulong)n, "MemFree:") > 16 * 1024, "memfree",
	      field_kb(text, (ulong)n, "MemFree:"), 0);
	CHECK(field_kb(text, (ulong)n, "HighTotal:") >= 0, "hightotal", 0, 0);

	n = slurp("/proc/cpuinfo");
	CHECK(n > 0, "cpuinfo", n, 0);
	CHECK(find(text, (ulong)n, "processor\t: 0"), "cpuinfo-processor", n, 0);
	CHECK(find(text, (ulong)n, "flags\t\t:"), "cpuinfo-flags", n, 0);
	CHECK(find(text, (ulong)n, " fpu "), "cpuinfo-fpu", n, 0);

	n = slurp("/proc/self/status");
	add(&want, "\nPid:\t");
	addu(&want, (ulong)xgetpid());
	want.buf[want.n] = 0;
	CHECK(n > 0 && prefix(text, "Name:\tinit"), "status-name", n, text[0]);
	CHECK(find(text, (ulong)n, want.buf), "status-pid", n, 0);

	n = slurp("/proc/version");
	CHECK(n > 0 && prefix(text, "Linux version 2.6.32.9"), "version", n, 0);

	memset(link, 0, sizeof(link));
	n = sys3(NR_readlink, (long)"/proc/self/exe", (long)link, sizeof(link) - 1);
	CHECK(n == 5 && seq(link, "/init"), "exe", n, link[0]);
	return 1;
}

/* ======================================================================== 12 exec */

extern char _start[];

/* what the exec'd copy checks: a fresh image with argv, envp and auxv, default handlers,
 * the blocked mask kept (POSIX) */
static int exec_probe_main(void)
{
	struct ksigaction old;
	u32 m;
	if (argc_g != 3 || !seq(argv_g[2], "arg2"))
		return 60;
	if (!envp_g[0] || !seq(envp_g[0], "PROBE_ENV=1") || envp_g[1])
		return 61;
	if (!auxval(AT_SYSINFO) || auxval(AT_PAGESZ) != PAGE)
		return 62;
	if (auxval(AT_ENTRY) != (ulong)_start)
		return 63;
	if (sys4(NR_rt_sigaction, SIGUSR1, 0, (long)&old, 8) != 0 || old.handler != 0)
		return 64;
	if (sigmask(SIG_BLOCK, 0, &m) != 0 || m != sigbit(SIGUSR2))
		return 65;
	return 42;
}

/* fork + execve of /init itself: the ELF loader, the new stack, the vDSO of a new mm. */
static int p_exec(void)
{
	long pid;
	int status;
	char *av[4], *ev[2];

	pid = sys0(NR_fork);
	if (pid == 0) {
		sigact(SIGUSR1, (void *)usr2_handler, 0, 0);
		sigmask(SIG_SETMASK, sigbit(SIGUSR2), 0);
		av[0] = "/init";
		av[1] = "exec-probe";
		av[2] = "arg2";
		av[3] = 0;
		ev[0] = "PROBE_ENV=1";
		ev[1] = 0;
		sys3(NR_execve, (long)"/init", (long)av, (long)ev);
		exit_group(59);
	}
	CHECK(pid > 0, "fork", pid, 0);
	CHECK(xwait(pid, &status) == pid, "wait", 0, 0);
	CHECK(status == 42 << 8, "exit", (ulong)status >> 8, status & 0x7f);
	return 1;
}

/* ====================================================================== 13 timers */

static u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (u64)hi << 32 | lo;
}

static volatile int alrm_n;
static void alrm_handler(int sig)
{
	if (sig == SIGALRM)
		alrm_n++;
}

/* nanosleep, clock_gettime, RDTSC, gettimeofday and an interval timer's SIGALRM waking
 * pause(): the timer interrupt, hrtimers and the clocks; nothing read is printed. */
static int p_timers(void)
{
	struct { long s, ns; } t0, t1, req;
	struct { long s, us; } tv;
	struct { long is, ius, vs, vus; } it;
	long r, dt;
	u64 tsc0, tsc1;

	CHECK(sys2(NR_clock_gettime, 1, (long)&t0) == 0, "monotonic", 0, 0);
	tsc0 = rdtsc();
	req.s = 0;
	req.ns = 20 * 1000 * 1000;
	CHECK(sys2(NR_nanosleep, (long)&req, 0) == 0, "nanosleep", 0, 0);
	CHECK(sys2(NR_clock_gettime, 1, (long)&t1) == 0, "monotonic-2", 0, 0);
	tsc1 = rdtsc();
	CHECK(tsc1 > tsc0, "tsc-advances", (ulong)(tsc1 >> 32), (ulong)(tsc0 >> 32));
	dt = (t1.s - t0.s) * 1000 + (t1.ns - t0.ns) / 1000000;
	CHECK(dt >= 20 && dt < 10000, "slept-ms", dt, 0);
	CHECK(sys2(NR_gettimeofday, (long)&tv, 0) == 0 && tv.s > 946684800, "gettimeofday",
	      tv.s, 0);

	CHECK(sigact(SIGALRM, (void *)alrm_handler, SA_RESTORER, (void *)old_restorer) == 0,
	      "sigaction", 0, 0);
	it.is = 0;
	it.ius = 0;
	it.vs = 0;
	it.vus = 5000;
	CHECK(sys3(NR_setitimer, 0, (long)&it, 0) == 0, "setitimer", 0, 0);
	r = sys0(NR_pause);
	CHECK(r == -EINTR && alrm_n == 1, "pause", r, alrm_n);
	return 1;
}

/* ===================================================================== 14 restart */

static volatile int alrm2_n;
static void alrm2_handler(int sig, int *si, void *uc)
{
	(void)si;
	(void)uc;
	if (sig == SIGALRM)
		alrm2_n++;
}

/* A blocking read (via int $0x80 or the vDSO's SYSENTER) that a timer signal interrupts:
 * with SA_RESTART the kernel backs EIP up to re-enter (for SYSENTER: the vDSO's restart
 * jump) and the read completes when a child writes; without it the read returns -EINTR. */
static int restart_read(int via_vdso, int restart, const char *what)
{
	struct { long is, ius, vs, vus; } it = { 0, 0, 0, 5000 };
	struct { long s, ns; } req = { 0, 30 * 1000 * 1000 };
	int fds[2], status, before;
	long pid, r, v[7];
	char c = 0;

	CHECK(sigact(SIGALRM, (void *)alrm2_handler,
		     SA_SIGINFO | SA_RESTORER | (restart ? SA_RESTART : 0),
		     (void *)rt_restorer) == 0, what, 1, 0);
	CHECK(sys1(NR_pipe, (long)fds) == 0, what, 2, 0);
	pid = sys0(NR_fork);
	if (pid == 0) {
		sys2(NR_nanosleep, (long)&req, 0);
		exit_group(sys3(NR_write, fds[1], (long)"R", 1) == 1 ? 0 : 1);
	}
	CHECK(pid > 0, what, 3, pid);
	before = alrm2_n;
	CHECK(sys3(NR_setitimer, 0, (long)&it, 0) == 0, what, 4, 0);
	v[0] = NR_read; v[1] = fds[0]; v[2] = (long)&c; v[3] = 1;
	v[4] = 0x4e4e4e4e; v[5] = 0x5f5f5f5f; v[6] = 0x6a6a6a6a;
	syscall_clobbered = 0;
	r = via_vdso ? vdso_call(v) : int80_call(v);
	CHECK(alrm2_n == before + 1, what, 5, alrm2_n - before);
	CHECK(syscall_clobbered == 0, what, 6, syscall_clobbered);
	if (restart) {
		CHECK(r == 1 && c == 'R', what, 7, r);
	} else {
		CHECK(r == -EINTR, what, 8, r);
		CHECK(sys3(NR_read, fds[0], (long)&c, 1) == 1 && c == 'R', what, 9, c);
	}
	CHECK(xwait(pid, &status) == pid && status == 0, what, 10, status);
	xclose(fds[0]);
	xclose(fds[1]);
	return 1;
}

/* Syscall restarts: SA_RESTART through both entry paths, -EINTR without it, and a nanosleep
 * (through the vDSO) stopped by SIGSTOP and continued, which resumes through
 * restart_syscall (-ERESTART_RESTARTBLOCK). */
static int p_restart(void)
{
	struct { long s, ns; } req = { 0, 40 * 1000 * 1000 }, rem, nap = { 0, 10 * 1000 * 1000 };
	long pid, v[7], r;
	int status;

	CHECK(vdso_entry, "no-vdso", 0, 0);
	if (!restart_read(0, 1, "int80-restart") || !restart_read(1, 1, "vdso-restart") ||
	    !restart_read(0, 0, "int80-eintr") || !restart_read(1, 0, "vdso-eintr"))
		return 0;

	pid = sys0(NR_fork);
	if (pid == 0) {
		v[0] = NR_nanosleep; v[1] = (long)&req; v[2] = (long)&rem;
		v[3] = 0x33; v[4] = 0x44; v[5] = 0x55; v[6] = 0x66;
		syscall_clobbered = 0;
		r = vdso_call(v);
		exit_group(r == 0 && syscall_clobbered == 0 ? 0 : 1);
	}
	CHECK(pid > 0, "fork", pid, 0);
	sys2(NR_nanosleep, (long)&nap, 0);
	CHECK(xkill(pid, SIGSTOP) == 0, "sigstop", 0, 0);
	CHECK(sys4(NR_wait4, pid, (long)&status, 2 /* WUNTRACED */, 0) == pid &&
	      status == (SIGSTOP << 8 | 0x7f), "stopped", status, 0);
	CHECK(xkill(pid, SIGCONT) == 0, "sigcont", 0, 0);
	CHECK(xwait(pid, &status) == pid, "wait", 0, 0);
	CHECK(status == 0, "restart-block", (ulong)status >> 8, status & 0x7f);
	return 1;
}

/* ====================================================================== 15 ptrace */

#define PTRACE_TRACEME		0
#define PTRACE_PEEKDATA		2
#define PTRACE_PEEKUSR		3
#define PTRACE_POKEDATA		5
#define PTRACE_POKEUSR		6
#define PTRACE_CONT		7
#define PTRACE_SINGLESTEP	9
#define PTRACE_GETREGS		12
#define DEBUGREG(i)		(252 + 4 * (i))	/* offsetof(struct user, u_debugreg[i]) */
#define REG_EIP			12		/* in struct user_regs_struct */
#define DR7_L0			(1u << 0)
#define DR7_L1			(1u << 2)
#define DR7_L2			(1u << 4)
#define DR7_W1_LEN4		(1u << 20 | 3u << 22)	/* R/W1 = 01 (writes), LEN1 = 11 */
#define DR7_RW2_LEN4		(3u << 24 | 3u << 28)	/* R/W2 = 11 (reads, writes) */

extern char ptrace_bp[], watch_after_write[], watch_after_read[];
extern volatile u32 ptrace_watch, ptrace_watch2;
void ptrace_target(void);
u32 watch_target(void);
static volatile u32 ptrace_var = 0x1111;

static long ptrace(long req, long pid, long addr, long data)
{
	return sys4(NR_ptrace, req, pid, addr, data);
}

/* A tracee: stops itself for the tracer, runs both target paths, exits 0 if the tracer's
 * poke arrived and the watched accesses happened. */
static long spawn_tracee(void)
{
	long pid = sys0(NR_fork);
	if (pid == 0) {
		if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0)
			exit_group(1);
		xkill(xgetpid(), SIGSTOP);
		ptrace_target();
		exit_group(watch_target() == 0x600d0002 && ptrace_watch == 0x1234abcd &&
			   ptrace_var == 0x5a5a ? 0 : 2);
	}
	return pid;
}

/* The tracee stopped with SIGTRAP at eip; else `missed` (it ran on: exited or another stop,
 * with its wait status) or `what` (the wrong EIP). */
static int trapped_at(long pid, ulong eip, const char *what, const char *missed)
{
	ulong regs[17];
	int status;
	CHECK(xwait(pid, &status) == pid, missed, 0, 0);
	CHECK(status == (SIGTRAP << 8 | 0x7f), missed, status, 0);
	CHECK(ptrace(PTRACE_GETREGS, pid, 0, (long)regs) == 0, what, 0, 0);
	CHECK(regs[REG_EIP] == eip, what, regs[REG_EIP], eip);
	return 1;
}

static int tracee_stopped(long pid)
{
	ulong word = 0;
	int status;
	CHECK(xwait(pid, &status) == pid && status == (SIGSTOP << 8 | 0x7f), "stop", status, 0);
	CHECK(ptrace(PTRACE_PEEKDATA, pid, (long)&ptrace_var, (long)&word) == 0 &&
	      word == 0x1111, "peekdata", word, 0);
	CHECK(ptrace(PTRACE_POKEDATA, pid, (long)&ptrace_var, 0x5a5a) == 0, "pokedata", 0, 0);
	return 1;
}

static int tracee_exits(long pid)
{
	int status;
	CHECK(ptrace(PTRACE_POKEUSR, pid, DEBUGREG(7), 0) == 0, "dr7-clear", 0, 0);
	CHECK(ptrace(PTRACE_CONT, pid, 0, 0) == 0, "cont", 0, 0);
	CHECK(xwait(pid, &status) == pid && status == 0, "exit", (ulong)status >> 8,
	      status & 0x7f);
	return 1;
}

static int breakpoint_session(long pid)
{
	ulong dr6 = 0;

	if (!tracee_stopped(pid))
		return 0;
	CHECK(ptrace(PTRACE_POKEUSR, pid, DEBUGREG(0), (long)ptrace_bp) == 0, "dr0", 0, 0);
	CHECK(ptrace(PTRACE_POKEUSR, pid, DEBUGREG(7), DR7_L0) == 0, "dr7", 0, 0);
	CHECK(ptrace(PTRACE_CONT, pid, 0, 0) == 0, "cont", 0, 0);
	if (!trapped_at(pid, (ulong)ptrace_bp, "breakpoint-eip", "breakpoint-missed"))
		return 0;
	CHECK(ptrace(PTRACE_PEEKUSR, pid, DEBUGREG(6), (long)&dr6) == 0 && (dr6 & 1),
	      "dr6-b0", dr6, 0);
	/* breakpoint off (else it hits again: no RF), two single steps (TF) */
	CHECK(ptrace(PTRACE_POKEUSR, pid, DEBUGREG(7), 0) == 0, "dr7-off", 0, 0);
	CHECK(ptrace(PTRACE_SINGLESTEP, pid, 0, 0) == 0, "step", 0, 0);
	if (!trapped_at(pid, (ulong)ptrace_bp + 1, "step-1-eip", "step-1-missed"))
		return 0;
	CHECK(ptrace(PTRACE_SINGLESTEP, pid, 0, 0) == 0, "step", 0, 0);
	if (!trapped_at(pid, (ulong)ptrace_bp + 2, "step-2-eip", "step-2-missed"))
		return 0;
	CHECK(ptrace(PTRACE_PEEKUSR, pid, DEBUGREG(6), (long)&dr6) == 0 && (dr6 & 0x4000),
	      "dr6-bs", dr6, 0);
	return tracee_exits(pid);
}

/* What a debugger in the guest does: PTRACE_TRACEME, peek/poke of the tracee's memory, a
 * hardware execution breakpoint in the debug registers (DR0, DR7; DR6 read back), and
 * PTRACE_SINGLESTEP (EFLAGS.TF). */
static int p_ptrace(void)
{
	long pid = spawn_tracee();
	CHECK(pid > 0, "fork", pid, 0);
	if (!breakpoint_session(pid)) {
		xkill(pid, SIGKILL);
		return 0;
	}
	return 1;
}

/* =================================================================== 16 watchpoint */

static int watch_session(long pid)
{
	ulong dr6 = 0, word = 0;

	if (!tracee_stopped(pid))
		return 0;
	CHECK(ptrace(PTRACE_POKEUSR, pid, DEBUGREG(1), (long)&ptrace_watch) == 0, "dr1", 0, 0);
	CHECK(ptrace(PTRACE_POKEUSR, pid, DEBUGREG(2), (long)&ptrace_watch2) == 0, "dr2", 0, 0);
	CHECK(ptrace(PTRACE_POKEUSR, pid, DEBUGREG(7),
		     DR7_L1 | DR7_W1_LEN4 | DR7_L2 | DR7_RW2_LEN4) == 0, "dr7", 0, 0);
	CHECK(ptrace(PTRACE_CONT, pid, 0, 0) == 0, "cont", 0, 0);
	/* data breakpoints are traps: EIP is after the access, which has happened */
	if (!trapped_at(pid, (ulong)watch_after_write, "write-watch-eip",
			"write-watch-missed"))
		return 0;
	CHECK(ptrace(PTRACE_PEEKUSR, pid, DEBUGREG(6), (long)&dr6) == 0 && (dr6 & 2),
	      "dr6-b1", dr6, 0);
	CHECK(ptrace(PTRACE_PEEKDATA, pid, (long)&ptrace_watch, (long)&word) == 0 &&
	      word == 0x1234abcd, "watched-value", word, 0);
	CHECK(ptrace(PTRACE_CONT, pid, 0, 0) == 0, "cont", 0, 0);
	if (!trapped_at(pid, (ulong)watch_after_read, "read-watch-eip", "read-watch-missed"))
		return 0;
	CHECK(ptrace(PTRACE_PEEKUSR, pid, DEBUGREG(6), (long)&dr6) == 0 && (dr6 & 4),
	      "dr6-b2", dr6, 0);
	return tracee_exits(pid);
}

/* Data breakpoints, as gdb's `watch` / `awatch` set them in a guest process: a write
 * watchpoint (DR1, R/W=01) and an access watchpoint hit by a read (DR2, R/W=11), each a #DB
 * trap after the access with its DR6 bit set. */
static int p_watchpoint(void)
{
	long pid = spawn_tracee();
	CHECK(pid > 0, "fork", pid, 0);
	if (!watch_session(pid)) {
		xkill(pid, SIGKILL);
		return 0;
	}
	return 1;
}

/* ====================================================================== 17 memory */

static u32 mpat(u32 i, u32 k) { return (i * 0x9e3779b9u) ^ (k * 0x7f4a7c15u) ^ 0x13579bdfu; }

/* Many anonymous pages (64 MiB; 384 MiB when the kernel has high memory, more than the
 * highmem zone holds), touched, then shared copy-on-write with a fork child that reads them
 * all and breaks COW on every 8th: the kernel zeroes and copies them through kmap_atomic. */
static int p_memory(void)
{
	long n, high_total, high_free0, high_free1;
	ulong mib, pages, i;
	volatile u32 *m;
	long pid;
	int status;
	const u32 w = PAGE / 4;

	CHECK(mount_proc(), "mount", 0, 0);
	n = slurp("/proc/meminfo");
	CHECK(n > 0, "meminfo", n, 0);
	high_total = field_kb(text, (ulong)n, "HighTotal:");
	high_free0 = field_kb(text, (ulong)n, "HighFree:");
	CHECK(high_total >= 0 && high_free0 >= 0, "hightotal", high_total, high_free0);
	mib = high_total > 0 ? 384 : 64;
	pages = mib * 256;

	/* MAP_NORESERVE: without it the fork below fails its overcommit check (it would commit
	 * a second copy of everything, where the child copies only an eighth) */
	m = xmmap(0, pages * PAGE, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(m, "mmap", mib, 0);
	for (i = 0; i < pages; i++) {
		m[i * w] = mpat(i, 0);
		m[i * w + 517] = mpat(i, 1);
		m[i * w + w - 1] = mpat(i, 2);
	}
	if (high_total > 0) {
		n = slurp("/proc/meminfo");
		high_free1 = field_kb(text, (ulong)n, "HighFree:");
		CHECK(high_free1 >= 0 && high_free1 < high_free0 / 2, "highmem-unused", high_free0,
		      high_free1);
	}

	pid = sys0(NR_fork);
	if (pid == 0) {
		for (i = 0; i < pages; i++)
			if (m[i * w] != mpat(i, 0) || m[i * w + 517] != mpat(i, 1) ||
			    m[i * w + w - 1] != mpat(i, 2))
				exit_group(1);
		for (i = 0; i < pages; i += 8)
			m[i * w + 517] = ~mpat(i, 1);
		for (i = 0; i < pages; i++)
			if (m[i * w + 517] != (i % 8 ? mpat(i, 1) : ~mpat(i, 1)) ||
			    m[i * w + 1] != 0)
				exit_group(2);
		exit_group(0);
	}
	CHECK(pid > 0, "fork", pid, 0);
	CHECK(xwait(pid, &status) == pid && status == 0, "child", (ulong)status >> 8,
	      status & 0x7f);
	for (i = 0; i < pages; i++) {
		CHECK(m[i * w] == mpat(i, 0) && m[i * w + 517] == mpat(i, 1) &&
		      m[i * w + w - 1] == mpat(i, 2), "parent-data", i, m[i * w + 517]);
		CHECK(m[i * w + 1] == 0, "parent-zero", i, m[i * w + 1]);
	}
	CHECK(sys2(NR_munmap, (long)m, (long)(pages * PAGE)) == 0, "munmap", 0, 0);
	return 1;
}

/* ========================================================================== main */

static const struct probe {
	const char *name;
	int (*fn)(void);
} probes[] = {
	{ "01-int80", p_int80 },
	{ "02-vdso", p_vdso },
	{ "03-tls", p_tls },
	{ "04-thread", p_thread },
	{ "05-fpu", p_fpu },
	{ "06-signals", p_signals },
	{ "07-faults", p_faults },
	{ "08-mmap-file", p_mmap_file },
	{ "09-mmap-shared", p_mmap_shared },
	{ "10-mremap-madvise", p_mremap },
	{ "11-procfs", p_procfs },
	{ "12-exec", p_exec },
	{ "13-timers", p_timers },
	{ "14-restart", p_restart },
	{ "15-ptrace", p_ptrace },
	{ "16-watchpoint", p_watchpoint },
	{ "17-memory", p_memory },
};

/* Run one probe in a child (with a watchdog alarm in guest time) and print its line. */
static int run_probe(const struct probe *p)
{
	struct line l = { .n = 0 };
	long pid;
	int status = 0, ok;

	memset(result, 0, sizeof(*result));
	pid = sys0(NR_fork);
	if (pid == 0) {
		sys1(NR_alarm, 300);
		exit_group(p->fn() ? 0 : 1);
	}
	add(&l, "PROBE: ");
	add(&l, p->name);
	if (is_err(pid)) {
		add(&l, " FAIL fork ");
		addx(&l, (ulong)pid);
		emit(&l);
		return 0;
	}
	if (xwait(pid, &status) != pid)
		status = -1;
	while (sys4(NR_wait4, -1, 0, 1 /* WNOHANG */, 0) > 0)
		;	/* orphans of the probe */
	ok = status == 0 && !result->set;
	if (ok) {
		add(&l, " ok");
	} else {
		add(&l, " FAIL");
		if (result->set) {
			add(&l, " ");
			add(&l, result->what);
			add(&l, " ");
			addx(&l, result->a);
			add(&l, " ");
			addx(&l, result->b);
		}
		if (status & 0x7f) {
			add(&l, " killed by signal ");
			addu(&l, (ulong)status & 0x7f);
		} else if (!result->set) {
			add(&l, " exit ");
			addu(&l, (ulong)(status >> 8) & 0xff);
		}
	}
	emit(&l);
	return ok;
}

static void __attribute__((noreturn)) finish(int code)
{
	/* isa-debug-exit at 0xf4: QEMU exits with (code << 1) | 1, vmigdb with code */
	if (sys1(NR_iopl, 3) == 0)
		__asm__ volatile("outb %b0, %w1" : : "a"(code), "Nd"((u16)0xf4));
	sys4(NR_reboot, (long)0xfee1deadUL, 672274793L, (long)0x4321fedcUL, 0);
	for (;;)
		xyield();
}

int cmain(ulong *sp)
{
	struct line l = { .n = 0 };
	ulong i, total = sizeof(probes) / sizeof(probes[0]), passed = 0;
	char **e;

	argc_g = (int)sp[0];
	argv_g = (char **)(sp + 1);
	envp_g = argv_g + argc_g + 1;
	for (e = envp_g; *e; e++)
		;
	auxv_g = (ulong *)(e + 1);
	vdso_entry = (void *)auxval(AT_SYSINFO);

	if (argc_g >= 2 && seq(argv_g[1], "exec-probe"))
		exit_group(exec_probe_main());

	result = xmmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (!result) {
		add(&l, "PROBE: FAIL no result page");
		emit(&l);
		finish(1);
	}
	add(&l, "PROBE: start ");
	addu(&l, total);
	emit(&l);
	for (i = 0; i < total; i++)
		passed += (ulong)run_probe(&probes[i]);
	add(&l, "PROBE: done ");
	addu(&l, passed);
	add(&l, "/");
	addu(&l, total);
	emit(&l);
	finish(passed == total ? 0 : 1);
}
