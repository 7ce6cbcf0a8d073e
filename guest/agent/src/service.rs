//! The agent's state and its ttrpc service: containers (uvm's runtime),
//! processes (a container's own, exec'd ones, and the VM's), their exits
//! (recorded by the reaper) and their not-yet-attached stdio ends.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use uvm_agent_api::agent::{
    CheckResponse, ContainerInfo, ContainerRef, ContainerStats, CreateContainerRequest, Empty,
    ExecProcessRequest, ListContainersResponse, ProcessRef, RemoveContainerRequest,
    ShutdownRequest, SignalProcessRequest, StartContainerRequest, Stdio as StdioReq,
    WaitProcessResponse,
};
use uvm_agent_api::{agent_ttrpc::AgentService, ttrpc, valid_id, Stream, StreamHeader};
use uvm_runtime::process::{ExitKind, Stdio};
use uvm_runtime::{Container, ExecOptions, RunOptions, Runtime, Source};

use crate::storage::Storages;
use crate::AgentError;

type Result<T> = std::result::Result<T, AgentError>;

/// Where the agent writes each container's bundle (its config.json).
const BUNDLES: &str = "/run/uvm-agent/bundles";
/// How long a forced removal waits for a killed container to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// What processes of the VM itself see as PATH.
const VM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// (container id, exec id); "" is a container's own process, or the VM.
type Key = (String, String);

struct Proc {
    pid: i32,
    exit: Option<ExitKind>,
    /// The agent's ends of the process's pipes, until a stdio connection
    /// takes them: stdin's write end, stdout's and stderr's read ends.
    streams: [Option<OwnedFd>; 3],
    /// The attached stdin connection, so CloseStdin can end it.
    stdin_conn: Option<OwnedFd>,
}

struct Ctr {
    container: Container,
    storages: Vec<String>,
    bundle: PathBuf,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Ctr>,
    procs: HashMap<Key, Proc>,
    storages: Storages,
    /// Bumped on every spawn: the reaper, idle without children, waits for it.
    spawned: u64,
    shutdown: Option<u8>,
}

pub struct Agent {
    rt: Runtime,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

/// The pipes for `want`: the child's three ends and the agent's.
fn make_stdio(want: Option<&StdioReq>) -> Result<(Stdio, [Option<OwnedFd>; 3])> {
    let null = |write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| AgentError::Setup(format!("opening /dev/null: {e}")))
    };
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| AgentError::Setup(format!("pipe: {e}")))
    };
    let (mut ours, mut theirs): ([Option<OwnedFd>; 3], Vec<OwnedFd>) = ([None, None, None], vec![]);
    let flags = [
        want.is_some_and(|w| w.stdin),
        want.is_some_and(|w| w.stdout),
        want.is_some_and(|w| w.stderr),
    ];
    for (i, on) in flags.into_iter().enumerate() {
        match (i, on) {
            (0, true) => {
                let (r, w) = pipe()?;
                ours[0] = Some(w);
                theirs.push(r);
            }
            (_, true) => {
                let (r, w) = pipe()?;
                ours[i] = Some(r);
                theirs.push(w);
            }
            (0, false) => theirs.push(null(false)?),
            (_, false) => theirs.push(null(true)?),
        }
    }
    let mut it = theirs.into_iter();
    let (Some(a), Some(b), Some(c)) = (it.next(), it.next(), it.next()) else {
        unreachable!("three descriptors were made")
    };
    Ok((Stdio::new(a, b, c), ours))
}

