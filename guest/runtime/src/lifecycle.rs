//! Detached containers and their lifecycle: `run -d` hands the container to
//! a monitor process (the role of conmon or containerd's shim) that
//! outlives the command, keeps the workload's output in a log, reaps it,
//! records how it ended and restarts it as `--restart` says; `stop`,
//! `start`, `rm`, `logs` and `inspect` work from what it records.
//!
//! A detached container's record lives in `ROOT/lifecycle/NAME/`:
//! `record.json` (its flags, status, exit code, restart count), `log`
//! (stdout and stderr), `overlay/` (upper and work directories, kept from
//! one start to the next) and, while a `stop` is under way, `stopping`.
//! Its running state (pid, cgroup, network) is the runtime's usual one in
//! `ROOT/containers/NAME/`, removed when it ends.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{self, ForkResult};
use oci_spec::runtime::Mount;
use serde::{Deserialize, Serialize};

use crate::cli::{forwarded_signals, run_options, RunArgs};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::spec::RunOptions;
use crate::state::{self, Paths, State};

/// The flags of `uvm container run` this module adds.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
pub struct LifecycleFlags {
    /// Run in the background under a monitor process; print the name. The
    /// output goes to a log (`uvm container logs NAME`)
    #[arg(short = 'd', long)]
    #[serde(default)]
    pub detach: bool,
    /// Relay the caller's stdin to the container's terminal (with -t)
    #[arg(short = 'i', long)]
    #[serde(default)]
    pub interactive: bool,
    /// Give the container a terminal (a pty with the caller's window size),
    /// its PID 1's controlling terminal
    #[arg(short = 't', long)]
    #[serde(default)]
    pub tty: bool,
    /// Mount a tmpfs at PATH, with mount options such as size=64m,mode=1777
    /// (repeatable; default nosuid,nodev,noexec)
    #[arg(long, value_name = "PATH[:OPTIONS]")]
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// Restart policy of a detached container: no, or on-failure[:N] (up
    /// to N restarts after a non-zero exit; without N, no limit)
    #[arg(long, value_name = "POLICY")]
    #[serde(default)]
    pub restart: Option<String>,
}

/// A `--tmpfs PATH[:OPTIONS]` mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    pub path: String,
    pub options: Vec<String>,
}

impl FromStr for Tmpfs {
    type Err = Error;
    fn from_str(s: &str) -> Result<Tmpfs> {
        let bad = |why: &str| Error::invalid("--tmpfs", s, why.to_string());
        let (path, opts) = s.split_once(':').unwrap_or((s, ""));
        if !path.starts_with('/') || path == "/" || path.split('/').any(|c| c == "..") {
            return Err(bad("PATH must be absolute, not / and without '..'"));
        }
        let mut options = Vec::new();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = o.split_once('=').unwrap_or((o, ""));
            let ok = match key {
                "size" => {
                    let digits = value.trim_end_matches(['k', 'm', 'g', 'K', 'M', 'G', '%']);
                    !digits.is_empty()
                        && digits.bytes().all(|b| b.is_ascii_digit())
                        && value.len() - digits.len() <= 1
                }
                "nr_inodes" | "uid" | "gid" => {
                    !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())
                }
                "mode" => !value.is_empty() && value.bytes().all(|b| (b'0'..=b'7').contains(&b)),
                "ro" | "rw" | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" => {
                    value.is_empty()
                }
                _ => false,
            };
            if !ok {
                return Err(bad(&format!(
                    "unknown or malformed option {o:?} (size=N[k|m|g|%], mode=OCTAL, \
                     nr_inodes=N, uid=N, gid=N, ro, rw, [no]exec, [no]suid, [no]dev)"
                )));
            }
            options.push(o.to_string());
        }
        for (on, off) in [("exec", "noexec"), ("suid", "nosuid"), ("dev", "nodev")] {
            if !options.iter().any(|o| o == on || o == off) {
                options.push(off.to_string());
            }
        }
        Ok(Tmpfs {
            path: path.to_string(),
            options,
        })
    }
}

impl Tmpfs {
    /// The OCI mount.
    pub fn mount(&self) -> Mount {
        let mut m = Mount::default();
        m.set_destination(PathBuf::from(&self.path));
        m.set_typ(Some("tmpfs".into()));
        m.set_source(Some("tmpfs".into()));
        m.set_options(Some(self.options.clone()));
        m
    }
}

