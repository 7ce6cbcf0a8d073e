//! Targets on one queue laid out by [`super::guest`]: the queue walk
//! itself, and the block and net request paths on top of it.

use std::sync::{Arc, Mutex, OnceLock};

use virtio_bindings::virtio_net::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{guest, stats, QSIZE, USED};
use crate::virtio::block::{Block, BlockConfig};
use crate::virtio::net::{
    read_tx_frame, Delivery, NetCounters, RxRing, FRAME_BUF_LEN, VNET_HDR_LEN,
};
use crate::virtio::{chain_descriptors, features, serve_queue, IrqTrigger, Served, VirtioDevice};

/// The walk every device does: `serve_queue` popping chains (loops, links
/// past the table, indirect tables nested or out of range, addresses past
/// memory), `chain_descriptors` judging each, and a device's reads and
/// writes of the buffers. Optionally one chain is throttled, which must
/// put it back so that it is the first served next time.
pub fn virtqueue(data: &[u8]) {
    let (mem, mut queue, knobs) = guest(data);
    let irq = IrqTrigger::new().expect("eventfd");
    let kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let throttle_at = (knobs >> 16 & 1 != 0).then_some(knobs >> 17 & 7);
    let mut served = 0u64;
    // Chains whose head is in the table: the ones add_used can give back.
    let mut givable = 0u64;
    let mut throttled = None;
    // A driver may hand the device its own used ring as a buffer; what the
    // device then writes there is the driver's doing, not a ring error.
    let used_ring = USED..USED + 6 + 8 * u64::from(QSIZE);
    let mut clobbered = false;
    let mut buf = [0u8; 256];
    serve_queue(&mut queue, &mem, &irq, &kick, |chain| {
        if throttle_at == Some(served) && throttled.is_none() {
            throttled = Some(chain.head_index());
            return Served::Throttled;
        }
        served += 1;
        givable += u64::from(chain.head_index() < QSIZE);
        let Some(descs) = chain_descriptors(&chain) else {
            return Served::Used(0);
        };
        let last = descs.last().expect("a well-formed chain has a descriptor");
        assert!(!last.has_next(), "chain_descriptors kept a NEXT at the end");
        // A table of QSIZE entries plus one indirect table in memory.
        assert!(descs.len() <= usize::from(QSIZE) + (super::MEM_SIZE / 16) as usize);
        let mut written = 0u32;
        for d in &descs {
            let n = (d.len() as usize).min(buf.len());
            if d.is_write_only() {
                let start = d.addr().0;
                let end = start.saturating_add(n as u64);
                clobbered |= start < used_ring.end && used_ring.start < end;
                if mem.write_slice(&buf[..n], d.addr()).is_ok() {
                    written = written.saturating_add(n as u32);
                }
            } else {
                let _ = mem.read_slice(&mut buf[..n], d.addr());
            }
        }
        Served::Used(written)
    });
    if let Some(head) = throttled {
        // Served again, the throttled chain comes first.
        let mut first = None;
        serve_queue(&mut queue, &mem, &irq, &kick, |chain| {
            first.get_or_insert(chain.head_index());
            served += 1;
            givable += u64::from(chain.head_index() < QSIZE);
            Served::Used(0)
        });
        assert_eq!(first, Some(head), "a throttled chain was not served first");
    }
    if clobbered {
        return;
    }
    // The used ring is always in memory here, so every chain served whose
    // head is a real index is in it.
    let used: u16 = mem
        .read_obj(GuestAddress(USED + 2))
        .expect("used ring in memory");
    assert_eq!(u64::from(used), givable, "used index against chains served");
    for i in 0..u64::from(used.min(QSIZE)) {
        let id: u32 = mem
            .read_obj(GuestAddress(USED + 4 + 8 * i))
            .expect("used ring in memory");
        assert!(id < u32::from(QSIZE), "used id {id} outside the table");
    }
    if stats() {
        eprintln!("stats served {served}, throttled {throttled:?}");
    }
}

struct BlockDev {
    blk: Block,
    irq: IrqTrigger,
}

