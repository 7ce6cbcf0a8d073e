//! A VM's place on uvm's bridge, shared by `uvm run` at the vm levels and
//! `uvm boot --net bridge`: a tap, an address from the same allocator the
//! containers use and the VM's published ports, recorded as a lease in the
//! runtime's state (so `uvm gc` cleans up after a killed uvm) and released
//! when dropped.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use uvm_runtime::spec::{NetConfig, PortMap};
use uvm_runtime::state::{self, Paths};
use uvm_runtime::Runtime;

use crate::error::Error;
use crate::vmm::linux::LinuxVmConfig;

pub struct NetLease {
    rt: Runtime,
    name: String,
    net: NetConfig,
    tap: String,
    /// The helper that releases the lease, when one does (see
    /// [`NetLease::release_from_helper`]).
    releaser: Option<Releaser>,
}

/// `uvm release-lease NAME`, waiting to be told on its stdin.
struct Releaser {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The hidden subcommand the helper runs.
pub const RELEASE_LEASE: &str = "release-lease";

/// What uvm writes to the helper's stdin when the lease is to go.
const RELEASE_NOW: &[u8] = b"release\n";

impl NetLease {
    /// `publish`: `HOST:GUEST[/udp]` flags; `what` is shown by `uvm container ps`.
    pub fn take(name: &str, publish: &[String], what: &str) -> Result<NetLease, Error> {
        let rt = Runtime::new(Paths::new(state::default_root()));
        let ports: Vec<PortMap> = publish
            .iter()
            .map(|p| p.parse::<PortMap>())
            .collect::<Result<_, _>>()?;
        let tap = format!("uvmt{}", &state::new_id()[..10]);
        let net = rt.lease(name, &tap, &ports, what)?;
        Ok(NetLease {
            rt,
            name: name.to_string(),
            net,
            tap,
            releaser: None,
        })
    }

    /// Hands the release to a helper process (this program again, as
    /// `uvm release-lease NAME`), which releases the lease when uvm tells it
    /// to on its stdin. Releasing runs `nft` and opens a netlink socket,
    /// which the control seccomp filter forbids the thread that ends the
    /// VM; the helper, started before any filter, is not under one, and
    /// it sees no guest data. Dropping the lease then tells the helper and
    /// waits for it. A uvm killed before that leaves its lease, as without
    /// the helper, for `uvm gc`.
    pub fn release_from_helper(&mut self) -> Result<(), Error> {
        let exe =
            std::env::current_exe().map_err(|e| Error::Io("finding uvm's own binary".into(), e))?;
        let mut child = Command::new(&exe)
            .args([RELEASE_LEASE, &self.name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its own process group: a Ctrl-C for uvm must not kill it
            // before it has released the lease.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Io(format!("starting {} {RELEASE_LEASE}", exe.display()), e))?;
        let stdin = child.stdin.take();
        self.releaser = Some(Releaser { child, stdin });
        Ok(())
    }

    /// The address, gateway and bridge leased.
    pub fn net(&self) -> &NetConfig {
        &self.net
    }

    /// The tap the VMM is to create (or the link the lease names).
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// The kernel's `ip=` for the guest's `device`.
    pub fn ip_param(&self, device: &str) -> String {
        let mask = std::net::Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.net.prefix))
                .unwrap_or(0),
        );
        format!(
            "ip={}::{}:{mask}::{device}:off",
            self.net.ip, self.net.gateway
        )
    }

    /// Puts the tap on the bridge: once the VMM has made it, before the
    /// guest runs.
    pub fn attach(&self) -> Result<(), Error> {
        Ok(self.rt.attach_link(&self.tap)?)
    }
}

impl Drop for NetLease {
    fn drop(&mut self) {
        match self.releaser.take() {
            Some(mut r) => {
                let told = r
                    .stdin
                    .take()
                    .is_some_and(|mut stdin| stdin.write_all(RELEASE_NOW).is_ok());
                let done = r.child.wait().is_ok_and(|s| s.success());
                if !(told && done) {
                    eprintln!(
                        "uvm: the helper that releases network lease {} failed; `uvm gc` removes it",
                        self.name
                    );
                }
            }
            None => self.rt.release(&self.name),
        }
    }
}

/// `uvm release-lease NAME`: waits for stdin to end, then releases lease
/// NAME if it was told to (a uvm that died without saying so leaves the
/// lease to `uvm gc`).
pub fn release_when_told(name: &str) -> i32 {
    let mut told = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut told);
    if told == RELEASE_NOW {
        Runtime::new(Paths::new(state::default_root())).release(name);
    }
    0
}

/// `uvm boot --net bridge[,mac=..]` and `-p`: leases the bridged device's
/// tap and address, and tells the guest its address with `ip=` (before the
/// user's own command line, which stays last).
pub fn lease_for_boot(
    cfg: &mut LinuxVmConfig,
    publish: &[String],
) -> Result<Option<NetLease>, Error> {
    let bridged: Vec<usize> = (0..cfg.nets.len())
        .filter(|i| cfg.nets[*i].bridge)
        .collect();
    let index = match bridged[..] {
        [] if publish.is_empty() => return Ok(None),
        [] => {
            return Err(Error::Cmdline(
                "-p publishes ports of a VM on uvm's bridge: add --net bridge".into(),
            ))
        }
        [i] => i,
        _ => {
            return Err(Error::Cmdline(
                "--net bridge is given twice: a VM has one address on uvm's bridge".into(),
            ))
        }
    };
    let name = format!("boot-{}", std::process::id());
    let lease = NetLease::take(&name, publish, "uvm boot")?;
    cfg.nets[index].tap = lease.tap().to_string();
    // virtio-net devices are probed in --net order: the n-th is eth<n>.
    let param = lease.ip_param(&format!("eth{index}"));
    let at = cfg.cmdline.len().saturating_sub(1);
    cfg.cmdline.insert(at, param);
    Ok(Some(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_gets_its_lease_as_ip_param() {
        let l = NetLease {
            rt: Runtime::new(Paths::new("/nonexistent/uvm-test-state")),
            name: "t".into(),
            net: NetConfig {
                bridge: "uvm0".into(),
                ip: "10.88.0.7".parse().unwrap(),
                prefix: 16,
                gateway: "10.88.0.1".parse().unwrap(),
                veth: "uvmt0".into(),
                ports: vec![],
            },
            tap: "uvmt0".into(),
            releaser: None,
        };
        assert_eq!(
            l.ip_param("eth0"),
            "ip=10.88.0.7::10.88.0.1:255.255.0.0::eth0:off"
        );
    }
}
