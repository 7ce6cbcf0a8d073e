//! The i8042 keyboard controller, present so that a guest `reboot`
//! (`reboot=k`: pulse of the CPU reset line through command 0xFE) ends the VM.

use std::convert::Infallible;

use vm_superio::{I8042Device, Trigger};

use super::{EventSink, GuestEvent};
use crate::BusDevice;

/// The controller sits at ports 0x60 (data) and 0x64 (command/status).
pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;

struct ResetLine(EventSink);

impl Trigger for ResetLine {
    type E = Infallible;
    fn trigger(&self) -> Result<(), Infallible> {
        (self.0)(GuestEvent::Reset);
        Ok(())
    }
}

pub struct I8042 {
    dev: I8042Device<ResetLine>,
}

impl I8042 {
    pub fn new(sink: EventSink) -> Self {
        Self {
            dev: I8042Device::new(ResetLine(sink)),
        }
    }
}

/// The data and command ports are the device's only registers.
fn port_offset(offset: u64) -> Option<u8> {
    u8::try_from(offset)
        .ok()
        .filter(|o| u64::from(*o) == 0 || u64::from(*o) == COMMAND_PORT - DATA_PORT)
}

/// Placed on the bus as one window 0x60..=0x64; offsets are relative to 0x60.
impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, port_offset(offset)) {
            ([byte], Some(off)) => *byte = self.dev.read(off),
            (data, _) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Some(off)) = (data, port_offset(offset)) {
            let _ = self.dev.write(off, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reports_reset() {
        let (sink, seen) = crate::legacy::recording_sink();
        let mut dev = I8042::new(sink);
        dev.write(4, &[0xfe]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestEvent::Reset]);
        // Other commands and the data port do not reset.
        dev.write(0, &[0xfe]);
        dev.write(4, &[0x20]);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
