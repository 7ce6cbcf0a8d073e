//! Helpers shared by the runtime's integration tests.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The directories a test's cgroup parent has under each hierarchy.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    [
        "memory", "cpu", "cpuacct", "cpuset", "blkio", "pids", "devices", "freezer", "unified",
    ]
    .iter()
    .map(|c| Path::new("/sys/fs/cgroup").join(c).join(parent))
    .collect()
}

/// No container cgroup left under `parent`.
pub fn assert_no_cgroups(parent: &str) {
    for d in cgroup_dirs(parent) {
        let subs: Vec<_> = std::fs::read_dir(&d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(subs.is_empty(), "cgroups left: {subs:?}");
    }
}

/// Removes the cgroup parent itself. A child's removal completes
/// asynchronously (v1 cpuset takes a while): its parent says EBUSY meanwhile.
pub fn remove_cgroup_parent(parent: &str) {
    for d in cgroup_dirs(parent) {
        for _ in 0..40 {
            match std::fs::remove_dir(&d) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                _ => break,
            }
        }
    }
}

// Not every test binary checks for root.
#[allow(dead_code)]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns from the test (it passes, saying so) unless run as root.
#[allow(unused_macros)]
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// The test's scratch directory (cargo's, under target/).
#[allow(dead_code)] // not every test binary needs one
pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The command's stdout, failing the test unless it succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// One line of error containing `needle`, exit `code`.
pub fn assert_fails(out: &Output, code: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

/// A busybox rootfs (plus GNU `ls` and its libraries), built once per test
/// binary by `uvm-container mkrootfs`.
#[allow(dead_code)] // oci.rs makes bundles of its own
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    ROOTFS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rootfs");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_uvm-container"))
            .args(["mkrootfs", dir.to_str().unwrap(), "--with", "/bin/ls"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mkrootfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}
