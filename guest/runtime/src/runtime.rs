//! The runtime's operations: create/run a container, wait for it and clean
//! up, exec into it, kill, list, stats, and garbage-collect what a killed
//! runtime left behind.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::{self, Signal};
use nix::unistd::{self, Pid};
use oci_spec::runtime::Spec;
use seccompiler::BpfProgram;

use super::cgroups::{Cgroup, Hierarchy, Stats};
use super::error::{Error, Result};
use super::network::{self, BridgeConfig};
use super::process::{self, ChildPlan, ExitKind, Namespaces};
use super::rootfs::RootfsPlan;
use super::spec::{self, NetConfig, NetMode, RunOptions};
use super::state::{self, Paths, State};
use super::userns;

/// The runtime: where state lives, which bridge bridge-mode uses, and the
/// host's cgroup layout.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub paths: Paths,
    pub bridge: BridgeConfig,
    /// Detected when `None`.
    pub hierarchy: Option<Hierarchy>,
    /// Cgroup (relative to each hierarchy's root) under which containers'
    /// cgroups are made, one per container id.
    pub cgroup_parent: String,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub kind: ExitKind,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    pub memory_limit: Option<u64>,
}

impl Exit {
    /// Exit status as a shell reports it (128 + signal for a signal death).
    pub fn code(&self) -> i32 {
        self.kind.code()
    }
}

/// A running container whose PID 1 is a child of this process. Dropping it
/// without [`Container::wait`] kills it and cleans up.
#[derive(Debug)]
pub struct Container {
    state: State,
    paths: Paths,
    done: bool,
    /// PID 1 waiting to exec the workload (created, not started).
    pending: Option<process::Started>,
}

fn is_root() -> bool {
    unistd::geteuid().is_root()
}

/// Removes a tree the container wrote. Rootless, its files are the
/// caller's but a directory it left without write permission stops
/// `remove_dir_all`: make directories writable, then try again.
pub(crate) fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() || fs::symlink_metadata(path).is_err() {
        return;
    }
    fn open_up(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
    open_up(path);
    let _ = fs::remove_dir_all(path);
}

/// Thaws `cg` if it is paused (after a SIGKILL: a frozen v1 task does not
/// die until thawed).
fn thaw_if_paused(cg: Option<&Cgroup>) -> Result<()> {
    match cg {
        Some(cg) if cg.paused() => cg.thaw(),
        _ => Ok(()),
    }
}

/// Removes everything recorded in `st` (ports, veth, cgroup, overlay, state
/// directory). Best effort: used on success, on failure, and by gc.
fn cleanup(paths: &Paths, st: &State) {
    super::netns::teardown(paths, st);
    if let Some(net) = &st.net {
        if !net.ports.is_empty() {
            let _lock = paths.lock_net();
            network::unpublish(&net.ports);
        }
        network::detach(net);
    }
    if let Some(cg) = &st.cgroup {
        cg.destroy();
    }
    if let Some(ov) = &st.overlay {
        if st.keep {
            remove_tree(&ov.join("work"));
        } else {
            remove_tree(ov);
        }
    }
    let _ = fs::remove_dir_all(st.dir(paths));
}

impl Runtime {
    /// A runtime with state under `paths` and the default bridge.
    pub fn new(paths: Paths) -> Self {
        Runtime {
            paths,
            bridge: BridgeConfig::default(),
            hierarchy: None,
            cgroup_parent: "uvm".into(),
        }
    }

    fn hierarchy(&self) -> Result<Hierarchy> {
        match &self.hierarchy {
            Some(h) => Ok(h.clone()),
            None => Hierarchy::detect(),
        }
    }

    /// Creates and starts a container; returns once the workload runs (its
    /// exec succeeded). On error nothing is left behind.
    pub fn create(&self, opts: &RunOptions) -> Result<Container> {
        let mut c = self.create_stopped(opts)?;
        c.start()?;
        Ok(c)
    }

