//! The virtio-mmio transport, version 2 ("modern") register layout.
//!
//! The transport keeps the queue configuration in its own registers until
//! DRIVER_OK and only then builds `virtio_queue::Queue`s from it, so a reset
//! is just "forget the registers" and register reads never have to reach a
//! device that may be busy on the event loop.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{features, Error, IrqTrigger, Memory, VirtioDevice};
use crate::bus::BusDevice;

/// Bytes of MMIO space each device occupies.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify in the window: where the VMM places the ioeventfds
/// of [`MmioTransport::ioeventfds`] (4-byte writes, datamatch = queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = u32::from_le_bytes(*b"virt");
const VERSION: u32 = 2;
/// "uvm", for whoever looks; Linux does not.
const VENDOR_ID: u32 = u32::from_le_bytes(*b"uvm\0");
const CONFIG_START: u64 = VIRTIO_MMIO_CONFIG as u64;

const S_ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

#[derive(Clone, Copy)]
struct QueueRegs {
    max_size: u16,
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    fn to_queue(self, mem: &Memory, event_idx: bool) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        if !self.ready {
            return Some(q);
        }
        q.try_set_size(u16::try_from(self.size).ok()?).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.used)).ok()?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q.is_valid(mem).then_some(q)
    }
}

#[allow(clippy::cast_possible_truncation)]
fn low32(v: u64) -> u32 {
    v as u32
}

fn set_low(reg: &mut u64, v: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(v);
}

fn set_high(reg: &mut u64, v: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
}

/// One virtio device's 4 KiB MMIO window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: Memory,
    irq: IrqTrigger,
    notify: Vec<EventFd>,
    device_type: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    status: u32,
    activated: bool,
    activation_error: Option<Error>,
    ignored: u64,
}

