//! The default guest that set-up prepares: Debian's cloud kernel and uvm's
//! initramfs, under `build/guest/` in the source tree.

use std::path::{Path, PathBuf};

use crate::error::Error;

pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initramfs.cpio";

/// Finds a file of the source tree: next to the binary's `target/<profile>/`
/// first (a moved checkout), then where this binary was built from.
pub fn repo_file(rel: &str) -> Option<PathBuf> {
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(Path::to_path_buf));
    let from_build = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    [from_exe, from_build]
        .into_iter()
        .flatten()
        .map(|root| root.join(rel))
        .find(|p| p.exists())
}

/// `UVM_GUEST_DIR`, or `build/guest` of the source tree.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("UVM_GUEST_DIR")
        .map(PathBuf::from)
        .or_else(|| repo_file("build/guest"))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build/guest"))
}

pub fn default_file(name: &str) -> Result<PathBuf, Error> {
    let p = guest_dir().join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::DefaultGuestMissing(p))
    }
}
