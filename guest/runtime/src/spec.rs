//! From command-line options (or a bundle's `config.json`) to the OCI spec
//! the runtime executes, plus the few settings the OCI spec has no place for
//! (networking mode, published ports, overlay).

use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBlockIo, LinuxCapabilities, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxNamespaceType, LinuxResources, LinuxThrottleDevice, LinuxThrottleDeviceBuilder, Mount,
    Spec, User,
};
use serde::{Deserialize, Serialize};

use super::cgroups::{IoLimit, Resources, Throttle};
use super::error::{Error, Result};
use super::userns::{self, IdMap};

/// Network mode of a container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Own network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
    /// Own namespace, a veth on the runtime's bridge, NAT to the outside.
    #[default]
    Bridge,
    /// The network namespace of another running container (the pod
    /// pattern): joined, never set up or torn down by this one.
    Container(String),
    /// Own namespace whose `eth0` is one end of a veth pair, the other end
    /// in the named running container's namespace (no bridge).
    Veth(String),
    /// Own namespace whose `eth0` is a macvlan (bridge mode) on this host
    /// interface.
    Macvlan(String),
    /// An existing network namespace, joined by path (`/run/netns/NAME`).
    Ns(PathBuf),
}

impl NetMode {
    /// Whether the container gets a network namespace the runtime makes
    /// (and so may register, firewall and give links to).
    pub fn owns_netns(&self) -> bool {
        matches!(
            self,
            NetMode::None | NetMode::Bridge | NetMode::Veth(_) | NetMode::Macvlan(_)
        )
    }
}

impl FromStr for NetMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        const EXPECTED: &str = "expected none, host, bridge, container:NAME, veth:NAME, \
                                macvlan:PARENT or ns:PATH";
        let named = |n: &str| -> Result<String> {
            validate_name(n)
                .map_err(|_| Error::invalid("--net", s, "not a valid container name"))?;
            Ok(n.to_string())
        };
        match s.split_once(':') {
            None => match s {
                "none" => Ok(NetMode::None),
                "host" => Ok(NetMode::Host),
                "bridge" => Ok(NetMode::Bridge),
                _ => Err(Error::invalid("--net", s, EXPECTED)),
            },
            Some(("container", n)) => named(n).map(NetMode::Container),
            Some(("veth", n)) => named(n).map(NetMode::Veth),
            Some(("macvlan", p)) => {
                crate::netlink::check_name(p)
                    .map_err(|e| Error::invalid("--net", s, e.to_string()))?;
                Ok(NetMode::Macvlan(p.to_string()))
            }
            // A bare name is one `ip netns add` made.
            Some(("ns", p)) if !p.is_empty() && !p.contains('/') => {
                Ok(NetMode::Ns(Path::new(crate::netns::NETNS_DIR).join(p)))
            }
            Some(("ns", p)) if p.starts_with('/') => Ok(NetMode::Ns(PathBuf::from(p))),
            Some(("ns", _)) => Err(Error::invalid(
                "--net",
                s,
                "expected ns:/PATH (absolute) or ns:NAME (in /run/netns)",
            )),
            Some(_) => Err(Error::invalid("--net", s, EXPECTED)),
        }
    }
}

impl std::fmt::Display for NetMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetMode::None => f.write_str("none"),
            NetMode::Host => f.write_str("host"),
            NetMode::Bridge => f.write_str("bridge"),
            NetMode::Container(n) => write!(f, "container:{n}"),
            NetMode::Veth(n) => write!(f, "veth:{n}"),
            NetMode::Macvlan(p) => write!(f, "macvlan:{p}"),
            NetMode::Ns(p) => write!(f, "ns:{}", p.display()),
        }
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// Splits `X[/tcp|/udp]` into X and its protocol (tcp when none is
    /// given); `None` for another protocol.
    pub fn split_suffix(s: &str) -> Option<(&str, Proto)> {
        match s.rsplit_once('/') {
            Some((x, "tcp")) => Some((x, Proto::Tcp)),
            Some((x, "udp")) => Some((x, Proto::Udp)),
            Some(_) => None,
            None => Some((s, Proto::Tcp)),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `-p HOST:CONTAINER[/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    pub host: u16,
    pub container: u16,
    pub proto: Proto,
}

impl FromStr for PortMap {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("-p", s, why.to_string());
        let (ports, proto) =
            Proto::split_suffix(s).ok_or_else(|| bad("protocol must be tcp or udp"))?;
        let (h, c) = ports
            .split_once(':')
            .ok_or_else(|| bad("expected HOST_PORT:CONTAINER_PORT, e.g. 8080:80"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("ports are numbers from 1 to 65535"))
        };
        Ok(PortMap {
            host: port(h)?,
            container: port(c)?,
            proto,
        })
    }
}

/// `-v HOST:CONTAINER[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

impl FromStr for Volume {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let (h, c, ro) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            _ => {
                return Err(Error::invalid(
                    "-v",
                    s,
                    "expected HOST_PATH:CONTAINER_PATH[:ro]",
                ))
            }
        };
        if !c.starts_with('/') {
            return Err(Error::invalid(
                "-v",
                s,
                "the container path must be absolute",
            ));
        }
        let host = fs::canonicalize(h)
            .map_err(|e| Error::invalid("-v", s, format!("host path {h}: {e}")))?;
        Ok(Volume {
            host,
            container: PathBuf::from(c),
            read_only: ro,
        })
    }
}

/// Where the container's filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A root filesystem directory (used read-only as the overlay's lower layer).
    Rootfs(PathBuf),
    /// An OCI bundle: `config.json` and the rootfs it names.
    Bundle(PathBuf),
    /// An image of the store (`NAME[:TAG]` or id): its layers are the
    /// overlay's lower layers, its config the process' defaults.
    Image(String),
}

