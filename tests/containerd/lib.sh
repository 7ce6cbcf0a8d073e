# A containerd of a test's own, and an image made from files: sourced by
# tests/containerd.rs (on the host), the boot session's containerd case (in
# the runner's L1) and resources/bench-containerd.sh. Nothing here touches
# the system's containerd: its config, root, state, sockets and log are
# all under the folder given to ctrd_start.

# ctrd_start DIR: starts containerd with everything under DIR (made if
# needed) and returns once it answers. The shims it starts find
# containerd-shim-NAME-v2 on its PATH: put the uvm shim's folder first.
ctrd_start() {
    CTRD=$1
    mkdir -p "$CTRD/root" "$CTRD/state"
    cat >"$CTRD/config.toml" <<CONF
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
# Kubernetes' CRI is not what the tests drive.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD/containerd.sock"
[ttrpc]
  address = "$CTRD/containerd.sock.ttrpc"
[debug]
  address = "$CTRD/debug.sock"
CONF
    containerd --config "$CTRD/config.toml" >"$CTRD/containerd.log" 2>&1 &
    CTRD_PID=$!
    local i
    for i in $(seq 300); do
        ctr -a "$CTRD/containerd.sock" version >/dev/null 2>&1 && return 0
        kill -0 $CTRD_PID 2>/dev/null || break
        sleep 0.1
    done
    echo "containerd did not start; its log:" >&2
    tail -n 20 "$CTRD/containerd.log" >&2
    return 1
}

# ctrd ARGS...: ctr against that containerd, in the tests' namespace.
ctrd() { ctr -a "$CTRD/containerd.sock" -n uvm-test "$@"; }

# ctrd_stop: stops it (after the tests removed their containers).
ctrd_stop() {
    kill $CTRD_PID 2>/dev/null
    wait $CTRD_PID 2>/dev/null
    return 0
}

# blob DIR FILE: moves FILE into the layout's blobs as its digest; prints
# "sha256:HEX SIZE".
blob() {
    local sum size
    sum=$(sha256sum <"$2" | cut -d' ' -f1)
    size=$(stat -c %s "$2")
    mv "$2" "$1/blobs/sha256/$sum"
    echo "sha256:$sum $size"
}

# ctrd_image ROOTFS NAME: imports the folder ROOTFS as image NAME, one
# uncompressed layer in an OCI layout tarball made here.
ctrd_image() {
    local rootfs=$1 name=$2 l
    l=$(mktemp -d "${TMPDIR:-/tmp}/uvm-image.XXXXXX")
    mkdir -p "$l/blobs/sha256"
    tar -C "$rootfs" --numeric-owner -cf "$l/layer" . || return 1
    local layer config manifest
    layer=($(blob "$l" "$l/layer"))
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "${layer[0]}" >"$l/config"
    config=($(blob "$l" "$l/config"))
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
        "${config[0]}" "${config[1]}" "${layer[0]}" "${layer[1]}" >"$l/manifest"
    manifest=($(blob "$l" "$l/manifest"))
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s"}}]}' \
        "${manifest[0]}" "${manifest[1]}" "$name" >"$l/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$l/oci-layout"
    tar -C "$l" -cf "$l.tar" oci-layout index.json blobs &&
        ctrd image import --snapshotter native "$l.tar" >/dev/null
    local rc=$?
    rm -rf "$l" "$l.tar"
    return $rc
}
