#!/bin/sh
# The container start-up benchmark (resources/bench-container.sh) inside a
# uvm guest, where cgroups are v2 and crun runs too: uvm's runtime, runc and
# crun on the same busybox bundle, same run, hyperfine medians and ratios.
# This host's cgroup v1 "hybrid" layout makes crun refuse to run here.
#
#   resources/bench-container-guest.sh [RUNS]
#
# Builds an ext4 root image (mkfs.ext4 -d, no loop devices) holding busybox,
# uvm-container (static), runc, crun and hyperfine with their libraries,
# and the benchmark script; boots it with `uvm boot --root` through the KVM
# runner (directly where /dev/kvm boots Linux).
set -eu
RUNS=${1:-${RUNS:-40}}
cd "$(dirname "$0")/.."
ROOT=$PWD
step() { echo "bench-container-guest: $*" >&2; }

for tool in mkfs.ext4 runc crun hyperfine; do
    command -v "$tool" >/dev/null || { echo "bench-container-guest: $tool is missing" >&2; exit 1; }
done
STATIC=$ROOT/target/x86_64-unknown-linux-gnu/release/uvm-container
[ -x "$STATIC" ] || { echo "bench-container-guest: run make guest first (static uvm-container)" >&2; exit 1; }
[ -x target/release/uvm ] || { echo "bench-container-guest: run cargo build --release first" >&2; exit 1; }

WORK=$(mktemp -d /tmp/uvm-bench-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT INT TERM
R=$WORK/root
step "building the guest's root filesystem"
"$STATIC" mkrootfs "$R" --with "$(command -v runc)" --with "$(command -v crun)" \
    --with "$(command -v hyperfine)" >/dev/null
install -m 0755 "$STATIC" "$R/bin/uvm-container"
mkdir -p "$R/bench/resources" "$R/proc" "$R/sys" "$R/dev" "$R/run" "$R/tmp"
install -m 0755 resources/bench-container.sh "$R/bench/resources/bench-container.sh"
# bench-container.sh sources it to find the runtime (here UVM_CONTAINER).
install -m 0644 resources/uvm-container.sh "$R/bench/resources/uvm-container.sh"
mkfs.ext4 -q -F -d "$R" "$WORK/root.img" 512M

step "booting it ($RUNS runs per runtime)"
# The runner runs it directly where /dev/kvm boots Linux, nested otherwise.
tests/runner/kvm-runner-again -- target/release/uvm boot --mem 1G --vcpus 2 --root "$WORK/root.img" -- \
    env UVM_CONTAINER=/bin/uvm-container RUNS="$RUNS" sh /bench/resources/bench-container.sh
