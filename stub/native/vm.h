/*
 * vmigdb's native machine: everything that runs per guest block, per port access or per timer
 * event, so that no Python runs on those paths. One declaration for C and Python: the C files
 * include this header, and stub/native/build.py hands the same text (minus the preprocessor
 * guard lines) to cffi, through which Python reads and writes every field named here.
 *
 * Time: one virtual clock counts "ticks", a tick being one retired guest instruction or one
 * instruction's worth of idle time while the CPU is halted (VM_NS_PER_TICK nanoseconds each).
 * The block hook adds each translation block's instruction count when the block starts; the
 * Python side corrects the count when a block is left early (exception, breakpoint, step).
 * Every device reads this one clock, so the same inputs give the same run.
 *
 * Devices (one file each, QEMU's hw/ as the model): pic.c (8259A pair + ELCR), pit.c (8254 +
 * port 0x61), uart.c (16550A), rtc.c (MC146818 + CMOS), kbc.c (i8042 + PS/2 keyboard and mouse),
 * pci.c (configuration mechanism #1: i440FX host bridge, PIIX3 ISA bridge), misc.c (port 0x80,
 * 0x92, the DMA controllers, isa-debug-exit). cpu.c holds the clock, the hooks Unicorn calls
 * and the port bus.
 */
#ifndef VMIGDB_VM_H
#define VMIGDB_VM_H
#include <stddef.h>
#include <stdint.h>

#define VM_NS_PER_TICK 8            /* 125 million instructions per virtual second */
#define VM_NEVER 0xFFFFFFFFFFFFFFFF /* a deadline that never comes */
/* x86 EFLAGS bits (cpu.c, deliver.c, mmu.c) */
#define EFLAGS_TF 0x100
#define EFLAGS_IF 0x200
#define EFLAGS_NT 0x4000
#define EFLAGS_RF 0x10000
#define EFLAGS_VM 0x20000
#define VM_TB_SLOTS 65536           /* the block size cache (a power of two) */
#define VM_TB_ICOUNT 0x3FFF         /* a block's instruction count (at most 512) */
#define VM_TB_KEEPS_IF 0x4000       /* the block cannot set EFLAGS.IF (no STI, POPF, IRET at its end) */
#define VM_TB_IF_CHECKED 0x8000     /* whether it can is known */
#define VM_PORTS 65536
#define VM_SERIAL_BUF 4096
#define VM_SERIAL_RX 256
#define VM_CPUID_LEAVES 64

/* Why the block hook or a device stopped emulation (vm.stop_reason; VM_STOP_NONE if it did not). */
#define VM_STOP_NONE 0
#define VM_STOP_REQUEST 1           /* run control: Ctrl-C, or a C hook asked for a service */
#define VM_STOP_IRQ 2               /* an interrupt is deliverable (IF=1, PIC output high) */
#define VM_STOP_DEVICE 3            /* a device needs Python: exit, reset, serial output */
#define VM_STOP_TRIPLE 4            /* an event could not be delivered, nor #DF: deliver_error */

/* What a port belongs to (vm.port_owner). */
#define VM_DEV_NONE 0               /* unassigned: reads all ones, writes are dropped */
#define VM_DEV_PYTHON 1             /* a Python observer or device (vm.py_in / vm.py_out) */
#define VM_DEV_PIC 2
#define VM_DEV_PIT 3
#define VM_DEV_SPEAKER 4            /* port 0x61: PIT channel 2 gate and output */
#define VM_DEV_COM1 5
#define VM_DEV_RTC 6
#define VM_DEV_KBC 7
#define VM_DEV_PCI 8
#define VM_DEV_DEBUG_EXIT 9
#define VM_DEV_DELAY 10             /* port 0x80: writes are a delay, reads all ones */
#define VM_DEV_PORT92 11
#define VM_DEV_ELCR 12
#define VM_DEV_DMA 13
#define VM_DEV_IDE 14               /* the legacy IDE blocks: an empty bus */
#define VM_DEV_BMDMA 15             /* bus-master DMA registers where PCI BAR 4 puts them */

