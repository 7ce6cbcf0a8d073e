//! virtio-net on a tap.
//!
//! Frames cross whole, virtio-net header included: the tap speaks the same
//! 12-byte header, so the device only checks it against the negotiated
//! features (the kernel would trust a TX header; the guest must not be
//! handed offloads it did not accept) and fills in `num_buffers`.
//!
//! Receive: the tap is watched edge-triggered. Frames are read while the
//! guest has buffers; when it runs out, the frame already read stays pending,
//! the tap is left alone (the kernel queues, then drops, further frames) and
//! the device waits for the RX queue to be notified. A guest that stops
//! taking frames costs one wake-up, not a busy loop. Buffers popped for a
//! frame that does not fit yet (mergeable buffers) are held across
//! wake-ups rather than pushed back, so the ring's event index keeps
//! meaning "tell me about the next new buffer".
//!
//! Transmit: each chain is copied into one buffer and written to the tap in
//! one write, which is what a tap needs (one write, one frame).
//!
//! Rate limits: each direction has a limiter of its own, charged one op and
//! the Ethernet frame's bytes per frame. Out of tokens, TX stops popping
//! (the frame stays in the avail ring) and RX stops reading the tap (later
//! frames wait in the tap's kernel queue, which drops past its length as a
//! slow link would; a frame already read stays pending in the device).
//! Either resumes when its limiter's timer fires on the event loop.

pub mod tap;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    chain_descriptors, features, read_config_bytes, Error, IrqTrigger, Memory, Served, VirtioDevice,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterCounters};
pub use tap::{Tap, VNET_HDR_LEN};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
const ETH_HLEN: usize = 14;
/// Room for the biggest frame either way: a 64 KiB GSO frame with its
/// Ethernet and VLAN headers, behind the virtio-net header.
pub const FRAME_BUF_LEN: usize = 68 << 10;
const CONFIG_LEN: usize = 10;

const fn bit(n: u32) -> u64 {
    1 << n
}

// The bindings spell these as u32; in the header they are bytes (and the
// link status a u16).
#[allow(clippy::cast_possible_truncation)]
mod wire {
    use virtio_bindings::virtio_net::*;
    pub const HDR_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    pub const HDR_DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    pub const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;
    pub const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
    pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
    pub const LINK_UP: u16 = VIRTIO_NET_S_LINK_UP as u16;
}
use wire::*;

/// What `--net tap=NAME[,mac=..][,bw=..,ops=..]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// Without one, a random locally administered address.
    pub mac: Option<[u8; 6]>,
    /// Frames and their bytes from the tap to the guest; the default
    /// limits nothing.
    pub rx_rate_limit: RateLimiterConfig,
    /// Frames and their bytes from the guest to the tap.
    pub tx_rate_limit: RateLimiterConfig,
}

/// What happened to frames, for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the tap the guest could not be given: a header using
    /// offloads it did not accept, too big for its buffers, or arriving
    /// while the device is stopped.
    pub rx_dropped: u64,
    /// RX chains returned unused because they were not usable buffers.
    pub rx_bad_chains: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// TX chains not sent because the chain or its header was malformed.
    pub tx_dropped: u64,
    /// Frames the tap refused.
    pub tx_errors: u64,
    pub tap_read_errors: u64,
    /// Used ring writes that failed, or an avail ring that is corrupt.
    pub queue_errors: u64,
    pub offload_errors: u64,
    pub event_errors: u64,
}

/// Why a TX chain was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDrop {
    /// Loops, bad links, or buffers outside guest memory.
    BadChain,
    /// TX buffers are for the device to read only.
    DeviceWritable,
    TooShort,
    TooLong,
    /// Flags or GSO the driver did not negotiate, or makes no sense on TX.
    Header,
}

/// Copies the frame a TX chain carries (virtio-net header first) into
/// `buf` and returns its length, or says why it must not be sent.
pub fn read_tx_frame(
    mem: &Memory,
    chain: DescriptorChain<&Memory>,
    features: u64,
    buf: &mut [u8],
) -> Result<usize, TxDrop> {
    let descs = chain_descriptors(&chain).ok_or(TxDrop::BadChain)?;
    if descs.iter().any(|d| d.is_write_only()) {
        return Err(TxDrop::DeviceWritable);
    }
    let mut r = Reader::new(mem, chain).map_err(|_| TxDrop::BadChain)?;
    let len = r.available_bytes();
    if len < VNET_HDR_LEN + ETH_HLEN {
        return Err(TxDrop::TooShort);
    }
    let frame = buf.get_mut(..len).ok_or(TxDrop::TooLong)?;
    r.read_exact(frame).map_err(|_| TxDrop::BadChain)?;
    check_tx_header(frame, features)?;
    Ok(len)
}

