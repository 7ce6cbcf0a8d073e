#!/usr/bin/env bash
# Installs what uvm's build, tests and benchmarks need on a fresh Debian 12
# machine (idempotent: quick when everything is there).
set -euo pipefail
PKGS=(qemu-system-x86 busybox-static cpio kmod e2fsprogs file iproute2 nftables netbase python3 runc util-linux procps librsvg2-bin)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
"$(dirname "$0")/fetch-kernels.sh"
