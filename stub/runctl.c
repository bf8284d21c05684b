/*
 * vmigdb run control: a Unicorn block hook, in C, that turns a stop request (gdb's Ctrl-C, or a
 * C hook asking for Python's attention) into a stop at the next translation-block boundary.
 *
 * Why not uc_emu_stop() from the thread that sees the Ctrl-C: Unicorn 2.1.4 then leaves the
 * guest PC stale when the stop lands between two chained blocks (cpu_tb_exec skips
 * synchronize_from_tb whenever stop_request is set), so resuming re-executes code that already
 * ran. From inside a block hook the PC has just been synced to the block's start and the block
 * has not run yet (nor any code hook in it), so stopping there is exact. Written in C because a
 * Python callback per block would cost ~10x in run speed; this one costs a compare per block.
 */
#include "hooks.h"

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
