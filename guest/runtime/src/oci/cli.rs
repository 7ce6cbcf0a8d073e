//! `uvm oci ...`: runc's command line over the runtime. Errors print one
//! line to stderr (and to `--log`, as JSON lines with `--log-format json`)
//! and exit 1, as runc; `run` and `exec` exit with the process's status.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::signal::{self, SigmaskHow};
use nix::unistd::Pid;
use oci_spec::runtime::{Hook, Spec};

use super::state::{self as ostate, Meta, OciState, Status};
use crate::error::{Error, Result};
use crate::runtime::{DetachOptions, ExecOptions, Runtime};
use crate::spec::{RunOptions, Source};
use crate::state::{Paths, State};

#[derive(Debug, clap::Args)]
pub struct OciArgs {
    /// Directory for container state.
    #[arg(long, global = true, value_name = "DIR", default_value = super::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Also write errors and warnings to this file.
    #[arg(long, global = true, value_name = "PATH")]
    pub log: Option<PathBuf>,
    /// Format of --log: text or json (one JSON object a line).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    pub log_format: String,
    /// Accepted for runc compatibility (no extra output).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Refused: uvm manages cgroups through cgroupfs only.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (rootless is detected).
    #[arg(long, global = true, value_name = "true|false|auto")]
    pub rootless: Option<String>,
    /// Parent cgroup of the containers' cgroups.
    #[arg(long, global = true, default_value = "uvm-oci", value_name = "PATH")]
    pub cgroup_parent: String,
    #[command(subcommand)]
    pub command: OciCommand,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The bundle: config.json and the root filesystem it names.
    #[arg(long, short = 'b', default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    /// A Unix socket that receives the terminal's master end (process.terminal).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Write the container's PID 1 (as this host sees it) here.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (pivot_root is always used).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility (no session keyring is made).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Refused unless 0: extra descriptors are not passed on.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum OciCommand {
    /// Create a container from a bundle; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default TERM) to a container's PID 1, or with --all
    /// to all its processes.
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Remove a stopped (or created) container; --force kills a running one.
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Create, start and wait for a container; exits with its status.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once started, leaving the container running.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a process in a running container; exits with its status.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        /// table or json (a list of PIDs).
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        id: String,
        /// Accepted for runc compatibility (ps options).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print what this runtime supports, as JSON.
    Features,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// A JSON file with the process (OCI `process`): args, env, cwd, user.
    #[arg(long, short = 'p', value_name = "PATH")]
    pub process: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long, short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(long, short = 'u', value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Return once the process runs.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Write the process's PID here.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Refused: exec with a terminal is not supported.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Refused with --tty (see there).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Where errors and warnings go besides stderr.
struct Log {
    path: Option<PathBuf>,
    json: bool,
}

impl Log {
    fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.path else { return };
        let time = ostate::now();
        let line = match self.json {
            true => serde_json::json!({"level": level, "msg": msg, "time": time}).to_string(),
            false => format!("time={time:?} level={level} msg={msg:?}"),
        };
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }

    fn warn(&self, msg: &str) {
        eprintln!("uvm oci: warning: {msg}");
        self.write("warning", msg);
    }
}

/// runc's id rule: letters, digits, `_+-.`, not `.` or `..`.
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(
            "container id",
            id,
            "letters, digits and _+-. only",
        )),
    }
}

/// The container `id`, with the runc-style error when it does not exist.
fn load(rt: &Runtime, id: &str) -> Result<State> {
    check_id(id)?;
    rt.state(id).map_err(|e| match e {
        Error::NoSuchContainer(_) => Error::NoSuchId(id.to_string()),
        e => e,
    })
}

fn hooks_of(spec: &Spec, pick: fn(&oci_spec::runtime::Hooks) -> &Option<Vec<Hook>>) -> Vec<Hook> {
    spec.hooks()
        .as_ref()
        .and_then(|h| pick(h).clone())
        .unwrap_or_default()
}

/// The container's final spec, as saved at create.
fn saved_spec(rt: &Runtime, st: &State) -> Option<Spec> {
    Spec::load(st.dir(&rt.paths).join("config.json")).ok()
}

