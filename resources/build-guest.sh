#!/usr/bin/env bash
# Builds uvm's default guest under build/guest/:
#   vmlinuz          Debian's cloud kernel (fetched by fetch-kernels.sh)
#   initramfs.cpio   uvm-init as /init (static Rust), busybox-static, uvm's
#                    guest agent and container runtime (/bin/uvm-agent, also
#                    /bin/uvm-container, static), nft
#                    with its libraries, and the kernel modules the guest
#                    needs with their modules.dep and modules.alias
#                    and uvm-probe
#   uvm-probe        the isolation probe (static), for uvm probe and bench
# Uncompressed on purpose: the kernel copies it in less time than it would
# take to decompress it, above all under nested virtualisation.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${UVM_CACHE:-/var/cache/uvm}
OUT=$ROOT/build/guest
# Modules the guest loads at boot (dependencies are resolved from modules.dep).
MODULES=(virtio_mmio virtio_blk virtio_net pvpanic_mmio overlay vmw_vsock_virtio_transport virtiofs)
# Modules shipped but loaded only when the kernel asks for them (busybox
# modprobe, through modules.alias): the container runtime's bridge mode,
# i.e. bridge, veth and macvlan links and the nftables expressions of its NAT
# table and of a container's own firewall (--allow-in).
ON_DEMAND=(bridge veth macvlan nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_fib_ipv4)
# Dynamically linked programs shipped with their libraries: nft, for the
# runtime's NAT rules.
PROGRAMS=(/usr/sbin/nft)

step() { echo "build-guest: $*" >&2; }

"$ROOT/resources/fetch-kernels.sh"
KROOT=$(readlink -f "$CACHE/cloud-amd64")
KVER=$(ls "$KROOT/lib/modules")

step "building uvm-init, uvm-container, uvm-agent and uvm-probe (static)"
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet --target x86_64-unknown-linux-gnu -p uvm-init --bin uvm-init -p uvm-runtime --bin uvm-container \
    -p uvm-probe --bin uvm-probe -p uvm-agent --bin uvm-agent)
INIT=$ROOT/target/x86_64-unknown-linux-gnu/release/uvm-init
CONTAINER=$ROOT/target/x86_64-unknown-linux-gnu/release/uvm-container
PROBE=$ROOT/target/x86_64-unknown-linux-gnu/release/uvm-probe
AGENT=$ROOT/target/x86_64-unknown-linux-gnu/release/uvm-agent
for bin in "$INIT" "$CONTAINER" "$PROBE" "$AGENT"; do
    if ! file -b "$bin" | grep -q "static"; then
        echo "build-guest: $bin is not static" >&2
        exit 1
    fi
done

BUSYBOX=$(command -v busybox || true)
if [ -z "$BUSYBOX" ] || ! file -b "$(readlink -f "$BUSYBOX")" | grep -q "static"; then
    echo "build-guest: busybox-static is missing: apt-get install busybox-static" >&2
    exit 1
fi

step "assembling the initramfs (kernel $KVER)"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc/uvm,proc,sys,dev,run,tmp,root,mnt,lib/modules/"$KVER"}
install -m 0755 "$INIT" "$STAGE/init"
# Stripped: symbols would double the image and the boot's copy of it.
# The agent is a multi-call binary: as uvm-container it is the runtime's
# command line, so the image holds the runtime once.
install -m 0755 --strip "$AGENT" "$STAGE/bin/uvm-agent"
ln -s uvm-agent "$STAGE/bin/uvm-container"
# The probe too: the guest end of the vsock tests and benchmarks.
install -m 0755 --strip "$PROBE" "$STAGE/bin/uvm-probe"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"$STAGE/etc/group"
# busybox with its applets, and the PROGRAMS with the libraries their ELF
# headers name: the runtime's own image builder (it keeps the files above).
"$CONTAINER" mkrootfs "$STAGE" --busybox "$BUSYBOX" \
    $(printf -- '--with %s ' "${PROGRAMS[@]}") >/dev/null
# nft resolves protocol names (tcp, udp) through it.
install -m 0644 /etc/protocols "$STAGE/etc/protocols"

MODDIR=$KROOT/lib/modules/$KVER
mapfile -t KOS < <("$ROOT/resources/module-closure.sh" "$KROOT" "$KVER" "${MODULES[@]}" "${ON_DEMAND[@]}")
for ko in "${KOS[@]}"; do
    mkdir -p "$STAGE/lib/modules/$KVER/$(dirname "$ko")"
    cp "$MODDIR/$ko" "$STAGE/lib/modules/$KVER/$ko"
done
# Only the lines of the modules shipped, so the init never looks for others.
grep -F -f <(printf '%s:\n' "${KOS[@]}") "$MODDIR/modules.dep" >"$STAGE/lib/modules/$KVER/modules.dep"
# The aliases the kernel asks for (rtnl-link-veth, nft-expr-masq, ...), for
# the shipped modules only.
names=$(printf '%s\n' "${KOS[@]}" | sed 's|.*/||; s|\.ko.*||; s|-|_|g')
awk 'NR==FNR {want[$1]=1; next} $1=="alias" && want[$3]' <(echo "$names") "$MODDIR/modules.alias" \
    >"$STAGE/lib/modules/$KVER/modules.alias"
printf '%s\n' "${MODULES[@]}" >"$STAGE/etc/uvm/modules"

mkdir -p "$OUT"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$OUT/initramfs.cpio.tmp"
mv "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
ln -sfn "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
# The isolation probe, the same static binary at every level (uvm probe
# puts it into the probe's root folder).
install -m 0755 --strip "$PROBE" "$OUT/uvm-probe.tmp"
mv "$OUT/uvm-probe.tmp" "$OUT/uvm-probe"
step "$OUT/vmlinuz -> $(readlink "$OUT/vmlinuz"), initramfs $(du -h "$OUT/initramfs.cpio" | cut -f1)"
