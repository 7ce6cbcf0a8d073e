//! Static IPv4 networking from the kernel's standard `ip=` parameter
//! (Documentation/admin-guide/nfs/nfsroot.rst). The guest kernel has
//! CONFIG_IP_PNP off and virtio_net as a module, so the kernel ignores
//! `ip=`: the init applies it, through netlink, once the modules are loaded.
//!
//! `ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>`
//!
//! Only static configuration is supported: autoconf must be empty, `off` or
//! `none`. The server and NTP addresses are checked but not used.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use uvm_runtime::netlink::{self, Netlink, IFNAME_MAX};

use super::{poll_until, InitError};

/// Where the `dns0`/`dns1` fields go.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// virtio_net may probe asynchronously after its module is loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(3);

/// Autoconfiguration protocols the kernel knows and the init does not do.
const AUTOCONF_PROTOCOLS: &[&str] = &["on", "any", "dhcp", "bootp", "rarp", "both"];

/// What a static `ip=` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub client: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
    /// `None` when empty or 0.0.0.0: no default route.
    pub gateway: Option<Ipv4Addr>,
    pub prefix_len: u8,
    pub hostname: Option<String>,
    /// `None`: the first interface other than `lo`, by name.
    pub device: Option<String>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Option<Ipv4Addr>,
}

/// Parses the value of `ip=`: `Ok(None)` for `off`/`none`, an error (one
/// line, naming the value) for anything the init cannot apply.
pub fn parse_ip_param(value: &str) -> Result<Option<IpConfig>, String> {
    let fail = |why: String| format!("ip={value}: {why}");
    if matches!(value, "off" | "none") {
        return Ok(None);
    }
    let fields: Vec<&str> = value.split(':').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    // The bare form `ip=dhcp` names the protocol in the first field.
    let autoconf = if fields.len() == 1 { value } else { field(6) };
    if is_autoconf_protocol(autoconf) {
        return Err(fail(format!(
            "autoconfiguration ({autoconf}) is not supported, only static IPv4; network left down"
        )));
    }
    // Checked before the fields, which an IPv6 address's colons shift.
    if field(0).parse::<Ipv4Addr>().is_err() && looks_like_ipv6(value) {
        return Err(fail("IPv6 is not supported, only static IPv4".into()));
    }
    check_static(field(6)).map_err(fail)?;
    let client = parse_client(field(0)).map_err(fail)?;
    let prefix_len = parse_netmask(field(3), client).map_err(fail)?;
    let cfg = IpConfig {
        client,
        server: optional_addr("server-ip", field(1)).map_err(fail)?,
        gateway: optional_addr("gw-ip", field(2)).map_err(fail)?,
        prefix_len,
        hostname: non_empty(field(4)),
        device: parse_device(field(5)).map_err(fail)?,
        dns: [field(7), field(8)]
            .iter()
            .filter_map(|f| optional_addr("dns-ip", f).transpose())
            .collect::<Result<_, _>>()
            .map_err(fail)?,
        ntp: optional_addr("ntp0-ip", field(9)).map_err(fail)?,
    };
    Ok(Some(cfg))
}

fn is_autoconf_protocol(s: &str) -> bool {
    // `dhcp,<client-id>` is how the kernel takes a DHCP client id.
    let name = s.split(',').next().unwrap_or(s);
    AUTOCONF_PROTOCOLS.contains(&name)
}

fn check_static(autoconf: &str) -> Result<(), String> {
    match autoconf {
        "" | "off" | "none" => Ok(()),
        p => Err(format!("unknown autoconf {p:?} (use off, none or nothing)")),
    }
}

fn parse_client(field: &str) -> Result<Ipv4Addr, String> {
    if field.is_empty() {
        return Err(
            "no client-ip (autoconfiguration is not supported, only static IPv4)".to_string(),
        );
    }
    let addr: Ipv4Addr = field
        .parse()
        .map_err(|_| format!("client-ip {field:?} is not an IPv4 address"))?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err(format!("client-ip {addr} cannot be a host's address"));
    }
    Ok(addr)
}

/// Whether `ip=` starts with an IPv6 address, which its `:`-separated
/// syntax cannot carry: worth a clearer error than "bad address".
fn looks_like_ipv6(value: &str) -> bool {
    if value.starts_with('[') {
        return true;
    }
    let ends = value
        .match_indices(':')
        .map(|(i, _)| i)
        .chain(std::iter::once(value.len()));
    ends.filter(|&end| end > 2)
        .any(|end| value[..end].parse::<Ipv6Addr>().is_ok())
}

