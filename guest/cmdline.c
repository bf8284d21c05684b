/*
 * Multiboot command line: words separated by spaces, the first being the kernel path. Known
 * words: rom=copy|inplace, stress=N, sysexit=0|1, rdpmc=1, fault=pf, spin=N. Unknown words are
 * ignored, like Linux does.
 */
#include "kernel.h"

struct options opt = { .rom_copy = 1, .stress = 1, .sysexit = 1 };

static int word_is(const char *w, u32 len, const char *key)
{
    u32 k = strlen(key);
    return len == k && memcmp(w, key, k) == 0;
}

static u32 parse_u32(const char *s, u32 len)
{
    u32 v = 0;
    for (u32 i = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++)
        v = v * 10 + (u32)(s[i] - '0');
    return v;
}

void parse_cmdline(const char *cmdline)
{
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        u32 len = (u32)(p - w);
        if (word_is(w, len, "rom=copy"))
            opt.rom_copy = 1;
        else if (word_is(w, len, "rom=inplace"))
            opt.rom_copy = 0;
        else if (len > 7 && memcmp(w, "stress=", 7) == 0)
            opt.stress = parse_u32(w + 7, len - 7);
        else if (word_is(w, len, "sysexit=0"))
            opt.sysexit = 0;
        else if (word_is(w, len, "sysexit=1"))
            opt.sysexit = 1;
        else if (word_is(w, len, "rdpmc=1"))
            opt.rdpmc = 1;
        else if (word_is(w, len, "fault=pf"))
            opt.fault_pf = 1;
        else if (len > 5 && memcmp(w, "spin=", 5) == 0)
            opt.spin = parse_u32(w + 5, len - 5);
    }
}
