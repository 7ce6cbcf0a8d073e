//! The body of the `oci_bundle` cargo-fuzz target (`fuzz/`), here so that
//! the fuzzer and a stable test replaying its corpus call the same code.
//! Not an API: nothing in uvm calls this module.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::spec::{self, RunOptions, Source};

/// A bundle in /dev/shm (tmpfs: writing config.json costs no disk I/O)
/// with an empty rootfs, made once per process; removed by nobody, as the
/// fuzzer ends by signal as often as not, so it is named after the pid.
fn bundle() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/uvm-fuzz-bundle-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).expect("fuzz bundle");
        dir
    })
}

/// A bundle's config.json through everything `uvm container run --bundle`
/// and `uvm oci create` do with it before they touch the system: the spec
/// parsed and completed ([`spec::prepare`]), its namespaces, seccomp
/// profile (compiled to BPF), cgroup resources (checked) and device rules.
/// Namespaces joined by path are left out: opening a path the input names
/// could block (a FIFO) and proves nothing about the parser.
pub fn oci_bundle(data: &[u8]) {
    let dir = bundle();
    std::fs::write(dir.join("config.json"), data).expect("writing config.json");
    let opts = RunOptions::new(Source::Bundle(dir.clone()), Vec::new());
    let Ok(prepared) = spec::prepare(&opts, "fuzz") else {
        return;
    };
    let spec = &prepared.spec;
    let linux = spec.linux().as_ref();
    let joins = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.path().is_some()));
    if !joins {
        let _ = crate::process::Namespaces::from_spec(spec);
    }
    if let Some(profile) = linux.and_then(|l| l.seccomp().as_ref()) {
        let _ = crate::seccomp::compile(profile);
    }
    let resources = spec::resources(spec);
    let _ = resources.validate();
    if let Ok(rules) = crate::device_filter::parse_rules(&resources.devices) {
        let prog = crate::device_filter::compile(&rules);
        assert!(!prog.is_empty(), "a device filter with no instructions");
    }
}