/* Device requests to Python (vm.requests bits), served when emulation stops. */
#define VM_REQ_EXIT 1               /* isa-debug-exit: vm.exit_code */
#define VM_REQ_RESET 2              /* i8042 pulse or port 0x92 fast reset */
#define VM_REQ_SERIAL 4             /* vm.serial_out has a full line or is full */
#define VM_REQ_ALARM 8              /* the clock reached vm.alarm */

/* Run control (the tracer's C hook shares it: stub/native/tracehook.c). */
struct vmigdb_runctl {
    volatile int32_t stop;          /* set by the controlling thread or a C hook, cleared here */
    int32_t stopped;                /* how many stops this made */
    int (*emu_stop)(void *uc);      /* libunicorn's uc_emu_stop */
    volatile int32_t service;       /* a C hook wants Python to run between two emulations */
    int32_t muted;                  /* C code hooks record nothing (an instruction re-executed) */
    int32_t stepping;               /* a single step: C hooks ask for service but no stop */
};

/* --- devices --------------------------------------------------------------------------------- */

struct vm_pic_chip {                /* one 8259A, as QEMU's hw/intc/i8259.c models it */
    uint8_t irr, isr, imr, last_irr, elcr, elcr_mask, irq_base, priority_add;
    uint8_t read_reg_select, poll, special_mask, init_state, auto_eoi, rotate_on_auto_eoi;
    uint8_t special_fully_nested_mode, init4, single_mode, master;
};

struct vm_pic {
    struct vm_pic_chip chip[2];     /* master (0x20, 0x21, ELCR 0x4D0), slave (0xA0, 0xA1, 0x4D1) */
    int32_t output;                 /* the master's INT line to the CPU */
};

struct vm_pit_channel {             /* one 8254 counter, times in ticks of the virtual clock */
    int32_t count;                  /* 1..0x10000 */
    uint16_t latched_count;
    uint8_t count_latched, status_latched, status, read_state, write_state, write_latch;
    uint8_t rw_mode, mode, bcd, gate;
    uint64_t load_time;             /* when the count was loaded */
    uint64_t next_transition;       /* VM_NEVER: no output change to come */
    int32_t out;                    /* the output level last driven */
};

struct vm_pit {
    struct vm_pit_channel ch[3];
    uint8_t speaker_data, refresh;  /* port 0x61: bit 1 written, bit 4 toggling on each read */
};

struct vm_uart {                    /* a 16550A, as QEMU's hw/char/serial.c models it */
    uint16_t divider;
    uint8_t rbr, thr, ier, iir, lcr, mcr, lsr, msr, scr, fcr;
    uint8_t thr_ipending, timeout_ipending, recv_fifo_itl, irq_level, irq;
    uint8_t rx[VM_SERIAL_RX];       /* the receive FIFO (16 deep when enabled, 1 otherwise) */
    uint32_t rx_head, rx_count;
    uint64_t timeout_at;            /* character timeout interrupt, VM_NEVER when not armed */
};

struct vm_rtc {                     /* MC146818 with 128 bytes of CMOS, time from base + clock */
    uint8_t cmos[128];
    uint8_t index;
    int64_t base_seconds;           /* Unix time at tick 0 (--rtc) */
    int64_t offset_seconds;         /* what the guest's time writes added */
    uint64_t next_periodic;         /* PIE interrupt, VM_NEVER when off */
    uint64_t next_update;           /* the next second boundary (UIE/AIE), VM_NEVER when off */
    int32_t irq_level;
};

#define VM_KBC_QUEUE 64
struct vm_ps2_queue {
    uint8_t data[VM_KBC_QUEUE];
    uint32_t head, count;
};