/// One device per mode for the whole run: opening an image per input would
/// be most of the work. A reset after each input makes it as new.
fn block_device(read_only: bool) -> &'static Mutex<BlockDev> {
    static RW: OnceLock<Mutex<BlockDev>> = OnceLock::new();
    static RO: OnceLock<Mutex<BlockDev>> = OnceLock::new();
    let cell = if read_only { &RO } else { &RW };
    cell.get_or_init(|| {
        Mutex::new(BlockDev {
            blk: scratch_block(read_only),
            irq: IrqTrigger::new().expect("eventfd"),
        })
    })
}

/// A block device on a 64 KiB image in /dev/shm (tmpfs: fdatasync costs
/// nothing, punching holes works), unlinked once open.
pub(super) fn scratch_block(read_only: bool) -> Block {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::path::PathBuf::from(format!(
        "/dev/shm/uvm-fuzz-disk-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, vec![0x5a; 64 << 10]).expect("fuzz disk image");
    let blk = Block::new(BlockConfig {
        path: path.clone(),
        read_only,
        id: Some("fuzz".into()),
        rate_limit: Default::default(),
    });
    // The open fd keeps the image; the name can go now.
    let _ = std::fs::remove_file(&path);
    blk.expect("fuzz block device")
}

/// The block device's request path, whole: chain parsing, header, status
/// placement, and the I/O itself on a small image.
pub fn block_request(data: &[u8]) {
    let (mem, queue, knobs) = guest(data);
    let mut dev = block_device(knobs & 8 != 0)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let BlockDev { blk, irq } = &mut *dev;
    let mut f = features::VERSION_1;
    if knobs & 1 != 0 {
        f |= features::RING_EVENT_IDX;
    }
    blk.activate(mem, f, vec![queue], irq.clone())
        .expect("block activation");
    blk.process_queue();
    if stats() {
        eprintln!("stats {:?}", blk.counters());
    }
    blk.reset();
    let _ = blk.queue_events()[0].read();
    let _ = irq.eventfd().read();
}

/// The net device's RX side: frames with any header from the tap, into
/// whatever buffers the guest posted, mergeable or not.
pub fn net_rx(data: &[u8]) {
    let (mem, queue, knobs) = guest(data);
    let mut f = features::VERSION_1;
    for (k, bit) in [
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
    ]
    .into_iter()
    .enumerate()
    {
        if knobs >> (8 + k) & 1 != 0 {
            f |= 1 << bit;
        }
    }
    if knobs & 1 != 0 {
        f |= features::RING_EVENT_IDX;
    }
    let mut ring = RxRing::new(Arc::new(mem), queue, f);
    let mut c = NetCounters::default();
    // Up to four frames whose sizes and header bytes come from the knobs.
    for i in 0..(knobs >> 16 & 3) + 1 {
        let spec = knobs >> (24 + 10 * i);
        let len = [0usize, 20, 60, 1514, 4000, 9000, 20000, 65550][(spec & 7) as usize];
        let mut frame = vec![0xa5u8; VNET_HDR_LEN + len];
        frame[0] = (spec >> 3) as u8 & 7;
        frame[1] = [0u8, 1, 3, 4, 5, 0x81, 0x84, 0x80][(spec >> 6 & 7) as usize];
        let outcome = ring.deliver(&mut frame, &mut c);
        if stats() {
            // Outcomes over the whole run, to see which paths the corpus reaches.
            static SEEN: Mutex<[u64; 3]> = Mutex::new([0; 3]);
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            seen[outcome as usize] += 1;
            eprintln!("stats delivered/dropped/no-buffers {seen:?} {c:?}");
        }
        if outcome == Delivery::NoBuffers {
            break;
        }
    }
}

/// The net device's TX parser: a guest's chain to the frame handed to the
/// tap, with the header checked against the negotiated offloads.
pub fn net_tx(data: &[u8]) {
    let (mem, mut queue, knobs) = guest(data);
    // Any mix of the device-specific feature bits.
    let f = features::VERSION_1 | (knobs >> 8) & 0xff_ffff;
    let mut buf = vec![0u8; FRAME_BUF_LEN];
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        let result = read_tx_frame(&mem, chain, f, &mut buf);
        if let Ok(n) = result {
            assert!((VNET_HDR_LEN + 14..=FRAME_BUF_LEN).contains(&n));
        }
        if stats() {
            static SEEN: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
            let key = format!("{:?}", result.map(|_| "sent"));
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            match seen.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => seen.push((key, 1)),
            }
            eprintln!("stats {seen:?}");
        }
    }
}