/// `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Restart {
    #[default]
    No,
    /// Restart after a non-zero exit, at most this many times (`None`: always).
    OnFailure(Option<u32>),
}

impl FromStr for Restart {
    type Err = Error;
    fn from_str(s: &str) -> Result<Restart> {
        let bad = || Error::invalid("--restart", s, "expected no or on-failure[:N] (N >= 1)");
        match s.split_once(':') {
            None if s == "no" => Ok(Restart::No),
            None if s == "on-failure" => Ok(Restart::OnFailure(None)),
            Some(("on-failure", n)) => match n.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Restart::OnFailure(Some(n))),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Restart::No => f.write_str("no"),
            Restart::OnFailure(None) => f.write_str("on-failure"),
            Restart::OnFailure(Some(n)) => write!(f, "on-failure:{n}"),
        }
    }
}

impl Restart {
    fn again(self, code: i32, restarts: u32) -> bool {
        match self {
            Restart::No => false,
            Restart::OnFailure(max) => code != 0 && max.is_none_or(|m| restarts < m),
        }
    }
}

/// Into `o`: the flags that change the container itself.
pub(crate) fn apply(flags: &LifecycleFlags, o: &mut RunOptions) -> Result<()> {
    o.tmpfs = flags
        .tmpfs
        .iter()
        .map(|t| t.parse())
        .collect::<Result<_>>()?;
    let restart: Restart = flags
        .restart
        .as_deref()
        .map_or(Ok(Restart::No), str::parse)?;
    if restart != Restart::No && !flags.detach {
        return Err(Error::invalid(
            "--restart",
            flags.restart.as_deref().unwrap_or_default(),
            "a restart policy needs -d (a detached container's monitor restarts it)",
        ));
    }
    if flags.detach && flags.tty {
        return Err(Error::invalid(
            "-t",
            "",
            "a terminal needs the container attached: leave out -d or -t",
        ));
    }
    o.terminal = flags.tty;
    Ok(())
}

/// What the monitor records about a detached container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub created: u64,
    /// Where `run -d` ran (relative host paths in the flags are from here).
    pub cwd: PathBuf,
    pub run: RunArgs,
    pub restart: Restart,
    /// The monitor, while it supervises the container (and between restarts).
    pub monitor_pid: i32,
    pub monitor_start: u64,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub restart_count: u32,
    pub started: Option<u64>,
    pub finished: Option<u64>,
    /// Why the last start failed.
    pub error: Option<String>,
}

fn dir(paths: &Paths, name: &str) -> PathBuf {
    paths.root.join("lifecycle").join(name)
}

impl Record {
    pub fn load(paths: &Paths, name: &str) -> Result<Record> {
        let path = dir(paths, name).join("record.json");
        let data = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoSuchContainer(name.to_string()),
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        serde_json::from_slice(&data).map_err(|e| Error::State {
            name: name.to_string(),
            msg: format!("{}: {e}", path.display()),
        })
    }

    /// As [`Record::load`], with whether its monitor is alive, the two
    /// consistent: a record read while the monitor ran, found dead just
    /// after, is read again (the monitor records the exit before it ends).
    pub fn load_settled(paths: &Paths, name: &str) -> Result<(Record, bool)> {
        let rec = Record::load(paths, name)?;
        match rec.active() {
            true => Ok((rec, true)),
            false => Record::load(paths, name).map(|r| (r, false)),
        }
    }

