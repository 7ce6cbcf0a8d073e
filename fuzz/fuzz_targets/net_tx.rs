//! The net device's TX parser: a guest's chain to the frame handed to the
//! tap, with the header checked against the negotiated offloads.

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use uvm_devices::virtio::features;
use uvm_devices::virtio::net::{read_tx_frame, FRAME_BUF_LEN, VNET_HDR_LEN};
use virtio_queue::QueueT;

fuzz_target!(|data: &[u8]| {
    let (mem, mut queue, knobs) = common::guest(data);
    // Any mix of the device-specific feature bits.
    let f = features::VERSION_1 | (knobs >> 8) & 0xff_ffff;
    let mut buf = vec![0u8; FRAME_BUF_LEN];
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        let result = read_tx_frame(&mem, chain, f, &mut buf);
        if let Ok(n) = result {
            assert!((VNET_HDR_LEN + 14..=FRAME_BUF_LEN).contains(&n));
        }
        if std::env::var_os("UVM_FUZZ_STATS").is_some() {
            // Outcomes over the whole run, to see which paths the corpus reaches.
            static SEEN: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
            let key = format!("{:?}", result.map(|_| "sent"));
            let mut seen = SEEN.lock().unwrap();
            match seen.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => seen.push((key, 1)),
            }
            eprintln!("stats {seen:?}");
        }
    }
});