/// Everything `uvm container run` accepts. `None`/empty means "the default"
/// (or, for a bundle, "as config.json says").
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: Source,
    pub name: Option<String>,
    pub args: Vec<String>,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub memory: Option<u64>,
    /// Memory plus swap (Docker's `--memory-swap`); -1: unlimited swap.
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<u64>,
    pub cpu_quota: Option<u64>,
    /// v1 shares (`--cpu-weight` arrives converted, see [`crate::cgroups::cpu`]).
    pub cpu_shares: Option<u64>,
    /// CPU and memory node lists (`0-2,4`).
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub blkio_weight: Option<u16>,
    /// Block device rate limits (`--device-read-bps`...).
    pub io_limits: Vec<Throttle>,
    pub pids_limit: Option<i64>,
    /// Network mode; `None`: bridge for --rootfs, as config.json says for a
    /// bundle (a network namespace without a path is `none`).
    pub net: Option<NetMode>,
    /// `--ip ADDR/PREFIX`: `eth0`'s address with `--net veth:` (else
    /// allocated) and `--net macvlan:` (required).
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `--allow-in`: inbound traffic the container's own firewall lets in
    /// (empty: no firewall, everything is accepted).
    pub allow_in: Vec<crate::firewall::Allow>,
    pub ports: Vec<PortMap>,
    pub volumes: Vec<Volume>,
    /// Overlay over the rootfs (default: yes for --rootfs, no for a bundle).
    pub overlay: Option<bool>,
    /// Keep the overlay's upper directory after exit.
    pub keep: bool,
    pub read_only: bool,
    /// Apply the default seccomp profile (`--seccomp=unconfined` turns it off).
    pub seccomp: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// PID 1 is a tiny init (forwards signals, reaps zombies) and the
    /// workload is PID 2.
    pub init: bool,
    /// Kernel parameters to set in the container's namespaces (`--sysctl`).
    pub sysctl: Vec<(String, String)>,
    /// A new user namespace even when run as root (`--userns`); without
    /// root one is always made.
    pub userns: bool,
    /// `--uidmap`/`--gidmap` ranges (imply `--userns`).
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    /// The container's stdin, stdout and stderr; `None`: the runtime's own.
    pub stdio: Option<crate::process::Stdio>,
    /// The container's cgroup relative to each hierarchy's root (OCI's
    /// `linux.cgroupsPath`); `None`: the runtime's parent cgroup / its id.
    pub cgroup_path: Option<PathBuf>,
    /// `--tmpfs PATH[:OPTIONS]`: a tmpfs at each path (see [`crate::lifecycle::Tmpfs`]).
    pub tmpfs: Vec<crate::lifecycle::Tmpfs>,
    /// `-t`: the container's stdio (`stdio`) is a terminal that PID 1 makes
    /// its controlling terminal.
    pub terminal: bool,
    /// The overlay's upper and work directories here instead of a fresh
    /// folder (a detached container's, kept across its starts).
    pub overlay_dir: Option<PathBuf>,
}

impl RunOptions {
    pub fn new(source: Source, args: Vec<String>) -> Self {
        RunOptions {
            source,
            name: None,
            args,
            hostname: None,
            env: Vec::new(),
            cwd: None,
            user: None,
            memory: None,
            memory_swap: None,
            memory_reservation: None,
            cpu_quota: None,
            cpu_shares: None,
            cpuset_cpus: None,
            cpuset_mems: None,
            blkio_weight: None,
            io_limits: Vec::new(),
            pids_limit: None,
            net: None,
            ip: None,
            allow_in: Vec::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            overlay: None,
            keep: false,
            read_only: false,
            seccomp: true,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            init: false,
            sysctl: Vec::new(),
            userns: false,
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            stdio: None,
            cgroup_path: None,
            tmpfs: Vec::new(),
            terminal: false,
            overlay_dir: None,
        }
    }
}