    fn save(&self, paths: &Paths) -> Result<()> {
        let path = dir(paths, &self.name).join("record.json");
        let data = serde_json::to_vec_pretty(self).map_err(|e| Error::State {
            name: self.name.clone(),
            msg: e.to_string(),
        })?;
        state::write_atomic(&path, &data)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Whether its monitor is alive (the container runs, or is about to be
    /// restarted).
    pub fn active(&self) -> bool {
        state::proc_alive(self.monitor_pid, self.monitor_start)
    }

    /// The run options of each start: the record's flags, its kept overlay.
    fn options(&self, paths: &Paths) -> Result<RunOptions> {
        let mut o = run_options(self.run.clone())?;
        o.overlay_dir = Some(dir(paths, &self.name).join("overlay"));
        o.keep = true;
        Ok(o)
    }
}

/// `uvm container run -d`: starts the monitor, returns once the workload
/// runs (printing its name) or with the error that stopped it.
pub fn run_detached(rt: &Runtime, mut args: RunArgs) -> Result<i32> {
    // Every flag checked here, before anything is made.
    let _ = run_options(args.clone())?;
    let restart = args
        .lifecycle
        .restart
        .as_deref()
        .map_or(Ok(Restart::No), str::parse)?;
    let name = match &args.workload.name {
        Some(n) => n.clone(),
        None => format!("uvm-{}", &state::new_id()[..8]),
    };
    crate::spec::validate_name(&name)?;
    args.workload.name = Some(name.clone());
    let cwd = std::env::current_dir().map_err(|e| Error::io("reading the current folder", e))?;
    rt.paths.ensure_root()?;
    let d = dir(&rt.paths, &name);
    fs::create_dir_all(d.parent().unwrap_or(&rt.paths.root))
        .map_err(|e| Error::io(format!("creating {}", rt.paths.root.display()), e))?;
    if rt.state(&name).is_ok_and(|s| s.runtime_alive()) {
        return Err(Error::NameInUse(name));
    }
    fs::create_dir(&d).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::NameInUse(name.clone()),
        _ => Error::io(format!("creating {}", d.display()), e),
    })?;
    let rec = Record {
        name: name.clone(),
        created: state::now(),
        cwd,
        run: args,
        restart,
        monitor_pid: 0,
        monitor_start: 0,
        pid: None,
        exit_code: None,
        restart_count: 0,
        started: None,
        finished: None,
        error: None,
    };
    let r = rec.save(&rt.paths).and_then(|()| spawn_monitor(rt, &name));
    match r {
        Ok(()) => {
            println!("{name}");
            Ok(0)
        }
        Err(e) => {
            crate::runtime::remove_tree(&d);
            Err(e)
        }
    }
}

/// Forks the monitor of `name` (its record saved) and waits until it
/// reports the container started, or why not (then it has exited).
fn spawn_monitor(rt: &Runtime, name: &str) -> Result<()> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir(&rt.paths, name).join("log"))
        .map_err(|e| Error::io("opening the container's log", e))?;
    let null = fs::File::open("/dev/null").map_err(|e| Error::io("opening /dev/null", e))?;
    let (rd, wr) =
        unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    // SAFETY: the CLI is single-threaded here; the child runs the monitor
    // (this crate's code) and ends in _exit.
    match unsafe { unistd::fork() }.map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => {
            drop(rd);
            let _ = unistd::setsid();
            for (fd, target) in [
                (null.as_raw_fd(), 0),
                (log.as_raw_fd(), 1),
                (log.as_raw_fd(), 2),
            ] {
                // SAFETY: dup2 onto the standard descriptors, replaced on
                // purpose: the monitor and the workload write to the log
                // and hold nothing of the caller's.
                unsafe { libc::dup2(fd, target) };
            }
            drop((log, null));
            monitor(rt, name, Some(wr));
            // SAFETY: ends the forked monitor without the caller's
            // destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = Vec::new();
            let _ = fs::File::from(rd).read_to_end(&mut msg);
            if msg == b"R" {
                return Ok(());
            }
            let _ = nix::sys::wait::waitpid(child, None);
            Err(match msg.get(1) {
                None => Error::Setup("the container's monitor died while starting it".into()),
                Some(b'S') => Error::Refused(String::from_utf8_lossy(&msg[2..]).into_owned()),
                Some(_) => crate::process::decode_err(&msg),
            })
        }
    }
}

