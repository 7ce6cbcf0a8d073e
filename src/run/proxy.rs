//! Published ports of the process level: uvm itself listens on each host
//! port and relays every connection to the workload's port on 127.0.0.1,
//! as Docker's userland proxy does. A plain process has no address of its
//! own to DNAT to, and a relay leaves no kernel state that a SIGKILL of uvm
//! could strand: the listeners close with the process.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use uvm_runtime::spec::{PortMap, Proto};

use crate::error::Error;

/// Connections relayed at once per listener; more wait in the backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long the accept loop sleeps before it looks at the stop flag again
/// when no connection comes (the listener is non-blocking so Drop can end it).
const ACCEPT_TICK: Duration = Duration::from_millis(100);

/// The relays for a run's `-p` flags; dropping it closes the listeners.
pub struct PortProxy {
    stop: Arc<AtomicBool>,
    acceptors: Vec<thread::JoinHandle<()>>,
}

impl PortProxy {
    /// Binds every host port first, so a port in use fails the run before
    /// the workload starts and nothing is left listening.
    pub fn start(ports: &[PortMap]) -> Result<PortProxy, Error> {
        let mut listeners = Vec::new();
        for p in ports {
            if p.proto == Proto::Udp {
                return Err(super::refuse(
                    super::Isolation::Process,
                    "-p",
                    &format!(
                        "{}:{}/udp: the process level relays TCP only (UDP ports publish at the other levels)",
                        p.host, p.container
                    ),
                ));
            }
            if p.host == p.container {
                // The workload listens on the host port itself.
                uvm_runtime::network::check_ports_free(std::slice::from_ref(p))?;
                continue;
            }
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, p.host)).map_err(|e| {
                if e.kind() == ErrorKind::AddrInUse {
                    Error::Usage(format!(
                        "-p {}:{}: host port {} is in use by another program on this host",
                        p.host, p.container, p.host
                    ))
                } else {
                    Error::Io(format!("listening on host port {}", p.host), e)
                }
            })?;
            l.set_nonblocking(true)
                .map_err(|e| Error::Io(format!("host port {}", p.host), e))?;
            listeners.push((l, p.container));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acceptors = listeners
            .into_iter()
            .map(|(l, target)| {
                let stop = stop.clone();
                thread::spawn(move || accept_loop(&l, target, &stop))
            })
            .collect();
        Ok(PortProxy { stop, acceptors })
    }
}

impl Drop for PortProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(l: &TcpListener, target: u16, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((client, _)) => {
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    continue; // dropped: the client sees a reset
                }
                active.fetch_add(1, Ordering::Relaxed);
                let active = active.clone();
                thread::spawn(move || {
                    relay(client, target);
                    active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_TICK),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // EMFILE and the like: back off rather than spin.
            Err(_) => thread::sleep(ACCEPT_TICK),
        }
    }
}

/// One connection: both directions until each side has closed its end.
fn relay(client: TcpStream, target: u16) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)) else {
        return; // the workload is not listening (yet): the client is closed
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pipe(client, server));
    pipe(s2, c2);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // Half-close: the other side still gets the rest of the answer.
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(host: u16, container: u16) -> PortMap {
        PortMap {
            host,
            container,
            proto: Proto::Tcp,
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn relays_both_ways_with_half_close() {
        let backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let target = backend.local_addr().unwrap().port();
        let host = free_port();
        let proxy = PortProxy::start(&[map(host, target)]).unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = backend.accept().unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).unwrap();
            s.write_all(&req.repeat(2)).unwrap();
        });
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, host)).unwrap();
        c.write_all(b"ping").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"pingping");
        server.join().unwrap();
        drop(proxy);
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, host)).is_err(),
            "the listener closes with the proxy"
        );
    }

    #[test]
    fn a_port_in_use_is_refused_before_anything_listens() {
        let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let other = free_port();
        let e = PortProxy::start(&[map(other, 80), map(port, 80)])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&format!("host port {port} is in use")), "{e}");
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, other)).is_err());
        let e = PortProxy::start(&[map(port, port)])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("in use"), "{e}");
        let udp = PortMap {
            proto: Proto::Udp,
            ..map(other, 53)
        };
        assert!(PortProxy::start(&[udp])
            .err()
            .unwrap()
            .to_string()
            .contains("TCP only"));
    }
}
