//! Small synchronous rtnetlink helpers: links (up/down, bridge, veth,
//! macvlan, move to another network namespace, rename, delete), IPv4
//! addresses and routes, in this network namespace or another one.
//!
//! Used by the guest init (configuring `eth0` from the kernel's `ip=`
//! parameter) and by the container runtime's bridge networking.
//!
//! A [`Netlink`] handle talks to the network namespace its calling thread was
//! in when the handle was opened; the free functions open a handle for one
//! request in the current thread's namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// What went wrong talking to the kernel's routing netlink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("no network interface named {0:?} in this network namespace")]
    NoSuchLink(String),
    #[error("invalid interface name {0:?}: 1 to 15 characters, no '/', ':' or whitespace")]
    BadName(String),
    #[error("{op}: malformed netlink reply: {msg}")]
    Decode { op: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where to put the far end of a new veth pair.
#[derive(Debug, Clone, Copy)]
pub enum Netns {
    /// The namespace of this process id.
    Pid(u32),
    /// The namespace this open file (`/proc/PID/ns/net`, `/run/netns/NAME`) refers to.
    Fd(RawFd),
}

/// An open rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

/// Checks that `name` is one the kernel accepts for an interface.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
        || name == "."
        || name == ".."
    {
        return Err(Error::BadName(name.to_string()));
    }
    Ok(())
}

fn netns_attr(netns: Netns) -> LinkAttribute {
    match netns {
        Netns::Pid(pid) => LinkAttribute::NetNsPid(pid),
        Netns::Fd(fd) => LinkAttribute::NetNsFd(fd),
    }
}

fn link_named(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg
}

