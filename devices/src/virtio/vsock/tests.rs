//! The device driven through a real event loop, the test playing the
//! guest's driver on mock queues and the host programs on real Unix
//! sockets in a temp dir.

#![allow(clippy::cast_possible_truncation)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::proto::*;
use super::*;
use crate::virtio::testing::{memory, MockQueue, TempDir, F_NEXT, F_WRITE};

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 16 << 20;
const HDR: usize = PKT_HEADER_SIZE;
/// Each RX buffer is one descriptor, header and 4 KiB of data, as Linux
/// posts them.
const RX_BUFS: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x2000;
const RX_BUF_LEN: u32 = (HDR + 4096) as u32;
/// TX packets go in slots of a header descriptor and a data descriptor.
const TX_BUFS: u64 = 0x40_0000;
const TX_STRIDE: u64 = 0x11000;
const TX_SLOTS: u16 = 32;
/// What the test's guest advertises per connection.
const GUEST_BUF: u32 = 64 << 10;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pkt {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

impl Pkt {
    /// A packet from the guest's `src` port to the host's `dst` port.
    fn guest(op: u16, src: u32, dst: u32) -> Self {
        Self {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            type_: TYPE_STREAM,
            op,
            buf_alloc: GUEST_BUF,
            ..Self::default()
        }
    }

    fn data(mut self, d: &[u8]) -> Self {
        self.len = d.len() as u32;
        self.data = d.to_vec();
        self
    }

    fn flags(mut self, f: u32) -> Self {
        self.flags = f;
        self
    }

    fn fwd(mut self, fwd_cnt: u32) -> Self {
        self.fwd_cnt = fwd_cnt;
        self
    }

    fn header(&self) -> [u8; HDR] {
        let mut h = [0u8; HDR];
        h[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        h[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        h[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        h[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        h[24..28].copy_from_slice(&self.len.to_le_bytes());
        h[28..30].copy_from_slice(&self.type_.to_le_bytes());
        h[30..32].copy_from_slice(&self.op.to_le_bytes());
        h[32..36].copy_from_slice(&self.flags.to_le_bytes());
        h[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        h[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        h
    }

    fn parse(b: &[u8]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let len = u32_at(24);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len,
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
            data: b[HDR..].to_vec(),
        }
    }
}

/// Byte `i` of a test stream.
fn pattern(i: usize) -> u8 {
    (i * 7 % 251) as u8
}

fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

struct Harness {
    uds: PathBuf,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    mem: Memory,
    rxq: MockQueue,
    txq: MockQueue,
    evq: MockQueue,
    irq: IrqTrigger,
    rx_evt: EventFd,
    tx_evt: EventFd,
    /// Re-post each RX buffer as soon as its packet is read.
    auto_rx: bool,
    rx_posted: u16,
    rx_seen: u16,
    /// Used entries of length 0: buffers given back unused.
    rx_empty: usize,
    tx_next: u16,
    received: VecDeque<Pkt>,
    /// Last, so that it goes after the device.
    _dir: TempDir,
}

impl Harness {
    fn new() -> Self {
        Self::with_timeouts(Timeouts::default())
    }

    fn with_timeouts(t: Timeouts) -> Self {
        let mut h = Self::bare(t);
        h.post_rx(64);
        h
    }

    /// Activated, but with no RX buffers posted.
    fn bare(t: Timeouts) -> Self {
        let dir = TempDir::new();
        let uds = dir.0.join("v.sock");
        let mut vsock = Vsock::new(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        vsock.set_timeouts(t);
        let rx_evt = vsock.queue_events()[RX_QUEUE].try_clone().unwrap();
        let tx_evt = vsock.queue_events()[TX_QUEUE].try_clone().unwrap();
        let dev = Arc::new(Mutex::new(vsock));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mem = memory(MEM_SIZE);
        let rxq = MockQueue::new(&mem, 0, QUEUE_SIZE);
        let txq = MockQueue::new(&mem, 0x4000, QUEUE_SIZE);
        let evq = MockQueue::new(&mem, 0x8000, QUEUE_SIZE);
        let mut h = Self {
            _dir: dir,
            uds,
            dev,
            em,
            mem,
            rxq,
            txq,
            evq,
            irq: IrqTrigger::new().unwrap(),
            rx_evt,
            tx_evt,
            auto_rx: true,
            rx_posted: 0,
            rx_seen: 0,
            rx_empty: 0,
            tx_next: 0,
            received: VecDeque::new(),
        };
        h.activate();
        h
    }

    fn activate(&mut self) {
        let queues = vec![self.rxq.queue(), self.txq.queue(), self.evq.queue()];
        let f = self.dev().features();
        self.dev()
            .activate(self.mem.clone(), f, queues, self.irq.clone())
            .unwrap();
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    fn counters(&self) -> VsockCounters {
        self.dev().counters()
    }

    /// Posts `n` RX buffers and notifies.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            assert!(
                self.rx_posted.wrapping_sub(self.rx_seen) < QUEUE_SIZE,
                "RX ring overfilled"
            );
            let head = self.rx_posted % QUEUE_SIZE;
            self.rx_posted = self.rx_posted.wrapping_add(1);
            let at = RX_BUFS + u64::from(head) * RX_STRIDE;
            self.rxq.chain(head, &[(at, RX_BUF_LEN, F_WRITE)]);
            self.rxq.push_avail(head);
        }
        self.rx_evt.write(1).unwrap();
    }

    /// Reads what the device put in the RX used ring.
    fn collect_rx(&mut self) {
        let mut repost = 0;
        while self.rxq.used_idx() != self.rx_seen {
            let (id, len) = self.rxq.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            repost += 1;
            if len == 0 {
                self.rx_empty += 1;
                continue;
            }
            let mut b = vec![0u8; len as usize];
            let at = RX_BUFS + u64::from(id) * RX_STRIDE;
            self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            let p = Pkt::parse(&b);
            assert_eq!(p.len as usize + HDR, len as usize, "used length of {p:?}");
            assert_eq!((p.src_cid, p.dst_cid), (HOST_CID, GUEST_CID), "{p:?}");
            assert_eq!(p.type_, TYPE_STREAM);
            self.received.push_back(p);
        }
        if self.auto_rx && repost > 0 {
            self.post_rx(repost);
        }
    }

    /// Puts a packet on TX, header and data in separate descriptors (or
    /// together, `one_desc`), and notifies.
    fn send_with(&mut self, p: &Pkt, one_desc: bool) {
        // The device returns TX chains as it handles them; make sure the
        // slot about to be reused is back.
        while self.txq.avail_idx().wrapping_sub(self.txq.used_idx()) >= TX_SLOTS {
            self.em.run_with_timeout(10).unwrap();
        }
        let slot = self.tx_next % TX_SLOTS;
        self.tx_next = self.tx_next.wrapping_add(1);
        let at = TX_BUFS + u64::from(slot) * TX_STRIDE;
        let data_at = at + 0x100;
        self.mem.write_slice(&p.header(), GuestAddress(at)).unwrap();
        let head = 2 * slot;
        if one_desc {
            self.mem
                .write_slice(&p.data, GuestAddress(at + HDR as u64))
                .unwrap();
            self.txq
                .chain(head, &[(at, (HDR + p.data.len()) as u32, 0)]);
        } else if p.data.is_empty() {
            self.txq.chain(head, &[(at, HDR as u32, 0)]);
        } else {
            self.mem
                .write_slice(&p.data, GuestAddress(data_at))
                .unwrap();
            self.txq.chain(
                head,
                &[(at, HDR as u32, 0), (data_at, p.data.len() as u32, 0)],
            );
        }
        self.txq.push_avail(head);
        self.tx_evt.write(1).unwrap();
    }

    fn send(&mut self, p: &Pkt) {
        self.send_with(p, false);
    }

    /// Puts an arbitrary chain on TX, in descriptors `send` does not use.
    fn send_raw(&mut self, descs: &[(u64, u32, u16)]) {
        let head = 2 * TX_SLOTS + 8 * (self.tx_next % 8);
        self.tx_next = self.tx_next.wrapping_add(1);
        self.txq.chain(head, descs);
        self.txq.push_avail(head);
        self.tx_evt.write(1).unwrap();
    }

    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.collect_rx();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.em.run_with_timeout(10).unwrap();
        }
    }

    /// Runs the loop until nothing is ready any more, so that what follows
    /// is not racing work in flight; fails if the loop never settles (a
    /// busy loop on some fd).
    fn settle(&mut self) {
        for _ in 0..100 {
            if self.em.run_with_timeout(20).unwrap() == 0 {
                self.collect_rx();
                return;
            }
            self.collect_rx();
        }
        panic!("the event loop does not settle: something spins");
    }

    fn next(&mut self) -> Pkt {
        self.run_until("a packet from the device", |h| !h.received.is_empty());
        self.received.pop_front().unwrap()
    }

    fn expect(&mut self, op: u16) -> Pkt {
        let p = self.next();
        assert_eq!(p.op, op, "expected op {op}, got {p:?}");
        p
    }

    fn host_connect(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        s
    }

    /// A host program connects to guest port `port` and the guest accepts:
    /// returns the host stream and the host-side port.
    fn host_initiated(&mut self, port: u32) -> (UnixStream, u32) {
        self.host_initiated_with(port, GUEST_BUF)
    }

    /// The same, the guest advertising `buf_alloc`.
    fn host_initiated_with(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        let mut s = self.host_connect(port);
        let req = self.expect(OP_REQUEST);
        assert_eq!(req.dst_port, port);
        assert!(req.src_port >= FIRST_HOST_PORT);
        assert_eq!(req.buf_alloc, BUF_ALLOC);
        let before = self.counters().host_connections;
        let mut resp = Pkt::guest(OP_RESPONSE, port, req.src_port);
        resp.buf_alloc = buf_alloc;
        self.send(&resp);
        self.run_until("OK to the host", |h| h.counters().host_connections > before);
        assert_eq!(read_line(&mut s), format!("OK {}", req.src_port));
        (s, req.src_port)
    }

    /// The guest connects from `src` to host port `port`, where a host
    /// program listens: returns the host program's stream.
    fn guest_initiated(&mut self, listener: &UnixListener, src: u32, port: u32) -> UnixStream {
        self.send(&Pkt::guest(OP_REQUEST, src, port));
        let resp = self.expect(OP_RESPONSE);
        assert_eq!((resp.src_port, resp.dst_port), (port, src));
        assert_eq!(resp.buf_alloc, BUF_ALLOC);
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn host_listener(&self, port: u32) -> UnixListener {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(PathBuf::from(p)).unwrap()
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b).unwrap();
        assert_eq!(n, 1, "EOF before the end of the line {line:?}");
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

/// Reads what is there without blocking; true at EOF.
fn read_available(s: &mut UnixStream, out: &mut Vec<u8>) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64 << 10];
    let eof = loop {
        match s.read(&mut b) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("{e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    eof
}

fn is_eof(s: &mut UnixStream) -> bool {
    let mut sink = Vec::new();
    read_available(s, &mut sink)
}

// --- Setup ---

#[test]
fn cids_below_3_or_above_32_bits_are_refused() {
    let dir = TempDir::new();
    for cid in [0, 1, 2, u64::from(u32::MAX) + 1] {
        let e = Vsock::new(VsockConfig {
            guest_cid: cid,
            uds_path: dir.0.join("v.sock"),
        });
        assert!(matches!(e, Err(Error::VsockCid(c)) if c == cid));
    }
    assert!(!dir.0.join("v.sock").exists());
}

#[test]
fn an_existing_socket_path_is_refused_and_left_alone() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    std::fs::write(&path, b"mine").unwrap();
    let e = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    });
    let msg = e.err().unwrap().to_string();
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), b"mine");
    // A dangling symlink counts too.
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(dir.0.join("nowhere"), &link).unwrap();
    let e = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: link,
    });
    assert!(matches!(e, Err(Error::VsockPathExists(_))));
}