/// The capabilities a container keeps by default: Docker's default set
/// without CAP_MKNOD (the runtime creates the devices a container gets; the
/// device cgroup and this together keep it from making others).
pub fn default_capabilities() -> HashSet<Capability> {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// Parses `CAP_NET_ADMIN`, `net_admin` or `ALL`.
fn parse_cap(flag: &'static str, s: &str) -> Result<Capability> {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare)
        .map_err(|_| Error::invalid(flag, s, "unknown capability (e.g. CAP_NET_ADMIN)"))
}

/// Device nodes every container gets: (path, type, major, minor).
pub const DEFAULT_DEVICES: [(&str, char, i64, i64); 6] = [
    ("/dev/null", 'c', 1, 3),
    ("/dev/zero", 'c', 1, 5),
    ("/dev/full", 'c', 1, 7),
    ("/dev/random", 'c', 1, 8),
    ("/dev/urandom", 'c', 1, 9),
    ("/dev/tty", 'c', 5, 0),
];

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(Some(typ));
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_string()));
    d
}

/// A bundle's device rules are followed by the default devices' and its
/// own `linux.devices`' (as runc does): the devices a container is given
/// stay usable (and can be made) under a deny-everything rule.
fn allow_default_devices(linux: &mut oci_spec::runtime::Linux) {
    let own: Vec<LinuxDeviceCgroup> = linux
        .devices()
        .iter()
        .flatten()
        .filter(|d| matches!(d.typ(), LinuxDeviceType::C | LinuxDeviceType::B))
        .map(|d| device_rule(true, d.typ(), Some(d.major()), Some(d.minor()), "rwm"))
        .collect();
    let Some(res) = linux.resources_mut() else {
        return;
    };
    let Some(mut rules) = res.devices().clone().filter(|r| !r.is_empty()) else {
        return;
    };
    rules.extend(default_device_rules().into_iter().filter(|r| r.allow()));
    rules.extend(own);
    res.set_devices(Some(rules));
}

/// Device cgroup rules: deny everything, then allow the default devices,
/// /dev/pts/* and /dev/ptmx.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let mut v = vec![device_rule(false, LinuxDeviceType::A, None, None, "rwm")];
    for (_, _, major, minor) in DEFAULT_DEVICES {
        v.push(device_rule(
            true,
            LinuxDeviceType::C,
            Some(major),
            Some(minor),
            "rwm",
        ));
    }
    v.push(device_rule(
        true,
        LinuxDeviceType::C,
        Some(5),
        Some(2),
        "rwm",
    ));
    v.push(device_rule(
        true,
        LinuxDeviceType::C,
        Some(136),
        None,
        "rwm",
    ));
    v
}

/// Container names: letters, digits, `_.-`, starting alphanumeric, up to 64.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "--name",
            name,
            "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ))
    }
}

/// Resolves `--user` (`UID[:GID]` or a name from the rootfs' /etc/passwd;
/// an image's layers are searched top first).
pub(crate) fn parse_user(s: &str, roots: &[PathBuf]) -> Result<User> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, Option<u32>)> {
        let text = roots
            .iter()
            .find_map(|r| fs::read_to_string(r.join(file)).ok())?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                Some((
                    f.get(2)?.parse().ok()?,
                    f.get(3).and_then(|g| g.parse().ok()),
                ))
            })?
        })
    };
    let (uid, pw_gid) = match u.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => lookup("etc/passwd", u).ok_or_else(|| {
            Error::invalid(
                "--user",
                s,
                format!("no user {u:?} in the rootfs' /etc/passwd"),
            )
        })?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g).map(|(gid, _)| gid).ok_or_else(|| {
                Error::invalid(
                    "--user",
                    s,
                    format!("no group {g:?} in the rootfs' /etc/group"),
                )
            })?,
        },
        None => pw_gid.unwrap_or(0),
    };
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    Ok(user)
}

fn bind_mount(v: &Volume) -> Mount {
    let mut m = Mount::default();
    m.set_destination(v.container.clone());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(v.host.clone()));
    let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
    if v.read_only {
        opts.push("ro".into());
    }
    m.set_options(Some(opts));
    m
}

/// A spec and where its rootfs is, ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub overlay: bool,
    pub net: NetMode,
    /// The image's id and lower layers, for `--image`.
    pub image: Option<crate::images::ImageUse>,
}

/// The default profile (`uvm container run --rootfs` and `uvm agent spec`):
/// oci-spec's runc-like defaults with uvm's device rules and capabilities.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    if let Some(linux) = spec.linux_mut() {
        let mut res = LinuxResources::default();
        res.set_devices(Some(default_device_rules()));
        linux.set_resources(Some(res));
    }
    if let Some(p) = spec.process_mut() {
        let caps = default_capabilities();
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(caps.clone()));
        c.set_effective(Some(caps.clone()));
        c.set_permitted(Some(caps));
        c.set_inheritable(Some(HashSet::new()));
        c.set_ambient(Some(HashSet::new()));
        p.set_capabilities(Some(c));
        p.set_no_new_privileges(Some(true));
    }
    spec
}

