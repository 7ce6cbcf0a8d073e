//! virtio-blk on a raw image file or a host block device.
//!
//! Requests run synchronously on the event loop thread, through a bounded
//! bounce buffer: guest memory is only ever reached through virtio-queue's
//! `Reader`/`Writer`, and a guest asking for gigabytes in one request costs
//! the VMM no more memory than one asking for a sector.
//!
//! With a rate limiter, every request costs one op and a read or write also
//! its data length in bytes (flush, discard, write-zeroes and get-id cost
//! the op alone). A request the limiter cannot pass yet goes back to the
//! avail ring untouched and the queue waits for the limiter's timer, which
//! is on the event loop with the queue's eventfd: the request is served
//! first, in order, when it fires.

use std::cmp::min;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::write_zeroes::{PunchHole, WriteZeroesAt};

use super::{
    chain_descriptors, features, read_config_bytes, Error, IrqTrigger, Memory, Served, VirtioDevice,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterCounters};

/// Descriptors per queue; also bounds a request's segments.
pub const QUEUE_SIZE: u16 = 256;
pub const SECTOR_SIZE: u64 = 512;
const SECTOR_SIZE_U32: u32 = 512;
/// Data segments per request: the queue minus header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// 64 MiB: where the file system cannot zero a range in place, zeroing is
/// writing, on the event loop, so one request must not be huge.
const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 17;
const MAX_DISCARD_SEGMENTS: u32 = 32;
/// 4 KiB: below that a punched hole only zeroes, it frees nothing.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// The most a virtio-blk serial holds.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
const CONFIG_LEN: usize = 60;
const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;
/// The bounce buffer between the image and guest memory.
const CHUNK: usize = 128 << 10;

// The bindings spell these as u32; the statuses are bytes on the wire.
#[allow(clippy::cast_possible_truncation)]
const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
#[allow(clippy::cast_possible_truncation)]
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
#[allow(clippy::cast_possible_truncation)]
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// What `--disk PATH[,ro][,id=NAME][,bw=..,iops=..]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes);
    /// without one, it is made from the image's device and inode numbers.
    pub id: Option<String>,
    /// Bytes (of reads and writes) and requests the queue may serve; the
    /// default limits nothing.
    pub rate_limit: RateLimiterConfig,
}

/// How requests ended, for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCounters {
    /// Answered VIRTIO_BLK_S_OK.
    pub ok: u64,
    /// Answered VIRTIO_BLK_S_IOERR: host I/O errors, requests past the end
    /// or read-only violations, malformed chains with a usable status byte.
    pub ioerr: u64,
    /// Answered VIRTIO_BLK_S_UNSUPP.
    pub unsupp: u64,
    /// Chains given back with no status, because none could be written
    /// (no writable last byte, or a chain too broken to find it).
    pub dropped: u64,
    /// The used ring could not be written, or the avail ring is corrupt.
    pub queue_errors: u64,
    /// The event loop refused the queue eventfd.
    pub event_errors: u64,
}

struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    buf: Vec<u8>,
}

struct Active {
    mem: Memory,
    queue: Queue,
    irq: IrqTrigger,
}

