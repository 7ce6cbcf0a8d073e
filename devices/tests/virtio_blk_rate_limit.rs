//! virtio-blk under a rate limiter, on a real event loop, wired as the VMM
//! wires it: requests wait for the limiter's timer (never a busy loop, never
//! the event loop held), finish in order with their data, and a disk
//! without a limit on the same loop is served meanwhile.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use event_manager::{EventManager, SubscriberOps};
use uvm_devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use uvm_devices::virtio::block::{Block, BlockConfig};
use uvm_devices::virtio::{Memory, MmioTransport};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;

struct TempFile(std::path::PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn image(tag: &str, len: u64) -> TempFile {
    let path = std::env::temp_dir().join(format!("uvm-blk-rl-{tag}-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    TempFile(path)
}

fn limit(bw: Option<u64>, burst: u64, iops: Option<u64>) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: bw.map(|b| BucketConfig::per_second(b, burst)),
        ops: iops.map(|n| BucketConfig::per_second(n, 0)),
    }
}

/// A disk on `em`, its driver set up with a queue of `qsize` at `ring`.
fn disk(
    em: &mut Loop,
    mem: &Memory,
    file: &TempFile,
    rate_limit: RateLimiterConfig,
    ring: u64,
    qsize: u16,
) -> (Arc<Mutex<Block>>, MmioTransport, Ring) {
    let blk = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            path: file.0.clone(),
            read_only: false,
            id: None,
            rate_limit,
        })
        .unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), blk.clone()).unwrap();
    em.add_subscriber(blk.clone());
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    let q = Ring::new(mem, ring, qsize);
    setup_queue(&mut t, 0, &q);
    driver_ok(&mut t);
    (blk, t, q)
}

/// Puts a request in the ring at descriptor `first` (three descriptors):
/// header at `hdr`, `len` data bytes at `data`, status at `hdr + 16`.
fn post(q: &Ring, first: u16, req_type: u32, sector: u64, hdr: u64, data: u64, len: u32) {
    q.mem.write_obj(req_type, GuestAddress(hdr)).unwrap();
    q.mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    q.mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    q.mem.write_obj(0xffu8, GuestAddress(hdr + 16)).unwrap();
    let mut descs = vec![(hdr, 16, 0)];
    if len > 0 {
        let flags = if req_type == VIRTIO_BLK_T_IN {
            F_WRITE
        } else {
            0
        };
        descs.push((data, len, flags));
    }
    descs.push((hdr + 16, 1, F_WRITE));
    q.push(q.chain(first, &descs));
}

fn pattern(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|b| (i * 31 + b / 512) as u8).collect()
}

