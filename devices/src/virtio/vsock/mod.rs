//! virtio-vsock, served by the VMM itself, with the host side on Unix
//! sockets the way Firecracker lays them out, so that tools written for
//! Firecracker work unchanged:
//!
//! - a host program connects to `uds_path`, writes `CONNECT <port>\n`, and
//!   once the guest accepts reads `OK <host port>\n`; then the stream is the
//!   connection. If nobody listens in the guest the stream just closes;
//! - a guest connecting to host port P reaches whoever listens on
//!   `<uds_path>_<P>`.
//!
//! # Why it is built this way
//!
//! Everything runs on the event loop thread: one Unix stream per
//! connection, each in the loop's epoll set, no thread per connection. The
//! loop is level-triggered, so the one rule is that a stream is watched
//! only for what it can make progress on now: for reading while the guest
//! has given credit for it and it is not already waiting for an RX buffer,
//! for writing while guest bytes wait for it. A stream that can do neither
//! is taken out of the set altogether, because epoll reports a hang-up
//! whatever the interest. A guest that posts no RX buffers, or grants no
//! credit, or a host program that stops reading, so costs one wake-up and
//! stalls only what it owns.
//!
//! Host to guest, bytes are read from the stream straight into the guest's
//! RX buffer, as much as the buffer and the guest's credit allow: nothing is
//! buffered per connection on that side. When a stream turns out to have
//! nothing after all, the popped RX buffer is kept for the next packet
//! rather than given back empty.
//!
//! Guest to host, bytes go straight on to the stream; what it cannot take
//! now is kept, and that is bounded by the credit the device advertised
//! (`BUF_ALLOC` per connection, `fwd_cnt` counting what reached the
//! stream). A guest that sends past it is reset, so it cannot make the VMM
//! allocate more. Credit updates go out when half of `BUF_ALLOC` has been
//! forwarded since the guest last heard, so it never waits for one.
//!
//! What the device owes the guest on a connection (REQUEST, RESPONSE,
//! CREDIT_UPDATE, CREDIT_REQUEST) is a set of flags, each owed once, served
//! round-robin with data. RSTs for packets that belong to no connection go
//! in a bounded queue; when it is full the TX queue is left alone until RX
//! drains it, so a guest that floods garbage without taking answers stalls
//! its own TX queue instead of growing a queue in the VMM.
//!
//! event-manager keeps its own map of fds, so a stream leaves the epoll set
//! before it is closed. `reset` runs on a vCPU thread, without the loop's
//! `EventOps`: it shuts every stream down there (the host programs see EOF
//! at once) and leaves the fds to the loop, which it wakes with an eventfd.
//! Deadlines (a CONNECT line or a guest's RESPONSE that does not come, an
//! RST after SHUTDOWN that does not come) run on a timerfd armed only
//! while something waits. Writes to host streams use `MSG_NOSIGNAL`: a
//! host program gone is an error for its connection, never a SIGPIPE.
//!
//! Host-side ports of host-initiated connections count up from 2^30, as
//! Firecracker's do, away from the ports guest services listen on. A host
//! stream's EOF is a SHUTDOWN with SEND only (unlike Firecracker, which
//! shuts both ways): a host program that half-closes (`shutdown(SHUT_WR)`,
//! as `echo cmd | socat` does) still gets the guest's answer; the guest's
//! own SHUTDOWN or a failed write to the stream ends the connection.

mod conn;
mod muxer;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    chain_descriptors, features, queue_summary, read_config_bytes, Error, IrqTrigger, Memory,
    VirtioDevice,
};
use muxer::Muxer;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
/// The host's address, as every guest knows it.
pub const HOST_CID: u64 = 2;
/// Receive buffer space the device advertises per connection.
pub const BUF_ALLOC: u32 = 256 << 10;
/// The largest payload of one packet either way (Linux sends at most this).
pub const MAX_PKT_DATA: u32 = 64 << 10;
/// Connections at once, counting host streams still sending their CONNECT.
pub const MAX_CONNECTIONS: usize = 1024;
/// The first host-side port of host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line, newline included.
pub const CONNECT_LINE_MAX: usize = 64;
/// RSTs for no connection queued before TX is left alone.
const STRAY_RST_CAP: usize = QUEUE_SIZE as usize;
const CONFIG_LEN: usize = 8;

