//! The task API of one pod's shim: containerd's calls turned into uvm's
//! sandbox library's (the pod's microVM) and its agent's (the containers).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::events::task::{
    TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn};
use containerd_shim::protos::topics::{
    TASK_EXEC_ADDED_EVENT_TOPIC, TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC,
    TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc::{self, Code, Status as RpcStatus};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, Task, TtrpcContext, TtrpcResult};
use log::{info, warn};
use serde_json::Value;
use uvm::agent::stdio::{Attached, Pumps};
use uvm::agent::{ProcessSpec, Streams};
use uvm::error::Error;
use uvm::sandbox::{self, ContainerConfig, Sandbox, SandboxConfig};

/// The pod's VM: small, as a pod's containers are; the agent and a few
/// processes fit in it.
const POD_VCPUS: u32 = 1;
const POD_MEM: u64 = 256 << 20;

/// One process of a task: the container's own, or one of its execs.
struct Proc {
    stdin: String,
    stdout: String,
    stderr: String,
    status: Status,
    exit: Option<(u32, Timestamp)>,
    /// containerd's FIFOs, opened at create (or exec): the shim's ends.
    files: Option<[Option<File>; 3]>,
    /// The guest's streams, attached before the process may write much.
    attached: Option<Attached>,
    /// A writer of our own on the stdin FIFO, so that its reader sees no
    /// end before containerd's CloseIO (a FIFO's reader reads EOF whenever
    /// no writer has it open, also before containerd's writer came).
    stdin_keeper: Option<File>,
    /// An exec's process, which its start runs (the agent runs an exec as
    /// it is made; containerd makes it first and starts it later).
    spec: Option<ProcessSpec>,
}

impl Proc {
    fn streams(&self) -> Streams {
        Streams {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty(),
        }
    }
}

/// containerd's FIFOs of a process: its stdin reader and keeper, its
/// stdout and stderr writers.
fn open_stdio(
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<([Option<File>; 3], Option<File>), String> {
    let (reader, keeper) = open_stdin(stdin)?;
    Ok(([reader, open_fifo(stdout)?, open_fifo(stderr)?], keeper))
}

/// One container (a task) of the pod.
struct Ctr {
    /// Its name in the sandbox (ids are cut to what a sandbox name holds).
    name: String,
    bundle: PathBuf,
    /// Its own process (containerd's exec id "").
    init: Proc,
    execs: HashMap<String, Proc>,
    /// Whether the shim mounted the bundle's rootfs (containerd's mounts).
    mounted: bool,
    /// Frozen by Pause (the guest's cgroup freezer) until Resume.
    paused: bool,
}

impl Ctr {
    fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

struct State {
    /// The pod's sandbox, once its first container made it.
    sandbox: Option<Sandbox>,
    containers: HashMap<String, Ctr>,
}

pub struct Service {
    namespace: String,
    publisher: Arc<Mutex<RemotePublisher>>,
    exit: Arc<ExitSignal>,
    state: Arc<(Mutex<State>, Condvar)>,
}

fn rpc(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(RpcStatus {
        code: code.into(),
        message: msg.to_string(),
        ..Default::default()
    })
}

fn failed(e: Error) -> ttrpc::Error {
    rpc(Code::FAILED_PRECONDITION, e)
}

/// A sandbox or container name from a containerd id (at most 48 of its
/// characters; containerd's ids are letters, digits, `_`, `.`, `-`).
pub fn name_of(id: &str) -> String {
    id.chars().take(48).collect()
}

/// What the bundle's OCI spec asks the container's process to be.
fn container_config(id: &str, rootfs: &Path, spec: &Value) -> Result<ContainerConfig, String> {
    Ok(ContainerConfig {
        id: name_of(id),
        rootfs: rootfs.to_path_buf(),
        hostname: spec["hostname"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string),
        process: process_spec(&spec["process"])?,
    })
}

/// An OCI process (a bundle's, or an exec's spec) as the agent runs it.
fn process_spec(p: &Value) -> Result<ProcessSpec, String> {
    if p["terminal"].as_bool() == Some(true) {
        return Err("terminals are not supported by the uvm shim yet (run without -t)".into());
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let id32 = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let user = match (id32(&p["user"]["uid"]), id32(&p["user"]["gid"])) {
        (Some(u), Some(g)) => Some((u, g)),
        _ => None,
    };
    let args = strings(&p["args"]);
    if args.first().is_none_or(String::is_empty) {
        return Err("the process has no args".into());
    }
    Ok(ProcessSpec {
        args,
        env: strings(&p["env"]),
        cwd: p["cwd"].as_str().map(str::to_string),
        user,
    })
}

/// Opens containerd's FIFO `path` for the shim's end without waiting for
/// the other end (read and write: the open never blocks).
fn open_fifo(path: &str) -> Result<Option<File>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(Some)
        .map_err(|e| format!("opening {path}: {e}"))
}

/// The stdin FIFO: a reader, and a writer of our own held until CloseIO.
fn open_stdin(path: &str) -> Result<(Option<File>, Option<File>), String> {
    if path.is_empty() {
        return Ok((None, None));
    }
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("opening {path}: {e}"))?;
    let keeper = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {path}: {e}"))?;
    // Blocking reads from here on: the copy waits for data, not spins.
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor this function owns; no memory passed.
    unsafe {
        let fl = libc::fcntl(reader.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    Ok((Some(reader), Some(keeper)))
}

/// Mounts containerd's rootfs mounts on the bundle's `rootfs` folder
/// (a snapshotter's bind or overlay mount). Done here, not with the
/// shim crate's helper, which mounts in a child it waits for through the
/// crate's reaper, which this shim runs without.
fn mount_rootfs(req: &CreateTaskRequest, rootfs: &Path) -> Result<bool, String> {
    use nix::mount::MsFlags;
    if req.rootfs.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(rootfs).map_err(|e| format!("creating {}: {e}", rootfs.display()))?;
    for m in &req.rootfs {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in &m.options {
            match o.as_str() {
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => {}
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                other => data.push(other),
            }
        }
        let data = data.join(",");
        let fstype = (!flags.contains(MsFlags::MS_BIND)).then_some(m.type_.as_str());
        nix::mount::mount(
            Some(m.source.as_str()),
            rootfs,
            fstype,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|e| format!("mounting the rootfs ({} {}): {e}", m.type_, m.source))?;
    }
    Ok(true)
}

fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            warn!("unmounting {}: {e}", rootfs.display());
        }
    }
}

