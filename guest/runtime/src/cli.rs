//! `uvm container ...`: the runtime's command line.

use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::cgroups::IoLimit;
use super::error::{Error, Result, EXIT_RUNTIME_ERROR};
use super::limits;
use super::network::BridgeConfig;
use super::runtime::{ExecOptions, Runtime};
use super::spec::{NetMode, PortMap, RunOptions, Source, Volume};
use super::state::{self, Paths};
use super::userns::IdMap;

#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    /// Directory for container state (default: /run/uvm as root; without
    /// root $XDG_RUNTIME_DIR/uvm, else /tmp/uvm-UID).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Bridge used by --net bridge.
    #[arg(long, global = true, default_value = "uvm0", value_name = "NAME")]
    pub bridge: String,
    /// Subnet of the bridge (addresses are allocated from it).
    #[arg(
        long,
        global = true,
        default_value = "10.88.0.0/16",
        value_name = "CIDR"
    )]
    pub subnet: String,
    /// Use the cgroup v2 hierarchy mounted at DIR (default: detect from
    /// /sys/fs/cgroup: v2 if it is cgroup2, else the v1 controllers).
    #[arg(long, global = true, value_name = "DIR")]
    pub cgroup2_root: Option<PathBuf>,
    /// Parent cgroup of the containers' cgroups.
    #[arg(long, global = true, default_value = "uvm", value_name = "PATH")]
    pub cgroup_parent: String,
    #[command(subcommand)]
    pub command: ContainerCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ContainerCommand {
    /// Run a command in a new container and wait for it.
    Run(Box<RunArgs>),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// List containers.
    Ps {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Freeze every process of a container (cgroup freezer); `ps` shows it paused.
    Pause { name: String },
    /// Thaw a paused container.
    Resume { name: String },
    /// Send a signal to a container's PID 1 (default SIGKILL; a paused
    /// container is thawed after a SIGKILL so that it dies, other signals
    /// wait for resume).
    Kill {
        name: String,
        /// Signal name or number (KILL, TERM, SIGINT, 9...).
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Resource usage of a running container.
    Stats {
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove what containers whose runtime died left behind.
    Gc,
    /// Images: import, ls, rm, inspect (the same as `uvm image`).
    Image(crate::images::cli::ImageArgs),
    /// Print a detached container's output (stdout and stderr).
    Logs {
        name: String,
        /// Keep printing until the container ends for good.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a container: SIGTERM, then SIGKILL after the grace period.
    Stop {
        name: String,
        /// Grace period in seconds.
        #[arg(short = 't', long = "time", default_value_t = 10, value_name = "SECS")]
        time: u64,
    },
    /// Start a stopped detached container again (same flags, same upper directory).
    Start { name: String },
    /// Remove a stopped container (its record, log and overlay).
    Rm {
        name: String,
        /// Stop it first (SIGKILL) if it runs.
        #[arg(short, long)]
        force: bool,
    },
    /// A container's configuration and state as JSON.
    Inspect { name: String },
    /// Build a minimal root filesystem from busybox and chosen host binaries.
    Mkrootfs {
        /// Directory to create (or fill).
        dir: PathBuf,
        /// busybox binary to use (default: the host's).
        #[arg(long, value_name = "PATH")]
        busybox: Option<PathBuf>,
        /// Also copy this host binary, with the libraries it needs (repeatable).
        #[arg(long = "with", value_name = "BINARY")]
        with: Vec<PathBuf>,
    },
}

/// The workload flags every command that runs one shares: `uvm container
/// run` and `uvm-container run` here, `uvm run` at its four levels. Each
/// command adds its own (a bundle, a timeout, ...) around them.
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct WorkloadFlags {
    /// Name of the container or VM [default: generated]
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname the workload sees [default: the name]
    #[arg(long)]
    pub hostname: Option<String>,
    /// Environment variable KEY=VALUE (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the workload (absolute)
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: UID[:GID] (containers also take a name from the rootfs' /etc/passwd)
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Memory limit (e.g. 64m, 1g), no swap beyond it; at the vm levels it also sizes the VM
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in CPUs (e.g. 0.5); at the vm levels the VM has as many vCPUs, rounded up
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Maximum number of processes
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<String>,
    /// Network: none, bridge, or host; containers also container:NAME,
    /// veth:NAME, macvlan:PARENT, ns:PATH [default: uvm run: none, a process the
    /// host's; uvm container run: bridge, a bundle as its config.json says]
    #[arg(long, value_name = "MODE")]
    pub net: Option<String>,
    /// Publish a port HOST:CONTAINER[/udp] (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "HOST:CTR")]
    pub publish: Vec<String>,
    /// Bind a host folder HOST:CONTAINER[:ro] (repeatable)
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volume: Vec<String>,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct RunArgs {
    /// Root filesystem directory (read-only lower layer of an overlay).
    #[arg(long, value_name = "DIR", conflicts_with = "bundle")]
    pub rootfs: Option<PathBuf>,
    /// Image of the store (`uvm image ls`): its layers are the overlay's
    /// lower layers, its config's Env, Entrypoint, Cmd, WorkingDir and User the defaults.
    #[arg(long, value_name = "NAME[:TAG]", conflicts_with_all = ["rootfs", "bundle"])]
    pub image: Option<String>,
    /// OCI bundle directory (config.json + rootfs).
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub workload: WorkloadFlags,
    #[command(flatten)]
    pub resources: ResourceFlags,
    #[command(flatten)]
    pub lifecycle: super::lifecycle::LifecycleFlags,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Use the rootfs directly, without an overlay (writes change the image).
    #[arg(long, conflicts_with = "overlay")]
    pub no_overlay: bool,
    /// Put an overlay over a bundle's rootfs too.
    #[arg(long)]
    pub overlay: bool,
    /// Keep the overlay's upper directory after exit (its path is printed).
    #[arg(long)]
    pub keep: bool,
    /// Seccomp: default, or unconfined to run without a filter.
    #[arg(long, default_value = "default", value_name = "PROFILE")]
    pub seccomp: String,
    /// Address of eth0 with --net veth:NAME (default: a /30 from
    /// 10.90.0.0/16) or macvlan:PARENT (required), e.g. 10.90.7.2/30.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub ip: Option<String>,
    /// Firewall the container's own network namespace: accept inbound
    /// traffic only to these ports (PORT[/tcp|udp], repeatable), to
    /// loopback and in reply to its own connections [default: no firewall]
    #[arg(long, value_name = "PORT[/PROTO]")]
    pub allow_in: Vec<String>,
    /// Add a capability (e.g. CAP_NET_ADMIN; repeatable).
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (repeatable).
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Set a namespaced kernel parameter: KEY=VALUE (repeatable, e.g.
    /// net.ipv4.ip_unprivileged_port_start=0).
    #[arg(long, value_name = "KEY=VALUE")]
    pub sysctl: Vec<String>,
    /// Run a tiny init as PID 1 that forwards signals to the workload and
    /// reaps zombies (the workload is then PID 2).
    #[arg(long)]
    pub init: bool,
    /// New user namespace: the container's root is an unprivileged host
    /// user (default mapping 0:100000:65536). Always on without root, with
    /// the caller's own uid and gid as the container's root.
    #[arg(long)]
    pub userns: bool,
    /// User ID mapping CONTAINER_ID:HOST_ID:SIZE (repeatable; implies
    /// --userns; the groups are mapped the same unless --gidmap is given).
    #[arg(long, value_name = "CTR:HOST:SIZE")]
    pub uidmap: Vec<String>,
    /// Group ID mapping CONTAINER_ID:HOST_ID:SIZE (repeatable; implies --userns).
    #[arg(long, value_name = "CTR:HOST:SIZE")]
    pub gidmap: Vec<String>,
    /// The command and its arguments (after --).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Resource controls of `uvm container run` beyond the shared
/// `--memory`, `--cpus` and `--pids-limit` (not in [`WorkloadFlags`]:
/// `uvm run` does not take them at its other levels).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct ResourceFlags {
    /// Relative CPU weight as cgroup v1 shares, 2-262144 (1024 = default); on
    /// cgroup v2 written as cpu.weight = 1 + ((N - 2) * 9999) / 262142
    #[arg(long, value_name = "N")]
    pub cpu_shares: Option<String>,
    /// Relative CPU weight as cgroup v2 cpu.weight, 1-10000 (100 = default); on
    /// cgroup v1 written as cpu.shares = 2 + ((N - 1) * 262142) / 9999, rounded up
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<String>,
    /// CPUs the container may run on, e.g. 0-2,4 (online ones)
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may allocate from, e.g. 0
    #[arg(long, value_name = "LIST")]
    pub cpuset_mems: Option<String>,
    /// Relative block I/O weight, 10-1000 (v1 blkio.bfq.weight or blkio.weight;
    /// v2 io.bfq.weight, else io.weight = 1 + (N - 10) * 9999 / 990)
    #[arg(long, value_name = "N")]
    pub blkio_weight: Option<String>,
    /// Limit reads from block device DEV to RATE bytes a second, e.g. /dev/sda:1m (repeatable)
    #[arg(long, value_name = "DEV:RATE")]
    pub device_read_bps: Vec<String>,
    /// Limit writes to block device DEV to RATE bytes a second (repeatable)
    #[arg(long, value_name = "DEV:RATE")]
    pub device_write_bps: Vec<String>,
    /// Limit reads from block device DEV to N operations a second (repeatable)
    #[arg(long, value_name = "DEV:N")]
    pub device_read_iops: Vec<String>,
    /// Limit writes to block device DEV to N operations a second (repeatable)
    #[arg(long, value_name = "DEV:N")]
    pub device_write_iops: Vec<String>,
    /// Memory plus swap, as Docker's (e.g. 1g with --memory 512m: 512m of swap);
    /// -1: unlimited swap [default: no swap beyond --memory]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Soft memory limit, at most --memory (v1 memory.soft_limit_in_bytes, v2 memory.low)
    #[arg(long, value_name = "SIZE")]
    pub memory_reservation: Option<String>,
}

impl ResourceFlags {
    /// Into `o` (whose `memory` is already set), each checked.
    fn apply(&self, o: &mut RunOptions) -> Result<()> {
        o.cpu_shares = match (&self.cpu_shares, &self.cpu_weight) {
            (Some(_), Some(w)) => {
                return Err(Error::invalid(
                    "--cpu-weight",
                    w,
                    "give --cpu-shares or --cpu-weight, not both",
                ))
            }
            (Some(s), None) => Some(limits::parse_cpu_shares(s)?),
            (None, Some(w)) => Some(limits::parse_cpu_weight(w)?),
            (None, None) => None,
        };
        o.cpuset_cpus = self
            .cpuset_cpus
            .as_deref()
            .map(|c| limits::parse_cpuset("--cpuset-cpus", c))
            .transpose()?;
        o.cpuset_mems = self
            .cpuset_mems
            .as_deref()
            .map(|m| limits::parse_cpuset("--cpuset-mems", m))
            .transpose()?;
        o.blkio_weight = self
            .blkio_weight
            .as_deref()
            .map(limits::parse_blkio_weight)
            .transpose()?;
        for (limit, values) in [
            (IoLimit::ReadBps, &self.device_read_bps),
            (IoLimit::WriteBps, &self.device_write_bps),
            (IoLimit::ReadIops, &self.device_read_iops),
            (IoLimit::WriteIops, &self.device_write_iops),
        ] {
            for v in values {
                o.io_limits.push(limits::parse_io_limit(limit, v)?);
            }
        }
        o.memory_swap = self
            .memory_swap
            .as_deref()
            .map(|s| limits::parse_memory_swap(s, o.memory))
            .transpose()?;
        o.memory_reservation = self
            .memory_reservation
            .as_deref()
            .map(|r| limits::parse_memory_reservation(r, o.memory))
            .transpose()?;
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    pub name: String,
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

pub(crate) fn run_options(a: RunArgs) -> Result<RunOptions> {
    let source = match (a.rootfs, a.bundle, a.image) {
        (Some(r), None, None) => Source::Rootfs(r),
        (None, Some(b), None) => Source::Bundle(b),
        (None, None, Some(i)) => Source::Image(i),
        _ => {
            return Err(Error::invalid(
                "--rootfs",
                "",
                "give a root filesystem with --rootfs DIR, a bundle with --bundle DIR or an image with --image NAME",
            ))
        }
    };
    let mut o = RunOptions::new(source, a.command);
    let w = a.workload;
    o.name = w.name;
    o.hostname = w.hostname;
    o.env = w.env;
    o.cwd = w.workdir;
    o.user = w.user;
    o.memory = w
        .memory
        .as_deref()
        .map(|m| limits::parse_memory("--memory", m))
        .transpose()?;
    o.cpu_quota = w
        .cpus
        .as_deref()
        .map(|c| limits::parse_cpus(c, limits::host_cpus()))
        .transpose()?;
    a.resources.apply(&mut o)?;
    super::lifecycle::apply(&a.lifecycle, &mut o)?;
    o.pids_limit = w
        .pids_limit
        .as_deref()
        .map(limits::parse_pids)
        .transpose()?;
    o.net = w.net.as_deref().map(NetMode::from_str).transpose()?;
    o.ip = a.ip.as_deref().map(super::netns::parse_cidr).transpose()?;
    o.allow_in = a
        .allow_in
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_>>()?;
    o.ports = w
        .publish
        .iter()
        .map(|p| PortMap::from_str(p))
        .collect::<Result<_>>()?;
    o.volumes = w
        .volume
        .iter()
        .map(|v| Volume::from_str(v))
        .collect::<Result<_>>()?;
    o.read_only = a.read_only;
    o.overlay = if a.no_overlay {
        Some(false)
    } else if a.overlay {
        Some(true)
    } else {
        None
    };
    o.keep = a.keep;
    o.seccomp = match a.seccomp.as_str() {
        "default" => true,
        "unconfined" => false,
        other => {
            return Err(Error::invalid(
                "--seccomp",
                other,
                "expected default or unconfined",
            ))
        }
    };
    o.cap_add = a.cap_add;
    o.cap_drop = a.cap_drop;
    o.init = a.init;
    o.userns = a.userns;
    o.uid_map = a
        .uidmap
        .iter()
        .map(|m| IdMap::parse("--uidmap", m))
        .collect::<Result<_>>()?;
    o.gid_map = a
        .gidmap
        .iter()
        .map(|m| IdMap::parse("--gidmap", m))
        .collect::<Result<_>>()?;
    o.sysctl = a
        .sysctl
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty() && !k.contains('/') && !k.contains(".."))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    Error::invalid(
                        "--sysctl",
                        kv,
                        "expected KEY=VALUE, e.g. net.ipv4.ip_forward=1",
                    )
                })
        })
        .collect::<Result<_>>()?;
    Ok(o)
}

/// Signals the runtime forwards to the container while waiting.
pub(crate) fn forwarded_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        s.add(sig);
    }
    s
}

pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map_err(|_| Error::invalid("--signal", s, "unknown signal number"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name)
        .map_err(|_| Error::invalid("--signal", s, "unknown signal (e.g. KILL, TERM, 9)"))
}

fn cmd_run(rt: &Runtime, a: RunArgs) -> Result<i32> {
    if a.lifecycle.detach {
        return super::lifecycle::run_detached(rt, a);
    }
    let stdin = a.lifecycle.interactive;
    let mut opts = run_options(a)?;
    let mut pty = match opts.terminal {
        true => Some(super::tty::Pty::open()?),
        false => None,
    };
    if let Some(p) = &pty {
        opts.stdio = Some(p.stdio()?);
    }
    // Containers whose runtime was killed go first.
    rt.sweep();
    let sigs = forwarded_signals();
    sigs.thread_block()
        .map_err(|e| Error::sys("blocking signals", e))?;
    // With a terminal, a resize is the relay's (it resizes the pty).
    let mut waited = sigs;
    if pty.is_some() {
        waited.remove(Signal::SIGWINCH);
    }
    let r = rt.create(&opts).and_then(|c| {
        // The relay sees the terminal's end only once no copy of ours is open.
        opts.stdio = None;
        let attached = pty.take().map(|p| p.attach(stdin)).transpose()?;
        let name = c.name().to_string();
        let keep = c.state().overlay.clone().filter(|_| opts.keep);
        let exit = c.wait_forwarding(&waited);
        if let Some(a) = attached {
            a.finish();
        }
        let exit = exit?;
        if exit.oom_killed {
            let limit = exit
                .memory_limit
                .map(|l| format!(" (memory limit {})", limits::human_bytes(l)))
                .unwrap_or_default();
            eprintln!(
                "uvm container: {name}: out of memory: the kernel OOM-killed a process of the container{limit}"
            );
        }
        if let Some(dir) = keep {
            eprintln!("uvm container: {name}: upper directory kept in {}", dir.join("upper").display());
        }
        Ok(exit.code())
    });
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigs), None);
    r
}

