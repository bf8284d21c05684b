"""The legacy PC devices (stub/native/*.c) driven through their ports as Linux 2.6.32 drives them.

Each test runs on a bare ``struct vm`` (no Unicorn): the port map from the device modules, the
devices reset as the machine resets them, port accesses through vm_device_in/vm_device_out
(what the IN/OUT hook calls), and the virtual clock moved by hand. The access sequences are
Linux's (shared/reference/linux-pc.md sections 2.2, 2.3 and 3.1-3.7); the expected answers are
the datasheets' and those of QEMU's models (hw/timer/i8254.c, hw/audio/pcspk.c,
hw/intc/i8259.c, hw/char/serial.c, hw/rtc/mc146818rtc.c, hw/input/pckbd.c and ps2.c,
hw/pci/pci_host.c, hw/misc/debugexit.c). Nothing here reads the wall clock.
"""

from __future__ import annotations

import datetime as dt

import pytest

from vmigdb.stub.machine import devices
from vmigdb.stub.machine.devices import kbc, pci, rtc
from vmigdb.stub.machine.native import ffi, lib

NS_PER_TICK = lib.VM_NS_PER_TICK
SECOND = 10**9
PIT_HZ = 1193182
LATCH = 1193  # (PIT_HZ + HZ/2) / HZ with HZ = 1000
BASE_TIME = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
COM1 = 0x3F8


# --- the machine and its ports -------------------------------------------------------------------
@pytest.fixture
def vm():
    m = ffi.new("struct vm *")
    m.alarm = lib.VM_NEVER
    for dev in devices.DEVICES.values():
        for owner, ports in dev.PORTS.items():
            for p in ports:
                m.port_owner[p] = owner
    for i in range(lib.VM_PCI_FUNCTIONS):
        m.pci.fn[i].devfn = 0xFF
    lib.vm_reset_devices(m)
    rtc.reset(m, BASE_TIME, 128 << 20)
    pci.reset(m)
    return m


def _in(vm, port: int, size: int) -> int:
    return lib.vm_device_in(vm, vm.port_owner[port], port, size)


def _out(vm, port: int, size: int, value: int) -> None:
    lib.vm_device_out(vm, vm.port_owner[port], port, size, value)


def inb(vm, port: int) -> int:
    return _in(vm, port, 1)


def inw(vm, port: int) -> int:
    return _in(vm, port, 2)


def inl(vm, port: int) -> int:
    return _in(vm, port, 4)


def outb(vm, port: int, value: int) -> None:
    _out(vm, port, 1, value)


def outw(vm, port: int, value: int) -> None:
    _out(vm, port, 2, value)


def outl(vm, port: int, value: int) -> None:
    _out(vm, port, 4, value)


def outb_p(vm, port: int, value: int) -> None:
    """Linux's outb_p: the write, then the delay write to port 0x80."""
    outb(vm, port, value)
    outb(vm, 0x80, 0)


# --- the clock ---------------------------------------------------------------------------------------
def run_to(vm, tick: int) -> None:
    """Let virtual time pass up to ``tick``: every device event due by then happens."""
    assert tick >= vm.now
    vm.now = vm.ticks = tick
    lib.vm_run_timers(vm)


