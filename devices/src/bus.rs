//! An address-range bus that routes guest accesses to devices.
//!
//! The same type serves the port-I/O space and the MMIO space. Accesses that
//! hit no device are not errors for the guest (real hardware floats the bus),
//! so the bus answers them harmlessly and counts them for diagnostics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device reachable through guest port I/O or MMIO.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

type Shared = Arc<Mutex<dyn BusDevice>>;

#[derive(Default)]
pub struct Bus {
    /// base -> (length, device)
    devices: BTreeMap<u64, (u64, Shared)>,
    unhandled: AtomicU64,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, device: Shared, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        // The only candidates for overlap are the nearest device below `end`.
        if let Some((&other, &(olen, _))) = self.devices.range(..end).next_back() {
            if other + olen > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Shared)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fit in the device's window.
        (offset.checked_add(size as u64)? <= *len).then_some((offset, dev))
    }

    /// Routes a read; returns false (and fills `data` with 0xff, as a
    /// floating bus reads) when no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Routes a write; returns false (and drops it) when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => {
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// How many accesses hit no device since the bus was made.
    pub fn unhandled(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }
}

/// A device whose lock was poisoned panicked while handling an access: in
/// the VMM that cannot happen (uvm's binaries abort at any panic), and in
/// tests the data is still the device's own, so carrying on is right.
fn lock(dev: &Shared) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![7])]);
    }

    #[test]
    fn unclaimed_access_floats_and_is_counted() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x3f8, 8)
            .unwrap();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        // Straddling the end of the window is not the device's.
        assert!(!bus.read(0x3ff, &mut b));
        assert!(!bus.write(0x80, &[1]));
        assert_eq!(bus.unhandled(), 3);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf8, 0x9),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x0, 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(d(), 0x110, 1).unwrap();
        bus.insert(d(), 0xf0, 0x10).unwrap();
    }
}
