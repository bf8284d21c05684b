/*
 * COM1 console, polled. Output is line oriented and deterministic: the tests compare it between
 * QEMU and our Unicorn machine, so nothing here depends on timing.
 */
#include "kernel.h"

#define COM1 0x3f8
#define LSR_THRE 0x20
/* Give up waiting for THRE after this many polls: a machine whose UART model always reads 0
 * still gets its output, it just loses the back-pressure. */
#define THRE_POLLS 100000

void console_init(void)
{
    outb(COM1 + 1, 0x00);   /* no interrupts */
    outb(COM1 + 3, 0x80);   /* DLAB */
    outb(COM1 + 0, 0x01);   /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1 */
    outb(COM1 + 2, 0xC7);   /* FIFO on, cleared */
    outb(COM1 + 4, 0x03);   /* DTR, RTS */
}

static void putc_raw(char c)
{
    for (int i = 0; i < THRE_POLLS && !(inb(COM1 + 5) & LSR_THRE); i++)
        ;
    outb(COM1, (u8)c);
}

static void kputc(char c)
{
    if (c == '\n')
        putc_raw('\r');
    putc_raw(c);
}

void kputs(const char *s)
{
    while (*s)
        kputc(*s++);
}

static void put_num(u32 v, unsigned base, int width, char pad)
{
    char buf[12];
    int n = 0;
    do {
        unsigned d = v % base;
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < width--)
        kputc(pad);
    while (n)
        kputc(buf[--n]);
}

static void vkprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            kputc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        switch (*fmt) {
        case 'd': {
            s32 v = va_arg(ap, s32);
            if (v < 0) {
                kputc('-');
                v = -v;
            }
            put_num((u32)v, 10, width, pad);
            break;
        }
        case 'u': put_num(va_arg(ap, u32), 10, width, pad); break;
        case 'x': put_num(va_arg(ap, u32), 16, width, pad); break;
        case 'c': kputc((char)va_arg(ap, int)); break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            kputs(s ? s : "(null)");
            break;
        }
        case '%': kputc('%'); break;
        default: kputc('%'); kputc(*fmt); break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
}

void fail(u32 code, const char *fmt, ...)
{
    va_list ap;
    kputs("FAIL: ");
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
    kprintf("\nresult: fail code=0x%x\n", code);
    guest_exit(code);
}
