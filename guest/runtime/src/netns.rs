//! The network patterns beyond the bridge, around a container's network
//! namespace:
//! - registration: a namespace the runtime made is bind-mounted on
//!   `/run/netns/NAME` (the container's name) while the container runs, so
//!   `ip netns exec NAME ...` works; an existing entry of that name is
//!   refused, never replaced;
//! - `--net container:NAME`: join a running container's namespace (the
//!   pod pattern), which the joiner never sets up or tears down;
//! - `--net veth:NAME`: a veth pair straight into a running container's
//!   namespace, no bridge: this container's end is `eth0`, the other one
//!   the first free `ethN` there; both ends are made, and the other end
//!   removed, by this container's runtime;
//! - `--net macvlan:PARENT --ip ADDR/PREFIX`: `eth0` is a bridge-mode
//!   macvlan on a host interface;
//! - `--net ns:PATH`: join an existing namespace (`ip netns add`'s);
//! - `--allow-in`: the container's own firewall ([`crate::firewall`]).
//!
//! Addresses of `--net veth:` without `--ip`: a /30 from [`VETH_RANGE`]
//! per pair, the lowest one no recorded pair uses; the other container
//! gets its first address, this one its second. With `--ip ADDR/PREFIX`
//! this end gets ADDR and the other end the lowest host address of that
//! subnet that is not ADDR.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::firewall;
use super::netlink::{Netlink, Netns};
use super::spec::{NetMode, Prepared, RunOptions};
use super::state::{self, Paths, State};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Addresses for `--net veth:` pairs without `--ip` (a /30 each).
pub const VETH_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 90, 0, 0), 16);

/// What a container's own network namespace was given beyond the bridge,
/// recorded in its state so that its end (or `gc`) removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsSetup {
    /// Its `/run/netns` entry, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
}

/// The container's `eth0` when it is not on the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Link {
    /// A veth pair to container `peer` (id `peer_id`), whose end is `peer_if`.
    Veth {
        ip: Ipv4Addr,
        prefix: u8,
        peer: String,
        peer_id: String,
        peer_if: String,
        peer_ip: Ipv4Addr,
    },
    Macvlan {
        parent: String,
        ip: Ipv4Addr,
        prefix: u8,
    },
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Parses `--ip ADDR/PREFIX` (prefix 1 to 31: a link needs two addresses).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = |why: &str| Error::invalid("--ip", s, why.to_string());
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.90.0.2/30"))?;
    let ip: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
    let prefix = p
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=31).contains(p))
        .ok_or_else(|| bad("prefix length must be 1 to 31"))?;
    let host = u32::from(ip) & !mask(prefix);
    if prefix < 31 && (host == 0 || host == !mask(prefix)) {
        return Err(bad("that is the subnet's network or broadcast address"));
    }
    Ok((ip, prefix))
}

/// The addresses of subnet `ip/prefix` a host may have, lowest first.
fn hosts(ip: Ipv4Addr, prefix: u8) -> impl Iterator<Item = Ipv4Addr> {
    let net = u32::from(ip) & mask(prefix);
    let last = net | !mask(prefix);
    let (first, last) = if prefix >= 31 {
        (net, last)
    } else {
        (net + 1, last - 1)
    };
    (first..=last).map(Ipv4Addr::from)
}

/// The other end's address when `--ip` gives this end's.
pub fn peer_address(ip: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    hosts(ip, prefix).find(|a| *a != ip)
}

/// A free /30 of [`VETH_RANGE`]: (the other end's address, this end's).
pub fn allocate_pair(used: &[Ipv4Addr]) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let (base, prefix) = VETH_RANGE;
    let base = u32::from(base);
    let blocks = 1u32 << (32 - u32::from(prefix) - 2);
    (0..blocks)
        .map(|b| base + b * 4)
        .find(|net| !used.iter().any(|u| u32::from(*u) & !3 == *net))
        .map(|net| (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2)))
        .ok_or_else(|| {
            Error::Network(format!(
                "no free /30 left in {}/{prefix} for --net veth: (give one with --ip)",
                VETH_RANGE.0
            ))
        })
}

