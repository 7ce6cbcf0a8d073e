//! Bridge networking: a bridge with the subnet's first address, a veth pair
//! per container (the inner end created directly in the container's network
//! namespace as `eth0`), addresses allocated from the subnet under a lock,
//! and NAT through one nftables table (`ip uvm`): masquerade for egress,
//! DNAT for published ports (a map keyed by protocol and host port).
//! Per-container rules are map elements, removed when the container goes.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::error::{Error, Result};
use super::spec::{NetConfig, PortMap};
use crate::netlink::{self, Netlink, Netns};

/// nftables table (family ip) holding all of the runtime's rules.
pub const NFT_TABLE: &str = "uvm";

/// Prefix of host-side veth names: `uvmv` + 10 hex digits of the container id.
pub const VETH_PREFIX: &str = "uvmv";

/// The bridge and subnet containers in bridge mode attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    pub name: String,
    /// Network address of the subnet.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: "uvm0".into(),
            subnet: Ipv4Addr::new(10, 88, 0, 0),
            prefix: 16,
        }
    }
}

impl BridgeConfig {
    /// Parses `--subnet A.B.C.D/N` (host bits must be zero, /8 to /30).
    pub fn with_subnet(name: &str, subnet: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("--subnet", subnet, why.to_string());
        let (a, p) = subnet
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.88.0.0/16"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| bad("prefix length must be 8 to 30"))?;
        if u32::from(addr) & !mask(prefix) != 0 {
            return Err(bad("host bits must be zero (e.g. 10.88.0.0/16)"));
        }
        if name.is_empty() || name.len() > netlink::IFNAME_MAX {
            return Err(Error::invalid("--bridge", name, "1 to 15 characters"));
        }
        Ok(BridgeConfig {
            name: name.to_string(),
            subnet: addr,
            prefix,
        })
    }

    /// The bridge's own address, the containers' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.subnet)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// The lowest free address of the subnet (not the network, gateway or
/// broadcast address, nor one in `used`).
pub fn allocate(cfg: &BridgeConfig, used: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    let net = u32::from(cfg.subnet);
    let broadcast = net | !mask(cfg.prefix);
    (net + 2..broadcast)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| {
            Error::Network(format!(
                "no free address left in {}/{} (use --subnet for a larger one)",
                cfg.subnet, cfg.prefix
            ))
        })
}

/// Host-side veth name for container `id`.
pub fn veth_name(id: &str) -> String {
    format!("{VETH_PREFIX}{}", &id[..id.len().min(10)])
}

fn nft_missing() -> Error {
    Error::Nft(
        "the nft command was not found: install nftables (apt-get install nftables) \
         for --net bridge, or use --net none|host"
            .into(),
    )
}

/// Runs `nft -f -` with `script` on stdin.
pub fn nft(script: &str) -> Result<()> {
    nft_in(script, None)
}

/// As [`nft`], in the network namespace `netns` refers to when given.
pub fn nft_in(script: &str, netns: Option<BorrowedFd>) -> Result<()> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        // SAFETY: runs in the forked child before exec; setns is a plain
        // system call (async-signal-safe) on a descriptor the child
        // inherited, which stays open until the child has exec'd.
        unsafe {
            cmd.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            nft_missing()
        } else {
            Error::Nft(format!("running nft: {e}"))
        }
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("running nft: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| l.starts_with("Error:") || l.contains("Error:"))
            .unwrap_or_else(|| err.lines().next().unwrap_or("failed"));
        return Err(Error::Nft(first.trim().to_string()));
    }
    Ok(())
}

fn nft_table_exists() -> Result<bool> {
    let st = Command::new("nft")
        .args(["list", "table", "ip", NFT_TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match st {
        Ok(s) => Ok(s.success()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(nft_missing()),
        Err(e) => Err(Error::Nft(format!("running nft: {e}"))),
    }
}

/// The runtime's nftables table (created once; bridges and subnets are set
/// elements, so one rule set serves every bridge).
pub fn base_ruleset() -> String {
    format!(
        "table ip {NFT_TABLE} {{
  set bridges {{ type ifname; }}
  set subnets {{ type ipv4_addr; flags interval; }}
  map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local ip daddr != 127.0.0.0/8 dnat ip to meta l4proto . th dport map @ports
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip to meta l4proto . th dport map @ports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 127.0.0.0/8 oifname @bridges masquerade
    ip saddr @subnets oifname != @bridges masquerade
    ct status dnat ip saddr @subnets oifname @bridges masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    oifname @bridges ct state established,related accept
    iifname @bridges accept
    oifname @bridges ct status dnat accept
  }}
}}
"
    )
}

