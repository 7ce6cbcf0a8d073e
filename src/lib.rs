//! uvm: a KVM microVM launcher. The binary is a thin CLI over this library:
//! cli -> vmm -> devices -> rust-vmm crates.

pub mod acpi;
pub mod agent;
pub mod bench;
pub mod check;
pub mod cli;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod guest_image;
pub mod jail;
pub mod run;
pub mod sandbox;
pub mod stderr;
pub mod vmm;

/// When this process started, as near as it can tell: `main` marks it
/// first thing; the VMM's timeline counts from it.
pub fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}