#[test]
fn a_limited_disk_keeps_its_rate_and_order_while_a_free_one_is_served() {
    // 24 writes of 128 KiB (3 MiB) at 1 MiB/s: the first 1 MiB from the
    // full bucket at once, the other 2 MiB over 2 s.
    const N: usize = 24;
    const LEN: usize = 128 << 10;
    let limited_img = image("limited", 4 * MIB);
    let free_img = image("free", MIB);
    let mem = memory(8 << 20);
    let mut em: Loop = EventManager::new().unwrap();
    let (limited, lt, mut lq) = disk(
        &mut em,
        &mem,
        &limited_img,
        limit(Some(MIB), 0, None),
        0x1000,
        128,
    );
    let (free, ft, fq) = disk(
        &mut em,
        &mem,
        &free_img,
        RateLimiterConfig::default(),
        0x4000,
        16,
    );
    // Activation kicked both queues; nothing is queued yet.
    em.run_with_timeout(0).unwrap();

    for i in 0..N {
        let data = 0x10_0000 + (i * LEN) as u64;
        mem.write_slice(&pattern(i, LEN), GuestAddress(data))
            .unwrap();
        let sector = (i * LEN / 512) as u64;
        let hdr = 0x40_000 + 32 * i as u64;
        post(
            &lq,
            3 * i as u16,
            VIRTIO_BLK_T_OUT,
            sector,
            hdr,
            data,
            LEN as u32,
        );
    }
    let t0 = Instant::now();
    kick(&lt, 0);

    let mut order = Vec::new();
    let mut iterations = 0u32;
    let mut free_done = None;
    let deadline = t0 + Duration::from_secs(5);
    while order.len() < N {
        assert!(Instant::now() < deadline, "{} of {N} done", order.len());
        if em.run_with_timeout(100).unwrap() > 0 {
            iterations += 1;
        }
        order.extend(lq.take_used());
        // Once the limited disk is throttled, the free one gets a write,
        // and must not wait for the other's tokens.
        if order.len() >= 8 && free_done.is_none() {
            mem.write_slice(&[0xee; 4096], GuestAddress(0x70_0000))
                .unwrap();
            post(&fq, 0, VIRTIO_BLK_T_OUT, 0, 0x60_000, 0x70_0000, 4096);
            let asked = Instant::now();
            kick(&ft, 0);
            run_until(&mut em, || fq.used_idx() == 1);
            free_done = Some((asked.elapsed(), lq.used_idx()));
        }
    }
    let elapsed = t0.elapsed();

    // The rate: 2 MiB past the bucket at 1 MiB/s, not a bit sooner.
    assert!(
        elapsed >= Duration::from_millis(1990),
        "done in {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "done in {elapsed:?}");
    // In order, each answered OK.
    let heads: Vec<u32> = order.iter().map(|&(h, _)| h).collect();
    let want: Vec<u32> = (0..N as u32).map(|i| 3 * i).collect();
    assert_eq!(heads, want, "completed out of order");
    for i in 0..N {
        let status: u8 = mem
            .read_obj(GuestAddress(0x40_000 + 32 * i as u64 + 16))
            .unwrap();
        assert_eq!(status, 0, "request {i}");
    }
    let on_disk = std::fs::read(&limited_img.0).unwrap();
    for i in 0..N {
        assert!(
            on_disk[i * LEN..(i + 1) * LEN] == pattern(i, LEN)[..],
            "request {i}'s data"
        );
    }
    // The free disk did not wait for the limited one's timer.
    let (free_wait, limited_used_then) = free_done.expect("the free disk got its write");
    assert!(free_wait < Duration::from_millis(500), "{free_wait:?}");
    assert!(
        usize::from(limited_used_then) < N,
        "the limited disk had finished already"
    );
    assert_eq!(free.lock().unwrap().counters().ok, 1);
    assert!(free.lock().unwrap().rate_limit_counters().is_none());
    // Woken by its timer about once per request past the bucket, not
    // spinning: 16 waits, plus the kicks and the free disk's events.
    assert!(iterations <= 40, "{iterations} event-loop wake-ups");
    let c = limited.lock().unwrap().rate_limit_counters().unwrap();
    assert_eq!((c.bytes, c.ops), (3 * MIB, N as u64));
    assert!((8..=16).contains(&c.throttled), "{c:?}");
    let summary = uvm_devices::virtio::VirtioDevice::summary(&*limited.lock().unwrap());
    assert!(
        summary.contains(&format!(
            "rate limit: throttled {} times, {} bytes and {N} ops admitted",
            c.throttled,
            3 * MIB
        )),
        "{summary}"
    );
}

/// Runs the loop until `done`, returning how many events it dispatched.
fn events_until(em: &mut Loop, until: Instant, mut done: impl FnMut() -> bool) -> usize {
    let mut events = 0;
    while !done() && Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        let ms = left.as_millis().clamp(1, 50) as i32;
        events += em.run_with_timeout(ms).unwrap();
    }
    events
}

