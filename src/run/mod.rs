//! `uvm run`: one workload, four isolation levels. A [`WorkloadSpec`] says
//! what to run and with which limits; each level's module runs it its own
//! way (a host process, a container on the host, a microVM, a container in
//! a microVM) and gives back the workload's exit status. A flag a level
//! cannot honour is refused up front, naming the level.

pub mod container;
pub mod image;
pub mod net;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

use uvm_runtime::cli::WorkloadFlags;
use uvm_runtime::limits;

use crate::error::Error;

/// The isolation levels, weakest first (the order tables and plots use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isolation {
    Process,
    Container,
    Vm,
    VmContainer,
}

impl Isolation {
    pub const ALL: [Isolation; 4] = [
        Isolation::Process,
        Isolation::Container,
        Isolation::Vm,
        Isolation::VmContainer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Container => "container",
            Isolation::Vm => "vm",
            Isolation::VmContainer => "vm+container",
        }
    }

    pub fn in_vm(self) -> bool {
        matches!(self, Isolation::Vm | Isolation::VmContainer)
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Isolation::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                format!("unknown isolation level {s:?}: expected process, container, vm or vm+container")
            })
    }
}

/// `uvm run`'s workload: the runtime's shared workload flags, and what only
/// `uvm run` has (the default image, a timeout, the guest's console).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Root filesystem directory [default: a busybox image uvm builds and caches]
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// At the container level: an image of `uvm image ls` instead of a root
    /// folder (its layers, Env, Entrypoint, Cmd, WorkingDir and User)
    #[arg(long, value_name = "NAME[:TAG]", conflicts_with = "rootfs")]
    pub image: Option<String>,
    #[command(flatten)]
    pub flags: WorkloadFlags,
    /// Stop the workload after this many seconds (exit status 124)
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Where uvm keeps images it builds [default: $UVM_CACHE_DIR, else /var/cache/uvm/run]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Show the guest's console (kernel and init messages) on stderr
    #[arg(long)]
    pub verbose: bool,
    /// At the vm levels: run the VMM's threads without their seccomp
    /// filters (for debugging a thread that a filter stopped, status 159)
    #[arg(long)]
    pub no_seccomp: bool,
    /// The command and its arguments (after --)
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl WorkloadArgs {
    pub fn new(command: Vec<String>) -> Self {
        WorkloadArgs {
            rootfs: None,
            image: None,
            flags: WorkloadFlags::default(),
            timeout: None,
            cache_dir: None,
            verbose: false,
            no_seccomp: false,
            command,
        }
    }
}

/// Which levels a command covers, and the cache its images live in
/// (`uvm probe`, `uvm bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct LevelSelection {
    /// Levels, comma-separated [default: all four]
    #[arg(
        long = "isolation",
        short = 'i',
        value_delimiter = ',',
        value_name = "LEVELS"
    )]
    pub levels: Vec<Isolation>,
    /// Where uvm keeps images it builds [default: $UVM_CACHE_DIR, else /var/cache/uvm/run]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl LevelSelection {
    pub fn levels(&self) -> Vec<Isolation> {
        if self.levels.is_empty() {
            Isolation::ALL.to_vec()
        } else {
            self.levels.clone()
        }
    }
    pub fn cache(&self) -> PathBuf {
        cache_dir(self.cache_dir.as_ref())
    }
}

/// `uvm run`'s own arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// process, container, vm or vm+container
    #[arg(long, short = 'i', default_value = "container", value_name = "LEVEL")]
    pub isolation: Isolation,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Network of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// The level's own default: the host's network for a process, none else.
    Default,
    None,
    Bridge,
}

impl WorkloadSpec {
    /// On uvm's bridge: asked for, or implied by `-p` (except at the process
    /// level, which publishes through [`proxy`] on the host's own network).
    pub fn bridged(&self) -> bool {
        self.net == Net::Bridge || (self.net == Net::Default && !self.publish.is_empty())
    }
}

/// A workload, checked: what every level is given.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub argv: Vec<String>,
    /// `--rootfs` as given; [`image::default_rootfs`] when absent.
    pub rootfs: Option<PathBuf>,
    /// `--image` (the container level only).
    pub image: Option<String>,
    pub name: String,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<(u32, u32)>,
    /// Bytes.
    pub memory: Option<u64>,
    /// As given (e.g. "0.5"), and in CPUs.
    pub cpus: Option<(String, f64)>,
    pub pids_limit: Option<i64>,
    pub net: Net,
    pub publish: Vec<String>,
    pub volumes: Vec<String>,
    pub timeout: Option<Duration>,
    pub cache_dir: PathBuf,
    pub verbose: bool,
    /// The VMM's seccomp filters (vm levels); off with `--no-seccomp`.
    pub seccomp: bool,
}

/// The cache folder: `--cache-dir`, `$UVM_CACHE_DIR`, else /var/cache/uvm/run.
pub fn cache_dir(flag: Option<&PathBuf>) -> PathBuf {
    flag.cloned()
        .or_else(|| std::env::var_os("UVM_CACHE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/cache/uvm/run"))
}

