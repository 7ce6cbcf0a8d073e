#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::virtio::testing::{memory, MockQueue, F_NEXT, F_WRITE};
use vm_memory::{Bytes, GuestAddress};

const BUF: u64 = 0x10_000;
const MEM_SIZE: usize = 0x100_000;

fn feats(bits: &[u32]) -> u64 {
    bits.iter().fold(features::VERSION_1, |f, &b| f | bit(b))
}

/// A frame as the tap or a driver writes it: header, then `len` bytes of
/// Ethernet frame.
fn frame(flags: u8, gso: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    f[0] = flags;
    f[1] = gso;
    f[4] = 0x40; // gso_size 64 when gso is set
    for (i, b) in f[VNET_HDR_LEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

// --- TX parsing ---

struct Tx {
    mem: Memory,
    q: MockQueue,
    queue: Queue,
}

fn tx() -> Tx {
    let mem = memory(MEM_SIZE);
    let q = MockQueue::new(&mem, 0, 16);
    let queue = q.queue();
    Tx { mem, q, queue }
}

impl Tx {
    fn parse(&mut self, head: u16, features: u64) -> Result<Vec<u8>, TxDrop> {
        self.q.push_avail(head);
        let chain = self.queue.pop_descriptor_chain(&self.mem).unwrap();
        let mut buf = vec![0u8; FRAME_BUF_LEN];
        read_tx_frame(&self.mem, chain, features, &mut buf).map(|n| buf[..n].to_vec())
    }

    fn put(&self, at: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
    }
}

#[test]
fn tx_frame_is_copied_whole() {
    let mut t = tx();
    let f = frame(0, 0, 60);
    t.put(BUF, &f);
    let head = t.q.chain(0, &[(BUF, f.len() as u32, 0)]);
    assert_eq!(t.parse(head, feats(&[])).unwrap(), f);
}

#[test]
fn tx_frame_may_be_split_anywhere() {
    let mut t = tx();
    let f = frame(0, 0, 100);
    t.put(BUF, &f[..5]);
    t.put(BUF + 0x1000, &f[5..50]);
    t.put(BUF + 0x2000, &f[50..]);
    let head = t.q.chain(
        0,
        &[(BUF, 5, 0), (BUF + 0x1000, 45, 0), (BUF + 0x2000, 62, 0)],
    );
    assert_eq!(t.parse(head, feats(&[])).unwrap(), f);
}

#[test]
fn tx_chain_with_device_writable_buffers_is_dropped() {
    let mut t = tx();
    t.put(BUF, &frame(0, 0, 60));
    let head = t.q.chain(0, &[(BUF, 40, 0), (BUF + 40, 32, F_WRITE)]);
    assert_eq!(t.parse(head, feats(&[])), Err(TxDrop::DeviceWritable));
}

#[test]
fn tx_malformed_chains_are_dropped() {
    let mut t = tx();
    t.put(BUF, &frame(0, 0, 60));
    // A loop.
    t.q.set_desc(0, BUF, 72, F_NEXT, 0);
    assert_eq!(t.parse(0, feats(&[])), Err(TxDrop::BadChain));
    // A link past the table.
    t.q.set_desc(0, BUF, 72, F_NEXT, 16);
    assert_eq!(t.parse(0, feats(&[])), Err(TxDrop::BadChain));
    // Outside guest memory, and wrapping around the address space.
    let head = t.q.chain(0, &[(MEM_SIZE as u64 - 10, 72, 0)]);
    assert_eq!(t.parse(head, feats(&[])), Err(TxDrop::BadChain));
    let head = t.q.chain(0, &[(u64::MAX - 10, 72, 0)]);
    assert_eq!(t.parse(head, feats(&[])), Err(TxDrop::BadChain));
    // Zero length.
    let head = t.q.chain(0, &[(BUF, 0, 0)]);
    assert_eq!(t.parse(head, feats(&[])), Err(TxDrop::TooShort));
    // Header without a whole Ethernet header behind it.
    let head = t.q.chain(0, &[(BUF, 25, 0)]);
    assert_eq!(t.parse(head, feats(&[])), Err(TxDrop::TooShort));
    // More than any frame: 16 descriptors of 8 KiB each.
    for i in 0..16 {
        t.q.set_desc(i, BUF, 8192, if i < 15 { F_NEXT } else { 0 }, i + 1);
    }
    assert_eq!(t.parse(0, feats(&[])), Err(TxDrop::TooLong));
}

#[test]
fn tx_headers_must_stay_within_negotiated_offloads() {
    let mut t = tx();
    let cases: &[(u8, u8, &[u32], bool)] = &[
        (0, 0, &[], true),
        (HDR_NEEDS_CSUM, 0, &[], false),
        (HDR_NEEDS_CSUM, 0, &[VIRTIO_NET_F_CSUM], true),
        (HDR_DATA_VALID, 0, &[VIRTIO_NET_F_CSUM], false),
        (HDR_NEEDS_CSUM, GSO_TCPV4, &[VIRTIO_NET_F_CSUM], false),
        (
            HDR_NEEDS_CSUM,
            GSO_TCPV4,
            &[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4],
            true,
        ),
        (
            HDR_NEEDS_CSUM,
            GSO_TCPV6,
            &[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4],
            false,
        ),
        (
            HDR_NEEDS_CSUM,
            GSO_TCPV6,
            &[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO6],
            true,
        ),
        (
            HDR_NEEDS_CSUM,
            GSO_TCPV4 | GSO_ECN,
            &[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4],
            false,
        ),
        (
            HDR_NEEDS_CSUM,
            GSO_TCPV4 | GSO_ECN,
            &[
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_ECN,
            ],
            true,
        ),
        // UFO is not offered, and GSO_ECN alone means nothing.
        (
            HDR_NEEDS_CSUM,
            3,
            &[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_UFO],
            false,
        ),
        (0, GSO_ECN, &[VIRTIO_NET_F_HOST_ECN], false),
    ];
    for &(flags, gso, bits, ok) in cases {
        t.put(BUF, &frame(flags, gso, 60));
        let head = t.q.chain(0, &[(BUF, 72, 0)]);
        assert_eq!(
            t.parse(head, feats(bits)).is_ok(),
            ok,
            "flags {flags} gso {gso} features {bits:?}"
        );
    }
    // GSO with a zero segment size.
    let mut f = frame(HDR_NEEDS_CSUM, GSO_TCPV4, 60);
    f[4] = 0;
    t.put(BUF, &f);
    let head = t.q.chain(0, &[(BUF, 72, 0)]);
    let bits = [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4];
    assert_eq!(t.parse(head, feats(&bits)), Err(TxDrop::Header));
}

// --- RX delivery ---

struct Rx {
    q: MockQueue,
    ring: RxRing,
    c: NetCounters,
    irq: IrqTrigger,
    next_desc: u16,
    next_buf: u64,
}

fn rx(features: u64, qsize: u16) -> Rx {
    let mem = memory(MEM_SIZE);
    let q = MockQueue::new(&mem, 0, qsize);
    let ring = RxRing::new(Arc::new(mem), q.queue(), features);
    Rx {
        q,
        ring,
        c: NetCounters::default(),
        irq: IrqTrigger::new().unwrap(),
        next_desc: 0,
        next_buf: BUF,
    }
}

impl Rx {
    /// Posts one writable buffer of `len` bytes; returns its head and address.
    fn post(&mut self, len: u32) -> (u16, u64) {
        let head = self.next_desc % self.q.size;
        let at = self.next_buf;
        self.q.chain(head, &[(at, len, F_WRITE)]);
        self.q.push_avail(head);
        self.next_desc += 1;
        self.next_buf += u64::from(len).next_multiple_of(0x1000);
        (head, at)
    }

    fn deliver(&mut self, f: &[u8]) -> Delivery {
        let mut f = f.to_vec();
        self.ring.deliver(&mut f, &mut self.c)
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.q.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

#[test]
fn rx_frame_fills_one_buffer_and_says_one_buffer() {
    let mut r = rx(feats(&[]), 16);
    let (head, at) = r.post(2048);
    let f = frame(0, 0, 100);
    assert_eq!(r.deliver(&f), Delivery::Delivered);
    assert_eq!(r.q.used_idx(), 1);
    assert_eq!(r.q.used_elem(0), (u32::from(head), f.len() as u32));
    let got = r.read(at, f.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(got[12..], f[12..]);
    r.ring.notify(&r.irq);
    assert_eq!(r.irq.status(), 1);
    assert_eq!(r.c.rx_frames, 1);
    assert_eq!(r.c.rx_bytes, 100);
}

#[test]
fn rx_frame_too_big_for_a_buffer_is_dropped_and_the_buffer_kept() {
    let mut r = rx(feats(&[]), 16);
    let (head, _) = r.post(100);
    assert_eq!(r.deliver(&frame(0, 0, 200)), Delivery::Dropped);
    assert_eq!(r.q.used_idx(), 0);
    assert_eq!(r.deliver(&frame(0, 0, 60)), Delivery::Delivered);
    assert_eq!(r.q.used_elem(0), (u32::from(head), 72));
    assert_eq!(r.c.rx_dropped, 1);
}

#[test]
fn rx_mergeable_frame_spans_buffers_in_order() {
    let mut r = rx(feats(&[VIRTIO_NET_F_MRG_RXBUF]), 16);
    let bufs: Vec<_> = (0..4).map(|_| r.post(1000)).collect();
    let f = frame(0, 0, 2500);
    assert_eq!(r.deliver(&f), Delivery::Delivered);
    assert_eq!(r.q.used_idx(), 3);
    let mut got = Vec::new();
    for (i, (head, at)) in bufs[..3].iter().enumerate() {
        let (id, len) = r.q.used_elem(i as u16);
        assert_eq!(id, u32::from(*head));
        got.extend(r.read(*at, len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    assert_eq!(got.len(), f.len());
    assert_eq!(got[12..], f[12..]);
    // The fourth buffer is still held for the next frame.
    assert_eq!(r.deliver(&frame(0, 0, 50)), Delivery::Delivered);
    assert_eq!(r.q.used_elem(3), (u32::from(bufs[3].0), 62));
}

#[test]
fn rx_waits_for_buffers_and_asks_to_be_told() {
    let mut r = rx(feats(&[VIRTIO_NET_F_MRG_RXBUF]), 16);
    r.ring.begin();
    assert_eq!(r.q.used_flags(), 1, "notifications off while working");
    assert_eq!(r.deliver(&frame(0, 0, 1500)), Delivery::NoBuffers);
    assert_eq!(
        r.q.used_flags(),
        0,
        "notifications back on when out of buffers"
    );
    // One buffer is not enough for the frame: it is held, not given back.
    r.post(1000);
    assert_eq!(r.deliver(&frame(0, 0, 1500)), Delivery::NoBuffers);
    assert_eq!(r.q.used_idx(), 0);
    r.post(1000);
    assert_eq!(r.deliver(&frame(0, 0, 1500)), Delivery::Delivered);
    assert_eq!(r.q.used_idx(), 2);
    assert_eq!(r.q.used_elem(0).1 + r.q.used_elem(1).1, 1512);
}

#[test]
fn rx_with_event_idx_waits_for_the_next_buffer() {
    let mem = memory(MEM_SIZE);
    let q = MockQueue::new(&mem, 0, 16);
    let mut queue = q.queue();
    queue.set_event_idx(true);
    let f = feats(&[VIRTIO_NET_F_MRG_RXBUF]) | features::RING_EVENT_IDX;
    let mut ring = RxRing::new(Arc::new(mem.clone()), queue, f);
    let mut c = NetCounters::default();
    q.chain(0, &[(BUF, 1000, F_WRITE)]);
    q.push_avail(0);
    assert_eq!(
        ring.deliver(&mut frame(0, 0, 1500), &mut c),
        Delivery::NoBuffers
    );
    // avail_event (after the used ring) names the next buffer to come.
    let avail_event: u16 = mem.read_obj(GuestAddress(q.used + 4 + 8 * 16)).unwrap();
    assert_eq!(avail_event, 1);
}

#[test]
fn rx_bad_buffers_are_given_back_empty() {
    let mut r = rx(feats(&[VIRTIO_NET_F_MRG_RXBUF]), 16);
    // Device-readable, outside memory, too small for the header, looping.
    r.q.chain(0, &[(BUF, 1000, 0)]);
    r.q.chain(1, &[(MEM_SIZE as u64 - 100, 1000, F_WRITE)]);
    r.q.chain(2, &[(BUF, 11, F_WRITE)]);
    r.q.set_desc(3, BUF, 100, F_WRITE | F_NEXT, 3);
    r.q.chain(4, &[(BUF + 0x1000, 2000, F_WRITE)]);
    for h in 0..5 {
        r.q.push_avail(h);
    }
    assert_eq!(r.deliver(&frame(0, 0, 100)), Delivery::Delivered);
    assert_eq!(r.c.rx_bad_chains, 4);
    assert_eq!(r.q.used_idx(), 5);
    for i in 0..4 {
        assert_eq!(r.q.used_elem(i), (u32::from(i), 0));
    }
    assert_eq!(r.q.used_elem(4), (4, 112));
}

#[test]
fn rx_frame_bigger_than_every_buffer_together_is_dropped() {
    let mut r = rx(feats(&[VIRTIO_NET_F_MRG_RXBUF]), 4);
    for _ in 0..4 {
        r.post(100);
    }
    assert_eq!(r.deliver(&frame(0, 0, 1000)), Delivery::Dropped);
    // The buffers are still there for frames that fit.
    assert_eq!(r.deliver(&frame(0, 0, 150)), Delivery::Delivered);
    assert_eq!(r.q.used_idx(), 2);
}

#[test]
fn rx_corrupt_avail_index_does_not_spin() {
    let mut r = rx(feats(&[]), 16);
    r.q.set_avail_idx(500);
    assert_eq!(r.deliver(&frame(0, 0, 100)), Delivery::NoBuffers);
    assert_eq!(r.c.queue_errors, 1);
}

#[test]
fn rx_headers_follow_the_guests_offloads() {
    // Without GUEST_CSUM: flags cleared, partial checksums dropped.
    let mut r = rx(feats(&[]), 16);
    let (_, at) = r.post(2048);
    assert_eq!(
        r.deliver(&frame(HDR_DATA_VALID, 0, 60)),
        Delivery::Delivered
    );
    assert_eq!(r.read(at, 1)[0], 0);
    assert_eq!(r.deliver(&frame(HDR_NEEDS_CSUM, 0, 60)), Delivery::Dropped);
    assert_eq!(
        r.deliver(&frame(HDR_NEEDS_CSUM, GSO_TCPV4, 60)),
        Delivery::Dropped
    );
    // A runt frame.
    assert_eq!(r.deliver(&frame(0, 0, 5)), Delivery::Dropped);

    let f = feats(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4]);
    let mut r = rx(f, 16);
    let (_, at) = r.post(2048);
    r.post(2048);
    assert_eq!(
        r.deliver(&frame(HDR_NEEDS_CSUM | 4, GSO_TCPV4, 60)),
        Delivery::Delivered
    );
    assert_eq!(r.read(at, 2), vec![HDR_NEEDS_CSUM, GSO_TCPV4]);
    assert_eq!(
        r.deliver(&frame(HDR_NEEDS_CSUM, GSO_TCPV6, 60)),
        Delivery::Dropped
    );
    assert_eq!(
        r.deliver(&frame(HDR_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 60)),
        Delivery::Dropped
    );
}

// --- The device on a real tap (needs CAP_NET_ADMIN and /dev/net/tun). ---

fn tap_name(tag: &str) -> String {
    format!("uvm{}{}", tag, std::process::id() % 100_000)
}

/// A device on a fresh tap, or `None` (and a note) where this host or user
/// cannot make taps.
fn net_or_skip(tag: &str, mac: Option<[u8; 6]>) -> Option<Net> {
    match Net::new(NetConfig {
        tap: tap_name(tag),
        mac,
        rx_rate_limit: Default::default(),
        tx_rate_limit: Default::default(),
    }) {
        Ok(n) => Some(n),
        Err(e @ (Error::TunOpen(_) | Error::Tap { .. })) => {
            eprintln!("skipped: cannot make a tap here: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn net_opens_a_tap_and_describes_itself() {
    let Some(net) = net_or_skip("a", Some([0x02, 1, 2, 3, 4, 5])) else {
        return;
    };
    let name = net.tap_name().to_string();
    assert!(std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
    let mut cfg = [0u8; 10];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 1, 2, 3, 4, 5, 1, 0, 1, 0]);
    assert_ne!(net.features() & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
    // This kernel's tap supports receive offloads, so they are offered.
    assert_ne!(net.features() & bit(VIRTIO_NET_F_GUEST_TSO4), 0);
    // A second open of a tap in use says so.
    let busy = Net::new(NetConfig {
        tap: name.clone(),
        mac: None,
        rx_rate_limit: Default::default(),
        tx_rate_limit: Default::default(),
    });
    let msg = busy.err().unwrap().to_string();
    assert!(
        msg.contains(&name) && msg.contains("another process"),
        "{msg}"
    );
    drop(net);
    assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
}

#[test]
fn generated_macs_are_local_unicast() {
    for _ in 0..100 {
        let m = generate_mac();
        assert_eq!(m[0] & 3, 2);
    }
    let e = Net::new(NetConfig {
        tap: "x".into(),
        mac: Some([1, 0, 0, 0, 0, 1]),
        rx_rate_limit: Default::default(),
        tx_rate_limit: Default::default(),
    });
    assert!(matches!(e, Err(Error::MulticastMac(_))));
}

#[test]
fn net_activation_sets_tap_offloads_and_reset_clears_them() {
    let Some(mut net) = net_or_skip("b", None) else {
        return;
    };
    let mem = memory(MEM_SIZE);
    let rxq = MockQueue::new(&mem, 0, 16);
    let txq = MockQueue::new(&mem, 0x8000, 16);
    let f = feats(&[
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_MRG_RXBUF,
    ]);
    net.activate(
        mem,
        f,
        vec![rxq.queue(), txq.queue()],
        IrqTrigger::new().unwrap(),
    )
    .unwrap();
    assert_eq!(net.counters().offload_errors, 0);
    // Activation kicked both queues so the loop looks at them.
    assert_eq!(net.evts[RX_QUEUE].read().unwrap(), 1);
    assert_eq!(net.evts[TX_QUEUE].read().unwrap(), 1);
    // Nothing to receive, nothing to send: neither blocks nor spins.
    net.process_rx();
    net.process_tx();
    assert_eq!(rxq.used_idx(), 0);
    net.reset();
    assert!(net.active.is_none());
    // One queue where two are needed.
    let mem = memory(MEM_SIZE);
    let q = MockQueue::new(&mem, 0, 16);
    let e = net.activate(mem, f, vec![q.queue()], IrqTrigger::new().unwrap());
    assert!(matches!(
        e,
        Err(Error::QueueCount {
            expected: 2,
            got: 1
        })
    ));
}

// --- Rate limits, on a real event loop, with a socket pair for the tap. ---

mod rate_limit {
    use super::*;
    use crate::rate_limiter::BucketConfig;
    use event_manager::{EventManager, SubscriberOps};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    type Loop = EventManager<Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>>;

    const RX_BUFS: u64 = 0x10_000;
    const TX_BUFS: u64 = 0x40_000;
    const SLOT: u64 = 2048;
    /// Ethernet bytes per frame (the header's 12 come on top).
    const ETH: usize = 1000;

    struct Rig {
        net: Arc<Mutex<Net>>,
        em: Loop,
        mem: Memory,
        rxq: MockQueue,
        txq: MockQueue,
        /// The host's end of the "tap".
        host: std::fs::File,
    }

    fn bw(rate: u64) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: Some(BucketConfig::per_second(rate, 0)),
            ops: None,
        }
    }

    fn rig(rx: RateLimiterConfig, tx: RateLimiterConfig) -> Rig {
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let (dev, host): (OwnedFd, OwnedFd) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags).unwrap();
        let net = Net::with_tap(
            NetConfig {
                tap: "pair".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                rx_rate_limit: rx,
                tx_rate_limit: tx,
            },
            Tap::from_file(dev.into(), "pair"),
        )
        .unwrap();
        let mem = memory(MEM_SIZE);
        let rxq = MockQueue::new(&mem, 0, 128);
        let txq = MockQueue::new(&mem, 0x8000, 128);
        let net = Arc::new(Mutex::new(net));
        net.lock()
            .unwrap()
            .activate(
                mem.clone(),
                feats(&[]),
                vec![rxq.queue(), txq.queue()],
                IrqTrigger::new().unwrap(),
            )
            .unwrap();
        let mut em: Loop = EventManager::new().unwrap();
        em.add_subscriber(net.clone());
        // The activation's kicks: nothing queued yet.
        em.run_with_timeout(0).unwrap();
        Rig {
            net,
            em,
            mem,
            rxq,
            txq,
            host: host.into(),
        }
    }

    /// Frame `i`: a header and `ETH` bytes that say `i`.
    fn numbered(i: u16) -> Vec<u8> {
        let mut f = frame(0, 0, ETH);
        f[VNET_HDR_LEN + 20..VNET_HDR_LEN + 22].copy_from_slice(&i.to_le_bytes());
        f
    }

    fn number(f: &[u8]) -> u16 {
        u16::from_le_bytes([f[VNET_HDR_LEN + 20], f[VNET_HDR_LEN + 21]])
    }

    impl Rig {
        fn kick(&self, queue: usize) {
            self.net.lock().unwrap().evts[queue].write(1).unwrap();
        }

        /// Frames the host end can read now.
        fn host_frames(&mut self) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            let mut buf = vec![0u8; FRAME_BUF_LEN];
            while let Ok(n) = self.host.read(&mut buf) {
                out.push(buf[..n].to_vec());
            }
            out
        }

        /// Runs the loop (counting wake-ups that had events) until `done`.
        fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) -> u32 {
            let deadline = Instant::now() + limit;
            let mut wakeups = 0;
            while !done(self) {
                assert!(Instant::now() < deadline, "timed out");
                if self.em.run_with_timeout(50).unwrap() > 0 {
                    wakeups += 1;
                }
            }
            wakeups
        }

        /// Frames in the RX queue's used ring from `from` on.
        fn received(&self, from: u16) -> Vec<Vec<u8>> {
            (from..self.rxq.used_idx())
                .map(|n| {
                    let (head, len) = self.rxq.used_elem(n);
                    let mut f = vec![0u8; len as usize];
                    let at = RX_BUFS + u64::from(head) * SLOT;
                    self.mem.read_slice(&mut f, GuestAddress(at)).unwrap();
                    f
                })
                .collect()
        }

        fn post_rx(&self, n: u16) {
            for i in 0..n {
                self.rxq
                    .chain(i, &[(RX_BUFS + u64::from(i) * SLOT, SLOT as u32, F_WRITE)]);
                self.rxq.push_avail(i);
            }
        }
    }

    #[test]
    fn tx_keeps_its_rate_and_order_and_rx_is_not_held_up() {
        // 60 frames of 1000 bytes at 20 KiB/s: 20 from the full bucket,
        // the other 40 (39520 bytes past what is left) over 1.93 s.
        let mut r = rig(RateLimiterConfig::default(), bw(20 << 10));
        for i in 0..60u16 {
            let at = TX_BUFS + u64::from(i) * SLOT;
            r.mem.write_slice(&numbered(i), GuestAddress(at)).unwrap();
            r.txq.chain(i, &[(at, (VNET_HDR_LEN + ETH) as u32, 0)]);
            r.txq.push_avail(i);
        }
        r.post_rx(8);
        let t0 = Instant::now();
        r.kick(TX_QUEUE);
        let mut sent = Vec::new();
        let mut rx_wait = None;
        let wakeups = r.run_until(Duration::from_secs(5), |r| {
            sent.extend(r.host_frames());
            if sent.len() >= 20 && rx_wait.is_none() {
                // TX is throttled: frames to the guest still go at once.
                let asked = Instant::now();
                for i in 0..4 {
                    r.host.write_all(&numbered(1000 + i)).unwrap();
                }
                while r.rxq.used_idx() < 4 && asked.elapsed() < Duration::from_secs(2) {
                    r.em.run_with_timeout(50).unwrap();
                }
                rx_wait = Some((asked.elapsed(), r.txq.used_idx()));
            }
            sent.len() == 60
        });
        let elapsed = t0.elapsed();
        assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
        let order: Vec<u16> = sent.iter().map(|f| number(f)).collect();
        assert_eq!(order, (0..60).collect::<Vec<_>>());
        assert!(sent.iter().all(|f| f.len() == VNET_HDR_LEN + ETH));
        let (rx_wait, tx_used) = rx_wait.unwrap();
        assert!(rx_wait < Duration::from_millis(500), "{rx_wait:?}");
        assert!(tx_used < 60, "TX had finished already");
        let got: Vec<u16> = r.received(0).iter().map(|f| number(f)).collect();
        assert_eq!(got, [1000, 1001, 1002, 1003]);
        // One wake-up per wait, not a spin.
        assert!(wakeups <= 60, "{wakeups} wake-ups");
        let net = r.net.lock().unwrap();
        let (rx, tx) = net.rate_limit_counters();
        assert!(rx.is_none());
        let tx = tx.unwrap();
        assert_eq!((tx.bytes, tx.ops), (60 * ETH as u64, 60));
        assert!((20..=40).contains(&tx.throttled), "{tx:?}");
        assert!(net.summary().contains("; tx rate limit: throttled"));
    }

    /// Bytes waiting to be read on the device's end of the "tap".
    fn queued_in_kernel(net: &Net) -> i32 {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which points
        // at `n`; the fd is the device's, open while `net` is.
        let ret = unsafe { libc::ioctl(net.tap.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(ret, 0);
        n
    }

    #[test]
    fn rx_keeps_its_rate_and_order_leaving_frames_in_the_tap() {
        let mut r = rig(bw(20 << 10), RateLimiterConfig::default());
        r.post_rx(64);
        r.kick(RX_QUEUE);
        r.em.run_with_timeout(0).unwrap();
        for i in 0..60u16 {
            r.host.write_all(&numbered(i)).unwrap();
        }
        let t0 = Instant::now();
        let mut checked_kernel_queue = false;
        let wakeups = r.run_until(Duration::from_secs(5), |r| {
            let used = r.rxq.used_idx();
            if (20..50).contains(&used) && !checked_kernel_queue {
                // Throttled: the rest waits in the kernel, one frame at
                // most in the device.
                let net = r.net.lock().unwrap();
                assert!(queued_in_kernel(&net) > 0);
                assert!(net.rx_pending <= VNET_HDR_LEN + ETH);
                checked_kernel_queue = true;
            }
            used == 60
        });
        let elapsed = t0.elapsed();
        assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
        assert!(checked_kernel_queue);
        let got: Vec<u16> = r.received(0).iter().map(|f| number(f)).collect();
        assert_eq!(got, (0..60).collect::<Vec<_>>(), "lost or reordered");
        assert!(wakeups <= 60, "{wakeups} wake-ups");
        let (rx, _) = r.net.lock().unwrap().rate_limit_counters();
        let rx = rx.unwrap();
        assert_eq!((rx.bytes, rx.ops), (60 * ETH as u64, 60));
        assert_eq!(r.net.lock().unwrap().counters().rx_dropped, 0);
    }

    #[test]
    fn a_reset_forgets_the_wait_but_not_the_tokens_spent() {
        let mut r = rig(RateLimiterConfig::default(), bw(10 << 10));
        for i in 0..12u16 {
            let at = TX_BUFS + u64::from(i) * SLOT;
            r.mem.write_slice(&numbered(i), GuestAddress(at)).unwrap();
            r.txq.chain(i, &[(at, (VNET_HDR_LEN + ETH) as u32, 0)]);
            r.txq.push_avail(i);
        }
        r.kick(TX_QUEUE);
        r.em.run_with_timeout(0).unwrap();
        assert_eq!(r.host_frames().len(), 10);
        let mut net = r.net.lock().unwrap();
        assert!(net.tx_limiter.as_ref().unwrap().is_blocked());
        net.reset();
        assert!(!net.tx_limiter.as_ref().unwrap().is_blocked());
        // The tokens are not handed back: the next frame still waits.
        assert!(!net.tx_limiter.as_mut().unwrap().consume(ETH as u64, 1));
    }
}
