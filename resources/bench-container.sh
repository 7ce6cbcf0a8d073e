#!/bin/sh
# Container start-up benchmark (not a test): create-start-wait-delete
# latency of `true` in a busybox bundle, uvm's runtime against runc and crun
# on the same bundle, in the same run, with hyperfine. Prints medians and
# ratios (runtime / uvm). Needs root, hyperfine, runc (crun optional: it
# refuses cgroup v1 "hybrid" hosts, and is then reported as skipped).
#
#   resources/bench-container.sh [RUNS]
#
# Environment:
#   UVM_CONTAINER  command running uvm's runtime (default: target/release/uvm
#                  container, else target/release/uvm-container)
#   RUNS           hyperfine runs per runtime (default 40)
#   KEEP=1         keep the work directory (bundle, JSON results)
set -eu

RUNS=${1:-${RUNS:-40}}
cd "$(dirname "$0")/.."

. resources/uvm-container.sh
for tool in hyperfine runc; do
    command -v "$tool" >/dev/null || {
        echo "bench-container: $tool is missing (apt-get install $tool)" >&2
        exit 1
    }
done
[ "$(id -u)" = 0 ] || { echo "bench-container: needs root" >&2; exit 1; }

WORK=$(mktemp -d /tmp/uvm-bench.XXXXXX)
cleanup() {
    runc --root "$WORK/runc-state" delete -f uvm-bench-runc >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

# One bundle for all: busybox rootfs, runc's default config running `true`.
$UVM_CONTAINER mkrootfs "$WORK/bundle/rootfs" >/dev/null
(cd "$WORK/bundle" && runc spec)
sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"sh"$/"true"/' "$WORK/bundle/config.json"
grep -q '"true"' "$WORK/bundle/config.json" || { echo "bench-container: could not edit config.json" >&2; exit 1; }

UVM_CMD="$UVM_CONTAINER --root $WORK/uvm-state --cgroup-parent uvm-bench run --bundle $WORK/bundle --name uvm-bench"
RUNC_CMD="runc --root $WORK/runc-state run -b $WORK/bundle uvm-bench-runc"
CRUN_CMD="crun --root $WORK/crun-state run -b $WORK/bundle uvm-bench-crun"

# Each must work once before being measured.
$UVM_CMD
$RUNC_CMD
set -- "$UVM_CMD" "$RUNC_CMD"
NAMES="uvm runc"
if command -v crun >/dev/null; then
    if err=$($CRUN_CMD 2>&1); then
        set -- "$@" "$CRUN_CMD"
        NAMES="$NAMES crun"
    else
        echo "crun: skipped, it refuses this host: $(echo "$err" | head -n1)"
    fi
else
    echo "crun: skipped, not installed (apt-get install crun)"
fi

hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/results.json" "$@" >"$WORK/hyperfine.txt"
rmdir /sys/fs/cgroup/*/uvm-bench /sys/fs/cgroup/uvm-bench 2>/dev/null || true

# Medians (seconds) in command order, from hyperfine's JSON.
grep '"median"' "$WORK/results.json" | sed 's/.*: *//; s/,.*//' >"$WORK/medians"
echo "$NAMES" | tr ' ' '\n' >"$WORK/names"
echo "create-start-wait-delete of 'true' in a busybox bundle, $RUNS runs each (median):"
paste "$WORK/names" "$WORK/medians" | awk '
NR == 1 { base = $2 }
{ printf "  %-5s %8.2f ms   %5.2fx uvm\n", $1, $2 * 1000, $2 / base }'