/// Opens `path` as a network namespace, or says what it is not.
pub fn open_netns(path: &Path) -> Result<File> {
    let f = File::open(path).map_err(|e| {
        Error::Network(format!(
            "network namespace {}: {}",
            path.display(),
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                _ => e.to_string(),
            }
        ))
    })?;
    // NS_GET_NSTYPE (_IO(0xb7, 0x3)): the namespace type of an nsfs file.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without an argument on a descriptor this function
    // owns; any file that is not a namespace answers with an error.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(Error::Network(format!(
            "{} is not a network namespace (expected /run/netns/NAME or /proc/PID/ns/net)",
            path.display()
        )));
    }
    Ok(f)
}

/// Whether `ns` is the network namespace this process is in.
fn is_own_netns(ns: &File) -> bool {
    let own = fs::metadata("/proc/self/ns/net").map(|m| (m.dev(), m.ino()));
    let other = ns.metadata().map(|m| (m.dev(), m.ino()));
    matches!((own, other), (Ok(a), Ok(b)) if a == b)
}

/// A running container's state and network namespace (opened, then the
/// container checked again, so a reused pid cannot slip in between).
fn container_netns(paths: &Paths, name: &str) -> Result<(State, File)> {
    let st = State::load(paths, name)?;
    let pid = st
        .pid
        .filter(|_| st.running())
        .ok_or_else(|| Error::NotRunning(name.to_string()))?;
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| Error::io(format!("opening the network namespace of {name}"), e))?;
    if !st.running() {
        return Err(Error::NotRunning(name.to_string()));
    }
    Ok((st, ns))
}

/// Checks and resolves the network mode before anything is made: the
/// container to join or link to runs, the macvlan parent and the
/// namespace path exist, the `/run/netns` name is free. For
/// `container:NAME` this puts the owner's namespace into the spec.
pub fn prepare(paths: &Paths, name: &str, prepared: &mut Prepared, rootless: bool) -> Result<()> {
    let mode = prepared.net.clone();
    if rootless && matches!(mode, NetMode::Veth(_) | NetMode::Macvlan(_)) {
        return Err(Error::Rootless(format!(
            "--net {mode} needs root (its link is made from the host)"
        )));
    }
    if rootless && matches!(mode, NetMode::Container(_) | NetMode::Ns(_)) {
        return Err(Error::Rootless(format!(
            "--net {mode} needs root (joining a namespace this user does not own)"
        )));
    }
    match &mode {
        NetMode::Container(owner) | NetMode::Veth(owner) if owner == name => {
            return Err(Error::invalid(
                "--net",
                &mode.to_string(),
                "names the container itself",
            ))
        }
        NetMode::Container(owner) => {
            let (st, _) = container_netns(paths, owner)?;
            // Its registration if it has one (a name outlives no pid),
            // else its PID 1's namespace.
            let path = st
                .netns
                .registered
                .clone()
                .filter(|p| p.exists())
                .or(st.pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))))
                .ok_or_else(|| Error::NotRunning(owner.clone()))?;
            let linux = prepared
                .spec
                .linux_mut()
                .get_or_insert_with(oci_spec::runtime::Linux::default);
            let mut ns = linux.namespaces().clone().unwrap_or_default();
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
            let mut n = LinuxNamespace::default();
            n.set_typ(LinuxNamespaceType::Network);
            n.set_path(Some(path));
            ns.push(n);
            linux.set_namespaces(Some(ns));
        }
        NetMode::Veth(owner) => {
            let (_, ns) = container_netns(paths, owner)?;
            if is_own_netns(&ns) {
                return Err(Error::Network(format!(
                    "container {owner} uses the host's network (--net host): \
                     a veth to it would end on the host"
                )));
            }
        }
        NetMode::Macvlan(parent) => {
            if !Netlink::new()?.link_exists(parent)? {
                return Err(Error::Network(format!(
                    "no interface {parent:?} on this host to put --net macvlan:{parent} on"
                )));
            }
        }
        NetMode::Ns(path) => drop(open_netns(path)?),
        NetMode::None | NetMode::Host | NetMode::Bridge => {}
    }
    // A container of this name here is either running (its name is in
    // use, which the claim reports) or stale (removed first, entry and
    // all); registering checks again in any case.
    if !rootless && mode.owns_netns() && State::load(paths, name).is_err() {
        check_name_free(name)?;
    }
    Ok(())
}

fn name_taken(name: &str) -> Error {
    Error::Network(format!(
        "{NETNS_DIR}/{name} already exists (a network namespace of that name): \
         pick another --name, or remove it with `ip netns del {name}`"
    ))
}