fn check_id(what: &str, id: &str) -> Result<()> {
    if valid_id(id) && uvm_runtime::spec::validate_name(id).is_ok() {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "{what} {id:?}: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

fn exit_response(kind: ExitKind) -> WaitProcessResponse {
    let mut r = WaitProcessResponse::new();
    r.status = kind.code();
    if let ExitKind::Signal(s) = kind {
        r.signal = s;
    }
    r
}

fn signal_of(n: u32) -> Result<Signal> {
    i32::try_from(n)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or_else(|| AgentError::Invalid(format!("signal {n}: not a signal")))
}

impl Agent {
    pub fn new() -> Agent {
        let mut rt = Runtime::new(uvm_runtime::state::Paths::default());
        rt.cgroup_parent = "uvm-agent".into();
        Agent {
            rt,
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking request must not take the agent down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reaper's report: `pid` ended as `kind`.
    pub fn exited(&self, pid: i32, kind: ExitKind) {
        let mut g = self.lock();
        if let Some(p) = g
            .procs
            .values_mut()
            .find(|p| p.pid == pid && p.exit.is_none())
        {
            p.exit = Some(kind);
        }
        drop(g);
        self.changed.notify_all();
    }

    /// For the reaper when it has no child: returns after the next spawn
    /// or `timeout`.
    pub fn wait_for_children(&self, timeout: Duration) {
        let g = self.lock();
        let seen = g.spawned;
        let _ = self
            .changed
            .wait_timeout_while(g, timeout, |i| i.spawned == seen);
    }

    /// Blocks until the host asks for power-off; removes every container
    /// first, so the guest's filesystems are left clean.
    pub fn wait_shutdown(&self) -> u8 {
        let mut g = self.lock();
        while g.shutdown.is_none() {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        let status = g.shutdown.unwrap_or(0);
        let ids: Vec<String> = g.containers.keys().cloned().collect();
        drop(g);
        // The reply to Shutdown goes out before the agent goes.
        std::thread::sleep(Duration::from_millis(50));
        for id in ids {
            if let Err(e) = self.remove(&id, true) {
                crate::log(&format!("removing {id}: {e}"));
            }
        }
        nix::unistd::sync();
        status
    }

    /// Hands a stdio connection the agent's end of the stream it names.
    /// For stdin, `conn` is kept so that CloseStdin can end it.
    pub fn take_stream(&self, h: &StreamHeader, conn: Option<OwnedFd>) -> Result<OwnedFd> {
        let mut g = self.lock();
        let key = (h.container_id.clone(), h.exec_id.clone());
        let p = g.procs.get_mut(&key).ok_or_else(|| {
            AgentError::NotFound(format!("no process {:?}/{:?}", h.container_id, h.exec_id))
        })?;
        let i = match h.stream {
            Stream::Stdin => 0,
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        };
        let fd = p.streams[i].take().ok_or_else(|| {
            AgentError::State(format!(
                "{} of {:?}/{:?} was not asked for or is taken",
                h.stream.name(),
                h.container_id,
                h.exec_id
            ))
        })?;
        if i == 0 {
            p.stdin_conn = conn;
        }
        Ok(fd)
    }

    fn spawned(&self, g: &mut Inner) {
        g.spawned += 1;
        self.changed.notify_all();
    }

    fn create(&self, req: &CreateContainerRequest) -> Result<()> {
        let id = req.container_id.as_str();
        check_id("container", id)?;
        let mut spec: Spec = serde_json::from_slice(&req.oci_spec)
            .map_err(|e| AgentError::Invalid(format!("container {id}: the OCI spec: {e}")))?;
        if !req.rootfs.is_empty() {
            let mut root = spec.root().clone().unwrap_or_default();
            root.set_path(PathBuf::from(&req.rootfs));
            spec.set_root(Some(root));
        }
        // As Docker does: a container with a UTS namespace and no hostname
        // of its own is called by its id.
        let own_uts = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter().any(|n| {
                    n.typ() == oci_spec::runtime::LinuxNamespaceType::Uts && n.path().is_none()
                })
            });
        if spec.hostname().is_none() && own_uts {
            spec.set_hostname(Some(id.to_string()));
        }
        for s in &req.storages {
            crate::storage::check(s)?;
        }
        let mut g = self.lock();
        if g.containers.contains_key(id) {
            return Err(AgentError::Exists(format!("container {id} exists")));
        }
        let mut acquired = Vec::new();
        let made = (|| {
            for s in &req.storages {
                g.storages.acquire(s)?;
                acquired.push(s.mount_point.clone());
            }
            let bundle = PathBuf::from(BUNDLES).join(id);
            std::fs::create_dir_all(&bundle)
                .map_err(|e| AgentError::Setup(format!("creating {}: {e}", bundle.display())))?;
            let json = serde_json::to_vec(&spec).map_err(|e| AgentError::Setup(e.to_string()))?;
            std::fs::write(bundle.join("config.json"), json)
                .map_err(|e| AgentError::Setup(format!("writing the bundle of {id}: {e}")))?;
            let (stdio, ours) = make_stdio(req.stdio.as_ref())?;
            let mut opts = RunOptions::new(Source::Bundle(bundle.clone()), Vec::new());
            opts.name = Some(id.to_string());
            opts.overlay = Some(req.overlay);
            opts.stdio = Some(stdio);
            // The reaper waits for this lock before it records an exit, so
            // the process is in the table before its exit can be.
            let container = self.rt.create_stopped(&opts).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&bundle);
            })?;
            Ok((container, bundle, ours))
        })();
        let (container, bundle, ours) = match made {
            Ok(m) => m,
            Err(e) => {
                g.storages.release(&acquired);
                return Err(e);
            }
        };
        let pid = container.pid();
        g.procs.insert(
            (id.to_string(), String::new()),
            Proc {
                pid,
                exit: None,
                streams: ours,
                stdin_conn: None,
            },
        );
        g.containers.insert(
            id.to_string(),
            Ctr {
                container,
                storages: acquired,
                bundle,
            },
        );
        self.spawned(&mut g);
        Ok(())
    }

    fn start(&self, id: &str) -> Result<()> {
        let mut g = self.lock();
        let c = g
            .containers
            .get_mut(id)
            .ok_or_else(|| AgentError::NotFound(format!("no container {id}")))?;
        if !c.container.created() {
            return Err(AgentError::State(format!(
                "container {id} is already started"
            )));
        }
        c.container.start()?;
        Ok(())
    }

    fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let (cid, eid) = (req.container_id.as_str(), req.exec_id.as_str());
        check_id("exec", eid)?;
        let p = req
            .process
            .as_ref()
            .ok_or_else(|| AgentError::Invalid(format!("exec {eid}: no process")))?;
        if p.args.is_empty() || p.args[0].is_empty() {
            return Err(AgentError::Invalid(format!("exec {eid}: no command")));
        }
        if let Some(bad) = p.env.iter().find(|e| !e.contains('=')) {
            return Err(AgentError::Invalid(format!(
                "exec {eid}: {bad:?} is not KEY=VALUE"
            )));
        }
        if !p.cwd.is_empty() && !p.cwd.starts_with('/') {
            return Err(AgentError::Invalid(format!(
                "exec {eid}: cwd {:?} is not absolute",
                p.cwd
            )));
        }
        let user = match (p.uid, p.gid) {
            (u, g) if u < 0 && g < 0 => None,
            (u, g) => Some((
                u32::try_from(u)
                    .map_err(|_| AgentError::Invalid(format!("exec {eid}: uid {u}")))?,
                u32::try_from(if g < 0 { u } else { g })
                    .map_err(|_| AgentError::Invalid(format!("exec {eid}: gid {g}")))?,
            )),
        };
        let mut g = self.lock();
        let key = (cid.to_string(), eid.to_string());
        if g.procs.contains_key(&key) {
            return Err(AgentError::Exists(format!("process {cid:?}/{eid} exists")));
        }
        let (stdio, ours) = make_stdio(req.stdio.as_ref())?;
        let pid = if cid.is_empty() {
            spawn_in_vm(p, user, stdio)?
        } else {
            let c = g
                .containers
                .get(cid)
                .ok_or_else(|| AgentError::NotFound(format!("no container {cid}")))?;
            if c.container.created() {
                return Err(AgentError::State(format!("container {cid} is not started")));
            }
            let opts = ExecOptions {
                args: p.args.clone(),
                env: p.env.clone(),
                cwd: (!p.cwd.is_empty()).then(|| p.cwd.clone()),
                user,
                stdio: Some(stdio),
                ..ExecOptions::default()
            };
            self.rt.exec_start(cid, &opts)?.as_raw()
        };
        g.procs.insert(
            key,
            Proc {
                pid,
                exit: None,
                streams: ours,
                stdin_conn: None,
            },
        );
        self.spawned(&mut g);
        Ok(())
    }

    fn wait(&self, cid: &str, eid: &str) -> Result<ExitKind> {
        let key = (cid.to_string(), eid.to_string());
        let mut g = self.lock();
        loop {
            match g.procs.get(&key) {
                None => return Err(AgentError::NotFound(format!("no process {cid:?}/{eid:?}"))),
                Some(Proc { exit: Some(k), .. }) => return Ok(*k),
                Some(_) => g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn signal(&self, req: &SignalProcessRequest) -> Result<()> {
        let sig = signal_of(req.signal)?;
        let g = self.lock();
        let key = (req.container_id.clone(), req.exec_id.clone());
        let p = g.procs.get(&key).ok_or_else(|| {
            AgentError::NotFound(format!(
                "no process {:?}/{:?}",
                req.container_id, req.exec_id
            ))
        })?;
        if p.exit.is_some() {
            return Err(AgentError::State(format!(
                "process {:?}/{:?} has exited",
                req.container_id, req.exec_id
            )));
        }
        let mut pids = vec![p.pid];
        if req.all {
            let c = g.containers.get(&req.container_id).ok_or_else(|| {
                AgentError::Invalid("signalling all processes needs a container".into())
            })?;
            if let Some(cg) = &c.container.state().cgroup {
                for (_, dir) in &cg.dirs {
                    let procs =
                        std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
            pids.sort_unstable();
            pids.dedup();
        }
        for pid in pids {
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(AgentError::Setup(format!("kill {pid}: {e}"))),
            }
        }
        Ok(())
    }

    fn close_stdin(&self, cid: &str, eid: &str) -> Result<()> {
        let mut g = self.lock();
        let p = g
            .procs
            .get_mut(&(cid.to_string(), eid.to_string()))
            .ok_or_else(|| AgentError::NotFound(format!("no process {cid:?}/{eid:?}")))?;
        p.streams[0] = None;
        if let Some(conn) = p.stdin_conn.take() {
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&conn),
                nix::sys::socket::Shutdown::Read,
            );
        }
        Ok(())
    }

    fn remove_process(&self, cid: &str, eid: &str) -> Result<()> {
        if eid.is_empty() {
            return Err(AgentError::Invalid(format!(
                "the own process of container {cid:?} goes with the container"
            )));
        }
        let key = (cid.to_string(), eid.to_string());
        let mut g = self.lock();
        match g.procs.get(&key) {
            None => Err(AgentError::NotFound(format!("no process {cid:?}/{eid:?}"))),
            Some(Proc { exit: None, .. }) => Err(AgentError::State(format!(
                "process {cid:?}/{eid:?} is running: signal it first"
            ))),
            Some(_) => {
                g.procs.remove(&key);
                Ok(())
            }
        }
    }

    /// Removes a container: refused while it runs unless `force` (then
    /// killed); its cgroup, overlay, state, bundle and storages go.
    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let key = (id.to_string(), String::new());
        let mut g = self.lock();
        let (pid, exited) = g
            .procs
            .get(&key)
            .map(|p| (p.pid, p.exit.is_some()))
            .ok_or_else(|| AgentError::NotFound(format!("no container {id}")))?;
        if !exited {
            if !force {
                return Err(AgentError::State(format!(
                    "container {id} is running: kill it first, or force"
                )));
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + KILL_GRACE;
            while g.procs.get(&key).is_some_and(|p| p.exit.is_none()) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(AgentError::Setup(format!("container {id} did not die")));
                }
                g = self
                    .changed
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let kind = g
            .procs
            .get(&key)
            .and_then(|p| p.exit)
            .unwrap_or(ExitKind::Signal(9));
        let Some(c) = g.containers.remove(id) else {
            return Err(AgentError::NotFound(format!("no container {id}")));
        };
        g.procs.retain(|(cid, _), _| cid != id);
        c.container.reaped(kind);
        g.storages.release(&c.storages);
        let _ = std::fs::remove_dir_all(&c.bundle);
        Ok(())
    }

    /// The container must be the agent's: the runtime's other containers
    /// (`uvm-container` run by hand in the guest) are not the host's to touch.
    fn known(&self, id: &str) -> Result<()> {
        if self.lock().containers.contains_key(id) {
            Ok(())
        } else {
            Err(AgentError::NotFound(format!("no container {id}")))
        }
    }

    // Not under the agent's lock: a freeze waits for every task to stop.
    fn pause(&self, id: &str) -> Result<()> {
        self.known(id)?;
        Ok(self.rt.pause(id)?)
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.known(id)?;
        Ok(self.rt.resume(id)?)
    }

    fn stats(&self, id: &str) -> Result<ContainerStats> {
        self.known(id)?;
        let s = self.rt.stats(id)?;
        let mut r = ContainerStats::new();
        r.memory_usage = s.memory_usage.unwrap_or(0);
        r.memory_max_usage = s.memory_max_usage.unwrap_or(0);
        r.memory_limit = s.memory_limit.unwrap_or(0);
        r.oom_kills = s.oom_kills;
        r.cpu_usage_ns = s.cpu_usage_ns.unwrap_or(0);
        r.cpu_nr_periods = s.cpu_nr_periods.unwrap_or(0);
        r.cpu_nr_throttled = s.cpu_nr_throttled.unwrap_or(0);
        r.cpu_throttled_ns = s.cpu_throttled_ns.unwrap_or(0);
        r.pids_current = s.pids_current.unwrap_or(0);
        r.pids_limit = s.pids_limit.unwrap_or(0);
        Ok(r)
    }

    fn list(&self) -> ListContainersResponse {
        let g = self.lock();
        let mut out = ListContainersResponse::new();
        let mut ids: Vec<&String> = g.containers.keys().collect();
        ids.sort();
        for id in ids {
            let c = &g.containers[id];
            let init = g.procs.get(&(id.clone(), String::new()));
            let mut info = ContainerInfo::new();
            info.container_id = id.clone();
            let exited = init.is_none_or(|p| p.exit.is_some());
            info.pid = if exited { 0 } else { c.container.pid() };
            info.status = match (c.container.created(), exited) {
                (true, false) => "created",
                (_, true) => "stopped",
                (false, false) => "running",
            }
            .into();
            let mut execs: Vec<String> = g
                .procs
                .keys()
                .filter(|(cid, eid)| cid == id && !eid.is_empty())
                .map(|(_, e)| e.clone())
                .collect();
            execs.sort();
            info.exec_ids = execs;
            out.containers.push(info);
        }
        out
    }

    fn request_shutdown(&self, status: u32) -> Result<()> {
        let status = u8::try_from(status)
            .map_err(|_| AgentError::Invalid(format!("status {status}: 0 to 255")))?;
        self.lock().shutdown = Some(status);
        self.changed.notify_all();
        Ok(())
    }
}

/// A process of the VM itself (no container): the `vm` isolation level.
fn spawn_in_vm(
    p: &uvm_agent_api::agent::Process,
    user: Option<(u32, u32)>,
    stdio: Stdio,
) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&p.args[0]);
    cmd.args(&p.args[1..])
        .env_clear()
        .env("PATH", VM_PATH)
        .env("HOME", "/root")
        .current_dir(if p.cwd.is_empty() { "/" } else { &p.cwd });
    for e in &p.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let dup = |i: usize| {
        stdio.0[i]
            .try_clone()
            .map_err(|e| AgentError::Setup(format!("dup: {e}")))
    };
    cmd.stdin(dup(0)?).stdout(dup(1)?).stderr(dup(2)?);
    // Its own session, as a container's process has: signals for the agent's
    // terminal never reach it.
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|e| {
        let what = &p.args[0];
        match e.kind() {
            std::io::ErrorKind::NotFound => AgentError::NoCommand {
                cmd: what.clone(),
                why: "command not found".into(),
                found: false,
            },
            std::io::ErrorKind::PermissionDenied => AgentError::NoCommand {
                cmd: what.clone(),
                why: "cannot execute: permission denied".into(),
                found: true,
            },
            _ => AgentError::Setup(format!("{what}: {e}")),
        }
    })?;
    // The reaper waits for it, not the Child (dropping a Child does not).
    i32::try_from(child.id()).map_err(|_| AgentError::Setup("pid out of range".into()))
}