impl WorkloadArgs {
    /// Checks the flags that do not depend on the level.
    pub fn to_spec(&self) -> Result<WorkloadSpec, Error> {
        let f = &self.flags;
        let bad =
            |flag: &str, value: &str, why: &str| Error::Usage(format!("{flag} {value}: {why}"));
        let memory = f
            .memory
            .as_deref()
            .map(|m| limits::parse_memory("--memory", m))
            .transpose()
            .map_err(|e| Error::Usage(e.to_string()))?;
        let cpus = match f.cpus.as_deref() {
            None => None,
            Some(c) => {
                limits::parse_cpus(c, limits::host_cpus())
                    .map_err(|e| Error::Usage(e.to_string()))?;
                let f: f64 = c
                    .trim()
                    .parse()
                    .map_err(|_| bad("--cpus", c, "not a number"))?;
                Some((c.trim().to_string(), f))
            }
        };
        let pids_limit = f
            .pids_limit
            .as_deref()
            .map(limits::parse_pids)
            .transpose()
            .map_err(|e| Error::Usage(e.to_string()))?;
        let net = match f.net.as_deref() {
            None => Net::Default,
            Some("none") => Net::None,
            Some("bridge") => Net::Bridge,
            Some(n) => return Err(bad("--net", n, "expected none or bridge")),
        };
        if net == Net::None && !f.publish.is_empty() {
            return Err(Error::Usage(
                "-p needs a network: drop --net none (or use --net bridge)".into(),
            ));
        }
        if let Some(e) = f
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(bad("-e", e, "expected KEY=VALUE"));
        }
        let user = f
            .user
            .as_deref()
            .map(|u| uvm_protocol::parse_user(u).map_err(|e| Error::Usage(format!("--user: {e}"))))
            .transpose()?;
        if let Some(w) = &f.workdir {
            if !w.starts_with('/') {
                return Err(bad("--workdir", w, "must be an absolute path"));
            }
        }
        let timeout = match self.timeout {
            Some(t) if !(t > 0.0 && t.is_finite()) => {
                return Err(bad(
                    "--timeout",
                    &t.to_string(),
                    "must be a positive number of seconds",
                ))
            }
            t => t.map(Duration::from_secs_f64),
        };
        let name = match &f.name {
            Some(n) => {
                let ok = !n.is_empty()
                    && n.len() <= 63
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && !n.starts_with(['-', '.']);
                if !ok {
                    return Err(bad("--name", n, "1 to 63 letters, digits, '-', '_' or '.'"));
                }
                n.clone()
            }
            None => format!("run-{}", std::process::id()),
        };
        if let Some(r) = &self.rootfs {
            if !r.is_dir() {
                return Err(Error::Usage(format!(
                    "--rootfs {}: no such directory",
                    r.display()
                )));
            }
        }
        Ok(WorkloadSpec {
            argv: self.command.clone(),
            rootfs: self.rootfs.clone(),
            image: self.image.clone(),
            name,
            hostname: f.hostname.clone(),
            env: f.env.clone(),
            workdir: f.workdir.clone(),
            user,
            memory,
            cpus,
            pids_limit,
            net,
            publish: f.publish.clone(),
            volumes: f.volume.clone(),
            timeout,
            cache_dir: cache_dir(self.cache_dir.as_ref()),
            verbose: self.verbose,
            seccomp: !self.no_seccomp,
        })
    }
}

/// Status for a workload stopped by `--timeout`, the same at every level.
pub const EXIT_TIMEOUT: i32 = 124;

/// Waits for `child`; past `timeout`, `expire` stops it (the child must
/// then exit) and the status is [`EXIT_TIMEOUT`].
pub(crate) fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Option<Duration>,
    what: &str,
    expire: impl FnOnce() + Send + 'static,
) -> Result<i32, Error> {
    use std::os::unix::process::ExitStatusExt;
    use std::sync::mpsc;
    let (done, timer) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || match timeout {
        Some(t) if timer.recv_timeout(t) == Err(mpsc::RecvTimeoutError::Timeout) => {
            expire();
            true
        }
        _ => false,
    });
    let status = child
        .wait()
        .map_err(|e| Error::Io(format!("waiting for the {what}"), e))?;
    let _ = done.send(());
    if watchdog.join().unwrap_or(false) {
        eprintln!(
            "uvm run: --timeout {:.1} s expired: the {what} was killed",
            timeout.unwrap_or_default().as_secs_f64()
        );
        return Ok(EXIT_TIMEOUT);
    }
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255))
}

/// A flag the level cannot honour.
pub(crate) fn refuse(level: Isolation, flag: &str, why: &str) -> Error {
    Error::Unsupported {
        level: level.name(),
        flag: flag.to_string(),
        why: why.to_string(),
    }
}

