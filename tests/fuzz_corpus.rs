//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`)
//! and every crash kept as a regression input (`fuzz/regressions/<target>/`)
//! through the same body cargo-fuzz runs, on the stable toolchain: `make
//! test` checks them without cargo-fuzz or nightly.

use std::path::{Path, PathBuf};

type Body = fn(&[u8]);

/// Every target in fuzz/fuzz_targets, with its body.
const TARGETS: &[(&str, Body)] = &[
    ("block_request", uvm_devices::fuzzing::block_request),
    ("cli_specs", uvm::fuzzing::cli_specs),
    ("mmio", uvm_devices::fuzzing::mmio),
    ("net_rx", uvm_devices::fuzzing::net_rx),
    ("net_tx", uvm_devices::fuzzing::net_tx),
    ("oci_bundle", uvm_runtime::fuzzing::oci_bundle),
    ("virtqueue", uvm_devices::fuzzing::virtqueue),
    ("vsock_tx", uvm_devices::fuzzing::vsock_tx),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("reading a corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs `body` on every file of `dir`; returns how many ran and which
/// panicked.
fn replay(body: Body, dir: &Path) -> (usize, Vec<String>) {
    let mut failed = Vec::new();
    let inputs = files(dir);
    for f in &inputs {
        let data = std::fs::read(f).expect("reading a corpus file");
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    (inputs.len(), failed)
}

#[test]
fn every_fuzz_target_is_replayed() {
    let mut names: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    names.sort();
    let listed: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, listed,
        "fuzz/fuzz_targets and this test's TARGETS differ"
    );
}

fn check(target: &str) {
    let body = TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, b)| *b)
        .expect("a target in TARGETS");
    let dir = fuzz_dir();
    let (corpus, mut failed) = replay(body, &dir.join("corpus").join(target));
    assert!(
        corpus > 0,
        "fuzz/corpus/{target} is empty: commit a minimized corpus (see README, Fuzzing)"
    );
    let (_, regressions) = replay(body, &dir.join("regressions").join(target));
    failed.extend(regressions);
    assert!(failed.is_empty(), "{target} panics on: {failed:#?}");
}

#[test]
fn block_request_corpus() {
    check("block_request");
}

#[test]
fn cli_specs_corpus() {
    check("cli_specs");
}

#[test]
fn mmio_corpus() {
    check("mmio");
}

#[test]
fn net_rx_corpus() {
    check("net_rx");
}

#[test]
fn net_tx_corpus() {
    check("net_tx");
}

#[test]
fn oci_bundle_corpus() {
    check("oci_bundle");
}

#[test]
fn virtqueue_corpus() {
    check("virtqueue");
}

#[test]
fn vsock_tx_corpus() {
    check("vsock_tx");
}
