//! A VM's place on uvm's bridge, shared by `uvm run` at the vm levels and
//! `uvm boot --net bridge`: a tap, an address from the same allocator the
//! containers use and the VM's published ports, recorded as a lease in the
//! runtime's state (so `uvm gc` cleans up after a killed uvm) and released
//! when dropped.

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
}

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
        })
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
        self.rt.release(&self.name);
    }
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
        };
        assert_eq!(
            l.ip_param("eth0"),
            "ip=10.88.0.7::10.88.0.1:255.255.0.0::eth0:off"
        );
    }
}