/// Runs the workload at `level`; the result is its exit status.
pub fn run(level: Isolation, spec: &WorkloadSpec) -> Result<i32, Error> {
    if !spec.seccomp && !level.in_vm() {
        return Err(refuse(
            level,
            "--no-seccomp",
            "it turns off the VMM's own filters; for the workload's, use uvm container run --seccomp unconfined",
        ));
    }
    if spec.image.is_some() && level != Isolation::Container {
        return Err(refuse(
            level,
            "--image",
            "images live in the host runtime's store, which only the container level uses (give --rootfs DIR)",
        ));
    }
    match level {
        Isolation::Process => process::run(spec),
        Isolation::Container => container::run(spec),
        Isolation::Vm | Isolation::VmContainer => vm::run(level, spec),
    }
}

/// `uvm gc`: the VM folders of dead runs, then the container runtime's own
/// gc (which also takes the VMs' network leases, and the bridge once
/// unused). Prints what it removed.
pub fn gc() -> i32 {
    let dead = vm::gc()
        .into_iter()
        .chain(crate::jail::gc())
        .chain(crate::vmm::virtiofsd::gc());
    for r in dead {
        println!("removed {r}");
    }
    let rt = uvm_runtime::Runtime::new(uvm_runtime::state::Paths::new(
        uvm_runtime::state::default_root(),
    ));
    match rt.gc() {
        Ok(removed) => {
            for r in removed {
                println!("removed {r}");
            }
            0
        }
        Err(e) => {
            eprintln!("uvm gc: {e}");
            crate::vmm::shutdown::EXIT_UVM_ERROR
        }
    }
}

/// `uvm run`: checks, runs, and turns errors into uvm's exit status.
pub fn main(args: &RunArgs) -> i32 {
    match args
        .workload
        .to_spec()
        .and_then(|s| run(args.isolation, &s))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uvm run: {e}");
            crate::vmm::shutdown::EXIT_UVM_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn spec(args: &[&str]) -> Result<(Isolation, WorkloadSpec), String> {
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let s = t.run.workload.to_spec().map_err(|e| e.to_string())?;
        Ok((t.run.isolation, s))
    }

    #[test]
    fn levels_parse_by_name() {
        for l in Isolation::ALL {
            assert_eq!(l.name().parse::<Isolation>().unwrap(), l);
        }
        assert!("kata"
            .parse::<Isolation>()
            .unwrap_err()
            .contains("unknown isolation level"));
        assert!(spec(&["-i", "kata", "--", "true"]).is_err());
    }

    #[test]
    fn flags_become_one_spec() {
        let (l, s) = spec(&[
            "-i",
            "vm+container",
            "--memory",
            "64m",
            "--cpus",
            "1.5",
            "--pids-limit",
            "20",
            "-e",
            "A=1",
            "-u",
            "1000:100",
            "-w",
            "/tmp",
            "--timeout",
            "2.5",
            "--name",
            "web",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        assert_eq!(l, Isolation::VmContainer);
        assert_eq!(s.memory, Some(64 << 20));
        assert_eq!(s.cpus.as_ref().map(|c| c.1), Some(1.5));
        assert_eq!(s.pids_limit, Some(20));
        assert_eq!(s.user, Some((1000, 100)));
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(s.name, "web");
        assert_eq!(s.argv, ["sh", "-c", "exit 3"]);
        assert_eq!(s.net, Net::Default);
        assert!(s.seccomp, "the VMM's filters are on by default");
    }

    #[test]
    fn no_seccomp_is_for_the_vm_levels() {
        let (_, s) = spec(&["-i", "vm", "--no-seccomp", "--", "true"]).unwrap();
        assert!(!s.seccomp);
        for level in [Isolation::Process, Isolation::Container] {
            let e = run(level, &s).unwrap_err().to_string();
            assert!(
                e.contains(level.name()) && e.contains("--no-seccomp"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn bad_flags_are_one_line_errors() {
        for (args, want) in [
            (&["--memory", "lots", "--", "true"][..], "--memory"),
            (&["--cpus=-1", "--", "true"][..], "--cpus"),
            (&["--pids-limit", "0", "--", "true"][..], "--pids-limit"),
            (&["--net", "carrier-pigeon", "--", "true"][..], "--net"),
            (
                &["--net", "none", "-p", "80:80", "--", "true"][..],
                "-p needs a network",
            ),
            (&["-e", "NOVALUE", "--", "true"][..], "-e"),
            (&["-u", "bob", "--", "true"][..], "--user"),
            (&["-w", "rel", "--", "true"][..], "--workdir"),
            (&["--timeout", "0", "--", "true"][..], "--timeout"),
            (&["--name", "a/b", "--", "true"][..], "--name"),
            (
                &["--rootfs", "/nonexistent-rootfs", "--", "true"][..],
                "no such directory",
            ),
        ] {
            let e = spec(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.trim().contains('\n'), "{args:?}: {e}");
        }
        assert!(spec(&["--memory", "64m"]).is_err(), "a command is required");
    }
}