/// `linux.cgroupsPath` relative to the hierarchies' roots: an absolute one
/// from the root, a relative one under this process's own cgroup (as runc).
fn cgroup_path(p: &Path) -> Result<PathBuf> {
    let bad = |why: &str| Error::invalid("linux.cgroupsPath", &p.display().to_string(), why);
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(bad("no .. components"));
    }
    if let Ok(rel) = p.strip_prefix("/") {
        return Ok(rel.to_path_buf());
    }
    // Our own: the memory controller's line on v1, the unified one on v2.
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let line = |pick: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            pick(ctrls).then(|| path.to_string())
        })
    };
    let mine = line(&|c| c.split(',').any(|x| x == "memory"))
        .or_else(|| line(&|c| c.is_empty()))
        .unwrap_or_else(|| "/".into());
    Ok(Path::new(mine.trim_start_matches('/')).join(p))
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    // Atomically, so a reader never sees it half written (as runc).
    let tmp = path.with_extension("uvm-tmp");
    fs::write(&tmp, pid.to_string())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("writing pid file {}", path.display()), e))
}

fn create(rt: &Runtime, a: &CreateArgs) -> Result<State> {
    check_id(&a.id)?;
    if rt.state(&a.id).is_ok() {
        return Err(Error::IdInUse(a.id.clone()));
    }
    if a.preserve_fds != 0 {
        return Err(Error::Refused("--preserve-fds is not supported".into()));
    }
    let bundle = fs::canonicalize(&a.bundle).map_err(|e| Error::Bundle {
        path: a.bundle.clone(),
        msg: e.to_string(),
    })?;
    let config = bundle.join("config.json");
    if !config.is_file() {
        return Err(Error::Bundle {
            path: bundle,
            msg: "JSON specification file config.json not found".into(),
        });
    }
    let spec = Spec::load(&config).map_err(|e| Error::Bundle {
        path: config.clone(),
        msg: e.to_string(),
    })?;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let console =
        match (&a.console_socket, terminal) {
            (Some(p), true) => Some(UnixStream::connect(p).map_err(|e| {
                Error::io(format!("connecting to --console-socket {}", p.display()), e)
            })?),
            (None, true) => return Err(Error::Refused(
                "process.terminal is true: a --console-socket is needed to receive the terminal"
                    .into(),
            )),
            (Some(_), false) => {
                return Err(Error::Refused(
                    "--console-socket given but process.terminal is false".into(),
                ))
            }
            (None, false) => None,
        };
    let mut opts = RunOptions::new(Source::Bundle(bundle.clone()), Vec::new());
    opts.name = Some(a.id.clone());
    opts.cgroup_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_deref())
        .map(cgroup_path)
        .transpose()?;
    let detach = DetachOptions {
        console: console.as_ref().map(|c| c.as_fd()),
    };
    let meta = Meta {
        bundle,
        annotations: spec.annotations().clone().unwrap_or_default(),
        created: ostate::now(),
    };
    let st = rt.create_detached(&opts, &detach, |st| {
        meta.save(&st.dir(&rt.paths))?;
        let creating = OciState::of(&rt.paths, st, Some(Status::Creating)).for_hooks();
        // prestart (deprecated) runs where createRuntime does, before it.
        super::hooks::run_all(&hooks_of(&spec, |h| h.prestart()), &creating, "prestart")?;
        let create_runtime = hooks_of(&spec, |h| h.create_runtime());
        super::hooks::run_all(&create_runtime, &creating, "createRuntime")?;
        let created = OciState::of(&rt.paths, st, Some(Status::Created)).for_hooks();
        Ok((creating, created))
    })?;
    if let Some(p) = &a.pid_file {
        write_pid_file(p, st.pid.unwrap_or(0))?;
    }
    Ok(st)
}