def advance(vm, ns: int) -> None:
    run_to(vm, vm.now + ns // NS_PER_TICK)


def at_ns(vm, ns: int) -> None:
    """Move the clock to ``ns`` nanoseconds after power-on."""
    run_to(vm, ns // NS_PER_TICK)


def pit_tick(load: int, clocks: int) -> int:
    """The first tick at which ``clocks`` PIT input clocks have passed since tick ``load``."""
    return load - (-clocks * SECOND // (PIT_HZ * NS_PER_TICK))


def edges(vm) -> int:
    """Rising edges on all IRQ lines so far (a device drives a line only when it changes)."""
    return vm.irqs_raised


# --- the 8259A pair ------------------------------------------------------------------------------------
INIT_8259A = ((0x21, 0xFF), (0xA1, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04),
              (0x21, 0x01), (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01),
              (0x21, 0xFF), (0xA1, 0xFF))


def init_8259a(vm, master_mask: int = 0xFB, slave_mask: int = 0xFF) -> None:
    """init_8259A(0) as the kernel does it (K:i8259.c:308-360), then the masks it ends with."""
    for port, value in INIT_8259A:
        outb(vm, port, value)
    outb(vm, 0x21, master_mask)
    outb(vm, 0xA1, slave_mask)


def read_isr(vm, base: int) -> int:
    """i8259A_irq_real's OCW3 dance: read ISR, then select IRR again."""
    outb(vm, base, 0x0B)
    isr = inb(vm, base)
    outb(vm, base, 0x0A)
    return isr


def irr(vm, base: int) -> int:
    return inb(vm, base)  # IRR is what the command port reads after init


def ack(vm) -> int:
    """The CPU's INTA cycle: the vector."""
    return lib.vm_interrupt_ack(vm)


def mask_and_ack(vm, irq: int, master_mask: int, slave_mask: int = 0xFF) -> None:
    """mask_and_ack_8259A (K:i8259.c:148-219): dummy IMR read, mask, specific EOI(s)."""
    if irq < 8:
        inb(vm, 0x21)
        outb(vm, 0x21, master_mask | (1 << irq))
        outb(vm, 0x20, 0x60 + irq)
    else:
        inb(vm, 0xA1)
        outb(vm, 0xA1, slave_mask | (1 << (irq - 8)))
        outb(vm, 0xA0, 0x60 + (irq & 7))
        outb(vm, 0x20, 0x62)


def test_pic_init_8259a_programs_vectors_cascade_and_masks(vm):
    for port, value in INIT_8259A[:10]:  # up to ICW4 of the slave
        outb(vm, port, value)
    # ICW1 clears the mask register on both chips (datasheet, QEMU pic_reset_common).
    assert (inb(vm, 0x21), inb(vm, 0xA1)) == (0x00, 0x00)
    for port, value in INIT_8259A[10:]:
        outb(vm, port, value)
    assert (inb(vm, 0x21), inb(vm, 0xA1)) == (0xFF, 0xFF)
    assert (irr(vm, 0x20), irr(vm, 0xA0), read_isr(vm, 0x20), read_isr(vm, 0xA0)) == (0, 0, 0, 0)
    outb(vm, 0x21, 0xFB)  # IRQ2 (cascade) gets its action
    assert inb(vm, 0x21) == 0xFB
    # Vectors: IRQ0-7 at 0x30-0x37, IRQ8-15 at 0x38-0x3F through the cascade on IR2.
    outb(vm, 0x21, 0x00)
    outb(vm, 0xA1, 0x00)
    for irq in (0, 3, 7, 8, 12, 15):
        lib.vm_set_irq(vm, irq, 1)
        assert vm.pic.output == 1
        assert ack(vm) == 0x30 + irq
        lib.vm_set_irq(vm, irq, 0)
        if irq >= 8:
            outb(vm, 0xA0, 0x60 + (irq & 7))
            outb(vm, 0x20, 0x62)
        else:
            outb(vm, 0x20, 0x60 + irq)
        assert vm.pic.output == 0
    assert (read_isr(vm, 0x20), read_isr(vm, 0xA0)) == (0, 0)


def test_pic_ocw1_masks_requests_without_losing_them(vm):
    init_8259a(vm, master_mask=0xFB)
    lib.vm_set_irq(vm, 3, 1)
    assert irr(vm, 0x20) & 0x08  # the request is latched...
    assert vm.pic.output == 0  # ...but masked
    outb(vm, 0x21, 0xF3)  # unmask IRQ3
    assert vm.pic.output == 1
    outb(vm, 0x21, 0xFB)  # and mask it again before the CPU took it
    assert vm.pic.output == 0
    outb(vm, 0x21, 0xF3)
    assert ack(vm) == 0x33
    assert read_isr(vm, 0x20) == 0x08 and irr(vm, 0x20) & 0x08 == 0


def test_pic_edge_triggered_line_held_high_requests_once(vm):
    init_8259a(vm, master_mask=0xF3)
    lib.vm_set_irq(vm, 3, 1)
    assert ack(vm) == 0x33
    outb(vm, 0x20, 0x63)
    lib.vm_set_irq(vm, 3, 1)  # still high: no new edge
    assert vm.pic.output == 0 and irr(vm, 0x20) & 0x08 == 0
    lib.vm_set_irq(vm, 3, 0)
    assert vm.pic.output == 0
    lib.vm_set_irq(vm, 3, 1)  # a new rising edge
    assert vm.pic.output == 1 and irr(vm, 0x20) & 0x08


def test_pic_specific_and_nonspecific_eoi(vm):
    init_8259a(vm, master_mask=0xC3)  # IRQ2-5 open
    lib.vm_set_irq(vm, 5, 1)
    lib.vm_set_irq(vm, 3, 1)
    assert ack(vm) == 0x33
    assert vm.pic.output == 0  # IRQ5 waits behind IRQ3 in service
    assert read_isr(vm, 0x20) == 0x08 and irr(vm, 0x20) == 0x20
    outb(vm, 0x20, 0x63)  # specific EOI for IRQ3
    assert read_isr(vm, 0x20) == 0 and vm.pic.output == 1
    assert ack(vm) == 0x35
    outb(vm, 0x20, 0x64)  # a specific EOI for another level leaves IRQ5 in service
    assert read_isr(vm, 0x20) == 0x20
    # Nested: IRQ4 preempts IRQ5; a non-specific EOI ends the highest level in service.
    lib.vm_set_irq(vm, 4, 1)
    assert ack(vm) == 0x34
    assert read_isr(vm, 0x20) == 0x30
    outb(vm, 0x20, 0x20)
    assert read_isr(vm, 0x20) == 0x20
    outb(vm, 0x20, 0x20)
    assert read_isr(vm, 0x20) == 0x00


def test_pic_priority_lower_irq_first_in_service_blocks_lower(vm):
    init_8259a(vm, master_mask=0x00)
    for irq in (6, 5, 3):
        lib.vm_set_irq(vm, irq, 1)
    assert ack(vm) == 0x33
    assert vm.pic.output == 0  # 5 and 6 are below 3 in service
    lib.vm_set_irq(vm, 1, 1)  # a higher level still gets through
    assert vm.pic.output == 1
    assert ack(vm) == 0x31
    assert read_isr(vm, 0x20) == 0x0A
    outb(vm, 0x20, 0x61)
    assert vm.pic.output == 0  # IRQ3 is still in service
    outb(vm, 0x20, 0x63)
    assert ack(vm) == 0x35
    outb(vm, 0x20, 0x65)
    assert ack(vm) == 0x36
    outb(vm, 0x20, 0x66)
    assert vm.pic.output == 0


def test_pic_slave_irq_cascades_through_irq2_and_needs_eoi_on_both(vm):
    init_8259a(vm, master_mask=0xF3, slave_mask=0xAF)  # IRQ2, IRQ3; IRQ12, IRQ14
    lib.vm_set_irq(vm, 12, 1)
    assert vm.pic.output == 1 and irr(vm, 0x20) & 0x04 and irr(vm, 0xA0) & 0x10
    assert ack(vm) == 0x3C
    assert read_isr(vm, 0x20) == 0x04 and read_isr(vm, 0xA0) == 0x10
    lib.vm_set_irq(vm, 14, 1)  # below IRQ12 on the slave
    lib.vm_set_irq(vm, 3, 1)  # below IRQ2 on the master
    assert vm.pic.output == 0
    # mask_and_ack_8259A for IRQ12: slave EOI first, then the master's for the cascade.
    inb(vm, 0xA1)
    outb(vm, 0xA1, 0xBF)
    outb(vm, 0xA0, 0x64)
    assert read_isr(vm, 0xA0) == 0
    assert vm.pic.output == 0  # the master still has IR2 in service
    outb(vm, 0x20, 0x62)
    assert read_isr(vm, 0x20) == 0 and vm.pic.output == 1
    assert ack(vm) == 0x3E  # IR2 (the slave's IRQ14) before the master's IRQ3
    inb(vm, 0xA1)
    outb(vm, 0xA1, 0xFF)
    outb(vm, 0xA0, 0x66)
    outb(vm, 0x20, 0x62)
    assert ack(vm) == 0x33


def test_pic_ocw3_reads_isr_then_irr(vm):
    init_8259a(vm, master_mask=0x00, slave_mask=0x00)
    lib.vm_set_irq(vm, 4, 1)
    lib.vm_set_irq(vm, 6, 1)
    assert ack(vm) == 0x34
    lib.vm_set_irq(vm, 9, 1)
    outb(vm, 0x20, 0x0B)
    assert inb(vm, 0x20) == 0x10  # ISR
    assert inb(vm, 0x20) == 0x10  # the selection stays until changed
    outb(vm, 0x20, 0x0A)
    assert inb(vm, 0x20) == 0x44  # IRR: IRQ6 and the cascade
    assert inb(vm, 0xA0) == 0x02  # slave IRR: IRQ9
    outb(vm, 0xA0, 0x0B)
    assert inb(vm, 0xA0) == 0x00
    outb(vm, 0xA0, 0x0A)
    assert inb(vm, 0x21) == 0x00  # IMR, whatever OCW3 selected


def test_pic_poll_command_acknowledges_the_highest_request(vm):
    init_8259a(vm, master_mask=0xFF)  # polling works with the requests masked off the CPU
    outb(vm, 0x21, 0x00)
    lib.vm_set_irq(vm, 5, 1)
    lib.vm_set_irq(vm, 3, 1)
    outb(vm, 0x20, 0x0C)
    assert inb(vm, 0x20) == 0x83
    assert read_isr(vm, 0x20) == 0x08
    assert irr(vm, 0x20) == 0x20  # the poll was one read; this one is IRR again
    outb(vm, 0x20, 0x63)
    outb(vm, 0x20, 0x0C)
    assert inb(vm, 0x20) == 0x85
    outb(vm, 0x20, 0x65)
    outb(vm, 0x20, 0x0C)
    assert inb(vm, 0x20) == 0x00  # nothing requesting


def test_pic_spurious_irq7_and_irq15(vm):
    init_8259a(vm, master_mask=0xFB, slave_mask=0xEF)
    assert ack(vm) == 0x37  # nothing pending: IR7's vector
    assert read_isr(vm, 0x20) == 0  # and nothing in service (Linux's spurious check)
    # The slave's request goes away between its INT and the acknowledge: IR7 of the slave.
    lib.vm_set_irq(vm, 12, 1)
    outb(vm, 0xA1, 0xFF)
    assert vm.pic.output == 1  # the master latched IR2's edge
    assert ack(vm) == 0x3F
    assert read_isr(vm, 0xA0) == 0


def test_pic_elcr_masks_and_level_triggered_requests(vm):
    assert (inb(vm, 0x4D0), inb(vm, 0x4D1)) == (0, 0)
    outb(vm, 0x4D0, 0xFF)
    outb(vm, 0x4D1, 0xFF)
    assert (inb(vm, 0x4D0), inb(vm, 0x4D1)) == (0xF8, 0xDE)  # IRQ0-2, 8 and 13 are edge only
    outb(vm, 0x4D0, 0x20)  # IRQ5 level triggered
    outb(vm, 0x4D1, 0x00)
    init_8259a(vm, master_mask=0xDB)
    assert inb(vm, 0x4D0) == 0x20  # ICW1 does not reset the ELCR
    lib.vm_set_irq(vm, 5, 1)
    assert ack(vm) == 0x35
    assert irr(vm, 0x20) & 0x20  # a level request stays while the line is high
    outb(vm, 0x20, 0x65)
    assert vm.pic.output == 1  # so it asks again after the EOI
    lib.vm_set_irq(vm, 5, 0)
    assert irr(vm, 0x20) & 0x20 == 0 and vm.pic.output == 0
    lib.vm_set_irq(vm, 5, 1)
    lib.vm_set_irq(vm, 3, 1)
    assert irr(vm, 0x20) == 0x28
    for port, value in INIT_8259A[2:6]:  # ICW1-4 again
        outb(vm, port, value)
    assert irr(vm, 0x20) == 0x20  # ICW1 keeps level requests (IRR &= ELCR), forgets edges


# --- the 8254 and port 0x61 ----------------------------------------------------------------------------
def pit_latch(vm, channel: int) -> int:
    """Counter latch command, then LSB and MSB (the clocksource read, K:i8253.c:147-150)."""
    outb(vm, 0x43, channel << 6)
    lo = inb(vm, 0x40 + channel)
    return lo | inb(vm, 0x40 + channel) << 8


def test_pit_linux_periodic_tick(vm):
    init_8259a(vm)
    outb_p(vm, 0x43, 0x34)
    outb_p(vm, 0x40, LATCH & 0xFF)
    outb_p(vm, 0x40, LATCH >> 8)
    outb(vm, 0x21, 0xFA)  # setup_irq(0)
    load = vm.now
    assert vm.pic.output == 0
    seen = []
    for k in range(1, 6):
        run_to(vm, pit_tick(load, k * LATCH) - 1)
        assert vm.pic.output == 0, k
        before = edges(vm)
        run_to(vm, pit_tick(load, k * LATCH))
        assert edges(vm) == before + 1  # one edge per period
        assert vm.pic.output == 1
        seen.append(ack(vm))
        mask_and_ack(vm, 0, 0xFA)
        outb(vm, 0x21, 0xFA)
    assert seen == [0x30] * 5
    # The count runs down from LATCH in every period.
    counts = []
    for d in (10, 300, 900, 1190):
        run_to(vm, pit_tick(load, 5 * LATCH + d))
        counts.append(pit_latch(vm, 0))
    assert counts == [LATCH - 10, LATCH - 300, LATCH - 900, LATCH - 1190]
    # Over one second of virtual time: one edge per LATCH clocks.
    before = edges(vm)
    run_to(vm, pit_tick(load, 5 * LATCH + PIT_HZ))
    assert edges(vm) - before == PIT_HZ // LATCH


def test_pit_oneshot_mode4(vm):
    outb_p(vm, 0x43, 0x38)  # init_pit_timer(ONESHOT)
    for delta in (1000, 0x7FFF, 0xF):
        outb_p(vm, 0x40, delta & 0xFF)  # pit_next_event
        outb_p(vm, 0x40, delta >> 8)
        load, before = vm.now, edges(vm)
        run_to(vm, pit_tick(load, delta) - 1)
        assert edges(vm) == before
        run_to(vm, pit_tick(load, delta))
        assert edges(vm) == before + 1
        run_to(vm, pit_tick(load, delta + 5 * 0x10000))
        assert edges(vm) == before + 1  # one shot: nothing more until reprogrammed


def test_pit_shutdown_stops_the_periodic_tick(vm):
    outb_p(vm, 0x43, 0x34)
    outb_p(vm, 0x40, LATCH & 0xFF)
    outb_p(vm, 0x40, LATCH >> 8)
    run_to(vm, pit_tick(vm.now, 10 * LATCH + 5))
    # CLOCK_EVT_MODE_SHUTDOWN (K:i8253.c:46-54): mode 0 with a count of 0, i.e. 0x10000.
    outb_p(vm, 0x43, 0x30)
    outb_p(vm, 0x40, 0)
    outb_p(vm, 0x40, 0)
    load, before = vm.now, edges(vm)
    run_to(vm, pit_tick(load, 0x10000) - 1)
    assert edges(vm) == before  # no periodic edges any more
    # Mode 0 raises OUT once at terminal count (datasheet, QEMU) and keeps it high.
    run_to(vm, pit_tick(load, 0x10000))
    assert edges(vm) == before + 1
    run_to(vm, pit_tick(load, 50 * 0x10000))
    assert edges(vm) == before + 1
    outb(vm, 0x43, 0xE2)  # read-back status of channel 0
    assert inb(vm, 0x40) == 0xB0  # OUT high, LSB/MSB, mode 0, binary


def test_pit_mode3_square_wave_from_reset(vm):
    # QEMU's reset: every channel in mode 3 with a count of 0x10000; channel 0 runs at once.
    outb(vm, 0x43, 0xE2)
    assert inb(vm, 0x40) & 0x8F == 0x86  # OUT high, mode 3
    run_to(vm, pit_tick(0, 0x8000) - 1)
    outb(vm, 0x43, 0xE2)
    assert inb(vm, 0x40) & 0x80
    run_to(vm, pit_tick(0, 0x8000))  # the second half of the period is low
    outb(vm, 0x43, 0xE2)
    assert inb(vm, 0x40) & 0x80 == 0
    before = edges(vm)
    run_to(vm, pit_tick(0, 10 * 0x10000))
    assert edges(vm) - before == 10  # ~18.2 Hz before anybody programs it
    # Programmed mode 3: the count drops by two per clock; OUT high for the first half.
    outb(vm, 0x43, 0x36)
    outb(vm, 0x40, 1000 & 0xFF)
    outb(vm, 0x40, 1000 >> 8)
    load = vm.now
    run_to(vm, pit_tick(load, 100))
    assert pit_latch(vm, 0) == 800
    before = edges(vm)
    run_to(vm, pit_tick(load, 20 * 1000))
    assert edges(vm) - before == 20


def test_pit_access_modes(vm):
    # Word access: LSB then MSB, for writes and for reads (a flip-flop per channel).
    outb(vm, 0x43, 0x30)
    outb(vm, 0x40, 0x34)
    outb(vm, 0x40, 0x12)
    assert [inb(vm, 0x40) for _ in range(4)] == [0x34, 0x12, 0x34, 0x12]
    # LSB only: a write loads the count at once, every read gives the LSB.
    outb(vm, 0x43, 0x10)
    outb(vm, 0x40, 0x56)
    assert [inb(vm, 0x40) for _ in range(3)] == [0x56] * 3
    run_to(vm, pit_tick(vm.now, 6))
    assert inb(vm, 0x40) == 0x50
    # MSB only: the write is the high byte of the count (low byte 0).
    outb(vm, 0x43, 0x20)
    outb(vm, 0x40, 0x12)
    assert [inb(vm, 0x40) for _ in range(3)] == [0x12] * 3
    outb(vm, 0x43, 0x30)  # the count is 0x1200: read both halves now
    assert pit_latch(vm, 0) == 0x1200
    # A new control word restarts the flip-flop even mid-pair.
    outb(vm, 0x43, 0x30)
    outb(vm, 0x40, 0x78)  # LSB only written...
    outb(vm, 0x43, 0x30)
    outb(vm, 0x40, 0xCD)
    outb(vm, 0x40, 0xAB)  # ...so this pair is the count
    assert pit_latch(vm, 0) == 0xABCD
    # Channel 1 and 2 have their own registers.
    outb(vm, 0x43, 0x70)
    outb(vm, 0x41, 0x22)
    outb(vm, 0x41, 0x11)
    assert pit_latch(vm, 1) == 0x1122
    assert pit_latch(vm, 0) == 0xABCD
    assert inb(vm, 0x43) == 0  # the control word is write-only


def test_pit_counter_latch_and_second_latch_ignored(vm):
    outb(vm, 0x43, 0x34)
    outb(vm, 0x40, 10000 & 0xFF)
    outb(vm, 0x40, 10000 >> 8)
    load = vm.now
    run_to(vm, pit_tick(load, 100))
    outb(vm, 0x43, 0x00)
    run_to(vm, pit_tick(load, 1000))
    outb(vm, 0x43, 0x00)  # ignored: the first latch has not been read
    lo = inb(vm, 0x40)
    hi = inb(vm, 0x40)
    assert lo | hi << 8 == 9900
    outb(vm, 0x43, 0x00)  # read out: this one latches again
    run_to(vm, pit_tick(load, 2000))
    lo = inb(vm, 0x40)
    outb(vm, 0x43, 0x00)  # half read: still ignored
    run_to(vm, pit_tick(load, 3000))
    hi = inb(vm, 0x40)
    assert lo | hi << 8 == 9000
    # Without a latch, reads follow the counter.
    outb(vm, 0x43, 0x34)  # (a control word also resets the read flip-flop)
    run_to(vm, pit_tick(vm.now, 1))
    live = [inb(vm, 0x40) | inb(vm, 0x40) << 8 for _ in range(2)]
    assert live[0] == live[1] and live[0] != 9000


def test_pit_read_back_command(vm):
    outb(vm, 0x43, 0x34)
    outb(vm, 0x40, LATCH & 0xFF)
    outb(vm, 0x40, LATCH >> 8)
    load = vm.now
    run_to(vm, pit_tick(load, 100))
    outb(vm, 0x43, 0xC2)  # count and status of channel 0
    assert inb(vm, 0x40) == 0x34  # OUT low, LSB/MSB, mode 2, binary
    assert inb(vm, 0x40) | inb(vm, 0x40) << 8 == LATCH - 100
    # Status bits: OUT, access mode, mode, BCD, for several channels at once.
    # (Bit 6, null count, is left out where the datasheet and QEMU differ: QEMU has none.)
    outb(vm, 0x43, 0xB0)  # channel 2, LSB/MSB, mode 0
    outb(vm, 0x42, 50)
    outb(vm, 0x42, 0)
    ch2 = vm.now
    outb(vm, 0x43, 0x56)  # channel 1, LSB only, mode 3 (no count written)
    run_to(vm, pit_tick(ch2, 2))
    outb(vm, 0x43, 0xEE)  # status of channels 0, 1 and 2
    # (channel 1 runs from reset with gate high: its OUT is in the high half)
    assert (inb(vm, 0x40), inb(vm, 0x41) & 0xBF, inb(vm, 0x42)) == (0x34, 0x96, 0x30)
    # A second status latch is ignored until the first is read.
    outb(vm, 0x43, 0xE8)
    run_to(vm, pit_tick(ch2, 60))  # channel 2 reached terminal count: OUT high
    outb(vm, 0x43, 0xE8)
    assert inb(vm, 0x42) == 0x30
    outb(vm, 0x43, 0xE8)
    assert inb(vm, 0x42) == 0xB0
    # The read-back is not a control word: channel 0 keeps its mode and its period.
    before = edges(vm)
    run_to(vm, pit_tick(load, 3 * LATCH))
    assert edges(vm) - before == 3


def test_pit_read_back_count_is_latched_at_the_command(vm):
    outb(vm, 0x43, 0x34)
    outb(vm, 0x40, LATCH & 0xFF)
    outb(vm, 0x40, LATCH >> 8)
    load = vm.now
    run_to(vm, pit_tick(load, 100))
    outb(vm, 0x43, 0xD2)  # count only, channel 0
    run_to(vm, pit_tick(load, 500))
    assert inb(vm, 0x40) | inb(vm, 0x40) << 8 == LATCH - 100


def test_pit_quick_pit_calibrate_channel2_through_port61(vm):
    run_to(vm, 12345)
    v1, v2 = inb(vm, 0x61), inb(vm, 0x61)
    assert (v1 ^ v2) == 0x10  # the refresh bit toggles on every read, nothing else moves
    assert v1 & 0x03 == 0  # gate 2 low, speaker off after reset
    # quick_pit_calibrate (K:tsc.c:316-338): gate high, speaker off, ch2 mode 0, count 0xFFFF.
    outb(vm, 0x61, (inb(vm, 0x61) & ~0x02) | 0x01)
    assert inb(vm, 0x61) & 0x03 == 0x01
    outb(vm, 0x43, 0xB0)
    outb(vm, 0x42, 0xFF)
    outb(vm, 0x42, 0xFF)
    load = vm.now
    assert inb(vm, 0x61) & 0x20 == 0  # OUT2 low while counting
    # pit_expect_msb: the MSB steps down once per 256 clocks, LSB/MSB read in pairs.
    last = 0x10000
    for i in range(1, 117):
        for d in (i * 256 + 3, i * 256 + 128, i * 256 + 250):
            run_to(vm, pit_tick(load, d))
            lsb = inb(vm, 0x42)
            msb = inb(vm, 0x42)
            assert msb == 0xFF - i
            count = lsb | msb << 8
            assert count < last
            last = count
    assert inb(vm, 0x61) & 0x20 == 0
    run_to(vm, pit_tick(load, 0xFFFF) - 1)
    assert inb(vm, 0x61) & 0x20 == 0
    run_to(vm, pit_tick(load, 0xFFFF))
    assert inb(vm, 0x61) & 0x20  # OUT2 rose at terminal count, and stays
    run_to(vm, pit_tick(load, 3 * 0xFFFF))
    assert inb(vm, 0x61) & 0x21 == 0x21
    # pit_calibrate_tsc's fallback waits for bit 5 after a 10 ms count (K:tsc.c:207-216).
    outb(vm, 0x43, 0xB0)
    outb(vm, 0x42, 11931 & 0xFF)
    outb(vm, 0x42, 11931 >> 8)
    load = vm.now
    assert inb(vm, 0x61) & 0x20 == 0
    run_to(vm, pit_tick(load, 11931) - 1)
    assert inb(vm, 0x61) & 0x20 == 0
    run_to(vm, pit_tick(load, 11931))
    assert inb(vm, 0x61) & 0x20
    # Channel 2 never reaches the PIC: no IRQ line moved through all of this.
    assert vm.pic.chip[0].irr & ~0x01 == 0


def test_pit_count_zero_means_0x10000(vm):
    outb(vm, 0x43, 0x34)
    outb(vm, 0x40, 0)
    outb(vm, 0x40, 0)
    load = vm.now
    assert pit_latch(vm, 0) == 0x0000  # 0x10000 read through 16 bits
    run_to(vm, pit_tick(load, 1))
    assert pit_latch(vm, 0) == 0xFFFF
    before = edges(vm)
    run_to(vm, pit_tick(load, 0x10000) - 1)
    assert edges(vm) == before
    run_to(vm, pit_tick(load, 0x10000))
    assert edges(vm) == before + 1
    run_to(vm, pit_tick(load, 4 * 0x10000))
    assert edges(vm) == before + 4
    # Channel 2 in mode 0 with count 0: OUT2 after 0x10000 clocks, not at once.
    outb(vm, 0x61, 0x01)
    outb(vm, 0x43, 0xB0)
    outb(vm, 0x42, 0)
    outb(vm, 0x42, 0)
    load = vm.now
    run_to(vm, pit_tick(load, 0xFFFF))
    assert inb(vm, 0x61) & 0x20 == 0
    run_to(vm, pit_tick(load, 0x10000))
    assert inb(vm, 0x61) & 0x20


# --- the 16550A on COM1 ----------------------------------------------------------------------------------
def uart_in(vm, reg: int, base: int = COM1) -> int:
    return inb(vm, base + reg)


def uart_out(vm, reg: int, value: int, base: int = COM1) -> None:
    outb(vm, base + reg, value)


def receive(vm, data: bytes) -> int:
    return lib.vm_uart_receive(vm, data, len(data))


def serial_output(vm) -> bytes:
    return bytes(ffi.buffer(vm.serial_out, vm.serial_len))


def console_setup(vm, divisor: int = 12) -> None:
    """serial8250_console_setup's register writes at 9600 8N1 (OBS-M, linux-pc.md 2.2 item 5)."""
    for reg, value in ((1, 0x00), (3, 0x93), (0, divisor & 0xFF), (1, divisor >> 8),
                       (3, 0x13), (2, 0x00), (4, 0x01)):
        uart_out(vm, reg, value)


def autoconfig_16550a(vm, base: int) -> str:
    """K:drivers/serial/8250.c autoconfig_16550a, as far as a 16550A takes it."""
    uart_out(vm, 3, 0x80, base)  # LCR_DLAB: an EFR here would read 0 (ST16C650V1)
    if uart_in(vm, 2, base) == 0:
        return "16650"
    uart_out(vm, 3, 0xBF, base)
    if uart_in(vm, 2, base) == 0:
        return "16650V2"
    uart_out(vm, 3, 0, base)  # National Semiconductor SuperIO probe: EXCR1 follows MCR.LOOP?
    status1 = uart_in(vm, 4, base)
    uart_out(vm, 3, 0xE0, base)
    status2 = uart_in(vm, 2, base)
    if not (status2 ^ status1) & 0x10:
        uart_out(vm, 3, 0, base)
        uart_out(vm, 4, status1 ^ 0x10, base)
        uart_out(vm, 3, 0xE0, base)
        status2 = uart_in(vm, 2, base)
        uart_out(vm, 3, 0, base)
        uart_out(vm, 4, status1, base)
        if (status2 ^ status1) & 0x10:
            return "NS16550A"
    uart_out(vm, 3, 0, base)  # TI16750: IIR bit 5 with the 64-byte FIFO, only with DLAB
    uart_out(vm, 2, 0x21, base)
    status1 = uart_in(vm, 2, base) >> 5
    uart_out(vm, 2, 0x01, base)
    uart_out(vm, 3, 0x80, base)
    uart_out(vm, 2, 0x21, base)
    status2 = uart_in(vm, 2, base) >> 5
    uart_out(vm, 2, 0x01, base)
    uart_out(vm, 3, 0, base)
    if status1 == 6 and status2 == 7:
        return "16750"
    iersave = uart_in(vm, 1, base)  # XScale: IER bit 6 (UUE) sticks
    uart_out(vm, 1, iersave & ~0x40, base)
    if not uart_in(vm, 1, base) & 0x40:
        uart_out(vm, 1, iersave | 0x40, base)
        if uart_in(vm, 1, base) & 0x40:
            return "XScale"
    uart_out(vm, 1, iersave, base)
    return "16550A"


def autoconfig(vm, base: int) -> str | None:
    """K:drivers/serial/8250.c autoconfig for a port with UPF_SKIP_TEST (COM1-3)."""
    scratch = uart_in(vm, 1, base)
    uart_out(vm, 1, 0, base)
    outb(vm, 0x80, 0xFF)
    scratch2 = uart_in(vm, 1, base) & 0x0F
    uart_out(vm, 1, 0x0F, base)
    outb(vm, 0x80, 0)
    scratch3 = uart_in(vm, 1, base) & 0x0F
    uart_out(vm, 1, scratch, base)
    if scratch2 != 0 or scratch3 != 0x0F:
        return None  # "IER test failed": nothing there
    save_mcr = uart_in(vm, 4, base)
    save_lcr = uart_in(vm, 3, base)
    uart_out(vm, 3, 0xBF, base)
    uart_out(vm, 2, 0, base)  # EFR
    uart_out(vm, 3, 0, base)
    uart_out(vm, 2, 0x01, base)  # FCR: enable the FIFO
    kind = {0: "8250", 1: "unknown", 2: "16550"}.get(uart_in(vm, 2, base) >> 6)
    if kind is None:
        kind = autoconfig_16550a(vm, base)
    uart_out(vm, 3, save_lcr, base)
    uart_out(vm, 4, save_mcr, base)
    for fcr in (0x01, 0x07, 0x00):  # serial8250_clear_fifos
        uart_out(vm, 2, fcr, base)
    uart_in(vm, 0, base)
    uart_out(vm, 1, 0, base)
    return kind


def test_uart_reset_values(vm):
    regs = [uart_in(vm, r) for r in range(1, 8)]
    assert regs == [0x00, 0x01, 0x00, 0x08, 0x60, 0xB0, 0x00]  # IER IIR LCR MCR LSR MSR SCR
    assert vm.com1.irq_level == 0
    uart_out(vm, 3, 0x80)
    assert (uart_in(vm, 0), uart_in(vm, 1)) == (0x0C, 0x00)  # 9600 baud


def test_uart_dlab_selects_the_divisor_latch(vm):
    console_setup(vm)
    assert uart_in(vm, 3) == 0x13 and uart_in(vm, 4) == 0x01
    assert uart_in(vm, 1) == 0x00  # the DLM write did not reach IER
    uart_out(vm, 3, 0x93)
    assert (uart_in(vm, 0), uart_in(vm, 1)) == (0x0C, 0x00)
    uart_out(vm, 0, 0x01)  # 115200
    uart_out(vm, 1, 0x02)
    assert (uart_in(vm, 0), uart_in(vm, 1)) == (0x01, 0x02)
    assert vm.serial_len == 0  # divisor writes are not transmitted
    uart_out(vm, 1, 0x00)
    uart_out(vm, 3, 0x03)
    assert uart_in(vm, 1) == 0x00
    uart_out(vm, 0, ord("x"))
    assert serial_output(vm) == b"x"
    uart_out(vm, 3, 0x83)
    assert uart_in(vm, 0) == 0x01


def test_uart_linux_autoconfig_finds_a_16550a(vm):
    console_setup(vm)
    assert autoconfig(vm, COM1) == "16550A"
    # What autoconfig leaves: LCR and MCR restored, FIFO off, IER 0, no interrupt.
    assert [uart_in(vm, r) for r in (1, 2, 3, 4, 5)] == [0x00, 0x01, 0x13, 0x01, 0x60]
    # ttyS1-3 are unassigned ports reading 0xFF: the IER test fails.
    for base in (0x2F8, 0x3E8, 0x2E8):
        assert autoconfig(vm, base) is None


def test_uart_fifo_bits_in_iir_regardless_of_dlab(vm):
    uart_out(vm, 2, 0x01)
    assert uart_in(vm, 2) == 0xC1
    uart_out(vm, 3, 0x80)
    assert uart_in(vm, 2) == 0xC1  # offset 2 is IIR even with DLAB (QEMU)
    uart_out(vm, 3, 0xBF)
    assert uart_in(vm, 2) == 0xC1
    uart_out(vm, 2, 0x00)  # ...and FCR: Linux's EFR clear turns the FIFO off
    assert uart_in(vm, 2) == 0x01
    uart_out(vm, 3, 0x00)
    assert uart_in(vm, 2) == 0x01
    uart_out(vm, 2, 0xE1)  # the 64-byte bit (5) does not stick on a 16550A
    assert uart_in(vm, 2) == 0xC1


def test_uart_thre_interrupt(vm):
    console_setup(vm)
    assert vm.com1.irq_level == 0
    uart_out(vm, 1, 0x02)  # IER.THRI 0 -> 1 with THR empty
    assert vm.com1.irq_level == 1
    assert uart_in(vm, 2) == 0x02  # THRI shown...
    assert vm.com1.irq_level == 0  # ...and cleared by that read
    assert uart_in(vm, 2) == 0x01
    uart_out(vm, 0, ord("a"))  # a THR write empties at once and raises it again
    assert vm.com1.irq_level == 1 and uart_in(vm, 5) == 0x60
    assert uart_in(vm, 2) == 0x02
    uart_out(vm, 1, 0x02)  # THRI unchanged: no new interrupt
    assert uart_in(vm, 2) == 0x01
    # serial8250_startup's THRE test: a second 0 -> 1 must raise it again (no UART_BUG_THRE).
    uart_out(vm, 1, 0x00)
    uart_out(vm, 1, 0x02)
    iir1 = uart_in(vm, 2)
    uart_out(vm, 1, 0x00)
    uart_out(vm, 1, 0x02)
    iir = uart_in(vm, 2)
    uart_out(vm, 1, 0x00)
    assert iir1 & 0x01 == 0 and iir & 0x01 == 0
    # ...and its TX-enable test: THRI on with the transmitter empty shows in IIR (no UART_BUG_TXEN).
    uart_out(vm, 1, 0x02)
    lsr = uart_in(vm, 5)
    iir = uart_in(vm, 2)
    uart_out(vm, 1, 0x00)
    assert lsr & 0x40 and iir & 0x01 == 0
    # Clearing THRI takes the line down even with THRE pending.
    uart_out(vm, 1, 0x02)
    assert vm.com1.irq_level == 1
    uart_out(vm, 1, 0x00)
    assert vm.com1.irq_level == 0 and uart_in(vm, 2) == 0x01


def test_uart_autoconfig_irq_sees_irq4(vm):
    init_8259a(vm, master_mask=0xEB)  # probe_irq_on unmasked IRQ4
    console_setup(vm)
    # autoconfig_irq (K:8250.c:1262-1309)
    uart_out(vm, 4, 0x0C)
    uart_out(vm, 4, 0x00)
    uart_out(vm, 4, 0x0B)
    uart_out(vm, 1, 0x0F)
    for reg in (5, 0, 2, 6):
        uart_in(vm, reg)
    assert irr(vm, 0x20) & 0x10
    uart_out(vm, 0, 0xFF)
    assert vm.com1.irq_level == 1
    assert ack(vm) == 0x34
    assert serial_output(vm) == b"\xff"


def test_uart_receive_data_interrupt_and_trigger_level(vm):
    console_setup(vm)
    uart_out(vm, 2, 0x81)  # FIFO on, 8-byte trigger (uart_config[PORT_16550A].fcr)
    uart_out(vm, 1, 0x01)
    assert receive(vm, b"1234567") == 7
    assert uart_in(vm, 5) & 0x01  # DR
    assert uart_in(vm, 2) == 0xC1 and vm.com1.irq_level == 0  # below the trigger level
    assert receive(vm, b"8") == 1
    assert uart_in(vm, 2) == 0xC4 and vm.com1.irq_level == 1
    got = bytes(uart_in(vm, 0) for _ in range(3))
    assert got == b"123"
    assert uart_in(vm, 2) == 0xC1  # 5 left: below the trigger again
    got = bytes(uart_in(vm, 0) for _ in range(5))
    assert got == b"45678"
    assert uart_in(vm, 5) & 0x01 == 0
    # Trigger level 1 (FCR 0x01): every byte asks at once.
    uart_out(vm, 2, 0x01)
    assert receive(vm, b"z") == 1
    assert uart_in(vm, 2) == 0xC4
    assert uart_in(vm, 0) == ord("z") and uart_in(vm, 2) == 0xC1
    # Without the FIFO one byte is held; the host's next byte waits for it.
    uart_out(vm, 2, 0x00)
    assert receive(vm, b"pq") == 1
    assert uart_in(vm, 2) == 0x04
    assert uart_in(vm, 0) == ord("p")
    assert receive(vm, b"q") == 1 and uart_in(vm, 0) == ord("q")
    # RDI masked by IER: data waits without an interrupt.
    uart_out(vm, 1, 0x00)
    receive(vm, b"r")
    assert uart_in(vm, 2) == 0x01 and uart_in(vm, 5) & 0x01


def test_uart_character_timeout_interrupt(vm):
    console_setup(vm)  # 9600 8N1: a character is 10 bits, 1.0417 ms
    uart_out(vm, 3, 0x03)
    uart_out(vm, 2, 0x81)
    uart_out(vm, 1, 0x01)
    receive(vm, b"abc")
    start = vm.now
    assert uart_in(vm, 2) == 0xC1
    run_to(vm, start + 4_100_000 // NS_PER_TICK)  # less than 4 character times
    assert uart_in(vm, 2) == 0xC1 and vm.com1.irq_level == 0
    run_to(vm, start + 4_300_000 // NS_PER_TICK)
    assert uart_in(vm, 2) == 0xCC and vm.com1.irq_level == 1
    assert uart_in(vm, 0) == ord("a")  # a read ends the timeout indication...
    assert uart_in(vm, 2) == 0xC1 and vm.com1.irq_level == 0
    start = vm.now
    run_to(vm, start + 4_100_000 // NS_PER_TICK)
    assert uart_in(vm, 2) == 0xC1
    run_to(vm, start + 4_300_000 // NS_PER_TICK)  # ...and rearms it while bytes are left
    assert uart_in(vm, 2) == 0xCC
    assert bytes(uart_in(vm, 0) for _ in range(2)) == b"bc"
    run_to(vm, vm.now + 10 * SECOND // 1000 // NS_PER_TICK)
    assert uart_in(vm, 2) == 0xC1  # empty FIFO: no timeout
    # The timeout follows the line speed: 4 characters at 115200 baud are 347 us.
    uart_out(vm, 3, 0x83)
    uart_out(vm, 0, 0x01)
    uart_out(vm, 3, 0x03)
    receive(vm, b"d")
    start = vm.now
    run_to(vm, start + 320_000 // NS_PER_TICK)
    assert uart_in(vm, 2) == 0xC1
    run_to(vm, start + 370_000 // NS_PER_TICK)
    assert uart_in(vm, 2) == 0xCC


def test_uart_overrun(vm):
    console_setup(vm)
    uart_out(vm, 3, 0x03)
    uart_out(vm, 1, 0x04)  # RLSI only
    # Without the FIFO a second byte before the first is read overwrites it: OE.
    uart_out(vm, 4, 0x10)  # loopback: transmitted bytes are received, nothing stops them
    uart_out(vm, 0, ord("a"))
    assert uart_in(vm, 2) == 0x01 and uart_in(vm, 5) == 0x61
    uart_out(vm, 0, ord("b"))
    assert uart_in(vm, 2) == 0x06 and vm.com1.irq_level == 1  # line status interrupt
    assert uart_in(vm, 5) == 0x63  # OE reported once...
    assert uart_in(vm, 5) == 0x61  # ...and cleared by the read
    assert uart_in(vm, 2) == 0x01 and vm.com1.irq_level == 0
    assert uart_in(vm, 0) == ord("b")
    # With the FIFO the 17th byte is lost and the first 16 kept.
    uart_out(vm, 2, 0x01)
    for b in range(17):
        uart_out(vm, 0, 0x40 + b)
    assert uart_in(vm, 5) & 0x03 == 0x03
    assert bytes(uart_in(vm, 0) for _ in range(16)) == bytes(range(0x40, 0x50))
    assert uart_in(vm, 5) & 0x03 == 0
    # From the host side the FIFO just fills: what does not fit is not taken (no overrun).
    uart_out(vm, 4, 0x00)
    assert receive(vm, bytes(range(20))) == 16
    assert uart_in(vm, 5) == 0x61
    assert receive(vm, b"x") == 0
    uart_in(vm, 0)
    assert receive(vm, b"x") == 1


def test_uart_loopback(vm):
    console_setup(vm)
    uart_out(vm, 4, 0x1A)  # autoconfig's loopback test: LOOP | OUT2 | RTS
    assert uart_in(vm, 6) & 0xF0 == 0x90  # DCD from OUT2, CTS from RTS
    uart_out(vm, 4, 0x1F)
    assert uart_in(vm, 6) & 0xF0 == 0xF0
    uart_out(vm, 4, 0x15)  # DTR -> DSR, OUT1 -> RI
    assert uart_in(vm, 6) & 0xF0 == 0x60
    uart_out(vm, 4, 0x10)
    assert uart_in(vm, 6) & 0xF0 == 0x00
    uart_out(vm, 0, 0x5A)
    assert uart_in(vm, 5) & 0x01 and uart_in(vm, 0) == 0x5A
    assert vm.serial_len == 0  # nothing went out on the line
    assert receive(vm, b"h") == 0  # nor comes in from it
    uart_out(vm, 4, 0x0B)
    assert uart_in(vm, 6) == 0xB0  # the modem lines again (DCD, DSR, CTS)


def test_uart_transmit_and_serial_request(vm):
    console_setup(vm)
    uart_out(vm, 3, 0x03)
    # serial8250_console_write: save IER, IER = 0, then per byte wait for THRE and write.
    ier = uart_in(vm, 1)
    uart_out(vm, 1, 0)
    for ch in b"ok":
        assert uart_in(vm, 5) & 0x20
        uart_out(vm, 0, ch)
    assert serial_output(vm) == b"ok"
    assert vm.requests & lib.VM_REQ_SERIAL == 0  # no line yet
    uart_out(vm, 0, ord("\n"))
    assert uart_in(vm, 5) & 0x60 == 0x60
    uart_out(vm, 1, ier)
    assert serial_output(vm) == b"ok\n"
    assert vm.requests & lib.VM_REQ_SERIAL
    assert vm.deadline == 0  # the next block boundary stops for Python


# --- the MC146818 RTC and CMOS -------------------------------------------------------------------------
def cmos_read(vm, index: int) -> int:
    outb(vm, 0x70, index)
    return inb(vm, 0x71)


def cmos_write(vm, index: int, value: int) -> None:
    outb(vm, 0x70, index)
    outb(vm, 0x71, value)


def mach_get_cmos_time(vm) -> tuple[int, ...]:
    """K:arch/x86/kernel/rtc.c:98-144: wait for UIP to clear, then the time registers."""
    for _ in range(10):
        if not cmos_read(vm, 0x0A) & 0x80:
            break
        advance(vm, 100_000)
    else:
        raise AssertionError("UIP stuck")
    return tuple(cmos_read(vm, r) for r in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x0B))


def at_time(vm, when: dt.datetime) -> None:
    """Move the clock so that the RTC (started at BASE_TIME) shows ``when``."""
    delta = when - BASE_TIME
    ns = (delta.days * 86400 + delta.seconds) * SECOND + delta.microseconds * 1000
    at_ns(vm, ns)


def park_pit(vm) -> None:
    """Channel 0 one-shot (mode 0, count 0x10000): no PIT events over long jumps in time."""
    outb(vm, 0x43, 0x30)
    outb(vm, 0x40, 0)
    outb(vm, 0x40, 0)


def test_rtc_time_bcd_from_base_plus_clock(vm):
    park_pit(vm)
    assert mach_get_cmos_time(vm) == (0x00, 0x00, 0x00, 0x01, 0x01, 0x20, 0x02)
    assert cmos_read(vm, 0x32) == 0x20 and cmos_read(vm, 0x06) == 0x04  # century, Wednesday
    at_time(vm, dt.datetime(2020, 2, 29, 13, 45, 30, 500_000, tzinfo=dt.UTC))
    assert mach_get_cmos_time(vm) == (0x30, 0x45, 0x13, 0x29, 0x02, 0x20, 0x02)
    assert cmos_read(vm, 0x06) == 0x07  # Saturday
    at_time(vm, dt.datetime(2020, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
    assert mach_get_cmos_time(vm)[:6] == (0x59, 0x59, 0x23, 0x31, 0x12, 0x20)
    advance(vm, SECOND)
    assert mach_get_cmos_time(vm)[:6] == (0x00, 0x00, 0x00, 0x01, 0x01, 0x21)
    assert cmos_read(vm, 0x06) == 0x06  # 2021-01-01 was a Friday


def test_rtc_binary_and_12_hour_formats(vm):
    at_time(vm, dt.datetime(2020, 1, 1, 23, 5, 9, tzinfo=dt.UTC))
    cmos_write(vm, 0x0B, 0x06)  # binary, 24 hours
    assert [cmos_read(vm, r) for r in (0, 2, 4, 9)] == [9, 5, 23, 20]
    cmos_write(vm, 0x0B, 0x00)  # BCD, 12 hours: bit 7 is PM
    assert cmos_read(vm, 4) == 0x91
    cmos_write(vm, 0x0B, 0x04)  # binary, 12 hours
    assert cmos_read(vm, 4) == 0x8B
    at_time(vm, dt.datetime(2020, 1, 2, 0, 30, tzinfo=dt.UTC))
    assert cmos_read(vm, 4) == 12  # midnight is 12 AM
    at_time(vm, dt.datetime(2020, 1, 2, 12, 30, tzinfo=dt.UTC))
    assert cmos_read(vm, 4) == 0x8C  # noon is 12 PM
    cmos_write(vm, 0x0B, 0x02)
    assert cmos_read(vm, 4) == 0x12 and cmos_read(vm, 7) == 0x02


def test_rtc_uip_only_in_the_last_244us_of_a_second(vm):
    for ns, uip in ((0, 0), (500_000_000, 0), (999_700_000, 0), (999_760_000, 1),
                    (999_999_992, 1), (1_000_000_000, 0), (7_999_900_000, 1)):
        at_ns(vm, ns)
        assert cmos_read(vm, 0x0A) == 0x26 | uip << 7, ns
    cmos_write(vm, 0x0A, 0xA6)  # UIP is read-only
    assert cmos_read(vm, 0x0A) == 0xA6
    at_ns(vm, 8_500_000_000)
    assert cmos_read(vm, 0x0A) == 0x26
    at_ns(vm, 8_999_900_000)
    cmos_write(vm, 0x0B, 0x82)  # SET stops the updates: no UIP
    assert cmos_read(vm, 0x0A) == 0x26


def test_rtc_register_c_is_read_to_clear_with_irqf(vm):
    assert cmos_read(vm, 0x0C) == 0x00
    # rtc_cmos probe (linux-pc.md 2.2 item 16): A = 0x26, PIE/AIE/UIE off, read C.
    cmos_write(vm, 0x0A, 0x26)
    cmos_write(vm, 0x0B, cmos_read(vm, 0x0B) & ~0x70)
    at_ns(vm, 1_500_000_000)
    # UF is set at the end of every update cycle whether UIE is on or not (datasheet; QEMU
    # reads C = 0x10 there, OBS-M), and without UIE it neither raises IRQF nor IRQ 8.
    assert vm.rtc.irq_level == 0
    assert cmos_read(vm, 0x0C) == 0x10
    assert cmos_read(vm, 0x0C) == 0x00
    # PIE: PF with IRQF, the line high until C is read.
    cmos_write(vm, 0x0B, 0x42)
    advance(vm, 1_000_000)
    assert vm.rtc.irq_level == 1
    assert cmos_read(vm, 0x0C) == 0xC0
    assert vm.rtc.irq_level == 0
    assert cmos_read(vm, 0x0C) == 0x00
    # A flag already set when its enable comes on asserts IRQF at once; turning the enable
    # off again takes IRQF away (IRQF = PF.PIE + AF.AIE + UF.UIE).
    cmos_write(vm, 0x0B, 0x02)
    at_ns(vm, 2_100_000_000)
    assert vm.rtc.irq_level == 0
    cmos_write(vm, 0x0B, 0x12)
    assert vm.rtc.irq_level == 1
    cmos_write(vm, 0x0B, 0x02)
    assert vm.rtc.irq_level == 0
    assert cmos_read(vm, 0x0C) == 0x10
    # UIE: the update-ended interrupt once per second.
    cmos_write(vm, 0x0B, 0x12)
    at_ns(vm, 2_999_000_000)
    assert vm.rtc.irq_level == 0
    at_ns(vm, 3_000_000_000)
    assert vm.rtc.irq_level == 1
    assert cmos_read(vm, 0x0C) == 0x90
    # AIE with a "don't care" alarm (0xC0-0xFF) fires with every update.
    cmos_write(vm, 0x01, 0xFF)
    cmos_write(vm, 0x03, 0xFF)
    cmos_write(vm, 0x05, 0xFF)
    cmos_write(vm, 0x0B, 0x22)
    at_ns(vm, 4_000_000_000)
    assert vm.rtc.irq_level == 1
    assert cmos_read(vm, 0x0C) == 0xB0


def test_rtc_irq8_reaches_the_slave_pic(vm):
    init_8259a(vm, master_mask=0xFB, slave_mask=0xFE)
    cmos_write(vm, 0x0B, 0x42)
    advance(vm, 1_000_000)
    assert vm.pic.output == 1
    assert ack(vm) == 0x38
    cmos_read(vm, 0x0C)
    mask_and_ack(vm, 8, 0xFB, 0xFE)
    outb(vm, 0xA1, 0xFE)
    advance(vm, 1_000_000)
    assert ack(vm) == 0x38  # a new edge after C was read


def pf_count(vm, rate: int, window_ns: int, step_ns: int) -> int:
    """PF reports seen over window_ns with rate ``rate``, reading C every step_ns."""
    cmos_write(vm, 0x0A, 0x20 | rate)
    cmos_write(vm, 0x0B, 0x42)
    cmos_read(vm, 0x0C)
    count = 0
    end = vm.now + window_ns // NS_PER_TICK
    while vm.now < end:
        advance(vm, step_ns)
        if cmos_read(vm, 0x0C) & 0x40:
            count += 1
    cmos_write(vm, 0x0B, 0x02)
    return count


@pytest.mark.parametrize(("rate", "hz"), [(6, 1024), (3, 8192), (1, 256), (2, 128), (15, 2)])
def test_rtc_periodic_interrupt_rate_from_register_a(vm, rate, hz):
    period_ns = SECOND // hz
    periods = 64 if hz >= 128 else 4
    count = pf_count(vm, rate, periods * period_ns, period_ns // 4)
    assert abs(count - periods) <= 1, count


def test_rtc_periodic_off_without_pie_or_rate(vm):
    cmos_write(vm, 0x0A, 0x20)  # rate 0: no periodic interrupt
    cmos_write(vm, 0x0B, 0x42)
    advance(vm, 10_000_000)
    assert vm.rtc.irq_level == 0 and cmos_read(vm, 0x0C) & 0x40 == 0
    cmos_write(vm, 0x0A, 0x26)
    cmos_write(vm, 0x0B, 0x02)  # rate 6, PIE off
    advance(vm, 10_000_000)
    assert vm.rtc.irq_level == 0


def test_rtc_set_mode_freezes_and_takes_a_written_time(vm):
    at_ns(vm, 5_250_000_000)
    cmos_write(vm, 0x0B, 0x82)  # SET
    assert cmos_read(vm, 0x00) == 0x05
    advance(vm, 3 * SECOND)
    assert cmos_read(vm, 0x00) == 0x05  # frozen
    for reg, value in ((0x00, 0x00), (0x02, 0x30), (0x04, 0x08), (0x07, 0x15), (0x08, 0x06),
                       (0x09, 0x21)):
        cmos_write(vm, reg, value)
    advance(vm, 2 * SECOND)
    assert [cmos_read(vm, r) for r in (0, 2, 4, 7, 8, 9)] == [0x00, 0x30, 0x08, 0x15, 0x06, 0x21]
    cmos_write(vm, 0x0B, 0x02)  # leaving SET: the registers become the time
    assert [cmos_read(vm, r) for r in (0, 2, 4, 7, 8, 9)] == [0x00, 0x30, 0x08, 0x15, 0x06, 0x21]
    advance(vm, 61 * SECOND)
    assert [cmos_read(vm, r) for r in (0, 2, 4, 7, 8, 9)] == [0x01, 0x31, 0x08, 0x15, 0x06, 0x21]
    assert cmos_read(vm, 0x06) == 0x03  # 2021-06-15 was a Tuesday
    # SET clears UIE (QEMU): B reads back without it.
    cmos_write(vm, 0x0B, 0x92)
    assert cmos_read(vm, 0x0B) == 0x82
    cmos_write(vm, 0x0B, 0x02)
    # A time write while running takes effect at once (set_rtc_mmss).
    cmos_write(vm, 0x00, 0x45)
    assert cmos_read(vm, 0x00) == 0x45 and cmos_read(vm, 0x02) == 0x31
    advance(vm, 20 * SECOND)
    assert cmos_read(vm, 0x00) == 0x05 and cmos_read(vm, 0x02) == 0x32


@pytest.mark.parametrize(("mib", "ext", "above16"), [(128, 0xFFFF, 0x0700), (32, 0x7C00, 0x0100),
                                                      (16, 0x3C00, 0x0000)])
def test_rtc_cmos_memory_size_bytes(vm, mib, ext, above16):
    rtc.reset(vm, BASE_TIME, mib << 20)

    def word(lo: int) -> int:
        return cmos_read(vm, lo) | cmos_read(vm, lo + 1) << 8

    assert word(0x15) == 640  # base memory in KiB
    assert word(0x17) == ext and word(0x30) == ext  # KiB above 1 MiB, at most 0xFFFF
    assert word(0x34) == above16  # 64 KiB units above 16 MiB


def test_rtc_index_port_and_plain_cmos(vm):
    assert inb(vm, 0x70) == 0xFF
    outb(vm, 0x70, 0x8A)  # bit 7 (NMI disable on a PC) is not part of the index
    assert inb(vm, 0x71) == 0x26
    assert inb(vm, 0x70) == 0xFF
    cmos_write(vm, 0x40, 0x5A)
    assert cmos_read(vm, 0x40) == 0x5A
    assert cmos_read(vm, 0x0D) == 0x80  # VRT
    cmos_write(vm, 0x0D, 0x00)
    cmos_write(vm, 0x0C, 0xFF)
    assert cmos_read(vm, 0x0D) == 0x80 and cmos_read(vm, 0x0C) == 0x00  # both read-only


# --- the i8042 and its PS/2 devices ------------------------------------------------------------------
def kbc_command(vm, cmd: int, *data: int) -> None:
    outb(vm, 0x64, cmd)
    for b in data:
        outb(vm, 0x60, b)


def kbc_read(vm, aux: bool = False) -> int:
    """i8042_wait_read plus the data read: the byte must be there, from the expected side."""
    status = inb(vm, 0x64)
    assert status & 0x01, f"no data (status {status:#04x})"
    assert bool(status & 0x20) == aux, f"status {status:#04x}"
    return inb(vm, 0x60)


def kbc_replies(vm, aux: bool = False) -> list[int]:
    out = []
    while inb(vm, 0x64) & 0x01:
        out.append(kbc_read(vm, aux))
    return out


def mouse(vm, *data: int) -> list[int]:
    """Bytes to the mouse through 0xD4; everything it answers."""
    replies = []
    for b in data:
        kbc_command(vm, 0xD4, b)
        replies += kbc_replies(vm, aux=True)
    return replies


def test_kbc_next_byte_is_a_new_interrupt(vm):
    """A reply of several bytes (the keyboard's ACK, 0xAB, 0x41 to GET ID) interrupts once per
    byte: reading one drops IRQ 1, so the next is a new edge for the edge-triggered PIC."""
    kbc_command(vm, 0x60)
    outb(vm, 0x60, 0x01)  # CTR: keyboard interrupt on
    before = vm.irqs_raised
    outb(vm, 0x60, 0xF2)
    assert [kbc_read(vm) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    assert vm.irqs_raised - before == 3


def test_kbc_status_and_ctr_after_reset(vm):
    assert inb(vm, 0x64) == 0x18  # keylock off (unlocked), last write a command
    kbc_command(vm, 0x20)
    assert kbc_read(vm) == 0x03  # QEMU's reset CTR: both interrupts on
    assert inb(vm, 0x64) & 0x01 == 0
    assert (vm.kbc.irq1_level, vm.kbc.irq12_level) == (0, 0)
    vm.kbc.mode = kbc.FIRMWARE_CTR  # what SeaBIOS leaves (the machine's multiboot entry state)
    kbc_command(vm, 0x20)
    assert kbc_read(vm) == 0x61
    assert kbc_replies(vm) == []  # i8042_flush finds nothing else


def test_kbc_self_test_and_interface_tests(vm):
    assert inb(vm, 0x64) & 0x04 == 0
    kbc_command(vm, 0xAA)
    assert kbc_read(vm) == 0x55
    assert inb(vm, 0x64) & 0x04  # the system flag after a passed self test
    kbc_command(vm, 0xAB)
    assert kbc_read(vm) == 0x00
    kbc_command(vm, 0xA9)
    assert kbc_read(vm) == 0x00


def test_kbc_ctr_read_write_as_i8042_controller_init(vm):
    kbc_command(vm, 0x20)
    ctr = kbc_read(vm)
    kbc_command(vm, 0x20)
    assert kbc_read(vm) == ctr  # read twice until stable
    ctr = (ctr | 0x10) & ~0x01  # KBDDIS on, KBDINT off
    kbc_command(vm, 0x60, ctr)
    assert inb(vm, 0x64) & 0x08 == 0  # the last write was data
    kbc_command(vm, 0x20)
    assert kbc_read(vm) == 0x12
    kbc_command(vm, 0xA7)  # aux disable / enable are CTR bit 5
    kbc_command(vm, 0x20)
    assert kbc_read(vm) == 0x32
    kbc_command(vm, 0xA8)
    kbc_command(vm, 0xAE)  # keyboard enable clears bit 4
    kbc_command(vm, 0x20)
    assert kbc_read(vm) == 0x02


def test_kbc_keyboard_reset_and_id(vm):
    kbc_command(vm, 0x60, 0x43)  # interrupt, translation
    outb(vm, 0x60, 0xFF)
    assert kbc_replies(vm) == [0xFA, 0xAA]
    outb(vm, 0x60, 0xF2)
    assert kbc_replies(vm) == [0xFA, 0xAB, 0x41]  # MF2 keyboard, translated
    kbc_command(vm, 0x60, 0x03)  # translation off: Linux's "AT Raw Set 2"
    outb(vm, 0x60, 0xF2)
    assert kbc_replies(vm) == [0xFA, 0xAB, 0x83]
    for cmd, arg in ((0xED, 0x00), (0xF3, 0x00)):  # LEDs, typematic rate
        outb(vm, 0x60, cmd)
        assert kbc_replies(vm) == [0xFA]
        outb(vm, 0x60, arg)
        assert kbc_replies(vm) == [0xFA]
    outb(vm, 0x60, 0xF4)
    assert kbc_replies(vm) == [0xFA]
    outb(vm, 0x60, 0xEE)
    assert kbc_replies(vm) == [0xEE]
    # A byte to the keyboard re-enables its port (QEMU).
    kbc_command(vm, 0xAD)
    outb(vm, 0x60, 0xF5)
    assert kbc_replies(vm) == [0xFA]
    kbc_command(vm, 0x20)
    assert kbc_read(vm) & 0x10 == 0


def test_kbc_mouse_reset_and_intellimouse_explorer_detection(vm):
    assert mouse(vm, 0xFF) == [0xFA, 0xAA, 0x00]
    assert mouse(vm, 0xF2) == [0xFA, 0x00]
    # psmouse's IntelliMouse probe (200, 100, 80) then the Explorer one (200, 200, 80).
    assert mouse(vm, 0xF3, 200, 0xF3, 100, 0xF3, 80) == [0xFA] * 6
    assert mouse(vm, 0xF2) == [0xFA, 0x03]
    assert mouse(vm, 0xF3, 200, 0xF3, 200, 0xF3, 80) == [0xFA] * 6
    assert mouse(vm, 0xF2) == [0xFA, 0x04]
    assert mouse(vm, 0xE9) == [0xFA, 0x00, 0x02, 80]  # status, resolution, sample rate
    assert mouse(vm, 0xF4) == [0xFA]
    assert mouse(vm, 0xE9)[1] & 0x20  # streaming enabled
    assert mouse(vm, 0xFF) == [0xFA, 0xAA, 0x00]  # reset: back to a plain PS/2 mouse
    assert mouse(vm, 0xF2) == [0xFA, 0x00]
    # A wrong sequence is not a detection.
    assert mouse(vm, 0xF3, 200, 0xF3, 80, 0xF3, 80) == [0xFA] * 6
    assert mouse(vm, 0xF2) == [0xFA, 0x00]


def test_kbc_irq_lines_follow_obf_and_the_ctr(vm):
    init_8259a(vm, master_mask=0xF9, slave_mask=0xEF)  # IRQ1, cascade, IRQ12
    kbc_command(vm, 0x60, 0x03)
    kbc_command(vm, 0xD2, 0x1C)  # a byte as if from the keyboard
    assert inb(vm, 0x64) & 0x21 == 0x01
    assert (vm.kbc.irq1_level, vm.kbc.irq12_level) == (1, 0)
    assert ack(vm) == 0x31
    assert inb(vm, 0x60) == 0x1C
    assert vm.kbc.irq1_level == 0
    outb(vm, 0x20, 0x61)
    kbc_command(vm, 0xD3, 0x5A)  # i8042_check_aux's loop test: as if from the mouse
    assert inb(vm, 0x64) & 0x21 == 0x21
    assert (vm.kbc.irq1_level, vm.kbc.irq12_level) == (0, 1)
    assert ack(vm) == 0x3C
    assert inb(vm, 0x60) == 0x5A
    assert vm.kbc.irq12_level == 0
    outb(vm, 0xA0, 0x64)
    outb(vm, 0x20, 0x62)
    # With the CTR's interrupt bits off, OBF alone raises nothing...
    kbc_command(vm, 0x60, 0x00)
    kbc_command(vm, 0xD2, 0x2A)
    assert inb(vm, 0x64) & 0x01 and vm.kbc.irq1_level == 0
    kbc_command(vm, 0x60, 0x01)  # ...until the bit comes on with the byte still there
    assert vm.kbc.irq1_level == 1
    assert inb(vm, 0x60) == 0x2A and vm.kbc.irq1_level == 0
    kbc_command(vm, 0x60, 0x01)
    kbc_command(vm, 0xD3, 0x11)
    assert inb(vm, 0x64) & 0x21 == 0x21 and vm.kbc.irq12_level == 0
    kbc_command(vm, 0x60, 0x03)
    assert vm.kbc.irq12_level == 1
    assert inb(vm, 0x60) == 0x11
    assert vm.kbc.irq12_level == 0
    # Keyboard replies raise IRQ1 like any keyboard byte.
    outb(vm, 0x60, 0xF2)
    assert vm.kbc.irq1_level == 1
    assert kbc_replies(vm) == [0xFA, 0xAB, 0x83]
    assert vm.kbc.irq1_level == 0


def test_kbc_and_port92_reset_requests(vm):
    assert vm.requests == 0
    kbc_command(vm, 0xFE)  # reboot.c's BOOT_KBD
    assert vm.requests & lib.VM_REQ_RESET
    vm.requests = 0
    kbc_command(vm, 0xFF)  # pulse no bit
    kbc_command(vm, 0xF1)  # pulse bits 1-3 only
    assert vm.requests == 0
    kbc_command(vm, 0xF6)  # bit 0 among them
    assert vm.requests & lib.VM_REQ_RESET
    vm.requests = 0
    kbc_command(vm, 0xD0)
    assert kbc_read(vm) & 0x03 == 0x03  # output port: not in reset, A20 on
    kbc_command(vm, 0xD1, 0x03)
    assert vm.requests == 0
    kbc_command(vm, 0xD1, 0x02)  # output port bit 0 low: reset
    assert vm.requests & lib.VM_REQ_RESET
    vm.requests = 0
    # Port 0x92: bit 1 is A20, a rising bit 0 resets.
    assert inb(vm, 0x92) == 0x00
    outb(vm, 0x92, 0x02)
    assert vm.requests == 0 and inb(vm, 0x92) & 0x02
    outb(vm, 0x92, 0x03)
    assert vm.requests & lib.VM_REQ_RESET


# --- PCI configuration mechanism #1 --------------------------------------------------------------------
def conf1_address(bus: int, devfn: int, reg: int) -> int:
    return 0x80000000 | bus << 16 | devfn << 8 | (reg & 0xFC)


def conf1_read(vm, devfn: int, reg: int, size: int, bus: int = 0) -> int:
    """pci_conf1_read (K:arch/x86/pci/direct.c:16-49)."""
    outl(vm, 0xCF8, conf1_address(bus, devfn, reg))
    if size == 1:
        return inb(vm, 0xCFC + (reg & 3))
    if size == 2:
        return inw(vm, 0xCFC + (reg & 2))
    return inl(vm, 0xCFC)


def conf1_write(vm, devfn: int, reg: int, size: int, value: int) -> None:
    outl(vm, 0xCF8, conf1_address(0, devfn, reg))
    if size == 1:
        outb(vm, 0xCFC + (reg & 3), value)
    elif size == 2:
        outw(vm, 0xCFC + (reg & 2), value)
    else:
        outl(vm, 0xCFC, value)


def test_pci_check_type1(vm):
    # pci_check_type1 (K:direct.c:221-239)
    outb(vm, 0xCFB, 0x01)  # a byte write does not reach the address register
    tmp = inl(vm, 0xCF8)
    assert tmp == 0
    outl(vm, 0xCF8, 0x80000000)
    assert inl(vm, 0xCF8) == 0x80000000
    # pci_sanity_check: a host bridge (class 0x0600) at devfn 0.
    assert conf1_read(vm, 0x00, 0x0A, 2) == 0x0600
    outl(vm, 0xCF8, tmp)
    assert inl(vm, 0xCF8) == tmp
    # Narrow reads of the address register are not the register.
    outl(vm, 0xCF8, 0x80001234)
    assert (inb(vm, 0xCF8), inw(vm, 0xCF8), inb(vm, 0xCFB)) == (0xFF, 0xFFFF, 0xFF)
    # pci_check_type2 (K:direct.c:241-259) must fail: 0xCF8 and 0xCFA do not read back 0.
    outb(vm, 0xCFB, 0x00)
    outb(vm, 0xCF8, 0x00)
    outb(vm, 0xCFA, 0x00)
    assert (inb(vm, 0xCF8), inb(vm, 0xCFA)) != (0, 0)
    assert inl(vm, 0xCF8) == 0x80001234


def test_pci_functions_on_bus_0(vm):
    assert conf1_read(vm, 0x00, 0x00, 4) == 0x12378086  # i440FX
    assert conf1_read(vm, 0x00, 0x0A, 2) == 0x0600
    assert conf1_read(vm, 0x00, 0x0E, 1) == 0x00
    assert conf1_read(vm, 0x08, 0x00, 2) == 0x8086  # PIIX3 ISA bridge
    assert conf1_read(vm, 0x08, 0x02, 2) == 0x7000
    assert conf1_read(vm, 0x08, 0x0A, 2) == 0x0601
    assert conf1_read(vm, 0x08, 0x0E, 1) == 0x80  # multi-function
    # early_quirks' scan: the class word of every slot, all ones where nothing is.
    present = [slot for slot in range(32) if conf1_read(vm, slot << 3, 0x0A, 2) != 0xFFFF]
    assert present == [0, 1]
    assert conf1_read(vm, 0x09, 0x00, 4) == 0x70108086  # PIIX3 IDE, 00:01.1
    assert conf1_read(vm, 0x09, 0x08, 4) == 0x01018000  # IDE, legacy mode with bus master
    for devfn in (0x0A, 0x10, 0xF8):  # absent functions and slots
        assert conf1_read(vm, devfn, 0x00, 4) == 0xFFFFFFFF
        assert conf1_read(vm, devfn, 0x0A, 2) == 0xFFFF
        assert conf1_read(vm, devfn, 0x0E, 1) == 0xFF
    assert conf1_read(vm, 0x00, 0x00, 4, bus=1) == 0xFFFFFFFF  # no bus 1
    outl(vm, 0xCF8, 0x00000000)  # enable bit clear: no configuration cycle
    assert inl(vm, 0xCFC) == 0xFFFFFFFF


def test_ide_function_bar_and_empty_channels(vm):
    """ata_piix on QEMU's PIIX3 IDE with no drives: BAR 4 sizes as 16 I/O ports, goes onto the
    bus where Linux assigns it once I/O decoding is on, and its bus-master status reads 0 (not
    simplex); the legacy blocks read as an empty bus."""
    ide = 0x09
    assert conf1_read(vm, ide, 0x20, 4) == 0x00000001
    conf1_write(vm, ide, 0x20, 4, 0xFFFFFFFF)
    assert conf1_read(vm, ide, 0x20, 4) == 0xFFFFFFF1  # size 16, I/O space
    conf1_write(vm, ide, 0x20, 4, 0x1000)
    assert conf1_read(vm, ide, 0x20, 4) == 0x1001
    assert inb(vm, 0x1002) == 0xFF  # decode still off: nothing there
    conf1_write(vm, ide, 0x04, 2, 0x0001)  # I/O space on
    assert inb(vm, 0x1002) == 0x00 and inb(vm, 0x100A) == 0x00
    outb(vm, 0x1002, 0x60)  # drives 0 and 1 DMA capable
    assert inb(vm, 0x1002) == 0x60 and inb(vm, 0x100A) == 0x00
    outl(vm, 0x1004, 0x12345677)
    assert inl(vm, 0x1004) == 0x12345674
    conf1_write(vm, ide, 0x20, 4, 0x2000)  # moved
    assert inb(vm, 0x1002) == 0xFF and inb(vm, 0x2002) == 0x60
    assert [inb(vm, p) for p in (0x1F7, 0x3F6, 0x177, 0x376)] == [0, 0, 0, 0]
    assert conf1_read(vm, ide, 0x40, 4) == 0  # IDETIM: no channel decodes


def test_pci_data_port_widths(vm):
    outl(vm, 0xCF8, conf1_address(0, 0x00, 0x00))
    assert [inb(vm, 0xCFC + i) for i in range(4)] == [0x86, 0x80, 0x37, 0x12]
    assert (inw(vm, 0xCFC), inw(vm, 0xCFE)) == (0x8086, 0x1237)
    assert conf1_read(vm, 0x00, 0x08, 4) == 0x06000002  # class and revision
    assert conf1_read(vm, 0x00, 0x2C, 4) == 0x11001AF4  # QEMU's subsystem IDs
    # Writes of each width land on their bytes: latency timer (byte 0x0D), command (word 4).
    conf1_write(vm, 0x00, 0x0D, 1, 0x40)
    assert conf1_read(vm, 0x00, 0x0C, 4) == 0x00004000
    conf1_write(vm, 0x00, 0x04, 2, 0x0107)
    assert conf1_read(vm, 0x00, 0x04, 2) == 0x0107
    assert conf1_read(vm, 0x00, 0x05, 1) == 0x01
    conf1_write(vm, 0x00, 0x58, 4, 0x33221100)  # PAM registers
    assert [conf1_read(vm, 0x00, 0x58 + i, 1) for i in range(4)] == [0x00, 0x11, 0x22, 0x33]
    conf1_write(vm, 0x00, 0x5A, 2, 0xBEEF)
    assert conf1_read(vm, 0x00, 0x58, 4) == 0xBEEF1100


def test_pci_read_only_registers_stay_read_only(vm):
    before = [conf1_read(vm, devfn, reg, 4) for devfn in (0x00, 0x08) for reg in (0, 8, 0x0C)]
    for devfn in (0x00, 0x08):
        for reg in (0x00, 0x08):
            conf1_write(vm, devfn, reg, 4, 0xFFFFFFFF)
        conf1_write(vm, devfn, 0x0E, 1, 0x00)
        conf1_write(vm, devfn, 0x02, 2, 0x0000)
    conf1_write(vm, 0x00, 0x0C, 4, 0x00000000)  # only the latency timer there is writable
    after = [conf1_read(vm, devfn, reg, 4) for devfn in (0x00, 0x08) for reg in (0, 8, 0x0C)]
    assert after == before
    # BAR sizing (pci_read_base): no BARs, so all ones written read back as 0.
    for reg in range(0x10, 0x28, 4):
        conf1_write(vm, 0x00, reg, 4, 0xFFFFFFFF)
        assert conf1_read(vm, 0x00, reg, 4) == 0
    # The command register keeps only its implemented bits.
    conf1_write(vm, 0x00, 0x04, 2, 0xFFFF)
    assert conf1_read(vm, 0x00, 0x04, 2) == 0x07FF
    # Writes to absent functions go nowhere.
    conf1_write(vm, 0x10, 0x04, 2, 0x0007)
    assert conf1_read(vm, 0x10, 0x04, 2) == 0xFFFF


# --- isa-debug-exit and unassigned ports -----------------------------------------------------------------
def test_isa_debug_exit(vm):
    assert vm.requests == 0
    assert inb(vm, 0xF4) == 0xFF
    outb(vm, 0xF4, 0x01)  # the test /init's failure code
    assert vm.requests & lib.VM_REQ_EXIT and vm.exit_code == 1
    outb(vm, 0xF4, 0x00)  # QEMU exits at the first write: later ones change nothing
    assert vm.exit_code == 1
    lib.vm_reset_devices(vm)
    assert vm.requests == 0
    outl(vm, 0xF4, 0x12345678)  # any width of 1-4
    assert vm.requests & lib.VM_REQ_EXIT and vm.exit_code == 0x12345678
    lib.vm_reset_devices(vm)
    outw(vm, 0xF6, 0xABCD)
    assert vm.exit_code == 0xABCD


def test_unassigned_ports_read_all_ones(vm):
    for port in (0x2F9, 0x3E9, 0x2E9, 0x378, 0xE000):
        assert vm.port_owner[port] == lib.VM_DEV_NONE
        assert (inb(vm, port), inw(vm, port), inl(vm, port)) == (0xFF, 0xFFFF, 0xFFFFFFFF)
        outb(vm, port, 0)
        outl(vm, port, 0)
        assert inb(vm, port) == 0xFF
    assert inb(vm, 0x80) == 0xFF  # the delay port is write-only
    outb(vm, 0x80, 0x55)
    assert inb(vm, 0x80) == 0xFF and vm.requests == 0
    # A wide read that runs off a device into unassigned ports: ones for the missing bytes.
    assert inw(vm, 0x3FF) == 0xFF00  # COM1's scratch register (0), then 0x400