#[test]
fn device_describes_itself_and_removes_its_socket_on_drop() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    let v = Vsock::new(VsockConfig {
        guest_cid: 0x1_2345,
        uds_path: path.clone(),
    })
    .unwrap();
    assert_eq!(v.device_type(), 19);
    assert_eq!(v.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(v.queue_events().len(), 3);
    assert_eq!(
        v.features(),
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    );
    let mut cfg = [0xffu8; 12];
    v.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x45, 0x23, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(path.exists());
    drop(v);
    assert!(!path.exists());
    // One queue where three are needed.
    let mut v = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    })
    .unwrap();
    let mem = memory(MEM_SIZE);
    let q = MockQueue::new(&mem, 0, 16);
    let e = v.activate(mem, 0, vec![q.queue()], IrqTrigger::new().unwrap());
    assert!(matches!(
        e,
        Err(Error::QueueCount {
            expected: 3,
            got: 1
        })
    ));
}

// --- Host-initiated connections ---

#[test]
fn host_connect_reaches_the_guest_and_gets_ok() {
    let mut h = Harness::new();
    let (mut s, local) = h.host_initiated(52);
    assert_eq!(local, FIRST_HOST_PORT);
    assert!(h.irq.status() & 1 != 0, "the guest was interrupted");
    // A second connection gets the next port.
    let (_s2, local2) = h.host_initiated(52);
    assert_eq!(local2, FIRST_HOST_PORT + 1);
    // Data host -> guest.
    s.write_all(b"ping").unwrap();
    let p = h.expect(OP_RW);
    assert_eq!((p.src_port, p.dst_port), (local, 52));
    assert_eq!(p.data, b"ping");
    assert_eq!(h.counters().host_connections, 2);
}

