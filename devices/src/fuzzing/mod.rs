//! The bodies of the cargo-fuzz targets under `fuzz/`, here so that each has
//! one copy: the fuzzer calls them, and so does a stable test that replays
//! the committed corpus and every crash kept as a regression input. Not an
//! API: nothing in uvm calls this module.
//!
//! Every body must be deterministic for a given input (a replayed crash
//! must crash again) and must not panic on any input except where it
//! asserts something the device promises.

#![allow(clippy::cast_possible_truncation)]

mod mmio;
mod queues;
mod vsock;

pub use mmio::mmio;
pub use queues::{block_request, net_rx, net_tx, virtqueue};
pub use vsock::vsock_tx;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::Memory;

pub const MEM_SIZE: u64 = 0x10000;
pub const QSIZE: u16 = 8;
pub const DESC: u64 = 0;
pub const AVAIL: u64 = 0x100;
pub const USED: u64 = 0x200;
pub const DATA: u64 = 0x1000;

/// Fuzz input read front to back; past its end every read is zero, so any
/// input is a valid one.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    /// The next `N` bytes, zero-padded once the input runs out.
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn memory(size: u64) -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), size as usize)]).expect("fuzz guest memory")
}

/// A split queue of `size` entries as the transport would hand it over.
pub fn queue(size: u16, desc: u64, avail: u64, used: u64, event_idx: bool) -> Queue {
    let mut q = Queue::new(size).expect("fuzz queue size");
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// Writes one split-queue descriptor.
pub fn write_desc(mem: &Memory, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    // The fuzz layouts keep every table inside memory.
    let ok = mem.write_obj(addr, GuestAddress(at)).is_ok()
        && mem.write_obj(len, GuestAddress(at + 8)).is_ok()
        && mem.write_obj(flags, GuestAddress(at + 12)).is_ok()
        && mem.write_obj(next, GuestAddress(at + 14)).is_ok();
    assert!(ok, "descriptor at {at:#x} outside fuzz memory");
}

/// Guest memory with a queue of `QSIZE` descriptors whose every field comes
/// from the input, plus a word of knobs for the target to choose features
/// with. Addresses and lengths are usually folded into (or just past) guest
/// memory so the fuzzer reaches the request parsers, and sometimes left
/// wild; the avail index is usually plausible and sometimes not. The rest
/// of the input fills memory from `DATA` on, where indirect tables and
/// request headers the descriptors point at live.
pub fn guest(data: &[u8]) -> (Memory, Queue, u64) {
    let mut inp = Input::new(data);
    let knobs = inp.u64();
    let mem = memory(MEM_SIZE);
    for i in 0..u64::from(QSIZE) {
        let raw = inp.u64();
        let addr = if raw >> 63 == 1 {
            raw
        } else {
            raw % (MEM_SIZE + 0x1000)
        };
        let raw_len = inp.u32();
        let len = if raw_len >> 31 == 1 {
            raw_len
        } else {
            raw_len % 0x3000
        };
        let flags = inp.u16();
        let next = inp.u16();
        write_desc(&mem, DESC + 16 * i, addr, len, flags, next);
    }
    let raw_idx = inp.u16();
    let idx = if knobs & 2 != 0 {
        raw_idx
    } else {
        raw_idx % (QSIZE + 1)
    };
    let put = |v: u16, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .expect("ring inside fuzz memory")
    };
    put(0, AVAIL);
    put(idx, AVAIL + 2);
    for i in 0..u64::from(QSIZE) {
        let head = inp.u16();
        let head = if knobs & 4 != 0 { head } else { head % QSIZE };
        put(head, AVAIL + 4 + 2 * i);
    }
    // used_event, read when EVENT_IDX is on.
    put(inp.u16(), AVAIL + 4 + 2 * u64::from(QSIZE));
    let rest = inp.rest();
    let n = rest.len().min((MEM_SIZE - DATA) as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA))
        .expect("data inside fuzz memory");
    let q = queue(QSIZE, DESC, AVAIL, USED, knobs & 1 != 0);
    (mem, q, knobs)
}

/// Whether `UVM_FUZZ_STATS` asks the bodies to print what paths they reach.
pub fn stats() -> bool {
    std::env::var_os("UVM_FUZZ_STATS").is_some()
}