struct vm_kbc {                     /* i8042 controller with a PS/2 keyboard and mouse on it */
    uint8_t status, mode, outport, write_cmd, obdata, obsrc, ctrl_byte, ctrl_pending;
    struct vm_ps2_queue kbd, aux;
    uint8_t kbd_scan_enabled, kbd_scancode_set, kbd_cmd, kbd_leds;
    uint8_t aux_cmd, aux_status, aux_resolution, aux_sample_rate, aux_wrap, aux_type;
    uint8_t aux_detect_state;
    int32_t irq1_level, irq12_level;
};

#define VM_PCI_FUNCTIONS 4
struct vm_pci_function {
    uint8_t devfn;                  /* device << 3 | function; 0xFF: slot unused */
    uint8_t config[256];
    uint8_t wmask[256];             /* writable bits */
    uint8_t io_bar;                 /* config offset of an I/O BAR, 0 if none */
    uint8_t io_owner;               /* VM_DEV_* that answers where the BAR points */
    uint16_t io_size;
    uint32_t io_mapped;             /* the base its ports are on the bus at now, 0 if none */
};

struct vm_pci {
    uint32_t address;               /* 0xCF8 */
    struct vm_pci_function fn[VM_PCI_FUNCTIONS];
};

struct vm_bmdma {
    uint8_t cmd, status;
    uint32_t addr;
};

struct vm_ide {                     /* PIIX3 IDE, no drives (ide.c) */
    struct vm_bmdma bm[2];
    uint32_t function;              /* its slot in vm_pci.fn */
};

struct vm_misc {
    uint8_t port92;                 /* bit 1: A20 */
    uint8_t dma_flipflop;
};

struct mmr {                        /* libunicorn's uc_x86_mmr */
    uint16_t selector;
    uint64_t base;
    uint32_t limit;
    uint32_t flags;
};

struct msr {                        /* libunicorn's uc_x86_msr */
    uint32_t rid;
    uint64_t value;
};

struct vm_tb_entry {                /* one cache line holds eight: one load per block */
    uint32_t pc;
    uint16_t size, icount;          /* icount: the count, plus the VM_TB_IF_* bits */
};

struct vm_cpuid_leaf {
    uint32_t leaf, subleaf, has_subleaf, eax, ebx, ecx, edx;
};

/* --- the machine ----------------------------------------------------------------------------- */

