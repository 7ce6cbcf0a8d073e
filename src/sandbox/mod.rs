//! Sandboxes: long-lived microVMs that each hold several containers, the
//! pod pattern. The VM is the pod: its containers leave the network
//! namespace out of their spec, so they share the VM's own (and its
//! `localhost`), while each has its own mount, pid, uts and ipc namespaces
//! and cgroup (uvm's runtime, under the guest's agent). Their root folders
//! come from the host over the sandbox's one virtio-fs share ([`share`]),
//! each under an overlay of its own in the guest.
//!
//! On the host a sandbox is a folder, `/run/uvm/sandbox/NAME`, and the
//! processes it names: the VMM ([`vmm`], `uvm sandbox-vmm NAME`, detached,
//! which runs virtiofsd and the network lease's helper), and one log pump
//! per detached container ([`logs`]). All of them are in one host cgroup,
//! `uvm-sandbox/NAME`, so removing a sandbox (or `uvm gc` after a SIGKILL
//! of any of them) kills whatever is left of it by that cgroup, unmounts
//! its share, releases its lease and removes its folder. Everything else
//! (create, run, exec, ps, kill) is a request to the guest's agent over the
//! VM's vsock socket, so the CLI, and the containerd shim to come, drive a
//! sandbox through this module alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uvm_runtime::cgroups::Cgroup;
use uvm_runtime::spec::PortMap;
use uvm_runtime::state;

use crate::agent::stdio::Attached;
use crate::agent::{AgentClient, ContainerInfo, ProcessSpec, Streams};
use crate::error::Error;

pub mod logs;
pub mod share;
pub mod vmm;

/// The hidden subcommand that runs a sandbox's VMM.
pub const VMM_COMMAND: &str = "sandbox-vmm";
/// Where the guest mounts the sandbox's share.
pub const GUEST_SHARE: &str = "/run/sandbox";
/// The share's virtio-fs tag.
const SHARE_TAG: &str = "sandbox";
/// How long `create` waits for the guest's agent (a nested guest boots in
/// 10-20 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `rm` lets the guest power off before it kills the VMM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a CLI command waits for a running sandbox's agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `uvm sandbox create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub name: String,
    pub vcpus: u32,
    pub mem: u64,
    /// On uvm's bridge (a tap, an address, NAT), with `publish` DNATed.
    pub bridge: bool,
    pub publish: Vec<String>,
}

impl SandboxConfig {
    /// Checks what can be checked before anything is made.
    pub fn validate(&self) -> Result<(), Error> {
        check_name("sandbox", &self.name)?;
        if self.vcpus == 0 || self.vcpus > 32 {
            return Err(Error::Usage(format!(
                "--vcpus {}: 1 to 32 vCPUs",
                self.vcpus
            )));
        }
        crate::vmm::memory::validate_size(self.mem, crate::vmm::memory::host_memory())?;
        for p in &self.publish {
            p.parse::<PortMap>()?;
        }
        if !self.publish.is_empty() && !self.bridge {
            return Err(Error::Usage(
                "-p publishes the sandbox's ports on uvm's bridge: add --net bridge".into(),
            ));
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name, "vcpus": self.vcpus, "mem": self.mem,
            "bridge": self.bridge, "publish": self.publish,
        })
    }

    fn from_json(v: &Value) -> Option<SandboxConfig> {
        Some(SandboxConfig {
            name: v["name"].as_str()?.to_string(),
            vcpus: u32::try_from(v["vcpus"].as_u64()?).ok()?,
            mem: v["mem"].as_u64()?,
            bridge: v["bridge"].as_bool()?,
            publish: v["publish"]
                .as_array()?
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
        })
    }
}

/// Sandbox and container names: what a path component, a runtime lease
/// name and the agent's ids can all hold.
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = uvm_agent_api::valid_id(name)
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{what} name {name:?}: 1 to 48 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

/// Where the sandboxes' folders are.
pub fn root() -> PathBuf {
    state::default_root().join("sandbox")
}

/// The name of the sandbox's network lease in the runtime's state.
fn lease_name(name: &str) -> String {
    format!("sandbox-{name}")
}

/// The host cgroup of everything the sandbox runs on the host.
fn cgroup_rel(name: &str) -> PathBuf {
    Path::new("uvm-sandbox").join(name)
}

