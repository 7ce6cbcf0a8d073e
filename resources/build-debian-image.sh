#!/usr/bin/env bash
# A stock Debian 12 with systemd as its init, as a raw ext4 image, for
#   uvm boot --root IMG --cmdline init=/lib/systemd/systemd
#
#   resources/build-debian-image.sh [OUT]   (default $UVM_CACHE/debian-systemd.ext4)
#
# debootstrap (minbase, systemd-sysv and udev) from the mirror apt uses.
# One unit is uvm's own: uvm-check.service prints what
# `systemctl is-system-running --wait` says on the console, then powers
# the system off (the boot tests' probe of a distribution's init). The
# image is cached, keyed by this script's hash; prints its path.
set -euo pipefail
CACHE=${UVM_CACHE:-/var/cache/uvm}
OUT=${1:-$CACHE/debian-systemd.ext4}
key=$(sha256sum "$0" | cut -c1-16)
if [ -f "$OUT" ] && [ "$(cat "$OUT.key" 2>/dev/null)" = "$key" ]; then
    echo "$OUT"
    exit 0
fi
step() { echo "build-debian-image: $*" >&2; }
if ! command -v debootstrap >/dev/null; then
    step "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi
MIRROR=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
mkdir -p "$(dirname "$OUT")"
STAGE=$(mktemp -d /var/tmp/uvm-debian.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
step "debootstrap bookworm (minbase, systemd-sysv, udev) from $MIRROR: a few minutes"
debootstrap --variant=minbase --include=systemd-sysv,udev bookworm "$STAGE" "$MIRROR" >"$STAGE.log" 2>&1 || {
    tail -n 20 "$STAGE.log" >&2
    exit 1
}
rm -f "$STAGE.log"
# No package cache or lists in the image; a hostname and an empty fstab
# (the root is mounted by uvm-init).
rm -rf "$STAGE"/var/cache/apt/archives/*.deb "$STAGE"/var/lib/apt/lists/*
echo debian-uvm >"$STAGE/etc/hostname"
: >"$STAGE/etc/fstab"
# machine-id is made at first boot.
: >"$STAGE/etc/machine-id"
cat >"$STAGE/etc/systemd/system/uvm-check.service" <<'EOF'
[Unit]
Description=uvm's boot check: the system's state, then power-off
After=multi-user.target

[Service]
# Not oneshot: start-up is over only once this has started, and
# is-system-running --wait waits for exactly that.
Type=simple
ExecStart=/bin/sh -c 'echo "uvm-check: $(systemctl is-system-running --wait)"; systemctl --no-pager --failed --plain --no-legend | sed "s/^/uvm-check: failed: /"; systemctl poweroff'
StandardOutput=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/uvm-check.service "$STAGE/etc/systemd/system/multi-user.target.wants/uvm-check.service"
step "making the ext4 image"
rm -f "$OUT.tmp"
truncate -s 1G "$OUT.tmp"
mkfs.ext4 -q -F -L debian -d "$STAGE" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$key" >"$OUT.key"
step "$OUT ($(du -h "$OUT" | cut -f1) used of 1G)"
echo "$OUT"