#[test]
fn bytes_after_the_connect_line_belong_to_the_connection() {
    let mut h = Harness::new();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 7\nearly bytes").unwrap();
    let req = h.expect(OP_REQUEST);
    h.send(&Pkt::guest(OP_RESPONSE, 7, req.src_port));
    let p = h.expect(OP_RW);
    assert_eq!(p.data, b"early bytes");
    assert_eq!(read_line(&mut s), format!("OK {}", req.src_port));
}

#[test]
fn guest_rst_to_a_host_connect_closes_the_host_stream() {
    let mut h = Harness::new();
    let mut s = h.host_connect(99);
    let req = h.expect(OP_REQUEST);
    h.send(&Pkt::guest(OP_RST, 99, req.src_port));
    h.run_until("the refusal", |h| h.counters().refused == 1);
    let mut got = Vec::new();
    assert!(read_available(&mut s, &mut got), "host stream closed");
    assert!(got.is_empty(), "no OK: {got:?}");
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
}

#[test]
fn malformed_or_overlong_connect_lines_close_the_stream() {
    let mut h = Harness::new();
    let mut bad = UnixStream::connect(&h.uds).unwrap();
    bad.write_all(b"HELLO 5\n").unwrap();
    let mut long = UnixStream::connect(&h.uds).unwrap();
    long.write_all(&[b'C'; CONNECT_LINE_MAX]).unwrap();
    let mut port = UnixStream::connect(&h.uds).unwrap();
    port.write_all(b"CONNECT 99999999999\n").unwrap();
    h.run_until("three bad lines", |h| h.counters().bad_connects == 3);
    h.settle();
    assert!(is_eof(&mut bad) && is_eof(&mut long) && is_eof(&mut port));
    assert!(h.received.is_empty(), "nothing reached the guest");
}