fn check_name_free(name: &str) -> Result<()> {
    match fs::symlink_metadata(Path::new(NETNS_DIR).join(name)) {
        Ok(_) => Err(name_taken(name)),
        Err(_) => Ok(()),
    }
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so a
/// registration removed here is removed in every mount namespace that
/// copied it (or the namespace would live on there).
fn ensure_netns_dir() -> Result<()> {
    fs::create_dir_all(NETNS_DIR).map_err(|e| Error::io(format!("creating {NETNS_DIR}"), e))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::sys(format!("bind-mounting {NETNS_DIR} onto itself"), e))?;
            shared().map_err(|e| Error::sys(format!("making {NETNS_DIR} shared"), e))
        }
        Err(e) => Err(Error::sys(format!("making {NETNS_DIR} shared"), e)),
    }
}

/// Bind-mounts the namespace of `pid` on `/run/netns/NAME`; an existing
/// entry is refused. Returns the entry.
fn register(name: &str, pid: i32) -> Result<PathBuf> {
    ensure_netns_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => name_taken(name),
            _ => Error::io(format!("creating {}", path.display()), e),
        })?;
    let source = format!("/proc/{pid}/ns/net");
    if let Err(e) = mount(
        Some(source.as_str()),
        &path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(&path);
        return Err(Error::sys(
            format!("bind-mounting {source} on {}", path.display()),
            e,
        ));
    }
    Ok(path)
}

fn unregister(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = fs::remove_file(path);
}

/// Sets up the container's own network namespace once its PID 1 (`pid`)
/// exists: registration, its veth or macvlan, its firewall. Each piece is
/// recorded in `st` (and saved) before it is made, so that [`teardown`]
/// finds it whatever fails later.
pub fn setup(paths: &Paths, st: &mut State, opts: &RunOptions, pid: i32) -> Result<()> {
    if !st.net_mode.owns_netns() {
        return Ok(());
    }
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| Error::io("opening the container's network namespace", e))?;
    if nix::unistd::geteuid().is_root() {
        st.netns.registered = Some(register(&st.name, pid)?);
        st.save(paths)?;
    }
    let upid = u32::try_from(pid).map_err(|_| Error::Network(format!("bad pid {pid}")))?;
    match st.net_mode.clone() {
        NetMode::Veth(owner) => {
            // Held until the pair exists: allocation and the name of the
            // other end are decided against every other pair.
            let _lock = paths.lock_net()?;
            let (peer, peer_ns) = container_netns(paths, &owner)?;
            let (peer_ip, ip, prefix) = match opts.ip {
                Some((ip, prefix)) => {
                    let other = peer_address(ip, prefix).ok_or_else(|| {
                        Error::invalid(
                            "--ip",
                            &format!("{ip}/{prefix}"),
                            "no room for the other end",
                        )
                    })?;
                    (other, ip, prefix)
                }
                None => {
                    let (a, b) = allocate_pair(&veth_addresses(paths))?;
                    (a, b, 30)
                }
            };
            let mut nl_peer = Netlink::open_in(peer_ns.as_fd())?;
            let names = nl_peer.link_names()?;
            let peer_if = (0..)
                .map(|i| format!("eth{i}"))
                .find(|n| !names.contains(n))
                .unwrap_or_default();
            st.netns.link = Some(Link::Veth {
                ip,
                prefix,
                peer: owner.clone(),
                peer_id: peer.id.clone(),
                peer_if: peer_if.clone(),
                peer_ip,
            });
            st.save(paths)?;
            Netlink::new()?.veth_pair(
                "eth0",
                Some(Netns::Pid(upid)),
                &peer_if,
                Some(Netns::Fd(peer_ns.as_raw_fd())),
            )?;
            nl_peer.addr_add(&peer_if, peer_ip, prefix)?;
            nl_peer.link_set_up(&peer_if)?;
            let mut nl = Netlink::open_in(ns.as_fd())?;
            nl.addr_add("eth0", ip, prefix)?;
            nl.link_set_up("eth0")?;
        }
        NetMode::Macvlan(parent) => {
            let (ip, prefix) = opts
                .ip
                .ok_or_else(|| Error::invalid("--net", &parent, "a macvlan needs --ip"))?;
            st.netns.link = Some(Link::Macvlan {
                parent: parent.clone(),
                ip,
                prefix,
            });
            st.save(paths)?;
            Netlink::new()?.macvlan_create("eth0", &parent, Netns::Pid(upid))?;
            let mut nl = Netlink::open_in(ns.as_fd())?;
            nl.addr_add("eth0", ip, prefix)?;
            nl.link_set_up("eth0")?;
        }
        _ => {}
    }
    firewall::apply(ns.as_fd(), &opts.allow_in)
}

