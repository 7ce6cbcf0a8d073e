# Sourced by the scripts that drive uvm's container runtime from the shell:
# sets UVM_CONTAINER (unless the caller did) to the command that runs it,
# `uvm container` if built, else the standalone uvm-container; the paths are
# absolute, so the caller may change directory afterwards. Expects the
# repository root as the working directory.
if [ -z "${UVM_CONTAINER:-}" ]; then
    if [ -x target/release/uvm ] && target/release/uvm container --help >/dev/null 2>&1; then
        UVM_CONTAINER="$PWD/target/release/uvm container"
    elif [ -x target/release/uvm-container ]; then
        UVM_CONTAINER="$PWD/target/release/uvm-container"
    elif [ -x target/debug/uvm-container ]; then
        UVM_CONTAINER="$PWD/target/debug/uvm-container"
    else
        echo "${0##*/}: build first (cargo build --release -p uvm-runtime), or set UVM_CONTAINER" >&2
        exit 1
    fi
fi