fn start(rt: &Runtime, id: &str, log: &Log) -> Result<()> {
    let st = load(rt, id)?;
    match ostate::status(&rt.paths, &st, Meta::load(&st.dir(&rt.paths)).as_ref()) {
        Status::Created => {}
        Status::Stopped => {
            return Err(Error::Refused(
                "cannot start a container that has stopped".into(),
            ))
        }
        _ => {
            return Err(Error::Refused(
                "cannot start an already running container".into(),
            ))
        }
    }
    rt.start_detached(id)?;
    if let Some(spec) = saved_spec(rt, &st) {
        let running = OciState::of(&rt.paths, &st, Some(Status::Running)).for_hooks();
        if let Err(e) =
            super::hooks::run_all(&hooks_of(&spec, |h| h.poststart()), &running, "poststart")
        {
            log.warn(&e.to_string());
        }
    }
    Ok(())
}

fn delete(rt: &Runtime, id: &str, force: bool, log: &Log) -> Result<()> {
    let st = match load(rt, id) {
        Err(Error::NoSuchId(_)) if force => return Ok(()),
        r => r?,
    };
    let spec = saved_spec(rt, &st);
    let stopped = OciState::of(&rt.paths, &st, Some(Status::Stopped));
    rt.delete(id, force)?;
    if let Some(spec) = spec {
        let poststop = hooks_of(&spec, |h| h.poststop());
        if let Err(e) = super::hooks::run_all(&poststop, &stopped.for_hooks(), "poststop") {
            log.warn(&e.to_string());
        }
    }
    Ok(())
}

fn kill(rt: &Runtime, id: &str, sig: &str, all: bool) -> Result<()> {
    let st = load(rt, id)?;
    let sig = crate::cli::parse_signal(sig)?;
    if !st.running() {
        return Err(Error::Refused("container not running".into()));
    }
    if all {
        for pid in st.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default() {
            let _ = signal::kill(Pid::from_raw(pid), sig);
        }
        return Ok(());
    }
    rt.kill(id, sig).map_err(|e| match e {
        Error::NotRunning(_) => Error::Refused("container not running".into()),
        e => e,
    })
}

fn run(rt: &Runtime, a: &CreateArgs, detach: bool, keep: bool, log: &Log) -> Result<i32> {
    let sigs = crate::cli::forwarded_signals();
    if !detach {
        sigs.thread_block()
            .map_err(|e| Error::sys("blocking signals", e))?;
    }
    let st = create(rt, a)?;
    if let Err(e) = start(rt, &a.id, log) {
        let _ = delete(rt, &a.id, true, log);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let pid = Pid::from_raw(st.pid.unwrap_or(0));
    let kind = crate::process::wait_forwarding(pid, &sigs)?;
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigs), None);
    if !keep {
        delete(rt, &a.id, true, log)?;
    }
    Ok(kind.code())
}

fn parse_user(s: &str) -> Result<(u32, u32)> {
    let (u, g) = s.split_once(':').unwrap_or((s, "0"));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(Error::invalid("--user", s, "numeric UID[:GID]")),
    }
}

fn exec(rt: &Runtime, a: ExecArgs) -> Result<i32> {
    if a.tty || a.console_socket.is_some() {
        return Err(Error::Refused(
            "exec with a terminal (--tty) is not supported".into(),
        ));
    }
    let st = load(rt, &a.id)?;
    if !st.running() {
        return Err(Error::Refused("cannot exec in a stopped container".into()));
    }
    let mut opts = ExecOptions {
        args: a.command,
        env: a.env,
        cwd: a.cwd,
        user: a.user.as_deref().map(parse_user).transpose()?,
        ..ExecOptions::default()
    };
    if let Some(path) = &a.process {
        let text =
            fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let p: oci_spec::runtime::Process = serde_json::from_slice(&text)
            .map_err(|e| Error::invalid("--process", &path.display().to_string(), e.to_string()))?;
        opts.args = p.args().clone().unwrap_or_default();
        opts.env = p.env().clone().unwrap_or_default();
        opts.cwd = Some(p.cwd().display().to_string());
        opts.user = Some((p.user().uid(), p.user().gid()));
    }
    if let Some(e) = opts.env.iter().find(|e| !e.contains('=')) {
        return Err(Error::invalid("--env", e, "expected KEY=VALUE"));
    }
    if a.detach {
        crate::process::become_subreaper()?;
        let pid = rt.exec_start(&a.id, &opts)?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid.as_raw())?;
        }
        return Ok(0);
    }
    let sigs = crate::cli::forwarded_signals();
    sigs.thread_block()
        .map_err(|e| Error::sys("blocking signals", e))?;
    crate::process::become_subreaper()?;
    let pid = rt.exec_start(&a.id, &opts)?;
    if let Some(p) = &a.pid_file {
        write_pid_file(p, pid.as_raw())?;
    }
    let kind = crate::process::wait_forwarding(pid, &sigs)?;
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigs), None);
    Ok(kind.code())
}

