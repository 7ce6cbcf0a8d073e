#!/usr/bin/env bash
# module-closure.sh KERNEL_ROOT KVER MODULE... : .ko paths (relative to
# lib/modules/KVER) of MODULEs and their dependencies, dependencies first.
set -euo pipefail
root=$1 kver=$2; shift 2
for m in "$@"; do
    modprobe -d "$root" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}' ||
        { echo "module-closure: unknown module $m" >&2; exit 1; }
done | sed "s|^$root/lib/modules/$kver/||" | awk '!seen[$0]++'