/// Builds the spec for `opts`: from config.json for a bundle, else the
/// default profile; then the flags on top. `name` is the container's name.
pub fn prepare(opts: &RunOptions, name: &str) -> Result<Prepared> {
    let mut image = None;
    let (mut spec, rootfs, overlay_default) = match &opts.source {
        Source::Rootfs(dir) => {
            let dir = fs::canonicalize(dir).map_err(|_| Error::RootfsMissing(dir.clone()))?;
            if !dir.is_dir() {
                return Err(Error::RootfsMissing(dir));
            }
            let mut spec = default_spec();
            if let Some(root) = spec.root_mut() {
                root.set_path(dir.clone());
                root.set_readonly(Some(false));
            }
            if let Some(p) = spec.process_mut() {
                p.set_args(None);
            }
            spec.set_hostname(Some(name.to_string()));
            (spec, dir, true)
        }
        Source::Bundle(dir) => {
            let config = dir.join("config.json");
            let spec = Spec::load(&config).map_err(|e| Error::Bundle {
                path: config.clone(),
                msg: e.to_string(),
            })?;
            let root = spec.root().as_ref().ok_or_else(|| Error::Bundle {
                path: config.clone(),
                msg: "no \"root\" in config.json".into(),
            })?;
            let rootfs = if root.path().is_absolute() {
                root.path().clone()
            } else {
                dir.join(root.path())
            };
            let rootfs =
                fs::canonicalize(&rootfs).map_err(|_| Error::RootfsMissing(rootfs.clone()))?;
            if !rootfs.is_dir() {
                return Err(Error::RootfsMissing(rootfs));
            }
            if spec.process().is_none() {
                return Err(Error::Bundle {
                    path: config,
                    msg: "no \"process\" in config.json".into(),
                });
            }
            // Relative bind-mount sources are relative to the bundle.
            let mut spec = spec;
            if let Some(mounts) = spec.mounts_mut() {
                for m in mounts.iter_mut() {
                    let is_bind = m.typ().as_deref() == Some("bind")
                        || m.options()
                            .iter()
                            .flatten()
                            .any(|o| o == "bind" || o == "rbind");
                    if let Some(src) = m.source().clone().filter(|s| is_bind && s.is_relative()) {
                        m.set_source(Some(dir.join(src)));
                    }
                }
            }
            (spec, rootfs, false)
        }
        Source::Image(image_name) => {
            let (spec, top, used) = crate::images::run::image_spec(image_name, opts, name)?;
            image = Some(used);
            (spec, top, true)
        }
    };

    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| Error::Setup("spec has no process".into()))?;
    // An image's entrypoint is already in front of the arguments.
    if !opts.args.is_empty() && image.is_none() {
        process.set_args(Some(opts.args.clone()));
    }
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::invalid(
            "COMMAND",
            "",
            "no command given: put it after --, e.g. `uvm container run --rootfs DIR -- sh -c 'echo hi'`",
        ));
    }
    if process.terminal() == Some(true) {
        // No console support: the process uses the runtime's stdio.
        process.set_terminal(Some(false));
    }
    if !opts.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        for e in &opts.env {
            let key = e.split('=').next().unwrap_or(e);
            if !e.contains('=') {
                return Err(Error::invalid("-e", e, "expected KEY=VALUE"));
            }
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        process.set_env(Some(env));
    }
    if let Some(cwd) = &opts.cwd {
        if !cwd.starts_with('/') {
            return Err(Error::invalid(
                "-w",
                cwd,
                "the working directory must be absolute",
            ));
        }
        process.set_cwd(PathBuf::from(cwd));
    }
    if let Some(u) = &opts.user {
        let mut roots = vec![rootfs.clone()];
        roots.extend(image.iter().flat_map(|i| i.lowers.iter().cloned()));
        process.set_user(parse_user(u, &roots)?);
    }
    if !opts.cap_add.is_empty() || !opts.cap_drop.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        let mut set: HashSet<Capability> = caps.bounding().clone().unwrap_or_default();
        for c in &opts.cap_add {
            set.insert(parse_cap("--cap-add", c)?);
        }
        for c in &opts.cap_drop {
            let cap = parse_cap("--cap-drop", c)?;
            set.remove(&cap);
        }
        caps.set_bounding(Some(set.clone()));
        caps.set_effective(Some(set.clone()));
        caps.set_permitted(Some(set));
        process.set_capabilities(Some(caps));
    }
    let bounding = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();

    if let Some(h) = &opts.hostname {
        if h.is_empty() || h.len() > 64 || h.contains('/') {
            return Err(Error::invalid("--hostname", h, "1-64 characters, no '/'"));
        }
        spec.set_hostname(Some(h.clone()));
    }
    if opts.read_only {
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(true));
        }
    }
    if !opts.volumes.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(opts.volumes.iter().map(bind_mount));
        spec.set_mounts(Some(mounts));
    }
    if !opts.tmpfs.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(opts.tmpfs.iter().map(crate::lifecycle::Tmpfs::mount));
        spec.set_mounts(Some(mounts));
    }

    let is_rootfs = matches!(opts.source, Source::Rootfs(_) | Source::Image(_));
    let linux = spec
        .linux_mut()
        .get_or_insert_with(oci_spec::runtime::Linux::default);
    let rootless = userns::rootless_ids();
    let net_mode = match (opts.net.clone(), is_rootfs) {
        (Some(m), _) => m,
        // A bridge needs root: rootless containers default to loopback only.
        (None, true) if rootless.is_some() => NetMode::None,
        (None, true) => NetMode::Bridge,
        (None, false) => match linux
            .namespaces()
            .iter()
            .flatten()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
        {
            Some(n) if n.path().is_none() => NetMode::None,
            // No namespace, or one joined by path: the runtime does not touch it.
            _ => NetMode::Host,
        },
    };
    if is_rootfs || opts.net.is_some() {
        // The network mode decides the net namespace (bundles keep theirs
        // unless --net is given).
        let mut ns = linux.namespaces().clone().unwrap_or_default();
        ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
        match &net_mode {
            // The owner's namespace is found by the runtime, which knows
            // the running containers (`network::join_container`).
            NetMode::Host | NetMode::Container(_) => {}
            mode => {
                let mut n = oci_spec::runtime::LinuxNamespace::default();
                n.set_typ(LinuxNamespaceType::Network);
                if let NetMode::Ns(path) = mode {
                    n.set_path(Some(path.clone()));
                }
                ns.push(n);
            }
        }
        linux.set_namespaces(Some(ns));
    }
    check_net_flags(opts, &net_mode)?;
    if !is_rootfs {
        allow_default_devices(linux);
    }
    set_resources(linux, opts)?;
    if !opts.sysctl.is_empty() {
        let mut map = linux.sysctl().clone().unwrap_or_default();
        for (k, v) in &opts.sysctl {
            map.insert(k.clone(), v.clone());
        }
        linux.set_sysctl(Some(map));
    }
    let maps = user_namespace(linux, opts, rootless)?;
    if is_rootfs && opts.seccomp {
        linux.set_seccomp(Some(super::seccomp::default_profile(&bounding)));
    }
    if !opts.seccomp {
        linux.set_seccomp(None);
    }
    if let Some((uids, gids)) = &maps {
        check_user_mapped(&spec, uids, gids)?;
        devpts_without_unmapped_gid(&mut spec, gids);
    }
    let overlay = opts.overlay.unwrap_or(overlay_default);
    if image.is_some() && !overlay {
        return Err(Error::Refused(
            "--no-overlay: an image's layers are shared and read-only, so --image always runs on an overlay".into(),
        ));
    }
    Ok(Prepared {
        spec,
        rootfs,
        overlay,
        net: net_mode,
        image,
    })
}

