#!/usr/bin/env bash
# Installs what uvm's build, tests and benchmarks need on a fresh Debian 12
# machine (idempotent: quick when everything is there).
set -euo pipefail
# libseccomp-dev, libcap-ng-dev: what virtiofsd builds against.
PKGS=(qemu-system-x86 busybox-static cpio kmod e2fsprogs file iproute2 nftables netbase python3 runc util-linux procps librsvg2-bin libseccomp-dev libcap-ng-dev pkg-config)
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
# virtio-fs's backend (uvm boot --fs): the Rust virtiofsd, run as a program
# of its own (it pins older rust-vmm crates than uvm's).
VIRTIOFSD_VERSION=1.14.0
if ! "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd" --version 2>/dev/null | grep -q "$VIRTIOFSD_VERSION"; then
    echo "setup: building virtiofsd $VIRTIOFSD_VERSION (cargo install, a few minutes)" >&2
    cargo install --quiet --locked --version "$VIRTIOFSD_VERSION" virtiofsd
fi
"$(dirname "$0")/fetch-kernels.sh"