#[test]
fn connects_that_do_not_complete_in_time_are_dropped() {
    let t = Timeouts {
        connect: Duration::from_millis(60),
        close: Duration::from_millis(60),
    };
    let mut h = Harness::with_timeouts(t);
    // A partial line that never ends.
    let mut partial = UnixStream::connect(&h.uds).unwrap();
    partial.write_all(b"CONN").unwrap();
    // A guest that never answers the REQUEST.
    let mut unanswered = h.host_connect(5);
    let req = h.expect(OP_REQUEST);
    h.run_until("both timed out", |h| h.counters().timeouts == 2);
    h.settle();
    assert!(is_eof(&mut partial));
    assert!(is_eof(&mut unanswered));
    // The guest is told the request is off.
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (req.src_port, 5));
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
    // And the timer stops once nothing waits.
    assert!(!h.dev().timer_armed);
}

// --- Guest-initiated connections ---

#[test]
fn guest_connect_reaches_the_host_listener_and_data_flows() {
    let mut h = Harness::new();
    let listener = h.host_listener(1234);
    let mut s = h.guest_initiated(&listener, 40000, 1234);
    assert_eq!(h.counters().guest_connections, 1);
    h.send(&Pkt::guest(OP_RW, 40000, 1234).data(b"hello"));
    // The same again with header and data in one descriptor.
    h.send_with(&Pkt::guest(OP_RW, 40000, 1234).data(b" world"), true);
    let mut got = Vec::new();
    h.run_until("data on the host", |_| {
        read_available(&mut s, &mut got);
        got.len() >= 11
    });
    assert_eq!(got, b"hello world");
    s.write_all(b"back").unwrap();
    let p = h.expect(OP_RW);
    assert_eq!(
        (p.src_port, p.dst_port, p.data.as_slice()),
        (1234, 40000, &b"back"[..])
    );
    assert_eq!(p.fwd_cnt, 11, "the packet says what reached the host");
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let mut h = Harness::new();
    h.send(&Pkt::guest(OP_REQUEST, 40000, 4321));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (4321, 40000));
    assert_eq!(h.counters().refused, 1);
    // A listener that went away leaves a socket file that refuses.
    let l = h.host_listener(4322);
    drop(l);
    h.send(&Pkt::guest(OP_REQUEST, 40001, 4322));
    h.expect(OP_RST);
    assert_eq!(h.counters().resets_sent, 2);
}

#[test]
fn packets_for_no_connection_are_reset() {
    let mut h = Harness::new();
    h.send(&Pkt::guest(OP_RW, 1, 2).data(b"x"));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (2, 1));
    // An RST for nothing gets no answer.
    h.send(&Pkt::guest(OP_RST, 1, 2));
    // Neither does a packet that is not from this guest to the host.
    let mut p = Pkt::guest(OP_REQUEST, 1, 2);
    p.src_cid = 9;
    h.send(&p);
    let mut p = Pkt::guest(OP_REQUEST, 1, 2);
    p.dst_cid = 7;
    h.send(&p);
    // Seqpacket is not offered: reset.
    let mut p = Pkt::guest(OP_REQUEST, 1, 2);
    p.type_ = 2;
    h.send(&p);
    h.expect(OP_RST);
    h.settle();
    assert!(h.received.is_empty(), "{:?}", h.received);
    assert_eq!(h.counters().bad_packets, 4);
}

#[test]
fn a_duplicate_request_resets_the_pair() {
    let mut h = Harness::new();
    let listener = h.host_listener(80);
    let mut s = h.guest_initiated(&listener, 5000, 80);
    h.send(&Pkt::guest(OP_REQUEST, 5000, 80));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (80, 5000));
    h.settle();
    assert!(is_eof(&mut s));
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
}

// --- Data and credit ---

#[test]
fn a_mebibyte_host_to_guest_respects_the_guests_credit() {
    let mut h = Harness::new();
    let (s, local) = h.host_initiated(52);
    const TOTAL: usize = 1 << 20;
    let writer = std::thread::spawn(move || {
        let mut s = s;
        s.write_all(&pattern_bytes(TOTAL)).unwrap();
        // Then the host program closes.
    });
    let mut got = Vec::new();
    // What the guest has told the device it consumed.
    let mut advertised = 0u32;
    let mut shutdown = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while shutdown.is_none() {
        assert!(Instant::now() < deadline, "stalled at {} bytes", got.len());
        let p = h.next();
        assert_eq!((p.src_port, p.dst_port), (local, 52));
        let op = p.op;
        match op {
            OP_RW => {
                got.extend_from_slice(&p.data);
                let in_flight = got.len() as u32 - advertised;
                assert!(in_flight <= GUEST_BUF, "{in_flight} bytes past the credit");
            }
            OP_CREDIT_REQUEST => {}
            OP_SHUTDOWN => shutdown = Some(p),
            _ => panic!("{p:?}"),
        }
        // The guest's application reads everything at once; the driver
        // says so when half its buffer is free again, or when asked.
        let consumed = got.len() as u32;
        if consumed - advertised >= GUEST_BUF / 2 || op == OP_CREDIT_REQUEST {
            advertised = consumed;
            h.send(&Pkt::guest(OP_CREDIT_UPDATE, 52, local).fwd(advertised));
        }
    }
    writer.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == pattern_bytes(TOTAL), "content differs");
    assert_eq!(
        shutdown.unwrap().flags,
        SHUTDOWN_SEND,
        "EOF is the host's \"no more from me\""
    );
    assert_eq!(h.counters().bytes_to_guest, TOTAL as u64);
    // The guest answers the SHUTDOWN with an RST: the connection is gone.
    h.send(&Pkt::guest(OP_RST, 52, local));
    h.run_until("the connection forgotten", |h| {
        h.dev().mux.open_connections() == (0, 0)
    });
}

