//! The net device's RX side: frames with any header from the tap, into
//! whatever buffers the guest posted, mergeable or not.

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use uvm_devices::virtio::features;
use uvm_devices::virtio::net::{Delivery, NetCounters, RxRing, VNET_HDR_LEN};
use virtio_bindings::virtio_net::*;

fuzz_target!(|data: &[u8]| {
    let (mem, queue, knobs) = common::guest(data);
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
        if std::env::var_os("UVM_FUZZ_STATS").is_some() {
            // Outcomes over the whole run, to see which paths the corpus reaches.
            static SEEN: Mutex<[u64; 3]> = Mutex::new([0; 3]);
            let mut seen = SEEN.lock().unwrap();
            seen[outcome as usize] += 1;
            eprintln!("stats delivered/dropped/no-buffers {seen:?} {c:?}");
        }
        if outcome == Delivery::NoBuffers {
            break;
        }
    }
});