/// What can be known of a disk image without opening it: it exists, is a
/// regular file or a block device, and (a file) holds at least one sector.
/// The VMM calls this before it has KVM, so bad input fails alike anywhere.
pub fn check_image(path: &Path) -> Result<std::fs::Metadata, Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::DiskOpen {
        path: path.to_path_buf(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(Error::DiskType {
            path: path.to_path_buf(),
        });
    }
    // A block device's st_size is 0; its size is found once it is open.
    if ft.is_file() && meta.len() < SECTOR_SIZE {
        return Err(Error::DiskEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(meta)
}

/// A virtio-blk device with one request queue.
pub struct Block {
    disk: Disk,
    features: u64,
    config: [u8; CONFIG_LEN],
    evts: [EventFd; 1],
    active: Option<Active>,
    counters: BlockCounters,
    limiter: Option<RateLimiter>,
}

impl Block {
    pub fn new(cfg: BlockConfig) -> Result<Self, Error> {
        let path = cfg.path;
        if let Some(id) = &cfg.id {
            if id.len() > ID_BYTES {
                return Err(Error::DiskId {
                    id: id.clone(),
                    len: id.len(),
                });
            }
        }
        let open_err = |source| Error::DiskOpen {
            path: path.clone(),
            source,
        };
        let meta = check_image(&path)?;
        let limiter = RateLimiter::for_config(cfg.rate_limit)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&path)
            .map_err(open_err)?;
        // Seeking finds the size of block devices too, where st_size is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| Error::DiskSize {
                path: path.clone(),
                source,
            })?;
        let sectors = size / SECTOR_SIZE;
        if sectors == 0 {
            return Err(Error::DiskEmpty { path });
        }
        let id_string = cfg
            .id
            .unwrap_or_else(|| format!("{:x}-{:x}", meta.dev(), meta.ino()));
        let mut id = [0u8; ID_BYTES];
        let n = min(id_string.len(), ID_BYTES);
        id[..n].copy_from_slice(&id_string.as_bytes()[..n]);

        let mut avail = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_FLUSH;
        if cfg.read_only {
            avail |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        Ok(Self {
            disk: Disk {
                file,
                sectors,
                read_only: cfg.read_only,
                id,
                buf: vec![0; CHUNK],
            },
            features: avail,
            config: config_space(sectors),
            evts: [EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?],
            active: None,
            counters: BlockCounters::default(),
            limiter,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors
    }

    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// What the rate limiter let through and held back, if there is one.
    pub fn rate_limit_counters(&self) -> Option<RateLimiterCounters> {
        self.limiter.as_ref().map(RateLimiter::counters)
    }

    /// Serves the request queue: what the event loop does when it is
    /// notified. Public so tests and fuzz targets can drive the device
    /// without an event loop; does nothing before activation.
    pub fn process_queue(&mut self) {
        let Some(Active { mem, queue, irq }) = self.active.as_mut() else {
            return;
        };
        if !queue.ready() || self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            // Throttled: the limiter's timer brings the loop back.
            return;
        }
        let (disk, counters, limiter) = (&mut self.disk, &mut self.counters, &mut self.limiter);
        let mem = &*mem;
        let errors = super::serve_queue(queue, mem, irq, &self.evts[0], |chain| {
            if let Some(l) = limiter.as_mut() {
                if !l.consume(request_bytes(mem, &chain), 1) {
                    return Served::Throttled;
                }
            }
            Served::Used(disk.handle(mem, chain, counters))
        });
        self.counters.queue_errors += errors;
    }
}

fn config_space(sectors: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &SECTOR_SIZE_U32.to_le_bytes());
    put(34, &1u16.to_le_bytes());
    // Read only if DISCARD / WRITE_ZEROES are offered, so they can stay.
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
    put(44, &DISCARD_ALIGNMENT_SECTORS.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes());
    put(56, &[1]);
    c
}

