//! The body of the `oci_bundle` cargo-fuzz target (`fuzz/`), here so that
//! the fuzzer and a stable test replaying its corpus call the same code.
//! Not an API: nothing in uvm calls this module.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::spec::{self, RunOptions, Source};

const BUNDLE_PREFIX: &str = "uvm-fuzz-bundle-";

/// A bundle in /dev/shm (tmpfs: writing config.json costs no disk I/O)
/// with an empty rootfs, made once per process and named after its pid.
/// The fuzzer ends by signal as often as not, so nothing removes it on the
/// way out: each new one removes those whose process is gone instead.
fn bundle() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        for e in std::fs::read_dir(shm).into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(BUNDLE_PREFIX));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = shm.join(format!("{BUNDLE_PREFIX}{}", std::process::id()));
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