fn check_tx_header(hdr: &[u8], features: u64) -> Result<(), TxDrop> {
    let has = |f: u32| features & bit(f) != 0;
    let (flags, gso) = (hdr[0], hdr[1]);
    let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
    // DATA_VALID and RSC_INFO are the device's to say.
    if flags & !HDR_NEEDS_CSUM != 0 || (flags != 0 && !has(VIRTIO_NET_F_CSUM)) {
        return Err(TxDrop::Header);
    }
    let ecn = gso & GSO_ECN != 0;
    let kind_ok = match gso & !GSO_ECN {
        GSO_NONE => !ecn,
        GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4) && gso_size > 0,
        GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6) && gso_size > 0,
        _ => false,
    };
    if !kind_ok || (ecn && !has(VIRTIO_NET_F_HOST_ECN)) {
        return Err(TxDrop::Header);
    }
    Ok(())
}

/// Makes a header from the tap fit what the guest accepted, or says the
/// frame cannot be given to it.
fn fixup_rx_header(hdr: &mut [u8], features: u64) -> Result<(), ()> {
    let has = |f: u32| features & bit(f) != 0;
    let (flags, gso) = (hdr[0], hdr[1]);
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        hdr[0] = flags & (HDR_NEEDS_CSUM | HDR_DATA_VALID);
    } else if flags & HDR_NEEDS_CSUM != 0 {
        // A partial checksum the guest would not know to finish.
        return Err(());
    } else {
        // Without GUEST_CSUM, flags must be 0 (5.1.6.4.1).
        hdr[0] = 0;
    }
    let ecn = gso & GSO_ECN != 0;
    let ok = match gso & !GSO_ECN {
        GSO_NONE => !ecn,
        GSO_TCPV4 => has(VIRTIO_NET_F_GUEST_TSO4),
        GSO_TCPV6 => has(VIRTIO_NET_F_GUEST_TSO6),
        _ => false,
    };
    if !ok || (ecn && !has(VIRTIO_NET_F_GUEST_ECN)) {
        return Err(());
    }
    Ok(())
}

/// What [`RxRing::deliver`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The frame cannot be given to this guest; it is gone.
    Dropped,
    /// No buffer to put it in: keep it and retry on the next RX notification.
    NoBuffers,
}

/// The receive queue, plus the buffers taken from it for a frame that did
/// not fit yet.
pub struct RxRing {
    mem: Arc<Memory>,
    queue: Queue,
    features: u64,
    held: VecDeque<(DescriptorChain<Arc<Memory>>, usize)>,
    held_bytes: usize,
    used: bool,
}

impl RxRing {
    pub fn new(mem: Arc<Memory>, queue: Queue, features: u64) -> Self {
        Self {
            mem,
            queue,
            features,
            held: VecDeque::new(),
            held_bytes: 0,
            used: false,
        }
    }

    pub fn ready(&self) -> bool {
        self.queue.ready()
    }

    /// Puts `frame` (virtio-net header first, as the tap gives it) in the
    /// guest's buffers.
    pub fn deliver(&mut self, frame: &mut [u8], c: &mut NetCounters) -> Delivery {
        if frame.len() < VNET_HDR_LEN + ETH_HLEN || fixup_rx_header(frame, self.features).is_err() {
            c.rx_dropped += 1;
            return Delivery::Dropped;
        }
        let mergeable = self.features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let need = frame.len();
        loop {
            let enough = if mergeable {
                self.held_bytes >= need
            } else {
                !self.held.is_empty()
            };
            if enough {
                break;
            }
            if self.held.len() >= usize::from(self.queue.size()) {
                // Every buffer the guest has is held and the frame still
                // does not fit: it never will.
                c.rx_dropped += 1;
                return Delivery::Dropped;
            }
            if !self.take_buffer(c) {
                return Delivery::NoBuffers;
            }
        }
        if !mergeable && self.held[0].1 < need {
            // Keep the buffer: the next frame may be small enough.
            c.rx_dropped += 1;
            return Delivery::Dropped;
        }
        let mut count = 0usize;
        let mut room = 0;
        for (_, cap) in &self.held {
            count += 1;
            room += cap;
            if room >= need {
                break;
            }
        }
        // At most a queue's worth of buffers, and queues hold < 2^16.
        let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
        frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0;
        for _ in 0..count {
            let Some((chain, cap)) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= cap;
            let head = chain.head_index();
            let n = cap.min(need - off);
            let ok = Writer::new(&*self.mem, chain)
                .map(|mut w| w.write_all(&frame[off..off + n]).is_ok())
                .unwrap_or(false);
            if !ok {
                c.queue_errors += 1;
            }
            self.add_used(head, if ok { n } else { 0 }, c);
            off += n;
        }
        c.rx_frames += 1;
        c.rx_bytes += (need - VNET_HDR_LEN) as u64;
        Delivery::Delivered
    }

