//! The ACPI power registers named by uvm's hardware-reduced FADT: the sleep
//! control register (a write of SLP_EN with SLP_TYP=5 is the guest powering
//! off), the sleep status register, and the reset register.

use super::{EventSink, GuestEvent};
use crate::BusDevice;

/// SLP_TYP that uvm's DSDT `_S5_` package gives for soft-off.
pub const S5_SLP_TYP: u8 = 5;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;

/// Offsets inside the 3-port window.
pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 = 1;
pub const RESET: u64 = 2;
pub const WINDOW_LEN: u16 = 3;

pub struct AcpiPower {
    sink: EventSink,
    reset_value: u8,
}

impl AcpiPower {
    pub fn new(sink: EventSink, reset_value: u8) -> Self {
        Self { sink, reset_value }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set because the VM never wakes.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            SLEEP_CONTROL
                if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & 0x7 == S5_SLP_TYP =>
            {
                (self.sink)(GuestEvent::PowerOff);
            }
            RESET if *value == self.reset_value => (self.sink)(GuestEvent::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn device() -> (AcpiPower, Arc<Mutex<Vec<GuestEvent>>>) {
        let (sink, seen) = crate::legacy::recording_sink();
        (AcpiPower::new(sink, 1), seen)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut dev, seen) = device();
        dev.write(SLEEP_CONTROL, &[S5_SLP_TYP << 2]); // no SLP_EN
        dev.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not supported
        assert!(seen.lock().unwrap().is_empty());
        dev.write(SLEEP_CONTROL, &[(S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestEvent::PowerOff]);
    }

    #[test]
    fn reset_register_needs_the_reset_value() {
        let (mut dev, seen) = device();
        dev.write(RESET, &[0x6]);
        dev.write(RESET, &[1, 1]);
        assert!(seen.lock().unwrap().is_empty());
        dev.write(RESET, &[1]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestEvent::Reset]);
    }
}
