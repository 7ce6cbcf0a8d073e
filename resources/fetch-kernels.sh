#!/usr/bin/env bash
# Fetch Debian's kernels into the cache without installing them:
#   cloud  -> the default uvm guest kernel (small, virtio + ACPI)
#   amd64  -> the nested runner's L1 kernel (has 9p and kvm_amd)
# The ABI moves between point releases, so it is resolved from the meta
# package each time; an already extracted ABI is reused.
set -euo pipefail
CACHE=${UVM_CACHE:-/var/cache/uvm}
mkdir -p "$CACHE/debs"

resolve_abi() { # meta package -> concrete image package
    apt-cache depends "$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found=1}'
}

fetch() { # flavour
    local meta="linux-image-$1" pkg
    pkg=$(resolve_abi "$meta")
    if [ -z "$pkg" ]; then
        apt-get update -q >/dev/null
        pkg=$(resolve_abi "$meta")
    fi
    [ -n "$pkg" ] || { echo "fetch-kernels: cannot resolve $meta from Debian's packages" >&2; exit 1; }
    local dir="$CACHE/$pkg"
    if [ ! -f "$dir/.complete" ]; then
        echo "fetch-kernels: downloading ${pkg}-unsigned" >&2
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$CACHE/debs" && apt-get download -q "${pkg}-unsigned" >/dev/null 2>&1 ||
            apt-get download -q "$pkg" >/dev/null)
        dpkg-deb -x "$(ls -t "$CACHE"/debs/"${pkg}"*.deb | head -1)" "$dir"
        local kver
        kver=$(ls "$dir/lib/modules")
        depmod -b "$dir" "$kver"
        touch "$dir/.complete"
    fi
    ln -sfn "$dir" "$CACHE/$1"
    echo "$dir"
}

fetch cloud-amd64 >/dev/null
fetch amd64 >/dev/null
echo "fetch-kernels: $(readlink "$CACHE/cloud-amd64") $(readlink "$CACHE/amd64")" >&2
