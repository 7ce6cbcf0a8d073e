//! pvpanic (ACPI `QEMU0001`): the guest kernel writes here when it panics,
//! which lets the VMM tell a panic from a reboot.

use super::{EventSink, GuestEvent};
use crate::BusDevice;

const PANICKED: u8 = 1 << 0;
const CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    sink: EventSink,
}

impl PvPanic {
    pub fn new(sink: EventSink) -> Self {
        Self { sink }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Capabilities: only "panicked" is of use; a crash kernel is never
        // loaded by uvm's guest.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PANICKED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let [value] = data {
            if value & (PANICKED | CRASH_LOADED) != 0 {
                (self.sink)(GuestEvent::Panic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_and_reports_panics() {
        let (sink, seen) = crate::legacy::recording_sink();
        let mut dev = PvPanic::new(sink);
        let mut caps = [0];
        dev.read(0, &mut caps);
        assert_eq!(caps, [PANICKED]);
        dev.write(0, &[0]);
        assert!(seen.lock().unwrap().is_empty());
        dev.write(0, &[PANICKED]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestEvent::Panic]);
    }
}
