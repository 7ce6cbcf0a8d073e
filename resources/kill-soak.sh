#!/usr/bin/env bash
# SIGKILL soak: N times (default 100), a uvm at a random moment of its
# life is killed with SIGKILL, alternating between the two kinds that hold
# the most host state: a jailed `uvm boot` in its own pid namespace (jail
# folder and record, cgroup, a tap it made, a disk bound in) and a `uvm run -i vm` on the bridge
# with a published port (tap on the bridge, lease, nftables map element,
# run folder). Then `uvm gc`, and a count of everything that could leak;
# the exit status is 0 only when every count is zero. The boot case
# `jailkill` does the same 8 times in `make test`; this is the long run.
#
#   resources/kill-soak.sh [N]        (as root, where uvm can boot: in the
#                                      nested runner, tests/runner/kvm-runner)
# Environment: UVM (default target/release/uvm), UVM_CACHE_DIR as uvm's.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
UVM=${UVM:-$PWD/target/release/uvm}
[ -x "$UVM" ] || { echo "kill-soak: no $UVM (make build)" >&2; exit 2; }
W=$(mktemp -d /dev/shm/uvm-soak.XXXXXX)
J=$W/jail
mkdir -p "$J"
dd if=/dev/zero of=$W/disk bs=1M count=1 status=none
uvms() {
    local p n=0
    # Builtins only (-ef: the same file); a readlink per process is slow in L1.
    for p in /proc/[0-9]*; do [ $p/exe -ef "$UVM" ] && n=$((n + 1)); done
    echo $n
}
start=$SECONDS
for n in $(seq "$N"); do
    if [ $((n % 2)) = 1 ]; then
        kind=jail
        "$UVM" boot --timeout 120 --mem 128M --jail "$J" --jail-pidns --jail-pids 64 \
            --disk $W/disk --net tap=uvmsoak$n -- sleep 100 </dev/null >/dev/null 2>&1 &
    else
        kind=bridge
        "$UVM" run -i vm --name soak$n --timeout 120 -p $((19000 + n)):80 -- sleep 100 </dev/null >/dev/null 2>&1 &
    fi
    pid=$!
    t=$((RANDOM % 8)).$((RANDOM % 10))
    sleep "$t"
    kill -KILL $pid 2>/dev/null
    wait $pid 2>/dev/null
    echo "kill-soak: $n/$N $kind killed after $t s (at $((SECONDS - start)) s)" >&2
done
# The VMMs die with their uvm (parent-death signal).
for i in $(seq 200); do [ "$(uvms)" = 0 ] && break; sleep 0.1; done
"$UVM" gc >$W/gc 2>&1
gc=$?
counts=(
    "gc-status $gc"
    "uvm-processes $(uvms)"
    "jail-folder-entries $(ls -A "$J" | wc -l)"
    "jail-records $(ls -A /run/uvm/jail 2>/dev/null | wc -l)"
    "run-folders $(ls -A /run/uvm/vm 2>/dev/null | grep -c '^soak')"
    "cgroups $(ls -d /sys/fs/cgroup/uvm-jail/uvm-* /sys/fs/cgroup/uvm-run/soak* 2>/dev/null | wc -l)"
    "taps $(ip -o link show | grep -cE 'uvmsoak|uvmt')"
    "bridge-ports $(ip -o link show master uvm0 2>/dev/null | wc -l)"
    "nft-elements $(nft list map ip uvm ports 2>/dev/null | grep -cE '19[0-9]{3}')"
    "mounts $(grep -c uvm-soak /proc/self/mountinfo)"
)
leaks=0
for c in "${counts[@]}"; do
    echo "kill-soak: left $c"
    [ "${c##* }" = 0 ] || leaks=1
done
echo "kill-soak: $N kills in $((SECONDS - start)) s; uvm gc said:" >&2
sed 's/^/  /' $W/gc >&2
rm -rf "$W"
exit $leaks
