//! Turns fuzz input into guest memory holding a split virtqueue, the way a
//! (possibly hostile) driver would have left it.

#![allow(dead_code, clippy::cast_possible_truncation)]

use uvm_devices::virtio::Memory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub const MEM_SIZE: u64 = 0x10000;
pub const QSIZE: u16 = 8;
pub const DESC: u64 = 0;
pub const AVAIL: u64 = 0x100;
pub const USED: u64 = 0x200;
pub const DATA: u64 = 0x1000;

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
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Guest memory with a queue of `QSIZE` descriptors whose every field comes
/// from the input, plus a word of knobs for the target to choose features
/// with. Addresses and lengths are usually folded into (or just past) guest
/// memory so the fuzzer reaches the request parsers, and sometimes left
/// wild; the avail index is usually plausible and sometimes not.
pub fn guest(data: &[u8]) -> (Memory, Queue, u64) {
    let mut inp = Input::new(data);
    let knobs = inp.u64();
    let mem = Memory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
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
        let at = DESC + 16 * i;
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    let raw_idx = inp.u16();
    let idx = if knobs & 2 != 0 {
        raw_idx
    } else {
        raw_idx % (QSIZE + 1)
    };
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    mem.write_obj(idx, GuestAddress(AVAIL + 2)).unwrap();
    for i in 0..u64::from(QSIZE) {
        let head = inp.u16();
        let head = if knobs & 4 != 0 { head } else { head % QSIZE };
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * i))
            .unwrap();
    }
    // used_event, read when EVENT_IDX is on.
    let used_event = inp.u16();
    mem.write_obj(used_event, GuestAddress(AVAIL + 4 + 2 * u64::from(QSIZE)))
        .unwrap();
    let rest = inp.rest();
    let n = rest.len().min((MEM_SIZE - DATA) as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA)).unwrap();

    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(knobs & 1 != 0);
    q.set_ready(true);
    (mem, q, knobs)
}