    /// Creates a container whose PID 1 exists, in its namespaces and
    /// cgroup, with its rootfs and network, and waits before exec'ing the
    /// workload until [`Container::start`] (OCI's create/start split).
    pub fn create_stopped(&self, opts: &RunOptions) -> Result<Container> {
        self.create_with(opts, None)
    }

    /// OCI create: a container whose PID 1 outlives this process. Once PID
    /// 1 exists, `created` gets the state (it runs the createRuntime hooks)
    /// and returns the OCI states for the hooks PID 1 runs itself; PID 1
    /// then sets up and waits for [`Runtime::start_detached`] from any
    /// process. The state on disk names PID 1 as its own supervisor.
    pub fn create_detached(
        &self,
        opts: &RunOptions,
        detach: &DetachOptions,
        created: impl FnOnce(&State) -> Result<(Vec<u8>, Vec<u8>)>,
    ) -> Result<State> {
        let mut c = self.create_with(opts, Some(detach))?;
        let (creating, started) = created(&c.state)?;
        let pid = match &c.pending {
            Some(p) => p.release_detached(&creating, &started)?,
            None => return Err(Error::Setup("container already started".into())),
        };
        c.state.runtime_pid = pid.as_raw();
        c.state.runtime_start = c.state.pid_start.unwrap_or(0);
        c.state.save(&self.paths)?;
        c.done = true;
        Ok(c.state.clone())
    }

    /// OCI start: lets a detached container's PID 1 exec its workload;
    /// returns once it has, or with the error that stopped it.
    pub fn start_detached(&self, name: &str) -> Result<()> {
        let st = self.state(name)?;
        let gate = st.gate(&self.paths);
        if !st.running() || !gate.exists() {
            return Err(Error::NotCreated(name.to_string()));
        }
        process::start_detached(&gate)
    }

