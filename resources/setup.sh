#!/usr/bin/env bash
# Installs what uvm's build, tests and benchmarks need on a fresh Debian 12
# machine (idempotent: quick when everything is there).
set -euo pipefail
# libseccomp-dev, libcap-ng-dev: what virtiofsd builds against. containerd
# (with ctr and runc's shim): the tests start one of their own for the shims.
PKGS=(qemu-system-x86 busybox-static cpio kmod e2fsprogs file iproute2 nftables netbase python3 runc util-linux procps tmux librsvg2-bin libseccomp-dev libcap-ng-dev pkg-config containerd)
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
# QEMU from bookworm-backports (10.0) where the machine is Debian 12: the
# nested runner is QEMU's software CPU emulating SVM, and 7.2's wedged L1
# twice in one boot suite (2026-12-07) where 10.0 ran the same suite clean
# and a third faster. It is also the bench's reference VMM.
QEMU_MIN=1:10.0
qemu_have=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if ! dpkg --compare-versions "${qemu_have:-0}" ge "$QEMU_MIN" && grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
    echo "setup: installing QEMU from bookworm-backports (have ${qemu_have:-none})" >&2
    export DEBIAN_FRONTEND=noninteractive
    list=/etc/apt/sources.list.d/uvm-bookworm-backports.list
    grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ ||
        echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$list"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null ||
        echo "setup: QEMU from bookworm-backports could not be installed; keeping QEMU ${qemu_have:-as it is}" >&2
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