/// The monitor: starts the container, waits for it, records its exit and
/// restarts it as the policy says, until it stays ended. `report` gets
/// the first start's outcome.
fn monitor(rt: &Runtime, name: &str, mut report: Option<OwnedFd>) {
    let sigs = forwarded_signals();
    let _ = sigs.thread_block();
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let stopping = dir(&rt.paths, name).join("stopping");
    loop {
        let Ok(mut rec) = Record::load(&rt.paths, name) else {
            return;
        };
        rec.monitor_pid = me;
        rec.monitor_start = state::proc_start_time(me).unwrap_or(0);
        let _ = rec.save(&rt.paths);
        let _ = std::env::set_current_dir(&rec.cwd);
        let started = rec
            .options(&rt.paths)
            .and_then(|o| rt.create(&o).map(|c| (c, o)));
        // Holding the caller's folder would keep it busy (unmountable).
        let _ = std::env::set_current_dir("/");
        let code = match started {
            Err(e) => {
                if let Some(r) = report.take() {
                    let _ = unistd::write(&r, &crate::process::encode_err(&e));
                }
                eprintln!("uvm container: {name}: {e}");
                rec.error = Some(e.to_string());
                e.exit_code()
            }
            Ok((c, _opts)) => {
                rec.pid = Some(c.pid());
                rec.started = Some(state::now());
                rec.exit_code = None;
                rec.finished = None;
                rec.error = None;
                let _ = rec.save(&rt.paths);
                if let Some(r) = report.take() {
                    let _ = unistd::write(&r, b"R");
                }
                match c.wait_forwarding(&sigs) {
                    Ok(exit) => exit.code(),
                    Err(e) => {
                        rec.error = Some(e.to_string());
                        e.exit_code()
                    }
                }
            }
        };
        rec.pid = None;
        rec.exit_code = Some(code);
        rec.finished = Some(state::now());
        let again = !stopping.exists() && rec.restart.again(code, rec.restart_count);
        if !again {
            // The record shows the monitor gone from here on.
            rec.monitor_pid = 0;
            let _ = rec.save(&rt.paths);
            return;
        }
        rec.restart_count += 1;
        let _ = rec.save(&rt.paths);
        // Docker's back-off: 100 ms, doubled at each restart, at most 10 s.
        let shift = rec.restart_count.saturating_sub(1).min(7);
        std::thread::sleep(Duration::from_millis(100 << shift).min(Duration::from_secs(10)));
        if stopping.exists() {
            rec.monitor_pid = 0;
            let _ = rec.save(&rt.paths);
            return;
        }
    }
}

fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !done() {
        if t.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// `uvm container stop NAME -t SECS`: SIGTERM to PID 1, SIGKILL after the
/// grace period; returns once it is dead and, detached, its monitor has
/// recorded the exit and ended (no restart follows a stop).
pub fn stop(rt: &Runtime, name: &str, grace: Duration) -> Result<()> {
    let rec = Record::load(&rt.paths, name).ok();
    let st = match rt.state(name) {
        Ok(st) => Some(st),
        Err(Error::NoSuchContainer(_)) if rec.is_some() => None,
        Err(e) => return Err(e),
    };
    let live = st.as_ref().is_some_and(State::running);
    if !live && !rec.as_ref().is_some_and(Record::active) {
        return Err(Error::NotRunning(name.to_string()));
    }
    if rec.is_some() {
        let flag = dir(&rt.paths, name).join("stopping");
        fs::write(&flag, b"").map_err(|e| Error::io(format!("writing {}", flag.display()), e))?;
    }
    drop(st);
    // Until its monitor has ended: a restart that began before the stop
    // was seen is stopped too.
    let t = Instant::now();
    loop {
        if let Some(st) = rt.state(name).ok().filter(State::running) {
            terminate(rt, name, &st, grace)?;
        }
        let Some(rec) = rec.as_ref().filter(|r| r.active()) else {
            break;
        };
        if t.elapsed() > Duration::from_secs(15) + grace {
            return Err(Error::Refused(format!(
                "the monitor of container {name:?} (pid {}) did not end",
                rec.monitor_pid
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = fs::remove_file(dir(&rt.paths, name).join("stopping"));
    Ok(())
}

/// SIGTERM, SIGKILL after `grace`; returns once its runtime has reaped it
/// and removed its running state.
fn terminate(rt: &Runtime, name: &str, st: &State, grace: Duration) -> Result<()> {
    let _ = rt.kill(name, Signal::SIGTERM);
    if !wait_until(grace, || !st.running()) {
        let _ = rt.kill(name, Signal::SIGKILL);
        if !wait_until(Duration::from_secs(10), || !st.running()) {
            return Err(Error::Refused(format!(
                "container {name:?} did not die of SIGKILL within 10 s"
            )));
        }
    }
    wait_until(Duration::from_secs(10), || {
        !st.dir(&rt.paths).join("state.json").exists()
    });
    Ok(())
}

/// `uvm container start NAME`: starts a stopped detached container again,
/// with the same flags and its overlay's upper directory as it was left.
pub fn start(rt: &Runtime, name: &str) -> Result<()> {
    let rec = Record::load(&rt.paths, name)?;
    if rec.active() {
        return Err(Error::Refused(format!(
            "container {name:?} is already running"
        )));
    }
    // A container of that name whose runtime died goes first; a running
    // one (not detached) keeps the name.
    rt.sweep();
    if rt.state(name).is_ok() {
        return Err(Error::NameInUse(name.to_string()));
    }
    let _ = fs::remove_file(dir(&rt.paths, name).join("stopping"));
    spawn_monitor(rt, name)
}

/// `uvm container rm NAME [-f]`: removes a stopped container's record, log
/// and overlay; with `force` a running one is killed first.
pub fn rm(rt: &Runtime, name: &str, force: bool) -> Result<()> {
    rt.sweep();
    let rec = Record::load(&rt.paths, name).ok();
    let running =
        rec.as_ref().is_some_and(Record::active) || rt.state(name).is_ok_and(|s| s.running());
    if rec.is_none() && rt.state(name).is_err() {
        return Err(Error::NoSuchContainer(name.to_string()));
    }
    if running {
        if !force {
            return Err(Error::Refused(format!(
                "container {name:?} is running: stop it first, or use rm -f"
            )));
        }
        stop(rt, name, Duration::ZERO)?;
    }
    crate::runtime::remove_tree(&dir(&rt.paths, name));
    Ok(())
}

/// `uvm container logs NAME [-f]`: the log so far; following, until the
/// container ends for good (its monitor exits).
pub fn logs(rt: &Runtime, name: &str, follow: bool) -> Result<()> {
    let rec = Record::load(&rt.paths, name).map_err(|e| match e {
        Error::NoSuchContainer(_) if rt.state(name).is_ok() => Error::Refused(format!(
            "container {name:?} was not started with -d: its output goes to its runtime's terminal"
        )),
        e => e,
    })?;
    let path = dir(&rt.paths, name).join("log");
    let mut f =
        fs::File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 65536];
    let mut copy = |f: &mut fs::File| -> Result<()> {
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if n == 0 {
                return out.flush().map_err(|e| Error::io("writing the log", e));
            }
            if out.write_all(&buf[..n]).is_err() {
                // The reader went away (a pipe closed): nothing left to do.
                return Ok(());
            }
        }
    };
    copy(&mut f)?;
    if follow {
        while rec.active() {
            std::thread::sleep(Duration::from_millis(100));
            copy(&mut f)?;
        }
        copy(&mut f)?;
    }
    Ok(())
}

/// `uvm container inspect NAME`: one JSON object: the flags it was run
/// with, status, pid, exit code, restarts, addresses, limits, cgroup.
pub fn inspect(rt: &Runtime, name: &str) -> Result<serde_json::Value> {
    use serde_json::json;
    let (rec, active) = match Record::load_settled(&rt.paths, name) {
        Ok((r, a)) => (Some(r), a),
        Err(_) => (None, false),
    };
    let st = rt.state(name).ok();
    if rec.is_none() && st.is_none() {
        return Err(Error::NoSuchContainer(name.to_string()));
    }
    let running = st.as_ref().is_some_and(State::running);
    let status = match (&st, &rec) {
        (Some(s), _) if running => s.status(),
        (_, Some(_)) if active => "restarting",
        (Some(s), None) => s.status(),
        _ => "exited",
    };
    let mut v = json!({
        "name": name,
        "status": status,
        "running": running,
        "detached": rec.is_some(),
        "pid": st.as_ref().filter(|_| running).and_then(|s| s.pid),
    });
    if let Some(st) = st.as_ref().filter(|_| running) {
        let mut addresses = Vec::new();
        if let Some(n) = &st.net {
            addresses.push(format!("{}/{}", n.ip, n.prefix));
        }
        match &st.netns.link {
            Some(crate::netns::Link::Veth { ip, prefix, .. })
            | Some(crate::netns::Link::Macvlan { ip, prefix, .. }) => {
                addresses.push(format!("{ip}/{prefix}"))
            }
            None => {}
        }
        v["id"] = json!(st.id);
        v["network"] = json!({
            "mode": st.net_mode.to_string(),
            "addresses": addresses,
            "ports": st.net.as_ref().map(|n| n.ports.iter()
                .map(|p| format!("{}:{}/{}", p.host, p.container, p.proto)).collect::<Vec<_>>()),
            "netns": st.netns.registered,
        });
        v["cgroup"] = match &st.cgroup {
            Some(cg) => json!({
                "version": cg.version,
                "path": cg.rel,
                "dirs": cg.dirs.iter().map(|(_, d)| d).collect::<Vec<_>>(),
            }),
            None => serde_json::Value::Null,
        };
        v["rootfs"] = json!(st.rootfs);
        v["command"] = json!(st.args);
        v["overlay"] = json!(st.overlay);
    }
    if let Some(rec) = &rec {
        let d = dir(&rt.paths, name);
        v["created"] = json!(rec.created);
        v["started"] = json!(rec.started);
        v["finished"] = json!(rec.finished.filter(|_| !running));
        v["exit_code"] = json!(rec.exit_code.filter(|_| !running));
        v["error"] = json!(rec.error);
        v["restart_policy"] = json!(rec.restart.to_string());
        v["restart_count"] = json!(rec.restart_count);
        v["monitor_pid"] = json!(Some(rec.monitor_pid).filter(|_| active));
        v["log_path"] = json!(d.join("log"));
        v["record_dir"] = json!(d);
        v["config"] = serde_json::to_value(&rec.run).unwrap_or_default();
        if let Ok(o) = rec.options(&rt.paths) {
            v["limits"] = json!({
                "memory": o.memory,
                "memory_swap": o.memory_swap,
                "memory_reservation": o.memory_reservation,
                "cpu_quota_us": o.cpu_quota,
                "cpu_shares": o.cpu_shares,
                "cpuset_cpus": o.cpuset_cpus,
                "cpuset_mems": o.cpuset_mems,
                "blkio_weight": o.blkio_weight,
                "pids_limit": o.pids_limit,
            });
        }
    }
    Ok(v)
}

/// Detached containers whose monitor ended (stopped or exited), for `ps`.
pub fn stopped(paths: &Paths) -> Vec<Record> {
    let Ok(rd) = fs::read_dir(paths.root.join("lifecycle")) else {
        return Vec::new();
    };
    let mut v: Vec<Record> = rd
        .flatten()
        .filter_map(|e| Record::load_settled(paths, &e.file_name().to_string_lossy()).ok())
        .filter(|(_, active)| !active)
        .map(|(r, _)| r)
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_parsing() {
        let t: Tmpfs = "/scratch:size=1m,mode=1777".parse().unwrap();
        assert_eq!(t.path, "/scratch");
        assert_eq!(
            t.options,
            ["size=1m", "mode=1777", "noexec", "nosuid", "nodev"]
        );
        let t: Tmpfs = "/x:exec".parse().unwrap();
        assert_eq!(t.options, ["exec", "nosuid", "nodev"]);
        for bad in [
            "relative",
            "/",
            "/a/../b",
            "/x:size=",
            "/x:size=1q",
            "/x:mode=9",
            "/x:bogus",
        ] {
            let e = bad.parse::<Tmpfs>().unwrap_err().to_string();
            assert!(e.starts_with("invalid --tmpfs"), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn restart_policy() {
        assert_eq!("no".parse::<Restart>().unwrap(), Restart::No);
        assert_eq!(
            "on-failure".parse::<Restart>().unwrap(),
            Restart::OnFailure(None)
        );
        let two: Restart = "on-failure:2".parse().unwrap();
        assert_eq!(two, Restart::OnFailure(Some(2)));
        assert_eq!(two.to_string(), "on-failure:2");
        assert!(two.again(1, 0) && two.again(1, 1) && !two.again(1, 2) && !two.again(0, 0));
        for bad in ["always", "on-failure:0", "on-failure:x", "on-failure:", ""] {
            assert!(bad.parse::<Restart>().is_err(), "{bad}");
        }
    }
}
