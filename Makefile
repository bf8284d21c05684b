# vmigdb: `make demo`, `make test`, `make bench`. Each creates .venv and installs when needed,
# then builds the ROM and the demo guest from source into build/.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
BUILD  := build
STAMP  := $(VENV)/.installed
# What the ROM's rules need before they run $(VPY): the venv. `pip install .` builds the ROM and
# the guest with the installing Python instead (setup.py: VPY=that python, IMAGE_NEEDS empty).
IMAGE_NEEDS ?= | $(STAMP)
BENCH_STAMP := $(VENV)/.installed-bench

GUEST_CFLAGS := -m32 -march=i686 -ffreestanding -nostdlib -fno-pic -fno-pie -fno-stack-protector \
	-fno-asynchronous-unwind-tables -mgeneral-regs-only -fno-builtin -O2 -g -Wall -Wextra \
	-I$(BUILD) -Iguest
GUEST_SRCS := $(wildcard guest/*.c) $(wildcard guest/*.S)
GUEST_OBJS := $(patsubst guest/%,$(BUILD)/guest/%.o,$(GUEST_SRCS))

.PHONY: all demo test bench venv rom guest native firmware clean lint

all: rom guest native firmware

# QEMU's firmware for runs without BIOS tables (tests and bench compare Linux boots with it).
firmware: $(BUILD)/boot32.bin
$(BUILD)/boot32.bin: tests/firmware/boot32.S tests/firmware/boot32.ld
	@mkdir -p $(BUILD)
	as --32 -o $(BUILD)/boot32.o tests/firmware/boot32.S
	ld -m elf_i386 -T tests/firmware/boot32.ld -o $(BUILD)/boot32.elf $(BUILD)/boot32.o
	objcopy -O binary -j .text $(BUILD)/boot32.elf $@

# The native machine (stub/native, a cffi extension) is built by pip at install time; this
# rebuilds it in place when its sources change after the venv was made.
NATIVE_SRCS := $(wildcard stub/native/*.c stub/native/*.h) stub/native/build.py setup.py
native: $(VENV)/.native
$(VENV)/.native: $(NATIVE_SRCS) | $(STAMP)
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.native

$(BUILD)/vmi_abi.inc $(BUILD)/vmi_abi.h &: vmigdb/abi.py rom/__main__.py $(IMAGE_NEEDS)
	$(VPY) -m vmigdb.rom header --asm $(BUILD)/vmi_abi.inc --c $(BUILD)/vmi_abi.h
	touch $(BUILD)/vmi_abi.inc $(BUILD)/vmi_abi.h

rom: $(BUILD)/vmi_rom.bin
$(BUILD)/vmi_rom.bin: rom/vmi_rom.S rom/vmi_rom.ld $(BUILD)/vmi_abi.inc $(wildcard rom/*.py) $(IMAGE_NEEDS)
	$(VPY) -m vmigdb.rom build -o $@

guest: $(BUILD)/guest.elf
$(BUILD)/guest/%.c.o: guest/%.c $(BUILD)/vmi_abi.h $(wildcard guest/*.h)
	@mkdir -p $(dir $@)
	gcc $(GUEST_CFLAGS) -c $< -o $@
$(BUILD)/guest/%.S.o: guest/%.S $(BUILD)/vmi_abi.inc $(wildcard guest/*.h)
	@mkdir -p $(dir $@)
	gcc $(GUEST_CFLAGS) -c $< -o $@
$(BUILD)/guest.elf: $(GUEST_OBJS) guest/guest.ld
	ld -m elf_i386 -T guest/guest.ld -o $@ $(GUEST_OBJS)

demo: all
	$(VPY) -m vmigdb.demo

test: all
	$(VPY) -m pytest -q

# The bench extra (udbserver, a peer stub) is installed only here: `make test` never needs it.
$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $@

bench: all $(BENCH_STAMP)
	COLUMNS=$${COLUMNS:-150} $(VPY) -m bench

lint: $(STAMP)
	$(VPY) -m ruff check vmigdb stub rom commands tests bench

clean:
	rm -rf $(BUILD)
