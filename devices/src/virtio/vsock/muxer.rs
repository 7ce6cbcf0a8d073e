//! The connections behind the device: which packet goes to which host
//! stream, what the guest is owed, and what the event loop watches.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

use super::conn::*;
use super::proto::*;
use super::{Timeouts, VsockCounters, BUF_ALLOC, FIRST_HOST_PORT, HOST_CID, MAX_CONNECTIONS};
use super::{MAX_PKT_DATA, STRAY_RST_CAP};

/// Connections accepted per listener wake-up; the listener is
/// level-triggered, so the rest come on the next turn of the loop.
const ACCEPT_BATCH: usize = 64;

/// The header's length in a used-ring entry.
const HDR_LEN: u32 = 44;
const _: () = assert!(PKT_HEADER_SIZE == HDR_LEN as usize);

pub(super) type Packet<'a> = VsockPacket<'a, ()>;

/// Where a packet says it comes from and goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Addresses {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
}

pub(super) struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    pub listener: UnixListener,
    /// Taken out of the epoll set after an accept error that would repeat
    /// (out of fds); put back on the next tick.
    listener_paused: bool,
    pub conns: HashMap<Key, Conn>,
    conn_fds: HashMap<RawFd, Key>,
    pub incoming: HashMap<RawFd, Incoming>,
    /// Connections with something for the guest, in turn.
    ready: VecDeque<Key>,
    /// RSTs owed for connections that no longer (or never did) exist.
    stray_rsts: VecDeque<Key>,
    /// TX was left unserved because `stray_rsts` was full.
    pub tx_waiting: bool,
    /// Connections whose epoll interest may have to change.
    dirty: Vec<Key>,
    /// Closed streams the event loop must still take out of its epoll set
    /// (`true`) before they are dropped.
    graveyard: Vec<(UnixStream, bool)>,
    next_port: u32,
    scratch: Vec<u8>,
    /// A deadline was set: the timer must run.
    pub timer_needed: bool,
    pub timeouts: Timeouts,
    pub max_conns: usize,
    pub counters: VsockCounters,
}

/// Connects to a host listener without waiting: a full backlog is a refusal
/// like any other, not something for the VMM to block on.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

fn enqueue(ready: &mut VecDeque<Key>, conn: &mut Conn, key: Key) {
    if !conn.queued {
        conn.queued = true;
        ready.push_back(key);
    }
}

impl Muxer {
    pub fn new(cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Self {
            cid,
            uds_path,
            listener,
            listener_paused: false,
            conns: HashMap::new(),
            conn_fds: HashMap::new(),
            incoming: HashMap::new(),
            ready: VecDeque::new(),
            stray_rsts: VecDeque::new(),
            tx_waiting: false,
            dirty: Vec::new(),
            graveyard: Vec::new(),
            next_port: FIRST_HOST_PORT,
            scratch: vec![0; MAX_PKT_DATA as usize],
            timer_needed: false,
            timeouts: Timeouts::default(),
            max_conns: MAX_CONNECTIONS,
            counters: VsockCounters::default(),
        }
    }

    fn open(&self) -> usize {
        self.conns.len() + self.incoming.len()
    }

    pub fn has_rx_work(&self) -> bool {
        !self.stray_rsts.is_empty() || !self.ready.is_empty()
    }

    /// Replies to TX packets could no longer be queued: leave TX alone.
    pub fn tx_blocked(&self) -> bool {
        self.stray_rsts.len() >= STRAY_RST_CAP
    }

