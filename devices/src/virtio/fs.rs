//! virtio-fs (device 26) as a vhost-user frontend.
//!
//! The FUSE requests are served by a backend process (virtiofsd) that maps
//! guest memory itself and reads and writes the rings: the VMM negotiates
//! with it over the vhost-user socket, hands it the memory table, the rings'
//! addresses and the queues' eventfds (the kick eventfds are the very ones
//! KVM signals on QueueNotify, so a guest's notification reaches the backend
//! without passing through uvm), and turns its used-buffer notifications
//! into the guest's interrupt (the MMIO transport's InterruptStatus has to
//! say why, so they cannot go to the irqfd directly).
//!
//! The backend can die under a running guest. Left alone, the guest would
//! wait forever on requests nobody reads; instead the device notices the
//! socket hang up and takes the queues over: every request the backend had
//! not answered, and every one after, gets a FUSE reply with EIO, so the
//! guest's processes see I/O errors. (This relies on the backend answering
//! in order, as virtiofsd does without a thread pool: what it had popped but
//! not answered is exactly what lies between the used and avail indices.)

use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    features, read_config_bytes, serve_queue, Error, IrqTrigger, Memory, Served, VirtioDevice,
};

/// The longest tag the config space holds (virtio 1.2, 5.11.4).
pub const TAG_BYTES: usize = 36;
/// virtiofsd's own maximum queue size.
pub const QUEUE_SIZE: u16 = 1024;
/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const NUM_QUEUES: usize = 2;
const HIPRIO: usize = 0;
/// How long a vhost-user request may wait for the backend's answer: a hung
/// backend must not hang the vCPU that activates the device.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

const FUSE_IN_HEADER: usize = 40;
const FUSE_OUT_HEADER: u32 = 16;
const FUSE_FORGET: u32 = 2;
const FUSE_BATCH_FORGET: u32 = 42;

/// The backend's socket (connected) and the tag the guest mounts.
pub struct FsConfig {
    pub socket: UnixStream,
    pub tag: String,
}

