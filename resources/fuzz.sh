#!/usr/bin/env bash
# Runs uvm's cargo-fuzz targets one after the other (`make fuzz`), each from
# its committed corpus (fuzz/corpus/T, read only) plus a scratch corpus of
# this run's finds, and prints one line per target: executions, exec/s,
# coverage, new inputs, crashes.
#
#   resources/fuzz.sh [--time SECONDS] [--runs N] [--work DIR] [TARGET...]
#
# --time: seconds per target (default 30); --runs: stop a target after N
# executions as well (default: no limit); --work: where scratch corpora and
# logs go (default /tmp/uvm-fuzz). No TARGET: all of fuzz/fuzz_targets.
# Exit status: 0 every target ran clean, 1 a target crashed (its input is
# in fuzz/artifacts/T/), 2 the tools could not be had or a build failed.
set -uo pipefail
cd "$(dirname "$0")/.."
time=30 runs=-1 work=/tmp/uvm-fuzz
while [ $# -gt 0 ]; do
    case "$1" in
        --time) time=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal || exit 2
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz || exit 2
fi
# Low priority: the fuzzer takes a whole core for as long as it is let.
nice -n 19 cargo +nightly fuzz build || exit 2
mkdir -p "$work"
status=0
printf '%-14s %12s %8s %6s %6s %5s %s\n' target executions exec/s cov ft new result
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "fuzz/corpus/$t"
    log="$work/$t.log"
    # -timeout: an input taking 10 s is a hang, reported as a crash.
    nice -n 19 cargo +nightly fuzz run "$t" "$work/corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$time" -runs="$runs" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    new=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    if [ $rc -eq 0 ]; then
        result=ok
    else
        result="CRASH (see $log; input in fuzz/artifacts/$t/)"
        status=1
    fi
    printf '%-14s %12s %8s %6s %6s %5s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${new:-?}" "$result"
done
exit $status