fn cmd_ps(rt: &Runtime, json: bool) -> Result<i32> {
    let list = rt.list();
    let ended = super::lifecycle::stopped(&rt.paths);
    if json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["status"] = serde_json::Value::from(s.status());
                v
            })
            .chain(ended.iter().map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "status": "exited",
                    "exit_code": r.exit_code,
                    "args": r.run.command,
                })
            }))
            .collect();
        println!("{}", serde_json::Value::from(v));
        return Ok(0);
    }
    println!(
        "{:<20} {:<16} {:>8} {:<9} {:<15} {:<16} COMMAND",
        "NAME", "ID", "PID", "STATUS", "IP", "PORTS"
    );
    for s in list {
        let ip = match (&s.net, &s.netns.link) {
            (Some(n), _) => n.ip.to_string(),
            (None, Some(super::netns::Link::Veth { ip, .. }))
            | (None, Some(super::netns::Link::Macvlan { ip, .. })) => ip.to_string(),
            (None, None) => "-".to_string(),
        };
        let ports = s
            .net
            .as_ref()
            .map(|n| {
                n.ports
                    .iter()
                    .map(|p| format!("{}->{}/{}", p.host, p.container, p.proto))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<16} {:>8} {:<9} {:<15} {:<16} {}",
            s.name,
            s.id,
            s.pid.map_or("-".to_string(), |p| p.to_string()),
            s.status(),
            ip,
            ports,
            s.args.join(" ")
        );
    }
    for r in ended {
        let status = format!("exited({})", r.exit_code.unwrap_or(-1));
        println!(
            "{:<20} {:<16} {:>8} {:<9} {:<15} {:<16} {}",
            r.name,
            "-",
            "-",
            status,
            "-",
            "-",
            r.run.command.join(" ")
        );
    }
    Ok(0)
}