/// The wire protocol's numbers (virtio spec 5.10.6).
pub mod proto {
    pub const TYPE_STREAM: u16 = 1;
    pub const OP_REQUEST: u16 = 1;
    pub const OP_RESPONSE: u16 = 2;
    pub const OP_RST: u16 = 3;
    pub const OP_SHUTDOWN: u16 = 4;
    pub const OP_RW: u16 = 5;
    pub const OP_CREDIT_UPDATE: u16 = 6;
    pub const OP_CREDIT_REQUEST: u16 = 7;
    /// SHUTDOWN flags: the sender will receive no more, send no more.
    pub const SHUTDOWN_RCV: u32 = 1;
    pub const SHUTDOWN_SEND: u32 = 2;
}

/// What `--vsock cid=N,uds=PATH` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// Where host programs connect; must not exist yet.
    pub uds_path: PathBuf,
}

/// How long the device waits on a peer before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For a host program's CONNECT line, then for the guest's answer.
    pub connect: Duration,
    /// For the guest's RST after the device's SHUTDOWN, or for the host
    /// program to take what the guest sent before closing.
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            close: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    fn tick(&self) -> Duration {
        (self.connect.min(self.close) / 4).max(Duration::from_millis(1))
    }
}

/// What happened on the device, for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockCounters {
    /// Host programs' connections the guest accepted.
    pub host_connections: u64,
    /// Guest connections a host listener took.
    pub guest_connections: u64,
    /// Connections refused either way: nobody listening, or too many.
    pub refused: u64,
    /// Host streams closed for a malformed or overlong CONNECT line.
    pub bad_connects: u64,
    pub bytes_to_guest: u64,
    pub bytes_to_host: u64,
    pub tx_packets: u64,
    pub resets_sent: u64,
    /// Chains returned unused: too short, wrong direction, a length past
    /// the maximum or the descriptor, outside guest memory.
    pub bad_chains: u64,
    /// Well-formed packets that made no sense: wrong cids or type, for no
    /// connection, against the protocol.
    pub bad_packets: u64,
    /// Connections reset for sending past their credit.
    pub credit_violations: u64,
    /// Connections dropped for a peer that did not answer in time.
    pub timeouts: u64,
    pub host_errors: u64,
    pub queue_errors: u64,
    pub event_errors: u64,
}

struct Active {
    mem: Arc<Memory>,
    rx: Queue,
    tx: Queue,
    /// Only ever used for TRANSPORT_RESET, on migration: kept, untouched.
    _event: Queue,
    irq: IrqTrigger,
    /// An RX buffer taken for a stream that then had nothing.
    held_rx: Option<DescriptorChain<Arc<Memory>>>,
}

/// A virtio-vsock device whose host side is a Unix socket.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    /// The socket file as bound, so that drop removes only that.
    uds_id: (u64, u64),
    features: u64,
    config: [u8; CONFIG_LEN],
    evts: [EventFd; 3],
    /// Wakes the loop to close what `reset` shut down.
    wake: EventFd,
    timer: TimerFd,
    timer_armed: bool,
    active: Option<Active>,
    mux: Muxer,
}