struct vm {
    struct vmigdb_runctl rc;        /* first: the tracer's C hook points at it */
    void *uc;
    /* The clock. */
    uint64_t ticks;                 /* instructions retired plus idle ticks (block ends counted) */
    uint64_t now;                   /* the time devices see: the running block's start tick */
    uint64_t idle_ticks;            /* of ticks, those spent halted */
    uint64_t deadline;              /* the block hook looks at devices from this tick on */
    uint64_t block_start;           /* ticks when the last counted block started */
    uint32_t block_pc, block_size, block_icount;
    int32_t stop_reason;            /* VM_STOP_*: what made the last stop (block hook, device) */
    int32_t irq_check;              /* the PIC output is high: test EFLAGS.IF at each block */
    int32_t irq_delivery;           /* 0: never stop for interrupts (single steps) */
    int32_t irq_holdoff;            /* the next block is an interrupt shadow: no delivery there */
    int32_t if_stale;               /* EFLAGS.IF may have been set since the hook last read it */
    /* The last counted block's VM_TB_KEEPS_IF bit. Not beside block_pc: the compiler merges
     * stores to neighbours into one 16-byte store, and the next block's 4-byte load of this
     * field from inside it could not be forwarded (a stall each block). */
    uint32_t block_keeps_if;
    int32_t reg_eax, reg_ebx, reg_ecx, reg_edx, reg_eflags, reg_cr2;  /* Unicorn's ids */
    int32_t reg_eip, reg_esp, reg_cs, reg_ss, reg_cr0, reg_cr3, reg_cr4, reg_idtr, reg_gdtr;
    int32_t reg_tr, reg_msr, reg_ldtr;
    uint32_t requests;              /* VM_REQ_* bits for Python */
    uint64_t alarm;                 /* a tick at which Python wants the run stopped (VM_NEVER) */
    int32_t exit_code;
    uint64_t tb_misses;             /* block size cache misses (a cost counter for the bench) */
    /* Address translation (mmu.c). */
    uint8_t *code_pages;            /* a bit per physical page that code was fetched from */
    uint64_t code_pages_count;      /* pages the bitmap covers (beyond: treated as code) */
    uint64_t tlb_fills, code_page_flushes;
    int32_t pf_pending;             /* the last fill faulted (vm_retry_fault raises the #PF) */
    int32_t tlb_restore;            /* block starts until the page walk is ours again */
    uint64_t port_accesses;
    uint64_t irqs_raised;
    /* The block size cache: instruction counts of translation blocks by (pc, size). */
    struct vm_tb_entry tb[VM_TB_SLOTS];
    /* libunicorn entry points (the library is loaded by the Python binding). */
    int (*uc_ctl)(void *uc, int control, ...);
    int (*uc_reg_read)(void *uc, int regid, void *value);
    int (*uc_reg_write)(void *uc, int regid, const void *value);
    int (*uc_vmem_read)(void *uc, uint64_t address, int prot, void *bytes, size_t size);
    int (*uc_mem_read)(void *uc, uint64_t address, void *bytes, uint64_t size);
    int (*uc_mem_write)(void *uc, uint64_t address, const void *bytes, uint64_t size);
    int (*uc_context_save)(void *uc, void *context);
    int (*uc_context_restore)(void *uc, void *context);
    /* Event delivery (deliver.c): a CPU context to edit, and where its fields are (offsets
     * in Unicorn's context blob, measured by stub/uc_ctypes.py). */
    void *ctx;
    int32_t ctx_error_code, ctx_is_int, ctx_next_eip, ctx_old_exception, ctx_hflags, ctx_segs;
    uint64_t ram_size, rom_base, rom_end;  /* what memory a frame may be written to */
    char deliver_error[240];        /* why the last delivery failed */
    int32_t fault_vector;           /* VM_STOP_TRIPLE: the event that could not be delivered */
    uint32_t fault_eip;
    uint64_t deliveries, exceptions, sysenters;
    /* capstone, to count the instructions of a block left early */
    size_t cs_handle;
    size_t (*cs_disasm)(size_t handle, const uint8_t *code, size_t size, uint64_t address,
                        size_t count, void **insn);
    void (*cs_free)(void *insn, size_t count);
    /* The port bus. */
    uint8_t port_owner[VM_PORTS];
    uint32_t (*py_in)(uint32_t port, int size);
    void (*py_out)(uint32_t port, int size, uint32_t value);
    /* CPUID answers (the Python side fills them from the CPU model, minus what we do not have). */
    struct vm_cpuid_leaf cpuid[VM_CPUID_LEAVES];
    uint32_t cpuid_count;
    uint32_t cpuid_max_basic, cpuid_max_ext;
    /* COM1 output waiting for Python, and input from it. */
    uint8_t serial_out[VM_SERIAL_BUF];
    uint32_t serial_len;
    /* Devices. */
    struct vm_pic pic;
    struct vm_pit pit;
    struct vm_uart com1;
    struct vm_rtc rtc;
    struct vm_kbc kbc;
    struct vm_pci pci;
    struct vm_ide ide;
    struct vm_misc misc;
};

/* cpu.c: set-up, the Unicorn callbacks (install their addresses with uc_hook_add), the clock. */
void vm_init(struct vm *m, void *uc, void *emu_stop, void *ctl, void *reg_read, void *reg_write,
             void *vmem_read);