    fn add_used(&mut self, head: u16, len: usize, c: &mut NetCounters) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        match self.queue.add_used(&*self.mem, head, len) {
            Ok(()) => self.used = true,
            Err(_) => c.queue_errors += 1,
        }
    }

    /// Moves one usable buffer from the avail ring to `held`. Unusable
    /// ones are given back empty on the way. False when there is none; the
    /// driver has then been asked to notify the next one.
    fn take_buffer(&mut self, c: &mut NetCounters) -> bool {
        let mut rechecked = false;
        // Bad chains are given back, and a guest could keep posting them:
        // a queue's worth per call is enough.
        let mut bad_budget = self.queue.size();
        loop {
            let Some(chain) = self.queue.pop_descriptor_chain(self.mem.clone()) else {
                if rechecked {
                    // The index promises buffers that cannot be popped.
                    c.queue_errors += 1;
                    return false;
                }
                match self.queue.enable_notification(&*self.mem) {
                    // Some arrived while notifications were off.
                    Ok(true) => {
                        rechecked = true;
                        continue;
                    }
                    Ok(false) => return false,
                    Err(_) => {
                        c.queue_errors += 1;
                        return false;
                    }
                }
            };
            rechecked = false;
            match rx_capacity(&self.mem, &chain) {
                Some(cap) => {
                    self.held_bytes += cap;
                    self.held.push_back((chain, cap));
                    return true;
                }
                None => {
                    c.rx_bad_chains += 1;
                    self.add_used(chain.head_index(), 0, c);
                    bad_budget = bad_budget.saturating_sub(1);
                    if bad_budget == 0 {
                        return false;
                    }
                }
            }
        }
    }

    /// Called before a round of deliveries: while the device is taking
    /// buffers anyway, the driver need not announce each one.
    fn begin(&mut self) {
        let _ = self.queue.disable_notification(&*self.mem);
    }

    /// Interrupts the driver if buffers were used and it wants to know.
    fn notify(&mut self, irq: &IrqTrigger) {
        if self.used && self.queue.needs_notification(&*self.mem).unwrap_or(true) {
            irq.signal_used_queue();
        }
        self.used = false;
    }
}

/// Bytes a chain can take as an RX buffer, if it is one: well formed,
/// device-writable throughout, in guest memory, room for the header.
fn rx_capacity(mem: &Arc<Memory>, chain: &DescriptorChain<Arc<Memory>>) -> Option<usize> {
    let descs = chain_descriptors(chain)?;
    if descs.iter().any(|d| !d.is_write_only()) {
        return None;
    }
    let cap = Writer::new(&**mem, chain.clone()).ok()?.available_bytes();
    (cap >= VNET_HDR_LEN).then_some(cap)
}

struct Active {
    mem: Arc<Memory>,
    features: u64,
    rx: RxRing,
    tx: Queue,
    irq: IrqTrigger,
}

/// A virtio-net device with one RX and one TX queue on a tap.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    features: u64,
    config: [u8; CONFIG_LEN],
    evts: [EventFd; 2],
    active: Option<Active>,
    rx_buf: Vec<u8>,
    /// Length of a frame read from the tap and not yet delivered.
    rx_pending: usize,
    /// The guest has no RX buffers: leave the tap alone until it posts some.
    rx_waiting: bool,
    /// The pending frame has been charged to the RX limiter.
    rx_admitted: bool,
    tx_buf: Vec<u8>,
    counters: NetCounters,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random unicast, locally administered address.
fn generate_mac() -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let b = h.finish().to_le_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

impl Net {
    pub fn new(cfg: NetConfig) -> Result<Self, Error> {
        // Refused before a tap is made for it.
        if let Some(m) = cfg.mac.filter(|m| m[0] & 1 != 0) {
            return Err(Error::MulticastMac(format_mac(&m)));
        }
        let tap = Tap::open(&cfg.tap)?;
        Self::with_tap(cfg, tap)
    }