#[test]
fn the_device_stops_at_the_guests_credit_and_asks_for_more() {
    let mut h = Harness::new();
    let (mut s, local) = h.host_initiated(52);
    // More than the guest's buffer, in the socket at once.
    let data = pattern_bytes(GUEST_BUF as usize + 10_000);
    s.set_nonblocking(true).unwrap();
    s.write_all(&data).unwrap();
    let mut got = Vec::new();
    h.run_until("the credit used up", |h| {
        while let Some(p) = h.received.pop_front() {
            match p.op {
                OP_RW => got.extend_from_slice(&p.data),
                OP_CREDIT_REQUEST => return true,
                _ => panic!("{p:?}"),
            }
        }
        false
    });
    assert_eq!(got.len(), GUEST_BUF as usize);
    // Nothing more until the guest frees space, and nothing spins.
    h.settle();
    assert!(h.received.is_empty(), "{:?}", h.received.front());
    // The guest read 1000 bytes.
    h.send(&Pkt::guest(OP_CREDIT_UPDATE, 52, local).fwd(1000));
    h.run_until("1000 more bytes", |h| {
        while let Some(p) = h.received.pop_front() {
            match p.op {
                OP_RW => got.extend_from_slice(&p.data),
                OP_CREDIT_REQUEST => {}
                _ => panic!("{p:?}"),
            }
        }
        got.len() == GUEST_BUF as usize + 1000
    });
    h.settle();
    assert!(h.received.iter().all(|p| p.op != OP_RW));
    h.send(&Pkt::guest(OP_CREDIT_UPDATE, 52, local).fwd(GUEST_BUF));
    h.run_until("the rest", |h| {
        while let Some(p) = h.received.pop_front() {
            if p.op == OP_RW {
                got.extend_from_slice(&p.data);
            }
        }
        got.len() == data.len()
    });
    assert!(got == data);
}

#[test]
fn a_mebibyte_guest_to_host_gets_credit_updates_unasked() {
    let mut h = Harness::new();
    let listener = h.host_listener(2000);
    let s = h.guest_initiated(&listener, 6000, 2000);
    const TOTAL: usize = 1 << 20;
    let reader = std::thread::spawn(move || {
        let mut s = s;
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let data = pattern_bytes(TOTAL);
    // The device's buffer space as the guest knows it.
    let (mut dev_buf, mut dev_fwd) = (BUF_ALLOC, 0u32);
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent < TOTAL {
        assert!(Instant::now() < deadline, "stalled at {sent} bytes");
        let credit = dev_buf - (sent as u32 - dev_fwd);
        if credit == 0 {
            // Never asks: the device must say on its own.
            let p = h.expect(OP_CREDIT_UPDATE);
            assert_eq!(p.buf_alloc, BUF_ALLOC);
            (dev_buf, dev_fwd) = (p.buf_alloc, p.fwd_cnt);
            continue;
        }
        let n = (credit as usize)
            .min(MAX_PKT_DATA as usize)
            .min(TOTAL - sent);
        h.send(&Pkt::guest(OP_RW, 6000, 2000).data(&data[sent..sent + n]));
        sent += n;
        h.collect_rx();
        while let Some(p) = h.received.pop_front() {
            assert_eq!(p.op, OP_CREDIT_UPDATE, "{p:?}");
            (dev_buf, dev_fwd) = (p.buf_alloc, p.fwd_cnt);
        }
    }
    // Close: the device finishes writing, closes and answers with an RST.
    h.send(&Pkt::guest(OP_SHUTDOWN, 6000, 2000).flags(SHUTDOWN_RCV | SHUTDOWN_SEND));
    h.run_until("the RST", |h| {
        h.received.retain(|p| p.op != OP_CREDIT_UPDATE);
        !h.received.is_empty()
    });
    assert_eq!(h.received.pop_front().unwrap().op, OP_RST);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == data, "content differs");
    assert_eq!(h.counters().bytes_to_host, TOTAL as u64);
    assert_eq!(h.counters().credit_violations, 0);
}

#[test]
fn credit_requests_are_answered() {
    let mut h = Harness::new();
    let listener = h.host_listener(2000);
    let mut s = h.guest_initiated(&listener, 6000, 2000);
    h.send(&Pkt::guest(OP_RW, 6000, 2000).data(&[1; 300]));
    h.send(&Pkt::guest(OP_CREDIT_REQUEST, 6000, 2000));
    let p = h.expect(OP_CREDIT_UPDATE);
    assert_eq!((p.src_port, p.dst_port), (2000, 6000));
    assert_eq!((p.buf_alloc, p.fwd_cnt), (BUF_ALLOC, 300));
    let mut got = Vec::new();
    read_available(&mut s, &mut got);
    assert_eq!(got.len(), 300);
}

#[test]
fn a_guest_sending_past_its_credit_is_reset() {
    let mut h = Harness::new();
    let listener = h.host_listener(2000);
    // The host program never reads.
    let mut s = h.guest_initiated(&listener, 6000, 2000);
    let chunk = vec![0u8; MAX_PKT_DATA as usize];
    // All in one batch: the device cannot have granted more meanwhile.
    for _ in 0..BUF_ALLOC / MAX_PKT_DATA {
        h.send(&Pkt::guest(OP_RW, 6000, 2000).data(&chunk));
    }
    h.send(&Pkt::guest(OP_RW, 6000, 2000).data(b"!"));
    h.run_until("the RST", |h| {
        h.received.retain(|p| p.op != OP_CREDIT_UPDATE);
        !h.received.is_empty()
    });
    let rst = h.received.pop_front().unwrap();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 2000, 6000));
    assert_eq!(h.counters().credit_violations, 1);
    h.settle();
    // The host program's stream is closed once it has read what came.
    let mut got = Vec::new();
    assert!(read_available(&mut s, &mut got));
    assert!(got.len() <= BUF_ALLOC as usize);
}

