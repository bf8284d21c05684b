/*
 * Demo VMI guest: boots like an i386 Linux VMI kernel (own GDT/IDT, paging with a lowmem map
 * at PAGE_OFFSET, ROM discovery, vmi_init, patching, pv-op fill), then exercises the VMI calls
 * and prints a machine-independent summary. Exit code 0 (QEMU status 1) when every check held;
 * otherwise the code of the failed check (exitcodes.h).
 *
 * Command line (multiboot, after the kernel path): rom=copy (default) | rom=inplace,
 * stress=N (page-table workload N times, default 1), sysexit=0 (skip the ring-3 round trip),
 * rdpmc=1 (also call RDPMC, which faults under TCG), fault=pf (end with a deliberate #PF),
 * spin=N (benchmark loop at kmain start: see bench_spin; prints "spin: N" first).
 *
 * The last lines, identical on every machine for the same command line:
 *   calls: <VMI call>=<count> ...   every call that reached the ROM, by name
 *   summary: mode=copy|inplace batched=B sites=N patched=M calls=K deferred=D flushes=F
 *   result: ok
 * B: 1 in copy mode (the ROM's state is writable RAM, so it queues), 0 in place.
 * N: .parainstructions records; M: those rewritten to call/jmp the ROM.
 * K: VMI calls made into the ROM after activation (patch sites and pv-op pointers; vmi_init
 *    and get_reloc, which are header jump points rather than calls, are not counted).
 * D: deferred PTE updates issued while the ROM batches (0 in place).
 * F: queue flushes the ROM makes by abi.py's rules, as the guest predicts them; in copy mode
 *    the guest also checks F against the ROM's own batch counter (line "vmi: rom batch seq=").
 * Per-call log lines for cross-checks ("setpxe ...", "setcr3 ...") come from the first workload
 * iteration only, so stress=N keeps the log short.
 */
#include "paravirt.h"
#include "desc.h"
#include "mm.h"

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002u
#define MBI_FLAG_MEM     0x001u
#define MBI_FLAG_CMDLINE 0x004u

struct multiboot_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline;
};

void test_irq_flags(void);
void test_control_registers(void);
void test_cpuid(void);
void test_msr_tsc_dr(void);
void test_descriptor_tables(void);
void test_iret(void);
void test_pxe_long(void);
void test_sysexit(void);
void test_rdpmc(void);
void kmain(u32 magic, const struct multiboot_info *mbi);

static char cmdline[256];

/*
 * Benchmark loop for `make bench` (bench/stubs.py): n iterations of exactly 2 instructions,
 * `dec %eax; jne bench_spin_loop` (gcc 12 -O2; checked with objdump -d build/guest.elf), so a
 * breakpoint on bench_spin_done is 2*n instructions (plus a handful) away, and one on
 * bench_spin_loop is hit every iteration. ALU only, no stores: Unicorn runs it at full speed,
 * so the benchmark measures the stub, not the store slow path. noinline keeps both symbols real
 * for gdb. bench_spin_done has a page of its own: QEMU runs code that shares a page with a gdb
 * breakpoint one instruction per TB (about 40x slower for this loop, measured), which would
 * measure that rather than a continue.
 */
__attribute__((noinline)) void bench_spin(u32 n)
{
    for (u32 i = n; i; i--)
        asm volatile(".globl bench_spin_loop\nbench_spin_loop:");
}

__attribute__((noinline, aligned(4096))) void bench_spin_done(void)
{
    asm volatile("");
}

static void print_call_counts(void)
{
    kputs("calls:");
    for (u32 c = 0; c < VMI_CALL_TABLE_LEN; c++)
        if (pv_hits[c] && pv_reloc[c] == VMI_RELOCATION_CALL_REL)
            kprintf(" %s=%u", vmi_call_names[c], pv_hits[c]);
    kputs("\n");
}

void kmain(u32 magic, const struct multiboot_info *mbi)
{
    console_init();
    kputs("vmigdb demo guest\n");
    CHECK(magic == MULTIBOOT_BOOTLOADER_MAGIC, EXIT_BAD_MAGIC, "multiboot magic 0x%x", magic);
    if (mbi->flags & MBI_FLAG_CMDLINE) {
        const char *s = (const char *)mbi->cmdline;
        u32 n = 0;
        while (s[n] && n < sizeof(cmdline) - 1) {
            cmdline[n] = s[n];
            n++;
        }
    }
    parse_cmdline(cmdline);
    kprintf("cmdline: %s\n", cmdline);
    kprintf("options: rom=%s stress=%u sysexit=%u rdpmc=%u\n",
            opt.rom_copy ? "copy" : "inplace", opt.stress, opt.sysexit, opt.rdpmc);
    if (opt.spin) {
        kprintf("spin: %u\n", opt.spin);
        bench_spin(opt.spin);
        bench_spin_done();
    }
    CHECK(mbi->flags & MBI_FLAG_MEM, EXIT_NO_MEMORY, "no memory information from the loader");

    kprintf("multiboot: mem_lower=%u KiB mem_upper=%u KiB\n", mbi->mem_lower, mbi->mem_upper);
    desc_init_native();
    kprintf("desc: gdt=0x%x idt=0x%x, PIC masked\n", (u32)gdt, (u32)idt);
    paging_init(mbi->mem_upper);

    vmi_probe();
    vmi_activate();
    mm_activate();

    test_irq_flags();
    test_control_registers();
    test_cpuid();
    test_msr_tsc_dr();
    test_descriptor_tables();
    test_iret();
    test_pxe_long();
    if (opt.sysexit)
        test_sysexit();
    else
        kputs("sysexit: skipped (sysexit=0)\n");
    if (opt.rdpmc)
        test_rdpmc();
    if (opt.fault_pf) {
        /* A deliberate #PF: page 0 is never mapped. Shows the exception path end to end. */
        u32 addr = 0;
        asm("" : "+r"(addr));   /* hide the constant: gcc would turn a NULL load into ud2 */
        kputs("fault: reading unmapped address 0\n");
        (void)*(volatile u32 *)addr;
    }

    for (u32 k = 0; k < opt.stress; k++)
        pt_workload(k);
    pt_workload_summary();
    vmi_check_batches();

    print_call_counts();
    kprintf("summary: mode=%s batched=%u sites=%u patched=%u calls=%u deferred=%u "
            "flushes=%u\n", opt.rom_copy ? "copy" : "inplace", bm.batched, vmi.sites,
            vmi.patched, pv_rom_calls(), bm.deferred, bm.flushes);
    kputs("result: ok\n");
    guest_exit(EXIT_OK);
}
