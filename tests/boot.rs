//! KVM boot tests: Debian's kernel booted by uvm, through the nested runner
//! (tests/runner/kvm-runner) where this host's KVM cannot boot Linux. They
//! never skip: no KVM host at all is a failure.
//!
//! Booting L1 costs ~10 s, so every case runs in one runner session; each
//! #[test] then asserts on its own case's output and status.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

struct Case {
    name: &'static str,
    args: &'static [&'static str],
}

/// Every `uvm boot` the tests need, run in order in one nested session.
const CASES: &[Case] = &[
    Case {
        name: "smp2",
        args: &[
            "--vcpus",
            "2",
            "--mem",
            "512M",
            "--",
            "sh",
            "-c",
            "nproc; grep MemTotal /proc/meminfo; exit 7",
        ],
    },
    Case {
        name: "vcpus1",
        args: &["--vcpus", "1", "--mem", "256M", "--", "nproc"],
    },
    Case {
        name: "vcpus4",
        args: &["--vcpus", "4", "--mem", "256M", "--", "nproc"],
    },
    Case {
        name: "mem3g5",
        args: &["--mem", "3.5G", "--", "grep", "MemTotal", "/proc/meminfo"],
    },
    Case {
        name: "cmdline",
        args: &[
            "--cmdline",
            "uvm_test.marker=hello-42 foo=\"a b\"",
            "--",
            "cat",
            "/proc/cmdline",
        ],
    },
    Case {
        name: "dmesg",
        args: &[
            "--vcpus",
            "2",
            "--",
            "sh",
            "-c",
            "dmesg | grep -E 'WARNING: CPU|XSAVE consistency|Call Trace|BUG:' ; true",
        ],
    },
    Case {
        name: "argv",
        args: &[
            "--",
            "sh",
            "-c",
            "printf '[%s]' \"$@\"; echo",
            "sh",
            "a b",
            "'q'",
            "\"dq\"",
            "",
            "x\ny",
        ],
    },
    Case {
        name: "signal",
        args: &["--", "sh", "-c", "kill -9 $$"],
    },
    Case {
        name: "notfound",
        args: &["--", "/nonexistent-command"],
    },
    Case {
        name: "poweroff",
        args: &["--", "poweroff", "-f"],
    },
    Case {
        name: "reboot",
        args: &["--", "reboot", "-f"],
    },
    Case {
        name: "panic",
        args: &["--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 100"],
    },
    Case {
        name: "bootpanic",
        args: &["--initrd", "/etc/hostname", "--timeout", "120"],
    },
    Case {
        name: "timeout",
        args: &["--timeout", "3", "--", "sleep", "1000"],
    },
    Case {
        name: "toomuchmem",
        args: &["--mem", "64G", "--", "true"],
    },
];

/// Cases that need the runner host to prepare something (disk images, a tap)
/// or to check something afterwards. Each is a bash snippet run in the
/// session with `$B` (the case's file prefix) set; `run_uvm ARGS...` boots
/// uvm with the case's .out/.err/.rc files, and anything the snippet writes
/// to `$B.host` is the runner host's side of the story.
struct Scripted {
    name: &'static str,
    script: &'static str,
}