/// `--ip` and `--allow-in` against the network mode they need.
fn check_net_flags(opts: &RunOptions, mode: &NetMode) -> Result<()> {
    if let Some((ip, prefix)) = opts.ip {
        if !matches!(mode, NetMode::Veth(_) | NetMode::Macvlan(_)) {
            return Err(Error::invalid(
                "--ip",
                &format!("{ip}/{prefix}"),
                format!("--ip is for --net veth:NAME or macvlan:PARENT, not {mode}"),
            ));
        }
    }
    if let NetMode::Macvlan(parent) = mode {
        if opts.ip.is_none() {
            return Err(Error::invalid(
                "--net",
                &format!("macvlan:{parent}"),
                "a macvlan needs its address: add --ip ADDR/PREFIX",
            ));
        }
    }
    if let Some(a) = opts.allow_in.first() {
        if !mode.owns_netns() {
            return Err(Error::invalid(
                "--allow-in",
                &a.to_string(),
                format!(
                    "the firewall lives in the container's own network namespace, \
                     and --net {mode} gives it none"
                ),
            ));
        }
    }
    Ok(())
}

/// The limits given as flags, into the spec's `linux.resources` (over a
/// bundle's own).
fn set_resources(linux: &mut oci_spec::runtime::Linux, opts: &RunOptions) -> Result<()> {
    let any = opts.memory.is_some()
        || opts.memory_swap.is_some()
        || opts.memory_reservation.is_some()
        || opts.cpu_quota.is_some()
        || opts.cpu_shares.is_some()
        || opts.cpuset_cpus.is_some()
        || opts.cpuset_mems.is_some()
        || opts.blkio_weight.is_some()
        || !opts.io_limits.is_empty()
        || opts.pids_limit.is_some();
    if !any {
        return Ok(());
    }
    let too_large = |flag: &'static str, v: u64| Error::invalid(flag, &v.to_string(), "too large");
    let mut res = linux.resources().clone().unwrap_or_default();
    if opts.memory.is_some() || opts.memory_swap.is_some() || opts.memory_reservation.is_some() {
        let mut mem = res.memory().unwrap_or_default();
        if let Some(m) = opts.memory {
            let m = i64::try_from(m).map_err(|_| too_large("--memory", m))?;
            mem.set_limit(Some(m));
            // No swap beyond the limit unless --memory-swap says.
            mem.set_swap(Some(opts.memory_swap.unwrap_or(m)));
        } else if let Some(s) = opts.memory_swap {
            mem.set_swap(Some(s));
        }
        if let Some(r) = opts.memory_reservation {
            let r = i64::try_from(r).map_err(|_| too_large("--memory-reservation", r))?;
            mem.set_reservation(Some(r));
        }
        res.set_memory(Some(mem));
    }
    if opts.cpu_quota.is_some()
        || opts.cpu_shares.is_some()
        || opts.cpuset_cpus.is_some()
        || opts.cpuset_mems.is_some()
    {
        let mut cpu = res.cpu().clone().unwrap_or_default();
        if let Some(q) = opts.cpu_quota {
            cpu.set_quota(i64::try_from(q).ok());
            cpu.set_period(Some(super::limits::CPU_PERIOD_US));
        }
        if let Some(s) = opts.cpu_shares {
            cpu.set_shares(Some(s));
        }
        if let Some(c) = &opts.cpuset_cpus {
            cpu.set_cpus(Some(c.clone()));
        }
        if let Some(m) = &opts.cpuset_mems {
            cpu.set_mems(Some(m.clone()));
        }
        res.set_cpu(Some(cpu));
    }
    if opts.blkio_weight.is_some() || !opts.io_limits.is_empty() {
        let mut io = res.block_io().clone().unwrap_or_default();
        if let Some(w) = opts.blkio_weight {
            io.set_weight(Some(w));
        }
        for limit in IoLimit::ALL {
            let mine: Vec<LinuxThrottleDevice> = opts
                .io_limits
                .iter()
                .filter(|t| t.limit == limit)
                .map(|t| {
                    LinuxThrottleDeviceBuilder::default()
                        .major(i64::try_from(t.major).unwrap_or(i64::MAX))
                        .minor(i64::try_from(t.minor).unwrap_or(i64::MAX))
                        .rate(t.rate)
                        .build()
                        .map_err(|e| Error::Setup(format!("{}: {e}", limit.flag())))
                })
                .collect::<Result<_>>()?;
            if mine.is_empty() {
                continue;
            }
            let mut all = throttle_list(&io, limit).clone().unwrap_or_default();
            all.extend(mine);
            match limit {
                IoLimit::ReadBps => io.set_throttle_read_bps_device(Some(all)),
                IoLimit::WriteBps => io.set_throttle_write_bps_device(Some(all)),
                IoLimit::ReadIops => io.set_throttle_read_iops_device(Some(all)),
                IoLimit::WriteIops => io.set_throttle_write_iops_device(Some(all)),
            };
        }
        res.set_block_io(Some(io));
    }
    if let Some(p) = opts.pids_limit {
        let mut pids = oci_spec::runtime::LinuxPids::default();
        pids.set_limit(p);
        res.set_pids(Some(pids));
    }
    linux.set_resources(Some(res));
    Ok(())
}