// --- Closing ---

#[test]
fn host_close_is_a_shutdown_to_the_guest() {
    let mut h = Harness::new();
    let (s, local) = h.host_initiated(52);
    drop(s);
    let p = h.expect(OP_SHUTDOWN);
    assert_eq!((p.src_port, p.dst_port), (local, 52));
    assert_eq!(p.flags, SHUTDOWN_SEND);
    h.send(&Pkt::guest(OP_RST, 52, local));
    h.run_until("the connection forgotten", |h| {
        h.dev().mux.open_connections() == (0, 0)
    });
    h.settle();
    assert!(h.received.is_empty(), "no RST for an RST");
}

#[test]
fn a_host_half_close_still_gets_the_guests_answer() {
    let mut h = Harness::new();
    let (mut s, local) = h.host_initiated(52);
    s.write_all(b"question").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let q = h.expect(OP_RW);
    assert_eq!(q.data, b"question");
    let p = h.expect(OP_SHUTDOWN);
    assert_eq!(p.flags, SHUTDOWN_SEND, "the host sends no more");
    h.send(&Pkt::guest(OP_RW, 52, local).data(b"answer"));
    h.send(&Pkt::guest(OP_SHUTDOWN, 52, local).flags(SHUTDOWN_RCV | SHUTDOWN_SEND));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (local, 52));
    let mut got = Vec::new();
    assert!(read_available(&mut s, &mut got), "closed after the answer");
    assert_eq!(got, b"answer");
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
}

#[test]
fn a_host_program_gone_resets_on_the_guests_next_write() {
    let mut h = Harness::new();
    let (s, local) = h.host_initiated(52);
    drop(s);
    assert_eq!(h.expect(OP_SHUTDOWN).flags, SHUTDOWN_SEND);
    h.send(&Pkt::guest(OP_RW, 52, local).data(b"anyone?"));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (local, 52));
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
}

#[test]
fn a_guest_that_never_answers_a_shutdown_is_forgotten() {
    // The guest closes with bytes the host stream cannot take yet; the
    // device finishes writing them for a while, then forgets anyway.
    let t = Timeouts {
        connect: Duration::from_secs(3),
        close: Duration::from_millis(50),
    };
    let mut h = Harness::with_timeouts(t);
    let (_s, local) = h.host_initiated(52);
    let chunk = vec![7u8; 60 << 10];
    for _ in 0..4 {
        h.send(&Pkt::guest(OP_RW, 52, local).data(&chunk));
    }
    h.send(&Pkt::guest(OP_SHUTDOWN, 52, local).flags(SHUTDOWN_RCV | SHUTDOWN_SEND));
    // Credit updates for what did reach the stream may come first.
    let rst = loop {
        let p = h.next();
        if p.op != OP_CREDIT_UPDATE {
            break p;
        }
    };
    assert_eq!(rst.op, OP_RST, "{rst:?}");
    assert_eq!((rst.src_port, rst.dst_port), (local, 52));
    assert_eq!(h.counters().timeouts, 1);
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
}