fn port_key(p: &PortMap) -> String {
    format!("{} . {}", p.proto, p.host)
}

/// nft script publishing `ports` to `ip` (fails if a host port is taken).
pub fn ports_script(ip: Ipv4Addr, ports: &[PortMap]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "create element ip {NFT_TABLE} ports {{ {} : {ip} . {} }}\n",
                port_key(p),
                p.container
            )
        })
        .collect()
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Makes sure the bridge, its address, forwarding and the nft table exist.
/// When forwarding was off, the value found is kept in `forward_saved` so
/// that [`teardown`] of the last bridge can put it back. Call with the
/// network lock held.
pub fn ensure_bridge(cfg: &BridgeConfig, forward_saved: &Path) -> Result<()> {
    // Checked first: without nft, nothing is changed.
    let table_exists = nft_table_exists()?;
    let mut nl = Netlink::new()?;
    if !nl.link_exists(&cfg.name)? {
        match nl.bridge_create(&cfg.name) {
            Ok(()) => {}
            Err(netlink::Error::Request { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let gw = cfg.gateway();
    let addrs = nl.addrs(&cfg.name)?;
    if !addrs.iter().any(|(a, _)| *a == gw) {
        if let Some((other, p)) = addrs.first() {
            return Err(Error::Network(format!(
                "bridge {} has address {other}/{p}, not {gw}/{}: pass the matching --subnet, \
                 or another --bridge",
                cfg.name, cfg.prefix
            )));
        }
        nl.addr_add(&cfg.name, gw, cfg.prefix)?;
    }
    nl.link_set_up(&cfg.name)?;
    let found = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| Error::Network(format!("reading {IP_FORWARD}: {e}")))?;
    if found.trim() != "1" {
        // Only the first value found counts: a later run sees uvm's own 1.
        if !forward_saved.exists() {
            std::fs::write(forward_saved, found.trim())
                .map_err(|e| Error::Network(format!("saving {}: {e}", forward_saved.display())))?;
        }
        std::fs::write(IP_FORWARD, "1")
            .map_err(|e| Error::Network(format!("enabling IPv4 forwarding ({IP_FORWARD}): {e}")))?;
    }
    // A published port answers on 127.0.0.1 too, as Docker's do: the
    // output chain DNATs loopback connections onto the bridge, which only
    // routes them with route_localnet (postrouting then masquerades them).
    let localnet = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", cfg.name);
    std::fs::write(&localnet, "1")
        .map_err(|e| Error::Network(format!("enabling {localnet}: {e}")))?;
    let mut script = String::new();
    if !table_exists {
        script.push_str(&base_ruleset());
    }
    script.push_str(&format!(
        "add element ip {NFT_TABLE} bridges {{ \"{}\" }}\nadd element ip {NFT_TABLE} subnets {{ {}/{} }}\n",
        cfg.name, cfg.subnet, cfg.prefix
    ));
    nft(&script)
}

/// Fails if a program of this host already listens on a port to publish:
/// the DNAT would take its traffic away without a word.
pub fn check_ports_free(ports: &[PortMap]) -> Result<()> {
    use super::spec::Proto;
    for p in ports {
        let addr = (Ipv4Addr::UNSPECIFIED, p.host);
        let r = match p.proto {
            Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
            Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
        };
        if let Err(e) = r {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(Error::Network(format!(
                    "host port {}/{} is in use by another program on this host",
                    p.host, p.proto
                )));
            }
        }
    }
    Ok(())
}

/// Publishes `ports` for the container at `ip`.
pub fn publish(ip: Ipv4Addr, ports: &[PortMap]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    check_ports_free(ports)?;
    nft(&ports_script(ip, ports)).map_err(|e| match e {
        Error::Nft(msg) if msg.contains("File exists") => Error::Network(format!(
            "a host port of {} is already published by another container",
            ports
                .iter()
                .map(|p| format!("{}/{}", p.host, p.proto))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        e => e,
    })
}

/// Removes published ports (best effort, one by one so one missing element
/// does not keep the others).
pub fn unpublish(ports: &[PortMap]) {
    for p in ports {
        let _ = nft(&format!(
            "delete element ip {NFT_TABLE} ports {{ {} }}\n",
            port_key(p)
        ));
    }
}

/// Creates the container's veth pair: `eth0` inside the namespace of `pid`,
/// the host end attached to the bridge and up.
pub fn attach(cfg: &BridgeConfig, net: &NetConfig, pid: i32) -> Result<()> {
    let mut nl = Netlink::new()?;
    let pid = u32::try_from(pid).map_err(|_| Error::Network(format!("bad pid {pid}")))?;
    nl.veth_create(&net.veth, "eth0", Some(Netns::Pid(pid)))?;
    let r = nl
        .link_set_master(&net.veth, &cfg.name)
        .and_then(|_| nl.link_set_up(&net.veth));
    if let Err(e) = r {
        let _ = nl.link_delete(&net.veth);
        return Err(e.into());
    }
    Ok(())
}

/// Removes the host end of a container's veth if it is still there.
pub fn detach(net: &NetConfig) {
    if let Ok(mut nl) = Netlink::new() {
        if nl.link_exists(&net.veth).unwrap_or(false) {
            let _ = nl.link_delete(&net.veth);
        }
    }
}

/// Removes bridge `cfg` and its NAT rules if no interface is attached to it
/// any more; the nftables table goes with the last bridge, and IPv4
/// forwarding returns to the value [`ensure_bridge`] found before it turned
/// it on. Returns what was removed. Call with the network lock held.
pub fn teardown(cfg: &BridgeConfig, forward_saved: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut nl = Netlink::new()?;
    if !nl.link_exists(&cfg.name)? || !nl.link_ports(&cfg.name)?.is_empty() {
        return Ok(removed);
    }
    nl.link_delete(&cfg.name)?;
    removed.push(format!("bridge {}", cfg.name));
    if nft_table_exists()? {
        let _ = nft(&format!(
            "delete element ip {NFT_TABLE} bridges {{ \"{}\" }}\ndelete element ip {NFT_TABLE} subnets {{ {}/{} }}\n",
            cfg.name, cfg.subnet, cfg.prefix
        ));
        let out = Command::new("nft")
            .args(["list", "set", "ip", NFT_TABLE, "bridges"])
            .output()
            .map_err(|e| Error::Nft(format!("running nft: {e}")))?;
        if !String::from_utf8_lossy(&out.stdout).contains("elements") {
            nft(&format!("delete table ip {NFT_TABLE}\n"))?;
            removed.push(format!("nftables table ip {NFT_TABLE}"));
            removed.extend(restore_forwarding(forward_saved)?);
        }
    }
    Ok(removed)
}

/// Puts back the IPv4 forwarding value saved by [`ensure_bridge`], if any.
fn restore_forwarding(forward_saved: &Path) -> Result<Option<String>> {
    let Ok(saved) = std::fs::read_to_string(forward_saved) else {
        return Ok(None);
    };
    let saved = saved.trim();
    if saved != "0" && saved != "1" {
        let _ = std::fs::remove_file(forward_saved);
        return Ok(None);
    }
    std::fs::write(IP_FORWARD, saved)
        .map_err(|e| Error::Network(format!("restoring {IP_FORWARD} to {saved}: {e}")))?;
    let _ = std::fs::remove_file(forward_saved);
    Ok(Some(format!("net.ipv4.ip_forward restored to {saved}")))
}

/// Inside the container's network namespace: loopback up and, in bridge
/// mode, `eth0` with its address and the default route.
pub fn configure_inside(net: Option<&NetConfig>) -> Result<()> {
    let mut nl = Netlink::new()?;
    nl.link_set_up("lo")?;
    if let Some(n) = net {
        nl.addr_add("eth0", n.ip, n.prefix)?;
        nl.link_set_up("eth0")?;
        nl.route_add_default(n.gateway)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Proto;

    #[test]
    fn subnets_and_allocation() {
        let c = BridgeConfig::with_subnet("br9", "10.99.0.0/24").unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 99, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 99, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 99, 1, 1)));
        assert_eq!(allocate(&c, &[]).unwrap(), Ipv4Addr::new(10, 99, 0, 2));
        let used = [Ipv4Addr::new(10, 99, 0, 2), Ipv4Addr::new(10, 99, 0, 3)];
        assert_eq!(allocate(&c, &used).unwrap(), Ipv4Addr::new(10, 99, 0, 4));
        let small = BridgeConfig::with_subnet("br9", "10.99.0.0/30").unwrap();
        assert!(allocate(&small, &[Ipv4Addr::new(10, 99, 0, 2)]).is_err());
        for bad in ["10.99.0.1/24", "10.99.0.0", "10.99.0.0/31", "x/24"] {
            assert!(BridgeConfig::with_subnet("b", bad).is_err(), "{bad}");
        }
        assert_eq!(veth_name("0123456789abcdef"), "uvmv0123456789");
    }

    #[test]
    fn port_rules() {
        let s = ports_script(
            Ipv4Addr::new(10, 88, 0, 2),
            &[PortMap {
                host: 8080,
                container: 80,
                proto: Proto::Tcp,
            }],
        );
        assert_eq!(
            s,
            "create element ip uvm ports { tcp . 8080 : 10.88.0.2 . 80 }\n"
        );
    }
}
