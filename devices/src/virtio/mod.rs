//! virtio 1.x devices (block, net, vsock) behind the virtio-mmio transport.
//!
//! # Who runs what, and how activation reaches the event loop
//!
//! A device ([`block::Block`], [`net::Net`], [`vsock::Vsock`]) is one object
//! behind one `Arc<Mutex<_>>`, shared by exactly two parties:
//!
//! - the [`mmio::MmioTransport`] on the MMIO bus, driven by vCPU threads. It
//!   owns the register file and the queue configuration the driver writes, and
//!   calls [`VirtioDevice::activate`] when the driver sets DRIVER_OK and
//!   [`VirtioDevice::reset`] when it writes 0 to Status;
//! - the VMM's event loop, where the same object is an
//!   [`event_manager::MutEventSubscriber`] and does all the I/O.
//!
//! The queue eventfds (the ones KVM signals as ioeventfds) are created with the
//! device and registered with the event loop in `init`, once, for the device's
//! whole life. So nothing has to be sent to the loop at activation: `activate`
//! moves the queues, guest memory and the [`IrqTrigger`] into the device under
//! its lock, then writes each queue eventfd once so that the loop looks at
//! whatever the driver queued before DRIVER_OK. Before activation and after a
//! reset the loop only drains those eventfds.
//!
//! A reset takes the same lock, so it waits for a batch being processed to
//! finish; requests are handled synchronously, so none is in flight after
//! that, and once `reset` returns the device holds no queue and no guest
//! memory of that driver any more.
//!
//! Lock order is transport then device, and only vCPU threads take the
//! transport's lock; the loop takes the device lock alone and raises
//! interrupts through [`IrqTrigger`], which needs none, so the two cannot
//! deadlock. A batch holds the device lock while it runs; vCPUs wait for it
//! only on config-space accesses, activation and reset, which drivers do
//! rarely. Each batch is bounded (a queue's worth of chains): when there is
//! more, the device writes its own queue eventfd so the loop serves the other
//! devices first and then comes back.
//!
//! # Wiring a device into the VMM
//!
//! ```ignore
//! let (transport, worker) = virtio::mmio_device(mem.clone(), Block::new(cfg)?)?;
//! for (queue, evt) in transport.ioeventfds() {
//!     // 4-byte writes of `queue` to QueueNotify, handled in the kernel.
//!     vm.register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), queue)?;
//! }
//! vm.register_irqfd(transport.irq_eventfd(), gsi)?;
//! event_manager.add_subscriber(worker.clone()); // Arc<Mutex<dyn MutEventSubscriber + Send>>
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)?;
//! ```

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};

/// The guest memory every device works on.
pub type Memory = GuestMemoryMmap<()>;

/// Feature bits common to all devices (virtio spec, "Reserved Feature Bits").
pub mod features {
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    pub const RING_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    pub const RING_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
}

