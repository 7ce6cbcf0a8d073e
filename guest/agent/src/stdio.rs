//! The stdio port: each connection names one stream of one process in its
//! header line, gets `OK` (or `ERR why`), then carries that stream's bytes
//! until its end. The copy runs in a thread of its own, so a host that
//! stops reading one stream stalls only that process's writes to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    accept, bind, socket, AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr,
};
use uvm_agent_api::{Stream, StreamHeader, MAX_HEADER};
use uvm_protocol::relay::relay;

use crate::service::Agent;
use crate::AgentError;

/// How long a new connection has to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn listen(agent: Arc<Agent>, port: u32) -> Result<(), AgentError> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| AgentError::Setup(format!("vsock socket: {e}")))?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
        .map_err(|e| AgentError::Setup(format!("binding vsock port {port}: {e}")))?;
    nix::sys::socket::listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| AgentError::Setup(format!("listening on vsock port {port}: {e}")))?;
    std::thread::Builder::new()
        .name("stdio".into())
        .spawn(move || loop {
            match accept(fd.as_raw_fd()) {
                Ok(c) => {
                    // SAFETY: accept returned a new descriptor that nothing else owns.
                    let conn = unsafe { OwnedFd::from_raw_fd(c) };
                    let agent = agent.clone();
                    let _ = std::thread::Builder::new()
                        .name("stream".into())
                        .spawn(move || serve(&agent, conn));
                }
                Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => {}
                Err(e) => {
                    crate::log(&format!("stdio accept: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(|e| AgentError::Setup(format!("stdio thread: {e}")))?;
    Ok(())
}

/// Reads the header line (at most MAX_HEADER bytes, byte by byte so no
/// stream byte is consumed with it).
fn read_header(conn: &std::fs::File) -> Result<String, String> {
    let mut line = Vec::new();
    let mut r = BufReader::with_capacity(1, conn);
    r.by_ref()
        .take(MAX_HEADER as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the header: {e}"))?;
    match line.pop() {
        Some(b'\n') => String::from_utf8(line).map_err(|_| "the header is not UTF-8".into()),
        _ => Err("no header line".into()),
    }
}

fn set_timeout(conn: &std::fs::File, t: Option<Duration>) {
    let tv = t.map_or(
        libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        |t| libc::timeval {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(10),
            tv_usec: 0,
        },
    );
    // SAFETY: setsockopt reads a timeval of the given size from `tv`.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16),
        )
    };
}

fn serve(agent: &Agent, conn: OwnedFd) {
    let mut conn = std::fs::File::from(conn);
    set_timeout(&conn, Some(HEADER_TIMEOUT));
    let header = read_header(&conn).and_then(|l| StreamHeader::parse(&l));
    let taken = header.and_then(|h| {
        let keep = match h.stream {
            Stream::Stdin => conn.try_clone().ok().map(OwnedFd::from),
            _ => None,
        };
        agent
            .take_stream(&h, keep)
            .map(|fd| (h, fd))
            .map_err(|e| e.to_string())
    });
    let (h, pipe) = match taken {
        Ok(t) => t,
        Err(why) => {
            let _ = conn.write_all(format!("ERR {why}\n").as_bytes());
            return;
        }
    };
    if conn.write_all(b"OK\n").is_err() {
        return;
    }
    set_timeout(&conn, None);
    let mut pipe = std::fs::File::from(pipe);
    match h.stream {
        Stream::Stdin => {
            let _ = relay(&mut conn, &mut pipe);
            // Dropping the pipe's write end is the process's EOF.
        }
        Stream::Stdout | Stream::Stderr => {
            let _ = relay(&mut pipe, &mut conn);
            let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), Shutdown::Write);
        }
    }
}
