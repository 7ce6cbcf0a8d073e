//! The MMIO transport's registers as a driver (or a hostile guest) drives
//! them: a sequence of reads and writes of any offset, width and value,
//! against a block device, whose queue is served after each notify the way
//! the event loop would.

use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::{Bytes, GuestAddress};

use super::{memory, stats, Input, MEM_SIZE};
use crate::bus::BusDevice;
use crate::virtio::block::Block;
use crate::virtio::{MmioTransport, VirtioDevice, QUEUE_NOTIFY_OFFSET};

const MAGIC: u64 = 0;
const VERSION: u64 = 4;
const STATUS: u64 = 0x70;
/// The registers a driver uses, in order, so that short inputs reach
/// DRIVER_OK: most ops name one of these rather than a raw offset.
const REGS: [u64; 24] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
    0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0xfc, 0x100,
];

fn block() -> &'static Arc<Mutex<Block>> {
    static DEV: OnceLock<Arc<Mutex<Block>>> = OnceLock::new();
    DEV.get_or_init(|| Arc::new(Mutex::new(super::queues::scratch_block(false))))
}

pub fn mmio(data: &[u8]) {
    let mut inp = Input::new(data);
    let nops = usize::from(inp.u8());
    let mut ops = Vec::with_capacity(nops);
    for _ in 0..nops {
        let sel = inp.u8();
        let raw = inp.u16();
        let value = inp.u64();
        let offset = if sel & 0x80 != 0 {
            u64::from(raw)
        } else {
            REGS[usize::from(raw) % REGS.len()]
        };
        let width = [4usize, 1, 2, 8][usize::from(sel >> 5 & 3)];
        ops.push((sel & 1 != 0, offset, width, value));
    }
    let mem = memory(MEM_SIZE);
    let rest = inp.rest();
    let n = rest.len().min(MEM_SIZE as usize);
    mem.write_slice(&rest[..n], GuestAddress(0))
        .expect("fuzz memory");

    let dev = block();
    let mut t = MmioTransport::new(mem, dev.clone()).expect("transport");
    for (is_read, offset, width, value) in ops {
        if is_read {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
            let v = u64::from_le_bytes(buf);
            match (offset, width) {
                (MAGIC, 4) => assert_eq!(v, u64::from(u32::from_le_bytes(*b"virt"))),
                (VERSION, 4) => assert_eq!(v, 2),
                (STATUS, 4) => assert_eq!(u64::from(t.status()), v),
                _ => {}
            }
        } else {
            t.write(offset, &value.to_le_bytes()[..width]);
            if offset == QUEUE_NOTIFY_OFFSET && t.is_activated() {
                // What the event loop does when the queue's eventfd fires.
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .process_queue();
            }
            if offset == STATUS && width == 4 && value as u32 == 0 {
                let mut buf = [0u8; 4];
                t.read(STATUS, &mut buf);
                assert_eq!(u32::from_le_bytes(buf), 0, "status after a reset");
                assert!(!t.is_activated());
            }
        }
    }
    if stats() {
        eprintln!(
            "stats activated {}, ignored {}, error {:?}",
            t.is_activated(),
            t.ignored_accesses(),
            t.activation_error()
        );
    }
    // The driver goes away: the device must be as new for the next input.
    t.write(STATUS, &0u32.to_le_bytes());
    let d = dev.lock().unwrap_or_else(|e| e.into_inner());
    for e in d.queue_events() {
        let _ = e.read();
    }
}