/// What a container was made from, kept beside the sandbox for `inspect`.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    pub id: String,
    /// The host folder that is its root (under an overlay in the guest).
    pub rootfs: PathBuf,
    pub hostname: Option<String>,
    pub process: ProcessSpec,
}

/// One sandbox's folder on the host.
#[derive(Debug, Clone)]
pub struct Sandbox {
    name: String,
    dir: PathBuf,
}

/// A sandbox's state as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Its VMM runs (pid).
    Running(i32),
    /// Its VMM is gone: the guest powered off or something killed it.
    Stopped,
    /// Being created (no VMM recorded yet).
    Creating,
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Running(_) => "running",
            Status::Stopped => "stopped",
            Status::Creating => "creating",
        }
    }
}

impl Sandbox {
    fn at(name: &str) -> Sandbox {
        Sandbox {
            name: name.to_string(),
            dir: root().join(name),
        }
    }

    /// An existing sandbox.
    pub fn open(name: &str) -> Result<Sandbox, Error> {
        check_name("sandbox", name)?;
        let sb = Sandbox::at(name);
        if !sb.dir.join("config.json").exists() {
            return Err(Error::Usage(format!("no sandbox {name}")));
        }
        Ok(sb)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    pub fn config(&self) -> Result<SandboxConfig, Error> {
        let path = self.path("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| Error::Io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&text)
            .ok()
            .and_then(|v| SandboxConfig::from_json(&v))
            .ok_or_else(|| Error::Usage(format!("{}: not a sandbox's config", path.display())))
    }

    /// The VMM's pid and start time, once `create` recorded them.
    fn owner(&self) -> Option<(i32, u64)> {
        let text = std::fs::read_to_string(self.path("owner")).ok()?;
        let mut w = text.split_whitespace();
        Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
    }

    pub fn status(&self) -> Status {
        match self.owner() {
            Some((pid, start)) if state::proc_alive(pid, start) => Status::Running(pid),
            Some(_) => Status::Stopped,
            // A folder left by a create killed before it started the VMM
            // ages into stopped.
            None => {
                let age = std::fs::metadata(&self.dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a > Duration::from_secs(60)) {
                    Status::Stopped
                } else {
                    Status::Creating
                }
            }
        }
    }

    fn cgroup(&self) -> Option<Cgroup> {
        let text = std::fs::read(self.path("cgroup.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The address and ports its lease got, if it is on the bridge.
    pub fn net(&self) -> Option<Value> {
        let text = std::fs::read(self.path("net.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The guest's agent, if the sandbox runs.
    pub fn agent(&self) -> Result<AgentClient, Error> {
        match self.status() {
            Status::Running(_) => AgentClient::connect(&self.path("vsock.sock"), AGENT_TIMEOUT),
            s => Err(Error::Usage(format!(
                "sandbox {} is {} (uvm sandbox rm {} removes it)",
                self.name,
                s.name(),
                self.name
            ))),
        }
    }

    fn containers_dir(&self) -> PathBuf {
        self.path("containers")
    }

    fn container_meta(&self, id: &str) -> PathBuf {
        self.containers_dir().join(format!("{id}.json"))
    }
}

/// Creates sandbox `cfg.name`: its folder, its VMM (detached, in the
/// sandbox's cgroup), and returns once the guest's agent answers. On any
/// failure nothing of it is left.
pub fn create(cfg: &SandboxConfig) -> Result<Sandbox, Error> {
    cfg.validate()?;
    let sb = Sandbox::at(&cfg.name);
    // The VM's size, and the default guest there to boot, before anything
    // is made; then whether this host can boot it at all.
    // (Its share and socket are made later, in its folder.)
    let mut probe = vmm::config(&sb, cfg)?;
    probe.shares.clear();
    probe.vsock = None;
    probe.validate()?;
    crate::vmm::virtiofsd::binary()?;
    crate::check::ensure_can_boot_linux()?;
    std::fs::create_dir_all(root())
        .map_err(|e| Error::Io(format!("creating {}", root().display()), e))?;
    // create_dir, not _all: of two creates of one name, one wins.
    std::fs::create_dir(&sb.dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Usage(format!(
            "a sandbox named {} exists ({})",
            cfg.name,
            Sandbox::at(&cfg.name).status().name()
        )),
        _ => Error::Io(format!("creating {}", sb.dir.display()), e),
    })?;
    let started = start_vmm(&sb, cfg);
    match started {
        Ok(()) => Ok(sb),
        Err(e) => {
            cleanup(&sb);
            Err(e)
        }
    }
}

fn start_vmm(sb: &Sandbox, cfg: &SandboxConfig) -> Result<(), Error> {
    let write = |f: &str, data: &[u8]| {
        std::fs::write(sb.path(f), data)
            .map_err(|e| Error::Io(format!("writing {}", sb.path(f).display()), e))
    };
    write("config.json", cfg.to_json().to_string().as_bytes())?;
    for d in ["containers", "logs"] {
        std::fs::create_dir_all(sb.path(d))
            .map_err(|e| Error::Io(format!("creating {}", sb.path(d).display()), e))?;
    }
    // Everything the sandbox runs on the host goes in its cgroup: the VMM
    // joins it before it starts anything, and its children inherit it.
    // Without cgroups (a host without them), the processes are found by
    // the sandbox's owner record only.
    if let Ok(h) = uvm_runtime::cgroups::Hierarchy::detect() {
        let cg = Cgroup::create(&h, &cgroup_rel(&cfg.name), &Default::default())?;
        let json = serde_json::to_vec(&cg).map_err(|e| Error::Agent(e.to_string()))?;
        write("cgroup.json", &json)?;
    }
    // Appended to by the VMM and the log pumps alike.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(sb.path("sandbox.log"))
        .map_err(|e| Error::Io(format!("creating {}", sb.path("sandbox.log").display()), e))?;
    let exe =
        std::env::current_exe().map_err(|e| Error::Io("finding uvm's own binary".into(), e))?;
    let mut cmd = Command::new(&exe);
    cmd.args([VMM_COMMAND, &cfg.name])
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| Error::Io("sandbox.log".into(), e))?,
        )
        .stderr(log);
    detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Io(format!("starting {} {VMM_COMMAND}", exe.display()), e))?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let start = state::proc_start_time(pid).unwrap_or(0);
    write("owner", format!("{pid} {start}\n").as_bytes())?;
    let uds = sb.path("vsock.sock");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut last = String::from("its socket never appeared");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let why = crate::run::vm::tail(&sb.path("sandbox.log"), 1);
            let console = crate::run::vm::tail(&sb.path("console.log"), 10);
            if !console.is_empty() {
                eprintln!("uvm sandbox: the guest's console ended with:\n{console}");
            }
            return Err(Error::Agent(format!(
                "sandbox {}: its VMM ended while starting ({status}): {}",
                cfg.name,
                if why.is_empty() {
                    "it said nothing"
                } else {
                    &why
                }
            )));
        }
        if uds.exists() {
            match AgentClient::connect(&uds, Duration::from_secs(1)) {
                Ok(a) => {
                    drop(a);
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            // Where the VMM's threads are: a vCPU asleep in the kernel
            // (state D) is the host's trouble, not the guest's.
            eprintln!(
                "uvm sandbox: the VMM's threads: {}",
                crate::vmm::shutdown::thread_states_of(&child.id().to_string())
            );
            // Stopped, not killed: the VMM then writes its devices' account
            // to the sandbox's log, which says where the guest got stuck.
            crate::vmm::shutdown::stop_child(&mut child, STOP_TIMEOUT);
            let account = crate::run::vm::tail(&sb.path("sandbox.log"), 12);
            if !account.is_empty() {
                eprintln!("uvm sandbox: the VMM's account:\n{account}");
            }
            let console = crate::run::vm::tail(&sb.path("console.log"), 10);
            eprintln!("uvm sandbox: the guest's console ended with:\n{console}");
            return Err(Error::Agent(format!(
                "sandbox {}: no agent answered within {} s (its console: {}; last try: {last})",
                cfg.name,
                BOOT_TIMEOUT.as_secs(),
                sb.path("console.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes `cmd`'s process a session of its own: it outlives the command
/// that started it and never gets its terminal's signals.
fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe and the closure allocates
    // nothing; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Removes what is left of a sandbox whose VMM is gone: the processes in
/// its cgroup (log pumps, a virtiofsd, a lease's helper) and the cgroup,
/// its share's mounts, its network lease, its virtiofsd folders, its own
/// folder. Returns whether the folder went.
fn cleanup(sb: &Sandbox) -> bool {
    if let Some(cg) = sb.cgroup() {
        cg.destroy();
        // The shared parent goes with its last child.
        for (_, d) in &cg.dirs {
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
    share::remove(&sb.path("shared"));
    let rt = uvm_runtime::Runtime::new(uvm_runtime::state::Paths::new(state::default_root()));
    rt.release(&lease_name(&sb.name));
    if let Some((pid, _)) = sb.owner() {
        crate::vmm::virtiofsd::remove_folders_of(pid);
    }
    std::fs::remove_dir_all(&sb.dir).is_ok()
}

/// Stops sandbox `name` (its guest powers off, which removes every
/// container; a VMM that does not end in time is killed) and removes all
/// of it.
pub fn remove(name: &str) -> Result<(), Error> {
    let sb = Sandbox::open(name)?;
    if let Status::Running(pid) = sb.status() {
        if let Ok(a) = AgentClient::connect(&sb.path("vsock.sock"), AGENT_TIMEOUT) {
            let _ = a.shutdown(0);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(sb.status(), Status::Running(_)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(sb.status(), Status::Running(_)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if cleanup(&sb) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "sandbox {name}: could not remove {}",
            sb.dir.display()
        )))
    }
}

/// The sandboxes on this host, by name.
pub fn list() -> Vec<Sandbox> {
    let mut names: Vec<String> = std::fs::read_dir(root())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_name("sandbox", n).is_ok())
        .collect();
    names.sort();
    names.iter().map(|n| Sandbox::at(n)).collect()
}

/// `uvm gc`'s part: removes the sandboxes whose VMM is gone; returns what
/// it removed.
pub fn gc() -> Vec<String> {
    list()
        .into_iter()
        .filter(|sb| sb.status() == Status::Stopped)
        .filter(cleanup)
        .map(|sb| format!("sandbox {}", sb.name))
        .collect()
}

/// The OCI spec of a container of the sandbox: the runtime's defaults, the
/// sandbox's network (no network namespace of its own), its own hostname.
fn container_spec(c: &ContainerConfig) -> Result<Vec<u8>, Error> {
    use oci_spec::runtime::{LinuxNamespaceType, User};
    let mut spec = uvm_runtime::spec::default_spec();
    spec.set_hostname(Some(c.hostname.clone().unwrap_or_else(|| c.id.clone())));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from(format!("{GUEST_SHARE}/{}", c.id)));
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    if let Some(linux) = spec.linux_mut() {
        let mut ns = linux.namespaces().clone().unwrap_or_default();
        ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
        linux.set_namespaces(Some(ns));
    }
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(c.process.args.clone()));
        p.set_terminal(Some(false));
        let mut env = p.env().clone().unwrap_or_default();
        for e in &c.process.env {
            let key = e.split('=').next().unwrap_or(e);
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        p.set_env(Some(env));
        if let Some(cwd) = &c.process.cwd {
            p.set_cwd(PathBuf::from(cwd));
        }
        if let Some((uid, gid)) = c.process.user {
            let mut u = User::default();
            u.set_uid(uid);
            u.set_gid(gid);
            p.set_user(u);
        }
    }
    serde_json::to_vec(&spec).map_err(|e| Error::Agent(format!("spec: {e}")))
}

/// Checks a container's flags before anything is made.
pub fn check_container(c: &ContainerConfig) -> Result<(), Error> {
    check_name("container", &c.id)?;
    if !c.rootfs.is_dir() {
        return Err(Error::Usage(format!(
            "--rootfs {}: no such folder",
            c.rootfs.display()
        )));
    }
    if c.process.args.is_empty() {
        return Err(Error::Usage("no command: put it after --".into()));
    }
    if let Some(h) = &c.hostname {
        if h.is_empty() || h.len() > 64 || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Usage(format!(
                "--hostname {h:?}: 1 to 64 characters, no spaces"
            )));
        }
    }
    if let Some(bad) = c.process.env.iter().find(|e| !e.contains('=')) {
        return Err(Error::Usage(format!("-e {bad}: expected KEY=VALUE")));
    }
    if let Some(w) = c.process.cwd.as_ref().filter(|w| !w.starts_with('/')) {
        return Err(Error::Usage(format!("-w {w}: must be absolute")));
    }
    Ok(())
}

/// How `run` joins a container's streams.
pub enum Attach {
    /// The caller's stdin, stdout and stderr; returns its status.
    Terminal,
    /// None: a log pump writes its output to the sandbox's log of it.
    Detached,
}

impl Sandbox {
    /// Creates and starts a container in the sandbox; attached, returns its
    /// exit status once it ended (it stays, stopped, until removed).
    pub fn run(&self, c: &ContainerConfig, how: Attach) -> Result<i32, Error> {
        let streams = match how {
            Attach::Terminal => Streams::ALL,
            Attach::Detached => Streams {
                stdin: false,
                stdout: true,
                stderr: true,
            },
        };
        let a = self.create_container(c, streams, matches!(how, Attach::Detached))?;
        match how {
            Attach::Detached => {
                let started = logs::start_pump(self, &c.id).and_then(|()| a.start_container(&c.id));
                if let Err(e) = started {
                    let _ = a.remove_container(&c.id, true);
                    self.forget(&c.id);
                    return Err(e);
                }
                Ok(0)
            }
            Attach::Terminal => {
                let attached = Attached::connect(&a, &c.id, "", Streams::ALL)?;
                a.start_container(&c.id)?;
                let pumps = attached.pump();
                let status = a.wait(&c.id, "")?;
                pumps.finish()?;
                Ok(status.status)
            }
        }
    }

    /// Makes a container in the sandbox, its PID 1 waiting to be started
    /// (the agent's `start_container`): its root folder in the share, its
    /// record beside the sandbox, the guest's container with the streams
    /// `streams` names. On failure nothing of it is left. Returns the agent
    /// it was made through.
    pub fn create_container(
        &self,
        c: &ContainerConfig,
        streams: Streams,
        detached: bool,
    ) -> Result<AgentClient, Error> {
        check_container(c)?;
        let a = self.agent()?;
        let spec = container_spec(c)?;
        share::add(&self.path("shared"), &c.id, &c.rootfs)?;
        let meta = json!({
            "id": c.id, "rootfs": c.rootfs, "hostname": c.hostname.clone().unwrap_or_else(|| c.id.clone()),
            "command": c.process.args, "created": state::now(),
            "detached": detached,
        });
        let made = std::fs::write(self.container_meta(&c.id), meta.to_string())
            .map_err(|e| {
                Error::Io(
                    format!("writing {}", self.container_meta(&c.id).display()),
                    e,
                )
            })
            .and_then(|()| a.create_container(&c.id, &spec, None, true, &[], streams));
        match made {
            Ok(()) => Ok(a),
            Err(e) => {
                self.forget(&c.id);
                Err(e)
            }
        }
    }

    /// The host's records of a container: its share, metadata, log.
    fn forget(&self, id: &str) {
        share::remove(&self.path("shared").join(id));
        let _ = std::fs::remove_file(self.container_meta(id));
        logs::remove(self, id);
    }

    /// Runs a process in a container; attached, returns its status.
    pub fn exec(
        &self,
        container: &str,
        exec_id: &str,
        p: &ProcessSpec,
        detach: bool,
    ) -> Result<i32, Error> {
        check_name("container", container)?;
        let a = self.agent()?;
        let streams = if detach {
            Streams::default()
        } else {
            Streams::ALL
        };
        a.exec(container, exec_id, p, streams)?;
        if detach {
            return Ok(0);
        }
        let pumps = Attached::connect(&a, container, exec_id, streams)?.pump();
        let status = a.wait(container, exec_id)?;
        pumps.finish()?;
        Ok(status.status)
    }

    pub fn kill(&self, container: &str, signal: i32, all: bool) -> Result<(), Error> {
        self.agent()?.signal(container, "", signal, all)
    }

    /// Waits for a container's own process; its status.
    pub fn wait(&self, container: &str) -> Result<i32, Error> {
        Ok(self.agent()?.wait(container, "")?.status)
    }

    /// Removes a container (killing it first with `force`).
    pub fn remove_container(&self, id: &str, force: bool) -> Result<(), Error> {
        check_name("container", id)?;
        if !self.container_meta(id).exists() {
            return Err(Error::Usage(format!(
                "no container {id} in sandbox {}",
                self.name
            )));
        }
        if matches!(self.status(), Status::Running(_)) {
            self.agent()?.remove_container(id, force)?;
        }
        self.forget(id);
        Ok(())
    }

    /// The containers as the guest's agent lists them (none once the
    /// sandbox stopped).
    pub fn containers(&self) -> Result<Vec<ContainerInfo>, Error> {
        match self.status() {
            Status::Running(_) => self.agent()?.list(),
            _ => Ok(Vec::new()),
        }
    }

    /// Everything known about the sandbox, as `uvm sandbox inspect` prints it.
    pub fn inspect(&self) -> Result<Value, Error> {
        let cfg = self.config()?;
        let status = self.status();
        let live = self.containers().unwrap_or_default();
        let mut containers = Vec::new();
        let mut ids: Vec<String> = std::fs::read_dir(self.containers_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        for id in ids {
            let mut meta: Value = std::fs::read(self.container_meta(&id))
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok())
                .unwrap_or_else(|| json!({ "id": id }));
            let info = live.iter().find(|c| c.id == id);
            meta["status"] = json!(info.map_or("stopped", |c| c.status.as_str()));
            meta["pid"] = json!(info.map_or(0, |c| c.pid));
            meta["exec_ids"] = json!(info.map(|c| c.exec_ids.clone()).unwrap_or_default());
            meta["log"] = json!(logs::path(self, &id));
            containers.push(meta);
        }
        Ok(json!({
            "name": self.name,
            "status": status.name(),
            "pid": match status { Status::Running(p) => p, _ => 0 },
            "vcpus": cfg.vcpus,
            "memory": cfg.mem,
            "network": self.net().unwrap_or(Value::Null),
            "publish": cfg.publish,
            "dir": self.dir,
            "vsock": self.path("vsock.sock"),
            "console": self.path("console.log"),
            "cgroup": self.cgroup().map(|c| c.rel),
            "containers": containers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_configs_are_checked_first() {
        let ok = SandboxConfig {
            name: "pod-1".into(),
            vcpus: 2,
            mem: 512 << 20,
            bridge: true,
            publish: vec!["8080:80".into()],
        };
        assert!(ok.validate().is_ok());
        assert_eq!(SandboxConfig::from_json(&ok.to_json()), Some(ok.clone()));
        for bad in ["", "-x", "a b", "../x", ".h", &"x".repeat(49)] {
            let c = SandboxConfig {
                name: bad.into(),
                ..ok.clone()
            };
            assert!(c.validate().is_err(), "{bad:?}");
        }
        let c = SandboxConfig {
            vcpus: 0,
            ..ok.clone()
        };
        assert!(c.validate().unwrap_err().to_string().contains("--vcpus"));
        let c = SandboxConfig {
            bridge: false,
            ..ok.clone()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--net bridge"));
        let c = SandboxConfig {
            publish: vec!["x:80".into()],
            ..ok
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_containers_spec_shares_the_vms_network_and_names_its_host() {
        let c = ContainerConfig {
            id: "web".into(),
            rootfs: "/".into(),
            hostname: None,
            process: ProcessSpec {
                args: vec!["httpd".into()],
                env: vec!["A=1".into()],
                cwd: Some("/srv".into()),
                user: Some((1, 2)),
            },
        };
        assert!(check_container(&c).is_ok());
        let v: Value = serde_json::from_slice(&container_spec(&c).unwrap()).unwrap();
        assert_eq!(v["hostname"], "web");
        assert_eq!(v["root"]["path"], "/run/sandbox/web");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!ns.contains(&"network"), "{ns:?}");
        for own in ["pid", "mount", "uts", "ipc"] {
            assert!(ns.contains(&own), "{own} missing from {ns:?}");
        }
        assert_eq!(v["process"]["args"], json!(["httpd"]));
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(v["process"]["user"]["uid"], 1);
        assert!(v["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&json!("A=1")));
        let bad = |f: fn(&mut ContainerConfig)| {
            let mut b = c.clone();
            f(&mut b);
            check_container(&b).unwrap_err().to_string()
        };
        assert!(bad(|b| b.rootfs = "/nonexistent/rootfs".into()).contains("no such folder"));
        assert!(bad(|b| b.id = "a/b".into()).contains("container name"));
        assert!(bad(|b| b.process.env = vec!["NOEQ".into()]).contains("KEY=VALUE"));
        assert!(bad(|b| b.process.cwd = Some("rel".into())).contains("absolute"));
        assert!(bad(|b| b.process.args.clear()).contains("no command"));
    }

    #[test]
    fn an_unknown_sandbox_is_named() {
        let e = Sandbox::open("no-such-sandbox-here").unwrap_err();
        assert_eq!(e.to_string(), "no sandbox no-such-sandbox-here");
    }
}
