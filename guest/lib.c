/* The library routines gcc may emit calls to, plus the exit path. */
#include "kernel.h"

#define ISA_DEBUG_EXIT_PORT 0xf4

void *memset(void *d, int c, u32 n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, u32 n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, u32 n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

u32 strlen(const char *s)
{
    u32 n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (u8)*a - (u8)*b;
}

/* isa-debug-exit makes QEMU exit with (code << 1) | 1; if the device is missing, stop here. */
void guest_exit(u32 code)
{
    outl(ISA_DEBUG_EXIT_PORT, code);
    for (;;)
        asm volatile("cli; hlt");
}
