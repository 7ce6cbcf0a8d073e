# `make run`: set-up, build, then the demo (nested where the host's KVM
# cannot boot Linux): one workload at four isolation levels, the probe
# matrix, a short bench with plots (resources/demo.sh).
# `make test`: set-up, build, lint, every test (KVM boot tests included).
SHELL := /bin/bash
CARGO ?= cargo
UVM := target/release/uvm
RUNNER := tests/runner/kvm-runner
# Whole jobs that may start over when L1 wedges (make run, make bench).
RUNNER_AGAIN := tests/runner/kvm-runner-again

.PHONY: all setup build guest lint test unit-test boot-test run bench fuzz clean

all: build guest

setup:
	@resources/setup.sh

# The whole workspace, as the tests build it: the same feature set, so the
# test build reuses every crate of this one (building only the root package
# resolved other features, and the test build compiled 126 crates again).
build: setup
	$(CARGO) build --release --locked --workspace

guest: build
	@resources/build-guest.sh

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

# Unit tests and host-side tests: everything but the KVM boot tests. Every
# test target of the workspace but tests/boot.rs is found by its file, so a
# new one cannot be left out; all are built in one `--workspace` build, as
# `-p` selections resolve other features and would build the crates again.
HOST_TESTS := $(filter-out boot,$(basename $(notdir $(wildcard tests/*.rs devices/tests/*.rs guest/*/tests/*.rs))))
unit-test: guest
	$(CARGO) test --release --locked --workspace --lib --bins --tests --no-run
	$(CARGO) test --release --locked --workspace --lib --bins
	resources/build-rootfs.sh --install-deps
	$(CARGO) test --release --locked --workspace $(addprefix --test ,$(HOST_TESTS))

# KVM boot tests: required, through the nested runner where needed; they
# fail (never skip) when no KVM host can be had.
boot-test: guest
	$(CARGO) test --release --locked --workspace --test boot -- --test-threads=8

test: lint unit-test boot-test
	@echo "make test: all suites passed"

run: guest
	$(UVM) check || true
	@echo
	$(RUNNER_AGAIN) -- resources/demo.sh /tmp/uvm-demo

# Boot time and VMM memory, then virtio disk and network throughput, uvm vs
# QEMU microvm, same kernel and initramfs (and disk image, and tap); with
# FIRECRACKER=PATH (a binary of your own), against Firecracker too; then
# uvm's channels against the devices they stand in for (vsock vs TCP,
# virtio-fs vs virtio-blk) in one guest; then the container benches.
FC_FLAG := $(if $(FIRECRACKER),--firecracker $(FIRECRACKER))
bench: guest
	$(RUNNER_AGAIN) -- env UVM_CACHE_DIR=/dev/shm/uvm-cache $(UVM) bench --json /tmp/uvm-bench/levels.json --plot-dir /tmp/uvm-bench
	@echo "plots: /tmp/uvm-bench/*.svg and *.png, samples: /tmp/uvm-bench/levels.json"
	$(RUNNER_AGAIN) -- $(UVM) bench boot --runs 5 $(FC_FLAG) --json /tmp/uvm-bench-boot.json --plot /tmp/uvm-bench-boot.svg
	@echo "plot: /tmp/uvm-bench-boot.svg, samples: /tmp/uvm-bench-boot.json"
	$(RUNNER_AGAIN) -- $(UVM) bench io --runs 1 $(FC_FLAG) --json /tmp/uvm-bench-io.json --plot /tmp/uvm-bench-io.svg
	@echo "plot: /tmp/uvm-bench-io.svg, samples: /tmp/uvm-bench-io.json"
	$(RUNNER_AGAIN) -- env UVM_CACHE_DIR=/dev/shm/uvm-cache $(UVM) bench channels --json /tmp/uvm-bench-channels.json --plot /tmp/uvm-bench-channels.svg
	@echo "plot: /tmp/uvm-bench-channels.svg, samples: /tmp/uvm-bench-channels.json"
	resources/bench-container.sh
	resources/bench-image.sh
	resources/bench-container-guest.sh

# Every cargo-fuzz target for FUZZ_TIME seconds each (nightly and cargo-fuzz,
# installed if missing). Not part of `make test`: there the committed corpora
# and regression inputs are replayed on stable (tests/fuzz_corpus.rs).
FUZZ_TIME ?= 30
fuzz:
	resources/fuzz.sh --time $(FUZZ_TIME)

clean:
	$(CARGO) clean
	rm -rf build
