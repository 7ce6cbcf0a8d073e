//! The command line: `uvm boot`, `uvm check`, `uvm container`, `uvm oci`, `uvm bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::Error;
use crate::vmm::linux::{LinuxVmConfig, DEFAULT_CMDLINE};
use crate::vmm::memory::parse_size;
use crate::vmm::virtio::{DiskSpec, FsSpec, NetSpec, VsockSpec};
use crate::{check, guest_image};

pub const EXIT_CODES: &str = "\
Exit status of `uvm boot`:
  0-255  the guest command's own exit status (128+N if it died of signal N)
  2      invalid command line
  124    the guest crashed: kernel panic, triple fault, a reset before the
         guest's init started, a KVM error, or --timeout expired
  125    uvm could not start the VM (bad kernel/initrd, bad size, no usable KVM)
  128+N  uvm was stopped by signal N (130 for SIGINT, 143 for SIGTERM)
  159    (128+SIGSYS) one of uvm's threads made a system call its seccomp
         filter forbids: stderr names the thread and the call; --no-seccomp
         runs without the filters
Without a command, the guest runs a shell on the console; powering off or
rebooting the guest ends uvm with status 0.";

pub const RUN_EXIT_CODES: &str = "\
Exit status of `uvm run`:
  0-255  the workload's own exit status (128+N if it died of signal N)
  2      invalid command line
  124    --timeout expired, or the guest crashed (vm levels)
  125    uvm could not run the workload (bad flag for the level, missing
         rootfs, unwritable cache, no usable KVM, ...)
  159    (vm levels) one of uvm's threads made a system call its seccomp
         filter forbids: stderr names the thread and the call; --no-seccomp
         runs without the filters
At the vm levels only the workload's output reaches stdout; the guest's
console (kernel and init) goes to a log, shown with --verbose.";

pub const AGENT_EXIT_CODES: &str = "\
Exit status of `uvm agent`:
  0-255  for attached run, exec and wait: the process's own exit status
         (128+N if it died of signal N); otherwise 0 when the agent did it
  2      invalid command line
  125    no agent answered, or it refused the request (the reason on stderr)";

pub const SANDBOX_EXIT_CODES: &str = "\
Exit status of `uvm sandbox`:
  0-255  for attached run and exec, and wait: the process's own exit status
         (128+N if it died of signal N); otherwise 0 when it was done
  2      invalid command line
  125    uvm could not do it: no such sandbox or container, a name in use,
         a missing --rootfs folder, the guest's agent refused (why on stderr)";

