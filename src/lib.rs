//! uvm: a KVM microVM launcher. The binary is a thin CLI over this library:
//! cli -> vmm -> devices -> rust-vmm crates.

pub mod acpi;
pub mod agent;
pub mod bench;
pub mod check;
pub mod cli;
pub mod error;
pub mod guest_image;
pub mod jail;
pub mod run;
pub mod sandbox;
pub mod vmm;