impl MmioTransport {
    /// Puts `device` behind a transport. `mem` is the guest memory its queues
    /// live in.
    pub fn new(mem: Memory, device: Arc<Mutex<dyn VirtioDevice>>) -> Result<Self, Error> {
        let irq = IrqTrigger::new()?;
        let (device_type, device_features, queues, notify) = {
            let d = lock(&device);
            let notify = d
                .queue_events()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::EventFd)?;
            let queues: Vec<_> = d
                .queue_max_sizes()
                .iter()
                .map(|&m| QueueRegs::new(m))
                .collect();
            if queues.len() != notify.len() {
                return Err(Error::QueueCount {
                    expected: queues.len(),
                    got: notify.len(),
                });
            }
            (
                d.device_type(),
                d.features() | features::VERSION_1,
                queues,
                notify,
            )
        };
        Ok(Self {
            device,
            mem,
            irq,
            notify,
            device_type,
            device_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            activated: false,
            activation_error: None,
            ignored: 0,
        })
    }

    /// The eventfd to register as this device's KVM irqfd.
    pub fn irq_eventfd(&self) -> &EventFd {
        self.irq.eventfd()
    }

    /// `(queue index, eventfd)` for every queue: register each as a KVM
    /// ioeventfd at `window base + QUEUE_NOTIFY_OFFSET`, 4 bytes, datamatch =
    /// the index. Without them notifications still work, through MMIO exits.
    pub fn ioeventfds(&self) -> Vec<(u32, &EventFd)> {
        (0u32..).zip(self.notify.iter()).collect()
    }

    /// Accesses the driver made that the spec does not allow (bad width,
    /// unknown register, writes out of order); answered harmlessly.
    pub fn ignored_accesses(&self) -> u64 {
        self.ignored
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.irq.needs_reset() {
            self.status | S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & (S_FEATURES_OK | S_DRIVER_OK | S_FAILED) == S_FEATURES_OK
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => low32(self.device_features),
                1 => low32(self.device_features >> 32),
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            VIRTIO_MMIO_CONFIG_GENERATION => self.irq.config_generation(),
            // No shared memory regions: a length of all ones says so.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            // Write-only registers read as 0; so do holes, which count.
            VIRTIO_MMIO_DEVICE_FEATURES_SEL
            | VIRTIO_MMIO_DRIVER_FEATURES
            | VIRTIO_MMIO_DRIVER_FEATURES_SEL
            | VIRTIO_MMIO_QUEUE_SEL
            | VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_NOTIFY
            | VIRTIO_MMIO_INTERRUPT_ACK
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
            | VIRTIO_MMIO_SHM_SEL
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => 0,
            _ => {
                self.ignored += 1;
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                // Features are the driver's to choose only between DRIVER and
                // FEATURES_OK; afterwards the device already acted on them.
                if self.status & (S_DRIVER | S_FEATURES_OK | S_FAILED) != S_DRIVER {
                    self.ignored += 1;
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    _ => self.ignored += 1,
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                // After DRIVER_OK the queues belong to the device.
                if !self.queue_config_allowed() {
                    self.ignored += 1;
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    self.ignored += 1;
                    return;
                };
                match offset {
                    VIRTIO_MMIO_QUEUE_NUM => q.size = v,
                    VIRTIO_MMIO_QUEUE_READY => q.ready = v == 1,
                    VIRTIO_MMIO_QUEUE_DESC_LOW => set_low(&mut q.desc, v),
                    VIRTIO_MMIO_QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW => set_low(&mut q.avail, v),
                    VIRTIO_MMIO_QUEUE_AVAIL_HIGH => set_high(&mut q.avail, v),
                    VIRTIO_MMIO_QUEUE_USED_LOW => set_low(&mut q.used, v),
                    _ => set_high(&mut q.used, v),
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => match self.notify.get(v as usize) {
                // The device drains its eventfds while inactive, so a kick
                // before DRIVER_OK is harmless.
                Some(evt) => {
                    let _ = evt.write(1);
                }
                None => self.ignored += 1,
            },
            VIRTIO_MMIO_INTERRUPT_ACK => self.irq.ack(v),
            VIRTIO_MMIO_STATUS => self.write_status(v),
            _ => self.ignored += 1,
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & features::VERSION_1 != 0
    }

    /// The status byte only grows, one step of the initialization sequence
    /// at a time (virtio 1.x, 3.1.1), until the driver writes 0 to reset.
    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set.
        let v = v & !S_NEEDS_RESET;
        let old = self.status;
        if v & old != old {
            // Drivers clear bits only by resetting.
            self.ignored += 1;
            return;
        }
        let added = v & !old;
        let mut new = old | (added & S_FAILED);
        let steps = [
            (S_ACK, 0),
            (S_DRIVER, S_ACK),
            (S_FEATURES_OK, S_ACK | S_DRIVER),
            (S_DRIVER_OK, S_ACK | S_DRIVER | S_FEATURES_OK),
        ];
        for (bit, needs) in steps {
            if added & bit == 0 {
                continue;
            }
            if new & needs != needs || new & S_FAILED != 0 {
                self.ignored += 1;
                break;
            }
            // A driver that asks for features we do not offer, or that is
            // not virtio 1.x, reads FEATURES_OK back as clear: that is how
            // the device refuses (3.1.1, step 6).
            if bit == S_FEATURES_OK && !self.features_acceptable() {
                break;
            }
            new |= bit;
            if bit == S_DRIVER_OK {
                self.status = new;
                self.activate();
                return;
            }
        }
        // Bits that are not status bits at all are dropped silently.
        self.status = new & (S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_FAILED);
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, regs) in self.queues.iter().enumerate() {
            match regs.to_queue(&self.mem, event_idx) {
                Some(q) => queues.push(q),
                None => {
                    self.activation_error = Some(Error::QueueConfig(i));
                    self.irq.signal_needs_reset();
                    return;
                }
            }
        }
        let result = lock(&self.device).activate(
            self.mem.clone(),
            self.driver_features,
            queues,
            self.irq.clone(),
        );
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.activation_error = Some(e);
                self.irq.signal_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        // The device may hold the queues even when activation failed half
        // way; resetting an idle device is cheap, so always do it.
        lock(&self.device).reset();
        self.activated = false;
        self.activation_error = None;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.irq.clear();
    }

    /// Whether the device is running (DRIVER_OK accepted, not reset since).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Why the last DRIVER_OK did not start the device (the driver then
    /// reads DEVICE_NEEDS_RESET in Status), for the VMM to log.
    pub fn activation_error(&self) -> Option<&Error> {
        self.activation_error.as_ref()
    }
}

/// A device that panicked while locked can only have done so in a test (the
/// VMM aborts on panic); its state is still its own, so carry on.
fn lock(d: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_START {
            lock(&self.device).read_config(offset - CONFIG_START, data);
            return;
        }
        // Registers are 32 bits wide and must be accessed as such (4.2.2.2).
        let (Ok(bytes), Ok(offset), true) = (
            <&mut [u8; 4]>::try_from(&mut *data),
            u32::try_from(offset),
            offset.is_multiple_of(4),
        ) else {
            data.fill(0);
            self.ignored += 1;
            return;
        };
        let v = self.read_reg(offset);
        *bytes = v.to_le_bytes();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_START {
            lock(&self.device).write_config(offset - CONFIG_START, data);
            return;
        }
        let (Ok(bytes), Ok(offset), true) = (
            <[u8; 4]>::try_from(data),
            u32::try_from(offset),
            offset.is_multiple_of(4),
        ) else {
            self.ignored += 1;
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::virtio::testing::{memory, MockQueue};
    use virtio_queue::QueueT;

    /// Per queue: ready, size, descriptor table address.
    type QueueSeen = (bool, u16, u64);

    #[derive(Default)]
    struct Record {
        activations: Vec<(u64, Vec<QueueSeen>)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    struct Dummy {
        evts: Vec<EventFd>,
        rec: Arc<Mutex<Record>>,
        fail: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn features(&self) -> u64 {
            features::VERSION_1 | features::RING_EVENT_IDX | 1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(b"abcdefgh", offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.rec
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: Memory,
            features: u64,
            queues: Vec<Queue>,
            irq: IrqTrigger,
        ) -> Result<(), Error> {
            let qs = queues
                .iter()
                .map(|q| (q.ready(), q.size(), q.desc_table()))
                .collect();
            self.rec.lock().unwrap().activations.push((features, qs));
            if self.fail {
                return Err(Error::QueueConfig(0));
            }
            irq.signal_used_queue();
            Ok(())
        }
        fn reset(&mut self) {
            self.rec.lock().unwrap().resets += 1;
        }
    }

    struct Fixture {
        t: MmioTransport,
        rec: Arc<Mutex<Record>>,
        mem: Memory,
    }

    fn fixture(fail: bool) -> Fixture {
        let rec = Arc::new(Mutex::new(Record::default()));
        let dev = Dummy {
            evts: vec![
                EventFd::new(EFD_NONBLOCK).unwrap(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            ],
            rec: rec.clone(),
            fail,
        };
        let mem = memory(0x10_0000);
        let t = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(dev))).unwrap();
        Fixture { t, rec, mem }
    }

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn r(t: &mut MmioTransport, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(u64::from(off), &v.to_le_bytes());
    }

    /// Drives the transport through feature negotiation as Linux does.
    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        w(t, VIRTIO_MMIO_STATUS, S_ACK);
        w(t, VIRTIO_MMIO_STATUS, S_ACK | S_DRIVER);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        w(t, VIRTIO_MMIO_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
        r(t, VIRTIO_MMIO_STATUS)
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, q: &MockQueue) {
        w(t, VIRTIO_MMIO_QUEUE_SEL, sel);
        w(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size));
        w(t, VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc as u32);
        w(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        w(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail as u32);
        w(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        w(t, VIRTIO_MMIO_QUEUE_USED_LOW, q.used as u32);
        w(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        w(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    #[test]
    fn identity_registers() {
        let mut f = fixture(false);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        w(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 29 | 1 << 5);
        w(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn config_space_is_the_devices_at_any_width() {
        let mut f = fixture(false);
        let mut b = [0u8; 2];
        f.t.read(0x102, &mut b);
        assert_eq!(&b, b"cd");
        let mut b = [0xffu8; 4];
        f.t.read(0x106, &mut b);
        assert_eq!(&b, b"gh\0\0");
        f.t.write(0x101, &[9]);
        assert_eq!(f.rec.lock().unwrap().config_writes, vec![(1, vec![9])]);
    }

    #[test]
    fn register_accesses_must_be_32_bit_and_aligned() {
        let mut f = fixture(false);
        let mut b = [0xffu8; 2];
        f.t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        f.t.read(2, &mut b);
        assert_eq!(b, [0; 4]);
        f.t.write(0x70, &[1]);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(f.t.ignored_accesses(), 3);
    }

    #[test]
    fn feature_negotiation_accepts_a_subset_with_version_1() {
        let mut f = fixture(false);
        let st = negotiate(&mut f.t, features::VERSION_1 | 1 << 5);
        assert_eq!(st, S_ACK | S_DRIVER | S_FEATURES_OK);
    }

    #[test]
    fn feature_negotiation_refuses_legacy_drivers() {
        let mut f = fixture(false);
        let st = negotiate(&mut f.t, 1 << 5);
        assert_eq!(st, S_ACK | S_DRIVER, "FEATURES_OK must read back clear");
    }

    #[test]
    fn feature_negotiation_refuses_features_not_offered() {
        let mut f = fixture(false);
        let st = negotiate(&mut f.t, features::VERSION_1 | 1 << 6);
        assert_eq!(st & S_FEATURES_OK, 0);
    }

    #[test]
    fn driver_features_are_frozen_after_features_ok() {
        let mut f = fixture(false);
        negotiate(&mut f.t, features::VERSION_1);
        w(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w(&mut f.t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        let rec = f.rec.lock().unwrap();
        assert_eq!(rec.activations[0].0, features::VERSION_1);
    }

    #[test]
    fn status_steps_out_of_order_are_refused() {
        let mut f = fixture(false);
        // DRIVER before ACKNOWLEDGE.
        w(&mut f.t, VIRTIO_MMIO_STATUS, S_DRIVER);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS), 0);
        // DRIVER_OK straight after DRIVER, skipping FEATURES_OK.
        w(&mut f.t, VIRTIO_MMIO_STATUS, S_ACK);
        w(&mut f.t, VIRTIO_MMIO_STATUS, S_ACK | S_DRIVER);
        w(&mut f.t, VIRTIO_MMIO_STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS), S_ACK | S_DRIVER);
        // Clearing a bit is not a reset.
        w(&mut f.t, VIRTIO_MMIO_STATUS, S_ACK);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS), S_ACK | S_DRIVER);
        assert!(f.rec.lock().unwrap().activations.is_empty());
        assert!(f.t.ignored_accesses() >= 3);
    }

    #[test]
    fn failed_stops_the_sequence() {
        let mut f = fixture(false);
        negotiate(&mut f.t, features::VERSION_1);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_FAILED,
        );
        let st = r(&mut f.t, VIRTIO_MMIO_STATUS);
        assert_eq!(st, S_ACK | S_DRIVER | S_FEATURES_OK | S_FAILED);
        w(&mut f.t, VIRTIO_MMIO_STATUS, st | S_DRIVER_OK);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS) & S_DRIVER_OK, 0);
        assert!(f.rec.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn activation_hands_over_the_configured_queues() {
        let mut f = fixture(false);
        negotiate(&mut f.t, features::VERSION_1 | features::RING_EVENT_IDX);
        let q = MockQueue::new(&f.mem, 0x1000, 16);
        setup_queue(&mut f.t, 0, &q);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 1);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert!(f.t.is_activated());
        let rec = f.rec.lock().unwrap();
        assert_eq!(rec.activations.len(), 1);
        let (feat, qs) = &rec.activations[0];
        assert_eq!(*feat, features::VERSION_1 | features::RING_EVENT_IDX);
        assert_eq!(qs, &vec![(true, 16, 0x1000), (false, 8, 0)]);
        drop(rec);
        // The dummy raised a used-buffer interrupt from activate.
        assert_eq!(f.t.irq_eventfd().read().unwrap(), 1);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        w(&mut f.t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_config_only_between_features_ok_and_driver_ok() {
        let mut f = fixture(false);
        // Before FEATURES_OK.
        w(&mut f.t, VIRTIO_MMIO_STATUS, S_ACK | S_DRIVER);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);
        w(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        negotiate(&mut f.t, features::VERSION_1);
        let q = MockQueue::new(&f.mem, 0x1000, 16);
        setup_queue(&mut f.t, 0, &q);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        // After DRIVER_OK.
        w(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert!(f.t.ignored_accesses() >= 2);
    }

    #[test]
    fn bad_queue_config_sets_needs_reset() {
        let mut f = fixture(false);
        negotiate(&mut f.t, features::VERSION_1);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        // Not a power of two.
        w(&mut f.t, VIRTIO_MMIO_QUEUE_NUM, 12);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_READY, 1);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert!(!f.t.is_activated());
        assert!(matches!(
            f.t.activation_error(),
            Some(Error::QueueConfig(0))
        ));
        assert_ne!(r(&mut f.t, VIRTIO_MMIO_STATUS) & S_NEEDS_RESET, 0);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert!(f.rec.lock().unwrap().activations.is_empty());

        // Rings outside guest memory.
        w(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS), 0);
        negotiate(&mut f.t, features::VERSION_1);
        let mut q = MockQueue::new(&f.mem, 0x1000, 16);
        q.used = 0x4000_0000;
        setup_queue(&mut f.t, 0, &q);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert!(!f.t.is_activated());
        assert_ne!(r(&mut f.t, VIRTIO_MMIO_STATUS) & S_NEEDS_RESET, 0);
    }

    #[test]
    fn device_activation_failure_sets_needs_reset() {
        let mut f = fixture(true);
        negotiate(&mut f.t, features::VERSION_1);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert!(!f.t.is_activated());
        assert_ne!(r(&mut f.t, VIRTIO_MMIO_STATUS) & S_NEEDS_RESET, 0);
    }

    #[test]
    fn reset_returns_everything_to_initial_state() {
        let mut f = fixture(false);
        negotiate(&mut f.t, features::VERSION_1 | features::RING_EVENT_IDX);
        let q = MockQueue::new(&f.mem, 0x1000, 16);
        setup_queue(&mut f.t, 0, &q);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_NUM, 4);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert!(f.t.is_activated());
        assert_ne!(r(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

        w(&mut f.t, VIRTIO_MMIO_STATUS, 0);
        assert!(!f.t.is_activated());
        assert_eq!(f.rec.lock().unwrap().resets, 1);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_QUEUE_READY), 0);

        // A second life, with no features beyond VERSION_1 and default sizes.
        negotiate(&mut f.t, features::VERSION_1);
        w(
            &mut f.t,
            VIRTIO_MMIO_STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        let rec = f.rec.lock().unwrap();
        assert_eq!(rec.activations.len(), 2);
        assert_eq!(rec.activations[1].0, features::VERSION_1);
        assert_eq!(rec.activations[1].1, vec![(false, 16, 0), (false, 8, 0)]);
    }

    #[test]
    fn queue_notify_writes_the_queue_eventfd() {
        let mut f = fixture(false);
        let fds = f.t.ioeventfds();
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[1].0, 1);
        w(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(f.t.ioeventfds()[1].1.read().unwrap(), 1);
        assert!(f.t.ioeventfds()[0].1.read().is_err(), "queue 0 not kicked");
        w(&mut f.t, VIRTIO_MMIO_QUEUE_NOTIFY, 2);
        assert_eq!(f.t.ignored_accesses(), 1);
    }

    #[test]
    fn needs_reset_is_not_the_drivers_to_set() {
        let mut f = fixture(false);
        w(&mut f.t, VIRTIO_MMIO_STATUS, S_ACK | S_NEEDS_RESET);
        assert_eq!(r(&mut f.t, VIRTIO_MMIO_STATUS), S_ACK);
    }
}