#[test]
fn a_throttled_request_waits_for_the_timer_and_no_longer() {
    let img = image("timer", 4 * MIB);
    let mem = memory(4 << 20);
    let mut em: Loop = EventManager::new().unwrap();
    let (blk, t, mut q) = disk(&mut em, &mem, &img, limit(Some(MIB), 0, None), 0x1000, 16);
    em.run_with_timeout(0).unwrap();
    // 1 MiB empties the bucket.
    post(&q, 0, VIRTIO_BLK_T_OUT, 0, 0x20_000, 0x10_0000, MIB as u32);
    kick(&t, 0);
    run_until(&mut em, || q.used_idx() == 1);
    // 256 KiB more: exactly 250 ms of tokens.
    post(&q, 3, VIRTIO_BLK_T_IN, 0, 0x20_100, 0x20_0000, 256 << 10);
    let asked = Instant::now();
    kick(&t, 0);
    // Nothing before the timer: the loop sleeps (the kick, then quiet).
    let quiet = events_until(&mut em, asked + Duration::from_millis(200), || {
        q.used_idx() == 2
    });
    assert_eq!(q.used_idx(), 1, "served before its tokens existed");
    assert!(quiet <= 2, "{quiet} events while throttled: a busy loop");
    assert_eq!(
        blk.lock().unwrap().rate_limit_counters().unwrap().throttled,
        1
    );
    // Then the timer, and the request.
    let more = events_until(&mut em, asked + Duration::from_secs(3), || {
        q.used_idx() == 2
    });
    let waited = asked.elapsed();
    assert_eq!(q.used_idx(), 2);
    assert!(waited >= Duration::from_millis(245), "{waited:?}");
    assert!(waited < Duration::from_millis(750), "{waited:?}");
    assert!(more <= 2, "{more} events to serve one request");
    assert_eq!(q.take_used()[1], (3, (256 << 10) + 1));
    // A write is charged its data, a read the room for it, the status
    // byte aside.
    let c = blk.lock().unwrap().rate_limit_counters().unwrap();
    assert_eq!((c.bytes, c.ops), (MIB + (256 << 10), 2));
}

#[test]
fn oversized_requests_pass_and_ops_are_limited_too() {
    let img = image("oversized", 4 * MIB);
    let mem = memory(4 << 20);
    let mut em: Loop = EventManager::new().unwrap();
    // 256 KiB/s and 10 requests per second.
    let (blk, t, q) = disk(
        &mut em,
        &mem,
        &img,
        limit(Some(256 << 10), 0, Some(10)),
        0x1000,
        64,
    );
    em.run_with_timeout(0).unwrap();
    // 1 MiB in one request: four times the bucket, it passes on the full
    // bucket (no deadlock) and leaves 768 KiB owed.
    let t0 = Instant::now();
    post(&q, 0, VIRTIO_BLK_T_OUT, 0, 0x20_000, 0x10_0000, MIB as u32);
    kick(&t, 0);
    run_until(&mut em, || q.used_idx() == 1);
    assert!(t0.elapsed() < Duration::from_millis(500));
    // A flush moves no bytes: it costs an op, and passes at once.
    post(&q, 3, VIRTIO_BLK_T_FLUSH, 0, 0x20_100, 0, 0);
    kick(&t, 0);
    run_until(&mut em, || q.used_idx() == 2);
    // A 4 KiB write waits for the debt and its own bytes, just over 3 s:
    // too long for this test, which only sees it not served in a second.
    post(&q, 5, VIRTIO_BLK_T_OUT, 0, 0x20_200, 0x10_0000, 4096);
    kick(&t, 0);
    events_until(&mut em, t0 + Duration::from_secs(1), || q.used_idx() == 3);
    assert_eq!(q.used_idx(), 2);
    let c = blk.lock().unwrap().rate_limit_counters().unwrap();
    assert_eq!((c.bytes, c.ops, c.throttled), (MIB, 2, 1));
    drop((blk, t, q));

    // Ops alone: 15 flushes at 10 per second: 10 from the full bucket,
    // then one every 100 ms.
    let mut em: Loop = EventManager::new().unwrap();
    let (blk, t, q) = disk(&mut em, &mem, &img, limit(None, 0, Some(10)), 0x8000, 64);
    em.run_with_timeout(0).unwrap();
    for i in 0..15u16 {
        post(
            &q,
            2 * i,
            VIRTIO_BLK_T_FLUSH,
            0,
            0x30_000 + 32 * u64::from(i),
            0,
            0,
        );
    }
    let t0 = Instant::now();
    kick(&t, 0);
    run_until(&mut em, || q.used_idx() == 15);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(495), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let c = blk.lock().unwrap().rate_limit_counters().unwrap();
    assert_eq!((c.ops, c.bytes), (15, 0));
}