/// An address field: `None` when empty or 0.0.0.0 (the kernel's "none").
fn optional_addr(name: &str, field: &str) -> Result<Option<Ipv4Addr>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    let addr: Ipv4Addr = field
        .parse()
        .map_err(|_| format!("{name} {field:?} is not an IPv4 address"))?;
    Ok((!addr.is_unspecified()).then_some(addr))
}

/// Prefix length from a dotted-quad netmask, or the address's class when
/// the netmask is empty (as the kernel's ipconfig does).
fn parse_netmask(field: &str, client: Ipv4Addr) -> Result<u8, String> {
    if field.is_empty() {
        return classful_prefix(client)
            .ok_or_else(|| format!("no netmask, and {client} has no address class to guess one"));
    }
    let mask: Ipv4Addr = field
        .parse()
        .map_err(|_| format!("netmask {field:?} is not a dotted-quad IPv4 netmask"))?;
    netlink::netmask_to_prefix(mask)
        .ok_or_else(|| format!("netmask {mask} is not contiguous (ones then zeros)"))
}

fn classful_prefix(addr: Ipv4Addr) -> Option<u8> {
    match addr.octets()[0] {
        0..=127 => Some(8),
        128..=191 => Some(16),
        192..=223 => Some(24),
        _ => None,
    }
}

fn parse_device(field: &str) -> Result<Option<String>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    if field.len() > IFNAME_MAX
        || field.contains('/')
        || field.chars().any(char::is_whitespace)
        || field == "."
        || field == ".."
    {
        return Err(format!("device {field:?} is not an interface name"));
    }
    Ok(Some(field.to_string()))
}

fn non_empty(field: &str) -> Option<String> {
    (!field.is_empty()).then(|| field.to_string())
}

/// The interface to configure among those present: the one named, or the
/// first that is not `lo`.
pub fn pick_device(names: &[String], wanted: Option<&str>) -> Option<String> {
    match wanted {
        Some(w) => names.iter().find(|n| *n == w).cloned(),
        None => names.iter().filter(|n| *n != "lo").min().cloned(),
    }
}

/// `/etc/resolv.conf` for these servers.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    dns.iter().map(|a| format!("nameserver {a}\n")).collect()
}

/// Brings up `lo`; the kernel gives it 127.0.0.1/8 as it comes up.
pub fn loopback_up() -> Result<(), InitError> {
    Ok(netlink::link_set_up("lo")?)
}

/// Applies `cfg`: waits for the device, adds the address, sets the link up,
/// adds the default route, writes the name servers to `resolv`.
pub fn configure(cfg: &IpConfig, resolv: &Path) -> Result<(), InitError> {
    let mut nl = Netlink::new()?;
    let dev = wait_for_device(&mut nl, cfg.device.as_deref())?;
    already_done_is_ok(nl.addr_add(&dev, cfg.client, cfg.prefix_len))?;
    nl.link_set_up(&dev)?;
    if let Some(gw) = cfg.gateway {
        already_done_is_ok(nl.route_add_default(gw))?;
    }
    if !cfg.dns.is_empty() {
        write_resolv_conf(resolv, &cfg.dns)?;
    }
    Ok(())
}

fn wait_for_device(nl: &mut Netlink, wanted: Option<&str>) -> Result<String, InitError> {
    poll_until(DEVICE_WAIT, || pick_device(&nl.link_names().ok()?, wanted)).ok_or_else(|| {
        let what = wanted.map_or_else(
            || "no network interface other than lo".to_string(),
            |w| format!("no network interface {w}"),
        );
        InitError::IpParam(format!(
            "ip=: {what} after {} s; network left down",
            DEVICE_WAIT.as_secs()
        ))
    })
}