    /// Removes a container that is no longer running (OCI delete); a
    /// created one, or with `force` a running one, is killed first.
    pub fn delete(&self, name: &str, force: bool) -> Result<()> {
        let st = self.state(name)?;
        if st.running() {
            if !force && !st.gate(&self.paths).exists() {
                return Err(Error::StillRunning(name.to_string()));
            }
            if let Some(pid) = st.pid {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                thaw_if_paused(st.cgroup.as_ref())?;
            }
            // Not our child: its reaper may take a moment.
            let t = std::time::Instant::now();
            while st.running() && t.elapsed() < std::time::Duration::from_secs(10) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        cleanup(&self.paths, &st);
        Ok(())
    }

    fn create_with(&self, opts: &RunOptions, detach: Option<&DetachOptions>) -> Result<Container> {
        let rootless = !is_root();
        let id = state::new_id();
        let name = match &opts.name {
            Some(n) => {
                spec::validate_name(n)?;
                n.clone()
            }
            None => format!("uvm-{}", &id[..8]),
        };
        let mut prepared = spec::prepare(opts, &name)?;
        super::netns::prepare(&self.paths, &name, &mut prepared, rootless)?;
        if rootless && !opts.ports.is_empty() {
            return Err(Error::Rootless(
                "publishing ports (-p) needs root: they are NAT rules on the host".into(),
            ));
        }
        if rootless && prepared.net == NetMode::Bridge {
            return Err(Error::Rootless(
                "--net bridge needs root (its veth and NAT rules are made on the host); \
                 use --net none or --net host"
                    .into(),
            ));
        }
        if !opts.ports.is_empty() && prepared.net != NetMode::Bridge {
            return Err(Error::invalid(
                "-p",
                &format!("{}:{}", opts.ports[0].host, opts.ports[0].container),
                "publishing ports needs --net bridge",
            ));
        }
        let spec = &prepared.spec;
        let namespaces = Namespaces::from_spec(spec)?;
        let seccomp: Vec<BpfProgram> =
            match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
                Some(profile) => super::seccomp::compile(profile)?,
                None => Vec::new(),
            };
        let resources = spec::resources(spec);
        // Before anything is made: a CPU that is not online, a device that
        // is not there.
        resources.validate().map_err(|msg| match &opts.source {
            spec::Source::Bundle(path) => Error::Bundle {
                path: path.clone(),
                msg: format!("linux.resources.{msg}"),
            },
            spec::Source::Rootfs(_) | spec::Source::Image(_) => Error::Cgroup(msg),
        })?;
        // Rootless without limits: no cgroup, so the host's layout (perhaps
        // not even visible) does not matter.
        let hierarchy = match rootless && !resources.limits() {
            true => None,
            false => Some(self.hierarchy()?),
        };
        let cgroup = match &hierarchy {
            Some(h) if rootless => {
                self.check_delegated(h)?;
                Some(h)
            }
            h => h.as_ref(),
        };
        self.paths.ensure_root()?;
        // Stale containers of the same name (their runtime was killed) go first.
        if let Ok(old) = State::load(&self.paths, &name) {
            if !old.runtime_alive() {
                self.remove_stale(&old);
            }
        }

        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let mut st = State {
            name: name.clone(),
            id: id.clone(),
            rootfs: prepared.rootfs.clone(),
            args: spec
                .process()
                .as_ref()
                .and_then(|p| p.args().clone())
                .unwrap_or_default(),
            created: state::now(),
            runtime_pid: me,
            runtime_start: state::proc_start_time(me).unwrap_or(0),
            pid: None,
            pid_start: None,
            cgroup: None,
            net_mode: prepared.net.clone(),
            net: None,
            netns: Default::default(),
            overlay: prepared.overlay.then(|| {
                opts.overlay_dir
                    .clone()
                    .unwrap_or_else(|| self.paths.overlay(&name, &id))
            }),
            keep: opts.keep,
            image: prepared.image.clone(),
        };
        let config = serde_json::to_vec_pretty(spec).map_err(|e| Error::Setup(e.to_string()))?;
        st.claim(&self.paths, &[("config.json", &config)])?;
        match self.start(
            &mut st,
            spec,
            &prepared.rootfs,
            &namespaces,
            &seccomp,
            cgroup.map(|h| (h, &resources)),
            opts,
            detach,
        ) {
            Ok(started) => Ok(Container {
                state: st,
                paths: self.paths.clone(),
                done: false,
                pending: Some(started),
            }),
            Err(e) => {
                cleanup(&self.paths, &st);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        st: &mut State,
        spec: &Spec,
        rootfs: &std::path::Path,
        namespaces: &Namespaces,
        seccomp: &[BpfProgram],
        cgroup: Option<(&Hierarchy, &super::cgroups::Resources)>,
        opts: &RunOptions,
        detach: Option<&DetachOptions>,
    ) -> Result<process::Started> {
        if let Some((hierarchy, resources)) = cgroup {
            let rel = match &opts.cgroup_path {
                Some(p) => p.clone(),
                None => PathBuf::from(&self.cgroup_parent).join(&st.id),
            };
            let cg = Cgroup::create(hierarchy, &rel, resources)?;
            // Recorded on disk with the pid below; until then `gc` finds it
            // as an orphan cgroup if this process dies.
            st.cgroup = Some(cg);
        }

        if let Some(ov) = &st.overlay {
            for d in ["upper", "work"] {
                let dir = ov.join(d);
                fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                // The overlay is mounted, and written, by the container's root.
                if !namespaces.uid_map.is_empty() {
                    userns::chown_to_root(&dir, &namespaces.uid_map, &namespaces.gid_map)?;
                }
            }
        }
        if st.net_mode == NetMode::Bridge {
            if !namespaces.unshare.contains(CloneFlags::CLONE_NEWNET) {
                return Err(Error::Network(
                    "--net bridge needs a new network namespace".into(),
                ));
            }
            let _lock = self.paths.lock_net()?;
            let ip = self.bridge_address()?;
            let net = NetConfig {
                bridge: self.bridge.name.clone(),
                ip,
                prefix: self.bridge.prefix,
                gateway: self.bridge.gateway(),
                veth: network::veth_name(&st.id),
                ports: Vec::new(),
            };
            st.net = Some(net);
            st.save(&self.paths)?;
            network::publish(ip, &opts.ports)?;
            if let Some(n) = st.net.as_mut() {
                n.ports = opts.ports.clone();
            }
            st.save(&self.paths)?;
        }

        process::become_subreaper()?;
        let gate = match detach {
            Some(_) => Some(process::bind_gate(&st.gate(&self.paths))?),
            None => None,
        };
        let target = st.dir(&self.paths).join("rootfs");
        let upper = st.overlay.as_ref().map(|o| o.join("upper"));
        let work = st.overlay.as_ref().map(|o| o.join("work"));
        let plan = ChildPlan {
            spec,
            rootfs: RootfsPlan {
                spec,
                rootfs,
                target: &target,
                overlay: upper.as_deref().zip(work.as_deref()),
                lowers: st.image.as_ref().map_or(&[], |i| &i.lowers[..]),
                cgroup: st.cgroup.as_ref(),
                userns: namespaces.unshare.contains(CloneFlags::CLONE_NEWUSER),
                before_pivot: None,
            },
            cgroup: st.cgroup.as_ref(),
            namespaces,
            net: st.net.as_ref(),
            seccomp,
            init: opts.init,
            stdio: opts.stdio.as_ref(),
            terminal: opts.terminal,
            detached: gate.as_ref().zip(detach).map(|(g, d)| process::Detached {
                gate: g.as_fd(),
                console: d.console,
            }),
        };
        let started = process::spawn(&plan)?;
        let pid = started.pid.as_raw();
        st.pid = Some(pid);
        st.pid_start = state::proc_start_time(pid);
        let pre = (|| {
            if let Some(net) = &st.net {
                network::attach(&self.bridge, net, pid)?;
            }
            super::netns::setup(&self.paths, st, opts, pid)?;
            st.save(&self.paths)
        })();
        if let Err(e) = pre {
            started.abort();
            return Err(e);
        }
        Ok(started)
    }

    /// Rootless limits need a cgroup v2 directory delegated to the caller
    /// (the `cgroup_parent`, made writable for it by an administrator or
    /// systemd): the refusal when there is none.
    fn check_delegated(&self, hierarchy: &Hierarchy) -> Result<()> {
        const FLAGS: &str = "--memory, --cpus, --pids-limit and the other resource flags";
        match hierarchy {
            Hierarchy::V1 { .. } => Err(Error::Rootless(format!(
                "{FLAGS} need root on this cgroup v1 host; run without limits"
            ))),
            Hierarchy::V2 { root } => {
                let parent = root.join(&self.cgroup_parent);
                let writable = |p: &Path| unistd::access(p, unistd::AccessFlags::W_OK).is_ok();
                if writable(&parent) && writable(&parent.join("cgroup.procs")) {
                    Ok(())
                } else {
                    Err(Error::Rootless(format!(
                        "{FLAGS} need a cgroup v2 directory delegated to you at {} \
                         (see --cgroup-parent); run without limits",
                        parent.display()
                    )))
                }
            }
        }
    }

    /// Creates a container, waits for it and cleans up.
    pub fn run(&self, opts: &RunOptions) -> Result<Exit> {
        self.create(opts)?.wait()
    }

    /// The container named `name`.
    pub fn state(&self, name: &str) -> Result<State> {
        State::load(&self.paths, name)
    }

    /// All containers, stale ones included (see [`State::status`]).
    pub fn list(&self) -> Vec<State> {
        state::list(&self.paths)
            .into_iter()
            .filter_map(|(_, s)| s.ok())
            .collect()
    }

    fn running_state(&self, name: &str) -> Result<State> {
        let st = self.state(name)?;
        if !st.running() {
            return Err(Error::NotRunning(name.to_string()));
        }
        Ok(st)
    }

    /// Sends `sig` to the container's PID 1. A paused container is thawed
    /// after a SIGKILL, so that it dies (a frozen v1 task would not); other
    /// signals wait for `resume`, as with runc.
    pub fn kill(&self, name: &str, sig: Signal) -> Result<()> {
        let st = self.running_state(name)?;
        let pid = st.pid.ok_or_else(|| Error::NotRunning(name.to_string()))?;
        signal::kill(Pid::from_raw(pid), sig).map_err(|e| Error::sys(format!("kill {name}"), e))?;
        if sig == Signal::SIGKILL {
            thaw_if_paused(st.cgroup.as_ref())?;
        }
        Ok(())
    }

    /// The cgroup of a running container, for pause and resume.
    fn freezable(&self, name: &str) -> Result<Cgroup> {
        self.running_state(name)?.cgroup.ok_or_else(|| {
            Error::Cgroup(format!(
                "container {name} has no cgroup to freeze (a rootless container without limits)"
            ))
        })
    }

    /// Freezes every process of the container (`uvm container pause`);
    /// returns once they all are. `ps` shows it paused until [`Runtime::resume`].
    pub fn pause(&self, name: &str) -> Result<()> {
        let cg = self.freezable(name)?;
        if cg.paused() {
            return Err(Error::AlreadyPaused(name.to_string()));
        }
        cg.freeze()
    }

    /// Thaws a paused container (`uvm container resume`).
    pub fn resume(&self, name: &str) -> Result<()> {
        let cg = self.freezable(name)?;
        if !cg.paused() {
            return Err(Error::NotPaused(name.to_string()));
        }
        cg.thaw()
    }

    /// Resource usage of a running container.
    pub fn stats(&self, name: &str) -> Result<Stats> {
        let st = self.running_state(name)?;
        let cg = st
            .cgroup
            .ok_or_else(|| Error::Cgroup(format!("container {name} has no cgroup")))?;
        Ok(cg.stats())
    }

    fn remove_stale(&self, st: &State) {
        if st.running() {
            if let Some(pid) = st.pid {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = thaw_if_paused(st.cgroup.as_ref());
            }
        }
        cleanup(&self.paths, st);
    }

    /// Makes sure the bridge is up and picks a free address on it for a
    /// new endpoint. Call with the network lock held.
    fn bridge_address(&self) -> Result<std::net::Ipv4Addr> {
        network::ensure_bridge(&self.bridge, &self.paths.forward_saved())?;
        let used: Vec<_> = state::list(&self.paths)
            .into_iter()
            .filter_map(|(_, s)| s.ok()?.net.map(|n| n.ip))
            .collect();
        network::allocate(&self.bridge, &used)
    }

    /// Gives a network endpoint that is not one of this runtime's
    /// containers (a uvm VM's tap, `link`) an address from the containers'
    /// allocator and publishes `ports` to it. It is recorded as state under
    /// `name`, owned by the calling process, so addresses never collide
    /// across levels and `gc` removes it all if the caller dies;
    /// [`Runtime::release`] removes it when done. `what` is shown by `ps`.
    pub fn lease(
        &self,
        name: &str,
        link: &str,
        ports: &[spec::PortMap],
        what: &str,
    ) -> Result<NetConfig> {
        spec::validate_name(name)?;
        if !is_root() {
            return Err(Error::Rootless("bridge networking needs root".into()));
        }
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let start = state::proc_start_time(me).unwrap_or(0);
        let mut st = State {
            name: name.to_string(),
            id: state::new_id(),
            rootfs: PathBuf::new(),
            args: vec![what.to_string()],
            created: state::now(),
            runtime_pid: me,
            runtime_start: start,
            pid: Some(me),
            pid_start: Some(start),
            cgroup: None,
            net_mode: NetMode::Bridge,
            net: None,
            netns: Default::default(),
            overlay: None,
            keep: false,
            image: None,
        };
        self.paths.ensure_root()?;
        st.claim(&self.paths, &[])?;
        let r = (|| {
            let _lock = self.paths.lock_net()?;
            let ip = self.bridge_address()?;
            let mut net = NetConfig {
                bridge: self.bridge.name.clone(),
                ip,
                prefix: self.bridge.prefix,
                gateway: self.bridge.gateway(),
                veth: link.to_string(),
                ports: Vec::new(),
            };
            // Saved before publishing, so a crash in between leaves
            // nothing gc cannot find.
            st.net = Some(net.clone());
            st.save(&self.paths)?;
            network::publish(ip, ports)?;
            net.ports = ports.to_vec();
            st.net = Some(net.clone());
            st.save(&self.paths)?;
            Ok(net)
        })();
        if r.is_err() {
            cleanup(&self.paths, &st);
        }
        r
    }

    /// Attaches an existing link (a tap) to the runtime's bridge, up.
    pub fn attach_link(&self, link: &str) -> Result<()> {
        let mut nl = crate::netlink::Netlink::new()?;
        nl.link_set_master(link, &self.bridge.name)?;
        nl.link_set_up(link)?;
        Ok(())
    }

    /// Removes a [`Runtime::lease`]: its ports, its link if still there, its
    /// state.
    pub fn release(&self, name: &str) {
        if let Ok(st) = State::load(&self.paths, name) {
            cleanup(&self.paths, &st);
        }
    }

    /// Removes the containers whose runtime died (a cheap start-up sweep;
    /// [`Runtime::gc`] also looks for orphan cgroups and veths).
    pub fn sweep(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for (name, st) in state::list(&self.paths) {
            if let Ok(st) = st {
                if !st.runtime_alive() {
                    self.remove_stale(&st);
                    removed.push(format!("container {name}"));
                }
            }
        }
        removed
    }

    /// Removes what containers whose runtime died left behind: state,
    /// cgroups, veths, published ports, overlays. Returns what was removed.
    pub fn gc(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        // Rootless containers have no cgroup, veth or NAT rule of their own,
        // and the host's are not ours to remove.
        let root = is_root();
        let hierarchy = self.hierarchy().ok().filter(|_| root);
        // Cgroups and veths first listed, then states: a container created in
        // between has its state written before either exists.
        let mut cgroup_dirs: Vec<PathBuf> = Vec::new();
        match &hierarchy {
            Some(Hierarchy::V2 { root }) => cgroup_dirs.push(root.join(&self.cgroup_parent)),
            Some(Hierarchy::V1 { mounts }) => {
                cgroup_dirs.extend(mounts.iter().map(|(_, p)| p.join(&self.cgroup_parent)))
            }
            None => {}
        }
        let cgroups: Vec<PathBuf> = cgroup_dirs
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.path())
            .collect();
        let veths: Vec<String> = crate::netlink::Netlink::new()
            .and_then(|mut nl| nl.link_names())
            .unwrap_or_default()
            .into_iter()
            .filter(|_| root)
            .filter(|n| {
                n.starts_with(network::VETH_PREFIX) && n.len() == network::VETH_PREFIX.len() + 10
            })
            .collect();

        let mut live_ids = Vec::new();
        for (name, st) in state::list(&self.paths) {
            match st {
                Ok(st) if st.runtime_alive() => live_ids.push(st.id.clone()),
                Ok(st) => {
                    self.remove_stale(&st);
                    removed.push(format!("container {name}"));
                }
                Err(_) => {
                    // Unreadable state: only remove if old enough not to be
                    // one being written right now.
                    let dir = self.paths.container(&name);
                    let old = fs::metadata(&dir)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age.as_secs() > 60);
                    if old && fs::remove_dir_all(&dir).is_ok() {
                        removed.push(format!("unreadable state {}", dir.display()));
                    }
                }
            }
        }
        for dir in cgroups {
            let id = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !live_ids.contains(&id) && fs::remove_dir(&dir).is_ok() {
                removed.push(format!("cgroup {}", dir.display()));
            }
        }
        // The parent cgroups themselves, once empty (fails while in use).
        for dir in &cgroup_dirs {
            if fs::remove_dir(dir).is_ok() {
                removed.push(format!("cgroup {}", dir.display()));
            }
        }
        for v in veths {
            if !live_ids.iter().any(|id| network::veth_name(id) == v) {
                if let Ok(mut nl) = crate::netlink::Netlink::new() {
                    if nl.link_delete(&v).is_ok() {
                        removed.push(format!("veth {v}"));
                    }
                }
            }
        }
        // The bridge and its NAT rules, once no container uses them.
        if root
            && !self
                .list()
                .iter()
                .any(|s| s.net.as_ref().is_some_and(|n| n.bridge == self.bridge.name))
        {
            let _lock = self.paths.lock_net()?;
            removed.extend(network::teardown(
                &self.bridge,
                &self.paths.forward_saved(),
            )?);
        }
        // Temporary claim directories of runtimes that died mid-claim.
        if let Ok(rd) = fs::read_dir(self.paths.containers()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = n.strip_prefix(".new-") {
                    let old = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|a| a.as_secs() > 60);
                    if old && !live_ids.iter().any(|l| l == id) {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Runs a command in a running container (joins its namespaces and
    /// cgroup); returns its exit.
    pub fn exec(&self, name: &str, opts: &ExecOptions) -> Result<ExitKind> {
        process::become_subreaper()?;
        let pid = self.exec_start(name, opts)?;
        match &opts.forward_signals {
            Some(sigs) => process::wait_forwarding(pid, sigs),
            None => process::wait_exit(pid),
        }
    }

    /// Starts a command in a running container and returns its pid once it
    /// has exec'd. The caller must be a subreaper (the process is an
    /// orphan's child) and reaps it.
    pub fn exec_start(&self, name: &str, opts: &ExecOptions) -> Result<Pid> {
        let st = self.running_state(name)?;
        // Its process would join the frozen cgroup and wait there.
        if st.paused() {
            return Err(Error::Paused(name.to_string()));
        }
        let pid = st.pid.ok_or_else(|| Error::NotRunning(name.to_string()))?;
        let config = st.dir(&self.paths).join("config.json");
        let spec = Spec::load(&config).map_err(|e| Error::State {
            name: name.to_string(),
            msg: format!("{}: {e}", config.display()),
        })?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| Error::Setup("spec has no process".into()))?;
        if opts.args.is_empty() {
            return Err(Error::invalid("COMMAND", "", "no command given after --"));
        }
        process.set_args(Some(opts.args.clone()));
        if !opts.env.is_empty() {
            let mut env = process.env().clone().unwrap_or_default();
            for e in &opts.env {
                let key = e.split('=').next().unwrap_or(e);
                env.retain(|x| x.split('=').next() != Some(key));
                env.push(e.clone());
            }
            process.set_env(Some(env));
        }
        if let Some((uid, gid)) = opts.user {
            let mut user = process.user().clone();
            user.set_uid(uid);
            user.set_gid(gid);
            process.set_user(user);
        }
        let seccomp: Vec<BpfProgram> =
            match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
                Some(p) => super::seccomp::compile(p)?,
                None => Vec::new(),
            };
        // Open the namespaces now: pid reuse cannot swap them under us after
        // the liveness check below.
        let order = [
            // First: the others are owned by it, and joining it gives the
            // capabilities joining them needs (rootless: the only way in).
            ("user", CloneFlags::CLONE_NEWUSER),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ];
        let mut nsfds: Vec<(OwnedFd, CloneFlags)> = Vec::new();
        let own = |ns: &str| fs::read_link(format!("/proc/self/ns/{ns}")).ok();
        for (ns, flag) in order {
            let path = format!("/proc/{pid}/ns/{ns}");
            if fs::read_link(&path).ok() == own(ns) {
                continue; // shared with the host (e.g. --net host)
            }
            let f = fs::File::open(&path).map_err(|e| Error::io(format!("opening {path}"), e))?;
            nsfds.push((OwnedFd::from(f), flag));
        }
        if !st.running() {
            return Err(Error::NotRunning(name.to_string()));
        }
        process::spawn_joined(
            st.cgroup.as_ref(),
            &nsfds,
            &process,
            &seccomp,
            opts.cwd.as_deref(),
            opts.stdio.as_ref(),
        )
    }
}

/// What a detached container (OCI create) adds to the set-up.
#[derive(Debug, Default)]
pub struct DetachOptions<'a> {
    /// `--console-socket`, connected: PID 1 sends its terminal's master here.
    pub console: Option<BorrowedFd<'a>>,
}

/// Options of `uvm container exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// Forward these signals to the process while waiting (CLI); `None`
    /// waits plainly (library use).
    pub forward_signals: Option<nix::sys::signal::SigSet>,
    /// Its user instead of the container's.
    pub user: Option<(u32, u32)>,
    /// Its stdin, stdout and stderr; `None`: the runtime's own.
    pub stdio: Option<process::Stdio>,
}

