//! Legacy PC devices on the port-I/O bus: the 16550 console, the i8042 (its
//! only job here is the CPU reset line), the ACPI power registers of the
//! hardware-reduced FADT, pvpanic, and uvm's guest status port.
//!
//! Devices that end or change the life of the VM report a [`GuestEvent`] to a
//! [`EventSink`]; the VMM decides what each one means for the process.

pub mod console_ring;
pub mod i8042;
pub mod power;
pub mod pvpanic;
pub mod serial;
pub mod status;

use std::sync::Arc;

/// Something the guest did that the VMM must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// uvm's init reached user space and is about to run the workload.
    Ready,
    /// uvm's init reports the workload's exit status; the VM should stop.
    ExitStatus(u8),
    /// ACPI S5 (the guest powered off).
    PowerOff,
    /// CPU reset requested (i8042 pulse or ACPI reset register).
    Reset,
    /// The guest kernel panicked (pvpanic).
    Panic,
}

/// Where devices send [`GuestEvent`]s. Cheap to clone, callable from any thread.
pub type EventSink = Arc<dyn Fn(GuestEvent) + Send + Sync>;

/// A sink that records what it is sent, for device tests.
#[cfg(test)]
pub(crate) fn recording_sink() -> (EventSink, Arc<std::sync::Mutex<Vec<GuestEvent>>>) {
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let s = seen.clone();
    (Arc::new(move |e| s.lock().unwrap().push(e)), seen)
}

/// A host end that takes every byte at once and keeps them, for tests of
/// what devices write out.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct KeepAll(pub Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for KeepAll {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