fn ps(rt: &Runtime, id: &str, format: &str) -> Result<()> {
    let st = load(rt, id)?;
    let pids = match st.running() {
        true => st.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default(),
        false => Vec::new(),
    };
    match format {
        "json" => println!("{}", serde_json::to_string(&pids).unwrap_or_default()),
        "table" => {
            println!("PID\tCMD");
            for pid in pids {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                println!("{pid}\t{}", cmd.join(" "));
            }
        }
        other => return Err(Error::invalid("--format", other, "table or json")),
    }
    Ok(())
}

fn features() -> serde_json::Value {
    let caps: Vec<String> = caps::all()
        .into_iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": super::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "relatime",
            "strictatime", "private", "rprivate", "slave", "rslave", "shared", "rshared"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"io.github.uvm.runtime": "uvm"},
    })
}

fn dispatch(args: OciArgs, log: &Log) -> Result<i32> {
    if args.systemd_cgroup {
        return Err(Error::Refused(
            "--systemd-cgroup is not supported: uvm manages cgroups through cgroupfs".into(),
        ));
    }
    let mut rt = Runtime::new(Paths::new(&args.root));
    rt.cgroup_parent = args.cgroup_parent;
    if matches!(
        args.command,
        OciCommand::State { .. } | OciCommand::Ps { .. } | OciCommand::Features
    ) {
        crate::quiet_on_closed_stdout();
    }
    match args.command {
        OciCommand::Create(a) => create(&rt, &a).map(|_| 0),
        OciCommand::Start { id } => start(&rt, &id, log).map(|()| 0),
        OciCommand::State { id } => {
            let st = load(&rt, &id)?;
            let s = OciState::of(&rt.paths, &st, None);
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            Ok(0)
        }
        OciCommand::Kill { all, id, signal } => kill(&rt, &id, &signal, all).map(|()| 0),
        OciCommand::Delete { force, id } => delete(&rt, &id, force, log).map(|()| 0),
        OciCommand::Run {
            create,
            detach,
            keep,
        } => run(&rt, &create, detach, keep, log),
        OciCommand::Exec(a) => exec(&rt, a),
        OciCommand::Ps { format, id, .. } => ps(&rt, &id, &format).map(|()| 0),
        OciCommand::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&features()).unwrap_or_default()
            );
            Ok(0)
        }
    }
}

/// Runs a `uvm oci` command; returns the exit status (1 on errors, as runc).
pub fn main(args: OciArgs) -> i32 {
    let log = Log {
        path: args.log.clone(),
        json: args.log_format == "json",
    };
    if !matches!(args.log_format.as_str(), "text" | "json") {
        eprintln!(
            "uvm oci: invalid --log-format {:?}: text or json",
            args.log_format
        );
        return 1;
    }
    match dispatch(args, &log) {
        Ok(code) => code,
        Err(e) => {
            let msg = e.to_string();
            eprintln!("uvm oci: {msg}");
            log.write("error", &msg);
            1
        }
    }
}

/// runc's command line on its own, for the binary invoked as
/// [`super::RUNTIME_NAME`].
#[derive(Debug, clap::Parser)]
#[command(name = super::RUNTIME_NAME, version, about = "uvm's container runtime behind runc's command line")]
pub struct OciCli {
    #[command(flatten)]
    pub args: OciArgs,
}

/// Whether `argv0` names the runtime (the binary was invoked through a
/// link called [`super::RUNTIME_NAME`]).
pub fn invoked_as_runtime(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0).file_name() == Some(std::ffi::OsStr::new(super::RUNTIME_NAME))
}