/// A spec's list of device rate limits of one kind.
fn throttle_list(io: &LinuxBlockIo, limit: IoLimit) -> &Option<Vec<LinuxThrottleDevice>> {
    match limit {
        IoLimit::ReadBps => io.throttle_read_bps_device(),
        IoLimit::WriteBps => io.throttle_write_bps_device(),
        IoLimit::ReadIops => io.throttle_read_iops_device(),
        IoLimit::WriteIops => io.throttle_write_iops_device(),
    }
}

/// Adds the user namespace (rootless, `--userns`, `--uidmap`, or the
/// bundle's own) and its mappings; returns them, `None` without a new one.
fn user_namespace(
    linux: &mut oci_spec::runtime::Linux,
    opts: &RunOptions,
    rootless: Option<(u32, u32)>,
) -> Result<Option<(Vec<IdMap>, Vec<IdMap>)>> {
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    let existing = ns.iter().find(|n| n.typ() == LinuxNamespaceType::User);
    let asked = opts.userns || !opts.uid_map.is_empty() || !opts.gid_map.is_empty();
    match existing {
        // Joined by path: its mappings are already set.
        Some(n) if n.path().is_some() => return Ok(None),
        Some(_) => {}
        None if asked || rootless.is_some() => {
            let mut n = oci_spec::runtime::LinuxNamespace::default();
            n.set_typ(LinuxNamespaceType::User);
            ns.push(n);
            linux.set_namespaces(Some(ns));
        }
        None => return Ok(None),
    }
    let (uids, gids) = userns::mappings(&userns::Request {
        cli_uids: &opts.uid_map,
        cli_gids: &opts.gid_map,
        spec_uids: IdMap::from_oci(linux.uid_mappings().as_deref().unwrap_or_default()),
        spec_gids: IdMap::from_oci(linux.gid_mappings().as_deref().unwrap_or_default()),
        rootless,
    })?;
    linux.set_uid_mappings(Some(IdMap::to_oci(&uids)));
    linux.set_gid_mappings(Some(IdMap::to_oci(&gids)));
    Ok(Some((uids, gids)))
}