/// Where the status byte goes: the last byte of the last non-empty
/// descriptor, which must be device-writable and in guest memory.
fn status_address(mem: &Memory, descs: &[Descriptor]) -> Option<GuestAddress> {
    let last = descs.iter().rev().find(|d| d.len() > 0)?;
    if !last.is_write_only() {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    GuestMemory::check_range(mem, addr, 1, Permissions::Write).then_some(addr)
}

/// What a request costs the bandwidth bucket: the data a read or write
/// moves, as its descriptors say; nothing for other requests, or for a
/// chain too broken to tell (it costs its op, and fails on its own).
fn request_bytes(mem: &Memory, chain: &DescriptorChain<&Memory>) -> u64 {
    let Ok(mut reader) = Reader::new(mem, chain.clone()) else {
        return 0;
    };
    let mut req_type = [0u8; 4];
    if reader.read_exact(&mut req_type).is_err() {
        return 0;
    }
    let data = match u32::from_le_bytes(req_type) {
        // Device-writable bytes but the status byte.
        VIRTIO_BLK_T_IN => {
            Writer::new(mem, chain.clone()).map_or(0, |w| w.available_bytes().saturating_sub(1))
        }
        // Device-readable bytes after the 16-byte header.
        VIRTIO_BLK_T_OUT => reader.available_bytes().saturating_sub(HEADER_LEN - 4),
        _ => 0,
    };
    data as u64
}

fn used_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Disk {
    /// Serves one chain; returns the used length (bytes written to it).
    fn handle(
        &mut self,
        mem: &Memory,
        chain: DescriptorChain<&Memory>,
        counters: &mut BlockCounters,
    ) -> u32 {
        let Some(status_addr) = chain_descriptors(&chain).and_then(|d| status_address(mem, &d))
        else {
            counters.dropped += 1;
            return 0;
        };
        let (status, written) = self.execute(mem, chain);
        if mem.write_obj(status, status_addr).is_err() {
            counters.dropped += 1;
            return 0;
        }
        match status {
            S_OK => counters.ok += 1,
            S_UNSUPP => counters.unsupp += 1,
            _ => counters.ioerr += 1,
        }
        used_len(written).saturating_add(1)
    }

    /// Runs the request; returns its status and how many data bytes it
    /// wrote to the guest (the status byte not included).
    fn execute(&mut self, mem: &Memory, chain: DescriptorChain<&Memory>) -> (u8, usize) {
        // Device-readable descriptors come first, then device-writable ones
        // (2.7.4.2); Reader and Writer would silently mix them otherwise.
        let mut seen_writable = false;
        for d in chain.clone() {
            if d.is_write_only() {
                seen_writable = true;
            } else if seen_writable {
                return (S_IOERR, 0);
            }
        }
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            return (S_IOERR, 0);
        };
        let mut hdr = [0u8; HEADER_LEN];
        if reader.read_exact(&mut hdr).is_err() {
            return (S_IOERR, 0);
        }
        let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        // The status byte ends the writable part; what precedes it is data.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            return (S_IOERR, 0);
        };
        if writer.split_at(data_len).is_err() {
            return (S_IOERR, 0);
        }
        match req_type {
            VIRTIO_BLK_T_IN => self.read(sector, &mut writer),
            VIRTIO_BLK_T_OUT => (self.write(sector, &mut reader), 0),
            VIRTIO_BLK_T_FLUSH => match self.file.sync_data() {
                Ok(()) => (S_OK, 0),
                Err(_) => (S_IOERR, 0),
            },
            VIRTIO_BLK_T_GET_ID => {
                if writer.available_bytes() < ID_BYTES || writer.write_all(&self.id).is_err() {
                    (S_IOERR, 0)
                } else {
                    (S_OK, ID_BYTES)
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if !self.read_only => {
                (self.discard_or_zero(req_type, &mut reader), 0)
            }
            _ => (S_UNSUPP, 0),
        }
    }

    /// The byte offset of `len` bytes at `sector`, if they are whole sectors
    /// inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(offset)
    }

    fn read(&mut self, sector: u64, w: &mut Writer<'_>) -> (u8, usize) {
        let len = w.available_bytes();
        let Some(offset) = self.range(sector, len as u64) else {
            return (S_IOERR, 0);
        };
        let mut done = 0;
        while done < len {
            let n = min(CHUNK, len - done);
            let buf = &mut self.buf[..n];
            if self.file.read_exact_at(buf, offset + done as u64).is_err()
                || w.write_all(buf).is_err()
            {
                return (S_IOERR, w.bytes_written());
            }
            done += n;
        }
        (S_OK, w.bytes_written())
    }

    fn write(&mut self, sector: u64, r: &mut Reader<'_>) -> u8 {
        if self.read_only {
            return S_IOERR;
        }
        let len = r.available_bytes();
        let Some(offset) = self.range(sector, len as u64) else {
            return S_IOERR;
        };
        let mut done = 0;
        while done < len {
            let n = min(CHUNK, len - done);
            let buf = &mut self.buf[..n];
            if r.read_exact(buf).is_err()
                || self.file.write_all_at(buf, offset + done as u64).is_err()
            {
                return S_IOERR;
            }
            done += n;
        }
        S_OK
    }

    /// DISCARD and WRITE_ZEROES: every segment is checked before any is
    /// carried out, so a bad request changes nothing.
    fn discard_or_zero(&mut self, req_type: u32, r: &mut Reader<'_>) -> u8 {
        let len = r.available_bytes();
        let count = len / SEGMENT_LEN;
        if len == 0 || !len.is_multiple_of(SEGMENT_LEN) || count > MAX_DISCARD_SEGMENTS as usize {
            return S_IOERR;
        }
        let mut segments = Vec::with_capacity(count);
        for _ in 0..count {
            let mut seg = [0u8; SEGMENT_LEN];
            if r.read_exact(&mut seg).is_err() {
                return S_IOERR;
            }
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            let (allowed, max_sectors) = if req_type == VIRTIO_BLK_T_DISCARD {
                (0, MAX_DISCARD_SECTORS)
            } else {
                (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, MAX_WRITE_ZEROES_SECTORS)
            };
            if flags & !allowed != 0 {
                return S_UNSUPP;
            }
            let bytes = u64::from(num) * SECTOR_SIZE;
            let Some(offset) = self.range(sector, bytes).filter(|_| num <= max_sectors) else {
                return S_IOERR;
            };
            segments.push((
                offset,
                bytes,
                flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            ));
        }
        for (offset, bytes, unmap) in segments {
            let done = if req_type == VIRTIO_BLK_T_DISCARD {
                // Discard is a hint: a file system that cannot punch holes
                // loses nothing by keeping the blocks.
                match self.file.punch_hole(offset, bytes) {
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
                    other => other,
                }
            } else {
                // A punched hole reads back as zeroes: the cheap way when the
                // driver allows unmapping; otherwise (or if punching fails)
                // zero the range in place.
                let punched = unmap && self.file.punch_hole(offset, bytes).is_ok();
                if punched {
                    Ok(())
                } else {
                    usize::try_from(bytes)
                        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
                        .and_then(|n| self.file.write_all_zeroes_at(offset, n))
                }
            };
            if done.is_err() {
                return S_IOERR;
            }
        }
        S_OK
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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
        mut queues: Vec<Queue>,
        irq: IrqTrigger,
    ) -> Result<(), Error> {
        if queues.len() != 1 {
            return Err(Error::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        self.active = Some(Active { mem, queue, irq });
        // Requests queued before DRIVER_OK were notified to an inactive
        // device, which dropped the notification.
        let _ = self.evts[0].write(1);
        Ok(())
    }

    fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "{} ok, {} I/O errors, {} unsupported, {} dropped chains, {} queue errors",
            c.ok, c.ioerr, c.unsupp, c.dropped, c.queue_errors
        );
        if let Some(a) = &self.active {
            s.push_str(&format!(
                "; queue: {}; interrupt status {:#x}",
                super::queue_summary(&a.queue, &a.mem),
                a.irq.status()
            ));
        }
        if let Some(l) = &self.limiter {
            s.push_str(&format!("; rate limit: {}", l.summary()));
        }
        s
    }

    fn reset(&mut self) {
        self.active = None;
        if let Some(l) = &mut self.limiter {
            l.unblock();
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if ops.add(Events::new(&self.evts[0], EventSet::IN)).is_err() {
            self.counters.event_errors += 1;
        }
        if let Some(l) = &self.limiter {
            if ops.add(Events::new(l, EventSet::IN)).is_err() {
                self.counters.event_errors += 1;
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.evts[0].as_raw_fd() {
            // Non-blocking: EAGAIN only means someone else drained it.
            let _ = self.evts[0].read();
            self.process_queue();
        } else if let Some(l) = self
            .limiter
            .as_mut()
            .filter(|l| events.fd() == l.as_raw_fd())
        {
            if l.on_timer() {
                self.process_queue();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::virtio::testing::{memory, MockQueue, TempFile, F_NEXT, F_WRITE};

    const HDR: u64 = 0x10_000;
    const DATA: u64 = 0x20_000;
    const STATUS: u64 = 0x18_000;
    const MEM_SIZE: usize = 0x100_000;

    struct T {
        blk: Block,
        q: MockQueue,
        irq: IrqTrigger,
        _file: TempFile,
    }

    fn setup_with(len: u64, read_only: bool, id: Option<&str>, qsize: u16) -> T {
        let file = TempFile::with_len(len);
        let mut blk = Block::new(BlockConfig {
            path: file.0.clone(),
            read_only,
            id: id.map(str::to_string),
            rate_limit: Default::default(),
        })
        .unwrap();
        let mem = memory(MEM_SIZE);
        let q = MockQueue::new(&mem, 0, qsize);
        let irq = IrqTrigger::new().unwrap();
        blk.activate(mem, features::VERSION_1, vec![q.queue()], irq.clone())
            .unwrap();
        T {
            blk,
            q,
            irq,
            _file: file,
        }
    }

    fn setup(len: u64) -> T {
        setup_with(len, false, None, 16)
    }

    impl T {
        fn header(&self, at: u64, req_type: u32, sector: u64) {
            self.q.mem.write_obj(req_type, GuestAddress(at)).unwrap();
            self.q.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
            self.q.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        }

        fn status(&self) -> u8 {
            self.q.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        /// Posts a standard 3-descriptor request and runs the queue.
        fn request(
            &mut self,
            req_type: u32,
            sector: u64,
            data_len: u32,
            data_write: bool,
        ) -> (u8, u32) {
            self.header(HDR, req_type, sector);
            self.q.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let mut descs = vec![(HDR, 16, 0)];
            if data_len > 0 {
                descs.push((DATA, data_len, if data_write { F_WRITE } else { 0 }));
            }
            descs.push((STATUS, 1, F_WRITE));
            let head = self.q.chain(0, &descs);
            self.run(head)
        }

        fn run(&mut self, head: u16) -> (u8, u32) {
            let before = self.q.used_idx();
            self.q.push_avail(head);
            self.blk.process_queue();
            assert_eq!(
                self.q.used_idx(),
                before.wrapping_add(1),
                "chain not returned"
            );
            let (id, len) = self.q.used_elem(before);
            assert_eq!(id, u32::from(head));
            (self.status(), len)
        }

        fn fill(&self, byte: u8, len: usize) {
            self.q
                .mem
                .write_slice(&vec![byte; len], GuestAddress(DATA))
                .unwrap();
        }

        fn data(&self, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.q.mem.read_slice(&mut v, GuestAddress(DATA)).unwrap();
            v
        }
    }

    #[test]
    fn write_then_read_round_trips_through_the_file() {
        let mut t = setup(1 << 20);
        t.fill(0xab, 4096);
        assert_eq!(t.request(VIRTIO_BLK_T_OUT, 8, 4096, false), (S_OK, 1));
        let on_disk = std::fs::read(&t._file.0).unwrap();
        assert!(on_disk[8 * 512..8 * 512 + 4096].iter().all(|&b| b == 0xab));
        assert!(on_disk[..8 * 512].iter().all(|&b| b == 0));

        t.fill(0, 4096);
        assert_eq!(t.request(VIRTIO_BLK_T_IN, 8, 4096, true), (S_OK, 4097));
        assert!(t.data(4096).iter().all(|&b| b == 0xab));
        assert_eq!(t.blk.counters().ok, 2);
        // The driver is told.
        assert_eq!(t.irq.status(), 1);
        assert!(t.irq.eventfd().read().unwrap() >= 1);
    }

    #[test]
    fn large_requests_go_through_the_bounce_buffer_in_pieces() {
        let mut t = setup(4 << 20);
        let len = 3 * CHUNK + 512;
        let pattern: Vec<u8> = (0..len).map(|i| (i / 512) as u8).collect();
        t.q.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        assert_eq!(t.request(VIRTIO_BLK_T_OUT, 1, len as u32, false).0, S_OK);
        t.fill(0, len);
        assert_eq!(
            t.request(VIRTIO_BLK_T_IN, 1, len as u32, true),
            (S_OK, len as u32 + 1)
        );
        assert!(t.data(len) == pattern);
    }

    #[test]
    fn data_may_be_split_across_descriptors_and_share_them_with_the_header() {
        let mut t = setup(1 << 20);
        // Header and the first data bytes in one descriptor (any layout).
        t.header(DATA - 16, VIRTIO_BLK_T_OUT, 0);
        t.q.mem
            .write_slice(&[7u8; 1024], GuestAddress(DATA))
            .unwrap();
        let head = t.q.chain(
            0,
            &[
                (DATA - 16, 16 + 100, 0),
                (DATA + 100, 924, 0),
                (STATUS, 1, F_WRITE),
            ],
        );
        assert_eq!(t.run(head), (S_OK, 1));
        // Data and status in one writable descriptor.
        t.header(HDR, VIRTIO_BLK_T_IN, 0);
        t.fill(0, 2048);
        let head = t.q.chain(0, &[(HDR, 16, 0), (DATA, 1025, F_WRITE)]);
        t.q.push_avail(head);
        t.blk.process_queue();
        let (_, len) = t.q.used_elem(t.q.used_idx() - 1);
        assert_eq!(len, 1025);
        assert_eq!(
            t.q.mem.read_obj::<u8>(GuestAddress(DATA + 1024)).unwrap(),
            S_OK
        );
        assert_eq!(t.data(1024), vec![7u8; 1024]);
    }

    #[test]
    fn flush_syncs_and_succeeds() {
        let mut t = setup(1 << 20);
        assert_eq!(t.request(VIRTIO_BLK_T_FLUSH, 0, 0, false), (S_OK, 1));
    }

    #[test]
    fn read_only_refuses_writes_but_reads() {
        let mut t = setup_with(1 << 20, true, None, 16);
        assert_ne!(t.blk.features() & 1 << VIRTIO_BLK_F_RO, 0);
        assert_eq!(t.blk.features() & 1 << VIRTIO_BLK_F_DISCARD, 0);
        t.fill(1, 512);
        assert_eq!(t.request(VIRTIO_BLK_T_OUT, 0, 512, false), (S_IOERR, 1));
        assert!(std::fs::read(&t._file.0).unwrap().iter().all(|&b| b == 0));
        assert_eq!(t.request(VIRTIO_BLK_T_IN, 0, 512, true).0, S_OK);
        assert_eq!(t.request(VIRTIO_BLK_T_FLUSH, 0, 0, false).0, S_OK);
        // Discard was not offered, so it is not supported.
        assert_eq!(t.request(VIRTIO_BLK_T_DISCARD, 0, 16, false).0, S_UNSUPP);
    }

    #[test]
    fn get_id_returns_the_configured_id_nul_padded() {
        let mut t = setup_with(1 << 20, false, Some("disk-one"), 16);
        t.fill(0xff, 20);
        assert_eq!(t.request(VIRTIO_BLK_T_GET_ID, 0, 20, true), (S_OK, 21));
        assert_eq!(&t.data(20), b"disk-one\0\0\0\0\0\0\0\0\0\0\0\0");
        // Too short for the id.
        assert_eq!(t.request(VIRTIO_BLK_T_GET_ID, 0, 19, true).0, S_IOERR);
    }

    #[test]
    fn get_id_defaults_to_device_and_inode() {
        let mut t = setup(1 << 20);
        assert_eq!(t.request(VIRTIO_BLK_T_GET_ID, 0, 20, true).0, S_OK);
        let meta = std::fs::metadata(&t._file.0).unwrap();
        let want = format!("{:x}-{:x}", meta.dev(), meta.ino());
        assert!(String::from_utf8_lossy(&t.data(20)).starts_with(&want[..want.len().min(20)]));
    }

    #[test]
    fn capacity_is_whole_sectors_of_the_file() {
        let t = setup((1 << 20) + 300);
        assert_eq!(t.blk.capacity(), 2048);
        let mut c = [0u8; 8];
        t.blk.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c), 2048);
        let mut s = [0u8; 4];
        t.blk.read_config(12, &mut s);
        assert_eq!(u32::from_le_bytes(s), SEG_MAX);
    }

    #[test]
    fn requests_past_the_end_fail() {
        let mut t = setup(1 << 20);
        assert_eq!(t.request(VIRTIO_BLK_T_IN, 2047, 512, true).0, S_OK);
        assert_eq!(t.request(VIRTIO_BLK_T_IN, 2047, 1024, true), (S_IOERR, 1));
        assert_eq!(t.request(VIRTIO_BLK_T_OUT, 2048, 512, false).0, S_IOERR);
        // sector * 512 overflows u64.
        assert_eq!(
            t.request(VIRTIO_BLK_T_IN, u64::MAX / 256, 512, true).0,
            S_IOERR
        );
        // sector * 512 + len overflows u64.
        assert_eq!(
            t.request(VIRTIO_BLK_T_OUT, u64::MAX / 512, 512, false).0,
            S_IOERR
        );
        assert_eq!(t.blk.counters().ioerr, 4);
    }

    #[test]
    fn partial_sectors_fail() {
        let mut t = setup(1 << 20);
        assert_eq!(t.request(VIRTIO_BLK_T_IN, 0, 100, true).0, S_IOERR);
        assert_eq!(t.request(VIRTIO_BLK_T_OUT, 0, 513, false).0, S_IOERR);
    }

    #[test]
    fn unknown_request_types_are_unsupported() {
        let mut t = setup(1 << 20);
        assert_eq!(t.request(VIRTIO_BLK_T_SCSI_CMD, 0, 0, false), (S_UNSUPP, 1));
        assert_eq!(t.request(0xdead_beef, 0, 0, false).0, S_UNSUPP);
        assert_eq!(t.blk.counters().unsupp, 2);
    }

    #[test]
    fn discard_punches_and_write_zeroes_zeroes() {
        let mut t = setup(1 << 20);
        t.fill(0x5a, 8192);
        assert_eq!(t.request(VIRTIO_BLK_T_OUT, 0, 8192, false).0, S_OK);
        // Two segments: write-zeroes of sectors 0..2 (no unmap) and 4..8 (unmap).
        let segs: [(u64, u32, u32); 2] = [(0, 2, 0), (4, 4, 1)];
        for (i, (s, n, f)) in segs.iter().enumerate() {
            let at = GuestAddress(DATA + 16 * i as u64);
            t.q.mem.write_obj(*s, at).unwrap();
            t.q.mem.write_obj(*n, at.unchecked_add(8)).unwrap();
            t.q.mem.write_obj(*f, at.unchecked_add(12)).unwrap();
        }
        assert_eq!(t.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 32, false).0, S_OK);
        let disk = std::fs::read(&t._file.0).unwrap();
        assert!(disk[..1024].iter().all(|&b| b == 0));
        assert!(disk[1024..2048].iter().all(|&b| b == 0x5a));
        assert!(disk[2048..4096].iter().all(|&b| b == 0));
        assert!(disk[4096..8192].iter().all(|&b| b == 0x5a));

        // Discard of sectors 8..16.
        t.q.mem.write_obj(8u64, GuestAddress(DATA)).unwrap();
        t.q.mem.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
        t.q.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(t.request(VIRTIO_BLK_T_DISCARD, 0, 16, false).0, S_OK);
        // A discard with the unmap flag is not a thing.
        t.q.mem.write_obj(1u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(t.request(VIRTIO_BLK_T_DISCARD, 0, 16, false).0, S_UNSUPP);
        // Past the end, or a ragged segment list.
        t.q.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        t.q.mem.write_obj(2045u64, GuestAddress(DATA)).unwrap();
        assert_eq!(t.request(VIRTIO_BLK_T_DISCARD, 0, 16, false).0, S_IOERR);
        assert_eq!(t.request(VIRTIO_BLK_T_DISCARD, 0, 15, false).0, S_IOERR);
        assert_eq!(
            t.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16 * 33, false).0,
            S_IOERR
        );
    }

    // --- Robustness: chains no correct driver builds. ---

    #[test]
    fn looping_chain_is_dropped() {
        let mut t = setup(1 << 20);
        t.header(HDR, VIRTIO_BLK_T_IN, 0);
        t.q.set_desc(0, HDR, 16, F_NEXT, 1);
        t.q.set_desc(1, DATA, 512, F_NEXT | F_WRITE, 2);
        t.q.set_desc(2, STATUS, 1, F_NEXT | F_WRITE, 0);
        t.q.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        assert_eq!(t.run(0), (0xff, 0));
        assert_eq!(t.blk.counters().dropped, 1);
    }

    #[test]
    fn chain_linking_past_the_table_is_dropped() {
        let mut t = setup(1 << 20);
        t.header(HDR, VIRTIO_BLK_T_IN, 0);
        t.q.set_desc(0, HDR, 16, F_NEXT, 1);
        t.q.set_desc(1, STATUS, 1, F_NEXT | F_WRITE, 999);
        assert_eq!(t.run(0).1, 0);
        assert_eq!(t.blk.counters().dropped, 1);
    }

    #[test]
    fn chain_longer_than_the_queue_is_dropped() {
        // 16 descriptors in a 16-entry queue is the most a chain can have;
        // the last one claiming a successor makes it too long.
        let mut t = setup(1 << 20);
        t.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        for i in 0..16 {
            t.q.set_desc(i, HDR, 16, F_NEXT, i + 1);
        }
        t.q.set_desc(15, STATUS, 1, F_NEXT | F_WRITE, 16);
        assert_eq!(t.run(0).1, 0);
        assert_eq!(t.blk.counters().dropped, 1);
    }

    #[test]
    fn head_index_outside_the_table_is_dropped() {
        let mut t = setup(1 << 20);
        t.q.push_avail(200);
        t.blk.process_queue();
        // The used ring cannot name a head past the queue: nothing is used,
        // but nothing panics and the device keeps serving.
        assert_eq!(t.blk.counters().dropped, 1);
        assert_eq!(t.blk.counters().queue_errors, 1);
        assert_eq!(t.request(VIRTIO_BLK_T_FLUSH, 0, 0, false).0, S_OK);
    }

    #[test]
    fn descriptors_outside_guest_memory_fail_with_a_status_when_possible() {
        let mut t = setup(1 << 20);
        // Data buffer outside memory: the status byte is fine, so IOERR.
        t.header(HDR, VIRTIO_BLK_T_IN, 0);
        let head = t.q.chain(
            0,
            &[
                (HDR, 16, 0),
                (0x4000_0000, 512, F_WRITE),
                (STATUS, 1, F_WRITE),
            ],
        );
        assert_eq!(t.run(head), (S_IOERR, 1));
        // Header outside memory.
        let head = t.q.chain(0, &[(u64::MAX - 8, 16, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(t.run(head), (S_IOERR, 1));
        // Status outside memory: nothing can be said, the chain is dropped.
        let head = t.q.chain(0, &[(HDR, 16, 0), (MEM_SIZE as u64, 1, F_WRITE)]);
        assert_eq!(t.run(head).1, 0);
        // Status address that wraps around.
        let head = t.q.chain(0, &[(HDR, 16, 0), (u64::MAX, 2, F_WRITE)]);
        assert_eq!(t.run(head).1, 0);
        assert_eq!(t.blk.counters().dropped, 2);
        assert_eq!(t.blk.counters().ioerr, 2);
    }

    #[test]
    fn wrong_directions() {
        let mut t = setup(1 << 20);
        // Status descriptor not writable: dropped.
        t.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        let head = t.q.chain(0, &[(HDR, 16, 0), (STATUS, 1, 0)]);
        t.q.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        assert_eq!(t.run(head), (0xff, 0));
        assert_eq!(t.blk.counters().dropped, 1);
        // Readable after writable.
        let head = t.q.chain(
            0,
            &[
                (HDR, 16, 0),
                (DATA, 512, F_WRITE),
                (DATA + 512, 512, 0),
                (STATUS, 1, F_WRITE),
            ],
        );
        assert_eq!(t.run(head).0, S_IOERR);
        // Header writable: there is no header to read.
        let head = t.q.chain(0, &[(HDR, 16, F_WRITE), (STATUS, 1, F_WRITE)]);
        assert_eq!(t.run(head).0, S_IOERR);
        // IN with a read-only data buffer: no room to read into, and the
        // readable data after the header is ignored, so zero bytes from
        // sector 0 is a valid, empty read.
        let head =
            t.q.chain(0, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
        t.header(HDR, VIRTIO_BLK_T_IN, 0);
        assert_eq!(t.run(head), (S_OK, 1));
        // OUT with a writable data buffer: nothing to write, same.
        t.header(HDR, VIRTIO_BLK_T_OUT, 0);
        let head = t.q.chain(
            0,
            &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(t.run(head), (S_OK, 1));
    }

    #[test]
    fn zero_length_descriptors() {
        let mut t = setup(1 << 20);
        t.header(HDR, VIRTIO_BLK_T_IN, 0);
        // A zero-length status after the real one: the status goes in the
        // last byte that exists.
        let head = t.q.chain(
            0,
            &[
                (HDR, 16, 0),
                (DATA, 512, F_WRITE),
                (STATUS, 1, F_WRITE),
                (STATUS + 8, 0, F_WRITE),
            ],
        );
        assert_eq!(t.run(head), (S_OK, 513));
        // Zero-length header.
        let head = t.q.chain(0, &[(HDR, 0, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(t.run(head).0, S_IOERR);
        // Only zero-length descriptors: nowhere to put a status.
        let head = t.q.chain(0, &[(HDR, 0, 0), (STATUS, 0, F_WRITE)]);
        assert_eq!(t.run(head).1, 0);
        assert_eq!(t.blk.counters().dropped, 1);
    }

    #[test]
    fn header_too_short() {
        let mut t = setup(1 << 20);
        t.header(HDR, VIRTIO_BLK_T_IN, 0);
        let head = t.q.chain(
            0,
            &[(HDR, 8, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(t.run(head), (S_IOERR, 1));
        // Status-only chain.
        let head = t.q.chain(0, &[(STATUS, 1, F_WRITE)]);
        assert_eq!(t.run(head), (S_IOERR, 1));
    }

    #[test]
    fn indirect_tables_work_and_bad_ones_are_dropped() {
        use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
        let mut t = setup(1 << 20);
        let table = 0x40_000u64;
        let mem = t.q.mem.clone();
        let put = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = table + 16 * i;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        };
        t.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
        put(0, HDR, 16, F_NEXT, 1);
        put(1, DATA, 20, F_NEXT | F_WRITE, 2);
        put(2, STATUS, 1, F_WRITE, 0);
        t.q.set_desc(0, table, 48, VRING_DESC_F_INDIRECT as u16, 0);
        assert_eq!(t.run(0), (S_OK, 21));
        // An indirect table that loops onto itself.
        put(2, STATUS, 1, F_WRITE | F_NEXT, 0);
        assert_eq!(t.run(0).1, 0);
        // A table whose length is not a whole number of descriptors.
        put(2, STATUS, 1, F_WRITE, 0);
        t.q.set_desc(0, table, 47, VRING_DESC_F_INDIRECT as u16, 0);
        assert_eq!(t.run(0).1, 0);
        // A table outside guest memory.
        t.q.set_desc(0, 0x4000_0000, 48, VRING_DESC_F_INDIRECT as u16, 0);
        assert_eq!(t.run(0).1, 0);
        assert_eq!(t.blk.counters().dropped, 3);
    }

    #[test]
    fn avail_index_running_ahead_does_not_spin() {
        let mut t = setup(1 << 20);
        // 1000 chains announced in a 16-entry ring.
        t.q.set_avail_idx(1000);
        t.blk.process_queue();
        assert_eq!(t.q.used_idx(), 0);
        assert_eq!(t.blk.counters().queue_errors, 1);
        assert!(t.irq.needs_reset());
    }

    #[test]
    fn a_full_ring_is_served_in_bounded_batches() {
        // 40 requests through a 32-entry queue: more than one batch.
        let mut t = setup_with(1 << 20, false, None, 32);
        t.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        t.q.chain(0, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        for _ in 0..32 {
            t.q.push_avail(0);
        }
        // Drain the activation kick.
        let _ = t.blk.evts[0].read();
        t.blk.process_queue();
        assert_eq!(t.q.used_idx(), 32);
        // The batch ended at the budget and asked the loop to come back.
        assert_eq!(t.blk.evts[0].read().unwrap(), 1);
        for _ in 0..8 {
            t.q.push_avail(0);
        }
        t.blk.process_queue();
        assert_eq!(t.q.used_idx(), 40);
        assert_eq!(t.blk.counters().ok, 40);
    }

    #[test]
    fn nothing_happens_before_activation_or_after_reset() {
        let mut t = setup(1 << 20);
        t.blk.reset();
        t.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        let head = t.q.chain(0, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        t.q.push_avail(head);
        t.blk.process_queue();
        assert_eq!(t.q.used_idx(), 0);
    }

    #[test]
    fn event_idx_suppresses_interrupts_the_driver_did_not_ask_for() {
        let file = TempFile::with_len(1 << 20);
        let mut blk = Block::new(BlockConfig {
            path: file.0.clone(),
            read_only: false,
            id: None,
            rate_limit: Default::default(),
        })
        .unwrap();
        let mem = memory(MEM_SIZE);
        let q = MockQueue::new(&mem, 0, 16);
        let mut queue = q.queue();
        queue.set_event_idx(true);
        let irq = IrqTrigger::new().unwrap();
        blk.activate(
            mem.clone(),
            features::VERSION_1 | features::RING_EVENT_IDX,
            vec![queue],
            irq.clone(),
        )
        .unwrap();
        // used_event (after the avail ring) = 5: interrupt only once the
        // sixth chain is used.
        mem.write_obj(5u16, GuestAddress(q.avail + 4 + 2 * 16))
            .unwrap();
        mem.write_obj(VIRTIO_BLK_T_FLUSH, GuestAddress(HDR))
            .unwrap();
        q.chain(0, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        q.push_avail(0);
        blk.process_queue();
        assert_eq!(irq.status(), 0);
        for _ in 0..5 {
            q.push_avail(0);
        }
        blk.process_queue();
        assert_eq!(irq.status(), 1);
        assert_eq!(q.used_idx(), 6);
    }

    #[test]
    fn open_errors_say_what_is_wrong() {
        let missing = Block::new(BlockConfig {
            path: "/nonexistent/disk.img".into(),
            read_only: false,
            id: None,
            rate_limit: Default::default(),
        });
        let msg = missing.err().unwrap().to_string();
        assert!(
            msg.contains("/nonexistent/disk.img") && msg.contains("No such file"),
            "{msg}"
        );

        let dir = Block::new(BlockConfig {
            path: std::env::temp_dir(),
            read_only: true,
            id: None,
            rate_limit: Default::default(),
        });
        assert!(matches!(dir, Err(Error::DiskType { .. })));

        let chr = Block::new(BlockConfig {
            path: "/dev/null".into(),
            read_only: true,
            id: None,
            rate_limit: Default::default(),
        });
        assert!(matches!(chr, Err(Error::DiskType { .. })));

        let empty = TempFile::with_len(100);
        let e = Block::new(BlockConfig {
            path: empty.0.clone(),
            read_only: true,
            id: None,
            rate_limit: Default::default(),
        });
        assert!(matches!(e, Err(Error::DiskEmpty { .. })));

        let file = TempFile::with_len(4096);
        let long = Block::new(BlockConfig {
            path: file.0.clone(),
            read_only: true,
            id: Some("x".repeat(21)),
            rate_limit: Default::default(),
        });
        assert!(matches!(long, Err(Error::DiskId { len: 21, .. })));
    }
}
