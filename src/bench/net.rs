//! The network metric of `uvm bench`: a TCP sink on the host that every
//! target's workload sends to, and the references' places on uvm's bridge
//! (runc in a network namespace on a veth, QEMU on a tap), leased from the
//! same allocator as uvm's own levels so every target crosses the same
//! bridge to the same host end.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::Error;
use crate::run::net::NetLease;

/// Where the host end answers a workload on uvm's bridge.
pub fn bridge_gateway() -> Ipv4Addr {
    uvm_runtime::network::BridgeConfig::default().gateway()
}

/// Reads each connection to its end and answers `got N` (bytes), so the
/// sender's time covers every byte reaching the host. One connection at a
/// time: the targets run one after the other.
pub struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sink {
    pub fn start() -> Result<Sink, Error> {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| Error::Io("bench: listening for the network metric".into(), e))?;
        let port = l
            .local_addr()
            .map_err(|e| Error::Io("bench: the sink's port".into(), e))?
            .port();
        l.set_nonblocking(true)
            .map_err(|e| Error::Io("bench: the sink".into(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                // A sender that stalls for this long is gone.
                let _ = c.set_read_timeout(Some(Duration::from_secs(120)));
                let mut buf = vec![0u8; 256 << 10];
                let mut total = 0u64;
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = c.write_all(format!("got {total}\n").as_bytes());
            }
        });
        Ok(Sink {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), Error> {
    super::guest::ip(args).map_err(|e| Error::Usage(format!("bench: {e}")))
}

/// runc's place on the bridge: a network namespace whose `eth0` is one end
/// of a veth, the other on uvm's bridge, as uvm's container level has it.
pub struct RuncNet {
    lease: NetLease,
    netns: String,
}

impl RuncNet {
    pub fn create(name: &str) -> Result<RuncNet, Error> {
        let lease = NetLease::take(name, &[], "uvm bench (runc reference)")?;
        let netns = format!("uvm-bench-{}", std::process::id());
        ip(&["netns", "add", &netns])?;
        let me = RuncNet { lease, netns };
        let n = me.lease.net();
        let (ns, host) = (me.netns.as_str(), me.lease.tap());
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        me.lease.attach()?;
        let cidr = format!("{}/{}", n.ip, n.prefix);
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &n.gateway.to_string(),
        ])?;
        Ok(me)
    }

    /// The path runc's config names for its network namespace.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }
}

impl Drop for RuncNet {
    fn drop(&mut self) {
        // The veth goes with the namespace; the lease drops after this.
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// QEMU's place on the bridge: a tap made beforehand and put on the bridge,
/// which QEMU opens by name, and the guest's address as `ip=`.
pub struct QemuTap {
    lease: NetLease,
}

impl QemuTap {
    pub fn create(name: &str) -> Result<QemuTap, Error> {
        let lease = NetLease::take(name, &[], "uvm bench (QEMU reference)")?;
        ip(&["tuntap", "add", lease.tap(), "mode", "tap"])?;
        lease.attach()?;
        Ok(QemuTap { lease })
    }

    pub fn tap(&self) -> &str {
        self.lease.tap()
    }

    pub fn ip_param(&self) -> String {
        self.lease.ip_param("eth0")
    }
}
