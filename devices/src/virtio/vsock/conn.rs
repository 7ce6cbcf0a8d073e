//! One connection: a host stream and what the device knows of its guest
//! peer, plus a host stream that has not yet said which guest port it wants.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;
use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

use super::proto::*;
use super::{BUF_ALLOC, CONNECT_LINE_MAX, MAX_PKT_DATA};

/// A connection is named by its two ports: the host side's (cid 2) first,
/// then the guest's.
pub(super) type Key = (u32, u32);

/// Control packets a connection owes the guest. Flags rather than a queue:
/// each is owed at most once, so what the guest can make the device owe is
/// bounded by the number of connections.
pub(super) const OWE_REQUEST: u8 = 1;
pub(super) const OWE_RESPONSE: u8 = 2;
pub(super) const OWE_CREDIT_UPDATE: u8 = 4;
pub(super) const OWE_CREDIT_REQUEST: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// The host asked for it; waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

/// A packet a connection wants sent to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Out {
    pub op: u16,
    pub flags: u32,
    pub len: u32,
    /// The host stream failed (rather than ended): count it.
    pub host_error: bool,
}

impl Out {
    fn control(op: u16) -> Self {
        Self {
            op,
            flags: 0,
            len: 0,
            host_error: false,
        }
    }
}

/// Why data from the guest was not taken.
#[derive(Debug)]
pub(super) enum GuestDataError {
    /// More than the credit the device gave.
    Credit,
    /// The host stream failed.
    Host,
}

