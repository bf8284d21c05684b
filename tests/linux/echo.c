/*
 * An /init that reads one line from the console and echoes it, then reports its length through
 * isa-debug-exit: a console session through the 8250's receive interrupt (IRQ 4), the path a
 * shell in an initramfs would use. Libc-free, like probe.c.
 */
#define SYS_read 3
#define SYS_write 4
#define SYS_iopl 110

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "0"(n), "b"(a), "c"(b), "d"(c) : "memory");
	return r;
}

static void say(const char *s, long n)
{
	sys3(SYS_write, 1, (long)s, n);
}

void _start(void)
{
	static const char ready[] = "ECHO: ready\n", got[] = "ECHO: got ";
	char buf[128];
	long n;

	say(ready, sizeof ready - 1);
	n = sys3(SYS_read, 0, (long)buf, sizeof buf);
	say(got, sizeof got - 1);
	if (n > 0)
		say(buf, n);
	sys3(SYS_iopl, 3, 0, 0);
	__asm__ volatile("outb %%al, $0xf4" : : "a"(n > 0 ? n : 0xff));
	for (;;)
		;
}