#[derive(Debug, Parser)]
#[command(name = "uvm", version, about = "KVM microVMs and containers, side by side", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a Linux microVM; with `-- CMD ARGS...`, run CMD in it and exit with its status.
    #[command(after_help = EXIT_CODES)]
    Boot(BootArgs),
    /// Report what this host can do (KVM flavour, nested runner, tun, cgroups, namespaces).
    Check,
    /// The container runtime on this host (the same code runs in the guest).
    Container(uvm_runtime::cli::ContainerArgs),
    /// Container images: import an OCI layout or `docker save` output, ls, rm, inspect.
    Image(uvm_runtime::images::cli::ImageArgs),
    /// The same runtime behind runc's command line (create, start, state,
    /// kill, delete, run, exec, ps, features); the uvm binary invoked as
    /// `uvm-runc` (a link) is this command.
    Oci(uvm_runtime::oci::cli::OciArgs),
    /// Run one workload at an isolation level: process, container, vm or vm+container.
    #[command(after_help = RUN_EXIT_CODES)]
    Run(crate::run::RunArgs),
    /// Remove what killed runs left behind: sandboxes whose VMM is gone,
    /// jails, virtiofsd folders, containers, VM leases (taps, addresses,
    /// published ports), VM folders, then unused bridges.
    Gc,
    /// Internal: releases a VM's network lease once its stdin closes (the
    /// helper a seccomp-filtered uvm leaves that to).
    #[command(name = "release-lease", hide = true)]
    ReleaseLease { name: String },
    /// The isolation matrix: what a workload can see and do at each level.
    Probe(crate::run::probe::ProbeArgs),
    /// Drive a running VM's guest agent (uvm boot --agent): containers and
    /// processes in the guest, their stdio, power-off.
    #[command(after_help = AGENT_EXIT_CODES)]
    Agent(crate::agent::ctl::AgentArgs),
    /// Sandboxes: long-lived microVMs holding several containers that share
    /// the VM's network (the pod pattern), driven through its guest agent.
    #[command(after_help = SANDBOX_EXIT_CODES)]
    Sandbox(SandboxArgs),
    /// Internal: a sandbox's VMM (started detached by `uvm sandbox create`).
    #[command(name = "sandbox-vmm", hide = true)]
    SandboxVmm { name: String },
    /// Internal: copies a detached container's output into its log.
    #[command(name = "sandbox-log", hide = true)]
    SandboxLog { name: String, id: String },
    /// Benchmarks, side by side with a reference (run through tests/runner/kvm-runner on a PVM host);
    /// without a subcommand, one workload at each isolation level.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub levels: crate::bench::levels::LevelsArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Boot time to the init's readiness line and VMM memory overhead, uvm vs QEMU microvm (and Firecracker).
    Boot(crate::bench::boot::BootArgs),
    /// virtio-blk and virtio-net throughput in the guest, uvm vs QEMU microvm (and Firecracker; same kernel, image, tap).
    Io(crate::bench::io::IoArgs),
    /// vsock against TCP over virtio-net, virtio-fs against virtio-blk ext4, in one uvm guest.
    Channels(crate::bench::channels::ChannelsArgs),
}

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Kernel image (bzImage or ELF vmlinux) [default: the guest set-up prepared]
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs [default: uvm's initramfs when --kernel is not given]
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, appended to uvm's defaults
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory (e.g. 512M, 2G, 3.5G)
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub mem: u64,
    /// Stop the VM after this many seconds (exit status 124)
    #[arg(long)]
    pub timeout: Option<f64>,
    /// A virtio-blk disk from a raw image file: PATH[,ro][,id=NAME][,root]
    /// (repeatable; the guest sees them as /dev/vda, /dev/vdb, ... with the
    /// root disk first). Rate limits: bw=RATE (bytes per second of reads and
    /// writes, as a size: 10M is 10 MiB/s), iops=N (requests per second),
    /// burst=SIZE and ops_burst=N (spent once, before the rate applies);
    /// each bucket refills whole over one second, and a throttled queue
    /// resumes on a timer
    #[arg(long = "disk", value_name = "PATH[,OPTS]")]
    pub disks: Vec<DiskSpec>,
    /// Boot with this raw filesystem image (ext4) as / (the same as
    /// --disk PATH,root)
    #[arg(long, value_name = "PATH")]
    pub root: Option<PathBuf>,
    /// A virtio-net device: on a tap, created if missing, tap=NAME[,mac=MAC]
    /// (configure the guest with the kernel's ip=ADDR::GW:MASK::eth0:off in
    /// --cmdline), or on uvm's bridge, bridge[,mac=MAC] (a tap, an address
    /// from the containers' allocator given to the guest as ip=, NAT for
    /// egress); repeatable, the n-th is the guest's eth<n>. Rate limits, each
    /// way: bw=RATE (bytes per second, as a size: 10M is 10 MiB/s), ops=N
    /// (frames per second), burst=SIZE, ops_burst=N; rx_ or tx_ in front
    /// (rx_bw=, tx_ops=, ...) sets one direction over the common value
    #[arg(long = "net", value_name = "tap=NAME|bridge[,OPTS]")]
    pub nets: Vec<NetSpec>,
    /// A virtio-vsock device: the guest's context id (3 or more) and a Unix
    /// socket for host programs, created by uvm and removed when it ends
    /// (Firecracker's protocol: send "CONNECT <port>\n" on PATH to reach a
    /// guest port; the guest's connections to port P reach PATH_P)
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<VsockSpec>,
    /// Share a host folder over virtio-fs: HOST_DIR:TAG[:ro] (repeatable).
    /// uvm runs a virtiofsd for it and the guest's init mounts it at
    /// /mnt/TAG (read-only with ro, which virtiofsd enforces too)
    #[arg(long = "fs", value_name = "HOST_DIR:TAG[:ro]")]
    pub shares: Vec<FsSpec>,
    /// Run uvm's guest agent instead of a command (needs --vsock): host
    /// programs then create containers and processes in the guest through
    /// it (vsock port 1024, ttrpc; their stdio on port 1025), and its
    /// Shutdown request ends the VM with the status it carries
    #[arg(long, conflicts_with = "command")]
    pub agent: bool,
    /// Publish a port of the guest on the host: HOST:GUEST[/udp]
    /// (repeatable; needs --net bridge; answers on 127.0.0.1 too)
    #[arg(short = 'p', long = "publish", value_name = "HOST:GUEST")]
    pub publish: Vec<String>,
    /// With a command: show the guest's console (kernel and init) on
    /// stderr; without, it goes to a log, whose last lines uvm shows if the
    /// guest crashes (stdout carries only the command's output)
    #[arg(long)]
    pub console: bool,
    /// When the VM ends, tell each virtio device's counters and queue state
    /// and the accesses no device claimed (on stderr)
    #[arg(long, short)]
    pub verbose: bool,
    /// Run the VMM's threads without their seccomp filters (for debugging
    /// a thread that a filter stopped, status 159; see README "Seccomp")
    #[arg(long)]
    pub no_seccomp: bool,
    /// Run the VMM jailed (see README "The jail"): in a fresh folder
    /// DIR/uvm-PID/root holding only its kernel, initrd, disks, /dev/kvm
    /// and /dev/net/tun (bind mounts), in a mount namespace pivoted into it,
    /// in its own cgroup, as --uid:--gid with no capabilities and
    /// no_new_privs before any guest code runs; the folder is removed after.
    /// A command then goes to the guest's init on the kernel command line
    /// and its output is the console's, on stdout
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// The jailed VMM's user id [default: 65534, nobody]
    #[arg(long, requires = "jail")]
    pub uid: Option<u32>,
    /// The jailed VMM's group id [default: 65534, nogroup]
    #[arg(long, requires = "jail")]
    pub gid: Option<u32>,
    /// Jail the VMM in a new network namespace too; each --net tap=NAME must
    /// exist and is moved into it (losing its addresses; it goes with the
    /// namespace when the VMM ends)
    #[arg(long, requires = "jail")]
    pub jail_netns: bool,
    /// Jail the VMM in a new pid namespace too, as its PID 1
    #[arg(long, requires = "jail")]
    pub jail_pidns: bool,
    /// Memory limit of the jail's cgroup (guest RAM counts: at least --mem
    /// plus 32M for the VMM)
    #[arg(long, requires = "jail", value_parser = parse_size)]
    pub jail_mem: Option<u64>,
    /// Task limit of the jail's cgroup (the VMM's threads count)
    #[arg(long, requires = "jail")]
    pub jail_pids: Option<i64>,
    /// CPU limit of the jail's cgroup, in CPUs (a CFS quota: 1.5 is 150 ms
    /// per 100 ms)
    #[arg(long, requires = "jail")]
    pub jail_cpus: Option<f64>,
    /// Command to run in the guest, with its arguments
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl BootArgs {
    pub fn to_config(&self) -> Result<LinuxVmConfig, Error> {
        let (kernel, initrd) = match (&self.kernel, &self.initrd) {
            (Some(k), i) => (k.clone(), i.clone()),
            (None, i) => (
                guest_image::default_file(guest_image::KERNEL)?,
                match i {
                    Some(i) => Some(i.clone()),
                    None => Some(guest_image::default_file(guest_image::INITRD)?),
                },
            ),
        };
        // A command travels to the guest's agent over vsock (see main's
        // boot), not on the command line.
        let mut cmdline = vec![DEFAULT_CMDLINE.to_string()];
        if self.agent {
            if self.vsock.is_none() {
                return Err(Error::Usage(
                    "--agent needs --vsock cid=N,uds=PATH: the agent listens on vsock".into(),
                ));
            }
            cmdline.push(format!(
                "{}={}",
                uvm_protocol::AGENT_PARAM,
                uvm_agent_api::AGENT_PORT
            ));
        }
        cmdline.push(self.cmdline.clone());
        let timeout = match self.timeout {
            Some(t) if !(t > 0.0 && t.is_finite()) => {
                return Err(Error::Cmdline(format!(
                    "--timeout {t}: must be a positive number of seconds"
                )))
            }
            t => t.map(Duration::from_secs_f64),
        };
        let mut disks = self.disks.clone();
        if let Some(root) = &self.root {
            disks.push(DiskSpec {
                path: root.clone(),
                read_only: false,
                id: None,
                root: true,
                rate_limit: Default::default(),
            });
        }
        Ok(LinuxVmConfig {
            kernel,
            initrd,
            cmdline,
            vcpus: self.vcpus,
            mem_size: self.mem,
            timeout,
            disks,
            nets: self.nets.clone(),
            vsock: self.vsock.clone(),
            shares: self.shares.clone(),
            verbose: self.verbose,
            seccomp: !self.no_seccomp,
            console: crate::vmm::linux::Output::Stdout,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub command: SandboxCommand,
}

/// What a process in a container runs, and as whom.
#[derive(Debug, clap::Args)]
pub struct ProcessFlags {
    /// KEY=VALUE (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (absolute)
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// UID[:GID]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Return once it started (a container's output goes to its log)
    #[arg(short, long)]
    pub detach: bool,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl ProcessFlags {
    fn process(&self) -> Result<crate::agent::ProcessSpec, Error> {
        Ok(crate::agent::ProcessSpec {
            args: self.command.clone(),
            env: self.env.clone(),
            cwd: self.workdir.clone(),
            user: self
                .user
                .as_deref()
                .map(uvm_protocol::parse_user)
                .transpose()
                .map_err(Error::Usage)?,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Boot a sandbox in the background; returns once its guest's agent answers
    Create {
        name: String,
        /// Number of vCPUs
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Guest memory, shared by its containers (e.g. 512M, 1G)
        #[arg(long, default_value = "512M", value_parser = parse_size)]
        mem: u64,
        /// none (loopback only) or bridge (uvm's bridge: an address, NAT)
        #[arg(long, default_value = "none", value_name = "none|bridge")]
        net: String,
        /// Publish a port of the sandbox: HOST:CONTAINER[/udp] (repeatable;
        /// needs --net bridge; every container shares the sandbox's ports)
        #[arg(short = 'p', long = "publish", value_name = "HOST:CONTAINER")]
        publish: Vec<String>,
    },
    /// Create and start a container in a sandbox; attached (the default),
    /// uvm's stdin, stdout and stderr are its own and uvm exits with its status
    Run {
        sandbox: String,
        /// The container's name [default: a random id, printed with -d]
        #[arg(long)]
        name: Option<String>,
        /// Host folder that is its root (read-only over virtio-fs, an
        /// overlay in the guest takes its writes) [default: uvm's busybox root]
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// Its hostname [default: its name]
        #[arg(long)]
        hostname: Option<String>,
        /// Remove it once it ended (attached runs)
        #[arg(long)]
        rm: bool,
        #[command(flatten)]
        process: ProcessFlags,
    },
    /// Run a process in a container of a sandbox
    Exec {
        sandbox: String,
        container: String,
        /// The process's id [default: exec-<pid of this uvm>]
        #[arg(long = "exec-id")]
        exec_id: Option<String>,
        #[command(flatten)]
        process: ProcessFlags,
    },
    /// List a sandbox's containers
    Ps {
        sandbox: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a detached container's output (stdout and stderr as they came)
    Logs {
        sandbox: String,
        container: String,
        /// Keep printing until the container and everything holding its
        /// output ended
        #[arg(short, long)]
        follow: bool,
    },
    /// Send a signal (default KILL) to a container's first process, or all
    Kill {
        sandbox: String,
        container: String,
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(long)]
        all: bool,
    },
    /// Wait for a container to end; exits with its status
    Wait { sandbox: String, container: String },
    /// Remove a sandbox (its guest powers off; nothing of it is left), or
    /// with CONTAINER one container (refused while it runs, unless --force)
    Rm {
        sandbox: String,
        container: Option<String>,
        #[arg(short, long)]
        force: bool,
    },
    /// List the sandboxes
    Ls,
    /// A sandbox's configuration, state, address and containers, as JSON
    Inspect { sandbox: String },
}

/// `uvm gc`: sandboxes whose VMM is gone, then what killed runs left.
pub fn gc() -> i32 {
    for r in crate::sandbox::gc() {
        println!("removed {r}");
    }
    crate::run::gc()
}

/// Runs `uvm sandbox`; returns uvm's exit status.
pub fn sandbox_main(args: &SandboxArgs) -> i32 {
    match sandbox(&args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uvm sandbox: {e}");
            crate::vmm::shutdown::EXIT_UVM_ERROR
        }
    }
}

fn sandbox(cmd: &SandboxCommand) -> Result<i32, Error> {
    use crate::sandbox::{self as sb, Attach, Sandbox};
    if matches!(
        cmd,
        SandboxCommand::Ps { .. }
            | SandboxCommand::Logs { .. }
            | SandboxCommand::Ls
            | SandboxCommand::Inspect { .. }
    ) {
        uvm_runtime::quiet_on_closed_stdout();
    }
    match cmd {
        SandboxCommand::Create {
            name,
            vcpus,
            mem,
            net,
            publish,
        } => {
            let bridge = match net.as_str() {
                "none" => false,
                "bridge" => true,
                n => return Err(Error::Usage(format!("--net {n}: none or bridge"))),
            };
            let cfg = sb::SandboxConfig {
                name: name.clone(),
                vcpus: *vcpus,
                mem: *mem,
                bridge,
                publish: publish.clone(),
            };
            sb::create(&cfg)?;
            println!("{name}");
            Ok(0)
        }
        SandboxCommand::Run {
            sandbox,
            name,
            rootfs,
            hostname,
            rm,
            process,
        } => {
            let id = name
                .clone()
                .unwrap_or_else(|| uvm_runtime::state::new_id()[..12].to_string());
            let rootfs = match rootfs {
                Some(r) => r.clone(),
                None => crate::run::image::default_rootfs(&crate::run::cache_dir(None))?,
            };
            let c = sb::ContainerConfig {
                id: id.clone(),
                rootfs,
                hostname: hostname.clone(),
                process: process.process()?,
            };
            // Bad flags are refused before the sandbox is looked at.
            sb::check_container(&c)?;
            let s = Sandbox::open(sandbox)?;
            if process.detach {
                s.run(&c, Attach::Detached)?;
                println!("{id}");
                return Ok(0);
            }
            let status = s.run(&c, Attach::Terminal)?;
            if *rm {
                s.remove_container(&id, true)?;
            }
            Ok(status)
        }
        SandboxCommand::Exec {
            sandbox,
            container,
            exec_id,
            process,
        } => {
            let p = process.process()?;
            let s = Sandbox::open(sandbox)?;
            let exec_id = exec_id
                .clone()
                .unwrap_or_else(|| format!("exec-{}", std::process::id()));
            match s.exec(container, &exec_id, &p, process.detach) {
                Ok(status) => {
                    if process.detach {
                        println!("{exec_id}");
                    }
                    Ok(status)
                }
                // As a shell says it, with its status.
                Err(Error::NoCommand { status, msg }) => {
                    eprintln!("uvm sandbox: {msg}");
                    Ok(status)
                }
                Err(e) => Err(e),
            }
        }
        SandboxCommand::Ps { sandbox, json } => {
            let s = Sandbox::open(sandbox)?;
            let v = s.inspect()?;
            let list = v["containers"].as_array().cloned().unwrap_or_default();
            if *json {
                println!("{}", serde_json::Value::Array(list));
                return Ok(0);
            }
            println!(
                "{:<16} {:<8} {:>7}  {:<16} COMMAND",
                "CONTAINER", "STATUS", "PID", "EXECS"
            );
            // A JSON array of strings, joined.
            let joined = |v: &serde_json::Value, sep: &str| {
                let words: Vec<&str> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str())
                    .collect();
                words.join(sep)
            };
            for c in list {
                let execs = joined(&c["exec_ids"], ",");
                println!(
                    "{:<16} {:<8} {:>7}  {:<16} {}",
                    c["id"].as_str().unwrap_or("?"),
                    c["status"].as_str().unwrap_or("?"),
                    c["pid"].as_i64().unwrap_or(0),
                    if execs.is_empty() { "-" } else { &execs },
                    joined(&c["command"], " ")
                );
            }
            Ok(0)
        }
        SandboxCommand::Logs {
            sandbox,
            container,
            follow,
        } => {
            let s = Sandbox::open(sandbox)?;
            sb::logs::show(&s, container, *follow, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        SandboxCommand::Kill {
            sandbox,
            container,
            signal,
            all,
        } => {
            let sig = uvm_runtime::cli::parse_signal(signal)?;
            Sandbox::open(sandbox)?.kill(container, sig as i32, *all)?;
            Ok(0)
        }
        SandboxCommand::Wait { sandbox, container } => Sandbox::open(sandbox)?.wait(container),
        SandboxCommand::Rm {
            sandbox,
            container: Some(c),
            force,
        } => {
            Sandbox::open(sandbox)?.remove_container(c, *force)?;
            Ok(0)
        }
        SandboxCommand::Rm {
            sandbox,
            container: None,
            ..
        } => {
            sb::remove(sandbox)?;
            Ok(0)
        }
        SandboxCommand::Ls => {
            println!(
                "{:<16} {:<8} {:>7}  {:<15} CONTAINERS",
                "SANDBOX", "STATUS", "PID", "ADDRESS"
            );
            for s in sb::list() {
                let v = s.inspect()?;
                println!(
                    "{:<16} {:<8} {:>7}  {:<15} {}",
                    s.name(),
                    v["status"].as_str().unwrap_or("?"),
                    v["pid"].as_i64().unwrap_or(0),
                    v["network"]["ip"].as_str().unwrap_or("-"),
                    v["containers"].as_array().map_or(0, Vec::len)
                );
            }
            Ok(0)
        }
        SandboxCommand::Inspect { sandbox } => {
            let v = Sandbox::open(sandbox)?.inspect()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| Error::Agent(e.to_string()))?
            );
            Ok(0)
        }
    }
}

pub fn run_check() -> i32 {
    if check::report() {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("uvm").chain(args.iter().copied()))
    }

    #[test]
    fn boot_flags_and_command() {
        let cli = parse(&[
            "boot",
            "--vcpus",
            "2",
            "--mem",
            "3.5G",
            "--kernel",
            "/k",
            "--cmdline",
            "foo=1",
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .unwrap();
        let Command::Boot(b) = cli.command else {
            panic!()
        };
        assert_eq!(b.vcpus, 2);
        assert_eq!(b.mem, 7 << 29);
        assert_eq!(b.command, ["sh", "-c", "exit 7"]);
        let cfg = b.to_config().unwrap();
        assert_eq!(cfg.kernel, PathBuf::from("/k"));
        assert_eq!(cfg.initrd, None);
        assert_eq!(cfg.cmdline[0], DEFAULT_CMDLINE);
        assert!(
            !cfg.cmdline.iter().any(|w| w.contains("uvm.cmd=")),
            "the command goes over vsock"
        );
        assert_eq!(
            cfg.cmdline.last().map(String::as_str),
            Some("foo=1"),
            "user's command line goes last, verbatim"
        );
    }

    #[test]
    fn defaults() {
        let Command::Boot(b) = parse(&["boot", "--kernel", "/k"]).unwrap().command else {
            panic!()
        };
        assert_eq!((b.vcpus, b.mem), (1, 512 << 20));
        assert!(b.command.is_empty());
        assert!(b.to_config().unwrap().seccomp, "seccomp is on by default");
        let Command::Boot(b) = parse(&["boot", "--kernel", "/k", "--no-seccomp"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(!b.to_config().unwrap().seccomp);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert!(parse(&["boot", "--mem", "12XB"]).is_err());
        assert!(parse(&["boot", "--vcpus", "-1"]).is_err());
        assert!(parse(&["boot", "--vcpus", "many"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        let Command::Boot(b) = parse(&["boot", "--kernel", "/k", "--timeout=-3"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(b.to_config().is_err());
    }

    #[test]
    fn device_flags() {
        let Command::Boot(b) = parse(&[
            "boot",
            "--kernel",
            "/k",
            "--disk",
            "/a.img,ro,id=data",
            "--disk",
            "/b.img",
            "--root",
            "/r.img",
            "--net",
            "tap=t0,mac=52:54:00:00:00:01",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let cfg = b.to_config().unwrap();
        assert_eq!(cfg.disks.len(), 3);
        assert!(cfg.disks[0].read_only && !cfg.disks[1].read_only);
        assert!(cfg.disks[2].root);
        assert_eq!(cfg.nets[0].tap, "t0");
        assert!(cfg.disks[0].rate_limit.is_unlimited());
        assert!(parse(&["boot", "--disk", "/a,bogus"]).is_err());
        let Command::Boot(b) = parse(&[
            "boot",
            "--kernel",
            "/k",
            "--disk",
            "/a.img,bw=4M,iops=200",
            "--net",
            "tap=t0,rx_bw=1M",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let cfg = b.to_config().unwrap();
        let bw = cfg.disks[0].rate_limit.bandwidth.unwrap();
        assert_eq!((bw.size, bw.one_time_burst), (4 << 20, 0));
        assert_eq!(cfg.disks[0].rate_limit.ops.unwrap().size, 200);
        assert!(cfg.nets[0].tx_rate_limit.is_unlimited());
        assert_eq!(cfg.nets[0].rx_rate_limit.bandwidth.unwrap().size, 1 << 20);
        for bad in ["/a,bw=0", "/a,burst=1M", "/a,iops=x"] {
            let e = parse(&["boot", "--disk", bad]).unwrap_err().to_string();
            assert!(e.contains("bw=") || e.contains("iops="), "{e}");
        }
        assert!(parse(&["boot", "--net", "mac=52:54:00:00:00:01"]).is_err());
    }

    #[test]
    fn agent_flag() {
        let boot = |args: &[&str]| {
            let mut all = vec!["boot", "--kernel", "/k"];
            all.extend_from_slice(args);
            match parse(&all).map(|c| c.command) {
                Ok(Command::Boot(b)) => b.to_config().map_err(|e| e.to_string()),
                Ok(_) => panic!(),
                Err(e) => Err(e.to_string()),
            }
        };
        let cfg = boot(&["--vsock", "cid=3,uds=/tmp/v.sock", "--agent"]).unwrap();
        assert!(cfg.cmdline.iter().any(|w| w == "uvm.agent=1024"));
        assert!(boot(&["--agent"])
            .unwrap_err()
            .contains("--agent needs --vsock"));
        assert!(boot(&["--vsock", "cid=3,uds=/tmp/v.sock", "--agent", "--", "true"]).is_err());
    }

    #[test]
    fn bridge_networking_flags() {
        let boot = |args: &[&str]| {
            let mut all = vec!["boot", "--kernel", "/k"];
            all.extend_from_slice(args);
            match parse(&all).map(|c| c.command) {
                Ok(Command::Boot(b)) => Ok(b),
                Ok(_) => panic!(),
                Err(e) => Err(e.to_string()),
            }
        };
        let b = boot(&["--net", "bridge,mac=52:54:00:00:00:02", "-p", "8080:80"]).unwrap();
        assert!(b.nets[0].bridge && b.nets[0].tap.is_empty());
        assert_eq!(b.publish, ["8080:80"]);
        let e = boot(&["--net", "bridge,tap=t0"]).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        // Refused before any lease is taken (no root, no bridge needed).
        let lease = |b: BootArgs| {
            let mut cfg = b.to_config().unwrap();
            crate::run::net::lease_for_boot(&mut cfg, &b.publish)
                .err()
                .unwrap()
                .to_string()
        };
        let e = lease(boot(&["-p", "8080:80"]).unwrap());
        assert!(e.contains("add --net bridge"), "{e}");
        let e = lease(boot(&["--net", "bridge", "--net", "bridge"]).unwrap());
        assert!(e.contains("given twice"), "{e}");
        let b = boot(&["--net", "tap=t0"]).unwrap();
        let mut cfg = b.to_config().unwrap();
        assert!(crate::run::net::lease_for_boot(&mut cfg, &[])
            .unwrap()
            .is_none());
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = parse(&["boot", "--help"]).unwrap_err().to_string();
        assert!(help.contains("124") && help.contains("125"), "{help}");
        let seccomp = crate::vmm::seccomp::EXIT_SECCOMP.to_string();
        assert!(
            help.contains(&seccomp) && help.contains("--no-seccomp"),
            "{help}"
        );
        assert!(RUN_EXIT_CODES.contains(&seccomp));
    }
}