pub(super) fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Writes what `stream` takes now; 0 when it takes nothing. Never raises
/// SIGPIPE when the reader is gone: that is an error for this connection,
/// not for the VMM.
pub(super) fn send_some(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    loop {
        match send(
            stream.as_raw_fd(),
            buf,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

pub(super) struct Conn {
    pub stream: UnixStream,
    pub state: State,
    /// What the event loop watches this stream for; `None` when it is not
    /// in the epoll set at all.
    pub registered: Option<EventSet>,
    /// In the device's list of connections with something for the guest.
    pub queued: bool,
    pub owed: u8,
    /// The stream was readable: read it on this connection's next turn for
    /// an RX buffer. Read interest is dropped meanwhile.
    pub rx_wanted: bool,
    pub host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    pub peer_shut: u32,
    /// The guest will send no more: shut the stream's write side once
    /// what is buffered has gone.
    pub shut_write_after_flush: bool,
    /// When the device gives up waiting on the guest (for a RESPONSE, or an
    /// RST after a SHUTDOWN) or on the host (to take buffered bytes).
    pub deadline: Option<Instant>,
    /// Credit a host program must ask for once it runs out.
    credit_requested: bool,

    // Guest to host.
    /// Bytes taken from the guest.
    rx_cnt: u32,
    /// Bytes written on to the host stream.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub last_fwd_sent: u32,
    /// Bytes from the guest the stream has not taken yet.
    txbuf: VecDeque<u8>,

    // Host to guest.
    /// Bytes sent to the guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl Conn {
    pub fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            registered: None,
            queued: false,
            owed: 0,
            rx_wanted: false,
            host_eof: false,
            peer_shut: 0,
            shut_write_after_flush: false,
            deadline: None,
            credit_requested: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            txbuf: VecDeque::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// What the guest lets the device send it now (virtio 5.10.6.3). A
    /// guest claiming to have forwarded more than it was sent gets none.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Every packet from the guest restates its buffer space.
    pub fn set_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes from the guest waiting for the host stream.
    pub fn buffered(&self) -> usize {
        self.txbuf.len()
    }

    /// Enough has been forwarded since the guest last heard that it should
    /// hear now, well before it runs out.
    pub fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.last_fwd_sent) >= BUF_ALLOC / 2
    }

    pub fn has_rx_work(&self) -> bool {
        self.owed != 0 || self.rx_wanted
    }

    fn may_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shut & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// What the stream should be watched for: reading only while the guest
    /// can take bytes and the connection is not already waiting for its
    /// turn, writing only while bytes wait. `None` takes it out of the epoll
    /// set, which also silences the hang-ups epoll reports regardless.
    pub fn interest(&self) -> Option<EventSet> {
        let mut set = EventSet::empty();
        if self.may_read() && !self.rx_wanted {
            set |= EventSet::IN;
        }
        if !self.txbuf.is_empty() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    /// Takes `data` the guest sent: straight on to the stream if nothing is
    /// queued before it, the rest kept. Returns the bytes forwarded.
    pub fn push_guest_data(&mut self, data: &[u8]) -> Result<usize, GuestDataError> {
        let len = u32::try_from(data.len()).map_err(|_| GuestDataError::Credit)?;
        // The guest knows of the space freed up to `last_fwd_sent`.
        let unacked = self.rx_cnt.wrapping_sub(self.last_fwd_sent);
        if u64::from(unacked) + u64::from(len) > u64::from(BUF_ALLOC) {
            return Err(GuestDataError::Credit);
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        let written = if self.txbuf.is_empty() {
            send_some(&self.stream, data).map_err(|_| GuestDataError::Host)?
        } else {
            0
        };
        self.txbuf.extend(&data[written..]);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(u32_len(written));
        Ok(written)
    }

    /// Writes buffered bytes on until the stream stops taking them; shuts
    /// its write side if the guest asked for that and all is written.
    /// Returns the bytes forwarded.
    pub fn flush(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while !self.txbuf.is_empty() {
            let (front, _) = self.txbuf.as_slices();
            let n = send_some(&self.stream, front)?;
            if n == 0 {
                break;
            }
            self.txbuf.drain(..n);
            total += n;
        }
        self.fwd_cnt = self.fwd_cnt.wrapping_add(u32_len(total));
        if self.txbuf.is_empty() {
            if self.txbuf.capacity() > MAX_PKT_DATA as usize {
                // An idle connection keeps no large buffer.
                self.txbuf = VecDeque::new();
            }
            if self.shut_write_after_flush {
                self.shut_write_after_flush = false;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
        Ok(total)
    }

    fn take(&mut self, what: u8) -> bool {
        let owed = self.owed & what != 0;
        self.owed &= !what;
        owed
    }

    /// The next packet for the guest, reading stream bytes straight into
    /// `data` (the RX buffer) when that is what is next. `None` when there
    /// is nothing to send after all (the stream had nothing).
    pub fn next_packet(&mut self, data: &VolatileSlice<'_>) -> Option<Out> {
        if self.take(OWE_REQUEST) {
            return Some(Out::control(OP_REQUEST));
        }
        if self.take(OWE_RESPONSE) {
            return Some(Out::control(OP_RESPONSE));
        }
        if self.rx_wanted {
            if self.may_read() {
                if let Some(out) = self.read_into(data) {
                    return Some(out);
                }
            }
            self.rx_wanted = false;
        }
        if self.take(OWE_CREDIT_UPDATE) {
            return Some(Out::control(OP_CREDIT_UPDATE));
        }
        if self.take(OWE_CREDIT_REQUEST) {
            return Some(Out::control(OP_CREDIT_REQUEST));
        }
        None
    }

    fn read_into(&mut self, data: &VolatileSlice<'_>) -> Option<Out> {
        let room = data
            .len()
            .min(self.peer_credit() as usize)
            .min(MAX_PKT_DATA as usize);
        let mut dst = data.subslice(0, room).ok()?;
        // EOF is the host program's "no more from me" (it may only have
        // half-closed and still wait for the guest's answer); an error
        // means it is gone both ways.
        let eof = |host_error| Out {
            op: OP_SHUTDOWN,
            flags: if host_error {
                SHUTDOWN_RCV | SHUTDOWN_SEND
            } else {
                SHUTDOWN_SEND
            },
            len: 0,
            host_error,
        };
        match (&self.stream).read_volatile(&mut dst) {
            Ok(0) => {
                self.host_eof = true;
                self.rx_wanted = false;
                Some(eof(false))
            }
            Ok(n) => {
                let n = u32_len(n);
                self.tx_cnt = self.tx_cnt.wrapping_add(n);
                if self.peer_credit() == 0 && !self.credit_requested {
                    // Out of credit: ask, in case the guest waits to be
                    // asked before it says how much it has read.
                    self.credit_requested = true;
                    self.owed |= OWE_CREDIT_REQUEST;
                }
                Some(Out {
                    op: OP_RW,
                    flags: 0,
                    len: n,
                    host_error: false,
                })
            }
            Err(VolatileMemoryError::IOError(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(_) => {
                self.host_eof = true;
                self.rx_wanted = false;
                Some(eof(true))
            }
        }
    }
}

/// What reading a host stream's first line gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Line {
    /// Not all there yet.
    Partial,
    Connect(u32),
    /// Malformed, too long, or the stream ended or failed first.
    Bad,
}

/// A host stream that has not finished its `CONNECT <port>\n` line.
pub(super) struct Incoming {
    pub stream: UnixStream,
    line: [u8; CONNECT_LINE_MAX],
    len: usize,
    pub deadline: Instant,
}

impl Incoming {
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self {
            stream,
            line: [0; CONNECT_LINE_MAX],
            len: 0,
            deadline,
        }
    }

    /// Reads what has arrived of the line, a byte at a time so that
    /// nothing after the newline is taken: that belongs to the guest.
    pub fn read_line(&mut self) -> Line {
        loop {
            let mut b = [0u8; 1];
            match (&self.stream).read(&mut b) {
                Ok(0) => return Line::Bad,
                Ok(_) if b[0] == b'\n' => {
                    return parse_connect(&self.line[..self.len]).map_or(Line::Bad, Line::Connect)
                }
                Ok(_) => {
                    // The newline must fit too.
                    if self.len + 1 >= CONNECT_LINE_MAX {
                        return Line::Bad;
                    }
                    self.line[self.len] = b[0];
                    self.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Line::Partial,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Line::Bad,
            }
        }
    }
}

/// The port of a `CONNECT <port>` line (without its newline; a trailing
/// carriage return is tolerated).
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let port = words.next()?;
    if words.next().is_some() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT +5"), None);
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"\xff 1"), None);
    }
}
