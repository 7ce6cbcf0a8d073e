#!/usr/bin/env bash
# `make run`'s main job (run it where /dev/kvm can boot Linux: directly, or
# inside tests/runner/kvm-runner): one workload at the four isolation
# levels, the isolation probe matrix, and a short benchmark across the
# levels with its plots.
#
#   resources/demo.sh [OUT_DIR]     (default /tmp/uvm-demo)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
UVM=$ROOT/target/release/uvm
OUT=${1:-/tmp/uvm-demo}
# The cache must be writable here; inside the nested runner the source tree
# and /var/cache are read-only, so a tmpfs serves.
if [ -z "${UVM_CACHE_DIR:-}" ]; then
    if mkdir -p /var/cache/uvm/run 2>/dev/null && [ -w /var/cache/uvm/run ]; then
        export UVM_CACHE_DIR=/var/cache/uvm/run
    else
        export UVM_CACHE_DIR=/dev/shm/uvm-cache
    fi
fi
mkdir -p "$OUT"

WORKLOAD='echo "  hostname=$(hostname) pid=$$ kernel=$(uname -r) cgroup=$(head -1 /proc/self/cgroup)"; exit 3'
echo "== one workload, four isolation levels: sh -c '...; exit 3' =="
for level in process container vm vm+container; do
    echo "-- uvm run --isolation $level --memory 64m"
    start=$EPOCHREALTIME
    set +e
    "$UVM" run --isolation "$level" --memory 64m -- sh -c "$WORKLOAD"
    rc=$?
    set -e
    awk -v rc="$rc" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "  exit status %s, %.2f s\n", rc, b - a }'
done

echo
echo "== uvm probe: what a workload can see and do at each level =="
"$UVM" probe --json "$OUT/probe.json" 2>/dev/null | sed -n '1,/^evidence:/p' | sed '$d'
echo "(evidence for every answer: $OUT/probe.json, or run uvm probe)"

echo
echo "== uvm bench --quick: the levels side by side, with runc and QEMU microvm =="
"$UVM" bench --quick --json "$OUT/bench.json" --plot-dir "$OUT"
echo
echo "plots: $(ls "$OUT"/*.svg | tr '\n' ' ')"
