//! The guest driver's side, in miniature: register accesses through the
//! transport as a vCPU would make them, and split virtqueues in guest memory.
//! Only the crate's public API is used, the way the VMM uses it.

#![allow(dead_code, clippy::cast_possible_truncation)]

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber};
use uvm_devices::virtio::{Memory, MmioTransport};
use uvm_devices::BusDevice;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

pub type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

pub fn memory(size: usize) -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

pub struct Ring {
    pub mem: Memory,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    last_used: u16,
}

impl Ring {
    pub fn new(mem: &Memory, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let zeros = vec![0u8; (used + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zeros, GuestAddress(base)).unwrap();
        Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            last_used: 0,
        }
    }

    /// Writes `descs` as one chain from table index `first`; returns the head.
    pub fn chain(&self, first: u16, descs: &[(u64, u32, u16)]) -> u16 {
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = first + k as u16;
            let last = k + 1 == descs.len();
            let at = self.desc + 16 * u64::from(i);
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            let flags = if last { flags } else { flags | F_NEXT };
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            let next: u16 = if last { 0 } else { i + 1 };
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        first
    }

    pub fn push(&self, head: u16) {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The used elements not seen yet: (head, length).
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        while self.last_used != self.used_idx() {
            let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            out.push((
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            ));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

pub fn r(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

pub fn w(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

/// Negotiates `wanted` & what the device offers, as Linux's virtio core does;
/// returns the accepted features.
pub fn negotiate(t: &mut MmioTransport, wanted: u64) -> u64 {
    assert_eq!(r(t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(t, VIRTIO_MMIO_VERSION), 2);
    w(t, VIRTIO_MMIO_STATUS, 0);
    w(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    w(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    let mut offered = 0u64;
    for sel in 0..2 {
        w(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        offered |= u64::from(r(t, VIRTIO_MMIO_DEVICE_FEATURES)) << (32 * sel);
    }
    let accepted = offered & wanted;
    for sel in 0..2 {
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        w(
            t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (accepted >> (32 * sel)) as u32,
        );
    }
    let st = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    w(t, VIRTIO_MMIO_STATUS, st);
    assert_eq!(r(t, VIRTIO_MMIO_STATUS), st, "device refused the features");
    accepted
}

pub fn setup_queue(t: &mut MmioTransport, index: u32, q: &Ring) {
    w(t, VIRTIO_MMIO_QUEUE_SEL, index);
    assert_eq!(r(t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(r(t, VIRTIO_MMIO_QUEUE_NUM_MAX) >= u32::from(q.size));
    w(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size));
    for (lo, addr) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail),
        (VIRTIO_MMIO_QUEUE_USED_LOW, q.used),
    ] {
        w(t, lo, addr as u32);
        w(t, lo + 4, (addr >> 32) as u32);
    }
    w(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

pub fn driver_ok(t: &mut MmioTransport) {
    let st = r(t, VIRTIO_MMIO_STATUS) | VIRTIO_CONFIG_S_DRIVER_OK;
    w(t, VIRTIO_MMIO_STATUS, st);
    assert_eq!(r(t, VIRTIO_MMIO_STATUS), st);
    assert!(t.is_activated(), "{:?}", t.activation_error());
}

/// What KVM does for a QueueNotify write that matches an ioeventfd.
pub fn kick(t: &MmioTransport, queue: u32) {
    let fds = t.ioeventfds();
    let (_, evt) = fds.iter().find(|(i, _)| *i == queue).unwrap();
    evt.write(1).unwrap();
}

/// Runs the loop until `done` holds, or fails after a while.
pub fn run_until(em: &mut Loop, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        em.run_with_timeout(50).unwrap();
    }
}

/// Takes the pending interrupt, as the irqfd would; returns the
/// InterruptStatus the guest handler reads and acknowledges.
pub fn take_irq(t: &mut MmioTransport) -> u32 {
    let _ = t.irq_eventfd().read();
    let st = r(t, VIRTIO_MMIO_INTERRUPT_STATUS);
    w(t, VIRTIO_MMIO_INTERRUPT_ACK, st);
    st
}