void vm_reset_devices(struct vm *m);
void vm_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
void vm_null_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
struct uc_tlb_entry;
int vm_tlb_fill(void *uc, uint64_t va, int type, struct uc_tlb_entry *result, void *user_data);
void vm_retry_fault(struct vm *m);
int64_t vm_walk_super(struct vm *m, uint32_t va);
void vm_tlb_restore_step(struct vm *m);
uint32_t vm_port_in(void *uc, uint32_t port, int size, void *user_data);
void vm_port_out(void *uc, uint32_t port, int size, uint32_t value, void *user_data);
uint32_t vm_device_in(struct vm *m, uint32_t owner, uint32_t port, int size);
void vm_device_out(struct vm *m, uint32_t owner, uint32_t port, int size, uint32_t value);
int vm_rdtsc_hook(void *uc, void *user_data);
int vm_cpuid_hook(void *uc, void *user_data);
const uint8_t *vm_cpuid_probe(uint32_t *len);

/* deliver.c: events through the IDT, SYSENTER, the clock after an early exit from a block. */
int vm_deliver(struct vm *m, int vector, int has_error, uint32_t error_code, uint32_t return_eip);
int vm_read_super(struct vm *m, uint32_t va, void *buf, size_t n);
void vm_settle(struct vm *m, uint32_t at);
void vm_intr_hook(void *uc, uint32_t intno, void *user_data);
int vm_invalid_hook(void *uc, void *user_data);
void vm_sysenter_hook(void *uc, void *user_data);
int vm_read_cpu(struct vm *m, uint64_t address, void *buf, size_t size);
uint64_t vm_now_ns(struct vm *m);
uint64_t vm_next_event(struct vm *m);
void vm_run_timers(struct vm *m);
void vm_update_deadline(struct vm *m);
int vm_interrupt_ack(struct vm *m);
void vm_set_irq(struct vm *m, int irq, int level);
void vm_request(struct vm *m, uint32_t what);

/* Devices: reset and (for Python's monitor and tests) direct port access. */
void vm_pic_reset(struct vm *m);
uint32_t vm_pic_read(struct vm *m, uint32_t port);
void vm_pic_write(struct vm *m, uint32_t port, uint32_t value);
void vm_elcr_write(struct vm *m, uint32_t port, uint32_t value);
int vm_pic_ack(struct vm *m);
void vm_pit_reset(struct vm *m);
uint32_t vm_pit_read(struct vm *m, uint32_t port);
void vm_pit_write(struct vm *m, uint32_t port, uint32_t value);
uint32_t vm_speaker_read(struct vm *m);
void vm_speaker_write(struct vm *m, uint32_t value);
uint64_t vm_pit_next_event(struct vm *m);
void vm_pit_run(struct vm *m, uint64_t now);
void vm_uart_reset(struct vm *m);
uint32_t vm_uart_read(struct vm *m, uint32_t reg);
void vm_uart_write(struct vm *m, uint32_t reg, uint32_t value);
int vm_uart_receive(struct vm *m, const uint8_t *data, uint32_t len);
void vm_uart_run(struct vm *m, uint64_t now);
void vm_rtc_reset(struct vm *m, int64_t base_seconds);
uint32_t vm_rtc_read(struct vm *m, uint32_t port);
void vm_rtc_write(struct vm *m, uint32_t port, uint32_t value);
uint64_t vm_rtc_next_event(struct vm *m);
void vm_rtc_run(struct vm *m, uint64_t now);
void vm_kbc_reset(struct vm *m);
uint32_t vm_kbc_read(struct vm *m, uint32_t port);
void vm_kbc_write(struct vm *m, uint32_t port, uint32_t value);
void vm_pci_reset(struct vm *m);
uint32_t vm_pci_read(struct vm *m, uint32_t port, int size);
void vm_pci_write(struct vm *m, uint32_t port, int size, uint32_t value);
int vm_pci_add(struct vm *m, uint8_t devfn, const uint8_t *config, const uint8_t *wmask);
void vm_pci_map_bars(struct vm *m);
void vm_ide_reset(struct vm *m);
uint32_t vm_ide_read(struct vm *m, uint32_t port, int size);
uint32_t vm_bmdma_read(struct vm *m, uint32_t port, int size);
void vm_bmdma_write(struct vm *m, uint32_t port, int size, uint32_t value);
void vm_misc_reset(struct vm *m);
uint32_t vm_misc_read(struct vm *m, uint32_t owner, uint32_t port, int size);
void vm_misc_write(struct vm *m, uint32_t owner, uint32_t port, int size, uint32_t value);

