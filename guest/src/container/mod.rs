//! uvm's container runtime (OCI runtime-spec data model).
pub mod cli;
