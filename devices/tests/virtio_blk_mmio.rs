//! virtio-blk end to end, wired the way the VMM wires it: the device shared
//! between an MMIO transport and the event loop, notified through its
//! ioeventfds or plain QueueNotify writes, interrupting through its irqfd.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use common::*;
use event_manager::{EventManager, SubscriberOps};
use uvm_devices::virtio::block::{Block, BlockConfig};
use uvm_devices::virtio::mmio::MMIO_WINDOW_SIZE;
use uvm_devices::virtio::MmioTransport;
use uvm_devices::BusDevice;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

const HDR: u64 = 0x20_000;
const DATA: u64 = 0x30_000;
const STATUS: u64 = 0x28_000;

struct TempFile(std::path::PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn request(q: &Ring, req_type: u32, sector: u64, len: u32, write: bool) {
    q.mem.write_obj(req_type, GuestAddress(HDR)).unwrap();
    q.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    q.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    q.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let head = q.chain(
        0,
        &[
            (HDR, 16, 0),
            (DATA, len, if write { F_WRITE } else { 0 }),
            (STATUS, 1, F_WRITE),
        ],
    );
    q.push(head);
}

#[test]
fn block_device_through_transport_and_event_loop() {
    let path = std::env::temp_dir().join(format!("uvm-blk-e2e-{}", std::process::id()));
    let _guard = TempFile(path.clone());
    let image: Vec<u8> = (0..1 << 20).map(|i: u32| (i / 512) as u8).collect();
    std::fs::write(&path, &image).unwrap();

    let mem = memory(1 << 20);
    let blk = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            path: path.clone(),
            read_only: false,
            id: Some("e2e".into()),
            rate_limit: Default::default(),
        })
        .unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), blk.clone()).unwrap();
    let mut em: Loop = EventManager::new().unwrap();
    em.add_subscriber(blk.clone());
    assert_eq!(MMIO_WINDOW_SIZE, 0x1000);
    assert_eq!(t.ioeventfds().len(), 1);

    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 2);
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);

    let wanted = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
    assert_eq!(negotiate(&mut t, wanted), wanted);
    let mut q = Ring::new(&mem, 0x1000, 64);
    setup_queue(&mut t, 0, &q);
    driver_ok(&mut t);

    // Read sector 5, notified as KVM would, through the ioeventfd.
    request(&q, VIRTIO_BLK_T_IN, 5, 1024, true);
    kick(&t, 0);
    run_until(&mut em, || q.used_idx() == 1);
    assert_eq!(q.take_used(), vec![(0, 1025)]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, image[5 * 512..7 * 512]);
    assert_eq!(take_irq(&mut t), VIRTIO_MMIO_INT_VRING);

    // Write sector 1, notified by a plain MMIO write (no ioeventfd).
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    request(&q, VIRTIO_BLK_T_OUT, 1, 512, false);
    w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    run_until(&mut em, || q.used_idx() == 2);
    let mut sector = [0u8; 512];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut sector, 512)
        .unwrap();
    assert_eq!(sector, [0xee; 512]);

    // Flush.
    request(&q, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    kick(&t, 0);
    run_until(&mut em, || q.used_idx() == 3);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(take_irq(&mut t), VIRTIO_MMIO_INT_VRING);

    // After a reset the device does nothing with the old queue...
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    request(&q, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    kick(&t, 0);
    em.run_with_timeout(50).unwrap();
    assert_eq!(q.used_idx(), 3);
    assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // ... and works again once the driver sets it up afresh.
    negotiate(&mut t, wanted);
    let mut q2 = Ring::new(&mem, 0x8000, 16);
    setup_queue(&mut t, 0, &q2);
    driver_ok(&mut t);
    request(&q2, VIRTIO_BLK_T_GET_ID, 0, 20, true);
    kick(&t, 0);
    run_until(&mut em, || q2.used_idx() == 1);
    assert_eq!(q2.take_used(), vec![(0, 21)]);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..4], b"e2e\0");
    assert_eq!(blk.lock().unwrap().counters().ok, 4);
    drop(q);
}

#[test]
fn a_garbage_ring_does_not_stop_the_loop() {
    let path = std::env::temp_dir().join(format!("uvm-blk-garbage-{}", std::process::id()));
    let _guard = TempFile(path.clone());
    std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
    let mem = memory(1 << 20);
    let blk = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            path: path.clone(),
            read_only: true,
            id: None,
            rate_limit: Default::default(),
        })
        .unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), blk.clone()).unwrap();
    let mut em: Loop = EventManager::new().unwrap();
    em.add_subscriber(blk.clone());
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    let q = Ring::new(&mem, 0x1000, 16);
    setup_queue(&mut t, 0, &q);
    driver_ok(&mut t);
    // Every descriptor random, the avail ring full of them.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..16u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        mem.write_obj(x, GuestAddress(q.desc + 16 * i)).unwrap();
        mem.write_obj(x.rotate_left(23), GuestAddress(q.desc + 16 * i + 8))
            .unwrap();
        q.push((x % 20) as u16);
    }
    kick(&t, 0);
    // The loop comes back, and soon has nothing left to do (a batch that
    // used up its budget comes back once to look for more).
    let mut rounds = 0;
    while em.run_with_timeout(100).unwrap() != 0 {
        rounds += 1;
        assert!(rounds < 5, "the loop keeps finding work in a dead ring");
    }
    let c = blk.lock().unwrap().counters();
    assert_eq!(c.ok + c.ioerr + c.unsupp + c.dropped, 16, "{c:?}");
}