#[test]
fn guest_shutdowns_half_close_then_close_the_host_stream() {
    let mut h = Harness::new();
    let (mut s, local) = h.host_initiated(52);
    h.send(&Pkt::guest(OP_RW, 52, local).data(b"last words"));
    h.send(&Pkt::guest(OP_SHUTDOWN, 52, local).flags(SHUTDOWN_SEND));
    h.settle();
    let mut got = Vec::new();
    assert!(read_available(&mut s, &mut got), "write side shut");
    assert_eq!(got, b"last words");
    // The other way still works.
    s.write_all(b"reply").unwrap();
    let p = h.expect(OP_RW);
    assert_eq!(p.data, b"reply");
    h.send(&Pkt::guest(OP_SHUTDOWN, 52, local).flags(SHUTDOWN_RCV | SHUTDOWN_SEND));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (local, 52));
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
    // Fully closed: writes fail.
    h.settle();
    assert!(s.write_all(b"x").is_err());
}

#[test]
fn guest_rst_closes_the_host_stream_at_once() {
    let mut h = Harness::new();
    let listener = h.host_listener(9);
    let mut s = h.guest_initiated(&listener, 1, 9);
    h.send(&Pkt::guest(OP_RST, 1, 9));
    h.run_until("the connection forgotten", |h| {
        h.dev().mux.open_connections() == (0, 0)
    });
    assert!(is_eof(&mut s));
}

// --- Isolation and robustness ---

#[test]
fn a_peer_that_stops_reading_stalls_only_its_own_connection() {
    let mut h = Harness::new();
    let listener = h.host_listener(3000);
    // A: its host program never reads, its guest never grants more credit.
    let mut a = h.guest_initiated(&listener, 100, 3000);
    let mut b = h.guest_initiated(&listener, 200, 3000);
    let chunk = pattern_bytes(MAX_PKT_DATA as usize);
    for _ in 0..BUF_ALLOC / MAX_PKT_DATA {
        h.send(&Pkt::guest(OP_RW, 100, 3000).data(&chunk));
    }
    a.set_nonblocking(true).unwrap();
    let big = pattern_bytes(1 << 20);
    let mut written = 0;
    while let Ok(n) = a.write(&big[written..]) {
        written += n;
    }
    h.settle();
    // A's guest got its credit's worth and no more.
    let a_bytes: usize = h
        .received
        .iter()
        .filter(|p| p.op == OP_RW && p.dst_port == 100)
        .map(|p| p.data.len())
        .sum();
    assert_eq!(a_bytes, GUEST_BUF as usize);
    h.received.clear();
    // B still flows both ways.
    for round in 0..3 {
        let msg = format!("round {round}");
        h.send(&Pkt::guest(OP_RW, 200, 3000).data(msg.as_bytes()));
        let mut got = Vec::new();
        h.run_until("B's data on the host", |_| {
            read_available(&mut b, &mut got);
            got.len() >= msg.len()
        });
        assert_eq!(got, msg.as_bytes());
        b.write_all(msg.as_bytes()).unwrap();
        let p = h.expect(OP_RW);
        assert_eq!((p.dst_port, p.data.as_slice()), (200, msg.as_bytes()));
    }
    h.settle();
    assert_eq!(h.counters().credit_violations, 0);
}

#[test]
fn without_rx_buffers_the_device_waits_without_spinning() {
    let mut h = Harness::bare(Timeouts::default());
    h.post_rx(8);
    // The guests have room: only RX buffers are short.
    let (mut s1, l1) = h.host_initiated_with(52, 1 << 24);
    let (mut s2, l2) = h.host_initiated_with(53, 1 << 24);
    h.auto_rx = false;
    // Far more than the buffers hold, waiting on both streams.
    let data = pattern_bytes(128 << 10);
    s1.write_all(&data).unwrap();
    s2.write_all(&data).unwrap();
    h.settle();
    assert_eq!(h.received.len(), 8, "every posted buffer used");
    // No buffers left: the loop is quiet, not spinning on the streams.
    assert_eq!(h.em.run_with_timeout(50).unwrap(), 0);
    // Buffers come back: both connections resume, taking turns.
    h.received.clear();
    h.post_rx(16);
    h.settle();
    let ports: Vec<u32> = h.received.iter().map(|p| p.src_port).collect();
    assert_eq!(ports.len(), 16);
    let from_1 = ports.iter().filter(|&&p| p == l1).count();
    let from_2 = ports.iter().filter(|&&p| p == l2).count();
    assert!(from_1 >= 7 && from_2 >= 7, "{ports:?}");
    assert_eq!(h.counters().event_errors, 0);
}