/// Errors from setting up virtio devices. Guest misbehaviour is never an
/// error here: it is answered on the queues and counted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("cannot open disk image {path}: {source}")]
    DiskOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} is not a regular file or a block device")]
    DiskType { path: PathBuf },
    #[error("cannot find the size of disk image {path}: {source}")]
    DiskSize {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} is smaller than one 512-byte sector")]
    DiskEmpty { path: PathBuf },
    #[error("disk id {id:?} is {len} bytes long; a virtio-blk id holds at most 20 bytes")]
    DiskId { id: String, len: usize },
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and does uvm have CAP_NET_ADMIN?)")]
    TunOpen(#[source] io::Error),
    #[error("invalid tap name {0:?}: use 1 to 15 bytes, without '/', '%', ':' or whitespace")]
    TapName(String),
    #[error("cannot attach to tap {name}: {op}: {source}{hint}")]
    Tap {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("MAC address {0} is a multicast address; a NIC needs a unicast one")]
    MulticastMac(String),
    #[error("the driver set up virtio queue {0} with an invalid size or address")]
    QueueConfig(usize),
    #[error("the device expects {expected} queues, the transport gave it {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("vsock guest CID {0} is reserved or too large: use 3 to 4294967295")]
    VsockCid(u64),
    #[error("vsock socket {0} already exists; uvm will not remove a file it did not create")]
    VsockPathExists(PathBuf),
    #[error("cannot listen on vsock socket {path}: {source}")]
    VsockBind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("virtio-fs tag {0:?}: use 1 to 36 bytes, without NUL")]
    FsTag(String),
    #[error("vhost-user {op}: {source}")]
    Vhost {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("{0}")]
    FsBackend(String),
    #[error("cannot create a timerfd: {0}")]
    Timer(#[source] io::Error),
    #[error("invalid rate limit: {0}")]
    RateLimit(&'static str),
}

/// A device model as the transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device id (1 net, 2 block, ...).
    fn device_type(&self) -> u32;
    /// Every queue's maximum size; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, written when the driver notifies that queue
    /// (by KVM for an ioeventfd, or by the transport for a plain MMIO write).
    fn queue_events(&self) -> &[EventFd];
    /// The feature bits the device offers, [`features::VERSION_1`] included.
    fn features(&self) -> u64;
    /// Reads device config space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; ignored unless the device has writable
    /// fields.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts the device with the features the driver accepted and the
    /// queues it set up (one per [`Self::queue_max_sizes`] entry, in order; a
    /// queue the driver left disabled is not ready).
    fn activate(
        &mut self,
        mem: Memory,
        features: u64,
        queues: Vec<Queue>,
        irq: IrqTrigger,
    ) -> Result<(), Error>;
    /// Stops the device and forgets the driver: queues, memory and
    /// interrupt go away, and the device is as it was made.
    fn reset(&mut self);
    /// One line for `uvm boot --verbose`: the device's counters and, while
    /// it runs, where its queues stand (what a stalled guest needs known).
    fn summary(&self) -> String {
        String::new()
    }
}

/// Where a queue stands: the driver's avail index, how far the device took
/// from it, and how far it gave back.
pub(crate) fn queue_summary(q: &Queue, mem: &Memory) -> String {
    use std::sync::atomic::Ordering;
    use virtio_queue::QueueT;
    let avail = q
        .avail_idx(mem, Ordering::Acquire)
        .map_or_else(|_| "unreadable".to_string(), |w| w.0.to_string());
    format!(
        "avail {avail}, taken {}, used {}",
        q.next_avail(),
        q.next_used()
    )
}

struct IrqState {
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    evt: EventFd,
}

/// The device's interrupt line: the InterruptStatus register plus an eventfd
/// the VMM registers as a KVM irqfd. Clones share both, so the device's worker
/// raises the interrupt the transport reports.
#[derive(Clone)]
pub struct IrqTrigger(Arc<IrqState>);

