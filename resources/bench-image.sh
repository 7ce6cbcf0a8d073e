#!/bin/sh
# Image benchmark (not a test): `uvm image import` and the first run of a
# container of the image, against `docker load` and `docker run` when a
# Docker daemon answers (else skipped, and said so), and the disk cost of
# each further container with shared layers against a flattened copy.
# The image is made here from host files: busybox (mkrootfs) plus
# /usr/lib/python3.11 (many small files) as a gzipped base layer, and a
# small upper layer; nothing is pulled. Needs root, GNU tar, gzip.
#
#   resources/bench-image.sh [CONTAINERS]
#
# Environment:
#   UVM_CONTAINER  command running uvm's runtime (see resources/uvm-container.sh)
#   BASE_DIR       host directory put in the base layer (default /usr/lib/python3.11)
#   KEEP=1         keep the work directory
set -eu

N=${1:-10}
BASE_DIR=${BASE_DIR:-/usr/lib/python3.11}
cd "$(dirname "$0")/.."
. resources/uvm-container.sh
[ "$(id -u)" = 0 ] || { echo "bench-image: needs root" >&2; exit 1; }
[ -d "$BASE_DIR" ] || { echo "bench-image: $BASE_DIR is missing (set BASE_DIR)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/uvm-bench-image.XXXXXX)
export UVM_IMAGE_STORE="$WORK/store"
STATE="$WORK/state"
cleanup() {
    i=0
    while [ $i -lt "$N" ]; do $UVM_CONTAINER --root "$STATE" kill "ib$$-$i" >/dev/null 2>&1 || true; i=$((i + 1)); done
    wait 2>/dev/null || true
    $UVM_CONTAINER --root "$STATE" gc >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
sha() { sha256sum "$1" | cut -d' ' -f1; }
blob() { # FILE -> moves it into the layout, prints HEX SIZE
    h=$(sha "$1"); s=$(stat -c %s "$1")
    mv "$1" "$WORK/layout/blobs/sha256/$h"; echo "$h $s"
}

# The image: an OCI layout, then one tar of it (what `docker save` gives).
mkdir -p "$WORK/base" "$WORK/app/srv" "$WORK/layout/blobs/sha256"
$UVM_CONTAINER mkrootfs "$WORK/base" >/dev/null
mkdir -p "$WORK/base/usr/lib" && cp -a "$BASE_DIR" "$WORK/base/usr/lib/"
echo 'print("hello")' > "$WORK/app/srv/app.py"
tar -C "$WORK/base" -cf "$WORK/base.tar" . && tar -C "$WORK/app" -cf "$WORK/app.tar" .
d1=$(sha "$WORK/base.tar"); d2=$(sha "$WORK/app.tar")
gzip -1 "$WORK/base.tar" "$WORK/app.tar"
set -- $(blob "$WORK/base.tar.gz"); l1=$1 s1=$2
set -- $(blob "$WORK/app.tar.gz"); l2=$1 s2=$2
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin:/usr/bin"],"WorkingDir":"/srv","Cmd":["true"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' "$d1" "$d2" > "$WORK/config"
set -- $(blob "$WORK/config"); c=$1 cs=$2
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$c" "$cs" "$l1" "$s1" "$l2" "$s2" > "$WORK/manifest"
set -- $(blob "$WORK/manifest"); m=$1 ms_=$2
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/library/uvm-bench:1","org.opencontainers.image.ref.name":"1"}}]}' "$m" "$ms_" > "$WORK/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$WORK/layout/oci-layout"
tar -C "$WORK/layout" -cf "$WORK/image.tar" .
echo "image: $(du -sh "$WORK/base" | cut -f1) unpacked, $(du -sh "$WORK/image.tar" | cut -f1) archive, $(find "$WORK/base" | wc -l) files"

sync
t=$(date +%s%N); $UVM_CONTAINER image import "$WORK/image.tar" >/dev/null; echo "uvm image import (cold store):          $(ms "$t") ms"
t=$(date +%s%N); $UVM_CONTAINER image import "$WORK/image.tar" --name again:1 >/dev/null; echo "uvm image import (layers present):      $(ms "$t") ms"
run() { $UVM_CONTAINER --root "$STATE" run --net none "$@"; }
t=$(date +%s%N); run --image uvm-bench:1 -- true; echo "uvm container run --image (first run):  $(ms "$t") ms"
t=$(date +%s%N); run --image uvm-bench:1 -- true; echo "uvm container run --image (second run): $(ms "$t") ms"
t=$(date +%s%N); cp -a "$WORK/base" "$WORK/flat"; echo "flattening a copy for one container:    $(ms "$t") ms"
t=$(date +%s%N); run --rootfs "$WORK/flat" -- true; echo "uvm container run --rootfs (the copy):  $(ms "$t") ms"
rm -rf "$WORK/flat"

if docker info >/dev/null 2>&1; then
    docker rmi -f uvm-bench:1 >/dev/null 2>&1 || true
    t=$(date +%s%N); docker load -i "$WORK/image.tar" >/dev/null; echo "docker load:                            $(ms "$t") ms"
    t=$(date +%s%N); docker run --rm --network none uvm-bench:1 true; echo "docker run (first run):                 $(ms "$t") ms"
    docker rmi -f uvm-bench:1 >/dev/null 2>&1 || true
else
    echo "docker: skipped (no Docker daemon answers: docker info fails)"
fi

# Disk: N containers at once on the shared layers, against N flattened copies.
i=0
while [ $i -lt "$N" ]; do
    run --name "ib$$-$i" --image uvm-bench:1 -- sh -c 'echo $$ > /tmp/pid; sleep 60' &
    i=$((i + 1))
done
t=$(date +%s%N)
while [ "$(find "$STATE/overlay" -name pid 2>/dev/null | wc -l)" -lt "$N" ]; do
    [ "$(ms "$t")" -lt 30000 ] || { echo "bench-image: containers did not start" >&2; exit 1; }
    sleep 0.1
done
layers_kb=$(du -sk "$UVM_IMAGE_STORE/layers" | cut -f1)
uppers_kb=$(du -sk "$STATE/overlay" | cut -f1)
flat_kb=$(du -sk "$WORK/base" | cut -f1)
echo "store (layers, once):                   $layers_kb KiB"
echo "$N running containers' upper+work dirs:  $uppers_kb KiB ($((uppers_kb / N)) KiB each)"
echo "flattened copies instead:               $((flat_kb * N)) KiB ($flat_kb KiB each)"