impl Container {
    pub fn name(&self) -> &str {
        &self.state.name
    }
    pub fn id(&self) -> &str {
        &self.state.id
    }
    /// PID 1 of the container as the host sees it.
    pub fn pid(&self) -> i32 {
        self.state.pid.unwrap_or(0)
    }
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether [`Container::start`] is still to come.
    pub fn created(&self) -> bool {
        self.pending.is_some()
    }

    /// Lets PID 1 exec the workload; returns once it has (or failed to:
    /// then the container is cleaned up when dropped). Starting twice is
    /// an error.
    pub fn start(&mut self) -> Result<()> {
        let started = self.pending.take().ok_or_else(|| {
            Error::Setup(format!("container {} already started", self.state.name))
        })?;
        started.release().map(drop)
    }

    /// Removes everything the container had, once its PID 1 was reaped by
    /// the caller (a process reaping all its children, such as an agent).
    pub fn reaped(mut self, kind: ExitKind) -> Exit {
        self.finish(kind)
    }

    /// Sends a signal to the container's PID 1 (thawing it after a
    /// SIGKILL if it was paused, as [`Runtime::kill`]).
    pub fn kill(&self, sig: Signal) -> Result<()> {
        signal::kill(Pid::from_raw(self.pid()), sig)
            .map_err(|e| Error::sys(format!("kill {}", self.state.name), e))?;
        if sig == Signal::SIGKILL {
            thaw_if_paused(self.state.cgroup.as_ref())?;
        }
        Ok(())
    }

    fn finish(&mut self, kind: ExitKind) -> Exit {
        let cg = self.state.cgroup.clone();
        let oom = cg.as_ref().map_or(0, Cgroup::oom_kills) > 0;
        let limit = cg.as_ref().and_then(|c| c.stats().memory_limit);
        cleanup(&self.paths, &self.state);
        self.done = true;
        Exit {
            kind,
            oom_killed: oom,
            memory_limit: limit,
        }
    }

    /// Waits for PID 1 to exit, then removes everything the container had.
    pub fn wait(mut self) -> Result<Exit> {
        let kind = process::wait_exit(Pid::from_raw(self.pid()))?;
        Ok(self.finish(kind))
    }

    /// As [`Container::wait`], forwarding `sigs` (blocked by the caller in
    /// this thread) to the container while it runs.
    pub fn wait_forwarding(mut self, sigs: &nix::sys::signal::SigSet) -> Result<Exit> {
        let kind = process::wait_forwarding(Pid::from_raw(self.pid()), sigs)?;
        Ok(self.finish(kind))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.kill(Signal::SIGKILL);
            let _ = process::wait_exit(Pid::from_raw(self.pid()));
            cleanup(&self.paths, &self.state);
        }
    }
}