fn link_indexed(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Opens a socket in the network namespace `netns` refers to (an open
    /// `/proc/PID/ns/net` or `/run/netns/NAME`): a socket stays in the
    /// namespace it was made in, so a short-lived thread enters it to
    /// make one and the rest of this process stays where it is.
    pub fn open_in(netns: BorrowedFd) -> Result<Self> {
        let fd = netns.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: the descriptor is borrowed for the whole scope;
                // setns moves only this thread, which ends right after.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::Socket(io::Error::last_os_error()));
                }
                Netlink::new()
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Socket(io::Error::other("netlink thread panicked"))))
        })
    }

    /// Sends one request and collects the replies: the inner messages of a
    /// dump, or nothing for an acknowledged change.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| Error::Request { op: op(), source })?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| Error::Request { op: op(), source })?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| Error::Decode {
                        op: op(),
                        msg: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode {
                        op: op(),
                        msg: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(Error::Request {
                                op: op(),
                                source: e.to_io(),
                            }),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The index of interface `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32> {
        check_name(name)?;
        let res = self.request(RouteNetlinkMessage::GetLink(link_named(name)), 0, &|| {
            format!("looking up interface {name}")
        });
        match res {
            Ok(msgs) => msgs
                .into_iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                    _ => None,
                })
                .ok_or_else(|| Error::NoSuchLink(name.to_string())),
            Err(Error::Request { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                Err(Error::NoSuchLink(name.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether interface `name` exists.
    pub fn link_exists(&mut self, name: &str) -> Result<bool> {
        match self.link_index(name) {
            Ok(_) => Ok(true),
            Err(Error::NoSuchLink(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names of all interfaces in this namespace.
    pub fn link_names(&mut self) -> Result<Vec<String>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            &|| "listing interfaces".to_string(),
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    /// Names of the interfaces attached to bridge `master`.
    pub fn link_ports(&mut self, master: &str) -> Result<Vec<String>> {
        let index = self.link_index(master)?;
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            &|| format!("listing the ports of {master}"),
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l)
                    if l.attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == index)) =>
                {
                    l.attributes.into_iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn set_link(&mut self, msg: LinkMessage, op: &dyn Fn() -> String) -> Result<()> {
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK, op)
            .map(drop)
    }

    fn set_flags(&mut self, name: &str, up: bool) -> Result<()> {
        let index = self.link_index(name)?;
        let mut msg = link_indexed(index);
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        msg.header.change_mask = LinkFlags::Up;
        let state = if up { "up" } else { "down" };
        self.set_link(msg, &|| format!("setting interface {name} {state}"))
    }

    /// Brings interface `name` up.
    pub fn link_set_up(&mut self, name: &str) -> Result<()> {
        self.set_flags(name, true)
    }

    /// Takes interface `name` down.
    pub fn link_set_down(&mut self, name: &str) -> Result<()> {
        self.set_flags(name, false)
    }

    /// Renames interface `name` to `new_name` (the interface must be down).
    pub fn link_rename(&mut self, name: &str, new_name: &str) -> Result<()> {
        check_name(new_name)?;
        let index = self.link_index(name)?;
        let mut msg = link_indexed(index);
        msg.attributes
            .push(LinkAttribute::IfName(new_name.to_string()));
        self.set_link(msg, &|| format!("renaming interface {name} to {new_name}"))
    }

    /// Makes `name` a port of bridge `master`.
    pub fn link_set_master(&mut self, name: &str, master: &str) -> Result<()> {
        let master_index = self.link_index(master)?;
        let index = self.link_index(name)?;
        let mut msg = link_indexed(index);
        msg.attributes.push(LinkAttribute::Controller(master_index));
        self.set_link(msg, &|| {
            format!("attaching interface {name} to bridge {master}")
        })
    }

    /// Moves interface `name` into another network namespace.
    pub fn link_set_netns(&mut self, name: &str, netns: Netns) -> Result<()> {
        let index = self.link_index(name)?;
        let mut msg = link_indexed(index);
        msg.attributes.push(netns_attr(netns));
        self.set_link(msg, &|| {
            format!("moving interface {name} to another network namespace")
        })
    }

    /// Deletes interface `name` (for a veth, both ends go).
    pub fn link_delete(&mut self, name: &str) -> Result<()> {
        let index = self.link_index(name)?;
        self.request(
            RouteNetlinkMessage::DelLink(link_indexed(index)),
            NLM_F_ACK,
            &|| format!("deleting interface {name}"),
        )
        .map(drop)
    }

    fn new_link(&mut self, msg: LinkMessage, op: &dyn Fn() -> String) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            op,
        )
        .map(drop)
    }

    /// Creates bridge `name` (down, no address).
    pub fn bridge_create(&mut self, name: &str) -> Result<()> {
        check_name(name)?;
        let mut msg = link_named(name);
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.new_link(msg, &|| format!("creating bridge {name}"))
    }

    /// Creates a veth pair `name` <-> `peer`; the peer is created directly in
    /// `peer_netns` when given (so it can be named `eth0` there).
    pub fn veth_create(&mut self, name: &str, peer: &str, peer_netns: Option<Netns>) -> Result<()> {
        self.veth_pair(name, None, peer, peer_netns)
    }

    /// Creates a veth pair `name` <-> `peer`, each end directly in the
    /// namespace given for it (this one when `None`): a pair between two
    /// other namespaces never appears in this one.
    pub fn veth_pair(
        &mut self,
        name: &str,
        netns: Option<Netns>,
        peer: &str,
        peer_netns: Option<Netns>,
    ) -> Result<()> {
        check_name(name)?;
        check_name(peer)?;
        let mut peer_msg = link_named(peer);
        peer_msg.attributes.extend(peer_netns.map(netns_attr));
        let mut msg = link_named(name);
        msg.attributes.extend(netns.map(netns_attr));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.new_link(msg, &|| format!("creating veth pair {name} <-> {peer}"))
    }

    /// Creates macvlan `name` in bridge mode on interface `parent` of this
    /// namespace, directly in namespace `netns`.
    pub fn macvlan_create(&mut self, name: &str, parent: &str, netns: Netns) -> Result<()> {
        check_name(name)?;
        let parent_index = self.link_index(parent)?;
        let mut msg = link_named(name);
        msg.attributes.push(LinkAttribute::Link(parent_index));
        msg.attributes.push(netns_attr(netns));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )])),
        ]));
        self.new_link(msg, &|| format!("creating macvlan {name} on {parent}"))
    }

    /// Adds `addr/prefix_len` to interface `ifname`.
    pub fn addr_add(&mut self, ifname: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        if prefix_len > 32 {
            return Err(Error::Request {
                op: format!("adding {addr}/{prefix_len} to {ifname}"),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let index = self.link_index(ifname)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.header.scope = if addr.is_loopback() {
            AddressScope::Host
        } else {
            AddressScope::Universe
        };
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes.push(AddressAttribute::Address(addr.into()));
        if prefix_len < 31 {
            let mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let broadcast = Ipv4Addr::from(u32::from(addr) | mask);
            msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("adding address {addr}/{prefix_len} to {ifname}"),
        )
        .map(drop)
    }

    /// The IPv4 addresses (with prefix lengths) of interface `ifname`.
    pub fn addrs(&mut self, ifname: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
        let index = self.link_index(ifname)?;
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetAddress(query), NLM_F_DUMP, &|| {
            format!("listing addresses of {ifname}")
        })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let prefix = a.header.prefix_len;
                    a.attributes.into_iter().find_map(|attr| match attr {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some((ip, prefix)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds a default IPv4 route through `gateway` (which must be reachable
    /// through an address already configured).
    pub fn route_add_default(&mut self, gateway: Ipv4Addr) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("adding default route via {gateway}"),
        )
        .map(drop)
    }

    /// The gateway of the main table's default IPv4 route, if any.
    pub fn default_gateway(&mut self) -> Result<Option<Ipv4Addr>> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRoute(query), NLM_F_DUMP, &|| {
            "listing routes".to_string()
        })?;
        Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN =>
            {
                r.attributes.into_iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(gw),
                    _ => None,
                })
            }
            _ => None,
        }))
    }
}

/// Brings interface `name` up (current network namespace).
pub fn link_set_up(name: &str) -> Result<()> {
    Netlink::new()?.link_set_up(name)
}

/// The index of interface `name` (current network namespace).
pub fn link_index(name: &str) -> Result<u32> {
    Netlink::new()?.link_index(name)
}

/// Adds `addr/prefix_len` to `ifname` (current network namespace).
pub fn addr_add(ifname: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
    Netlink::new()?.addr_add(ifname, addr, prefix_len)
}

/// Adds a default route through `gateway` (current network namespace).
pub fn route_add_default(gateway: Ipv4Addr) -> Result<()> {
    Netlink::new()?.route_add_default(gateway)
}

/// Netmask (dotted quad) to prefix length; `None` if not contiguous.
pub fn netmask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    if m.checked_shl(ones).unwrap_or(0) != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves the calling test thread (each test has its own) into a fresh
    /// network namespace, which disappears with the thread. Returns false
    /// (test skipped) when not root.
    fn fresh_netns() -> bool {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return false;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        true
    }

    #[test]
    fn netmask_prefix() {
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(255, 255, 0, 0)), Some(16));
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(
            netmask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)),
            Some(32)
        );
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    #[test]
    fn bad_names_rejected() {
        assert!(matches!(check_name(""), Err(Error::BadName(_))));
        assert!(matches!(check_name("a/b"), Err(Error::BadName(_))));
        assert!(matches!(
            check_name("sixteen-chars-xx"),
            Err(Error::BadName(_))
        ));
        assert!(check_name("fifteen-chars-x").is_ok());
    }

    #[test]
    fn loopback_up_and_addresses() {
        if !fresh_netns() {
            return;
        }
        let mut nl = Netlink::new().unwrap();
        assert_eq!(nl.link_index("lo").unwrap(), 1);
        assert!(matches!(
            nl.link_index("nosuchif0"),
            Err(Error::NoSuchLink(_))
        ));
        link_set_up("lo").unwrap();
        assert!(nl.addrs("lo").unwrap().contains(&(Ipv4Addr::LOCALHOST, 8)));
        // A socket can now talk over loopback in this namespace.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    }

    #[test]
    fn bridge_veth_address_and_default_route() {
        if !fresh_netns() {
            return;
        }
        let mut nl = Netlink::new().unwrap();
        nl.bridge_create("tbr0").unwrap();
        // Creating it twice is an error that names the operation.
        let err = nl.bridge_create("tbr0").unwrap_err().to_string();
        assert!(err.contains("creating bridge tbr0"), "{err}");
        nl.veth_create("tveth0", "tveth1", None).unwrap();
        nl.link_set_master("tveth0", "tbr0").unwrap();
        assert_eq!(nl.link_ports("tbr0").unwrap(), vec!["tveth0".to_string()]);
        nl.link_rename("tveth1", "eth7").unwrap();
        assert!(nl.link_exists("eth7").unwrap());
        assert!(!nl.link_exists("tveth1").unwrap());
        let names = nl.link_names().unwrap();
        for n in ["lo", "tbr0", "tveth0", "eth7"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        for n in ["tbr0", "tveth0", "eth7"] {
            nl.link_set_up(n).unwrap();
        }
        nl.addr_add("tbr0", Ipv4Addr::new(10, 123, 0, 1), 24)
            .unwrap();
        addr_add("eth7", Ipv4Addr::new(10, 123, 0, 2), 24).unwrap();
        assert_eq!(
            nl.addrs("eth7").unwrap(),
            vec![(Ipv4Addr::new(10, 123, 0, 2), 24)]
        );
        route_add_default(Ipv4Addr::new(10, 123, 0, 1)).unwrap();
        assert_eq!(
            nl.default_gateway().unwrap(),
            Some(Ipv4Addr::new(10, 123, 0, 1))
        );
        // Deleting one end of a veth removes both.
        nl.link_delete("tveth0").unwrap();
        assert!(!nl.link_exists("eth7").unwrap());
    }

    #[test]
    fn veth_peer_created_in_other_namespace() {
        if !fresh_netns() {
            return;
        }
        // A child namespace held by a helper thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let tid = nix::unistd::gettid().as_raw();
            let f = std::fs::File::open(format!("/proc/self/task/{tid}/ns/net")).unwrap();
            tx.send(f).unwrap();
            done_rx.recv().unwrap();
            let mut nl = Netlink::new().unwrap();
            let names = nl.link_names().unwrap();
            nl.link_set_up("eth0").unwrap();
            nl.addr_add("eth0", Ipv4Addr::new(10, 124, 0, 2), 24)
                .unwrap();
            names
        });
        let ns = rx.recv().unwrap();
        let mut nl = Netlink::new().unwrap();
        use std::os::fd::AsRawFd;
        nl.veth_create("tvh0", "eth0", Some(Netns::Fd(ns.as_raw_fd())))
            .unwrap();
        assert!(nl.link_exists("tvh0").unwrap());
        assert!(!nl.link_exists("eth0").unwrap());
        done_tx.send(()).unwrap();
        let names = helper.join().unwrap();
        assert!(names.contains(&"eth0".to_string()), "{names:?}");
    }
}
