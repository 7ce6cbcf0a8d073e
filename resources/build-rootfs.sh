#!/bin/sh
# Container images for uvm's runtime.
#
#   resources/build-rootfs.sh DIR [BINARY...]
#       Build (or refresh) a minimal rootfs in DIR: busybox-static with a link
#       per applet, base directories and /etc files, plus each BINARY from the
#       host with the shared libraries and ELF interpreter it needs.
#   resources/build-rootfs.sh --install-deps
#       apt-get install what the runtime, its tests and its benchmark use:
#       busybox-static (images), nftables (--net bridge), iproute2 and
#       util-linux (tests: ip netns, nsenter), runc, crun and hyperfine (bench).
#
# Environment: UVM_CONTAINER, the command running uvm's runtime (default:
# target/release/uvm container, else target/{release,debug}/uvm-container).
set -eu
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--install-deps" ]; then
    pkgs="busybox-static nftables iproute2 util-linux runc crun hyperfine"
    missing=""
    for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
    fi
    exit 0
fi

[ $# -ge 1 ] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
DIR=$1
shift

. resources/uvm-container.sh

set -- $(for b in "$@"; do printf ' --with %s' "$b"; done)
exec $UVM_CONTAINER mkrootfs "$DIR" "$@"
