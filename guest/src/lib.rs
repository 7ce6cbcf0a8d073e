//! What runs inside a uvm guest: the init (PID 1) and the container runtime.
//! The host's `uvm container` reuses the same runtime code.

pub mod container;
pub mod init;
pub mod netlink;
pub mod protocol;