/// Every address recorded for a veth pair (both ends).
fn veth_addresses(paths: &Paths) -> Vec<Ipv4Addr> {
    state::list(paths)
        .into_iter()
        .filter_map(|(_, s)| s.ok()?.netns.link)
        .filter_map(|l| match l {
            Link::Veth { ip, peer_ip, .. } => Some([ip, peer_ip]),
            Link::Macvlan { .. } => None,
        })
        .flatten()
        .collect()
}

/// Removes what [`setup`] made outside the container's namespace: the
/// other end of a veth pair (now, under the network lock, while the
/// registration still holds this end's namespace: the kernel would remove
/// it only when that namespace is gone, and its name could be reused
/// meanwhile) and the registration. Best effort.
pub fn teardown(paths: &Paths, st: &State) {
    if let Some(Link::Veth {
        peer,
        peer_id,
        peer_if,
        ..
    }) = &st.netns.link
    {
        let _lock = paths.lock_net();
        if let Ok((owner, ns)) = container_netns(paths, peer) {
            if owner.id == *peer_id {
                if let Ok(mut nl) = Netlink::open_in(ns.as_fd()) {
                    if nl.link_exists(peer_if).unwrap_or(false) {
                        let _ = nl.link_delete(peer_if);
                    }
                }
            }
        }
    }
    if let Some(path) = &st.netns.registered {
        unregister(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_cidr("10.9.0.2/30").unwrap(),
            (Ipv4Addr::new(10, 9, 0, 2), 30)
        );
        for bad in [
            "10.9.0.2",
            "10.9.0.0/30",
            "10.9.0.3/30",
            "x/24",
            "10.9.0.2/32",
            "10.9.0.2/0",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            peer_address(Ipv4Addr::new(10, 9, 0, 2), 30),
            Some(Ipv4Addr::new(10, 9, 0, 1))
        );
        assert_eq!(
            peer_address(Ipv4Addr::new(10, 9, 0, 1), 24),
            Some(Ipv4Addr::new(10, 9, 0, 2))
        );
        assert_eq!(
            peer_address(Ipv4Addr::new(10, 9, 0, 0), 31),
            Some(Ipv4Addr::new(10, 9, 0, 1))
        );
        assert_eq!(
            allocate_pair(&[]).unwrap(),
            (Ipv4Addr::new(10, 90, 0, 1), Ipv4Addr::new(10, 90, 0, 2))
        );
        assert_eq!(
            allocate_pair(&[Ipv4Addr::new(10, 90, 0, 2), Ipv4Addr::new(10, 90, 0, 5)]).unwrap(),
            (Ipv4Addr::new(10, 90, 0, 9), Ipv4Addr::new(10, 90, 0, 10))
        );
    }

    #[test]
    fn modes_parse() {
        let p = |s: &str| s.parse::<NetMode>();
        assert_eq!(
            p("container:web").unwrap(),
            NetMode::Container("web".into())
        );
        assert_eq!(p("veth:a-1").unwrap(), NetMode::Veth("a-1".into()));
        assert_eq!(p("macvlan:eth0").unwrap(), NetMode::Macvlan("eth0".into()));
        assert_eq!(p("ns:blue").unwrap(), NetMode::Ns("/run/netns/blue".into()));
        assert_eq!(
            p("ns:/proc/1/ns/net").unwrap(),
            NetMode::Ns("/proc/1/ns/net".into())
        );
        for bad in [
            "container:",
            "veth:a/b",
            "macvlan:sixteen-chars-xx",
            "ns:",
            "ns:a/b",
            "tap:x",
            "bogus",
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --net"), "{bad}: {e}");
        }
        assert_eq!(p("veth:a").unwrap().to_string(), "veth:a");
    }

    #[test]
    fn non_namespaces_refused() {
        let e = open_netns(Path::new("/etc/hostname"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a network namespace"), "{e}");
        let e = open_netns(Path::new("/nonexistent-uvm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
        if nix::unistd::geteuid().is_root() {
            assert!(open_netns(Path::new("/proc/self/ns/net")).is_ok());
            assert!(open_netns(Path::new("/proc/self/ns/mnt")).is_err());
        }
    }
}
