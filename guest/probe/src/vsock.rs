//! The guest's end of the vsock tests and benchmarks: plain AF_VSOCK stream
//! sockets, so what they check is the device and the guest kernel's own
//! transport, nothing of uvm's in between.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use uvm_protocol::relay::relay;

use nix::sys::socket::{
    accept, bind, connect, listen, shutdown, socket, AddressFamily, Backlog, Shutdown, SockFlag,
    SockType, VsockAddr,
};

fn stream() -> Result<OwnedFd, String> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket(AF_VSOCK): {e} (is the vsock transport loaded?)"))
}

fn listener(port: u32) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let s = stream()?;
    bind(s.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
        .map_err(|e| format!("bind vsock port {port}: {e}"))?;
    listen(&s, Backlog::new(128).map_err(|e| e.to_string())?)
        .map_err(|e| format!("listen: {e}"))?;
    Ok(s)
}

fn accept_one(l: &OwnedFd) -> Result<File, String> {
    use std::os::fd::AsRawFd;
    let fd = accept(l.as_raw_fd()).map_err(|e| format!("accept: {e}"))?;
    // SAFETY: accept(2) returned a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Connects to the host (cid 2) or another cid; a refusal is its own error.
fn connect_to(cid: u32, port: u32) -> Result<File, io::Error> {
    use std::os::fd::AsRawFd;
    let s = stream().map_err(io::Error::other)?;
    connect(s.as_raw_fd(), &VsockAddr::new(cid, port)).map_err(io::Error::from)?;
    Ok(File::from(s))
}

/// `vsock-recv PORT`: accepts one connection and copies it to stdout.
pub fn recv(port: u32) -> Result<(), String> {
    let l = listener(port)?;
    println_ready(port);
    let mut c = accept_one(&l)?;
    let out = io::stdout();
    let mut out = out.lock();
    relay(&mut c, &mut out).map_err(|e| format!("receiving: {e}"))?;
    Ok(())
}

/// `vsock-send CID PORT`: connects, sends stdin, closes its write side and
/// copies what comes back to stdout. MB/s of the send on stderr.
pub fn send(cid: u32, port: u32) -> Result<(), String> {
    let mut c = connect_to(cid, port).map_err(|e| format!("connecting to {cid}:{port}: {e}"))?;
    let t = Instant::now();
    let n = relay(&mut io::stdin().lock(), &mut c).map_err(|e| format!("sending: {e}"))?;
    shutdown(std::os::fd::AsRawFd::as_raw_fd(&c), Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    #[allow(clippy::cast_precision_loss)]
    let mbs = n as f64 / 1e6 / t.elapsed().as_secs_f64();
    eprintln!("vsock-send: {n} bytes, {mbs:.1} MB/s");
    relay(&mut c, &mut io::stdout().lock()).map_err(|e| format!("reading the answer: {e}"))?;
    Ok(())
}

/// `vsock-echo PORT N`: serves N connections at once, each echoing what it
/// gets until its peer closes.
pub fn echo(port: u32, n: usize) -> Result<(), String> {
    let l = listener(port)?;
    println_ready(port);
    let mut threads = Vec::new();
    for _ in 0..n {
        let mut c = accept_one(&l)?;
        threads.push(std::thread::spawn(move || -> io::Result<u64> {
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0;
            loop {
                let k = c.read(&mut buf)?;
                if k == 0 {
                    return Ok(total);
                }
                c.write_all(&buf[..k])?;
                total += k as u64;
            }
        }));
    }
    let mut bad = 0;
    for t in threads {
        if !matches!(t.join(), Ok(Ok(_))) {
            bad += 1;
        }
    }
    if bad > 0 {
        return Err(format!("{bad} of {n} echo connections failed"));
    }
    println!("echoed {n}");
    Ok(())
}

/// `vsock-refused CID PORT`: a port nobody listens on must refuse cleanly.
pub fn refused(cid: u32, port: u32) -> Result<(), String> {
    match connect_to(cid, port) {
        Err(e)
            if e.raw_os_error() == Some(libc::ECONNRESET)
                || e.raw_os_error() == Some(libc::ECONNREFUSED) =>
        {
            println!("refused ({e})");
            Ok(())
        }
        Err(e) => Err(format!("connecting to {cid}:{port}: {e}, not a refusal")),
        Ok(_) => Err(format!("{cid}:{port} accepted a connection")),
    }
}

fn println_ready(port: u32) {
    // On stderr: stdout may carry the data.
    eprintln!("vsock: listening on port {port}");
}
