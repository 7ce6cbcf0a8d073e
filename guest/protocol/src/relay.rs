//! The one way bytes are copied between a process's pipe and a stream
//! socket (vsock, or uvm's Unix socket for it), on both sides of the VM.
//!
//! Not `std::io::copy`: between a socket and a pipe it uses splice(2), and
//! a splice from a socket into a pipe holds the pipe's lock while it waits
//! for the socket. The pipe's reader then sits in uninterruptible sleep,
//! unable to take even the bytes already in the pipe, until more arrive;
//! when the far side waits for the reader's answer to what it sent (a
//! guest that printed a line and waits for the host to act on it), both
//! wait for ever. Seen as `ctr` and `uvm bench` stuck in D state on a pipe
//! in the nested runner.

use std::io::{self, Read, Write};

const CHUNK: usize = 64 << 10;

/// Copies `from` to `to` until `from` ends; returns the bytes copied.
/// `to` is only ever locked for one `write`.
pub fn relay(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        copied += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_pipes_reader_gets_what_came_while_the_socket_stays_quiet() {
        let (mut peer, mut sock) = UnixStream::pair().unwrap();
        let (mut r, mut w) = io::pipe().unwrap();
        let copier = std::thread::spawn(move || relay(&mut sock, &mut w));
        peer.write_all(b"ready?").unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut got = [0u8; 6];
            tx.send(r.read_exact(&mut got).map(|()| got).ok()).unwrap();
        });
        // The peer now waits for an answer, sending nothing more: the
        // reader must have the line anyway.
        let got = rx.recv_timeout(Duration::from_secs(10));
        drop(peer);
        assert_eq!(got.ok().flatten().as_ref(), Some(b"ready?"));
        assert_eq!(copier.join().unwrap().unwrap(), 6);
    }

    #[test]
    fn everything_arrives_in_order_and_the_count_is_right() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let n = relay(&mut &data[..], &mut out).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(out, data);
    }

    #[test]
    fn a_write_error_is_returned() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = relay(&mut &b"x"[..], &mut Broken).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