impl IrqTrigger {
    pub fn new() -> Result<Self, Error> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        Ok(Self(Arc::new(IrqState {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            evt,
        })))
    }

    /// The eventfd to register as the device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0.evt
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's config space changed.
    pub fn signal_config_change(&self) {
        self.0.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The driver broke a queue beyond repair (virtio DEVICE_NEEDS_RESET).
    pub fn signal_needs_reset(&self) {
        self.0.needs_reset.store(true, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.0.status.load(Ordering::SeqCst)
    }

    pub fn needs_reset(&self) -> bool {
        self.0.needs_reset.load(Ordering::SeqCst)
    }

    pub fn config_generation(&self) -> u32 {
        self.0.config_generation.load(Ordering::SeqCst)
    }

    fn raise(&self, bit: u32) {
        self.0.status.fetch_or(bit, Ordering::SeqCst);
        // The only failure is a counter at its maximum, i.e. an interrupt
        // already pending, which is all this write is for.
        let _ = self.0.evt.write(1);
    }

    fn ack(&self, bits: u32) {
        self.0.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.0.status.store(0, Ordering::SeqCst);
        self.0.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// What a queue's handler did with a chain.
pub(crate) enum Served {
    /// Done: give the chain back with this used length.
    Used(u32),
    /// Not now (a rate limiter is out of tokens and has armed its timer):
    /// the chain goes back to the avail ring, untouched, to be served first
    /// when the queue is served again.
    Throttled,
}

/// Serves `queue` as every device here does: pops chains in batches of at
/// most a queue's worth, puts each in the used ring with the length `handle`
/// gives it, re-enables notifications and looks again (the driver may have
/// queued more meanwhile), and interrupts the driver once at the end if it
/// asked to be. When a batch's budget runs out, `kick` (the queue's own
/// eventfd) is written so the event loop serves the other devices first and
/// comes back. A throttled chain ends the batch where it is, notifications
/// left off: the driver need not announce more while the device waits for
/// its timer. Returns the number of ring errors met; an avail index that
/// keeps promising chains which cannot be popped means a corrupt ring, and
/// the driver is told it needs a reset instead of the loop spinning on it.
pub(crate) fn serve_queue<'m>(
    queue: &mut Queue,
    mem: &'m Memory,
    irq: &IrqTrigger,
    kick: &EventFd,
    mut handle: impl FnMut(DescriptorChain<&'m Memory>) -> Served,
) -> u64 {
    use virtio_queue::{QueueOwnedT, QueueT};
    let mut errors = 0;
    let mut used = false;
    let mut budget = queue.size();
    let mut rechecked = false;
    'batch: loop {
        if queue.disable_notification(mem).is_err() {
            errors += 1;
            break;
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            let head = chain.head_index();
            let len = match handle(chain) {
                Served::Used(len) => len,
                Served::Throttled => {
                    queue.go_to_previous_position();
                    break 'batch;
                }
            };
            match queue.add_used(mem, head, len) {
                Ok(()) => used = true,
                Err(_) => errors += 1,
            }
            budget -= 1;
            if budget == 0 {
                let _ = kick.write(1);
                break 'batch;
            }
        }
        match queue.enable_notification(mem) {
            Ok(false) => break,
            // The driver queued more while notifications were off, which
            // it may not have announced: look again, even if this pass
            // found nothing (the driver can add a chain between the empty
            // pop and the re-enabling).
            Ok(true) if popped || !rechecked => {
                rechecked = !popped;
                continue;
            }
            // Twice in a row the index promised chains that cannot be
            // popped: the ring is corrupt, and looping would spin.
            Ok(true) | Err(_) => {
                errors += 1;
                irq.signal_needs_reset();
                break;
            }
        }
    }
    if used && queue.needs_notification(mem).unwrap_or(true) {
        irq.signal_used_queue();
    }
    errors
}

/// Shares `device` between a new MMIO transport (for the bus) and the event
/// loop: the returned `Arc` goes to `EventManager::add_subscriber`, and can
/// be kept to read the device's counters.
pub fn mmio_device<D>(mem: Memory, device: D) -> Result<(MmioTransport, Arc<Mutex<D>>), Error>
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let device = Arc::new(Mutex::new(device));
    let transport = MmioTransport::new(mem, device.clone())?;
    Ok((transport, device))
}

/// Copies the part of `config` at `offset` into `data`; what lies past the
/// end reads as 0, so the driver can probe fields we do not have.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// The descriptors of `chain`, or `None` when the chain is malformed in a way
/// the iterator hides by stopping early: it loops, links past the table,
/// nests indirect tables, sits outside guest memory or is longer than 4 GiB.
/// In all those cases the last descriptor returned still has NEXT set.
pub(crate) fn chain_descriptors<M>(chain: &DescriptorChain<M>) -> Option<Vec<Descriptor>>
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory,
{
    let descs: Vec<Descriptor> = chain.clone().collect();
    match descs.last() {
        Some(last) if !last.has_next() => Some(descs),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + 'static>() {}

    #[test]
    fn devices_can_live_on_the_bus_and_in_the_event_loop() {
        shareable::<MmioTransport>();
        shareable::<block::Block>();
        shareable::<net::Net>();
        shareable::<vsock::Vsock>();
        shareable::<IrqTrigger>();
        let _: Option<Arc<Mutex<dyn crate::BusDevice>>> =
            None::<Arc<Mutex<MmioTransport>>>.map(|t| t as _);
    }

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let mut b = [0xffu8; 4];
        read_config_bytes(b"abc", 1, &mut b);
        assert_eq!(&b, b"bc\0\0");
        read_config_bytes(b"abc", u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_raised_and_acked() {
        let irq = IrqTrigger::new().unwrap();
        let clone = irq.clone();
        clone.signal_used_queue();
        clone.signal_config_change();
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        assert_eq!(irq.config_generation(), 1);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
        clone.signal_needs_reset();
        assert!(irq.needs_reset());
        irq.clear();
        assert_eq!((irq.status(), irq.needs_reset()), (0, false));
    }
}
