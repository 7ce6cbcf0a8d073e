//! The block device's request path, whole: chain parsing, header, status
//! placement, and the I/O itself on a small image in /dev/shm.

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use uvm_devices::virtio::block::{Block, BlockConfig};
use uvm_devices::virtio::{features, IrqTrigger, VirtioDevice};

struct Dev {
    blk: Block,
    irq: IrqTrigger,
}

fn device(read_only: bool) -> &'static Mutex<Dev> {
    static RW: OnceLock<Mutex<Dev>> = OnceLock::new();
    static RO: OnceLock<Mutex<Dev>> = OnceLock::new();
    let cell = if read_only { &RO } else { &RW };
    cell.get_or_init(|| {
        // tmpfs: fdatasync costs nothing, punching holes works.
        let path = std::path::PathBuf::from(format!(
            "/dev/shm/uvm-fuzz-disk-{}-{}",
            std::process::id(),
            read_only
        ));
        std::fs::write(&path, vec![0x5a; 64 << 10]).unwrap();
        let blk = Block::new(BlockConfig {
            path: path.clone(),
            read_only,
            id: Some("fuzz".into()),
            rate_limit: Default::default(),
        })
        .unwrap();
        // The open fd keeps the image; the name can go now.
        let _ = std::fs::remove_file(&path);
        Mutex::new(Dev {
            blk,
            irq: IrqTrigger::new().unwrap(),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let (mem, queue, knobs) = common::guest(data);
    let mut dev = device(knobs & 8 != 0).lock().unwrap();
    let Dev { blk, irq } = &mut *dev;
    let mut f = features::VERSION_1;
    if knobs & 1 != 0 {
        f |= features::RING_EVENT_IDX;
    }
    blk.activate(mem, f, vec![queue], irq.clone()).unwrap();
    blk.process_queue();
    if std::env::var_os("UVM_FUZZ_STATS").is_some() {
        eprintln!("stats {:?}", blk.counters());
    }
    blk.reset();
    let _ = blk.queue_events()[0].read();
    let _ = irq.eventfd().read();
});