    /// The device on an open tap (or, in tests, what stands in for one).
    fn with_tap(cfg: NetConfig, tap: Tap) -> Result<Self, Error> {
        let mac = match cfg.mac {
            Some(m) if m[0] & 1 != 0 => return Err(Error::MulticastMac(format_mac(&m))),
            Some(m) => m,
            None => generate_mac(),
        };
        let rx_limiter = RateLimiter::for_config(cfg.rx_rate_limit)?;
        let tx_limiter = RateLimiter::for_config(cfg.tx_rate_limit)?;
        // Offer the guest receive offloads only if this kernel's tap can
        // produce them; then start with none until the guest accepts some.
        let all = tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6 | tap::TUN_F_TSO_ECN;
        let guest_offloads = tap.set_offload(all).is_ok();
        let _ = tap.set_offload(0);

        let mut avail = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN);
        if guest_offloads {
            avail |= bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_ECN);
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        Ok(Self {
            tap,
            mac,
            features: avail,
            config,
            evts: [evt()?, evt()?],
            active: None,
            rx_buf: vec![0; FRAME_BUF_LEN],
            rx_pending: 0,
            rx_waiting: false,
            rx_admitted: false,
            tx_buf: vec![0; FRAME_BUF_LEN],
            counters: NetCounters::default(),
            rx_limiter,
            tx_limiter,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// What the RX and TX limiters let through and held back, for those
    /// there are.
    pub fn rate_limit_counters(
        &self,
    ) -> (Option<RateLimiterCounters>, Option<RateLimiterCounters>) {
        (
            self.rx_limiter.as_ref().map(RateLimiter::counters),
            self.tx_limiter.as_ref().map(RateLimiter::counters),
        )
    }

    /// Moves frames from the tap to the guest: what the event loop does when
    /// the tap is readable or the RX queue is notified. Public so tests can
    /// drive the device without an event loop.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut().filter(|a| a.rx.ready()) else {
            self.drain_tap();
            return;
        };
        active.rx.begin();
        let mut budget = QUEUE_SIZE;
        loop {
            if self.rx_pending == 0 {
                if self
                    .rx_limiter
                    .as_ref()
                    .is_some_and(RateLimiter::is_blocked)
                {
                    // Frames wait in the tap until the limiter's timer.
                    break;
                }
                match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.rx_pending = n;
                        self.rx_admitted = false;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.counters.tap_read_errors += 1;
                        break;
                    }
                }
            }
            if !self.rx_admitted {
                if let Some(l) = self.rx_limiter.as_mut() {
                    let bytes = self.rx_pending.saturating_sub(VNET_HDR_LEN) as u64;
                    if !l.consume(bytes, 1) {
                        // The frame stays pending; the timer brings it.
                        break;
                    }
                }
                self.rx_admitted = true;
            }
            let frame = &mut self.rx_buf[..self.rx_pending];
            match active.rx.deliver(frame, &mut self.counters) {
                Delivery::Delivered | Delivery::Dropped => self.rx_pending = 0,
                Delivery::NoBuffers => {
                    self.rx_waiting = true;
                    break;
                }
            }
            budget -= 1;
            if budget == 0 {
                // More may be waiting in the tap, which being edge-triggered
                // will not say so again: come back after the others.
                let _ = self.evts[RX_QUEUE].write(1);
                break;
            }
        }
        active.rx.notify(&active.irq);
    }

    /// A stopped NIC drops what arrives, rather than let the tap hand the
    /// guest stale frames when it starts.
    fn drain_tap(&mut self) {
        for _ in 0..QUEUE_SIZE {
            match self.tap.read_frame(&mut self.rx_buf) {
                Ok(n) if n > 0 => self.counters.rx_dropped += 1,
                _ => break,
            }
        }
    }

    /// Sends what the guest queued on TX to the tap: what the event loop
    /// does when the TX queue is notified.
    pub fn process_tx(&mut self) {
        let Some(Active {
            mem,
            features,
            tx,
            irq,
            ..
        }) = self.active.as_mut()
        else {
            return;
        };
        if !tx.ready()
            || self
                .tx_limiter
                .as_ref()
                .is_some_and(RateLimiter::is_blocked)
        {
            // Throttled: the limiter's timer brings the loop back.
            return;
        }
        let mem = &**mem;
        let (tap, buf, counters) = (&self.tap, &mut self.tx_buf, &mut self.counters);
        let limiter = &mut self.tx_limiter;
        let errors = super::serve_queue(tx, mem, irq, &self.evts[TX_QUEUE], |chain| {
            if let Some(l) = limiter.as_mut() {
                // What the chain holds, header aside; a broken chain costs
                // its op and is dropped below.
                let bytes = Reader::new(mem, chain.clone())
                    .map_or(0, |r| r.available_bytes().saturating_sub(VNET_HDR_LEN));
                if !l.consume(bytes as u64, 1) {
                    return Served::Throttled;
                }
            }
            match read_tx_frame(mem, chain, *features, buf) {
                Ok(n) => match tap.write_frame(&buf[..n]) {
                    Ok(w) if w == n => {
                        counters.tx_frames += 1;
                        counters.tx_bytes += (n - VNET_HDR_LEN) as u64;
                    }
                    _ => counters.tx_errors += 1,
                },
                Err(_) => counters.tx_dropped += 1,
            }
            Served::Used(0)
        });
        self.counters.queue_errors += errors;
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: Memory,
        features: u64,
        queues: Vec<Queue>,
        irq: IrqTrigger,
    ) -> Result<(), Error> {
        let got = queues.len();
        let [rxq, txq]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| Error::QueueCount { expected: 2, got })?;
        let has = |f: u32| features & bit(f) != 0;
        let mut offload = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            offload |= tap::TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                offload |= tap::TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                offload |= tap::TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) && offload & (tap::TUN_F_TSO4 | tap::TUN_F_TSO6) != 0 {
                offload |= tap::TUN_F_TSO_ECN;
            }
        }
        // Fewer offloads than the guest accepted is always correct, only
        // slower: the kernel then checksums and segments for it.
        if self.tap.set_offload(offload).is_err() {
            self.counters.offload_errors += 1;
            let _ = self.tap.set_offload(0);
        }
        let mem = Arc::new(mem);
        self.active = Some(Active {
            rx: RxRing::new(mem.clone(), rxq, features),
            mem,
            features,
            tx: txq,
            irq,
        });
        self.rx_pending = 0;
        self.rx_waiting = false;
        self.rx_admitted = false;
        for evt in &self.evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "rx {} frames {} bytes ({} dropped, {} bad chains), tx {} frames {} bytes \
             ({} dropped, {} tap errors), {} tap read errors, {} queue errors",
            c.rx_frames,
            c.rx_bytes,
            c.rx_dropped,
            c.rx_bad_chains,
            c.tx_frames,
            c.tx_bytes,
            c.tx_dropped,
            c.tx_errors,
            c.tap_read_errors,
            c.queue_errors
        );
        if let Some(a) = &self.active {
            s.push_str(&format!(
                "; rx queue: {}, {} buffers held, a {}-byte frame pending, {}; \
                 tx queue: {}; interrupt status {:#x}",
                super::queue_summary(&a.rx.queue, &a.mem),
                a.rx.held.len(),
                self.rx_pending,
                if self.rx_waiting {
                    "waiting for the driver's buffers"
                } else {
                    "not waiting"
                },
                super::queue_summary(&a.tx, &a.mem),
                a.irq.status()
            ));
        }
        for (dir, l) in [("rx", &self.rx_limiter), ("tx", &self.tx_limiter)] {
            if let Some(l) = l {
                s.push_str(&format!("; {dir} rate limit: {}", l.summary()));
            }
        }
        s
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = 0;
        self.rx_waiting = false;
        self.rx_admitted = false;
        for l in [&mut self.rx_limiter, &mut self.tx_limiter]
            .into_iter()
            .flatten()
        {
            l.unblock();
        }
        let _ = self.tap.set_offload(0);
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let rx = Events::new(&self.evts[RX_QUEUE], EventSet::IN);
        let tx = Events::new(&self.evts[TX_QUEUE], EventSet::IN);
        let tap = Events::new(&self.tap, EventSet::IN | EventSet::EDGE_TRIGGERED);
        let timers = [&self.rx_limiter, &self.tx_limiter]
            .into_iter()
            .flatten()
            .map(|l| Events::new(l, EventSet::IN));
        for ev in [rx, tx, tap].into_iter().chain(timers) {
            if ops.add(ev).is_err() {
                self.counters.event_errors += 1;
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.evts[RX_QUEUE].as_raw_fd() {
            let _ = self.evts[RX_QUEUE].read();
            self.rx_waiting = false;
            self.process_rx();
        } else if fd == self.evts[TX_QUEUE].as_raw_fd() {
            let _ = self.evts[TX_QUEUE].read();
            self.process_tx();
        } else if fd == self.tap.as_raw_fd() && !self.rx_waiting {
            self.process_rx();
        } else if let Some(l) = self.rx_limiter.as_mut().filter(|l| fd == l.as_raw_fd()) {
            // With no RX buffers the pending frame waits for the driver's
            // notification as it would unthrottled.
            if l.on_timer() && !self.rx_waiting {
                self.process_rx();
            }
        } else if let Some(l) = self.tx_limiter.as_mut().filter(|l| fd == l.as_raw_fd()) {
            if l.on_timer() {
                self.process_tx();
            }
        }
    }
}

#[cfg(test)]
mod tests;
