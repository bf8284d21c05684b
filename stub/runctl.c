/*
 * vmigdb run control: a Unicorn block hook, in C, that turns an interrupt request (gdb's Ctrl-C)
 * into a stop at the next translation-block boundary.
 *
 * Why not uc_emu_stop() from the thread that sees the Ctrl-C: Unicorn 2.1.4 then leaves the
 * guest PC stale when the stop lands between two chained blocks (cpu_tb_exec skips
 * synchronize_from_tb whenever stop_request is set), so resuming re-executes code that already
 * ran. From inside a block hook the PC has just been synced to the block's start and the block
 * has not run yet, so stopping there is exact. Written in C because a Python callback per block
 * would cost ~10x in run speed; this one costs a compare per block.
 */
#include <stdint.h>

struct vmigdb_runctl {
    volatile int32_t stop;          /* set by the controlling thread, cleared here */
    int32_t stopped;                /* how many stops this hook made (diagnostics) */
    int (*emu_stop)(void *uc);      /* libunicorn's uc_emu_stop, passed in: no link dependency */
};

void vmigdb_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vmigdb_runctl *rc = user_data;
    (void)address;
    (void)size;
    if (rc->stop) {
        rc->stop = 0;
        rc->stopped++;
        rc->emu_stop(uc);
    }
}