/// EEXIST: the address or route is already there, which is what we want.
fn already_done_is_ok(result: netlink::Result<()>) -> Result<(), InitError> {
    match result {
        Err(netlink::Error::Request { source, .. })
            if source.raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

fn write_resolv_conf(path: &Path, dns: &[Ipv4Addr]) -> Result<(), InitError> {
    let io_err = |e| InitError::Io(path.display().to_string(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    // A distribution's link into /run/systemd would dangle here.
    if path.is_symlink() {
        std::fs::remove_file(path).map_err(io_err)?;
    }
    std::fs::write(path, resolv_conf(dns)).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str) -> IpConfig {
        match parse_ip_param(value) {
            Ok(Some(cfg)) => cfg,
            other => panic!("ip={value}: {other:?}"),
        }
    }

    fn err(value: &str) -> String {
        match parse_ip_param(value) {
            Err(e) => e,
            other => panic!("ip={value} accepted: {other:?}"),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn full_form() {
        let cfg =
            ok("10.0.0.2:10.0.0.9:10.0.0.1:255.255.255.0:vm1:eth0:off:1.1.1.1:8.8.8.8:10.0.0.7");
        assert_eq!(
            cfg,
            IpConfig {
                client: ip("10.0.0.2"),
                server: Some(ip("10.0.0.9")),
                gateway: Some(ip("10.0.0.1")),
                prefix_len: 24,
                hostname: Some("vm1".into()),
                device: Some("eth0".into()),
                dns: vec![ip("1.1.1.1"), ip("8.8.8.8")],
                ntp: Some(ip("10.0.0.7")),
            }
        );
    }

    #[test]
    fn minimal_form() {
        let cfg = ok("10.0.0.2::10.0.0.1:255.255.255.0::eth0:off");
        assert_eq!(cfg.client, ip("10.0.0.2"));
        assert_eq!(cfg.server, None);
        assert_eq!(cfg.gateway, Some(ip("10.0.0.1")));
        assert_eq!(cfg.prefix_len, 24);
        assert_eq!(cfg.hostname, None);
        assert_eq!(cfg.device.as_deref(), Some("eth0"));
        assert!(cfg.dns.is_empty());
        assert_eq!(cfg.ntp, None);
    }

    #[test]
    fn trailing_fields_may_be_omitted_or_extra() {
        let cfg = ok("192.168.1.5");
        assert_eq!((cfg.prefix_len, cfg.device, cfg.gateway), (24, None, None));
        let cfg = ok("10.0.0.2::10.0.0.1:255.255.0.0");
        assert_eq!(cfg.prefix_len, 16);
        let cfg = ok("10.0.0.2::10.0.0.1:255.255.255.0::eth0:none:9.9.9.9:::extra:more");
        assert_eq!(cfg.dns, vec![ip("9.9.9.9")]);
    }

    #[test]
    fn empty_device_and_autoconf() {
        let cfg = ok("10.0.0.2::10.0.0.1:255.255.255.0:::");
        assert_eq!(cfg.device, None);
        let cfg = ok("10.0.0.2::10.0.0.1:255.255.255.0");
        assert_eq!(cfg.device, None);
    }

    #[test]
    fn empty_netmask_is_classful() {
        assert_eq!(ok("10.1.2.3").prefix_len, 8);
        assert_eq!(ok("172.16.0.2::172.16.0.1").prefix_len, 16);
        assert_eq!(ok("192.168.7.2::::::off").prefix_len, 24);
        assert!(err("240.0.0.1").contains("class"));
    }

    #[test]
    fn host_and_any_masks() {
        assert_eq!(
            ok("10.0.0.2::10.0.0.1:255.255.255.255::eth0:off").prefix_len,
            32
        );
        assert_eq!(ok("10.0.0.2::10.0.0.1:0.0.0.0::eth0:off").prefix_len, 0);
    }

    #[test]
    fn unset_gateway_and_dns() {
        let cfg = ok("10.0.0.2::0.0.0.0:255.255.255.0::eth0:off:0.0.0.0:1.1.1.1");
        assert_eq!(cfg.gateway, None);
        assert_eq!(cfg.dns, vec![ip("1.1.1.1")]);
    }

    #[test]
    fn bad_addresses() {
        assert!(err("10.0.0.256::10.0.0.1:255.255.255.0::eth0:off").contains("client-ip"));
        assert!(err("eth0").contains("client-ip"));
        assert!(err("10.0.0.2::10.0.0:255.255.255.0::eth0:off").contains("gw-ip"));
        assert!(err("10.0.0.2::10.0.0.1:255.255.255.0::eth0:off:dns").contains("dns-ip"));
        assert!(err("0.0.0.0::10.0.0.1:255.255.255.0::eth0:off").contains("client-ip"));
        assert!(err("224.0.0.1::::::off").contains("client-ip"));
        assert!(err("10.0.0.2:::24::eth0:off").contains("netmask"));
        assert!(err("10.0.0.2:::::a/b:off").contains("device"));
        assert!(err("10.0.0.2:::::sixteen-chars-xx:off").contains("device"));
    }

    #[test]
    fn non_contiguous_mask() {
        let e = err("10.0.0.2::10.0.0.1:255.0.255.0::eth0:off");
        assert!(e.contains("not contiguous"), "{e}");
        assert!(e.starts_with("ip=10.0.0.2:"), "{e}");
    }

    #[test]
    fn autoconfiguration_refused() {
        for value in [
            "dhcp",
            "on",
            "any",
            "bootp",
            "rarp",
            "both",
            "dhcp,myclient",
            ":::::eth0:dhcp",
            "10.0.0.2::10.0.0.1:255.255.255.0::eth0:dhcp",
            "::10.0.0.1:255.255.255.0::eth0:dhcp",
        ] {
            let e = err(value);
            assert!(e.contains("not supported"), "{value}: {e}");
        }
        assert!(err("10.0.0.2:::::eth0:maybe").contains("unknown autoconf"));
        assert!(err("").contains("no client-ip"));
    }

    #[test]
    fn off_and_none() {
        assert_eq!(parse_ip_param("off"), Ok(None));
        assert_eq!(parse_ip_param("none"), Ok(None));
    }

    #[test]
    fn ipv6_rejected_clearly() {
        for value in [
            "fd00::2::fd00::1:64::eth0:off",
            "2001:db8::2",
            "[fd00::2]::[fd00::1]:64::eth0:off",
            "::1",
        ] {
            let e = err(value);
            assert!(e.contains("IPv6 is not supported"), "{value}: {e}");
        }
    }

    #[test]
    fn last_ip_parameter_wins() {
        let line = "console=ttyS0 ip=dhcp ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off quiet";
        let value = uvm_protocol::param(line, "ip").unwrap();
        assert_eq!(ok(value).client, ip("10.0.0.2"));
    }

    #[test]
    fn device_choice() {
        let names: Vec<String> = ["lo", "eth1", "eth0"].map(String::from).to_vec();
        assert_eq!(pick_device(&names, None).as_deref(), Some("eth0"));
        assert_eq!(pick_device(&names, Some("eth1")).as_deref(), Some("eth1"));
        assert_eq!(pick_device(&names, Some("eth2")), None);
        assert_eq!(pick_device(&["lo".to_string()], None), None);
    }

    #[test]
    fn resolv_conf_lines() {
        assert_eq!(
            resolv_conf(&[ip("1.1.1.1"), ip("8.8.8.8")]),
            "nameserver 1.1.1.1\nnameserver 8.8.8.8\n"
        );
    }

    /// Runs in a fresh network namespace owned by the test's thread: needs
    /// root (skipped otherwise) but touches nothing of the host's network.
    #[test]
    fn configure_in_a_fresh_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        loopback_up().unwrap();
        let mut nl = Netlink::new().unwrap();
        assert!(nl.addrs("lo").unwrap().contains(&(Ipv4Addr::LOCALHOST, 8)));
        nl.veth_create("tveth0", "eth3", None).unwrap();
        nl.link_set_up("tveth0").unwrap();
        let dir = std::env::temp_dir().join(format!("uvm-init-net-{}", std::process::id()));
        let resolv = dir.join("etc/resolv.conf");
        // Empty device: the first non-lo interface by name is eth3.
        let cfg = ok("10.125.0.2::10.125.0.1:255.255.255.0:::off:10.125.0.53");
        configure(&cfg, &resolv).unwrap();
        assert_eq!(nl.addrs("eth3").unwrap(), vec![(ip("10.125.0.2"), 24)]);
        assert_eq!(nl.default_gateway().unwrap(), Some(ip("10.125.0.1")));
        assert_eq!(
            std::fs::read_to_string(&resolv).unwrap(),
            "nameserver 10.125.0.53\n"
        );
        // Applying it again (address and route present) is not an error.
        configure(&cfg, &resolv).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = ok("10.125.1.2:::255.255.255.0::eth9:off");
        let e = wait_for_device(&mut nl, missing.device.as_deref()).unwrap_err();
        assert!(e.to_string().contains("no network interface eth9"), "{e}");
    }
}