/* tracehook.c: the in-stub VMI tracer's recording half. */
#define TRACE_REGS 8                /* eax ecx edx ebx esp ebp esi edi, in reg_ids order */
#define TRACE_STACK_WORDS 6         /* the return address, then five stack arguments */
#define TRACE_MEM_OK 1              /* record.flags: mem holds mem_size bytes read at the call */
#define TRACE_STACK_OK 2            /* record.flags: stack was readable */
#define TRACE_KNOWN_SLOTS 1024      /* open-addressing set of hooked return addresses */
#define TRACE_RETURN 0xFFFFFFFF     /* record.call of a hit on a return address */

struct vmigdb_trace_record {
    uint32_t call;                  /* the VMI call number of the entry, or TRACE_RETURN */
    uint32_t addr;                  /* the hooked address: the entry, or the return address */
    uint32_t flags;
    uint32_t regs[TRACE_REGS];
    uint32_t stack[TRACE_STACK_WORDS];
    uint32_t mem[2];                /* the old PTE of a PTE write, read through the CPU's TLB */
    uint32_t task;                  /* the guest's current task pointer (0: not configured) */
    uint64_t ticks;                 /* the machine's clock at the hit (vm.now: the block's start) */
};

struct vmigdb_trace {
    struct vmigdb_runctl *rc;
    struct vmigdb_trace_record *records;
    uint32_t capacity;              /* records */
    uint32_t high_water;            /* at this count, ask for a drain */
    uint32_t count;                 /* records written since the last drain */
    uint32_t lost;                  /* hits not recorded: the buffer was full */
    int reg_ids[TRACE_REGS];
    int (*reg_read_batch)(void *uc, int *regs, void **vals, int count);
    struct vm *vm;                  /* its reads go through vm_read_cpu (CR2 stays the guest's) */
    uint64_t calls;                 /* ROM entry hits, recorded or lost: the stub's call counter */
    uint64_t call_limit;            /* record no hit after this many calls (0: no limit) */
    int32_t limit_hit;              /* the call after the limit came: nothing more is recorded */
    int32_t new_return;             /* a record since the last drain returns to an unhooked address */
    uint32_t task_var;              /* VA of the current task pointer, 0: none (Linux: current_task) */
    uint32_t task_offset;           /* VA of a u32 added to task_var first, 0: none (Linux's
                                     * __per_cpu_offset[0]: per-cpu data moves during boot) */
    uint32_t cpu_offset;            /* that u32 once it is not 0 (Linux sets it once), 0: unread */
    int32_t drain_on_switch;        /* ask for a drain when the task changes: Python names the
                                     * tasks of each drain while they still are those tasks */
    uint32_t last_task;             /* the task of the last record */
    uint32_t known[TRACE_KNOWN_SLOTS];  /* return addresses already hooked (0: empty slot) */
};

struct vmigdb_trace_site {
    struct vmigdb_trace *trace;
    uint32_t call;                  /* copied into each record */
    uint32_t addr;
    int32_t mem_reg;                /* index in regs of the address to read, or -1 */
    uint32_t mem_size;              /* 4 or 8 */
    uint32_t wants_return;          /* the call has results: its return address must be hooked */
};

void vmigdb_trace_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
int vmigdb_trace_known_add(struct vmigdb_trace *t, uint32_t addr);

#endif