impl Vsock {
    /// Checks the cid and listens on `uds_path` (which must not exist; the
    /// socket file goes when the device does). Host programs may connect
    /// from then on; their REQUESTs reach the guest once a driver is up.
    pub fn new(cfg: VsockConfig) -> Result<Self, Error> {
        let cid = cfg.guest_cid;
        if !(3..=u64::from(u32::MAX)).contains(&cid) {
            return Err(Error::VsockCid(cid));
        }
        let path = cfg.uds_path;
        if path.symlink_metadata().is_ok() {
            return Err(Error::VsockPathExists(path));
        }
        let bind_err = |source| Error::VsockBind {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        // From here on the socket file is ours: a failure removes it.
        let guard = RemoveOnError(Some(&path));
        let uds_id = path
            .symlink_metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        let evts = [evt()?, evt()?, evt()?];
        let wake = evt()?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(|e| Error::Timer(e.into()))?;
        guard.disarm();
        let mut config = [0u8; CONFIG_LEN];
        config.copy_from_slice(&cid.to_le_bytes());
        Ok(Self {
            cid,
            uds_path: path.clone(),
            uds_id,
            features: features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC,
            config,
            evts,
            wake,
            timer,
            timer_armed: false,
            active: None,
            mux: Muxer::new(cid, path, listener),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn counters(&self) -> VsockCounters {
        self.mux.counters
    }

    /// Shorter waits, for tests of what happens when peers do not answer.
    #[cfg(test)]
    pub(crate) fn set_timeouts(&mut self, t: Timeouts) {
        self.mux.timeouts = t;
    }

    #[cfg(test)]
    pub(crate) fn set_max_connections(&mut self, n: usize) {
        self.mux.max_conns = n;
    }

    /// Serves the TX queue: what the event loop does when it is notified.
    fn process_tx(&mut self) {
        let Self {
            active, mux, evts, ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        if !a.tx.ready() {
            return;
        }
        let mem = a.mem.clone();
        let mem = &*mem;
        let mut used = false;
        let mut budget = a.tx.size().max(1);
        let mut rechecked = false;
        'batch: loop {
            if a.tx.disable_notification(mem).is_err() {
                mux.counters.queue_errors += 1;
                break;
            }
            let mut popped = false;
            loop {
                if mux.tx_blocked() {
                    // Served again once RX has taken the replies.
                    mux.tx_waiting = true;
                    break 'batch;
                }
                let Some(mut chain) = a.tx.pop_descriptor_chain(mem) else {
                    break;
                };
                popped = true;
                let head = chain.head_index();
                let well_formed = chain_descriptors(&chain).is_some();
                let claimed = claimed_addresses(mem, &chain);
                match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) if well_formed => mux.handle_tx(&pkt),
                    _ => mux.bad_chain(claimed),
                }
                match a.tx.add_used(mem, head, 0) {
                    Ok(()) => used = true,
                    Err(_) => mux.counters.queue_errors += 1,
                }
                budget -= 1;
                if budget == 0 {
                    let _ = evts[TX_QUEUE].write(1);
                    break 'batch;
                }
            }
            match a.tx.enable_notification(mem) {
                Ok(false) => break,
                // More came while notifications were off (see serve_queue).
                Ok(true) if popped || !rechecked => {
                    rechecked = !popped;
                    continue;
                }
                Ok(true) | Err(_) => {
                    mux.counters.queue_errors += 1;
                    a.irq.signal_needs_reset();
                    break;
                }
            }
        }
        if used && a.tx.needs_notification(mem).unwrap_or(true) {
            a.irq.signal_used_queue();
        }
    }

    /// Gives the guest what it is owed, while it has RX buffers for it.
    fn process_rx(&mut self) {
        let Self {
            active, mux, evts, ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        if !a.rx.ready() {
            return;
        }
        let mem = a.mem.clone();
        let _ = a.rx.disable_notification(&*mem);
        let mut used = false;
        let mut budget = usize::from(a.rx.size());
        while mux.has_rx_work() {
            if budget == 0 {
                // Come back after the other devices.
                let _ = evts[RX_QUEUE].write(1);
                break;
            }
            budget -= 1;
            let Some(chain) = a
                .held_rx
                .take()
                .or_else(|| pop_rx(&mut a.rx, &mem, &mut mux.counters))
            else {
                // Out of buffers; the driver will say when there are more.
                break;
            };
            let head = chain.head_index();
            let mut it = chain.clone();
            let well_formed = chain_descriptors(&chain).is_some();
            let filled = match VsockPacket::from_rx_virtq_chain(&*mem, &mut it, MAX_PKT_DATA) {
                Ok(mut pkt) if well_formed && pkt.data_slice().is_some() => {
                    match pkt.set_header_from_raw(&[0; PKT_HEADER_SIZE]) {
                        Ok(()) => Ok(mux.fill_rx(&mut pkt)),
                        Err(_) => Err(()),
                    }
                }
                _ => Err(()),
            };
            let len = match filled {
                Ok(Some(len)) => len,
                Ok(None) => {
                    a.held_rx = Some(chain);
                    continue;
                }
                Err(()) => {
                    mux.counters.bad_chains += 1;
                    0
                }
            };
            match a.rx.add_used(&*mem, head, len) {
                Ok(()) => used = true,
                Err(_) => mux.counters.queue_errors += 1,
            }
        }
        if used && a.rx.needs_notification(&*mem).unwrap_or(true) {
            a.irq.signal_used_queue();
        }
        if mux.tx_waiting && !mux.tx_blocked() {
            mux.tx_waiting = false;
            let _ = evts[TX_QUEUE].write(1);
        }
    }

    fn update_timer(&mut self, still_needed: Option<bool>) {
        if still_needed == Some(false) && self.timer_armed {
            let _ = self.timer.unset();
            self.timer_armed = false;
        }
        if self.mux.timer_needed && !self.timer_armed {
            let tick = TimeSpec::from(self.mux.timeouts.tick());
            match self
                .timer
                .set(Expiration::Interval(tick), TimerSetTimeFlags::empty())
            {
                Ok(()) => self.timer_armed = true,
                Err(_) => self.mux.counters.event_errors += 1,
            }
        }
        self.mux.timer_needed = false;
    }
}

/// Removes the socket file `new` bound if it fails after binding.
struct RemoveOnError<'a>(Option<&'a Path>);

impl RemoveOnError<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnError<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The cids and ports a TX chain's header names, if it has a readable one,
/// whether or not the rest of the chain can be used.
fn claimed_addresses(mem: &Memory, chain: &DescriptorChain<&Memory>) -> Option<muxer::Addresses> {
    use vm_memory::Bytes;
    let head = chain.clone().next()?;
    if head.is_write_only() || (head.len() as usize) < PKT_HEADER_SIZE {
        return None;
    }
    let mut h = [0u8; 24];
    mem.read_slice(&mut h, head.addr()).ok()?;
    let u64_at = |o: usize| h.get(o..o + 8)?.try_into().ok().map(u64::from_le_bytes);
    let u32_at = |o: usize| h.get(o..o + 4)?.try_into().ok().map(u32::from_le_bytes);
    Some(muxer::Addresses {
        src_cid: u64_at(0)?,
        dst_cid: u64_at(8)?,
        src_port: u32_at(16)?,
        dst_port: u32_at(20)?,
    })
}

/// The next RX buffer the driver posted, if any; when there is none the
/// driver is asked to say when there is.
fn pop_rx(
    q: &mut Queue,
    mem: &Arc<Memory>,
    c: &mut VsockCounters,
) -> Option<DescriptorChain<Arc<Memory>>> {
    if let Some(chain) = q.pop_descriptor_chain(mem.clone()) {
        return Some(chain);
    }
    match q.enable_notification(&**mem) {
        // Some arrived while notifications were off.
        Ok(true) => q.pop_descriptor_chain(mem.clone()),
        Ok(false) => None,
        Err(_) => {
            c.queue_errors += 1;
            None
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Only the socket this device bound: if someone replaced it since,
        // theirs stays.
        let same = self
            .uds_path
            .symlink_metadata()
            .is_ok_and(|m| (m.dev(), m.ino()) == self.uds_id);
        if same {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
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
        _features: u64,
        queues: Vec<Queue>,
        irq: IrqTrigger,
    ) -> Result<(), Error> {
        let got = queues.len();
        let [rx, tx, event]: [Queue; 3] = queues
            .try_into()
            .map_err(|_| Error::QueueCount { expected: 3, got })?;
        self.active = Some(Active {
            mem: Arc::new(mem),
            rx,
            tx,
            _event: event,
            irq,
            held_rx: None,
        });
        for evt in &self.evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.mux.close_all();
        let _ = self.wake.write(1);
    }

    fn summary(&self) -> String {
        let c = &self.mux.counters;
        let (open, handshaking) = self.mux.open_connections();
        let mut s = format!(
            "cid {}, {} connections open ({} more sending CONNECT); {} from the host, \
             {} from the guest, {} refused, {} bad CONNECT lines, {} timed out; \
             {} bytes to the guest, {} to the host; {} resets sent, {} bad chains, \
             {} bad packets, {} credit violations, {} host stream errors, {} queue errors",
            self.cid,
            open,
            handshaking,
            c.host_connections,
            c.guest_connections,
            c.refused,
            c.bad_connects,
            c.timeouts,
            c.bytes_to_guest,
            c.bytes_to_host,
            c.resets_sent,
            c.bad_chains,
            c.bad_packets,
            c.credit_violations,
            c.host_errors,
            c.queue_errors,
        );
        if let Some(a) = &self.active {
            s.push_str(&format!(
                "; rx queue: {}{}; tx queue: {}{}; interrupt status {:#x}",
                queue_summary(&a.rx, &a.mem),
                if a.held_rx.is_some() {
                    ", a buffer held"
                } else {
                    ""
                },
                queue_summary(&a.tx, &a.mem),
                if self.mux.tx_waiting {
                    ", waiting for RX to drain"
                } else {
                    ""
                },
                a.irq.status()
            ));
        }
        s
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let timer = self.timer.as_fd().as_raw_fd();
        let events = [
            Events::new(&self.evts[RX_QUEUE], EventSet::IN),
            Events::new(&self.evts[TX_QUEUE], EventSet::IN),
            Events::new(&self.evts[EVENT_QUEUE], EventSet::IN),
            Events::new(&self.wake, EventSet::IN),
            Events::new_raw(timer, EventSet::IN),
            Events::new(&self.mux.listener, EventSet::IN),
        ];
        for ev in events {
            if ops.add(ev).is_err() {
                self.mux.counters.event_errors += 1;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // What a reset closed goes first, so that none of its fds is taken
        // for a stranger below.
        self.mux.reap(ops);
        let fd = events.fd();
        let mut timer_still_needed = None;
        if fd == self.evts[RX_QUEUE].as_raw_fd() {
            // The driver posted buffers: whatever waited for them goes now.
            let _ = self.evts[RX_QUEUE].read();
        } else if fd == self.evts[TX_QUEUE].as_raw_fd() {
            let _ = self.evts[TX_QUEUE].read();
            self.process_tx();
        } else if fd == self.evts[EVENT_QUEUE].as_raw_fd() {
            let _ = self.evts[EVENT_QUEUE].read();
        } else if fd == self.wake.as_raw_fd() {
            let _ = self.wake.read();
        } else if fd == self.timer.as_fd().as_raw_fd() {
            // Nonblocking: an expiry already consumed reads as EAGAIN.
            let _ = self.timer.wait();
            timer_still_needed = Some(self.mux.tick(Instant::now(), ops));
        } else if fd == self.mux.listener.as_raw_fd() {
            self.mux.accept(ops);
        } else if !self.mux.stream_event(fd, events.event_set()) {
            // Not ours (any more): make sure it cannot fire again.
            let _ = ops.remove(events);
        }
        if self.mux.has_rx_work() {
            self.process_rx();
        }
        self.mux.reconcile(ops);
        self.update_timer(timer_still_needed);
    }
}

#[cfg(test)]
mod tests;