    /// The host side of `port`'s guest-initiated connections.
    fn host_path(&self, port: u32) -> PathBuf {
        let mut p = OsString::from(self.uds_path.as_os_str());
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    fn rst(&mut self, key: Key) {
        self.stray_rsts.push_back(key);
    }

    fn bury(&mut self, stream: UnixStream, registered: bool) {
        let _ = stream.shutdown(Shutdown::Both);
        self.graveyard.push((stream, registered));
    }

    /// Closes the host stream (its peer sees EOF at once) and forgets the
    /// connection, telling the guest with an RST if `rst`.
    fn forget(&mut self, key: Key, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.conn_fds.remove(&conn.stream.as_raw_fd());
        // A REQUEST never sent needs no cancelling.
        if rst && conn.owed & OWE_REQUEST == 0 {
            self.rst(key);
        }
        self.bury(conn.stream, conn.registered.is_some());
    }

    /// Reset: every stream closed, nothing owed to a driver that is gone.
    pub fn close_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.forget(key, false);
        }
        let fds: Vec<RawFd> = self.incoming.keys().copied().collect();
        for fd in fds {
            if let Some(inc) = self.incoming.remove(&fd) {
                self.bury(inc.stream, true);
            }
        }
        self.ready.clear();
        self.stray_rsts.clear();
        self.dirty.clear();
        self.tx_waiting = false;
    }

    pub fn open_connections(&self) -> (usize, usize) {
        (self.conns.len(), self.incoming.len())
    }

    // --- Host side ---

    pub fn accept(&mut self, ops: &mut EventOps) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.open() >= self.max_conns || stream.set_nonblocking(true).is_err() {
                        // Dropped: the host program sees EOF.
                        self.counters.refused += 1;
                        continue;
                    }
                    if ops.add(Events::new(&stream, EventSet::IN)).is_err() {
                        self.counters.event_errors += 1;
                        continue;
                    }
                    let deadline = Instant::now() + self.timeouts.connect;
                    self.incoming
                        .insert(stream.as_raw_fd(), Incoming::new(stream, deadline));
                    self.timer_needed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(_) => {
                    // Out of fds or memory: the listener would stay
                    // readable and the loop spin on it. Rest until the
                    // next tick.
                    self.counters.host_errors += 1;
                    if ops.remove(Events::empty(&self.listener)).is_ok() {
                        self.listener_paused = true;
                        self.timer_needed = true;
                    }
                    return;
                }
            }
        }
    }

    /// Something happened on a host stream; false if `fd` is not one.
    pub fn stream_event(&mut self, fd: RawFd, set: EventSet) -> bool {
        if let Some(&key) = self.conn_fds.get(&fd) {
            self.conn_event(key, set);
            true
        } else if self.incoming.contains_key(&fd) {
            self.incoming_event(fd);
            true
        } else {
            false
        }
    }

    fn incoming_event(&mut self, fd: RawFd) {
        let Some(inc) = self.incoming.get_mut(&fd) else {
            return;
        };
        let port = match inc.read_line() {
            Line::Partial => return,
            Line::Bad => {
                self.counters.bad_connects += 1;
                if let Some(inc) = self.incoming.remove(&fd) {
                    self.bury(inc.stream, true);
                }
                return;
            }
            Line::Connect(port) => port,
        };
        let Some(inc) = self.incoming.remove(&fd) else {
            return;
        };
        let Some(local) = self.alloc_port(port) else {
            self.counters.refused += 1;
            self.bury(inc.stream, true);
            return;
        };
        let key = (local, port);
        let mut conn = Conn::new(inc.stream, State::Connecting);
        conn.registered = Some(EventSet::IN);
        conn.owed = OWE_REQUEST;
        conn.deadline = Some(Instant::now() + self.timeouts.connect);
        self.timer_needed = true;
        enqueue(&mut self.ready, &mut conn, key);
        self.conn_fds.insert(fd, key);
        self.conns.insert(key, conn);
        // Not read until the guest answers.
        self.dirty.push(key);
    }

    fn alloc_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(port, peer)) {
                return Some(port);
            }
        }
        None
    }

    fn conn_event(&mut self, key: Key, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        self.dirty.push(key);
        let watched = conn.registered.unwrap_or(EventSet::empty());
        let trouble = set.intersects(EventSet::ERROR | EventSet::HANG_UP);
        if (set.contains(EventSet::OUT) || trouble) && conn.buffered() > 0 {
            match conn.flush() {
                Ok(n) => {
                    self.counters.bytes_to_host += n as u64;
                    if conn.credit_update_due() {
                        conn.owed |= OWE_CREDIT_UPDATE;
                        enqueue(&mut self.ready, conn, key);
                    }
                    if conn.buffered() == 0
                        && conn.peer_shut & (SHUTDOWN_RCV | SHUTDOWN_SEND)
                            == SHUTDOWN_RCV | SHUTDOWN_SEND
                    {
                        // Drained after the guest closed: done.
                        self.forget(key, true);
                        return;
                    }
                }
                Err(_) => {
                    self.counters.host_errors += 1;
                    self.forget(key, true);
                    return;
                }
            }
        }
        if (set.contains(EventSet::IN) || trouble) && watched.contains(EventSet::IN) {
            conn.rx_wanted = true;
            enqueue(&mut self.ready, conn, key);
        }
    }

    // --- Guest side: what TX brings ---

    /// A TX chain that could not be used. If its header names one of this
    /// guest's connections, that connection has lost bytes (a packet whose
    /// data is not where the header says): reset it rather than let the
    /// stream go on with a hole in it.
    pub fn bad_chain(&mut self, claimed: Option<Addresses>) {
        self.counters.bad_chains += 1;
        let Some(a) = claimed else {
            return;
        };
        let key = (a.dst_port, a.src_port);
        if a.src_cid == self.cid && a.dst_cid == HOST_CID && self.conns.contains_key(&key) {
            self.forget(key, true);
        }
    }

    pub fn handle_tx(&mut self, pkt: &Packet<'_>) {
        self.counters.tx_packets += 1;
        if pkt.dst_cid() != HOST_CID || pkt.src_cid() != self.cid {
            // Not addressed from this guest to the host: nobody to answer.
            self.counters.bad_packets += 1;
            return;
        }
        let key = (pkt.dst_port(), pkt.src_port());
        let op = pkt.op();
        if pkt.type_() != TYPE_STREAM {
            self.counters.bad_packets += 1;
            if op != OP_RST {
                self.rst(key);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                OP_REQUEST => self.guest_connect(key, pkt),
                OP_RST => {}
                _ => {
                    self.counters.bad_packets += 1;
                    self.rst(key);
                }
            }
            return;
        };
        conn.set_peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
        self.dirty.push(key);
        match op {
            OP_RESPONSE if conn.state == State::Connecting && conn.owed & OWE_REQUEST == 0 => {
                self.established(key)
            }
            OP_RW if conn.state == State::Established => self.guest_data(key, pkt),
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                conn.owed |= OWE_CREDIT_UPDATE;
                enqueue(&mut self.ready, conn, key);
            }
            OP_SHUTDOWN => self.guest_shutdown(key, pkt.flags()),
            OP_RST => {
                if conn.state == State::Connecting {
                    // Nobody listens on that port in the guest.
                    self.counters.refused += 1;
                }
                self.forget(key, false);
            }
            // A second REQUEST for a pair in use, a RESPONSE nobody asked
            // for, data before the connection is up, an unknown op: the two
            // sides no longer agree on this connection.
            _ => {
                self.counters.bad_packets += 1;
                self.forget(key, true);
            }
        }
    }

    fn guest_connect(&mut self, key: Key, pkt: &Packet<'_>) {
        if self.open() >= self.max_conns {
            self.counters.refused += 1;
            self.rst(key);
            return;
        }
        let stream = match connect_nonblocking(&self.host_path(key.0)) {
            Ok(s) => s,
            Err(_) => {
                self.counters.refused += 1;
                self.rst(key);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(stream, State::Established);
        conn.set_peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
        conn.owed = OWE_RESPONSE;
        enqueue(&mut self.ready, &mut conn, key);
        self.counters.guest_connections += 1;
        self.conn_fds.insert(fd, key);
        self.conns.insert(key, conn);
        self.dirty.push(key);
    }

    /// The guest accepted a host program's connection: tell the program.
    fn established(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.state = State::Established;
        conn.deadline = None;
        let line = format!("OK {}\n", key.0);
        // The stream is new and empty: the line fits whole, or the host
        // program is gone.
        match send_some(&conn.stream, line.as_bytes()) {
            Ok(n) if n == line.len() => self.counters.host_connections += 1,
            _ => {
                self.counters.host_errors += 1;
                self.forget(key, true);
            }
        }
    }

    fn guest_data(&mut self, key: Key, pkt: &Packet<'_>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.peer_shut & SHUTDOWN_SEND != 0 {
            // Data after the guest said it would send none.
            self.counters.bad_packets += 1;
            self.forget(key, true);
            return;
        }
        let Some(slice) = pkt.data_slice() else {
            return;
        };
        let len = slice.len().min(self.scratch.len());
        let data = &mut self.scratch[..len];
        if slice.copy_to(data) != len {
            self.counters.bad_packets += 1;
            self.forget(key, true);
            return;
        }
        match conn.push_guest_data(data) {
            Ok(n) => {
                self.counters.bytes_to_host += n as u64;
                if conn.credit_update_due() {
                    conn.owed |= OWE_CREDIT_UPDATE;
                    enqueue(&mut self.ready, conn, key);
                }
            }
            Err(GuestDataError::Credit) => {
                self.counters.credit_violations += 1;
                self.forget(key, true);
            }
            Err(GuestDataError::Host) => {
                self.counters.host_errors += 1;
                self.forget(key, true);
            }
        }
    }

    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.peer_shut |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if conn.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND {
            if conn.buffered() == 0 {
                self.forget(key, true);
            } else {
                // Closed by the guest: finish writing what it sent, for a
                // while, then answer.
                conn.deadline = Some(Instant::now() + self.timeouts.close);
                self.timer_needed = true;
            }
        } else if conn.peer_shut & SHUTDOWN_SEND != 0 {
            if conn.buffered() == 0 && conn.host_eof {
                // Neither side sends any more: the connection is done.
                self.forget(key, true);
            } else if conn.buffered() == 0 {
                let _ = conn.stream.shutdown(Shutdown::Write);
            } else {
                conn.shut_write_after_flush = true;
            }
        }
    }

    // --- Guest side: what goes into RX ---

    /// Fills the RX buffer `pkt` (header zeroed, data buffer present) with
    /// the next packet owed to the guest; returns the used length, or
    /// `None` when nothing was owed after all.
    pub fn fill_rx(&mut self, pkt: &mut Packet<'_>) -> Option<u32> {
        if let Some((local, peer)) = self.stray_rsts.pop_front() {
            self.write_header(pkt, local, peer, OP_RST, 0, 0, 0);
            self.counters.resets_sent += 1;
            return Some(HDR_LEN);
        }
        let data = pkt.data_slice().copied()?;
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            self.dirty.push(key);
            let Some(out) = conn.next_packet(&data) else {
                continue;
            };
            let fwd_cnt = conn.fwd_cnt;
            conn.last_fwd_sent = fwd_cnt;
            // Every packet says how much has been forwarded.
            conn.owed &= !OWE_CREDIT_UPDATE;
            match out.op {
                OP_RW => self.counters.bytes_to_guest += u64::from(out.len),
                OP_SHUTDOWN => {
                    if out.flags & SHUTDOWN_RCV != 0 {
                        // Gone both ways: wait a while for the guest's
                        // RST, then forget anyway. After a half-close the
                        // guest may still answer; its own SHUTDOWN ends it.
                        conn.deadline = Some(Instant::now() + self.timeouts.close);
                        self.timer_needed = true;
                    }
                    if out.host_error {
                        self.counters.host_errors += 1;
                    }
                }
                _ => {}
            }
            if conn.has_rx_work() {
                enqueue(&mut self.ready, conn, key);
            }
            self.write_header(pkt, key.0, key.1, out.op, out.flags, out.len, fwd_cnt);
            return Some(HDR_LEN + out.len);
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn write_header(
        &self,
        pkt: &mut Packet<'_>,
        local: u32,
        peer: u32,
        op: u16,
        flags: u32,
        len: u32,
        fwd_cnt: u32,
    ) {
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(local)
            .set_dst_port(peer)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_len(len)
            .set_buf_alloc(if op == OP_RST { 0 } else { BUF_ALLOC })
            .set_fwd_cnt(fwd_cnt);
    }

    // --- Time ---

    /// Drops what waited too long; says whether anything still waits.
    pub fn tick(&mut self, now: Instant, ops: &mut EventOps) -> bool {
        let late: Vec<RawFd> = self
            .incoming
            .iter()
            .filter(|(_, i)| i.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some(inc) = self.incoming.remove(&fd) {
                self.counters.timeouts += 1;
                self.bury(inc.stream, true);
            }
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.counters.timeouts += 1;
            self.forget(key, true);
        }
        if self.listener_paused {
            if ops.add(Events::new(&self.listener, EventSet::IN)).is_ok() {
                self.listener_paused = false;
            } else {
                self.counters.event_errors += 1;
            }
        }
        self.listener_paused
            || !self.incoming.is_empty()
            || self.conns.values().any(|c| c.deadline.is_some())
    }

    // --- The event loop's view ---

    /// Takes closed streams out of the epoll set, then lets them go.
    pub fn reap(&mut self, ops: &mut EventOps) {
        for (stream, registered) in self.graveyard.drain(..) {
            if registered && ops.remove(Events::empty(&stream)).is_err() {
                self.counters.event_errors += 1;
            }
        }
    }

    /// Brings the epoll set in line with what each connection can make
    /// progress on, and takes closed streams out of it before they go.
    pub fn reconcile(&mut self, ops: &mut EventOps) {
        self.reap(ops);
        for key in self.dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let want = conn.interest();
            if want == conn.registered {
                continue;
            }
            let done = match (conn.registered, want) {
                (None, Some(w)) => ops.add(Events::new(&conn.stream, w)),
                (Some(_), Some(w)) => ops.modify(Events::new(&conn.stream, w)),
                (Some(_), None) => ops.remove(Events::empty(&conn.stream)),
                (None, None) => Ok(()),
            };
            match done {
                Ok(()) => conn.registered = want,
                Err(_) => self.counters.event_errors += 1,
            }
        }
    }
}