type TResult<T> = ttrpc::Result<T>;

impl AgentService for Agent {
    fn create_container(
        &self,
        _: &ttrpc::TtrpcContext,
        req: CreateContainerRequest,
    ) -> TResult<Empty> {
        self.create(&req).map(|()| Empty::new()).map_err(Into::into)
    }
    fn start_container(
        &self,
        _: &ttrpc::TtrpcContext,
        req: StartContainerRequest,
    ) -> TResult<Empty> {
        self.start(&req.container_id)
            .map(|()| Empty::new())
            .map_err(Into::into)
    }
    fn exec_process(&self, _: &ttrpc::TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        self.exec(&req).map(|()| Empty::new()).map_err(Into::into)
    }
    fn wait_process(
        &self,
        _: &ttrpc::TtrpcContext,
        req: ProcessRef,
    ) -> TResult<WaitProcessResponse> {
        self.wait(&req.container_id, &req.exec_id)
            .map(exit_response)
            .map_err(Into::into)
    }
    fn signal_process(&self, _: &ttrpc::TtrpcContext, req: SignalProcessRequest) -> TResult<Empty> {
        self.signal(&req).map(|()| Empty::new()).map_err(Into::into)
    }
    fn close_stdin(&self, _: &ttrpc::TtrpcContext, req: ProcessRef) -> TResult<Empty> {
        self.close_stdin(&req.container_id, &req.exec_id)
            .map(|()| Empty::new())
            .map_err(Into::into)
    }
    fn remove_process(&self, _: &ttrpc::TtrpcContext, req: ProcessRef) -> TResult<Empty> {
        self.remove_process(&req.container_id, &req.exec_id)
            .map(|()| Empty::new())
            .map_err(Into::into)
    }
    fn remove_container(
        &self,
        _: &ttrpc::TtrpcContext,
        req: RemoveContainerRequest,
    ) -> TResult<Empty> {
        self.remove(&req.container_id, req.force)
            .map(|()| Empty::new())
            .map_err(Into::into)
    }
    fn pause_container(&self, _: &ttrpc::TtrpcContext, req: ContainerRef) -> TResult<Empty> {
        self.pause(&req.container_id)
            .map(|()| Empty::new())
            .map_err(Into::into)
    }
    fn resume_container(&self, _: &ttrpc::TtrpcContext, req: ContainerRef) -> TResult<Empty> {
        self.resume(&req.container_id)
            .map(|()| Empty::new())
            .map_err(Into::into)
    }
    fn stats_container(
        &self,
        _: &ttrpc::TtrpcContext,
        req: ContainerRef,
    ) -> TResult<ContainerStats> {
        self.stats(&req.container_id).map_err(Into::into)
    }
    fn list_containers(
        &self,
        _: &ttrpc::TtrpcContext,
        _: Empty,
    ) -> TResult<ListContainersResponse> {
        Ok(self.list())
    }
    fn check(&self, _: &ttrpc::TtrpcContext, _: Empty) -> TResult<CheckResponse> {
        let mut r = CheckResponse::new();
        r.version = env!("CARGO_PKG_VERSION").into();
        r.kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        r.uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Ok(r)
    }
    fn shutdown(&self, _: &ttrpc::TtrpcContext, req: ShutdownRequest) -> TResult<Empty> {
        self.request_shutdown(req.status)
            .map(|()| Empty::new())
            .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_pipes_only_where_asked() {
        let mut want = StdioReq::new();
        want.stdout = true;
        let (child, ours) = make_stdio(Some(&want)).unwrap();
        assert!(ours[0].is_none() && ours[1].is_some() && ours[2].is_none());
        // What the child writes to its stdout comes out of our end.
        use std::io::{Read, Write};
        let mut w = std::fs::File::from(child.0[1].try_clone().unwrap());
        w.write_all(b"hi").unwrap();
        drop(w);
        drop(child);
        let mut r = std::fs::File::from(ours.into_iter().nth(1).flatten().unwrap());
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
    }

    #[test]
    fn ids_signals_and_statuses() {
        assert!(check_id("container", "web-1").is_ok());
        for bad in ["", "-x", "a b", "../x", &"x".repeat(65)] {
            assert!(check_id("container", bad).is_err(), "{bad:?}");
        }
        assert_eq!(signal_of(9).unwrap(), Signal::SIGKILL);
        assert!(signal_of(0).is_err() && signal_of(999).is_err());
        assert_eq!(exit_response(ExitKind::Code(4)).status, 4);
        let r = exit_response(ExitKind::Signal(9));
        assert_eq!((r.status, r.signal), (137, 9));
    }

    #[test]
    fn requests_for_what_is_not_there_are_refused() {
        let a = Agent::new();
        assert!(matches!(a.wait("nope", ""), Err(AgentError::NotFound(_))));
        assert!(matches!(a.start("nope"), Err(AgentError::NotFound(_))));
        assert!(matches!(
            a.remove("nope", true),
            Err(AgentError::NotFound(_))
        ));
        assert!(matches!(a.pause("nope"), Err(AgentError::NotFound(_))));
        assert!(matches!(a.resume("nope"), Err(AgentError::NotFound(_))));
        assert!(matches!(a.stats("nope"), Err(AgentError::NotFound(_))));
        let mut req = CreateContainerRequest::new();
        req.container_id = "c".into();
        req.oci_spec = b"{not json".to_vec();
        assert!(matches!(a.create(&req), Err(AgentError::Invalid(_))));
        let mut ex = ExecProcessRequest::new();
        ex.exec_id = "e".into();
        assert!(matches!(a.exec(&ex), Err(AgentError::Invalid(_))));
        assert!(a.request_shutdown(300).is_err());
        let h = StreamHeader {
            container_id: "x".into(),
            exec_id: String::new(),
            stream: Stream::Stdout,
        };
        assert!(a.take_stream(&h, None).is_err());
    }

    #[test]
    fn a_vm_process_runs_and_is_recorded() {
        let a = Agent::new();
        let mut ex = ExecProcessRequest::new();
        ex.exec_id = "e1".into();
        ex.process.mut_or_insert_default().args =
            vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()];
        ex.process.mut_or_insert_default().uid = -1;
        ex.process.mut_or_insert_default().gid = -1;
        ex.stdio.mut_or_insert_default().stdout = true;
        a.exec(&ex).unwrap();
        assert!(matches!(a.exec(&ex), Err(AgentError::Exists(_))));
        let h = StreamHeader {
            container_id: String::new(),
            exec_id: "e1".into(),
            stream: Stream::Stdout,
        };
        let out = a.take_stream(&h, None).unwrap();
        assert!(a.take_stream(&h, None).is_err(), "a stream is taken once");
        let mut s = String::new();
        use std::io::Read;
        std::fs::File::from(out).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi\n");
        // No reaper thread in this test: reap by hand, as it would.
        let pid = a.lock().procs[&(String::new(), "e1".to_string())].pid;
        let kind = uvm_runtime::process::wait_exit(Pid::from_raw(pid)).unwrap();
        a.exited(pid, kind);
        assert_eq!(a.wait("", "e1").unwrap(), ExitKind::Code(3));
        // Ended, it can be forgotten, and its id used again.
        assert!(matches!(
            a.remove_process("", ""),
            Err(AgentError::Invalid(_))
        ));
        assert!(matches!(
            a.remove_process("", "e2"),
            Err(AgentError::NotFound(_))
        ));
        a.remove_process("", "e1").unwrap();
        assert!(matches!(a.wait("", "e1"), Err(AgentError::NotFound(_))));
        ex.process.mut_or_insert_default().args = vec!["sleep".into(), "100".into()];
        a.exec(&ex).unwrap();
        assert!(
            matches!(a.remove_process("", "e1"), Err(AgentError::State(_))),
            "a running exec stays"
        );
        let pid = a.lock().procs[&(String::new(), "e1".to_string())].pid;
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let kind = uvm_runtime::process::wait_exit(Pid::from_raw(pid)).unwrap();
        a.exited(pid, kind);
        a.remove_process("", "e1").unwrap();
    }
}
