#!/bin/bash
# What the jail and the seccomp filters cost: boot to exit, disk and network
# throughput of one guest, with both off (--no-seccomp, no jail) and both on
# (filters, --jail as nobody in a pid namespace with a cgroup), alternating.
# Run it through tests/runner/kvm-runner on a PVM host:
#   tests/runner/kvm-runner -- resources/bench-jail.sh [RUNS]
# Prints one line per run and the medians with their ratio (on / off).
set -eu
runs=${1:-3}
uvm=${UVM:-$(dirname "$0")/../target/release/uvm}
work=$(mktemp -d /dev/shm/uvm-bench-jail.XXXXXX)
jails=$work/jails
mkdir -p "$jails"
tap=uvmbj$$
ip tuntap add $tap mode tap
ip addr add 10.0.5.1/24 dev $tap
ip link set $tap up
trap 'ip link del $tap 2>/dev/null; rm -rf "$work"' EXIT
head -c 33554432 /dev/urandom > "$work/h2g"
# The guest's part: 64 MiB O_DIRECT write then read of its disk (timed by
# the guest), then 32 MiB from the host and 32 MiB to it (timed here).
guest='read a _ < /proc/uptime
dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct 2>/dev/null
read b _ < /proc/uptime
dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
read c _ < /proc/uptime
echo "disk $a $b $c"
nc -l -p 5002 > /dev/null
head -c 33554432 /dev/zero > /tmp/tx
nc -l -p 5003 -e cat /tmp/tx
nc -l -p 5004 > /dev/null'
cmd=$(printf 'sh\0-c\0%s' "$guest" | base64 -w0 | tr '+/' '-_' | tr -d '=')
retry() { for _ in $(seq 240); do timeout 120 bash -c "$1" 2>/dev/null && return 0; sleep 0.25; done; return 1; }
now() { echo "$EPOCHREALTIME"; }
one() {
  local mode=$1 flags=() start end t1 t2 t3 out
  [ "$mode" = on ] && flags=(--jail "$jails" --uid 65534 --gid 65534 --jail-pidns --jail-mem 640M --jail-pids 64) \
                   || flags=(--no-seccomp)
  dd if=/dev/zero of="$work/disk" bs=1M count=64 status=none
  out=$work/$mode.out
  start=$(now)
  "$uvm" boot --timeout 300 --mem 512M "${flags[@]}" --disk "$work/disk" --net tap=$tap \
    --cmdline "ip=10.0.5.2::10.0.5.1:255.255.255.0::eth0:off uvm.cmd=$cmd" </dev/null >"$out" 2>&1 &
  local pid=$!
  # The guest listens once it has told its disk times.
  for _ in $(seq 1200); do grep -aq '^disk ' "$out" && break; sleep 0.1; done
  sleep 1
  t1=$(now); retry "cat $work/h2g > /dev/tcp/10.0.5.2/5002"; t2=$(now)
  retry "cat < /dev/tcp/10.0.5.2/5003 > /dev/null"; t3=$(now)
  retry "echo done > /dev/tcp/10.0.5.2/5004"
  wait $pid || { echo "uvm failed ($mode):"; tail -5 "$out"; exit 1; }
  end=$(now)
  # A file, not <(...): the runner's L1 has no /dev/fd.
  grep -a '^disk ' "$out" | tr -d '\r' > "$work/disk.times"
  read -r _ a b c < "$work/disk.times"
  awk -v m=$mode -v s=$start -v e=$end -v a=$a -v b=$b -v c=$c -v t1=$t1 -v t2=$t2 -v t3=$t3 'BEGIN {
    printf "%s total_s %.2f disk_write_MBps %.1f disk_read_MBps %.1f net_h2g_MBps %.1f net_g2h_MBps %.1f\n",
      m, e - s, 64 * 1.048576 / (b - a), 64 * 1.048576 / (c - b), 32 * 1.048576 / (t2 - t1), 32 * 1.048576 / (t3 - t2) }'
}
for i in $(seq "$runs"); do
  one off; one on
done | tee "$work/results"
echo "medians (on / off):"
for k in total_s disk_write_MBps disk_read_MBps net_h2g_MBps net_g2h_MBps; do
  med() { grep "^$1 " "$work/results" | awk -v k=$k '{for (i=2;i<NF;i+=2) if ($i==k) print $(i+1)}' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
  off=$(med off); on=$(med on)
  awk -v k=$k -v a=$off -v b=$on 'BEGIN { printf "  %-16s off %8.2f  on %8.2f  ratio %.3f\n", k, a, b, b / a }'
done