fn cmd_stats(rt: &Runtime, name: &str, json: bool) -> Result<i32> {
    let s = rt.stats(name)?;
    if json {
        println!("{}", serde_json::to_string(&s).unwrap_or_default());
        return Ok(0);
    }
    let bytes = |v: Option<u64>| {
        v.map_or("-".to_string(), |b| {
            format!("{:.1} MiB", b as f64 / 1048576.0)
        })
    };
    let num = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
    println!(
        "memory      {} / {} (max {})",
        bytes(s.memory_usage),
        bytes(s.memory_limit),
        bytes(s.memory_max_usage)
    );
    println!(
        "cpu         {:.3} s used, throttled {} of {} periods ({:.3} s)",
        s.cpu_usage_ns.unwrap_or(0) as f64 / 1e9,
        num(s.cpu_nr_throttled),
        num(s.cpu_nr_periods),
        s.cpu_throttled_ns.unwrap_or(0) as f64 / 1e9
    );
    println!(
        "pids        {} / {} ({} forks refused)",
        num(s.pids_current),
        s.pids_limit.map_or("max".into(), |n| n.to_string()),
        num(s.pids_rejected)
    );
    println!("oom kills   {}", s.oom_kills);
    Ok(0)
}

fn dispatch(args: ContainerArgs) -> Result<i32> {
    let mut rt = Runtime::new(Paths::new(args.root.unwrap_or_else(state::default_root)));
    rt.bridge = BridgeConfig::with_subnet(&args.bridge, &args.subnet)?;
    if args.cgroup_parent.is_empty()
        || args.cgroup_parent.starts_with('/')
        || args
            .cgroup_parent
            .split('/')
            .any(|c| c == ".." || c.is_empty())
    {
        return Err(Error::invalid(
            "--cgroup-parent",
            &args.cgroup_parent,
            "a relative cgroup path such as uvm or uvm/test",
        ));
    }
    rt.cgroup_parent = args.cgroup_parent;
    if let Some(root) = args.cgroup2_root {
        if !root.join("cgroup.procs").exists() {
            return Err(Error::invalid(
                "--cgroup2-root",
                &root.display().to_string(),
                "no cgroup v2 hierarchy is mounted there",
            ));
        }
        rt.hierarchy = Some(super::cgroups::Hierarchy::V2 { root });
    }
    if matches!(
        args.command,
        ContainerCommand::Ps { .. }
            | ContainerCommand::Stats { .. }
            | ContainerCommand::Logs { .. }
            | ContainerCommand::Inspect { .. }
            | ContainerCommand::Gc
    ) {
        crate::quiet_on_closed_stdout();
    }
    match args.command {
        ContainerCommand::Run(a) => cmd_run(&rt, *a),
        ContainerCommand::Exec(a) => {
            let sigs = forwarded_signals();
            sigs.thread_block()
                .map_err(|e| Error::sys("blocking signals", e))?;
            if let Some(e) = a.env.iter().find(|e| !e.contains('=')) {
                return Err(Error::invalid("-e", e, "expected KEY=VALUE"));
            }
            let opts = ExecOptions {
                args: a.command,
                env: a.env,
                cwd: a.workdir,
                forward_signals: Some(sigs),
                ..ExecOptions::default()
            };
            let r = rt.exec(&a.name, &opts).map(|k| k.code());
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigs), None);
            r
        }
        ContainerCommand::Ps { json } => cmd_ps(&rt, json),
        ContainerCommand::Pause { name } => {
            rt.pause(&name)?;
            Ok(0)
        }
        ContainerCommand::Resume { name } => {
            rt.resume(&name)?;
            Ok(0)
        }
        ContainerCommand::Kill { name, signal } => {
            rt.kill(&name, parse_signal(&signal)?)?;
            Ok(0)
        }
        ContainerCommand::Stats { name, json } => cmd_stats(&rt, &name, json),
        ContainerCommand::Logs { name, follow } => {
            super::lifecycle::logs(&rt, &name, follow).map(|()| 0)
        }
        ContainerCommand::Stop { name, time } => {
            super::lifecycle::stop(&rt, &name, std::time::Duration::from_secs(time)).map(|()| 0)
        }
        ContainerCommand::Start { name } => super::lifecycle::start(&rt, &name).map(|()| 0),
        ContainerCommand::Rm { name, force } => super::lifecycle::rm(&rt, &name, force).map(|()| 0),
        ContainerCommand::Inspect { name } => {
            let v = super::lifecycle::inspect(&rt, &name)?;
            use std::io::Write;
            // A reader that went away (`| head`) is not an error of ours.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
            Ok(0)
        }
        ContainerCommand::Gc => {
            for r in rt.gc()? {
                println!("removed {r}");
            }
            Ok(0)
        }
        ContainerCommand::Image(a) => Ok(crate::images::cli::main(a, Some(&rt.paths.root))),
        ContainerCommand::Mkrootfs { dir, busybox, with } => {
            let copied = super::image::build_rootfs(&dir, busybox.as_deref(), &with)?;
            println!(
                "rootfs ready in {} ({} files copied)",
                dir.display(),
                copied.len()
            );
            Ok(0)
        }
    }
}