/// What a shim that died left of task `id` in `bundle` of pod `pod`: the
/// pod's sandbox (when the task was the pod's own) and the rootfs mount.
pub fn remove_leftovers(bundle: &Path, pod: &str, id: &str) {
    if pod == id {
        if let Err(e) = sandbox::remove(&name_of(pod)) {
            info!("sandbox {pod}: {e}");
        }
    }
    unmount_rootfs(bundle);
}

/// Reaps the sandbox's VMM (the shim's child) once it ends, so that no
/// zombie of it is left under a long-lived shim.
fn reap_vmm(pid: i32) {
    std::thread::spawn(move || {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    });
}

impl Service {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace,
            publisher: Arc::new(Mutex::new(publisher)),
            exit,
            state: Arc::new((
                Mutex::new(State {
                    sandbox: None,
                    containers: HashMap::new(),
                }),
                Condvar::new(),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pod's sandbox, made by its first container.
    fn sandbox(&self, pod: &str) -> Result<Sandbox, Error> {
        if let Some(sb) = &self.lock().sandbox {
            return Ok(sb.clone());
        }
        let cfg = SandboxConfig {
            name: name_of(pod),
            vcpus: POD_VCPUS,
            mem: POD_MEM,
            bridge: false,
            publish: Vec::new(),
        };
        let sb = sandbox::create(&cfg)?;
        if let sandbox::Status::Running(pid) = sb.status() {
            reap_vmm(pid);
        }
        self.lock().sandbox = Some(sb.clone());
        Ok(sb)
    }

    fn vmm_pid(&self) -> u32 {
        match self.lock().sandbox.as_ref().map(Sandbox::status) {
            Some(sandbox::Status::Running(pid)) => u32::try_from(pid).unwrap_or(0),
            _ => 0,
        }
    }

    fn create_inner(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse, ttrpc::Error> {
        if self.lock().containers.contains_key(&req.id) {
            return Err(rpc(Code::ALREADY_EXISTS, format!("task {} exists", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec: Value = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .ok_or_else(|| {
                rpc(
                    Code::INVALID_ARGUMENT,
                    "the bundle has no readable config.json",
                )
            })?;
        let rootfs = bundle.join("rootfs");
        let c = container_config(&req.id, &rootfs, &spec)
            .map_err(|e| rpc(Code::INVALID_ARGUMENT, e))?;
        if req.terminal {
            return Err(rpc(
                Code::INVALID_ARGUMENT,
                "terminals are not supported by the uvm shim yet",
            ));
        }
        let mounted = mount_rootfs(req, &rootfs).map_err(|e| rpc(Code::INTERNAL, e))?;
        let made = self.make_container(req, &c, &spec);
        match made {
            Ok(ctr) => {
                let ctr = Ctr { mounted, ..ctr };
                self.lock().containers.insert(req.id.clone(), ctr);
                Ok(CreateTaskResponse {
                    pid: self.vmm_pid(),
                    ..Default::default()
                })
            }
            Err(e) => {
                if mounted {
                    unmount_rootfs(&bundle);
                }
                // The pod's first container failing leaves no pod.
                if self.lock().containers.is_empty() {
                    if let Some(sb) = self.lock().sandbox.take() {
                        let _ = sandbox::remove(sb.name());
                    }
                }
                Err(e)
            }
        }
    }

    fn make_container(
        &self,
        req: &CreateTaskRequest,
        c: &ContainerConfig,
        spec: &Value,
    ) -> Result<Ctr, ttrpc::Error> {
        let pod = spec["annotations"][crate::POD_ANNOTATION]
            .as_str()
            .unwrap_or(&req.id)
            .to_string();
        let sb = self.sandbox(&pod).map_err(failed)?;
        let mut init = Proc {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            status: Status::CREATED,
            exit: None,
            files: None,
            attached: None,
            stdin_keeper: None,
            spec: None,
        };
        let streams = init.streams();
        let a = sb.create_container(c, streams, false).map_err(failed)?;
        let io = (|| -> Result<_, String> {
            let (files, keeper) = open_stdio(&req.stdin, &req.stdout, &req.stderr)?;
            let attached = Attached::connect(&a, &c.id, "", streams).map_err(|e| e.to_string())?;
            Ok((attached, files, keeper))
        })();
        match io {
            Ok((attached, files, keeper)) => {
                init.attached = Some(attached);
                init.files = Some(files);
                init.stdin_keeper = keeper;
            }
            Err(e) => {
                let _ = sb.remove_container(&c.id, true);
                return Err(rpc(Code::INTERNAL, e));
            }
        }
        Ok(Ctr {
            name: c.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            init,
            execs: HashMap::new(),
            mounted: false,
            paused: false,
        })
    }

    fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        if let Ok(p) = self.publisher.lock() {
            if let Err(e) = p.publish(Context::default(), topic, &self.namespace, ev) {
                warn!("publishing {topic}: {e}");
            }
        }
    }

    /// Waits in a thread of its own for the end of process `exec_id` of
    /// task `id`: its output copied out, its status recorded, containerd
    /// told.
    fn watch(&self, id: String, exec_id: String, name: String, pumps: Pumps) {
        let state = self.state.clone();
        let sb = self.lock().sandbox.clone();
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let pid = self.vmm_pid();
        std::thread::spawn(move || {
            let status = sb
                .as_ref()
                .ok_or_else(|| Error::Usage("no sandbox".into()))
                .and_then(|sb| sb.agent())
                .and_then(|a| a.wait(&name, &exec_id));
            if let Err(e) = pumps.finish() {
                warn!("{id}/{exec_id}: {e}");
            }
            let code = match status {
                Ok(s) => u32::try_from(s.status).unwrap_or(255),
                Err(e) => {
                    warn!("{id}/{exec_id}: waiting for it: {e}");
                    255
                }
            };
            let at = containerd_shim::util::timestamp().unwrap_or_default();
            {
                let (lock, cv) = &*state;
                let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(p) = st
                    .containers
                    .get_mut(&id)
                    .and_then(|c| c.proc_mut(&exec_id))
                {
                    p.status = Status::STOPPED;
                    p.exit = Some((code, at.clone()));
                    // containerd's readers have had everything.
                    p.stdin_keeper = None;
                }
                cv.notify_all();
            }
            if let Ok(p) = publisher.lock() {
                let ev = TaskExit {
                    container_id: id.clone(),
                    id: if exec_id.is_empty() {
                        id.clone()
                    } else {
                        exec_id.clone()
                    },
                    pid,
                    exit_status: code,
                    exited_at: Some(at).into(),
                    ..Default::default()
                };
                if let Err(e) = p.publish(
                    Context::default(),
                    TASK_EXIT_EVENT_TOPIC,
                    &namespace,
                    Box::new(ev),
                ) {
                    warn!("{id}/{exec_id}: publishing its exit: {e}");
                }
            }
        });
    }

    fn no_task(id: &str) -> ttrpc::Error {
        rpc(Code::NOT_FOUND, format!("task {id} not found"))
    }

    fn no_process(id: &str, exec_id: &str) -> ttrpc::Error {
        if exec_id.is_empty() {
            Self::no_task(id)
        } else {
            rpc(
                Code::NOT_FOUND,
                format!("process {exec_id} of task {id} not found"),
            )
        }
    }

    /// The sandbox name of task `id`, whose own process runs and which
    /// is paused or not as `paused` says.
    fn running_name(&self, id: &str, paused: bool) -> Result<String, ttrpc::Error> {
        let st = self.lock();
        let c = st.containers.get(id).ok_or_else(|| Self::no_task(id))?;
        if c.init.status != Status::RUNNING {
            return Err(rpc(
                Code::FAILED_PRECONDITION,
                format!("task {id} is not running"),
            ));
        }
        if c.paused != paused {
            let is = if c.paused { "already" } else { "not" };
            return Err(rpc(
                Code::FAILED_PRECONDITION,
                format!("task {id} is {is} paused"),
            ));
        }
        Ok(c.name.clone())
    }

    /// Freezes (`pause`) or thaws task `id`'s container in the guest,
    /// then publishes `event`.
    fn freeze(
        &self,
        id: &str,
        pause: bool,
        event: (&str, Box<dyn MessageDyn>),
    ) -> TtrpcResult<Empty> {
        let name = self.running_name(id, !pause)?;
        let a = self.sandbox_of(id)?.agent().map_err(failed)?;
        if pause {
            a.pause_container(&name).map_err(failed)?;
        } else {
            a.resume_container(&name).map_err(failed)?;
        }
        self.set_paused(id, pause);
        self.publish(event.0, event.1);
        Ok(Empty::new())
    }

    fn set_paused(&self, id: &str, paused: bool) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.paused = paused;
        }
    }

    fn sandbox_of(&self, id: &str) -> Result<Sandbox, ttrpc::Error> {
        self.lock().sandbox.clone().ok_or_else(|| Self::no_task(id))
    }

    /// Starts an exec: the agent runs it, its streams are attached and
    /// copied, and its end is watched.
    fn start_exec(&self, id: &str, exec_id: &str) -> Result<(), ttrpc::Error> {
        let (name, spec, streams, files) = {
            let mut st = self.lock();
            let c = st.containers.get_mut(id).ok_or_else(|| Self::no_task(id))?;
            if c.init.status != Status::RUNNING || c.paused {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("task {id} is not running (or paused)"),
                ));
            }
            let name = c.name.clone();
            let p = c
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| Self::no_process(id, exec_id))?;
            if p.status != Status::CREATED {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id} of task {id} is not created"),
                ));
            }
            let spec = p.spec.take().ok_or_else(|| Self::no_process(id, exec_id))?;
            (name, spec, p.streams(), p.files.take())
        };
        let a = self.sandbox_of(id)?.agent().map_err(failed)?;
        let started = a
            .exec(&name, exec_id, &spec, streams)
            .and_then(|()| Attached::connect(&a, &name, exec_id, streams));
        let attached = match started {
            Ok(at) => at,
            Err(e) => {
                // The process may have run: it goes, so the id can be had again.
                let _ = a.signal(&name, exec_id, libc::SIGKILL, false);
                if let Some(p) = self
                    .lock()
                    .containers
                    .get_mut(id)
                    .and_then(|c| c.execs.get_mut(exec_id))
                {
                    p.status = Status::STOPPED;
                    p.exit = Some((255, containerd_shim::util::timestamp().unwrap_or_default()));
                    p.stdin_keeper = None;
                }
                self.state.1.notify_all();
                return Err(failed(e));
            }
        };
        let [i, o, e] = files.unwrap_or_default();
        let pumps = attached.pump_files(i, o, e);
        if let Some(p) = self
            .lock()
            .containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            p.status = Status::RUNNING;
        }
        self.watch(id.to_string(), exec_id.to_string(), name, pumps);
        self.publish(
            TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: self.vmm_pid(),
                ..Default::default()
            }),
        );
        Ok(())
    }
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        info!("create {} in {}", req.id, req.bundle);
        self.create_inner(&req)
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        if !req.exec_id.is_empty() {
            info!("start exec {} of {}", req.exec_id, req.id);
            self.start_exec(&req.id, &req.exec_id)?;
            return Ok(StartResponse {
                pid: self.vmm_pid(),
                ..Default::default()
            });
        }
        let (name, attached, files) = {
            let mut st = self.lock();
            let c = st
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| Self::no_task(&req.id))?;
            if c.init.status != Status::CREATED {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is not created", req.id),
                ));
            }
            (c.name.clone(), c.init.attached.take(), c.init.files.take())
        };
        let sb = self.sandbox_of(&req.id)?;
        sb.agent()
            .and_then(|a| a.start_container(&name))
            .map_err(failed)?;
        let pumps = attached.map(|a| {
            let [i, o, e] = files.unwrap_or_default();
            a.pump_files(i, o, e)
        });
        if let Some(c) = self.lock().containers.get_mut(&req.id) {
            c.init.status = Status::RUNNING;
        }
        if let Some(p) = pumps {
            self.watch(req.id.clone(), String::new(), name, p);
        }
        Ok(StartResponse {
            pid: self.vmm_pid(),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        info!("exec {} in {}", req.exec_id, req.id);
        if req.exec_id.is_empty() || !uvm_agent_api::valid_id(&req.exec_id) {
            return Err(rpc(
                Code::INVALID_ARGUMENT,
                format!("exec id {:?}: letters, digits, '_', '.', '-'", req.exec_id),
            ));
        }
        if req.terminal {
            return Err(rpc(
                Code::INVALID_ARGUMENT,
                "terminals are not supported by the uvm shim yet (exec without -t)",
            ));
        }
        let spec: Value = req
            .spec
            .as_ref()
            .and_then(|any| serde_json::from_slice(&any.value).ok())
            .ok_or_else(|| {
                rpc(
                    Code::INVALID_ARGUMENT,
                    "the exec has no readable process spec",
                )
            })?;
        let spec = process_spec(&spec).map_err(|e| rpc(Code::INVALID_ARGUMENT, e))?;
        {
            let st = self.lock();
            let c = st
                .containers
                .get(&req.id)
                .ok_or_else(|| Self::no_task(&req.id))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(rpc(
                    Code::ALREADY_EXISTS,
                    format!("process {} of task {} exists", req.exec_id, req.id),
                ));
            }
            if c.init.status != Status::RUNNING || c.paused {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is not running (or paused)", req.id),
                ));
            }
        }
        // containerd's FIFOs, opened here as at create: its writer of
        // stdin may come before Start.
        let (files, keeper) =
            open_stdio(&req.stdin, &req.stdout, &req.stderr).map_err(|e| rpc(Code::INTERNAL, e))?;
        let p = Proc {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            status: Status::CREATED,
            exit: None,
            files: Some(files),
            attached: None,
            stdin_keeper: keeper,
            spec: Some(spec),
        };
        self.lock()
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| Self::no_task(&req.id))?
            .execs
            .insert(req.exec_id.clone(), p);
        self.publish(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        // No process of this shim has a terminal (create and exec refuse
        // one), so there is none to resize.
        let st = self.lock();
        st.containers
            .get(&req.id)
            .and_then(|c| c.proc(&req.exec_id))
            .ok_or_else(|| Self::no_process(&req.id, &req.exec_id))?;
        Err(rpc(
            Code::FAILED_PRECONDITION,
            format!(
                "process {:?} of task {} has no terminal",
                req.exec_id, req.id
            ),
        ))
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let pid = self.vmm_pid();
        let st = self.lock();
        let c = st
            .containers
            .get(&req.id)
            .ok_or_else(|| Self::no_task(&req.id))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| Self::no_process(&req.id, &req.exec_id))?;
        let mut r = StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.display().to_string(),
            pid,
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            ..Default::default()
        };
        r.status = if req.exec_id.is_empty() && c.paused && p.status == Status::RUNNING {
            Status::PAUSED
        } else {
            p.status
        }
        .into();
        if let Some((code, at)) = &p.exit {
            r.exit_status = *code;
            r.exited_at = Some(at.clone()).into();
        }
        Ok(r)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let p = st
                .containers
                .get(&req.id)
                .and_then(|c| c.proc(&req.exec_id))
                .ok_or_else(|| Self::no_process(&req.id, &req.exec_id))?;
            if let Some((code, at)) = &p.exit {
                return Ok(WaitResponse {
                    exit_status: *code,
                    exited_at: Some(at.clone()).into(),
                    ..Default::default()
                });
            }
            st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let (name, paused) = {
            let st = self.lock();
            let c = st
                .containers
                .get(&req.id)
                .ok_or_else(|| Self::no_task(&req.id))?;
            let p = c
                .proc(&req.exec_id)
                .ok_or_else(|| Self::no_process(&req.id, &req.exec_id))?;
            // A created container's PID 1 waits in the guest and can be
            // signalled; a created exec is not in the guest yet.
            match p.status {
                Status::STOPPED => {
                    return Err(rpc(
                        Code::NOT_FOUND,
                        format!(
                            "process {:?} of task {}: already finished",
                            req.exec_id, req.id
                        ),
                    ))
                }
                Status::CREATED if !req.exec_id.is_empty() => {
                    return Err(rpc(
                        Code::FAILED_PRECONDITION,
                        format!("process {} of task {} is not started", req.exec_id, req.id),
                    ))
                }
                _ => {}
            }
            (c.name.clone(), c.paused)
        };
        let sig =
            i32::try_from(req.signal).map_err(|_| rpc(Code::INVALID_ARGUMENT, "bad signal"))?;
        let a = self.sandbox_of(&req.id)?.agent().map_err(failed)?;
        // All the container's processes: only for its own process, as runc.
        let all = req.all && req.exec_id.is_empty();
        a.signal(&name, &req.exec_id, sig, all).map_err(failed)?;
        // As runc does: a frozen task dies of SIGKILL only once thawed
        // (cgroup v1's freezer), so a paused container is resumed.
        if paused && sig == libc::SIGKILL {
            match a.resume_container(&name) {
                Ok(()) => self.set_paused(&req.id, false),
                Err(e) => warn!("{}: thawing it after SIGKILL: {e}", req.id),
            }
        }
        Ok(Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let ev = TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.freeze(&req.id, true, (TASK_PAUSED_EVENT_TOPIC, Box::new(ev)))
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let ev = TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.freeze(&req.id, false, (TASK_RESUMED_EVENT_TOPIC, Box::new(ev)))
    }

    /// The container's cgroup counters in the guest, as cgroup v1 metrics
    /// (what containerd 1.6's `ctr task metrics` and CRI read).
    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let name = {
            let st = self.lock();
            let c = st
                .containers
                .get(&req.id)
                .ok_or_else(|| Self::no_task(&req.id))?;
            if c.init.status != Status::RUNNING {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is not running", req.id),
                ));
            }
            c.name.clone()
        };
        let a = self.sandbox_of(&req.id)?.agent().map_err(failed)?;
        let s = a.container_stats(&name).map_err(failed)?;
        let m = Metrics {
            pids: Some(PidsStat {
                current: s.pids_current,
                limit: s.pids_limit,
                ..Default::default()
            })
            .into(),
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: s.cpu_usage_ns,
                    ..Default::default()
                })
                .into(),
                throttling: Some(Throttle {
                    periods: s.cpu_nr_periods,
                    throttled_periods: s.cpu_nr_throttled,
                    throttled_time: s.cpu_throttled_ns,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                usage: Some(MemoryEntry {
                    usage: s.memory_usage,
                    max: s.memory_max_usage,
                    limit: s.memory_limit,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory_oom_control: Some(MemoryOomControl {
                oom_kill: s.oom_kills,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let value = m
            .write_to_bytes()
            .map_err(|e| rpc(Code::INTERNAL, format!("encoding the metrics: {e}")))?;
        Ok(StatsResponse {
            stats: Some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".into(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if let Some(p) = self
            .lock()
            .containers
            .get_mut(&req.id)
            .and_then(|c| c.proc_mut(&req.exec_id))
        {
            // Our writer goes; containerd's closing its own ends the copy.
            p.stdin_keeper = None;
        }
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let pid = self.vmm_pid();
        if !req.exec_id.is_empty() {
            let (name, p) = {
                let mut st = self.lock();
                let c = st
                    .containers
                    .get_mut(&req.id)
                    .ok_or_else(|| Self::no_task(&req.id))?;
                let p = c
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| Self::no_process(&req.id, &req.exec_id))?;
                if p.status == Status::RUNNING {
                    return Err(rpc(
                        Code::FAILED_PRECONDITION,
                        format!(
                            "process {} of task {} is running: kill it first",
                            req.exec_id, req.id
                        ),
                    ));
                }
                let p = c
                    .execs
                    .remove(&req.exec_id)
                    .ok_or_else(|| Self::no_process(&req.id, &req.exec_id))?;
                (c.name.clone(), p)
            };
            // Never started, the agent has no record of it.
            if p.exit.is_some() {
                if let Some(Ok(a)) = self.lock().sandbox.as_ref().map(Sandbox::agent) {
                    if let Err(e) = a.remove_process(&name, &req.exec_id) {
                        warn!("{}/{}: {e}", req.id, req.exec_id);
                    }
                }
            }
            let (code, at) = p
                .exit
                .unwrap_or((0, containerd_shim::util::timestamp().unwrap_or_default()));
            return Ok(DeleteResponse {
                pid,
                exit_status: code,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let c = {
            let mut st = self.lock();
            let c = st
                .containers
                .get(&req.id)
                .ok_or_else(|| Self::no_task(&req.id))?;
            if c.init.status == Status::RUNNING {
                return Err(rpc(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is running: kill it first", req.id),
                ));
            }
            st.containers
                .remove(&req.id)
                .ok_or_else(|| Self::no_task(&req.id))?
        };
        let sb = self.lock().sandbox.clone();
        if let Some(sb) = &sb {
            if let Err(e) = sb.remove_container(&c.name, true) {
                warn!("{}: removing it from the sandbox: {e}", req.id);
            }
        }
        if c.mounted {
            unmount_rootfs(&c.bundle);
        }
        // The pod goes with its last container: VMM, virtiofsd, socket,
        // cgroup and folder.
        if self.lock().containers.is_empty() {
            if let Some(sb) = self.lock().sandbox.take() {
                sandbox::remove(sb.name()).map_err(failed)?;
            }
        }
        let (code, at) = c
            .init
            .exit
            .unwrap_or((0, containerd_shim::util::timestamp().unwrap_or_default()));
        Ok(DeleteResponse {
            pid,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        if !self.lock().containers.contains_key(&req.id) {
            return Err(Self::no_task(&req.id));
        }
        let mut r = PidsResponse::new();
        r.processes.push(ProcessInfo {
            pid: self.vmm_pid(),
            ..Default::default()
        });
        Ok(r)
    }

    fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.vmm_pid(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if !self.lock().containers.is_empty() {
            return Ok(Empty::new());
        }
        if let Some(sb) = self.lock().sandbox.take() {
            let _ = sandbox::remove(sb.name());
        }
        self.exit.signal();
        Ok(Empty::new())
    }
}