/// Checks a tag: 1 to 36 bytes, no NUL (the config space is NUL-padded).
pub fn check_tag(tag: &str) -> Result<(), Error> {
    if tag.is_empty() || tag.len() > TAG_BYTES || tag.contains('\0') {
        return Err(Error::FsTag(tag.to_string()));
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FsCounters {
    /// Used-buffer notifications of the backend passed on to the guest.
    pub interrupts: u64,
    /// Requests answered with EIO after the backend went away.
    pub failed: u64,
    pub queue_errors: u64,
}

struct Active {
    mem: Memory,
    queues: Vec<Queue>,
    irq: IrqTrigger,
}

pub struct Fs {
    config: [u8; TAG_BYTES + 4],
    /// `None` once the backend is gone (or never answered right).
    frontend: Option<Frontend>,
    /// The same socket, watched for the backend hanging up.
    watch: UnixStream,
    backend_features: u64,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    sizes: [u16; NUM_QUEUES],
    active: Option<Active>,
    /// Why the backend is no longer used.
    gone: Option<String>,
    /// Whether the event loop reads the kick eventfds (only once the
    /// backend is gone: before, they are the backend's to read).
    kicks_watched: bool,
    counters: FsCounters,
}

fn vhost_err(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { op, source }
}

impl Fs {
    /// Negotiates with the backend: ownership, its virtio features and the
    /// protocol features uvm uses.
    pub fn new(cfg: FsConfig) -> Result<Self, Error> {
        check_tag(&cfg.tag)?;
        let io_err = |source: io::Error| Error::Vhost {
            op: "socket",
            source: vhost::Error::IOError(source),
        };
        cfg.socket
            .set_read_timeout(Some(BACKEND_TIMEOUT))
            .map_err(io_err)?;
        cfg.socket
            .set_write_timeout(Some(BACKEND_TIMEOUT))
            .map_err(io_err)?;
        let watch = cfg.socket.try_clone().map_err(io_err)?;
        let mut frontend = Frontend::from_stream(cfg.socket, NUM_QUEUES as u64);
        frontend.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(vhost_err("GET_FEATURES"))?;
        if backend_features & features::VERSION_1 == 0 {
            return Err(Error::FsBackend(
                "the vhost-user backend does not offer VIRTIO_F_VERSION_1".into(),
            ));
        }
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            // REPLY_ACK: every request is confirmed, so a backend that
            // refuses one is noticed at once, not at the guest's first I/O.
            frontend
                .set_protocol_features(offered & VhostUserProtocolFeatures::REPLY_ACK)
                .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
        }
        let mut config = [0u8; TAG_BYTES + 4];
        config[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        // num_request_queues
        config[TAG_BYTES..].copy_from_slice(&1u32.to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        Ok(Self {
            config,
            frontend: Some(frontend),
            watch,
            backend_features,
            kicks: (0..NUM_QUEUES).map(|_| evt()).collect::<Result<_, _>>()?,
            calls: (0..NUM_QUEUES).map(|_| evt()).collect::<Result<_, _>>()?,
            sizes: [QUEUE_SIZE; NUM_QUEUES],
            active: None,
            gone: None,
            kicks_watched: false,
            counters: FsCounters::default(),
        })
    }

    pub fn counters(&self) -> FsCounters {
        self.counters
    }

    /// Why the backend is no longer served by, if it is not.
    pub fn backend_gone(&self) -> Option<&str> {
        self.gone.as_deref()
    }

    /// Hands the driver's queues to the backend.
    fn start_backend(&mut self, acked: u64) -> Result<(), Error> {
        let Some(fe) = self.frontend.as_mut() else {
            return Ok(());
        };
        let Some(a) = &self.active else {
            return Ok(());
        };
        let proto = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        fe.set_features(acked | proto)
            .map_err(vhost_err("SET_FEATURES"))?;
        let regions = a
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                Error::FsBackend(
                    "guest memory is not shared (a vhost-user device needs memfd-backed RAM)"
                        .into(),
                )
            })?;
        fe.set_mem_table(&regions)
            .map_err(vhost_err("SET_MEM_TABLE"))?;
        for (i, q) in a.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let hva = |addr: u64| {
                a.mem
                    .get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|_| Error::QueueConfig(i))
            };
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(q.desc_table())?,
                used_ring_addr: hva(q.used_ring())?,
                avail_ring_addr: hva(q.avail_ring())?,
                log_addr: None,
            };
            fe.set_vring_num(i, q.size())
                .map_err(vhost_err("SET_VRING_NUM"))?;
            fe.set_vring_addr(i, &ring)
                .map_err(vhost_err("SET_VRING_ADDR"))?;
            fe.set_vring_base(i, q.next_avail())
                .map_err(vhost_err("SET_VRING_BASE"))?;
            fe.set_vring_call(i, &self.calls[i])
                .map_err(vhost_err("SET_VRING_CALL"))?;
            fe.set_vring_kick(i, &self.kicks[i])
                .map_err(vhost_err("SET_VRING_KICK"))?;
            if proto != 0 {
                fe.set_vring_enable(i, true)
                    .map_err(vhost_err("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Makes the event loop look at every queue.
    fn kick_all(&self) {
        for k in &self.kicks {
            let _ = k.write(1);
        }
    }

    /// From now on uvm answers the queues itself, with EIO.
    fn take_over(&mut self, why: String, ops: Option<&mut EventOps>) {
        if self.gone.is_none() {
            self.gone = Some(why);
        }
        self.frontend = None;
        if let Some(ops) = ops {
            let _ = ops.remove(Events::new(&self.watch, EventSet::IN));
            if !self.kicks_watched {
                for k in &self.kicks {
                    if ops.add(Events::new(k, EventSet::IN)).is_err() {
                        self.counters.queue_errors += 1;
                    }
                }
                self.kicks_watched = true;
            }
        }
        if let Some(a) = &mut self.active {
            // What the backend answered is in the used ring; everything
            // after it is unanswered, whether it had popped it or not.
            for q in a.queues.iter_mut().filter(|q| q.ready()) {
                match q.used_idx(&a.mem, Ordering::Acquire) {
                    Ok(used) => {
                        q.set_next_avail(used.0);
                        q.set_next_used(used.0);
                    }
                    Err(_) => self.counters.queue_errors += 1,
                }
            }
        }
        for i in 0..NUM_QUEUES {
            self.fail_requests(i);
        }
    }

    /// Answers what queue `i` holds with EIO (FORGETs need no answer).
    fn fail_requests(&mut self, i: usize) {
        let Some(a) = &mut self.active else {
            return;
        };
        let Some(q) = a.queues.get_mut(i).filter(|q| q.ready()) else {
            return;
        };
        let mem = &a.mem;
        let mut failed = 0;
        let errors = serve_queue(q, mem, &a.irq, &self.kicks[i], |chain| {
            if i == HIPRIO {
                return Served::Used(0);
            }
            Served::Used(match eio_reply(mem, chain) {
                0 => 0,
                n => {
                    failed += 1;
                    n
                }
            })
        });
        self.counters.failed += failed;
        self.counters.queue_errors += errors;
    }

    /// Whether the watched socket says the backend is gone: hung up, or
    /// talking out of turn (the backend never speaks first on it).
    fn socket_says_gone(&self) -> Option<String> {
        let mut b = [0u8; 1];
        // SAFETY: recv on a socket fd we own, into a 1-byte buffer that
        // lives across the call; MSG_PEEK leaves any data in place.
        let n = unsafe {
            libc::recv(
                self.watch.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => Some("the vhost-user backend closed its socket".into()),
            n if n > 0 => Some("the vhost-user backend sent a message out of turn".into()),
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                    _ => Some(format!("the vhost-user backend's socket failed: {e}")),
                }
            }
        }
    }
}

/// The FUSE reply to `chain`'s request carrying EIO; returns its length, or
/// 0 where there is nothing to answer (a FORGET, or a chain too malformed
/// to hold a reply).
fn eio_reply(mem: &Memory, chain: DescriptorChain<&Memory>) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) =
        (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    else {
        return 0;
    };
    let mut hdr = [0u8; FUSE_IN_HEADER];
    if reader.read_exact(&mut hdr).is_err() {
        return 0;
    }
    let opcode = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if opcode == FUSE_FORGET || opcode == FUSE_BATCH_FORGET {
        return 0;
    }
    let mut out = [0u8; FUSE_OUT_HEADER as usize];
    out[..4].copy_from_slice(&FUSE_OUT_HEADER.to_le_bytes());
    out[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
    // unique: the request's id, which the guest matches replies by.
    out[8..].copy_from_slice(&hdr[8..16]);
    match writer.write_all(&out) {
        Ok(()) => FUSE_OUT_HEADER,
        Err(_) => 0,
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    fn features(&self) -> u64 {
        self.backend_features
            & (features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX)
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
        if queues.len() != NUM_QUEUES {
            return Err(Error::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        self.active = Some(Active { mem, queues, irq });
        if self.frontend.is_none() {
            // Gone before this driver came: answer it at once.
            self.kick_all();
            return Ok(());
        }
        if let Err(e) = self.start_backend(features) {
            // The guest still gets a device, one that fails its requests:
            // better than one that hangs them.
            self.take_over(e.to_string(), None);
            // Only the event loop can start reading the kicks; a socket
            // shut down on this side wakes it as a hang-up would (and
            // tells the backend to go).
            let _ = self.watch.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }

    fn reset(&mut self) {
        if let (Some(fe), Some(a)) = (&self.frontend, &self.active) {
            // GET_VRING_BASE stops a ring in the backend.
            for (i, _) in a.queues.iter().enumerate().filter(|(_, q)| q.ready()) {
                if fe.get_vring_base(i).is_err() {
                    self.counters.queue_errors += 1;
                }
            }
        }
        self.active = None;
    }

    fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "{} interrupts from the backend, {} requests failed with EIO, {} queue errors",
            c.interrupts, c.failed, c.queue_errors
        );
        if let Some(why) = &self.gone {
            s.push_str(&format!("; backend gone: {why}"));
        }
        if let Some(a) = &self.active {
            for (i, q) in a.queues.iter().enumerate() {
                s.push_str(&format!("; queue {i}: {}", super::queue_summary(q, &a.mem)));
            }
        }
        s
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        let mut ok = ops.add(Events::new(&self.watch, EventSet::IN)).is_ok();
        for c in &self.calls {
            ok &= ops.add(Events::new(c, EventSet::IN)).is_ok();
        }
        if !ok {
            self.counters.queue_errors += 1;
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.watch.as_raw_fd() {
            let hung_up = events
                .event_set()
                .intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR);
            let why = self
                .socket_says_gone()
                .or_else(|| hung_up.then(|| "the vhost-user backend hung up".to_string()));
            if let Some(why) = why {
                self.take_over(why, Some(ops));
            }
            return;
        }
        if let Some(i) = self.calls.iter().position(|c| c.as_raw_fd() == fd) {
            if self.calls[i].read().is_ok() {
                if let Some(a) = &self.active {
                    self.counters.interrupts += 1;
                    a.irq.signal_used_queue();
                }
            }
            return;
        }
        if let Some(i) = self.kicks.iter().position(|k| k.as_raw_fd() == fd) {
            let _ = self.kicks[i].read();
            if self.frontend.is_none() {
                self.fail_requests(i);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::virtio::testing::{memory, MockQueue, F_WRITE};
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, FileOffset, GuestMemoryMmap};

    const GET_FEATURES: u32 = 1;
    const SET_VRING_KICK: u32 = 12;

    /// A backend that answers GET_FEATURES with `features` and reads every
    /// other message without a word; it hangs up after the kick of the last
    /// queue when `die` is set.
    fn fake_backend(features: u64, die: bool) -> UnixStream {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || loop {
            let mut hdr = [0u8; 12];
            if theirs.read_exact(&mut hdr).is_err() {
                return;
            }
            let req = u32::from_le_bytes(hdr[..4].try_into().unwrap());
            let size = u32::from_le_bytes(hdr[8..].try_into().unwrap());
            let mut body = vec![0u8; size as usize];
            if theirs.read_exact(&mut body).is_err() {
                return;
            }
            if req == GET_FEATURES {
                let mut reply = Vec::new();
                reply.extend_from_slice(&req.to_le_bytes());
                reply.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
                reply.extend_from_slice(&8u32.to_le_bytes());
                reply.extend_from_slice(&features.to_le_bytes());
                theirs.write_all(&reply).unwrap();
            }
            if die && req == SET_VRING_KICK && body.first() == Some(&1) {
                return;
            }
        });
        ours
    }

    fn fs(features: u64, die: bool) -> Result<Fs, Error> {
        Fs::new(FsConfig {
            socket: fake_backend(features, die),
            tag: "share".into(),
        })
    }

    /// A LOOKUP request on `q`: the in header (readable), then room for the
    /// reply; made available.
    fn request(q: &MockQueue, head: u16, unique: u64) {
        let hdr = 0x8000 + u64::from(head) * 0x100;
        q.mem.write_obj(40u32, GuestAddress(hdr)).unwrap();
        q.mem.write_obj(1u32, GuestAddress(hdr + 4)).unwrap();
        q.mem.write_obj(unique, GuestAddress(hdr + 8)).unwrap();
        q.chain(head, &[(hdr, 40, 0), (hdr + 0x80, 64, F_WRITE)]);
        q.push_avail(head);
    }

    fn reply(q: &MockQueue, head: u16) -> (u32, i32, u64) {
        let at = 0x8000 + u64::from(head) * 0x100 + 0x80;
        (
            q.mem.read_obj(GuestAddress(at)).unwrap(),
            q.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            q.mem.read_obj(GuestAddress(at + 8)).unwrap(),
        )
    }

    #[test]
    fn tags_fit_the_config_space() {
        assert!(check_tag("share").is_ok());
        assert!(check_tag(&"x".repeat(TAG_BYTES)).is_ok());
        for bad in ["", "a\0b", &"x".repeat(TAG_BYTES + 1)] {
            assert!(check_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_config_space_holds_the_tag_and_one_request_queue() {
        let f = fs(features::VERSION_1, false).unwrap();
        let mut cfg = [0xffu8; TAG_BYTES + 4];
        f.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], b"share\0");
        assert_eq!(&cfg[TAG_BYTES..], &1u32.to_le_bytes());
        assert_eq!(f.device_type(), 26);
        assert_eq!(f.queue_max_sizes().len(), 2);
    }

    #[test]
    fn a_backend_without_virtio_1_is_refused() {
        let e = fs(features::RING_EVENT_IDX, false).err().expect("refused");
        assert!(e.to_string().contains("VERSION_1"), "{e}");
    }

    #[test]
    fn a_backend_that_hangs_up_at_once_is_an_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let e = Fs::new(FsConfig {
            socket: ours,
            tag: "t".into(),
        })
        .err()
        .expect("refused");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn without_shared_memory_requests_fail_with_eio_instead_of_hanging() {
        let mut f = fs(features::VERSION_1, false).unwrap();
        let mem = memory(0x20000);
        let hi = MockQueue::new(&mem, 0, 16);
        let rq = MockQueue::new(&mem, 0x1000, 16);
        request(&rq, 0, 0xfeed_1234);
        request(&rq, 2, 0xfeed_1235);
        let irq = IrqTrigger::new().unwrap();
        f.activate(
            mem,
            features::VERSION_1,
            vec![hi.queue(), rq.queue()],
            irq.clone(),
        )
        .unwrap();
        assert!(f.backend_gone().unwrap().contains("not shared"));
        assert_eq!(rq.used_idx(), 2);
        assert_eq!(rq.used_elem(0), (0, 16));
        assert_eq!(reply(&rq, 0), (16, -libc::EIO, 0xfeed_1234));
        assert_eq!(reply(&rq, 2), (16, -libc::EIO, 0xfeed_1235));
        assert_eq!(f.counters().failed, 2);
        assert_ne!(irq.status() & 1, 0, "the guest was interrupted");
        // Later requests too, once the event loop reads the kicks.
        let f = Arc::new(Mutex::new(f));
        let mut ops = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
        ops.add_subscriber(f.clone());
        for _ in 0..5 {
            ops.run_with_timeout(50).unwrap();
        }
        request(&rq, 4, 0xfeed_1236);
        f.lock().unwrap().kicks[1].write(1).unwrap();
        for _ in 0..5 {
            ops.run_with_timeout(50).unwrap();
        }
        assert_eq!(rq.used_idx(), 3);
        assert_eq!(reply(&rq, 4), (16, -libc::EIO, 0xfeed_1236));
    }

    #[test]
    fn forgets_and_malformed_chains_get_no_reply() {
        let mem = memory(0x20000);
        let q = MockQueue::new(&mem, 0, 16);
        for (i, opcode) in [FUSE_FORGET, FUSE_BATCH_FORGET].into_iter().enumerate() {
            let hdr = 0x8000 + i as u64 * 0x100;
            mem.write_obj(opcode, GuestAddress(hdr + 4)).unwrap();
            q.chain(i as u16 * 2, &[(hdr, 40, 0), (hdr + 0x80, 64, F_WRITE)]);
            q.push_avail(i as u16 * 2);
        }
        // No room for a reply; no header at all.
        q.chain(4, &[(0x9000, 40, 0)]);
        q.push_avail(4);
        q.chain(5, &[(0x9000, 8, 0), (0x9100, 64, F_WRITE)]);
        q.push_avail(5);
        let mut queue = q.queue();
        for _ in 0..4 {
            let chain = queue.pop_descriptor_chain(&mem).unwrap();
            assert_eq!(eio_reply(&mem, chain), 0);
        }
    }

    /// Guest memory in a file, as vhost-user needs it.
    fn shared_memory(len: usize) -> (Memory, crate::virtio::testing::TempFile) {
        let file = crate::virtio::testing::TempFile::with_len(len as u64);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file.0)
            .unwrap();
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            len,
            Some(FileOffset::new(f, 0)),
        )])
        .unwrap();
        (mem, file)
    }

    #[test]
    fn when_the_backend_dies_the_requests_it_left_fail_with_eio() {
        let f = fs(features::VERSION_1, true).unwrap();
        let (mem, _file) = shared_memory(0x20000);
        let hi = MockQueue::new(&mem, 0, 16);
        let rq = MockQueue::new(&mem, 0x1000, 16);
        // One request the backend "answered" before it died, one it did not.
        request(&rq, 0, 1);
        request(&rq, 2, 2);
        let irq = IrqTrigger::new().unwrap();
        let f = Arc::new(Mutex::new(f));
        let mut ops = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
        ops.add_subscriber(f.clone());
        f.lock()
            .unwrap()
            .activate(
                mem.clone(),
                features::VERSION_1,
                vec![hi.queue(), rq.queue()],
                irq,
            )
            .unwrap();
        assert!(f.lock().unwrap().backend_gone().is_none());
        // The backend's answer to the first: used element 0, index 1.
        mem.write_obj(0u32, GuestAddress(rq.used + 4)).unwrap();
        mem.write_obj(24u32, GuestAddress(rq.used + 8)).unwrap();
        mem.write_obj(1u16, GuestAddress(rq.used + 2)).unwrap();
        for _ in 0..50 {
            if f.lock().unwrap().backend_gone().is_some() {
                break;
            }
            ops.run_with_timeout(100).unwrap();
        }
        let d = f.lock().unwrap();
        assert!(d.backend_gone().is_some(), "the hang-up was not noticed");
        assert_eq!(rq.used_idx(), 2);
        assert_eq!(rq.used_elem(1), (2, 16));
        assert_eq!(reply(&rq, 2), (16, -libc::EIO, 2));
        assert_eq!(reply(&rq, 0).1, 0, "the answered request is left alone");
        assert_eq!(d.counters().failed, 1);
    }
}