/// The process's IDs must exist in the user namespace (setuid to an
/// unmapped ID fails with a bare EINVAL much later).
fn check_user_mapped(spec: &Spec, uids: &[IdMap], gids: &[IdMap]) -> Result<()> {
    let Some(p) = spec.process() else {
        return Ok(());
    };
    let u = p.user();
    let value = format!("{}:{}", u.uid(), u.gid());
    if IdMap::to_host(uids, u.uid()).is_none() {
        return Err(Error::invalid(
            "--user",
            &value,
            format!(
                "uid {} is not mapped in the user namespace (see --uidmap)",
                u.uid()
            ),
        ));
    }
    for g in std::iter::once(u.gid()).chain(u.additional_gids().iter().flatten().copied()) {
        if IdMap::to_host(gids, g).is_none() {
            return Err(Error::invalid(
                "--user",
                &value,
                format!("gid {g} is not mapped in the user namespace (see --gidmap)"),
            ));
        }
    }
    Ok(())
}

/// devpts refuses a `gid=` option naming a group the user namespace does
/// not map (the tty group 5, rootless): drop it, ptys then get the
/// creator's group.
fn devpts_without_unmapped_gid(spec: &mut Spec, gids: &[IdMap]) {
    let Some(mounts) = spec.mounts_mut() else {
        return;
    };
    for m in mounts
        .iter_mut()
        .filter(|m| m.typ().as_deref() == Some("devpts"))
    {
        if let Some(opts) = m.options().clone() {
            let kept: Vec<String> = opts
                .into_iter()
                .filter(|o| {
                    o.strip_prefix("gid=")
                        .and_then(|g| g.parse::<u32>().ok())
                        .is_none_or(|g| IdMap::to_host(gids, g).is_some())
                })
                .collect();
            m.set_options(Some(kept));
        }
    }
}

/// The cgroup limits a spec asks for.
pub fn resources(spec: &Spec) -> Resources {
    let mut r = Resources::default();
    let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return r;
    };
    if let Some(m) = res.memory() {
        r.memory = m
            .limit()
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);
        // 0 is "not set" (runc's reading); -1 unlimited.
        r.memory_swap = m.swap().filter(|s| *s != 0);
        r.memory_reservation = m
            .reservation()
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);
        r.memory_swappiness = m.swappiness();
        r.oom_kill_disable = m.disable_oom_killer() == Some(true);
    }
    if let Some(c) = res.cpu() {
        r.cpu_quota = c
            .quota()
            .and_then(|q| u64::try_from(q).ok())
            .filter(|q| *q > 0);
        r.cpu_period = c.period();
        r.cpu_shares = c.shares().filter(|s| *s > 0);
        r.cpuset_cpus = c.cpus().clone().filter(|l| !l.trim().is_empty());
        r.cpuset_mems = c.mems().clone().filter(|l| !l.trim().is_empty());
    }
    if let Some(io) = res.block_io() {
        r.blkio_weight = io.weight().filter(|w| *w > 0);
        for limit in IoLimit::ALL {
            for d in throttle_list(io, limit).iter().flatten() {
                // Negative numbers name no device: left for validate() to report.
                let num = |n: i64| u64::try_from(n).unwrap_or(u64::MAX >> 1);
                r.io_limits.push(Throttle {
                    limit,
                    major: num(d.major()),
                    minor: num(d.minor()),
                    rate: d.rate(),
                });
            }
        }
    }
    if let Some(p) = res.pids() {
        r.pids = Some(p.limit()).filter(|l| *l > 0);
    }
    for d in res.devices().as_deref().unwrap_or_default() {
        let typ = match d.typ() {
            // 'u' (unbuffered) is a character device too.
            Some(LinuxDeviceType::C | LinuxDeviceType::U) => 'c',
            Some(LinuxDeviceType::B) => 'b',
            // FIFOs are not under the device cgroup.
            Some(LinuxDeviceType::P) => continue,
            Some(LinuxDeviceType::A) | None => 'a',
        };
        let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
        let access = d.access().clone().unwrap_or_else(|| "rwm".into());
        let rule = if typ == 'a' && d.major().is_none() && d.minor().is_none() {
            "a".to_string()
        } else {
            format!("{typ} {}:{} {access}", num(d.major()), num(d.minor()))
        };
        r.devices.push((d.allow(), rule));
    }
    r
}