/// Runs a `uvm container` command and returns the process exit status:
/// the workload's for run/exec, 125 for runtime errors, 126 when the
/// command cannot be executed, 127 when it is not found.
pub fn main(args: ContainerArgs) -> i32 {
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uvm container: {e}");
            let code = e.exit_code();
            if code == 0 {
                EXIT_RUNTIME_ERROR
            } else {
                code
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments are valid as a subcommand of a parent CLI (as `uvm container`).
    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Top {
            #[command(subcommand)]
            command: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Container(ContainerArgs),
        }
        Top::command().debug_assert();
        let t = <Top as clap::Parser>::try_parse_from([
            "uvm",
            "container",
            "--root",
            "/x",
            "run",
            "--rootfs",
            "/r",
            "--memory",
            "64m",
            "-p",
            "8080:80",
            "--",
            "sh",
            "-c",
            "echo hi",
        ])
        .unwrap();
        let Sub::Container(a) = t.command;
        assert_eq!(a.root, Some(PathBuf::from("/x")));
        let ContainerCommand::Run(r) = a.command else {
            panic!("not run")
        };
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        let o = run_options(*r).unwrap();
        assert_eq!(o.memory, Some(64 << 20));
        assert_eq!(o.ports.len(), 1);
    }

    fn parse_run(args: &[&str]) -> Result<RunOptions> {
        #[derive(clap::Parser)]
        struct Top {
            #[command(flatten)]
            a: ContainerArgs,
        }
        let mut argv = vec!["uvm-container", "run", "--rootfs", "/r"];
        argv.extend_from_slice(args);
        argv.extend(["--", "true"]);
        let t = <Top as clap::Parser>::try_parse_from(argv).unwrap();
        let ContainerCommand::Run(r) = t.a.command else {
            panic!("not run")
        };
        run_options(*r)
    }

    #[test]
    fn resource_flags() {
        let o = parse_run(&[
            "--memory",
            "64m",
            "--memory-swap",
            "-1",
            "--memory-reservation",
            "32m",
            "--cpu-weight",
            "100",
            "--cpuset-cpus",
            "0",
            "--cpuset-mems",
            "0",
            "--blkio-weight",
            "300",
        ])
        .unwrap();
        assert_eq!(o.memory_swap, Some(-1));
        assert_eq!(o.memory_reservation, Some(32 << 20));
        assert_eq!(o.cpu_shares, Some(2598));
        assert_eq!(o.cpuset_cpus.as_deref(), Some("0"));
        assert_eq!(o.cpuset_mems.as_deref(), Some("0"));
        assert_eq!(o.blkio_weight, Some(300));
        assert_eq!(
            parse_run(&["--cpu-shares", "80"]).unwrap().cpu_shares,
            Some(80)
        );
        for (args, want) in [
            (&["--cpu-shares", "80", "--cpu-weight", "5"][..], "not both"),
            (&["--cpuset-cpus", "9999"][..], "CPU 9999 is not online"),
            (
                &["--device-write-bps", "/dev/nonexistent-uvm:1m"][..],
                "no such device /dev/nonexistent-uvm",
            ),
            (&["--memory-swap", "1g"][..], "needs --memory"),
            (&["--blkio-weight", "5"][..], "invalid --blkio-weight"),
        ] {
            let e = parse_run(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("2").unwrap(), Signal::SIGINT);
        assert!(parse_signal("BOGUS").is_err());
    }
}
