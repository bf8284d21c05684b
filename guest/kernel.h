/*
 * Common declarations of the demo VMI guest: fixed-width types, port I/O, the console and the
 * few library routines a freestanding kernel needs. VMI constants come from the generated
 * build/vmi_abi.h (vmigdb/abi.py); nothing here restates them.
 */
#ifndef GUEST_KERNEL_H
#define GUEST_KERNEL_H

#include <stdarg.h>
#include "exitcodes.h"
#include "layout.h"
#include "vmi_abi.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int s32;

#define NULL ((void *)0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* Native EFLAGS read, not a patch site: used to check what the patched sites did. */
static inline u32 native_save_fl(void)
{
    u32 f;
    asm volatile("pushfl; popl %0" : "=r"(f) : : "memory");
    return f;
}

/* console.c */
void console_init(void);
void kputs(const char *s);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* lib.c */
void *memset(void *d, int c, u32 n);
void *memcpy(void *d, const void *s, u32 n);
int memcmp(const void *a, const void *b, u32 n);
u32 strlen(const char *s);
int strcmp(const char *a, const char *b);
__attribute__((noreturn)) void guest_exit(u32 code);
__attribute__((noreturn)) void fail(u32 code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define CHECK(cond, code, ...) do { if (!(cond)) fail((code), __VA_ARGS__); } while (0)

/* cmdline.c */
struct options {
    int rom_copy;       /* rom=copy (default) or rom=inplace */
    u32 stress;         /* stress=N: repeat the page-table workload N times (default 1) */
    int sysexit;        /* sysexit=0 skips the ring-3 round trip (default on) */
    int rdpmc;          /* rdpmc=1 also calls RDPMC (QEMU TCG raises #UD: exits 0x46) */
    int fault_pf;       /* fault=pf reads unmapped page 0 after the call tests (exits 0x4e) */
    u32 spin;           /* spin=N: N iterations of bench_spin's loop at kmain start (default 0) */
};
extern struct options opt;
void parse_cmdline(const char *cmdline);

#endif