const SCRIPTED: &[Scripted] = &[
    Scripted {
        name: "disks",
        // Two writable disks and a read-only one. Even after blockdev
        // --setrw the guest's kernel keeps the disk read-only (the flag
        // from VIRTIO_BLK_F_RO is the disk's, not the partition's), so no
        // write reaches uvm's device; its own refusal of writes to a ro
        // image is unit-tested in uvm-devices.
        script: r#"
dd if=/dev/zero of=$B.a bs=1M count=8 status=none
dd if=/dev/zero of=$B.b bs=1M count=8 status=none
head -c 1048576 /dev/urandom > $B.golden
golden_before=$(md5sum < $B.golden)
run_uvm --verbose --mem 256M --disk $B.a --disk $B.b,id=second --disk $B.golden,ro,id=golden -- sh -c '
  for d in vda vdb vdc; do echo "dev $d serial=$(cat /sys/block/$d/serial) ro=$(cat /sys/block/$d/ro) sectors=$(cat /sys/block/$d/size)"; done
  head -c 4194304 /dev/urandom > /tmp/a; head -c 4194304 /dev/urandom > /tmp/b
  dd if=/tmp/a of=/dev/vda bs=1M 2>/dev/null; dd if=/tmp/b of=/dev/vdb bs=1M seek=2 2>/dev/null; sync
  echo "sum a $(md5sum < /tmp/a)"; echo "sum b $(md5sum < /tmp/b)"
  if dd if=/dev/zero of=/dev/vdc bs=512 count=1 2>/dev/null; then echo "kernel-ro accepted"; else echo "kernel-ro refused"; fi
  blockdev --setrw /dev/vdc
  if dd if=/dev/zero of=/dev/vdc bs=4096 count=1 conv=fsync 2>/dev/null; then echo "device-ro accepted"; else echo "device-ro refused"; fi
  echo 3 > /proc/sys/vm/drop_caches
  echo "sum golden $(md5sum < /dev/vdc)"'
{
  echo "sum a $(head -c 4194304 $B.a | md5sum)"
  echo "sum b $(dd if=$B.b bs=1M skip=2 count=4 status=none | md5sum)"
  echo "sum golden $(md5sum < $B.golden)"
  echo "golden before $golden_before"
  echo "b-head $(head -c 2097152 $B.b | md5sum) zeros $(head -c 2097152 /dev/zero | md5sum)"
} > $B.host
rm -f $B.a $B.b $B.golden
"#,
    },
    Scripted {
        name: "rootdisk",
        // An ext4 image made from a directory (mkfs.ext4 -d, no loop mount)
        // boots as /; what the guest writes there is in the image afterwards,
        // and the filesystem is clean.
        script: r#"
# Built in a tmpfs, and the applet links made by one process: in the
# runner's L1, 400 ln processes took two minutes.
R=$(mktemp -d /dev/shm/uvm-rootdisk.XXXXXX); I=$R.img
mkdir -p $R/bin $R/etc $R/proc $R/sys $R/dev $R/run $R/tmp $R/root
cp /bin/busybox $R/bin/busybox
chroot $R /bin/busybox --install -s /bin
echo "marker $$" > $R/etc/uvm-root-marker
mkfs.ext4 -q -F -L uvmroot -d $R $I 32M
run_uvm --root $I -- sh -c 'cat /etc/uvm-root-marker; grep " / " /proc/mounts; test -e /init && echo initramfs-visible; echo written-in-guest > /from-guest; sync'
{
  echo "marker $$"
  echo "fsck $(e2fsck -fn $I >/dev/null 2>&1; echo $?)"
  echo "from-guest $(debugfs -R 'cat /from-guest' $I 2>/dev/null)"
} > $B.host
rm -rf $R $I
"#,
    },
    Scripted {
        name: "badroot",
        // A root disk that holds no filesystem: the init says so and the VM
        // ends with an error instead of hanging or panicking.
        script: r#"
dd if=/dev/zero of=$B.img bs=1M count=4 status=none
run_uvm --root $B.img -- true
rm -f $B.img
"#,
    },
    Scripted {
        name: "container",
        // uvm's container runtime inside a uvm guest (cgroup v2 there): the
        // VM half and the container half of the comparison, nested.
        script: r#"
run_uvm --mem 512M -- sh -c '
  uvm-container mkrootfs /tmp/rootfs >/dev/null || echo mkrootfs-failed
  grep -q "^cgroup2 /sys/fs/cgroup cgroup2" /proc/mounts && echo cgroup-v2
  uvm-container run --rootfs /tmp/rootfs --net none --hostname box --memory 64m --pids-limit 32 -- sh -c "echo inside pid=\$\$ host=\$(hostname) procs=\$(ls /proc | grep -c ^[0-9]) cgroup=\$(cat /proc/self/cgroup); echo hi > /written; mknod /dev/x c 1 3 2>/dev/null && echo mknod-allowed || echo mknod-refused; exit 3"
  echo "run rc=$?"
  test -e /tmp/rootfs/written && echo image-changed || echo image-unchanged
  head -c 100000000 /dev/zero | uvm-container run --rootfs /tmp/rootfs --net none --memory 32m -- sort >/dev/null
  echo "oom rc=$?"
  uvm-container run --rootfs /tmp/rootfs --net none --cap-add CAP_MKNOD -v /dev/kmsg:/dev/kmsg -- sh -c "d=made; mknod /tmp/d b 254 0 2>/dev/null || d=refused; n=refused; mknod /tmp/n c 1 3 && echo x > /tmp/n && n=ok; k=refused; (exec 3>/dev/kmsg) 2>/dev/null && k=opened; echo devices disk=\$d null=\$n kmsg=\$k"
  (exec 3>/dev/kmsg) && echo kmsg-outside-opened
  uvm-container run --rootfs /tmp/rootfs --net none --userns -- sh -c "echo userns uid=\$(id -u) map \$(cat /proc/self/uid_map); echo x > /by-root && echo wrote"
  echo "userns rc=$? owner=$(stat -c %u /tmp/rootfs/by-root 2>/dev/null || echo none-in-image)"
  echo "left cgroups=$(find /sys/fs/cgroup/uvm -mindepth 1 -type d 2>/dev/null | wc -l) overlays=$(grep -c overlay /proc/mounts)"'
"#,
    },
    Scripted {
        name: "net",
        // A tap made here with an address; the guest configures eth0 from
        // ip=, pings the tap's address, and 50 MB go each way over TCP
        // (bash's /dev/tcp on this side, busybox nc in the guest).
        script: r#"
tap=uvmtest$$
tap_up $tap 10.0.2.1/24
head -c 52428800 /dev/urandom > $B.h2g
(
  retry "cat $B.h2g > /dev/tcp/10.0.2.2/5002"
  retry "cat < /dev/tcp/10.0.2.2/5003 > $B.g2h"
  # Only now may the guest power off: all its data has arrived.
  retry "echo done > /dev/tcp/10.0.2.2/5004"
) &
helper=$!
run_uvm --verbose --mem 512M --net tap=$tap,mac=52:54:00:12:34:56 --cmdline "ip=10.0.2.2::10.0.2.1:255.255.255.0::eth0:off" -- sh -c '
  cat /sys/class/net/eth0/address; ip route
  ping -c 2 -W 5 10.0.2.1 >/dev/null && echo ping-ok
  nc -l -p 5002 > /tmp/rx; echo "sum h2g $(md5sum < /tmp/rx)"
  head -c 52428800 /dev/urandom > /tmp/tx; echo "sum g2h $(md5sum < /tmp/tx)"
  nc -l -p 5003 -e cat /tmp/tx
  nc -l -p 5004 >/dev/null'
kill $helper 2>/dev/null; wait $helper
{
  echo "sum h2g $(md5sum < $B.h2g)"
  echo "sum g2h $(md5sum < $B.g2h 2>/dev/null)"
} > $B.host
ip link del $tap
rm -f $B.h2g $B.g2h
"#,
    },
    Scripted {
        name: "tapgone",
        // The tap deleted under a running guest: the guest reaches the host
        // first, then the host deletes the tap; the guest's sends fail, the
        // VMM neither dies nor spins (its CPU time over the 4 s after is
        // sampled), and the guest's own exit status still comes out.
        script: r#"
tap=uvmgone$$
tap_up $tap 10.0.3.1/24
$UVM boot --verbose --timeout 120 --mem 256M --net tap=$tap --cmdline "ip=10.0.3.2::10.0.3.1:255.255.255.0::eth0:off" -- sh -c '
  nc -l -p 5010 > /tmp/hi; echo "got $(cat /tmp/hi)"
  nc -l -p 5011 > /dev/null
  sleep 1
  ping -c 3 -W 1 10.0.3.1 >/dev/null 2>&1 && echo ping-after-ok || echo ping-after-failed
  sleep 4
  exit 7' </dev/null >$B.out 2>$B.err &
pid=$!
retry "echo hi > /dev/tcp/10.0.3.2/5010"
retry "echo del > /dev/tcp/10.0.3.2/5011"
ticks() { awk '{print $14+$15}' /proc/$pid/stat 2>/dev/null || echo 0; }
ip link del $tap && echo "deleted" > $B.host
sleep 1; t0=$(ticks); sleep 4; t1=$(ticks)
wait $pid; echo $? > $B.rc
echo "cpu-ticks $((t1 - t0))" >> $B.host
echo "hz $(getconf CLK_TCK)" >> $B.host
echo "taps-left $(ip -o link show | grep -c $tap)" >> $B.host
"#,
    },
    Scripted {
        name: "ratelimit",
        // Two disks, the first held to 4 MiB/s (--disk PATH,bw=4M): the
        // guest times the same 24 MiB O_DIRECT write on each, between two
        // readings of /proc/uptime (10 ms steps). The limited disk's bucket
        // holds one second's worth (4 MiB) and starts full, so its first
        // 4 MiB pass at once: the rate is counted past them, 20 MiB over
        // the whole write's time (which the bucket makes at least 5 s).
        script: r#"
dd if=/dev/zero of=$B.lim bs=1M count=32 status=none
dd if=/dev/zero of=$B.free bs=1M count=32 status=none
run_uvm --verbose --mem 256M --disk $B.lim,bw=4M --disk $B.free -- sh -c '
  for d in vda vdb; do
    read a _ < /proc/uptime
    dd if=/dev/zero of=/dev/$d bs=1M count=24 oflag=direct 2>/dev/null || echo "dd $d failed"
    read b _ < /proc/uptime
    echo "time $d $a $b"
  done'
rm -f $B.lim $B.free
"#,
    },
    Scripted {
        name: "ratelimit_net",
        // A NIC whose receive side is held to 2 MiB/s (rx_bw=2M): the
        // runner host sends 12 MiB over TCP and times, with bash's
        // $EPOCHREALTIME, from the first byte to the guest's "done" (sent
        // once it has read all 12 MiB). The bucket (2 MiB) starts full, so
        // the rate is counted past it: 10 MiB over that time. Host to guest
        // is the direction the nested runner moves fast (tens of MB/s);
        // guest to host manages under 1 MB/s there, below any useful limit.
        script: r#"
tap=uvmrl$$
tap_up $tap 10.0.4.1/24
(
  retry "exec 3<>/dev/tcp/10.0.4.2/5002 && s=\$EPOCHREALTIME && head -c 12582912 /dev/zero >&3 && read -r reply <&3 && echo \"h2g \$s \$EPOCHREALTIME \$reply\" > $B.h2g"
  # Only now may the guest power off: its answer has arrived.
  retry "echo bye > /dev/tcp/10.0.4.2/5004"
) &
helper=$!
run_uvm --verbose --mem 256M --net tap=$tap,rx_bw=2M --cmdline "ip=10.0.4.2::10.0.4.1:255.255.255.0::eth0:off" -- sh -c '
  nc -l -p 5002 -e sh -c "head -c 12582912 >/dev/null; echo done"
  nc -l -p 5004 >/dev/null
  echo received'
kill $helper 2>/dev/null; wait $helper
cat $B.h2g > $B.host 2>/dev/null
ip link del $tap
rm -f $B.h2g
"#,
    },
    Scripted {
        name: "bridge",
        // The runtime's bridge mode inside a guest, with the guest's own
        // virtio-net behind it: two containers talk over the guest's bridge,
        // one reaches the runner host (standing in for "outside") through
        // the guest's NAT, and the runner host reaches a published port
        // through the guest's DNAT. Modules load on demand (modprobe).
        script: r#"
tap=uvmbr$$
# Its own subnet: the net case's tap is up at the same time.
tap_up $tap 10.0.3.1/24
# "Outside": records who connects (after NAT, the guest's own address).
python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.0.3.1", 5010)); s.listen(1); s.settimeout(170)
c, peer = s.accept(); data = c.recv(100).decode().strip()
c.sendall(b"hello-from-outside\n"); c.close()
print("outside peer=%s data=%s" % (peer[0], data))' > $B.outside 2>&1 &
listener=$!
# Python starts slowly in the runner's L1: listen before the guest boots.
for i in $(seq 300); do ss -Hltn "sport = :5010" | grep -q . && break; sleep 0.1; done
(
  # Refused (or unreachable) until the guest has published the port.
  retry "cat < /dev/tcp/10.0.3.2/8080 > $B.published && test -s $B.published"
  retry "echo done > /dev/tcp/10.0.3.2/5004"
) &
helper=$!
run_uvm --verbose --mem 512M --net tap=$tap --cmdline "ip=10.0.3.2::10.0.3.1:255.255.255.0::eth0:off" -- sh -c '
  uvm-container mkrootfs /tmp/rootfs >/dev/null || echo mkrootfs-failed
  uvm-container run --rootfs /tmp/rootfs --name web -p 8080:80 -- nc -ll -p 80 -e echo hello-from-web >/tmp/web.out 2>&1 &
  for i in $(seq 150); do web=$(uvm-container ps | awk "\$1==\"web\" && \$5!=\"-\" {print \$5}"); [ -n "$web" ] && break; sleep 0.2; done
  echo "web ip=$web"
  uvm-container run --rootfs /tmp/rootfs --net bridge -- sh -c "ip -4 addr show eth0 | grep -o \"inet [0-9.]*\"; nc -w 10 $web 80; echo via-nat | nc -w 10 10.0.3.1 5010"
  echo "client rc=$?"
  nc -l -p 5004 >/dev/null
  echo "published map: $(nft list map ip uvm ports | grep -o "tcp . 8080 : [0-9.]* . 80")"
  uvm-container kill web; wait
  echo "left ports=$(nft list map ip uvm ports | grep -c "tcp \.") veths=$(ip -o link | grep -c uvmv) containers=$(uvm-container ps | grep -vc ^NAME)"
  uvm-container gc
  echo "ruleset=[$(nft list ruleset)] bridge=$(ip -o link | grep -c uvm0)"'
kill $helper $listener 2>/dev/null; wait $helper $listener
{
  cat $B.outside
  echo "published $(cat $B.published 2>/dev/null)"
} > $B.host
ip link del $tap
rm -f $B.outside $B.published
"#,
    },
    Scripted {
        name: "netpatterns",
        // The runtime's network patterns inside a guest (cgroup v2, the
        // guest's own /run): a registered namespace, a container with
        // --allow-in 80 seen from the guest (80 answers, 81 is dropped), a
        // second container joining its namespace (container:), and nothing
        // left afterwards.
        script: r#"
run_uvm --mem 512M -- sh -c '
  uvm-container mkrootfs /tmp/rootfs >/dev/null || echo mkrootfs-failed
  uvm-container run --rootfs /tmp/rootfs --name fw --allow-in 80 -- sh -c "nc -ll -p 80 -e echo eighty & nc -ll -p 81 -e echo eightyone & wait" >/tmp/fw.out 2>&1 &
  for i in $(seq 150); do ip=$(uvm-container ps | awk "\$1==\"fw\" && \$5!=\"-\" {print \$5}"); [ -n "$ip" ] && [ -e /run/netns/fw ] && break; sleep 0.2; done
  # The name can be bound a moment before eth0 has its address.
  for i in $(seq 50); do reg=$(nsenter --net=/run/netns/fw ip -4 -o addr show eth0 | grep -o "inet $ip/") && break; sleep 0.2; done
  echo "registered $reg"
  echo "table $(nsenter --net=/run/netns/fw nft list table inet uvm_firewall | grep -c "policy drop")"
  for i in $(seq 50); do r80=$(nc -w 3 $ip 80) && [ -n "$r80" ] && break; sleep 0.2; done
  r81=$(nc -w 3 $ip 81 2>/dev/null)
  echo "fw 80=$r80 81=$r81"
  uvm-container run --rootfs /tmp/rootfs --net container:fw -- sh -c "echo pod \$(nc 127.0.0.1 81) \$(ls /sys/class/net | tr \"\\n\" \" \")"
  uvm-container kill fw; wait
  echo "left netns=$(ls /run/netns | wc -l) veths=$(ip -o link | grep -c uvmv) containers=$(uvm-container ps | grep -vc ^NAME)"
  uvm-container gc >/dev/null'
"#,
    },
    Scripted {
        name: "lifecycle",
        // A detached container inside a guest (cgroup v2): run -d returns,
        // its log fills, inspect sees the v2 cgroup, stop ends it by TERM
        // (trapped) well before the grace period, rm leaves nothing.
        script: r#"
run_uvm --mem 512M -- sh -c '
  uvm-container mkrootfs /tmp/rootfs >/dev/null || echo mkrootfs-failed
  uvm-container run -d --name lc --rootfs /tmp/rootfs --net none --memory 64m -- sh -c "trap \"echo got-term; exit 0\" TERM; echo hello-v2; while :; do sleep 0.1; done"
  echo "run-d rc=$?"
  for i in $(seq 100); do uvm-container logs lc | grep -q hello-v2 && break; sleep 0.1; done
  uvm-container inspect lc > /tmp/i.json
  grep -q "\"version\": 2" /tmp/i.json && echo inspect-cgroup-v2
  grep -q "\"status\": \"running\"" /tmp/i.json && echo inspect-running
  read a _ < /proc/uptime
  uvm-container stop -t 20 lc; echo "stop rc=$?"
  read b _ < /proc/uptime
  echo "stop-time $a $b"
  echo "logs $(uvm-container logs lc | tr "\n" " ")"
  uvm-container inspect lc | grep -o "\"exit_code\": [0-9]*"
  uvm-container rm lc; echo "rm rc=$?"
  echo "left cgroups=$(find /sys/fs/cgroup/uvm -mindepth 1 -type d 2>/dev/null | wc -l) records=$(ls /run/uvm/lifecycle | wc -l) containers=$(ls /run/uvm/containers | wc -l) overlays=$(grep -c overlay /proc/mounts)"'
"#,
    },
    Scripted {
        name: "serialflood",
        // A guest floods its console while nobody reads uvm's end of it (an
        // 8 KiB pipe whose reader waits for uvm to exit): what does not fit
        // is dropped, so the guest goes on and exits with its own status
        // well within --timeout (a vCPU blocked in write(2) would hold it
        // there, and uvm's own last lines on that pipe would hold uvm past
        // it), and the pipe holds the console's start, nothing queued.
        script: r#"
python3 - "$UVM" "$B" > $B.host 2>&1 <<'PY'
import fcntl, os, subprocess, sys, time
r, w = os.pipe()
fcntl.fcntl(w, 1031, 8192)  # F_SETPIPE_SZ
flood = 'head -c 24000 /dev/zero | tr "\\0" x > /dev/console; echo flooded; exit 7'
t0 = time.monotonic()
with open(sys.argv[2] + ".out", "wb") as out:
    p = subprocess.run([sys.argv[1], "boot", "--console", "--timeout", "150", "--", "sh", "-c", flood],
                       stdin=subprocess.DEVNULL, stdout=out, stderr=w)
took = time.monotonic() - t0
os.close(w)
# What the pipe holds now; not waiting for its end, which any process
# that inherited uvm's stderr would hold back.
os.set_blocking(r, False)
console, end = b"", "open"
try:
    while chunk := os.read(r, 65536):
        console += chunk
    end = "eof"
except BlockingIOError:
    pass
open(sys.argv[2] + ".console", "wb").write(console)
print(f"flood rc={p.returncode} took={took:.0f}")
print(f"console bytes={len(console)} ready={int(b'uvm-init: ready' in console)} pipe={end}")
PY
"#,
    },
    Scripted {
        name: "resources_v2",
        // The runtime's resource controls on the guest's cgroup v2, in one
        // guest with two vCPUs: two busy loops pinned to CPU 0 with weights
        // 20 and 80 (their cgroups' cpu.stat usage over the same window),
        // a write limit on the guest's virtio disk (an ext4 made here,
        // mounted in the guest, a folder of it the container's volume),
        // pause and resume of a counter, an image built and imported in
        // the guest, and an unknown CPU refused. The shell reads files with
        // builtins where it can: a fork costs tens of milliseconds here.
        script: r#"
mkfs.ext4 -q -F $B.img 64M
run_uvm --vcpus 2 --mem 512M --disk $B.img -- sh -c '
  R=/tmp/rootfs
  uvm-container mkrootfs $R >/dev/null || echo mkrootfs-failed
  for w in 20 80; do
    uvm-container run -d --name w$w --rootfs $R --net none --cpuset-cpus 0 --cpu-weight $w -- sh -c "grep Cpus_allowed_list /proc/self/status; taskset -p 1; while :; do :; done" >/dev/null || echo "run-d w$w failed"
  done
  cg() { uvm-container inspect $1 | sed -n "s|.*\"path\": \"\(uvm/.*\)\".*|/sys/fs/cgroup/\1|p"; }
  l=$(cg w20); h=$(cg w80)
  echo "subtree $(cat /sys/fs/cgroup/cgroup.subtree_control)"
  echo "files $(cat $l/cpu.weight $h/cpu.weight $l/cpuset.cpus $h/cpuset.cpus | tr "\n" " ")"
  usage() {
    while read -r k v; do [ "$k" = usage_usec ] && break; done < $l/cpu.stat; L=$v
    while read -r k v; do [ "$k" = usage_usec ] && break; done < $h/cpu.stat; H=$v
  }
  sleep 0.5
  read a _ < /proc/uptime; usage; l0=$L; h0=$H
  sleep 3
  usage; read b _ < /proc/uptime
  echo "cpu low=$((L - l0)) high=$((H - h0))"
  echo "cpu-window $a $b"
  echo "inside-low $(uvm-container logs w20 | tr "\t\n" "  ")"
  echo "inside-high $(uvm-container logs w80 | tr "\t\n" "  ")"
  uvm-container rm -f w20; uvm-container rm -f w80
  mkdir -p /mnt/d && mount /dev/vda /mnt/d && mkdir /mnt/d/w || echo mount-failed
  echo "vda $(cat /sys/block/vda/dev)"
  dd_in() {
    tag=$1; shift
    uvm-container run --rootfs $R --net none -v /mnt/d/w:/disk "$@" -- sh -c "echo io.max \$(cat /sys/fs/cgroup/io.max 2>/dev/null); read a _ < /proc/uptime; dd if=/dev/zero of=/disk/f bs=64k count=32 oflag=direct 2>/dev/null || echo dd-failed; read b _ < /proc/uptime; echo time \$a \$b; rm /disk/f" | sed "s/^/$tag /"
  }
  dd_in free
  dd_in limited --device-write-bps /dev/vda:1m
  mkdir /tmp/cnt
  uvm-container run -d --name tick --rootfs $R --net none -v /tmp/cnt:/out -- sh -c "i=0; while :; do i=\$((i+1)); echo \$i > /out/n.tmp; mv /out/n.tmp /out/n; sleep 0.05; done" >/dev/null || echo run-d-tick-failed
  count() { N=0; read -r N 2>/dev/null < /tmp/cnt/n; }
  past() { for i in $(seq 100); do count; [ "$N" -gt $1 ] && return 0; sleep 0.1; done; return 1; }
  status() { uvm-container ps | awk "\$1 == \"tick\" { print \$4 }"; }
  past 2 || echo counter-not-running
  uvm-container pause tick; echo "pause rc=$?"
  echo "ps-paused $(status)"
  count; n0=$N; sleep 1; count; n1=$N
  uvm-container resume tick; echo "resume rc=$?"
  echo "ps-resumed $(status)"
  past $n1 && echo counter-went-on
  echo "counter $n0 $n1 $N"
  uvm-container rm -f tick
  mkdir -p $R/srv/app /tmp/img && echo layer-file > $R/srv/app/marker
  cd /tmp/img && tar -C $R -cf layer.tar .
  d=$(sha256sum layer.tar); d=${d%% *}; mkdir $d; mv layer.tar $d/
  printf "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/bin:/sbin\",\"GREETING=hello-from-image\"],\"WorkingDir\":\"/srv/app\",\"Cmd\":[\"sh\",\"-c\",\"echo image \$GREETING \$(pwd) \$(cat marker)\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:%s\"]}}" $d > config.json
  c=$(sha256sum config.json); c=${c%% *}; mv config.json $c.json
  printf "[{\"Config\":\"%s.json\",\"RepoTags\":[\"guestimg:1\"],\"Layers\":[\"%s/layer.tar\"]}]" $c $d > manifest.json
  tar -cf /tmp/img.tar manifest.json $c.json $d && cd /
  uvm-container image import /tmp/img.tar >/dev/null; echo "import rc=$?"
  uvm-container run --image guestimg:1 --net none; echo "image-run rc=$?"
  uvm-container run --rootfs $R --net none --cpuset-cpus 7 -- true 2>/tmp/bad.err; echo "bad-cpuset rc=$? lines=$(wc -l < /tmp/bad.err) $(cat /tmp/bad.err)"
  echo "left cgroups=$(find /sys/fs/cgroup/uvm -mindepth 1 -type d 2>/dev/null | wc -l) containers=$(ls /run/uvm/containers | wc -l) overlays=$(grep -c overlay /proc/mounts)"
  read t _ < /proc/uptime; echo "guest-uptime $t"'
rm -f $B.img
"#,
    },
    Scripted {
        name: "run_vm",
        // `uvm run` at the vm level: the default busybox root folder becomes
        // the guest's root disk; only the workload's lines reach stdout.
        script: r#"
uvm_run -i vm --name lvl-vm -e FOO=bar -w /tmp -u 65534:65534 -- sh -c "$RUN_WORKLOAD"
echo "left $(ls /run/uvm/vm 2>/dev/null | wc -l)" > $B.host
"#,
    },
    Scripted {
        name: "run_vmc",
        // `uvm run` at vm+container: the same image read-only under a
        // container that the guest's runtime starts with the limits.
        script: r#"
uvm_run -i vm+container --name lvl-vmc --memory 64m --pids-limit 20 -e FOO=bar -w /tmp -u 65534:65534 -- sh -c "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; $RUN_WORKLOAD"
"#,
    },
    Scripted {
        name: "run_verbose",
        // --verbose: the console (kernel and init) on stderr, still not on
        // stdout.
        script: r#"
uvm_run -i vm --verbose --timeout 120 -- echo only-this
"#,
    },
    Scripted {
        name: "run_net",
        // --net bridge and -p at both vm levels and in uvm boot: uvm's tap on uvm's bridge,
        // an address from the containers' allocator, DNAT to the guest (and
        // at vm+container on through the guest's bridge to the container);
        // the port answers on 127.0.0.1 and on the host's bridge address.
        // Afterwards no tap, state or published port is left.
        script: r#"
serve='for i in 1 2; do nc -l -p 80 -e echo hello-from-$(hostname); done'
for level in vm vm+container boot; do
  n=net-${level/+/-}
  (
    retry "cat < /dev/tcp/127.0.0.1/18181 > $B.$n.lo && test -s $B.$n.lo"
    retry "cat < /dev/tcp/10.88.0.1/18181 > $B.$n.gw && test -s $B.$n.gw"
  ) &
  helper=$!
  if [ $level = boot ]; then
    # uvm boot --net bridge: the same lease, tap and DNAT as uvm run's.
    $UVM boot --net bridge -p 18181:80 --timeout 150 --cmdline uvm.hostname=$n -- sh -c "$serve" </dev/null >$B.$n.out 2>$B.$n.err
  else
    $UVM run -i $level --name $n --timeout 150 -p 18181:80 -- sh -c "$serve" </dev/null >$B.$n.out 2>$B.$n.err
  fi
  echo "$level rc=$?" >> $B.host
  kill $helper 2>/dev/null; wait $helper
  echo "$level lo=$(cat $B.$n.lo 2>/dev/null) gw=$(cat $B.$n.gw 2>/dev/null)" >> $B.host
done
echo "left taps=$(ip -o link | grep -c uvmt) ports=$(nft list map ip uvm ports 2>/dev/null | grep -c 18181) states=$(ls /run/uvm/containers 2>/dev/null | wc -l)" >> $B.host
# SIGKILL of uvm: gc removes its tap's state and its published port.
$UVM run -i vm --name net-killed -p 18182:80 -- sleep 600 </dev/null >/dev/null 2>&1 &
pid=$!
# The console log appears once the lease is taken and the VM is built.
for i in $(seq 600); do [ -e /run/uvm/vm/net-killed/console.log ] && break; sleep 0.1; done
sleep 1; kill -9 $pid; wait $pid 2>/dev/null
echo "killed ports=$(nft list map ip uvm ports 2>/dev/null | grep -c 18182) states=$(ls /run/uvm/containers 2>/dev/null | wc -l)" >> $B.host
echo "killed vmdirs=$(ls /run/uvm/vm | wc -l)" >> $B.host
$UVM gc > $B.gc 2>&1
echo "after-gc taps=$(ip -o link | grep -c uvmt) ports=$(nft list map ip uvm ports 2>/dev/null | grep -c 18182) states=$(ls /run/uvm/containers 2>/dev/null | wc -l) bridge=$(ip -o link | grep -c ' uvm0') vmdirs=$(ls /run/uvm/vm | wc -l)" >> $B.host
cat $B.net-vm.err $B.net-vm-container.err $B.net-boot.err > $B.err 2>/dev/null
echo 0 > $B.rc
"#,
    },
    Scripted {
        name: "vsock",
        // virtio-vsock through the Firecracker-style Unix socket: 8 MB
        // each way with checksums (50 MB passes too; less keeps the
        // runner's L1 from its nested-SVM hazards under heavy traffic), 64 connections at once, refusals both
        // ways, a host peer that stops reading stalls only its own
        // connection, and SIGKILLed host peers leave the VMM running.
        script: r#"
# On L1's own tmpfs: a Unix socket cannot be bound on the 9p /tmp.
S=/dev/shm/uvm-vsock-test.sock
rm -f $S ${S}_*
head -c 8000000 /dev/urandom > $B.h2g
H="python3 $VSOCK_HOST"
(
  $H serve $S 6000 $B.g2h.data > $B.g2h.sum &
  $H hold $S 6002 > $B.hold &
  hold=$!
  $H serve $S 6003 $B.after.data > $B.after.sum &
  after=$!
  $H send $S 5000 $B.h2g > $B.h2g.sum
  $H many $S 5001 64 > $B.many
  $H refused $S 5999 > $B.refused
  $H stall $S 5002 > $B.stall &
  stall=$!
  # SIGKILL once it is connected and has sent.
  for i in $(seq 600); do grep -q stalling $B.stall 2>/dev/null && break; sleep 0.2; done
  kill -9 $stall
  wait $after; kill -9 $hold
) </dev/null >$B.helper.log 2>&1 &
helper=$!
run_case --timeout 400 --vsock cid=3,uds=$S -- sh -c '
head -c 8000000 /dev/urandom > /tmp/g2h
md5sum /tmp/g2h > /tmp/g2h.md5
uvm-probe vsock-echo 5001 64 > /tmp/echo.out 2>&1 &
echo_pid=$!
(uvm-probe vsock-recv 5002 > /dev/null 2>&1; echo "guest killed-client-eof rc=$?" > /tmp/killed.out) &
killed=$!
uvm-probe vsock-recv 5000 2>/dev/null | md5sum > /tmp/h2g.md5
echo "guest h2g $(cut -d" " -f1 /tmp/h2g.md5)"
uvm-probe vsock-send 2 6000 < /tmp/g2h > /dev/null 2>&1
echo "guest g2h $(cut -d" " -f1 /tmp/g2h.md5)"
wait $echo_pid; echo "guest echo $(tail -1 /tmp/echo.out)"
echo "guest $(uvm-probe vsock-refused 2 6001 2>&1)"
(head -c 20000000 /dev/zero | uvm-probe vsock-send 2 6002 > /dev/null 2>&1; echo "guest stalled-send-ended rc=$?" > /tmp/stall.out) &
stalled=$!
sleep 1
echo after | uvm-probe vsock-send 2 6003 > /dev/null 2>&1 && echo "guest after-stall-send ok"
wait $stalled; cat /tmp/stall.out
wait $killed; cat /tmp/killed.out
'
for i in $(seq 100); do kill -0 $helper 2>/dev/null || break; sleep 0.2; done
kill $helper 2>/dev/null
{
  echo "host h2g $(cut -d' ' -f1 $B.h2g.sum 2>/dev/null) $(md5sum < $B.h2g | cut -d' ' -f1)"
  echo "host g2h $(cat $B.g2h.sum 2>/dev/null)"
  echo "host $(cat $B.many 2>/dev/null)"
  echo "host $(cat $B.refused 2>/dev/null)"
  echo "host after $(cat $B.after.sum 2>/dev/null)"
  echo "host socket-left $(ls $S 2>/dev/null | wc -l)"
} > $B.host
rm -f $B.h2g $B.g2h.data $B.after.data
"#,
    },
    Scripted {
        name: "probe",
        // The isolation matrix at all four levels; the answers as JSON.
        script: r#"
uvm_probe --json $B.host
"#,
    },
    Scripted {
        name: "bench_quick",
        // uvm bench --quick at all four levels with both references: the
        // table, JSON with every metric, one SVG per metric.
        script: r#"
bench() { rm -rf $B.plots; $UVM bench --quick --runs 1 --json $B.host --plot-dir $B.plots </dev/null >$B.out 2>$B.err; echo $? >$B.rc; }
bench
# A guest of the bench that triple-faulted (under nested SVM in QEMU's
# software CPU; the crash itself is other cases' subject) costs one more
# run, which the session lists.
if [ "$(cat $B.rc)" != 0 ] && grep -q triple-faulted $B.err; then
  echo "boot-tests: $B: a guest of the bench triple-faulted; running it once more" | tee -a $(dirname $B)/retried >&2
  bench
fi
ls $B.plots >> $B.out
for f in $B.plots/*.svg; do [ -s $f ] && grep -q '<rect' $f && echo "plot-ok $(basename $f)" >> $B.out; done
for f in $B.plots/*.png; do [ "$(head -c 4 $f | tail -c 3)" = PNG ] && echo "png-ok $(basename $f)" >> $B.out; done
rm -rf $B.plots
"#,
    },
    Scripted {
        name: "stdio",
        // uvm boot -- CMD: the command's stdin, stdout and stderr are three
        // vsock streams, the console a log (or stderr with --console), and
        // the command travels over vsock, so its size is not bounded by
        // the kernel command line.
        script: r#"
run_uvm -- sh -c 'echo out; echo err >&2; exit 4'
head -c 10000000 /dev/urandom > $B.rand
big=$(for i in $(seq 150); do echo "echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxx"; done)
{
echo "stdin $($UVM boot --timeout 180 -- cat < $B.rand | md5sum | cut -d' ' -f1) $(md5sum < $B.rand | cut -d' ' -f1)"
echo "big $($UVM boot --timeout 180 -- sh -c "$big" | tail -1) bytes=${#big}"
$UVM boot --timeout 180 --console -- true > $B.c.out 2> $B.c.err
echo "console rc=$? out=$(wc -c < $B.c.out) ready=$(grep -c 'uvm-init: ready' $B.c.err)"
} > $B.host 2>&1
rm -f $B.rand
"#,
    },
    Scripted {
        name: "agent",
        // The guest agent (uvm boot --agent), driven by `uvm agent` over the
        // vsock socket: containers from OCI specs on an image the agent
        // mounts (shared read-only, an overlay each), exec, kill, wait,
        // forced and refused removal, bad requests, the VM's own processes,
        // 10 MB through stdin and back, and power-off with a status.
        script: r#"
S=/dev/shm/uvm-agent-test.sock
R=$(mktemp -d /dev/shm/uvm-agent-img.XXXXXX); I=$R.img
$UVM container mkrootfs $R >/dev/null && mkfs.ext4 -q -F -d $R $I 64M
run_uvm --disk $I,ro --vsock cid=3,uds=$S --agent &
vm=$!
A="$UVM agent --uds $S"
ST="--rootfs /run/img --overlay --storage /dev/vda:ext4:/run/img:ro"
{
echo "check $($A check | cut -d, -f1)"
$A spec -- sh -c 'echo out-$(hostname) pid=$$; echo err-c1 >&2; echo x > /written; exit 3' > $B.c1.json
$A run c1 --spec $B.c1.json $ST > $B.c1.out 2> $B.c1.err; echo "c1 rc=$?"
echo "c1 out=$(cat $B.c1.out) err=$(cat $B.c1.err)"
$A spec -- sleep 1000 > $B.long.json
$A run -d c2 --spec $B.long.json $ST; echo "c2 rc=$?"
$A run -d c3 --spec $B.long.json $ST; echo "c3 rc=$?"
$A exec c2 --exec-id e1 -- sh -c 'echo in-$(hostname) written=$(cat /written 2>/dev/null || echo none); echo e1-err >&2; exit 5' > $B.e1.out 2> $B.e1.err; echo "e1 rc=$?"
echo "e1 out=$(cat $B.e1.out) err=$(cat $B.e1.err)"
$A ps | awk 'NR > 1 { print "ps", $1, $2, $4 }'
$A kill c3; echo "kill rc=$?"
$A wait c3; echo "c3 wait rc=$?"
$A rm c2 2> $B.rm.err; echo "rm-running rc=$? $(cat $B.rm.err)"
$A rm --force c2; echo "rm-force rc=$?"
$A rm c1 && $A rm c3; echo "rm rc=$?"
echo "{bad" > $B.bad.json
$A create bad --spec $B.bad.json $ST 2> $B.bad.err; echo "bad-spec rc=$? lines=$(wc -l < $B.bad.err) $(cat $B.bad.err)"
$A run c5 --spec $B.c1.json --rootfs /nonexistent 2> $B.nr.err; echo "no-rootfs rc=$? $(cat $B.nr.err)"
$A run -d c6 --spec $B.long.json $ST && $A run -d c6 --spec $B.long.json $ST 2> $B.dup.err; echo "dup rc=$? $(cat $B.dup.err)"
$A rm -f c6
$A exec -- sh -c 'echo "left containers=$(ls /run/uvm/containers 2>/dev/null | wc -l) cgroups=$(find /sys/fs/cgroup/uvm-agent -mindepth 1 -type d 2>/dev/null | wc -l) overlays=$(grep -c overlay /proc/mounts) storages=$(grep -c /run/img /proc/mounts) procs=$(ps -o comm | grep -c sleep)"'
head -c 10000000 /dev/urandom > $B.rand
echo "stdin $($A exec -- cat < $B.rand | md5sum | cut -d' ' -f1) $(md5sum < $B.rand | cut -d' ' -f1)"
$A exec -- sh -c 'exit 9'; echo "vm-exec rc=$?"
$A exec -- /no/such/program 2> $B.nf.err; echo "not-found rc=$? $(cat $B.nf.err)"
$A shutdown 7; echo "shutdown rc=$?"
wait $vm
echo "after socket=$(test -e $S && echo left || echo gone)"
$UVM agent --uds $S --wait 1 check 2> $B.gone.err; echo "gone rc=$? $(cat $B.gone.err)"
} > $B.host 2>&1
rm -rf $R $I $B.rand
"#,
    },
    Scripted {
        name: "fs",
        // virtio-fs: two host folders, one read-only, each served by its
        // own virtiofsd: what the host put there is read in the guest
        // (20 MB with its checksum), what the guest writes lands on the
        // host (200 small files), the ro share refuses writes. Then a
        // second VM whose virtiofsd is SIGKILLed under it: the guest's
        // next requests fail with EIO, its command still ends with its
        // own status, and nothing is left behind. (No process per file:
        // a fork costs tens of milliseconds in the nested guest.)
        script: r#"
D=$(mktemp -d /dev/shm/uvm-fs.XXXXXX)
mkdir $D/rw $D/ro
echo from-host > $D/ro/hello
head -c 20000000 /dev/urandom > $D/rw/big
run_case --timeout 400 --fs $D/rw:data --fs $D/ro:cfg:ro -- sh -c '
t0=$(date +%s)
cat /mnt/cfg/hello
echo guest-wrote > /mnt/data/from-guest
(echo x > /mnt/cfg/nope) 2>/dev/null && echo ro-write-accepted || echo ro-write-refused
echo "big $(md5sum < /mnt/data/big | cut -d" " -f1)"
t1=$(date +%s)
mkdir /mnt/data/small && cd /mnt/data/small || exit 1
for i in $(seq 0 199); do echo "file $i" > f$i; set -- "$@" f$i; done
t2=$(date +%s)
echo "small $(cat "$@" | md5sum | cut -d" " -f1)"
grep -c " virtiofs " /proc/mounts
echo "fs-times big=$((t1-t0))s create=$((t2-t1))s read=$(($(date +%s)-t2))s" >&2
exit 6'
{
echo "host from-guest $(cat $D/rw/from-guest)"
echo "host ro-left $(ls $D/ro)"
echo "host big $(md5sum < $D/rw/big | cut -d' ' -f1)"
cd $D/rw/small && set -- $(for i in $(seq 0 199); do echo f$i; done)
echo "host small $(ls | wc -l) $(cat "$@" | md5sum | cut -d' ' -f1)"
cd /
rm -rf $D/rw/small $D/rw/big
(
  for i in $(seq 600); do [ -e $D/rw/ready ] && break; sleep 0.1; done
  pkill -KILL -f -- "--shared-dir=$D/rw"
) &
killer=$!
$UVM boot --timeout 180 --fs $D/rw:data -- sh -c '
echo ready > /mnt/data/ready
i=0
while echo 2>/dev/null > /mnt/data/t$i && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.1; done
(echo > /mnt/data/after) 2>&1
echo "after-kill $(cat /mnt/data/ready 2>&1)"
exit 3' > $B.killed.out 2> $B.killed.err
echo "killed rc=$?"
wait $killer
echo "killed out: $(tr '\n' '|' < $B.killed.out)"
echo "killed err: $(grep -c 'virtiofsd for --fs tag data ended' $B.killed.err)"
echo "left files=$(ls /run/uvm/virtiofsd 2>/dev/null | wc -l) daemons=$(pgrep -c virtiofsd)"
} > $B.host 2>&1
rm -rf $D
"#,
    },
    Scripted {
        name: "sandbox",
        // uvm sandbox: one microVM holding three containers (the pod
        // pattern) on uvm's bridge with a published port: web serves on
        // the sandbox's network and fetch reaches it on localhost, each
        // with its own PID 1 and hostname; exec, kill, wait, logs (and
        // logs -f of one that ends), ps and inspect (JSON, in $B.out);
        // refusals (a name in use, a container name in use, an unknown
        // container); rm leaves no VMM, virtiofsd, log pump, tap,
        // published port, lease, mount, cgroup or folder of it. A second
        // sandbox, booted after, has its VMM SIGKILLed: uvm gc leaves
        // nothing of it either, and then nothing of any sandbox is left.
        script: r#"
R=$(mktemp -d /dev/shm/uvm-sbx-root.XXXXXX)
$UVM container mkrootfs $R >/dev/null
SB="$UVM sandbox"
# What is left of sandbox $1 (its port $2, tap $3, VMM pid $4).
left() {
  echo "vmm=$(pgrep -f -c "sandbox-vmm $1\$") pumps=$(pgrep -f -c "sandbox-log $1 ") virtiofsd=$(pgrep -f -c "sandbox/$1/shared") taps=$(ip -o link | grep -c "$3") ports=$(nft list map ip uvm ports 2>/dev/null | grep -c "$2") dir=$(ls -d /run/uvm/sandbox/$1 2>/dev/null | wc -l) mounts=$(grep -c "/run/uvm/sandbox/$1/" /proc/mounts) cgroups=$(find /sys/fs/cgroup -path "*uvm-sandbox/$1" -type d 2>/dev/null | wc -l) vfsdirs=$(ls -d /run/uvm/virtiofsd/$4-* 2>/dev/null | wc -l) leases=$(ls -d /run/uvm/containers/sandbox-$1 2>/dev/null | wc -l)"
}
tap_of() { $SB inspect $1 | grep '"tap"' | cut -d'"' -f4; }
vmm_of() { $SB ls | awk -v n=$1 '$1 == n { print $3 }'; }
{
t0=$SECONDS
echo "at create1 $((SECONDS - t0))" >&2
create1() { timeout 180 $SB create pod1 --vcpus 2 --mem 512M --net bridge -p 18190:8080 >$B.create.out 2>$B.create.err; }
create1; rc=$?
# As run_case does: a guest that triple-faulted before its init started
# (nested SVM under QEMU's software CPU) is booted once more, and listed.
if [ $rc != 0 ] && grep -q triple-faulted $B.create.err && ! grep -q 'uvm-init: ready' $B.create.err; then
  echo "boot-tests: $B: the sandbox's guest triple-faulted before its init started; creating it once more" | tee -a $(dirname $B)/retried >&2
  create1; rc=$?
fi
echo "create rc=$rc $(cat $B.create.out $B.create.err)"
echo "boot took $((SECONDS - t0)) s" >&2
$SB create pod1 2>$B.dup.err; echo "dup rc=$? $(cat $B.dup.err)"
echo "at web $((SECONDS - t0))" >&2
$SB run pod1 --name web --rootfs $R -d -- sh -c 'echo index-from-$(hostname) > /tmp/index.html; echo web-started pid=$$; echo web-err >&2; exec httpd -f -p 8080 -h /tmp' > $B.web.id; echo "web rc=$? id=$(cat $B.web.id)"
echo "at fetch $((SECONDS - t0))" >&2
timeout 90 $SB run pod1 --name fetch --rootfs $R -- sh -c 'for i in $(seq 200); do wget -q -O - http://127.0.0.1:8080/index.html 2>/dev/null && break; sleep 0.2; done; echo "fetch pid=$$ host=$(hostname) procs=$(ps -o pid | wc -l)"; exit 3' </dev/null > $B.fetch.out 2>&1; echo "fetch rc=$? $(tr '\n' ' ' < $B.fetch.out)"
$SB run pod1 --name sleeper --rootfs $R -d -- sh -c 'echo one; echo two >&2; exec sleep 1000' >/dev/null; echo "sleeper rc=$?"
echo "at web $((SECONDS - t0))" >&2
$SB run pod1 --name web --rootfs $R -- true </dev/null 2>$B.dupc.err; echo "dup-container rc=$? $(cat $B.dupc.err)"
echo "at exec $((SECONDS - t0))" >&2
timeout 60 $SB exec pod1 sleeper -- sh -c 'echo "exec host=$(hostname) init=$(cat /proc/1/comm) procs=$(ps -o pid | wc -l)"; echo exec-err >&2; exit 4' </dev/null > $B.exec.out 2> $B.exec.err; echo "exec rc=$? out=$(cat $B.exec.out) err=$(cat $B.exec.err)"
echo "at hostfetch $((SECONDS - t0))" >&2
echo "host-fetch $(for i in $(seq 60); do timeout 10 busybox wget -q -O - http://127.0.0.1:18190/index.html 2>/dev/null && break; sleep 0.5; done)"
echo "logs $(timeout 10 $SB logs pod1 web | sort | tr '\n' ' ')"
$SB ps pod1 | awk 'NR > 1 { print "ps", $1, $2 }'
$SB kill pod1 sleeper; echo "kill rc=$?"
timeout 30 $SB wait pod1 sleeper; echo "wait rc=$?"
echo "at logsf $((SECONDS - t0))" >&2
echo "logs-f $(timeout 30 $SB logs -f pod1 sleeper | sort | tr '\n' ' ')"
$SB logs pod1 nosuch 2>$B.nolog.err; echo "no-log rc=$? $(cat $B.nolog.err)"
$SB rm pod1 sleeper; echo "rm-container rc=$?"
$SB ls | awk '$1 == "pod1" { print "ls", $1, $2, $5 }'
$SB inspect pod1 > $B.out; echo "inspect rc=$?"
# For a failure's report: the VMM's own words and the guest's last lines.
tail -n 5 /run/uvm/sandbox/pod1/sandbox.log | sed 's/^/sandbox.log: /' >&2
tail -n 30 /run/uvm/sandbox/pod1/console.log | sed 's/^/console: /' >&2
tap1=$(grep '"tap"' $B.out | cut -d'"' -f4) vmm1=$(vmm_of pod1)
echo "at rm1 $((SECONDS - t0))" >&2
timeout 60 $SB rm pod1; echo "rm rc=$?"
echo "after-rm $(left pod1 18190 $tap1 $vmm1)"
# One VM at a time: two booting at once in the runner's software-CPU L1
# is what wedged it.
echo "at create2 $((SECONDS - t0))" >&2
timeout 180 $SB create pod2 --net bridge -p 18191:8080 >/dev/null 2>$B.create2.err; echo "create2 rc=$? $(cat $B.create2.err)"
$SB run pod2 --name w2 --rootfs $R -d -- sleep 1000 >/dev/null; echo "w2 rc=$?"
tap2=$(tap_of pod2) vmm2=$(vmm_of pod2)
echo "before-kill $(left pod2 18191 $tap2 $vmm2)"
kill -9 $vmm2; sleep 0.5
$SB ls | awk 'NR > 1 { print "ls2", $1, $2 }'
$SB exec pod2 w2 -- true </dev/null 2>$B.dead.err; echo "dead rc=$? $(cat $B.dead.err)"
echo "at gc $((SECONDS - t0))" >&2
$UVM gc > $B.gc 2>&1; echo "gc rc=$? $(grep -c 'sandbox pod2' $B.gc)"
echo "after-gc $(left pod2 18191 $tap2 $vmm2)"
$SB inspect pod2 2>$B.gone.err; echo "gone rc=$? $(cat $B.gone.err)"
echo "all-gone sandboxes=$(ls /run/uvm/sandbox 2>/dev/null | wc -l) virtiofsd=$(pgrep -c virtiofsd) taps=$(ip -o link | grep -c uvmt) cgroups=$(find /sys/fs/cgroup -path '*uvm-sandbox*' -type d 2>/dev/null | wc -l)"
echo "case took $((SECONDS - t0)) s" >&2
} > $B.host 2>$B.err
echo 0 > $B.rc
rm -rf $R
"#,
    },
    Scripted {
        name: "run_volumes",
        // -v at the vm levels: the folder reaches the VM over virtio-fs,
        // at vm mounted where asked, at vm+container bound on into the
        // container; :ro refuses writes at both.
        script: r#"
V=$(mktemp -d /dev/shm/uvm-vol.XXXXXX); mkdir $V/a $V/b; echo in-a > $V/a/x; echo in-b > $V/b/x
uvm_run -i vm --name lvl-vol -v $V/a:/data -v $V/b:/conf:ro -- sh -c 'cat /data/x /conf/x; echo vm-wrote > /data/y; (echo no > /conf/z) 2>/dev/null && echo ro-accepted || echo ro-refused'
mv $B.out $B.vm.out; mv $B.rc $B.vm.rc
uvm_run -i vm+container --name lvl-volc -v $V/a:/data -v $V/b:/conf:ro -- sh -c 'cat /data/x /conf/x; echo ctr-wrote > /data/z; (echo no > /conf/z) 2>/dev/null && echo ro-accepted || echo ro-refused'
{
echo "vm rc=$(cat $B.vm.rc) $(tr '\n' '|' < $B.vm.out)"
echo "ctr rc=$(cat $B.rc) $(tr '\n' '|' < $B.out)"
echo "host $(cat $V/a/y) $(cat $V/a/z) conf=$(ls $V/b | tr '\n' ' ')"
} > $B.host
rm -rf $V
"#,
    },
    Scripted {
        name: "systemd",
        // A distribution's own init: a stock Debian (debootstrap, systemd)
        // on its root disk, init=/lib/systemd/systemd. uvm-init hands PID 1
        // over after mounting the root; systemd boots to multi-user, its
        // check unit says what is-system-running says, and systemd's
        // power-off ends uvm with 0.
        script: r#"
I=/dev/shm/uvm-debian.$$.ext4
cp --sparse=always "$DEBIAN_IMAGE" $I 2>$B.err || { echo 1 > $B.rc; exit; }
$UVM boot --timeout 400 --mem 1G --vcpus 2 --root $I --cmdline init=/lib/systemd/systemd </dev/null >$B.out 2>$B.err; echo $? >$B.rc
rm -f $I
"#,
    },
    Scripted {
        name: "seccomp",
        // Every thread of the VMM process runs under exactly one seccomp
        // filter (mode 2, one filter: the vCPUs and the event loop did not
        // inherit the control filter; the workload's ttrpc and stream
        // threads did), sampled while the guest's command runs; with
        // --no-seccomp, none. The boot, disk, net, vsock, fs and agent
        // cases above all ran with the filters on.
        script: r#"
# name mode filters, one line per thread of process $1, with bash builtins
# only (every process started in L1 is slow). The status file is read in
# one go: bash's `read` seeks back after each line, and every seek makes
# the kernel write the file anew, so a thread that ended half-way through
# gave a status cut short (a thread with no Seccomp_filters line).
threads() {
  local t s name mode filters
  for t in /proc/$1/task/*; do
    read -r name < $t/comm 2>/dev/null || continue
    s=$(< $t/status) 2>/dev/null || continue
    case $s in *Seccomp_filters:*) ;; *) continue ;; esac
    mode=${s#*Seccomp:}; mode=${mode%%$'\n'*}; mode=${mode//[[:space:]]/}
    filters=${s#*Seccomp_filters:}; filters=${filters%%$'\n'*}; filters=${filters//[[:space:]]/}
    echo "$name $mode $filters"
  done
}
sample() {
  local tag=$1 pid i n name rest
  shift
  $UVM boot --timeout 150 "$@" -- sh -c 'sleep 8' </dev/null >$B.$tag.out 2>$B.$tag.err &
  pid=$!
  # Once the command runs, the workload's client has threads of its own
  # (ttrpc's, then the stream copies), named after the "workload" thread.
  for i in $(seq 1500); do
    [ -d /proc/$pid ] || break
    # A file, not <(...): the runner's L1 has no /dev/fd.
    threads $pid > $B.threads
    n=0
    while read -r name rest; do [ "$name" = workload ] && n=$((n+1)); done < $B.threads
    [ $n -ge 2 ] && sleep 1 && break
    sleep 0.1
  done
  threads $pid | sed "s/^/$tag thread /"
  wait $pid
  echo "$tag rc $?"
}
{
  sample on
  sample off --no-seccomp
} > $B.host 2>&1
cat $B.on.err $B.off.err > $B.err
: > $B.out
echo 0 > $B.rc
"#,
    },
    Scripted {
        name: "jail",
        // uvm boot --jail as nobody in new pid and network namespaces,
        // sampled from here while the guest runs: the VMM's uid, empty
        // capability sets, no_new_privs, seccomp, PID 1 of its namespace,
        // a mount namespace holding only the jail, its cgroup's limit. The
        // guest writes its disk and pings the tap's end in the jail's
        // namespace, which pings the guest back; the guest's status is
        // uvm's, and the jail folder, cgroup and tap are gone afterwards.
        script: r#"
tap=uvmjail$$
ip tuntap add $tap mode tap
J=$(mktemp -d /dev/shm/uvm-jail.XXXXXX)
dd if=/dev/zero of=$B.disk bs=1M count=4 status=none
SECONDS=0
$UVM boot --timeout 300 --mem 256M --jail $J --uid 65534 --gid 65534 --jail-pidns --jail-netns --jail-mem 320M --jail-pids 64 \
  --disk $B.disk --net tap=$tap,mac=52:54:00:12:34:57 --cmdline "ip=10.0.3.2::10.0.3.1:255.255.255.0::eth0:off" -- sh -c '
  # Uptimes on the lines: a CI run once timed out here with no clue where.
  up() { read -r u _ < /proc/uptime; echo "$u"; }
  echo jailed-write > /tmp/w; dd if=/tmp/w of=/dev/vda conv=fsync 2>/dev/null && echo "disk-written at $(up)"
  for i in $(seq 240); do
    ping -c 1 -W 1 10.0.3.1 >/dev/null 2>&1 && { echo "guest-ping-ok at $(up) try $i"; break; }
    [ $((i % 30)) = 0 ] && echo "guest-ping tries $i at $(up)"
  done
  # Until the host has pinged the guest (echo requests counted in
  # /proc/net/snmp) since then: requests the tap queued before the guest
  # was up reach it late, after their pings gave up, and count too. A
  # second more for the last reply to reach the host.
  echos() { awk "/^Icmp:/ { if (!k) { for (i = 1; i <= NF; i++) if (\$i == \"InEchos\") k = i } else print \$k }" /proc/net/snmp; }
  base=$(echos)
  for i in $(seq 300); do [ "$(echos)" -gt "$base" ] && break; sleep 0.2; done
  sleep 1
  echo "echo-requests $(echos)"; echo "guest-done at $(up)"; exit 7' </dev/null >$B.out 2>$B.err &
pid=$!
vmm=
{
  # The VMM is uvm's one child; sampled once it runs as nobody.
  for i in $(seq 1200); do
    [ -d /proc/$pid ] || break
    read -r vmm _ < /proc/$pid/task/$pid/children 2>/dev/null
    if [ -n "$vmm" ] && grep -q '^Uid:[[:space:]]*65534' /proc/$vmm/status 2>/dev/null; then break; fi
    vmm=
    sleep 0.1
  done
  echo "vmm ${vmm:-none} after ${SECONDS}s"
  grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|NSpid):' /proc/$vmm/status | tr -s '\t' ' '
  echo "mounts $(awk '{print $5}' /proc/$vmm/mountinfo | sort | tr '\n' ' ')"
  echo "root $(ls -A /proc/$vmm/root | sort | tr '\n' ' ')"
  echo "netns-differs $([ "$(readlink /proc/$vmm/ns/net)" != "$(readlink /proc/self/ns/net)" ] && echo yes || echo no)"
  cg=$(sed -n 's/^0::\(.*\)/\1/p' /proc/$vmm/cgroup)
  echo "cgroup $cg"
  echo "cgroup-mem $(cat /sys/fs/cgroup$cg/memory.max 2>&1)"
  echo "cgroup-pids $(cat /sys/fs/cgroup$cg/pids.max 2>&1)"
  nsenter -t $vmm -n sh -c "ip addr add 10.0.3.1/24 dev $tap && ip link set $tap up" && echo "tap-configured after ${SECONDS}s"
  # Pinging on while the guest runs: it waits for a request newer than
  # its own ping's success.
  ok=
  for i in $(seq 240); do
    if nsenter -t $vmm -n busybox ping -c 1 -W 1 10.0.3.2 >$B.ping 2>&1; then
      [ -n "$ok" ] || echo "host-ping ok after ${SECONDS}s"
      ok=1; cp $B.ping $B.ping.ok; sleep 0.5
    fi
    [ -d /proc/$vmm ] || break
  done
  sed 's/^/ping: /' $B.ping.ok 2>/dev/null || sed 's/^/ping: /' $B.ping
  wait $pid
  echo "rc $?"
  echo "ended after ${SECONDS}s"
  echo "disk $(head -c 12 $B.disk)"
  echo "jail-left $(ls -A $J | wc -l)"
  echo "cgroup-left $([ -n "$cg" ] && [ -d /sys/fs/cgroup$cg ] && echo yes || echo no)"
  echo "tap-left $(ip link show $tap >/dev/null 2>&1 && echo yes || echo no)"
} > $B.host 2>&1
ip link del $tap 2>/dev/null
rm -rf $J $B.disk $B.ping $B.ping.ok
echo 0 > $B.rc
"#,
    },
    Scripted {
        name: "diskfull",
        // A disk whose sparse backing file lies on a full 3 MiB tmpfs: the
        // guest's first MiB (written while there was room) reads back
        // intact after its larger write failed with I/O errors, the VMM
        // lives on, and the guest's status is uvm's.
        script: r#"
M=$(mktemp -d /dev/shm/uvm-full.XXXXXX)
mount -t tmpfs -o size=3M tmpfs $M
truncate -s 16M $M/disk
run_uvm --mem 256M --disk $M/disk -- sh -c '
  head -c 1048576 /dev/urandom > /tmp/g; echo "sum first $(md5sum < /tmp/g)"
  dd if=/tmp/g of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null && echo first-ok
  dd if=/dev/zero of=/dev/vda bs=1M seek=4 count=8 oflag=direct conv=fsync 2>/dev/null; echo "fill rc $?"
  echo "io-errors $(dmesg | grep -c "I/O error")"
  echo "sum back $(dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | md5sum)"
  exit 5'
echo "sum host $(head -c 1048576 $M/disk | md5sum)" > $B.host
umount $M; rmdir $M
"#,
    },
    Scripted {
        name: "jailkill",
        // SIGKILL of a jailed uvm at random moments (from its set-up to
        // its guest's boot), 8 times, then uvm gc: no jail folder, record,
        // cgroup, tap, mount or uvm process is left.
        script: r#"
J=$(mktemp -d /dev/shm/uvm-kill.XXXXXX)
dd if=/dev/zero of=$B.disk bs=1M count=1 status=none
# uvm processes, with builtins only (-ef: the same file): a readlink per
# process made this loop most of the case's 100 s in L1.
uvms() { local p n=0; for p in /proc/[0-9]*; do [ $p/exe -ef "$UVM" ] && n=$((n+1)); done; echo $n; }
{
  for n in $(seq 8); do
    $UVM boot --timeout 120 --mem 128M --jail $J --jail-pidns --jail-pids 64 --disk $B.disk --net tap=uvmkill$n -- sleep 100 </dev/null >/dev/null 2>&1 &
    pid=$!
    t=$((RANDOM % 8)).$((RANDOM % 10))
    sleep $t
    kill -KILL $pid; wait $pid 2>/dev/null
    echo "killed $n after $t s"
  done
  # The VMMs die with their uvm (parent-death signal).
  for i in $(seq 100); do [ "$(uvms)" = 0 ] && break; sleep 0.1; done
  $UVM gc > $B.gc 2>&1; echo "gc rc $?"
  echo "gc-removed-folders $(grep -c 'removed jail folder' $B.gc)"
  echo "jail-left $(ls -A $J | wc -l)"
  echo "records-left $(ls -A /run/uvm/jail 2>/dev/null | wc -l)"
  echo "cgroups-left $(ls -d /sys/fs/cgroup/uvm-jail/uvm-* 2>/dev/null | wc -l)"
  echo "taps-left $(ip -o link show | grep -c uvmkill)"
  echo "mounts-left $(grep -c uvm-kill /proc/self/mountinfo)"
  echo "uvms-left $(uvms)"
} > $B.host 2>&1
rm -rf $J $B.disk $B.gc
echo 0 > $B.rc
"#,
    },
    Scripted {
        name: "containerd",
        // containerd (started here, its root, state and socket on L1's
        // tmpfs) runs an image made from files with --runtime
        // io.containerd.uvm.v2: the shim boots the pod's sandbox, the
        // container prints the guest's kernel release; ctr task ls says
        // RUNNING, ctr task kill (TERM, which the workload turns into exit
        // 3) ends it and ctr run exits 3 (before that, ctr task exec runs
        // processes in it: streams, statuses, exec ids used again, a kill
        // by exec id; pause, resume and metrics); once ctr run deleted the task
        // and ctr container rm the container, no sandbox, VMM, virtiofsd,
        // shim or mount is left.
        script: r#"
S=$(mktemp -d /dev/shm/uvm-ctrd.XXXXXX)
source $CTRD_LIB
mkdir $S/bin; ln -s $SHIM $S/bin/containerd-shim-uvm-v2
$UVM container mkrootfs $S/rootfs >/dev/null
{
PATH=$S/bin:$PATH ctrd_start $S/c; echo "containerd rc=$?"
ctrd_image $S/rootfs uvm.test/busybox:1; echo "import rc=$?"
echo "l1-release $(uname -r)"
t0=$SECONDS
ct() { timeout 60 ctr -a $S/c/containerd.sock -n uvm-test "$@"; }
# Until the workload's first line (0), or ctr's end without it (1).
start_pod() {
  timeout 200 ctr -a $S/c/containerd.sock -n uvm-test run --snapshotter native --runtime io.containerd.uvm.v2 uvm.test/busybox:1 p1 \
    sh -c 'trap "exit 3" TERM; echo "release $(uname -r)"; sleep 1000 & wait' </dev/null >$S/run.out 2>$S/run.err &
  run=$!
  # ctr's output on L1's tmpfs, not on the runner's 9p /tmp.
  for i in $(seq 400); do
    grep -q release $S/run.out 2>/dev/null && return 0
    kill -0 $run 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
# A pod whose guest never answered (it hung or triple-faulted in its boot,
# the nested runner's hazard) is made once more, and the session lists it.
if ! start_pod && grep -qE 'no agent answered|triple-faulted' $S/run.err; then
  echo "boot-tests: $B: the pod's guest never answered: $(grep -m1 ctr: $S/run.err); running it once more" | tee -a $(dirname $B)/retried >&2
  wait $run; ct container rm p1 >/dev/null 2>&1
  start_pod
fi
echo "started after $((SECONDS - t0)) s" >&2
ct task ls | awk '$1 == "p1" { print "task", $1, $3 }'
# Execs in the running task: all three streams and a status of their own;
# the same exec id again once ctr deleted the first; a long one killed by
# its exec id (ctr task exec's status is then 128+9).
echo exec-stdin | ct task exec --exec-id e1 p1 sh -c 'read l; echo "exec-out $(uname -r) $l"; echo exec-err >&2; exit 4' >$S/exec.out 2>$S/exec.err
echo "exec rc $?"
sed 's/^/exec-stdout /' $S/exec.out; sed 's/^/exec-stderr /' $S/exec.err
ct task exec --exec-id e1 p1 sh -c 'exit 5' </dev/null; echo "exec-again rc $?"
ct task exec --exec-id e2 p1 sleep 1000 </dev/null >/dev/null 2>&1 &
ex=$!
for i in $(seq 60); do ct task kill --exec-id e2 -s KILL p1 2>/dev/null && break; sleep 0.5; done
wait $ex; echo "exec-killed rc $?"
ct task kill --exec-id nope p1 2>&1 | tail -n 1 | sed 's/^/exec-unknown /'
# Pause (the guest's cgroup freezer): ctr task ls says PAUSED and an exec
# is refused; resume; then the container's cgroup counters as metrics.
ct task pause p1; echo "pause rc $?"
ct task ls | awk '$1 == "p1" { print "paused-state", $3 }'
ct task exec --exec-id e3 p1 true </dev/null 2>&1 | tail -n 1 | sed 's/^/exec-paused /'
ct task resume p1; echo "resume rc $?"
ct task ls | awk '$1 == "p1" { print "resumed-state", $3 }'
ct task metrics p1 >$S/metrics 2>&1; echo "metrics rc $?"
awk '$1 ~ /^(pids.current|memory.usage_in_bytes|cpuacct.usage)$/ { print "metric", $1, $2 }' $S/metrics
ct task kill p1; echo "kill rc=$?"
# Bounded, and what a stuck ctr waits on if it does not end.
for i in $(seq 120); do kill -0 $run 2>/dev/null || break; sleep 0.5; done
if kill -0 $run 2>/dev/null; then
  echo "stuck: ctr run did not end" >&2
  for p in $(pgrep -x ctr) $(pgrep -f '[c]ontainerd-shim-uvm-v2 .*-id p1'); do
    for t in /proc/$p/task/*; do echo "stuck $p $(cat $t/comm) $(cat $t/stat | cut -d' ' -f3) $(cat $t/wchan)"; cat $t/stack 2>/dev/null | head -8 | sed 's/^/  /'; done
  done >&2
  ls -la /proc/$(pgrep -x ctr | head -1)/fd >&2 2>&1
  pkill -9 -x ctr; kill -9 $run
fi
wait $run; echo $? > $B.rc
ct task ls | awk '$1 == "p1" { print "after", $1, $3 }'
ct container rm p1; echo "rm rc=$?"
sleep 1
echo "left containers=$(ct container ls -q | wc -l) sandboxes=$(ls /run/uvm/sandbox 2>/dev/null | wc -l) vmm=$(pgrep -f -c 'sandbox-vmm p1$') virtiofsd=$(pgrep -c virtiofsd) shims=$(pgrep -f -c '[c]ontainerd-shim-uvm-v2 .*-id p1') mounts=$(grep -c "$S" /proc/mounts) cgroups=$(find /sys/fs/cgroup -path '*uvm-sandbox/p1' -type d 2>/dev/null | wc -l)"
ctrd_stop
} > $B.host 2>$B.err
cp $S/run.out $B.out; cat $S/run.err >> $B.err
tail -n 20 $S/c/containerd.log | grep -v 'loading plugin' >> $B.err
rm -rf $S
"#,
    },
    Scripted {
        name: "run_timeout",
        script: r#"
uvm_run -i vm --name lvl-tmo --timeout 3 -- sleep 100
echo "left $(ls /run/uvm/vm 2>/dev/null | wc -l)" > $B.host
"#,
    },
];

/// The stock Debian image with systemd (resources/build-debian-image.sh,
/// cached); built here, on the host, which has the network L1 lacks. On
/// failure the path is one that does not exist, and the case says so.
fn debian_image() -> String {
    let out = Command::new(repo().join("resources/build-debian-image.sh"))
        .stderr(std::process::Stdio::inherit())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "/nonexistent/debian-image-build-failed".into(),
    }
}

/// tests/runner/kvm-runner's status when its L1 VM wedged.
const RUNNER_L1_WEDGED: i32 = 75;

struct Outcome {
    rc: i32,
    stdout: String,
    stderr: String,
    /// What a scripted case's runner-host side recorded.
    host: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The session's outcomes, or why there are none. Kept even when it failed:
/// a panic inside `get_or_init` would make every other test run the whole
/// session again.
type Session = Result<HashMap<&'static str, Outcome>, String>;

fn session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("uvm-boot-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uvm = env!("CARGO_BIN_EXE_uvm");
        let mut script = format!(
            "set -u\n\
             # A case is done once its .done exists; a session run again\n\
             # after L1 wedged goes on from the case it was in.\n\
             begin() {{\n\
               B={dir}/$1\n\
               if [ -e $B.done ]; then return 1; fi\n\
               echo $1 > {dir}/current\n\
               echo \"boot-tests: $1 (session at ${{SECONDS}}s)\" >&2\n\
             }}\n\
             boot_once() {{ {uvm} boot \"$@\" </dev/null >$B.out 2>$B.err; echo $? >$B.rc; }}\n\
             # A guest that triple-faulted before its init started (an early\n\
             # boot under nested SVM in QEMU's software CPU, rare) is booted\n\
             # once more, and the session lists it; one that got further is\n\
             # a failure like any other. The console's tail is on stderr.\n\
             early_triple_fault() {{ [ \"$(cat $B.rc)\" = 124 ] && grep -q triple-faulted $B.err && ! grep -q 'uvm-init: ready' $B.out $B.err; }}\n\
             again() {{ echo \"boot-tests: $B: the guest triple-faulted before its init started; running it once more\" | tee -a {dir}/retried >&2; }}\n\
             run_case() {{\n\
               boot_once \"$@\"\n\
               if early_triple_fault; then again; boot_once \"$@\"; fi\n\
             }}\n\
             run_uvm() {{ run_case --timeout 180 \"$@\"; }}\n\
             export UVM_CACHE_DIR=/dev/shm/uvm-run-cache\n\
             UVM={uvm}\n\
             SHIM={shim}\n\
             CTRD_LIB={ctrd_lib}\n\
             VSOCK_HOST={vsock_host}\n\
             DEBIAN_IMAGE={debian}\n\
             RUN_WORKLOAD='hostname; cat /proc/self/cgroup; echo \"env=$FOO cwd=$(pwd) id=$(id -u):$(id -g)\"; exit 3'\n\
             # A default bound, as run_uvm has, unless the case gives its own.\n\
             uvm_run_once() {{ {uvm} run \"$@\" </dev/null >$B.out 2>$B.err; echo $? >$B.rc; }}\n\
             uvm_run() {{\n\
               case \" $* \" in *\" --timeout \"*) ;; *) set -- --timeout 300 \"$@\";; esac\n\
               uvm_run_once \"$@\"\n\
               if early_triple_fault; then again; uvm_run_once \"$@\"; fi\n\
             }}\n\
             uvm_probe() {{ {uvm} probe \"$@\" </dev/null >$B.out 2>$B.err; echo $? >$B.rc; }}\n\
             tap_up() {{ ip tuntap add $1 mode tap && ip addr add $2 dev $1 && ip link set $1 up; }}\n\
             # A refused connection (the guest not listening yet) fails at once.\n\
             retry() {{ for i in $(seq 240); do timeout 120 bash -c \"$1\" 2>/dev/null && return 0; sleep 0.5; done; return 1; }}\n",
            uvm = env!("CARGO_BIN_EXE_uvm"),
            vsock_host = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vsock/host.py"),
            shim = env!("CARGO_BIN_EXE_containerd-shim-uvm-v2"),
            ctrd_lib = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/containerd/lib.sh"),
            debian = shell_quote(&debian_image()),
            dir = dir.display(),
        );
        // UVM_BOOT_CASES=a,b runs only those cases (for working on a few;
        // the other tests then fail, so the suite never runs it).
        let only = std::env::var("UVM_BOOT_CASES").ok();
        let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == name));
        for c in CASES.iter().filter(|c| wanted(c.name)) {
            let args: Vec<String> = c.args.iter().map(|a| shell_quote(a)).collect();
            // Default a bound on every boot so one hang cannot eat the suite.
            let timeout = if c.args.contains(&"--timeout") { "" } else { "--timeout 180 " };
            script.push_str(&format!(
                "if begin {name}; then\nrun_case {timeout}{args}\n: >$B.done; fi\n",
                name = c.name,
                args = args.join(" "),
            ));
        }
        for c in SCRIPTED.iter().filter(|c| wanted(c.name)) {
            script.push_str(&format!(
                "if begin {name}; then\n(\n{body}\n)\n: >$B.done; fi\n",
                name = c.name,
                body = c.script,
            ));
        }
        // SIGTERM to a running uvm: the VM stops and uvm exits 128+15.
        let base = dir.join("sigterm");
        if wanted("sigterm") {
        script.push_str(&format!(
            "if begin sigterm; then\n{uvm} boot -- sh -c 'echo started; exec sleep 1000' </dev/null >{b}.out 2>{b}.err & pid=$!\n\
             for i in $(seq 120); do grep -q started {b}.out 2>/dev/null && break; sleep 0.5; done\n\
             kill -TERM $pid; wait $pid; echo $? >{b}.rc\n: >$B.done; fi\n",
            b = base.display()
        ));
        }
        script.push_str("echo \"boot-tests: done (session at ${SECONDS}s)\" >&2\n");
        std::fs::write(dir.join("session.sh"), &script).unwrap();
        let run = || {
            Command::new(repo().join("tests/runner/kvm-runner"))
                .args(["--", "bash", dir.join("session.sh").to_str().unwrap()])
                .status()
                .expect("start tests/runner/kvm-runner")
        };
        let mut status = run();
        // 75: the nested L1 VM itself wedged (an emulator hazard, not a uvm
        // result). The session goes on from the case it was in, in a new
        // L1, as long as each run finishes a case more; seen wedging three
        // times in one suite on a busy day (2026-12-01).
        let done = || std::fs::read_dir(&dir).map_or(0, |d| {
            d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "done")))
                .count()
        });
        let (mut finished, mut stalled, mut runs) = (0, 0, 1);
        while status.code() == Some(RUNNER_L1_WEDGED) {
            let now = done();
            stalled = if now > finished { 0 } else { stalled + 1 };
            finished = now;
            let current = std::fs::read_to_string(dir.join("current")).unwrap_or_default();
            // The same case three runs in a row, or eight runs in all, is
            // no longer bad luck.
            if stalled >= 2 || runs == 8 {
                break;
            }
            runs += 1;
            // Straight to stderr: the harness captures eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "boot tests: the nested L1 VM wedged in case {}; going on from there in a new L1",
                current.trim()
            );
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("retried"))
                .and_then(|mut f| writeln!(f, "L1 wedged in case {}; the session went on from it", current.trim()));
            status = run();
        }
        if !status.success() {
            return Err(format!("the KVM runner failed ({status}): no KVM host for the boot tests"));
        }
        // A guest that triple-faults before its init runs is booted once
        // more (seen about once in 200 boots, only in the nested runner;
        // see the README); say so loudly.
        if let Ok(retried) = std::fs::read_to_string(dir.join("retried")) {
            let _ = writeln!(std::io::stderr(), "boot tests: RETRIED CASES:\n{retried}");
        }
        let read = |name: &str, ext: &str| {
            std::fs::read_to_string(dir.join(format!("{name}.{ext}")))
                .unwrap_or_else(|e| format!("(no .{ext}: {e}; the session did not finish this case)"))
                .replace('\r', "")
        };
        let results = CASES
            .iter()
            .map(|c| c.name)
            .chain(SCRIPTED.iter().map(|c| c.name))
            .chain(["sigterm"])
            .filter(|name| wanted(name))
            .map(|name| {
                let rc = read(name, "rc").trim().parse().unwrap_or(-1);
                let host = std::fs::read_to_string(dir.join(format!("{name}.host"))).unwrap_or_default();
                (name, Outcome { rc, stdout: read(name, "out"), stderr: read(name, "err"), host })
            })
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(results)
    })
}

fn case(name: &str) -> &'static Outcome {
    let o = match session() {
        Ok(outcomes) => &outcomes[name],
        Err(e) => panic!("{e}"),
    };
    eprintln!(
        "--- {name}: status {}\n--- stdout:\n{}\n--- stderr:\n{}\n--- host:\n{}",
        o.rc, o.stdout, o.stderr, o.host
    );
    o
}

/// Lines the guest command printed: all of uvm's stdout (the console is
/// in a log, the command's stdio comes over vsock).
fn command_lines(o: &Outcome) -> Vec<&str> {
    assert!(
        !o.stdout.contains("uvm-init:"),
        "the console reached stdout: {}",
        o.stdout
    );
    o.stdout.lines().collect()
}

fn mem_total_kib(o: &Outcome) -> u64 {
    let line = command_lines(o)
        .into_iter()
        .find(|l| l.starts_with("MemTotal:"))
        .expect("MemTotal line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn assert_within(actual_kib: u64, expected_bytes: u64) {
    let expected = expected_bytes / 1024;
    assert!(
        actual_kib * 10 >= expected * 9 && actual_kib <= expected,
        "MemTotal {actual_kib} KiB not within 10% below {expected} KiB"
    );
}

#[test]
fn two_vcpus_512m_and_exit_status_7() {
    let o = case("smp2");
    assert_eq!(o.rc, 7);
    assert_eq!(command_lines(o)[0], "2");
    assert_within(mem_total_kib(o), 512 << 20);
}

#[test]
fn one_and_four_vcpus() {
    assert_eq!(command_lines(case("vcpus1")), ["1"]);
    assert_eq!(case("vcpus1").rc, 0);
    assert_eq!(command_lines(case("vcpus4")), ["4"]);
    assert_eq!(case("vcpus4").rc, 0);
}

#[test]
fn memory_across_the_mmio_hole() {
    let o = case("mem3g5");
    assert_eq!(o.rc, 0);
    assert_within(mem_total_kib(o), 7 << 29);
}

#[test]
fn kernel_command_line_reaches_the_guest_unchanged() {
    let o = case("cmdline");
    assert_eq!(o.rc, 0);
    let line = command_lines(o)[0];
    assert!(
        line.ends_with(" uvm_test.marker=hello-42 foo=\"a b\""),
        "{line}"
    );
    assert!(line.starts_with("console=ttyS0 "), "{line}");
}

#[test]
fn guest_kernel_log_is_clean() {
    let o = case("dmesg");
    assert_eq!(o.rc, 0);
    assert_eq!(
        command_lines(o),
        Vec::<&str>::new(),
        "warnings in the guest's dmesg"
    );
}

#[test]
fn arguments_arrive_byte_for_byte() {
    let o = case("argv");
    assert_eq!(o.rc, 0);
    let want = "[a b]['q'][\"dq\"][][x";
    let lines = command_lines(o);
    let at = lines
        .iter()
        .position(|l| *l == want)
        .unwrap_or_else(|| panic!("{want:?} not in {lines:?}"));
    assert_eq!(
        lines.get(at + 1),
        Some(&"y]"),
        "a newline inside an argument survives"
    );
}

#[test]
fn exit_statuses_of_signals_and_missing_commands() {
    assert_eq!(case("signal").rc, 128 + 9);
    let o = case("notfound");
    assert_eq!(o.rc, 127);
    assert_eq!(
        o.stderr.trim(),
        "uvm: /nonexistent-command: command not found",
        "{}",
        o.stderr
    );
    assert_eq!(o.stdout, "");
}

#[test]
fn poweroff_and_reboot_end_the_vm_cleanly() {
    assert_eq!(case("poweroff").rc, 0);
    let o = case("reboot");
    assert_eq!(o.rc, 0);
    assert!(o.stderr.contains("rebooted"), "{}", o.stderr);
}

#[test]
fn guest_kernel_panic_is_a_distinct_failure() {
    let o = case("panic");
    assert_eq!(o.rc, 124);
    assert_eq!(
        o.stderr.trim().lines().last(),
        Some("uvm: the guest kernel panicked")
    );
    // The console's last lines come with it (the oops and its trace).
    assert!(
        o.stderr.contains("uvm: the guest's console ended with:\n["),
        "{}",
        o.stderr
    );
    assert_eq!(o.stdout, "", "the console is not the command's output");
    let o = case("bootpanic");
    assert_eq!(o.rc, 124);
    assert!(o.stderr.contains("before its init started"), "{}", o.stderr);
}

#[test]
fn timeout_stops_a_guest_that_does_not_finish() {
    let o = case("timeout");
    assert_eq!(o.rc, 124);
    assert!(o.stderr.contains("--timeout"), "{}", o.stderr);
}

#[test]
fn sigterm_stops_the_vm_cleanly() {
    let o = case("sigterm");
    assert_eq!(o.rc, 128 + 15);
    assert_eq!(o.stdout, "started\n", "the guest's command was running");
    assert_eq!(o.stderr.trim(), "uvm: stopped by signal 15");
}

#[test]
fn more_memory_than_the_host_has_is_refused() {
    let o = case("toomuchmem");
    assert_eq!(o.rc, 125);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("more than this host can give"),
        "{}",
        o.stderr
    );
}

/// The value after `key ` on the first line that starts with it.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
        .trim()
}

/// A number from `uvm boot --verbose`'s account of a device: the one just
/// before `what`, after `from`, in the line of the device whose label
/// contains `device`.
fn device_count(stderr: &str, device: &str, from: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| {
            l.starts_with("uvm: virtio-")
                && l.split(": ").nth(1).is_some_and(|d| d.contains(device))
        })
        .unwrap_or_else(|| panic!("no --verbose line for {device} in:\n{stderr}"));
    let rest = &line[line
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in {line}"))..];
    let before = &rest[..rest
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line}"))];
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line}"))
}

#[test]
fn guest_writes_reach_the_disk_files_and_ro_disks_refuse_writes() {
    let o = case("disks");
    assert_eq!(o.rc, 0);
    let out = &o.stdout;
    assert!(
        field(out, "dev vda").ends_with(" ro=0 sectors=16384"),
        "{out}"
    );
    assert!(
        field(out, "dev vdb").starts_with("serial=second ro=0 sectors=16384"),
        "{out}"
    );
    assert!(
        field(out, "dev vdc").starts_with("serial=golden ro=1 sectors=2048"),
        "{out}"
    );
    for disk in ["a", "b"] {
        let key = format!("sum {disk}");
        assert_eq!(
            field(out, &key),
            field(&o.host, &key),
            "disk {disk}: the host file differs from what the guest wrote"
        );
    }
    assert_ne!(field(out, "sum a"), field(out, "sum b"));
    let head = field(&o.host, "b-head");
    let (written, zeros) = head.split_once(" zeros ").unwrap();
    assert_eq!(
        written, zeros,
        "a write at 2 MiB touched the start of the disk"
    );
    assert_eq!(field(out, "kernel-ro"), "refused");
    assert_eq!(
        field(out, "device-ro"),
        "refused",
        "a write to a ro disk got through"
    );
    assert_eq!(
        field(&o.host, "sum golden"),
        field(&o.host, "golden before")
    );
    // The devices' own account (--verbose): every request answered OK (the
    // ro disk's write never left the guest), rings never corrupt, and every
    // request the driver made was taken and given back.
    let err = &o.stderr;
    for d in ["disks.a", "disks.b", "golden"] {
        assert!(device_count(err, d, ": ", " ok") > 0, "{err}");
        for bad in [" I/O errors", " dropped chains", " queue errors"] {
            assert_eq!(device_count(err, d, ": ", bad), 0, "{d}{bad}: {err}");
        }
        let avail = device_count(err, d, "queue: ", ", taken");
        assert_eq!(device_count(err, d, "taken ", ", used"), avail, "{err}");
    }
    assert!(err.contains("uvm: unclaimed accesses: "), "{err}");
    assert_eq!(field(out, "sum golden"), field(&o.host, "sum golden"));
}

#[test]
fn an_ext4_image_boots_as_the_root_filesystem() {
    let o = case("rootdisk");
    assert_eq!(o.rc, 0);
    let lines = command_lines(o);
    assert_eq!(lines[0], format!("marker {}", field(&o.host, "marker")));
    assert!(lines[1].starts_with("/dev/vda / ext4 rw"), "{lines:?}");
    assert!(!lines.contains(&"initramfs-visible"), "{lines:?}");
    assert_eq!(
        field(&o.host, "fsck"),
        "0",
        "the guest left the filesystem unclean"
    );
    assert_eq!(field(&o.host, "from-guest"), "written-in-guest");
}

#[test]
fn a_root_disk_without_a_filesystem_is_a_clear_error() {
    let o = case("badroot");
    assert_ne!(o.rc, 0);
    // The init's reason, from the console's tail (the command never ran).
    assert!(
        o.stderr
            .lines()
            .any(|l| l.starts_with("uvm-init: root /dev/vda:")),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("Kernel panic"), "{}", o.stderr);
}

#[test]
fn a_tap_deleted_under_a_running_guest_costs_its_network_only() {
    let o = case("tapgone");
    assert_eq!(o.rc, 7, "{}", o.stderr);
    assert!(o.stdout.contains("got hi"), "{}", o.stdout);
    assert!(o.stdout.contains("ping-after-failed"), "{}", o.stdout);
    assert!(o.host.contains("deleted"), "{}", o.host);
    assert_eq!(field(&o.host, "taps-left"), "0", "{}", o.host);
    // An event loop spinning on the dead tap would burn a core: the VMM's
    // CPU time over 4 s of an idle guest stays well under one second.
    let ticks: u64 = field(&o.host, "cpu-ticks").parse().unwrap();
    let hz: u64 = field(&o.host, "hz").parse().unwrap();
    assert!(ticks < hz, "{ticks} ticks at {hz}/s: {}", o.host);
    // The device counted the failed sends and reads instead of dying of
    // them.
    let err = &o.stderr;
    let failed = device_count(err, "uvmgone", "(", " tap errors")
        + device_count(err, "uvmgone", "", " tap read errors");
    assert!(failed > 0, "{err}");
}

#[test]
fn guest_network_over_a_tap_carries_50_mb_each_way() {
    let o = case("net");
    assert_eq!(o.rc, 0);
    let lines = command_lines(o);
    assert_eq!(lines[0], "52:54:00:12:34:56");
    assert!(
        lines
            .iter()
            .any(|l| l.trim() == "default via 10.0.2.1 dev eth0"),
        "{lines:?}"
    );
    assert!(lines.contains(&"ping-ok"), "{lines:?}");
    for dir in ["h2g", "g2h"] {
        let key = format!("sum {dir}");
        let guest = field(&o.stdout, &key);
        assert_eq!(
            guest,
            field(&o.host, &key),
            "{dir}: the data changed on the way"
        );
    }
    // The device's own account (--verbose) agrees: at least the 50 MB each
    // way went through it, and the rings were never found corrupt.
    let err = &o.stderr;
    assert!(
        device_count(err, "uvmtest", "rx ", " bytes") >= 52_428_800,
        "{err}"
    );
    assert!(
        device_count(err, "uvmtest", "tx ", " bytes") >= 52_428_800,
        "{err}"
    );
    assert_eq!(
        device_count(err, "uvmtest", "rx ", " queue errors"),
        0,
        "{err}"
    );
}

/// Bridge networking of the runtime inside a guest, end to end through the
/// guest's virtio-net: container to container, NAT out of the VM, a
/// published port from outside the VM, and nothing left afterwards.
#[test]
fn containers_in_a_guest_network_over_its_bridge_nat_and_published_ports() {
    let o = case("bridge");
    assert_eq!(o.rc, 0);
    let out = &o.stdout;
    let web = field(out, "web").trim_start_matches("ip=");
    assert!(web.starts_with("10.88."), "{out}");
    let client = field(out, "inet");
    assert!(client.starts_with("10.88.") && client != web, "{out}");
    assert!(
        out.contains("\nhello-from-web\n"),
        "container to container: {out}"
    );
    assert!(out.contains("\nhello-from-outside\n"), "egress: {out}");
    assert_eq!(field(out, "client"), "rc=0");
    assert_eq!(
        field(&o.host, "outside"),
        "peer=10.0.3.2 data=via-nat",
        "masqueraded to the guest's address"
    );
    assert_eq!(field(&o.host, "published"), "hello-from-web");
    assert_eq!(
        field(out, "published map:"),
        format!("tcp . 8080 : {web} . 80")
    );
    assert_eq!(field(out, "left"), "ports=0 veths=0 containers=0");
    assert!(out.contains("removed bridge uvm0"), "{out}");
    assert!(out.contains("removed nftables table ip uvm"), "{out}");
    assert_eq!(field(out, "ruleset=[]"), "bridge=0");
}

#[test]
fn the_container_runtime_runs_inside_a_guest() {
    let o = case("container");
    assert_eq!(o.rc, 0);
    let out = &o.stdout;
    assert!(out.lines().any(|l| l == "cgroup-v2"), "{out}");
    assert_eq!(field(out, "inside"), "pid=1 host=box procs=4 cgroup=0::/");
    assert!(out.contains("\nmknod-refused\n"), "{out}");
    assert_eq!(field(out, "run"), "rc=3", "the workload's status");
    assert!(out.contains("\nimage-unchanged\n"), "{out}");
    assert_eq!(field(out, "oom"), "rc=137", "{out}");
    // The runtime's own report, on the command's stderr (a stream apart).
    assert!(o.stderr.contains("OOM-killed"), "{}", o.stderr);
    // cgroup v2 device rules (an eBPF program): no disk node even with
    // CAP_MKNOD, the default devices work, and a bound-in node outside the
    // rules does not open, though it does outside the container.
    assert_eq!(field(out, "devices"), "disk=refused null=ok kmsg=refused");
    assert!(out.contains("\nkmsg-outside-opened\n"), "{out}");
    // A user namespace (overlay with or without userxattr on this kernel):
    // container root is host uid 100000, and the image is untouched.
    assert_eq!(field(out, "userns"), "uid=0 map 0 100000 65536", "{out}");
    assert!(out.contains("\nwrote\n"), "{out}");
    assert_eq!(field(out, "userns rc=0"), "owner=none-in-image", "{out}");
    assert_eq!(field(out, "left"), "cgroups=0 overlays=0");
}

/// A detached container's lifecycle inside a guest (cgroup v2).
#[test]
fn detached_lifecycle_inside_a_guest() {
    let o = case("lifecycle");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    let out = &o.stdout;
    assert_eq!(field(out, "run-d"), "rc=0", "{out}");
    assert!(out.contains("\ninspect-cgroup-v2\n"), "{out}");
    assert!(out.contains("\ninspect-running\n"), "{out}");
    assert_eq!(field(out, "stop"), "rc=0", "{out}");
    let t: Vec<f64> = field(out, "stop-time")
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(t[1] - t[0] < 10.0, "TERM trapped: no grace period: {out}");
    assert_eq!(field(out, "logs"), "hello-v2 got-term", "{out}");
    assert!(out.contains("\"exit_code\": 0\n"), "{out}");
    assert_eq!(field(out, "rm"), "rc=0", "{out}");
    assert_eq!(
        field(out, "left"),
        "cgroups=0 records=0 containers=0 overlays=0"
    );
}

/// The network patterns inside a guest: registration in the guest's
/// /run/netns, the --allow-in firewall, a pod joining the namespace.
#[test]
fn network_patterns_inside_a_guest() {
    let o = case("netpatterns");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    let out = &o.stdout;
    let ip = field(out, "registered").trim_start_matches("inet ");
    assert!(ip.starts_with("10.88."), "{out}");
    assert_eq!(field(out, "table"), "1", "{out}");
    assert_eq!(field(out, "fw"), "80=eighty 81=", "81 dropped: {out}");
    assert_eq!(field(out, "pod"), "eightyone eth0 lo", "{out}");
    assert_eq!(field(out, "left"), "netns=0 veths=0 containers=0");
}

/// The runtime's resource controls on cgroup v2 inside a guest: CPU
/// weights 20/80 split a shared CPU 20/80, the cpuset holds, a write bps
/// limit on the guest's disk holds the rate, pause stops a counter and
/// resume lets it go on, an image imported in the guest runs with its
/// config, and an unknown CPU is one line.
#[test]
fn resource_controls_on_cgroup_v2_inside_a_guest() {
    let o = case("resources_v2");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    let out = &o.stdout;
    assert!(!out.contains("failed"), "{out}");
    // The runtime enabled the controllers it needed (the guest's init
    // enables none).
    let subtree: Vec<&str> = field(out, "subtree").split(' ').collect();
    assert!(
        subtree.contains(&"cpu") && subtree.contains(&"cpuset"),
        "{subtree:?}"
    );
    assert_eq!(
        field(out, "files"),
        "20 80 0 0",
        "cpu.weight and cpuset.cpus"
    );
    let usage = |key: &str| -> f64 {
        field(out, "cpu")
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {key}= in the cpu line: {out}"))
            / 1e6
    };
    let (low, high) = (usage("low"), usage("high"));
    let wall = uptime_span(out, "cpu-window");
    let low_pct = 100.0 * low / (low + high);
    let split = format!(
        "weights 20/80 on CPU 0: {low:.3} s / {high:.3} s of CPU in {wall:.2} s: \
         {low_pct:.1}% / {:.1}%",
        100.0 - low_pct
    );
    eprintln!("{split}");
    assert!((low_pct - 20.0).abs() <= 8.0, "{split}");
    // Pinned: together never more than the one CPU (and busy on it).
    assert!(
        low + high <= wall * 1.05,
        "{low} + {high} CPU s in {wall} s"
    );
    assert!(low + high >= wall * 0.5, "{low} + {high} CPU s in {wall} s");
    for side in ["inside-low", "inside-high"] {
        assert_eq!(
            field(out, side),
            "Cpus_allowed_list: 0 pid 1's current affinity mask: 1",
            "{out}"
        );
    }
    // The write limit lands in io.max for the disk's numbers, and the
    // rate of 2 MiB of O_DIRECT writes is within 25% of it.
    let vda = field(out, "vda");
    let io_max = field(out, "limited io.max");
    assert!(
        io_max.starts_with(&format!("{vda} ")) && io_max.contains("wbps=1048576"),
        "{io_max} (vda {vda})"
    );
    assert!(out.contains("\nfree io.max\n"), "no limit asked: {out}");
    let limited = uptime_span(out, "limited time");
    let free = uptime_span(out, "free time");
    let rates = format!(
        "/dev/vda: 2 MiB of O_DIRECT writes in {free:.2} s unlimited ({:.2} MiB/s), \
         {limited:.2} s at 1 MiB/s ({:.2} MiB/s)",
        2.0 / free,
        2.0 / limited
    );
    eprintln!("{rates}");
    assert!((0.75..=1.25).contains(&(2.0 / limited)), "{rates}");
    assert!(free * 2.0 < limited, "{rates}");
    // Pause: the counter stands still and ps says so; resume: it goes on.
    assert_eq!(field(out, "pause"), "rc=0", "{out}");
    assert_eq!(field(out, "ps-paused"), "paused", "{out}");
    assert_eq!(field(out, "resume"), "rc=0", "{out}");
    assert_eq!(field(out, "ps-resumed"), "running", "{out}");
    let n: Vec<u64> = field(out, "counter")
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        n[0] > 2 && n[0] == n[1],
        "the counter moved while paused: {n:?}"
    );
    assert!(n[2] > n[1], "the counter did not go on after resume: {n:?}");
    assert!(out.contains("\ncounter-went-on\n"), "{out}");
    // An image imported in the guest: its Env, WorkingDir and Cmd apply.
    assert_eq!(field(out, "import"), "rc=0", "{}", o.stderr);
    assert_eq!(field(out, "image"), "hello-from-image /srv/app layer-file");
    assert_eq!(field(out, "image-run"), "rc=0");
    // An unknown CPU: one line, status 125.
    let bad = field(out, "bad-cpuset");
    assert!(
        bad.starts_with("rc=125 lines=1 ") && bad.contains("CPU 7 is not online (online: 0-1)"),
        "{bad}"
    );
    assert_eq!(field(out, "left"), "cgroups=0 containers=0 overlays=0");
    eprintln!("guest uptime at the end: {} s", field(out, "guest-uptime"));
}

/// The workload's lines at a vm level: exactly what it printed.
fn run_lines(o: &Outcome) -> Vec<&str> {
    o.stdout.lines().collect()
}

#[test]
fn run_vm_level_gives_the_workload_status_and_only_its_output() {
    let o = case("run_vm");
    assert_eq!(o.rc, 3, "{}", o.stderr);
    // The guest's own hostname and its root cgroup (cgroup v2).
    assert_eq!(
        run_lines(o),
        ["lvl-vm", "0::/", "env=bar cwd=/tmp id=65534:65534"]
    );
    assert_eq!(o.host.trim(), "left 0", "the VM's folder is removed");
}

#[test]
fn run_vm_container_level_applies_the_limits_in_the_guest() {
    let o = case("run_vmc");
    assert_eq!(o.rc, 3, "{}", o.stderr);
    // The container's limits as its cgroup (v2, in the guest) has them,
    // then the workload's lines: its own hostname, its cgroup namespace.
    assert_eq!(
        run_lines(o),
        [
            "67108864",
            "20",
            "lvl-vmc",
            "0::/",
            "env=bar cwd=/tmp id=65534:65534"
        ]
    );
}

#[test]
fn run_verbose_shows_the_console_on_stderr_only() {
    let o = case("run_verbose");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    assert_eq!(run_lines(o), ["only-this"]);
    // The boot's phases: the init's start and its modules on the guest's
    // clock, and the VMM's timeline (vCPUs first ran, then the guest said
    // ready through the status port) on the host's.
    let e = &o.stderr;
    assert!(
        e.contains("uvm-init: ready after ") && e.contains(" s (init started at "),
        "{e}"
    );
    let number_after = |key: &str| -> u64 {
        let at = e.find(key).unwrap_or_else(|| panic!("no {key:?}: {e}")) + key.len();
        e[at..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {key:?}: {e}"))
    };
    let vcpus = number_after("uvm: timeline: vCPUs ran ");
    let ready = number_after("the guest's init said ready at ");
    assert!(0 < vcpus && vcpus < ready, "{e}");
}

#[test]
fn a_console_nobody_reads_drops_the_flood_and_the_guest_goes_on() {
    let o = case("serialflood");
    let h = &o.host;
    // The guest's own status, before --timeout: its vCPU never waited on
    // the full pipe, and neither did uvm's last lines.
    let flood = field(h, "flood");
    assert!(flood.starts_with("rc=7 took="), "{h}");
    let took: u64 = flood
        .rsplit('=')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(999);
    assert!(took < 140, "{h}");
    assert_eq!(o.stdout.trim(), "flooded", "{h}");
    // The pipe's room and no more: the rest of the 24 000 bytes (and the
    // kernel's log beyond the pipe) was dropped, not queued in the VMM;
    // what got through is the console's start.
    let bytes: usize = field(h, "console")
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{h}"));
    assert!((1024..=8192).contains(&bytes), "{h}");
    assert!(h.contains("ready=1"), "{h}");
    // Nothing of uvm's outlived it holding the pipe.
    assert!(h.contains("pipe=eof"), "{h}");
}

#[test]
fn run_timeout_ends_the_vm_with_124() {
    let o = case("run_timeout");
    assert_eq!(o.rc, 124, "{}", o.stderr);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    assert!(o.stderr.contains("--timeout"), "{}", o.stderr);
    assert_eq!(o.host.trim(), "left 0");
}

#[test]
fn probe_matrix_answers_per_level() {
    let o = case("probe");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.host).expect("probe JSON");
    let answer = |level: &str, probe: &str| -> String {
        v["levels"][level]
            .as_array()
            .unwrap_or_else(|| panic!("no answers for {level}: {}", v["levels"][level]))
            .iter()
            .find(|a| a["probe"] == probe)
            .and_then(|a| a["answer"].as_str())
            .unwrap_or_else(|| panic!("{level} has no {probe}"))
            .to_string()
    };
    let levels = ["process", "container", "vm", "vm+container"];
    // (probe, answer at each level, in the order above)
    let want: &[(&str, [&str; 4])] = &[
        ("host_pids", ["yes", "no", "no", "no"]),
        ("signal_host", ["yes", "no", "no", "no"]),
        ("own_hostname", ["no", "yes", "yes", "yes"]),
        ("load_module", ["yes", "no", "yes", "no"]),
        ("mount", ["yes", "no", "yes", "no"]),
        ("set_clock", ["yes", "no", "yes", "no"]),
        ("host_file", ["yes", "no", "no", "no"]),
        ("host_kernel", ["yes", "yes", "no", "no"]),
        ("kcore_mem", ["yes", "no", "yes", "no"]),
        ("seccomp", ["none", "filter", "none", "filter"]),
        (
            "memory_limit",
            [
                "cgroup, enforced",
                "cgroup, enforced",
                "RAM, enforced",
                "cgroup, enforced",
            ],
        ),
        (
            "fork_bomb",
            ["stopped at 63", "stopped at 63", "all 200", "stopped at 63"],
        ),
    ];
    for (probe, answers) in want {
        for (level, a) in levels.iter().zip(answers) {
            assert_eq!(&answer(level, probe), a, "{probe} at {level}");
        }
    }
    // The runner's L1 has no block device; the guest has its root disk,
    // which the VM's root can open and a container's cannot make.
    assert_eq!(answer("vm", "mknod_block"), "yes");
    assert_eq!(answer("container", "mknod_block"), "no");
    assert_eq!(answer("vm+container", "mknod_block"), "no");
    for level in ["container", "vm", "vm+container"] {
        assert_eq!(answer(level, "host_netifs"), "no", "{level}");
    }
    // The runtime's default set in containers, all of root's elsewhere.
    let caps = |l: &str| answer(l, "capabilities").parse::<u32>().unwrap();
    assert_eq!(caps("container"), 13, "the runtime's default set");
    assert_eq!(caps("vm+container"), caps("container"));
    assert!(caps("process") >= 40 && caps("vm") >= 40);
    // The table: levels across, probes down.
    let header = o.stdout.lines().next().unwrap();
    for level in levels {
        assert!(header.contains(level), "{header}");
    }
    assert!(o.stdout.contains("can read a host file outside its rootfs"));
}

#[test]
fn run_net_publishes_ports_at_both_vm_levels_on_every_host_address() {
    let o = case("run_net");
    let h = &o.host;
    assert!(h.contains("vm rc=0"), "{h}");
    assert!(h.contains("vm+container rc=0"), "{h}");
    assert!(
        h.contains("vm lo=hello-from-net-vm gw=hello-from-net-vm"),
        "{h}"
    );
    assert!(
        h.contains("vm+container lo=hello-from-net-vm-container gw=hello-from-net-vm-container"),
        "two hops: host DNAT to the guest, the guest's DNAT to its container: {h}"
    );
    assert!(h.contains("boot rc=0"), "{h}");
    assert!(
        h.contains("boot lo=hello-from-net-boot gw=hello-from-net-boot"),
        "uvm boot --net bridge -p: {h}"
    );
    assert!(h.contains("left taps=0 ports=0 states=0"), "{h}");
    assert!(
        h.contains("killed ports=1 states=1"),
        "a killed uvm leaves its lease: {h}"
    );
    assert!(h.contains("killed vmdirs=1"), "{h}");
    assert!(
        h.contains("after-gc taps=0 ports=0 states=0 bridge=0 vmdirs=0"),
        "{h}"
    );
}

#[test]
fn a_sandbox_holds_containers_that_share_its_network_and_leaves_nothing() {
    let o = case("sandbox");
    let h = &o.host;
    assert_eq!(field(h, "create"), "rc=0 pod1", "{h}\n{}", o.stderr);
    assert!(
        h.contains("dup rc=125 uvm sandbox: a sandbox named pod1 exists (running)"),
        "{h}"
    );
    assert_eq!(field(h, "web"), "rc=0 id=web", "{h}");
    // Two containers, one network: fetch reached web's server on
    // localhost; each has its own PID 1, hostname and processes.
    // (procs: its shell, ps, and the shell's forks; the VM runs dozens.)
    let procs = |line: &str| -> u32 {
        line.split("procs=")
            .nth(1)
            .and_then(|p| p.split(' ').next()?.parse().ok())
            .unwrap_or(99)
    };
    let fetch = field(h, "fetch");
    assert!(
        fetch.starts_with("rc=3 index-from-web fetch pid=1 host=fetch procs="),
        "{h}"
    );
    assert!(procs(fetch) <= 10, "{h}");
    assert_eq!(field(h, "sleeper"), "rc=0", "{h}");
    assert!(
        h.contains("dup-container rc=125 uvm sandbox: container web exists"),
        "{h}"
    );
    // exec joins the container's namespaces: its hostname, its PID 1.
    let exec = field(h, "exec");
    assert!(
        exec.starts_with("rc=4 out=exec host=sleeper init=sleep procs="),
        "{h}"
    );
    assert!(procs(exec) <= 10 && exec.ends_with(" err=exec-err"), "{h}");
    // The published port reaches web from the host.
    assert_eq!(field(h, "host-fetch"), "index-from-web", "{h}");
    // A detached container's stdout and stderr, followed to its end
    // (sleeper's, once killed).
    assert_eq!(field(h, "logs-f"), "one two", "{h}");
    assert_eq!(field(h, "logs"), "web-err web-started pid=1", "{h}");
    for (c, st) in [
        ("fetch", "stopped"),
        ("sleeper", "running"),
        ("web", "running"),
    ] {
        assert!(h.contains(&format!("ps {c} {st}\n")), "{c} {st}: {h}");
    }
    assert_eq!(field(h, "kill"), "rc=0", "{h}");
    assert_eq!(field(h, "wait"), "rc=137", "killed by SIGKILL: {h}");
    assert!(
        h.contains("no-log rc=125 uvm sandbox: no container nosuch in sandbox pod1"),
        "{h}"
    );
    assert_eq!(field(h, "rm-container"), "rc=0", "{h}");
    assert!(h.contains("ls pod1 running 2\n"), "{h}");
    assert_eq!(field(h, "inspect"), "rc=0", "{h}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("inspect prints JSON");
    assert_eq!(v["name"], "pod1", "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["vcpus"], 2, "{v}");
    assert_eq!(v["memory"], 512u64 << 20, "{v}");
    assert!(
        v["network"]["ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.88.")),
        "{v}"
    );
    let containers = v["containers"].as_array().expect("containers");
    let ids: Vec<&str> = containers.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["fetch", "web"], "{v}");
    let web = &containers[1];
    assert_eq!(web["hostname"], "web", "{v}");
    assert_eq!(web["status"], "running", "{v}");
    assert!(web["pid"].as_i64().is_some_and(|p| p > 1), "{v}");
    assert_eq!(containers[0]["status"], "stopped", "{v}");
    // rm: nothing of the sandbox is left on the host.
    assert_eq!(field(h, "rm"), "rc=0", "{h}");
    let nothing =
        "vmm=0 pumps=0 virtiofsd=0 taps=0 ports=0 dir=0 mounts=0 cgroups=0 vfsdirs=0 leases=0";
    assert_eq!(field(h, "after-rm"), nothing, "{h}");
    // SIGKILL of the VMM: the sandbox shows stopped, refuses work, and
    // uvm gc removes all of it.
    assert_eq!(field(h, "create2"), "rc=0", "{h}");
    assert_eq!(field(h, "w2"), "rc=0", "{h}");
    // (Before the kill, the same count sees every part of it; cgroups:
    // one per hierarchy.)
    let before = field(h, "before-kill");
    assert!(
        before.starts_with("vmm=1 pumps=1 virtiofsd=2 taps=1 ports=1 dir=1 mounts=2 cgroups=")
            && !before.contains("cgroups=0")
            && before.ends_with(" vfsdirs=1 leases=1"),
        "{h}"
    );
    assert!(h.contains("ls2 pod2 stopped\n"), "{h}");
    assert!(
        h.contains(
            "dead rc=125 uvm sandbox: sandbox pod2 is stopped (uvm sandbox rm pod2 removes it)"
        ),
        "{h}"
    );
    assert_eq!(field(h, "gc"), "rc=0 1", "{h}");
    assert_eq!(field(h, "after-gc"), nothing, "{h}");
    assert!(
        h.contains("gone rc=125 uvm sandbox: no sandbox pod2"),
        "{h}"
    );
}

#[test]
fn host_folders_over_virtio_fs_and_a_backend_killed_under_the_guest() {
    let o = case("fs");
    assert_eq!(o.rc, 6, "{}", o.stderr);
    let host = &o.host;
    let big_host = host
        .lines()
        .find_map(|l| l.strip_prefix("host big "))
        .expect("host checksum");
    assert_eq!(
        command_lines(o),
        [
            "from-host",
            "ro-write-refused",
            &format!("big {big_host}"),
            &format!(
                "small {}",
                host.lines()
                    .find_map(|l| l.strip_prefix("host small 200 "))
                    .expect("200 files on the host")
            ),
            "2",
        ]
    );
    assert!(host.contains("host from-guest guest-wrote"), "{host}");
    assert!(host.lines().any(|l| l == "host ro-left hello"), "{host}");
    // The second VM: EIO once virtiofsd is gone, the command's own status,
    // one line from uvm about it, nothing left.
    assert!(host.contains("killed rc=3"), "{host}");
    let out = host
        .lines()
        .find_map(|l| l.strip_prefix("killed out: "))
        .unwrap();
    assert!(
        out.contains("sh: can't create /mnt/data/after: Input/output error")
            && out.contains("after-kill cat: can't open '/mnt/data/ready': Input/output error"),
        "{out}"
    );
    assert!(host.contains("killed err: 1"), "{host}");
    assert!(host.contains("left files=0 daemons=0"), "{host}");
}

#[test]
fn run_volumes_reach_both_vm_levels_over_virtio_fs() {
    let o = case("run_volumes");
    let h = &o.host;
    assert!(
        h.contains("vm rc=0 in-a|in-b|ro-refused|"),
        "{h}\n{}",
        o.stderr
    );
    assert!(
        h.contains("ctr rc=0 in-a|in-b|ro-refused|"),
        "{h}\n{}",
        o.stderr
    );
    assert!(h.contains("host vm-wrote ctr-wrote conf=x "), "{h}");
}

#[test]
fn a_debian_root_boots_its_own_systemd_to_multi_user_and_powers_off() {
    let o = case("systemd");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    let out = &o.stdout;
    assert!(
        out.contains("uvm-init: handing PID 1 over to /lib/systemd/systemd"),
        "{out}"
    );
    assert!(out.contains("uvm-check: running"), "{out}");
    assert!(!out.contains("uvm-check: failed:"), "{out}");
}

#[test]
fn bench_quick_measures_every_level_beside_its_reference() {
    let o = case("bench_quick");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.host).expect("bench JSON");
    let t = &v["targets"];
    let has = |target: &str, metric: &str| {
        t[target][metric]["samples"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    };
    for target in [
        "process",
        "container",
        "vm",
        "vm+container",
        "runc",
        "qemu-microvm",
    ] {
        for metric in [
            "start_s",
            "pss_mib",
            "getpid_ns",
            "cpu_s",
            "disk_write_mb_s",
            "disk_read_mb_s",
            "net_tx_mb_s",
        ] {
            assert!(has(target, metric), "{target} {metric}: {}", t[target]);
        }
    }
    for target in ["vm", "vm+container", "qemu-microvm"] {
        assert!(has(target, "vmm_overhead_mib"), "{target}: {}", t[target]);
    }
    // VM exits are timed where the workload may make them: root in a VM
    // (a container, even in a VM, has neither iopl nor /dev/mem).
    for target in ["vm", "qemu-microvm"] {
        for metric in ["exit_cpuid_us", "exit_pio_us", "exit_mmio_us"] {
            assert!(has(target, metric), "{target} {metric}: {}", t[target]);
        }
    }
    assert!(t["qemu-microvm"]["ratio_vm_over_this"]["start_s"].is_number());
    assert!(t["runc"]["ratio_container_over_this"]["start_s"].is_number());
    // The table, with the ratios, and a drawn plot per metric.
    assert!(o.stdout.contains("ratio vm / qemu-microvm"), "{}", o.stdout);
    assert!(o.stdout.contains("ratio container / runc"), "{}", o.stdout);
    for metric in [
        "start_s",
        "pss_mib",
        "exit_mmio_us",
        "vmm_overhead_mib",
        "net_tx_mb_s",
    ] {
        assert!(
            o.stdout.contains(&format!("plot-ok {metric}.svg")),
            "{}",
            o.stdout
        );
        // Set-up installs librsvg's rsvg-convert: PNGs beside the SVGs.
        assert!(
            o.stdout.contains(&format!("png-ok {metric}.png")),
            "{}",
            o.stdout
        );
    }
}

#[test]
fn containerd_runs_a_pod_in_a_uvm_sandbox_through_the_shim() {
    let o = case("containerd");
    let h = &o.host;
    assert!(
        h.contains("containerd rc=0\nimport rc=0\n"),
        "{h}\n{}",
        o.stderr
    );
    // The guest's kernel, not the runner host's nor L1's.
    let host = String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string();
    let release = o.stdout.trim().strip_prefix("release ").unwrap_or("");
    assert!(
        !release.is_empty() && release != host,
        "{}\n{h}\n{}",
        o.stdout,
        o.stderr
    );
    assert_ne!(release, field(h, "l1-release"), "{h}");
    assert!(
        release.ends_with("-cloud-amd64"),
        "the default guest's kernel: {release}"
    );
    assert_eq!(
        o.rc, 3,
        "ctr run exits with the workload's status\n{h}\n{}",
        o.stderr
    );
    assert!(h.contains("task p1 RUNNING\n"), "{h}\n{}", o.stderr);
    assert!(h.contains("\nkill rc=0\n"), "{h}\n{}", o.stderr);
    assert_eq!(field(h, "exec rc"), "4", "{h}\n{}", o.stderr);
    assert_eq!(
        field(h, "exec-stdout"),
        format!("exec-out {release} exec-stdin"),
        "the exec ran in the guest and had its stdin: {h}"
    );
    assert_eq!(field(h, "exec-stderr"), "exec-err", "{h}");
    assert_eq!(field(h, "exec-again rc"), "5", "{h}\n{}", o.stderr);
    assert_eq!(field(h, "exec-killed rc"), "137", "{h}\n{}", o.stderr);
    assert!(
        field(h, "exec-unknown").contains("not found"),
        "{h}\n{}",
        o.stderr
    );
    assert_eq!(field(h, "pause rc"), "0", "{h}\n{}", o.stderr);
    assert_eq!(field(h, "paused-state"), "PAUSED", "{h}");
    assert!(field(h, "exec-paused").contains("paused"), "{h}");
    assert_eq!(field(h, "resume rc"), "0", "{h}\n{}", o.stderr);
    assert_eq!(field(h, "resumed-state"), "RUNNING", "{h}");
    assert_eq!(field(h, "metrics rc"), "0", "{h}\n{}", o.stderr);
    let metric = |k: &str| -> u64 { field(h, &format!("metric {k}")).parse().unwrap_or(0) };
    // The container's shell and its sleep, at least; memory and CPU used.
    assert!(metric("pids.current") >= 2, "{h}");
    assert!(metric("memory.usage_in_bytes") > 0, "{h}");
    assert!(metric("cpuacct.usage") > 0, "{h}");
    assert!(!h.contains("after p1"), "ctr run deleted its task: {h}");
    assert!(h.contains("rm rc=0\n"), "{h}\n{}", o.stderr);
    assert!(
        h.contains("left containers=0 sandboxes=0 vmm=0 virtiofsd=0 shims=0 mounts=0 cgroups=0\n"),
        "{h}\n{}",
        o.stderr
    );
}

#[test]
fn the_commands_stdio_are_three_streams_apart_from_the_console() {
    let o = case("stdio");
    assert_eq!(o.rc, 4);
    assert_eq!(o.stdout, "out\n");
    assert_eq!(o.stderr, "err\n");
    let h = &o.host;
    let sums: Vec<&str> = field(h, "stdin").split(' ').collect();
    assert_eq!(sums.len(), 2, "{h}");
    assert_eq!(
        sums[0], sums[1],
        "10 MB through stdin came back intact: {h}"
    );
    let big = field(h, "big");
    assert!(big.starts_with("line-150-"), "{h}");
    let bytes: usize = big.rsplit("bytes=").next().unwrap().parse().unwrap();
    assert!(
        bytes > 4096,
        "a script longer than a command line allows: {h}"
    );
    assert_eq!(field(h, "console"), "rc=0 out=0 ready=1", "{h}");
}

#[test]
fn the_agent_runs_containers_and_processes_with_their_streams_and_statuses() {
    let o = case("agent");
    let h = &o.host;
    assert_eq!(o.rc, 7, "the status Shutdown carried: {h}");
    assert_eq!(field(h, "check"), "agent 0.1.0", "{h}");
    // A container from a spec: its own stdout and stderr apart, its status,
    // its hostname (its id), and a write to its overlay.
    assert_eq!(field(h, "c1"), "rc=3", "{h}");
    assert!(h.contains("c1 out=out-c1 pid=1 err=err-c1\n"), "{h}");
    assert_eq!(field(h, "c2"), "rc=0", "{h}");
    assert_eq!(field(h, "c3"), "rc=0", "{h}");
    // An exec into c2: its namespaces (hostname), its own overlay (c1's
    // write is not there), its streams and status.
    assert_eq!(field(h, "e1"), "rc=5", "{h}");
    assert!(h.contains("e1 out=in-c2 written=none err=e1-err\n"), "{h}");
    assert!(
        h.contains("ps c1 stopped \n") || h.contains("ps c1 stopped\n"),
        "{h}"
    );
    assert!(h.contains("ps c2 running e1\n"), "{h}");
    assert!(h.contains("ps c3 running"), "{h}");
    assert_eq!(field(h, "kill"), "rc=0", "{h}");
    assert_eq!(field(h, "c3 wait"), "rc=137", "killed by SIGKILL: {h}");
    assert!(
        h.contains("rm-running rc=125 uvm agent: removing container c2: container c2 is running"),
        "{h}"
    );
    assert_eq!(field(h, "rm-force"), "rc=0", "{h}");
    assert_eq!(field(h, "rm"), "rc=0", "{h}");
    // Bad requests: one line each, status 125, the agent still serving.
    assert!(
        h.contains("bad-spec rc=125 lines=1 uvm agent: creating container bad: container bad: the OCI spec"),
        "{h}"
    );
    assert!(
        h.contains("no-rootfs rc=125 uvm agent: creating container c5:"),
        "{h}"
    );
    assert!(h.contains("/nonexistent"), "{h}");
    assert!(
        h.contains("dup rc=125 uvm agent: creating container c6: container c6 exists"),
        "{h}"
    );
    // Nothing left in the guest: state, cgroups, overlays, the image's
    // mount, processes.
    assert_eq!(
        field(h, "left"),
        "containers=0 cgroups=0 overlays=0 storages=0 procs=0",
        "{h}"
    );
    let stdin: Vec<&str> = field(h, "stdin").split(' ').collect();
    assert_eq!(stdin.len(), 2, "{h}");
    assert_eq!(stdin[0], stdin[1], "10 MB through stdin and back: {h}");
    assert_eq!(field(h, "vm-exec"), "rc=9", "{h}");
    assert!(
        h.contains("not-found rc=127 uvm agent: /no/such/program: command not found"),
        "{h}"
    );
    assert_eq!(field(h, "shutdown"), "rc=0", "{h}");
    assert_eq!(field(h, "after"), "socket=gone", "{h}");
    assert!(
        h.contains("gone rc=125 uvm agent: no agent answered on /dev/shm/uvm-agent-test.sock"),
        "{h}"
    );
}

#[test]
fn vsock_carries_data_both_ways_and_survives_bad_peers() {
    let o = case("vsock");
    assert_eq!(o.rc, 0, "{}", o.stderr);
    let (out, h) = (&o.stdout, &o.host);
    let field = |text: &str, prefix: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|r| r.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    // Host to guest: what the guest received is what the host sent.
    let sent = field(h, "host h2g ");
    assert_eq!(sent.len(), 2, "{h}");
    assert_eq!(sent[0], sent[1], "the host sent its file: {h}");
    assert_eq!(field(out, "guest h2g "), [sent[0].clone()], "{out}");
    // Guest to host: 8 MB, checksums equal.
    let got = field(h, "host g2h ");
    assert_eq!(got.get(1).map(String::as_str), Some("8000000"), "{h}");
    assert_eq!(field(out, "guest g2h ").first(), got.first(), "{out} {h}");
    assert!(h.contains("host many ok=64 of 64"), "{h}");
    assert!(out.contains("guest echo echoed 64"), "{out}");
    // Nobody listens: a clean refusal both ways.
    assert!(out.contains("guest refused"), "{out}");
    assert!(h.contains("host refused-clean"), "{h}");
    // A host peer that reads nothing stalls only its own connection; its
    // SIGKILL ends that connection, as a SIGKILLed client ends the guest's.
    assert!(out.contains("guest after-stall-send ok"), "{out}");
    assert_eq!(
        field(h, "host after ").get(1).map(String::as_str),
        Some("6"),
        "the other connection's line arrived: {h}"
    );
    assert!(out.contains("guest stalled-send-ended"), "{out}");
    assert!(out.contains("guest killed-client-eof"), "{out}");
    assert!(
        h.contains("host socket-left 0"),
        "uvm removes its socket: {h}"
    );
}

#[test]
fn every_vmm_thread_runs_under_one_seccomp_filter_unless_turned_off() {
    let o = case("seccomp");
    let h = &o.host;
    for (tag, want) in [("on", "2 1"), ("off", "0 0")] {
        assert_eq!(field(h, &format!("{tag} rc")), "0", "{h}\n{}", o.stderr);
        let prefix = format!("{tag} thread ");
        let threads: Vec<(&str, &str)> = h
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|l| l.split_once(' '))
            // KVM's own workers (kvm-nx-lpage-recovery on newer kernels)
            // are the kernel's threads, not uvm's.
            .filter(|(name, _)| !name.starts_with("kvm-"))
            .collect();
        for name in [
            "uvm",
            "vcpu0",
            "event-loop",
            "signals",
            "deadline",
            "console",
            "workload",
        ] {
            assert!(
                threads.iter().any(|(n, _)| *n == name),
                "{tag}: no {name} thread: {h}"
            );
        }
        assert!(
            threads.iter().filter(|(n, _)| *n == "workload").count() >= 2,
            "{tag}: the workload's own threads were sampled: {h}"
        );
        for (name, state) in &threads {
            assert_eq!(*state, want, "{tag}: thread {name}: {h}");
        }
    }
}

/// The seconds between the two /proc/uptime readings on the guest's
/// `time DEV A B` line.
fn uptime_span(out: &str, key: &str) -> f64 {
    let v: Vec<f64> = field(out, key)
        .split_whitespace()
        .map(|x| x.parse().unwrap_or_else(|_| panic!("{key}: {out}")))
        .collect();
    v[1] - v[0]
}

#[test]
fn a_rate_limited_disk_writes_at_its_rate_and_a_free_one_faster() {
    let o = case("ratelimit");
    assert_eq!(o.rc, 0);
    let out = &o.stdout;
    assert!(!out.contains("failed"), "{out}");
    let limited = uptime_span(out, "time vda");
    let free = uptime_span(out, "time vdb");
    // The full bucket's 4 MiB go at once; the rate governs the other 20.
    let rate = 20.0 / limited;
    assert!(
        (3.6..=4.4).contains(&rate),
        "bw=4M disk: {rate:.2} MiB/s past its bucket ({limited:.2} s for 24 MiB)"
    );
    let free_rate = 24.0 / free;
    assert!(
        free_rate > 4.4,
        "the free disk: {free_rate:.2} MiB/s ({free:.2} s for 24 MiB), no faster than the limit"
    );
    // The devices' own account (--verbose).
    let err = &o.stderr;
    assert!(
        device_count(err, "ratelimit.lim", "rate limit: throttled ", " times") > 0,
        "{err}"
    );
    assert!(
        device_count(err, "ratelimit.lim", "times, ", " bytes and") >= 24 << 20,
        "{err}"
    );
    let free_line = err
        .lines()
        .find(|l| l.starts_with("uvm: virtio-blk") && l.contains("ratelimit.free"))
        .unwrap_or_else(|| panic!("no --verbose line for the free disk: {err}"));
    assert!(!free_line.contains("rate limit"), "{free_line}");
}

#[test]
fn a_rate_limited_nic_receives_at_its_rate() {
    let o = case("ratelimit_net");
    assert_eq!(o.rc, 0);
    assert_eq!(command_lines(o), ["received"]);
    let h2g: Vec<&str> = field(&o.host, "h2g").split_whitespace().collect();
    assert_eq!(h2g.get(2), Some(&"done"), "{}", o.host);
    let secs = h2g[1].parse::<f64>().unwrap() - h2g[0].parse::<f64>().unwrap();
    // The full bucket's 2 MiB go at once; the rate governs the other 10.
    let rate = 10.0 / secs;
    assert!(
        (1.8..=2.2).contains(&rate),
        "rx_bw=2M NIC: {rate:.2} MiB/s past its bucket ({secs:.2} s for 12 MiB)"
    );
    let err = &o.stderr;
    assert!(
        device_count(err, "uvmrl", "rx rate limit: throttled ", " times") > 0,
        "{err}"
    );
    assert!(
        device_count(err, "uvmrl", "rx rate limit: throttled ", " bytes and") >= 12 << 20,
        "{err}"
    );
    assert!(!err.contains("tx rate limit"), "only RX is limited: {err}");
}

#[test]
fn a_jailed_vmm_runs_as_nobody_with_nothing_but_its_jail() {
    let o = case("jail");
    let h = &o.host;
    let ctx = format!(
        "{h}\n--- uvm's stdout:\n{}\n--- stderr:\n{}",
        o.stdout, o.stderr
    );
    assert!(!field(h, "vmm").starts_with("none"), "{ctx}");
    assert!(
        field(h, "Uid:").split_whitespace().all(|u| u == "65534"),
        "{ctx}"
    );
    assert!(
        field(h, "Gid:").split_whitespace().all(|g| g == "65534"),
        "{ctx}"
    );
    assert_eq!(
        h.lines().find(|l| l.starts_with("Groups:")).map(str::trim),
        Some("Groups:"),
        "{ctx}"
    );
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(h, set), "0000000000000000", "{set} {ctx}");
    }
    assert_eq!(field(h, "NoNewPrivs:"), "1", "{ctx}");
    assert_eq!(field(h, "Seccomp:"), "2", "{ctx}");
    assert_eq!(
        field(h, "NSpid:").split_whitespace().last(),
        Some("1"),
        "PID 1 of its own pid namespace: {ctx}"
    );
    assert_eq!(
        field(h, "mounts"),
        "/ /dev/kvm /dev/net/tun /disk0 /initrd /kernel",
        "only the jail is mounted: {ctx}"
    );
    assert_eq!(field(h, "root"), "dev disk0 initrd kernel", "{ctx}");
    assert_eq!(field(h, "netns-differs"), "yes", "{ctx}");
    assert!(field(h, "cgroup").starts_with("/uvm-jail/uvm-"), "{ctx}");
    assert_eq!(field(h, "cgroup-mem"), (320u64 << 20).to_string(), "{ctx}");
    assert_eq!(field(h, "cgroup-pids"), "64", "{ctx}");
    assert!(
        h.contains("tap-configured") && h.contains("host-ping ok"),
        "{ctx}"
    );
    assert!(
        o.stdout.contains("disk-written") && o.stdout.contains("guest-ping-ok"),
        "{ctx}"
    );
    let echos: u32 = field(&o.stdout, "echo-requests").parse().unwrap_or(0);
    assert!(echos > 0, "the host's ping reached the guest: {ctx}");
    assert_eq!(field(h, "rc"), "7", "the guest's status is uvm's: {ctx}");
    assert_eq!(field(h, "disk"), "jailed-write", "{ctx}");
    assert_eq!(field(h, "jail-left"), "0", "{ctx}");
    assert_eq!(field(h, "cgroup-left"), "no", "{ctx}");
    assert_eq!(
        field(h, "tap-left"),
        "no",
        "the tap went with the jail's namespace: {ctx}"
    );
}

#[test]
fn a_disk_on_a_full_filesystem_gives_the_guest_io_errors_and_keeps_its_data() {
    let o = case("diskfull");
    let ctx = format!(
        "{}\n--- stderr:\n{}\n--- host:\n{}",
        o.stdout, o.stderr, o.host
    );
    assert_eq!(o.rc, 5, "the VMM lived on to the guest's status: {ctx}");
    let out = &o.stdout;
    assert!(out.contains("first-ok"), "{ctx}");
    assert_ne!(
        field(out, "fill rc"),
        "0",
        "the write past the room failed: {ctx}"
    );
    assert!(
        field(out, "io-errors").parse::<u32>().unwrap_or(0) > 0,
        "{ctx}"
    );
    let first = field(out, "sum first");
    assert_eq!(field(out, "sum back"), first, "{ctx}");
    assert_eq!(field(&o.host, "sum host"), first, "{ctx}");
}

#[test]
fn a_killed_jailed_uvm_leaves_nothing_after_gc() {
    let h = &case("jailkill").host;
    assert_eq!(
        h.lines().filter(|l| l.starts_with("killed ")).count(),
        8,
        "{h}"
    );
    assert_eq!(field(h, "gc rc"), "0", "{h}");
    for left in [
        "jail-left",
        "records-left",
        "cgroups-left",
        "taps-left",
        "mounts-left",
        "uvms-left",
    ] {
        assert_eq!(field(h, left), "0", "{left}: {h}");
    }
}