#[test]
fn malformed_chains_are_returned_unused_and_counted() {
    let mut h = Harness::bare(Timeouts::default());
    let at = TX_BUFS + u64::from(TX_SLOTS) * TX_STRIDE;
    let good = Pkt::guest(OP_RW, 1, 2).data(&[0; 100]);
    h.mem.write_slice(&good.header(), GuestAddress(at)).unwrap();
    let mut huge = good.clone();
    huge.len = MAX_PKT_DATA + 1;
    h.mem
        .write_slice(&huge.header(), GuestAddress(at + 0x1000))
        .unwrap();
    // Header too short; device-writable; data shorter than the header's
    // len; len over the maximum; outside guest memory; a loop.
    h.send_raw(&[(at, 20, 0)]);
    h.send_raw(&[(at, HDR as u32, F_WRITE), (at + 0x100, 100, F_WRITE)]);
    h.send_raw(&[(at, HDR as u32, 0), (at + 0x100, 50, 0)]);
    h.send_raw(&[(at + 0x1000, HDR as u32, 0), (at + 0x100, 0x20000, 0)]);
    h.send_raw(&[(MEM_SIZE as u64 - 10, HDR as u32, 0)]);
    let head = 2 * TX_SLOTS + 8 * (h.tx_next % 8);
    h.tx_next += 1;
    h.txq.set_desc(head, at, HDR as u32, F_NEXT, head);
    h.txq.push_avail(head);
    h.tx_evt.write(1).unwrap();
    h.run_until("all TX chains back", |h| h.txq.used_idx() == 6);
    for i in 0..6 {
        assert_eq!(h.txq.used_elem(i).1, 0);
    }
    assert_eq!(h.counters().bad_chains, 6);
    assert_eq!(h.counters().tx_packets, 0);
    // Bad RX buffers first: read-only, header only, partly outside
    // memory, then good ones.
    for (head, desc) in [
        (RX_BUFS, RX_BUF_LEN, 0),
        (RX_BUFS, HDR as u32, F_WRITE),
        (MEM_SIZE as u64 - 100, RX_BUF_LEN, F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        h.rxq.chain(head as u16, &[desc]);
        h.rxq.push_avail(head as u16);
    }
    h.rx_posted = 3;
    h.post_rx(8);
    // The device still works: a REQUEST nobody listens for is reset, in
    // the first good buffer.
    h.send(&Pkt::guest(OP_REQUEST, 1, 2));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (2, 1));
    assert_eq!(h.counters().bad_chains, 9);
    assert_eq!(h.rx_empty, 3);
    assert_eq!(h.rxq.used_elem(3), (3, HDR as u32));
}

#[test]
fn a_data_packet_that_cannot_be_read_resets_its_connection() {
    let mut h = Harness::new();
    let listener = h.host_listener(8);
    let mut s = h.guest_initiated(&listener, 30, 8);
    // The header says 100 bytes; the data descriptor holds 50.
    let at = TX_BUFS + u64::from(TX_SLOTS) * TX_STRIDE;
    let p = Pkt::guest(OP_RW, 30, 8).data(&[7; 100]);
    h.mem.write_slice(&p.header(), GuestAddress(at)).unwrap();
    h.send_raw(&[(at, HDR as u32, 0), (at + 0x100, 50, 0)]);
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (8, 30));
    assert_eq!(h.counters().bad_chains, 1);
    h.settle();
    assert!(is_eof(&mut s), "no stream with a hole in it");
}

#[test]
fn too_many_connections_are_refused() {
    let mut h = Harness::new();
    h.dev().set_max_connections(8);
    let listener = h.host_listener(1);
    let mut host_side = Vec::new();
    for src in 0..6 {
        host_side.push(h.guest_initiated(&listener, src, 1));
    }
    let (_s, _) = h.host_initiated(52);
    // Seven connections, and a host program still sending its line.
    let _partial = UnixStream::connect(&h.uds).unwrap();
    h.run_until("eight open", |h| h.dev().mux.open_connections() == (7, 1));
    h.send(&Pkt::guest(OP_REQUEST, 100, 1));
    let rst = h.expect(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (1, 100));
    // A host program is turned away too.
    let mut s = UnixStream::connect(&h.uds).unwrap();
    h.settle();
    assert!(is_eof(&mut s));
    assert_eq!(h.counters().refused, 2);
    // One goes: there is room again.
    h.send(&Pkt::guest(OP_RST, 0, 1));
    h.run_until("seven open", |h| h.dev().mux.open_connections() == (6, 1));
    host_side.push(h.guest_initiated(&listener, 100, 1));
}

#[test]
fn reset_closes_every_connection() {
    let mut h = Harness::new();
    let listener = h.host_listener(10);
    let (mut s1, _) = h.host_initiated(52);
    let mut s2 = h.guest_initiated(&listener, 77, 10);
    let mut partial = UnixStream::connect(&h.uds).unwrap();
    partial.write_all(b"CONNECT").unwrap();
    h.run_until("the partial line taken", |h| {
        h.dev().mux.open_connections() == (2, 1)
    });
    h.dev().reset();
    // The host programs see EOF at once, before the loop even runs.
    assert!(is_eof(&mut s1) && is_eof(&mut s2) && is_eof(&mut partial));
    assert!(h.dev().active.is_none());
    h.settle();
    assert_eq!(h.dev().mux.open_connections(), (0, 0));
    // The socket still takes connections, for the next driver.
    h.rxq = MockQueue::new(&h.mem, 0, QUEUE_SIZE);
    h.txq = MockQueue::new(&h.mem, 0x4000, QUEUE_SIZE);
    h.evq = MockQueue::new(&h.mem, 0x8000, QUEUE_SIZE);
    (h.rx_seen, h.rx_posted, h.tx_next) = (0, 0, 0);
    h.received.clear();
    h.activate();
    h.post_rx(64);
    let (mut s3, local) = h.host_initiated(52);
    s3.write_all(b"again").unwrap();
    let p = h.expect(OP_RW);
    assert_eq!((p.src_port, p.data.as_slice()), (local, &b"again"[..]));
}
