//! uvm's device models. They know nothing about the CLI or KVM: the VMM puts
//! them on a [`bus::Bus`] and forwards guest port-I/O and MMIO accesses.

pub mod bus;
pub mod legacy;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
#[doc(hidden)]
pub mod fuzzing;
