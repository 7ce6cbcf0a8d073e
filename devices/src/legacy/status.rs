//! uvm's guest status port: the channel from uvm's init to the VMM.
//!
//! The init writes one 32-bit value: `MAGIC << 16 | kind << 8 | payload`.
//! A port (rather than a line on the console) keeps the console the user's,
//! and the magic keeps stray probes of the port from ending the VM.

use super::{EventSink, GuestEvent};
use crate::BusDevice;

/// I/O port of the status register (4 bytes wide).
pub const PORT: u16 = 0x510;
pub const MAGIC: u32 = 0x7576; // "uv"
pub const KIND_READY: u32 = 1;
pub const KIND_EXIT: u32 = 2;

/// The value the init writes for `kind` with `payload`.
pub const fn encode(kind: u32, payload: u8) -> u32 {
    (MAGIC << 16) | (kind << 8) | payload as u32
}

pub struct StatusPort {
    sink: EventSink,
}

impl StatusPort {
    pub fn new(sink: EventSink) -> Self {
        Self { sink }
    }
}

impl BusDevice for StatusPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Reads back the magic so the init can tell it runs under uvm.
        let magic = (MAGIC << 16).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = magic.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset != 0 {
            return;
        }
        let value = u32::from_le_bytes(bytes);
        if value >> 16 != MAGIC {
            return;
        }
        let [payload, ..] = bytes;
        match (value >> 8) & 0xff {
            KIND_READY => (self.sink)(GuestEvent::Ready),
            KIND_EXIT => (self.sink)(GuestEvent::ExitStatus(payload)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ready_and_exit_and_ignores_noise() {
        let (sink, seen) = crate::legacy::recording_sink();
        let mut dev = StatusPort::new(sink);
        dev.write(0, &encode(KIND_READY, 0).to_le_bytes());
        dev.write(0, &encode(KIND_EXIT, 7).to_le_bytes());
        dev.write(0, &[7]); // narrow write
        dev.write(0, &0x1234_0207u32.to_le_bytes()); // wrong magic
        dev.write(0, &encode(9, 1).to_le_bytes()); // unknown kind
        assert_eq!(
            *seen.lock().unwrap(),
            vec![GuestEvent::Ready, GuestEvent::ExitStatus(7)]
        );
    }
}