/// The network settings a container got (recorded in its state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub bridge: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub veth: String,
    pub ports: Vec<PortMap>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_volumes() {
        assert_eq!(
            "8080:80".parse::<PortMap>().unwrap(),
            PortMap {
                host: 8080,
                container: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!("53:53/udp".parse::<PortMap>().unwrap().proto, Proto::Udp);
        for bad in ["80", "0:80", "70000:80", "80:80/sctp", "a:b"] {
            assert!(bad.parse::<PortMap>().is_err(), "{bad}");
        }
        let v: Volume = "/tmp:/data:ro".parse().unwrap();
        assert!(v.read_only);
        assert_eq!(v.container, PathBuf::from("/data"));
        assert!("/nonexistent-uvm:/data".parse::<Volume>().is_err());
        assert!("/tmp:data".parse::<Volume>().is_err());
        assert!("/tmp:/data:rx".parse::<Volume>().is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rootfs_spec_from_flags() {
        let dir = std::env::temp_dir();
        let mut o = RunOptions::new(Source::Rootfs(dir.clone()), vec!["true".into()]);
        o.memory = Some(64 << 20);
        o.cpu_quota = Some(50_000);
        o.pids_limit = Some(10);
        o.net = Some(NetMode::Host);
        o.env = vec!["A=1".into()];
        o.cap_drop = vec!["cap_kill".into()];
        let p = prepare(&o, "c1").unwrap();
        assert!(p.overlay);
        assert_eq!(p.spec.hostname().as_deref(), Some("c1"));
        let ns: Vec<_> = p
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Pid));
        let r = resources(&p.spec);
        assert_eq!(r.memory, Some(64 << 20));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.pids, Some(10));
        assert_eq!(r.devices[0], (false, "a".to_string()));
        assert!(r.devices.contains(&(true, "c 1:3 rwm".to_string())));
        assert!(r.devices.contains(&(true, "c 136:* rwm".to_string())));
        let caps = p
            .spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Kill));
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Mknod));
        assert!(p.spec.linux().as_ref().unwrap().seccomp().is_some());
        let env = p.spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&"A=1".to_string()));
    }

    #[test]
    fn user_namespace_and_mappings_from_flags() {
        let has_user = |p: &Prepared| {
            p.spec
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().clone())
                .unwrap_or_default()
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::User)
        };
        let devpts = |p: &Prepared| {
            p.spec
                .mounts()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|m| m.typ().as_deref() == Some("devpts"))
                .and_then(|m| m.options().clone())
                .unwrap_or_default()
        };
        let mut o = RunOptions::new(Source::Rootfs(std::env::temp_dir()), vec!["true".into()]);
        o.net = Some(NetMode::None);
        if userns::rootless_ids().is_none() {
            assert!(!has_user(&prepare(&o, "c").unwrap()));
        }
        o.userns = true;
        let p = prepare(&o, "c").unwrap();
        assert!(has_user(&p));
        let linux = p.spec.linux().as_ref().unwrap();
        let uids = IdMap::from_oci(linux.uid_mappings().as_deref().unwrap());
        if userns::rootless_ids().is_none() {
            assert_eq!(
                uids,
                [IdMap {
                    container: 0,
                    host: 100_000,
                    size: 65_536
                }]
            );
            assert!(devpts(&p).contains(&"gid=5".to_string()));
        }
        // Group 5 unmapped: devpts must not be asked for it.
        o.uid_map = vec![IdMap {
            container: 0,
            host: 100_000,
            size: 1,
        }];
        if userns::rootless_ids().is_none() {
            let p = prepare(&o, "c").unwrap();
            assert!(!devpts(&p).iter().any(|x| x.starts_with("gid=")));
        }
        o.user = Some("1000".into());
        assert!(prepare(&o, "c")
            .unwrap_err()
            .to_string()
            .contains("uid 1000 is not mapped"));
    }

    #[test]
    fn bad_inputs() {
        let o = RunOptions::new(
            Source::Rootfs("/nonexistent/rootfs".into()),
            vec!["true".into()],
        );
        let e = prepare(&o, "x").unwrap_err();
        assert!(matches!(e, Error::RootfsMissing(_)));
        assert_eq!(e.exit_code(), 125);
        let o = RunOptions::new(Source::Rootfs(std::env::temp_dir()), vec![]);
        assert!(prepare(&o, "x")
            .unwrap_err()
            .to_string()
            .contains("no command"));
        let mut o = RunOptions::new(Source::Rootfs(std::env::temp_dir()), vec!["true".into()]);
        o.cap_add = vec!["CAP_BOGUS".into()];
        assert!(prepare(&o, "x")
            .unwrap_err()
            .to_string()
            .contains("unknown capability"));
        let o = RunOptions::new(Source::Bundle("/nonexistent/bundle".into()), vec![]);
        assert!(matches!(
            prepare(&o, "x").unwrap_err(),
            Error::Bundle { .. }
        ));
    }
}
