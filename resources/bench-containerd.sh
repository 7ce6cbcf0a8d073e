#!/usr/bin/env bash
# Pod start to workload output, and memory per pod, for containerd's two
# ways to run uvm's neighbours: the uvm shim (io.containerd.uvm.v2, a
# microVM per pod) against io.containerd.runc.v2 with runc, the same image
# (uvm's busybox root, imported from files) in the same containerd (started
# here, everything of it under a tmpfs folder). Memory is the PSS of the
# pod's shim and everything under it: for uvm the VMM (guest RAM included)
# and its virtiofsd, for runc the container's processes. Needs KVM: run it
# in the runner, `tests/runner/kvm-runner -- bash resources/bench-containerd.sh`.
# Prints one line per run and the means and ratios (uvm / runc).
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
UVM=${UVM:-$HERE/target/release/uvm}
SHIM=${SHIM:-$HERE/target/release/containerd-shim-uvm-v2}
RUNS=${RUNS:-3}
# RUNTIMES=runc measures runc alone (no KVM needed).
RUNTIMES=${RUNTIMES:-uvm runc}
S=$(mktemp -d /dev/shm/uvm-bench-ctrd.XXXXXX)
trap 'ctrd_stop; rm -rf "$S"' EXIT
source "$HERE/tests/containerd/lib.sh"
mkdir "$S/bin" && ln -s "$SHIM" "$S/bin/containerd-shim-uvm-v2"
"$UVM" container mkrootfs "$S/rootfs" >/dev/null || exit 1
PATH=$S/bin:$PATH ctrd_start "$S/c" || exit 1
ctrd_image "$S/rootfs" uvm.test/busybox:1 || exit 1

# pss_tree PID: the PSS (KiB) of PID and all its descendants.
pss_tree() {
    local total=0 p v todo=("$1")
    while [ ${#todo[@]} -gt 0 ]; do
        p=${todo[0]}
        todo=("${todo[@]:1}")
        v=$(awk '/^Pss:/ { print $2 }' /proc/"$p"/smaps_rollup 2>/dev/null)
        total=$((total + ${v:-0}))
        todo+=($(cat /proc/"$p"/task/*/children 2>/dev/null))
    done
    echo $total
}

# one ID RUNTIME-ARGS...: "MS KIB" for one pod.
one() {
    local id=$1 t0 t1 run shim pss
    shift
    t0=$(date +%s%N)
    ctrd run --snapshotter native "$@" uvm.test/busybox:1 "$id" sh -c 'echo ready; exec sleep 1000' \
        </dev/null >"$S/$id.out" 2>"$S/$id.err" &
    run=$!
    until grep -q ready "$S/$id.out" 2>/dev/null; do
        if ! kill -0 $run 2>/dev/null; then
            echo "bench-containerd: $id failed: $(cat "$S/$id.err")" >&2
            return 1
        fi
        sleep 0.01
    done
    t1=$(date +%s%N)
    sleep 1
    shim=$(pgrep -f "[c]ontainerd-shim-.* -id $id -address $S/c/" | head -1)
    pss=$(pss_tree "${shim:-0}")
    ctrd task kill -s KILL "$id" >/dev/null 2>&1
    wait $run
    ctrd container rm "$id" >/dev/null
    echo "$(((t1 - t0) / 1000000)) $pss"
}

declare -A ms kib
for rt in $RUNTIMES; do
    ms[$rt]=0 kib[$rt]=0
    for i in $(seq "$RUNS"); do
        case $rt in
        uvm) r=$(one "u$i" --runtime io.containerd.uvm.v2) || exit 1 ;;
        runc) r=$(one "r$i" --runtime io.containerd.runc.v2 --runc-root "$S/c/runc") || exit 1 ;;
        esac
        set -- $r
        echo "$rt run $i: start-to-output $1 ms, pss $2 KiB"
        ms[$rt]=$((ms[$rt] + $1)) kib[$rt]=$((kib[$rt] + $2))
    done
    ms[$rt]=$((ms[$rt] / RUNS)) kib[$rt]=$((kib[$rt] / RUNS))
    echo "$rt mean: start-to-output ${ms[$rt]} ms, pss ${kib[$rt]} KiB"
done
[ "$RUNTIMES" = "uvm runc" ] || exit 0
awk -v um="${ms[uvm]}" -v rm="${ms[runc]}" -v uk="${kib[uvm]}" -v rk="${kib[runc]}" \
    'BEGIN { printf "ratio uvm/runc: time %.2f, memory %.2f\n", um / (rm ? rm : 1), uk / (rk ? rk : 1) }'
