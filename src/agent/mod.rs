//! The host side of the guest agent: a client for its ttrpc API over the
//! VM's vsock Unix socket, and the stdio streams of its processes. The CLI
//! uses it, and so will the sandbox and the containerd shim.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uvm_agent_api::agent::{self, Empty};
use uvm_agent_api::agent_ttrpc::AgentServiceClient;
use uvm_agent_api::ttrpc::{self, context};
pub use uvm_agent_api::{Stream, AGENT_PORT, STDIO_PORT};

use crate::error::Error;

pub mod ctl;
pub mod stdio;
pub mod workload;

/// How long one handshake with the VMM's vsock socket may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn agent_err(what: &str, e: ttrpc::Error) -> Error {
    let msg = match e {
        ttrpc::Error::RpcStatus(s) => s.message,
        e => e.to_string(),
    };
    Error::Agent(format!("{what}: {msg}"))
}

/// Opens a connection to guest port `port` through the VMM's vsock socket
/// (Firecracker's convention: `CONNECT <port>` answered by `OK <n>`).
pub fn vsock_connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let line = read_line(&mut s)?;
    if !line.starts_with("OK ") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!(
                "port {port}: {}",
                if line.is_empty() { "refused" } else { &line }
            ),
        ));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// One line, read byte by byte so nothing after it is consumed.
fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    BufReader::with_capacity(1, s)
        .take(512)
        .read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        return Ok(String::new());
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// What a process runs.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<(u32, u32)>,
}

impl ProcessSpec {
    pub fn new(args: Vec<String>) -> ProcessSpec {
        ProcessSpec {
            args,
            ..ProcessSpec::default()
        }
    }
}

/// Which streams of a process the host attaches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Streams {
    pub const ALL: Streams = Streams {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    fn message(self) -> agent::Stdio {
        let mut s = agent::Stdio::new();
        s.stdin = self.stdin;
        s.stdout = self.stdout;
        s.stderr = self.stderr;
        s
    }
}

/// A filesystem the agent mounts for a container.
#[derive(Debug, Clone)]
pub struct Storage {
    pub source: String,
    pub fstype: String,
    pub options: Vec<String>,
    pub mount_point: String,
}

/// How a process ended: the shell's status, and the signal if one killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub status: i32,
    pub signal: Option<i32>,
}

/// A container as the agent lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub exec_ids: Vec<String>,
}

/// A connected agent.
pub struct AgentClient {
    client: AgentServiceClient,
    uds: PathBuf,
}

fn ctx() -> context::Context {
    context::Context::default()
}

impl AgentClient {
    /// Connects to the agent of the VM whose vsock socket is `uds`, trying
    /// again until it answers its health check or `timeout` has passed (a
    /// booting guest refuses until its agent listens).
    pub fn connect(uds: &Path, timeout: Duration) -> Result<AgentClient, Error> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            last = match vsock_connect(uds, AGENT_PORT) {
                Ok(s) => {
                    let client = ttrpc::Client::new(s.into_raw_fd())
                        .map_err(|e| agent_err("connecting to the agent", e))?;
                    let a = AgentClient {
                        client: AgentServiceClient::new(client),
                        uds: uds.to_path_buf(),
                    };
                    match a.client.check(
                        context::with_duration(Duration::from_secs(5)),
                        &Empty::new(),
                    ) {
                        Ok(_) => return Ok(a),
                        Err(e) => agent_err("health check", e).to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Agent(format!(
                    "no agent answered on {} within {} s: {last}",
                    uds.display(),
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's version, the guest's kernel release and uptime.
    pub fn check(&self) -> Result<(String, String, f64), Error> {
        let r = self
            .client
            .check(
                context::with_duration(Duration::from_secs(5)),
                &Empty::new(),
            )
            .map_err(|e| agent_err("health check", e))?;
        Ok((r.version, r.kernel, r.uptime))
    }

    /// Creates a container from an OCI spec (config.json), its PID 1
    /// waiting for [`AgentClient::start_container`].
    pub fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: Option<&str>,
        overlay: bool,
        storages: &[Storage],
        streams: Streams,
    ) -> Result<(), Error> {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = id.into();
        req.oci_spec = spec_json.to_vec();
        req.rootfs = rootfs.unwrap_or_default().into();
        req.overlay = overlay;
        req.stdio = Some(streams.message()).into();
        for s in storages {
            let mut m = agent::Storage::new();
            m.source = s.source.clone();
            m.fstype = s.fstype.clone();
            m.options = s.options.clone();
            m.mount_point = s.mount_point.clone();
            req.storages.push(m);
        }
        self.client
            .create_container(ctx(), &req)
            .map(drop)
            .map_err(|e| agent_err(&format!("creating container {id}"), e))
    }

    pub fn start_container(&self, id: &str) -> Result<(), Error> {
        let mut req = agent::StartContainerRequest::new();
        req.container_id = id.into();
        self.client
            .start_container(ctx(), &req)
            .map(drop)
            .map_err(|e| agent_err(&format!("starting container {id}"), e))
    }

    /// Starts a process in container `container` ("" for the VM itself).
    pub fn exec(
        &self,
        container: &str,
        exec_id: &str,
        p: &ProcessSpec,
        streams: Streams,
    ) -> Result<(), Error> {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = container.into();
        req.exec_id = exec_id.into();
        let mut m = agent::Process::new();
        m.args = p.args.clone();
        m.env = p.env.clone();
        m.cwd = p.cwd.clone().unwrap_or_default();
        (m.uid, m.gid) = p
            .user
            .map_or((-1, -1), |(u, g)| (i64::from(u), i64::from(g)));
        req.process = Some(m).into();
        req.stdio = Some(streams.message()).into();
        match self.client.exec_process(ctx(), &req) {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s)) if container.is_empty() => {
                let status = match s.code.enum_value() {
                    Ok(ttrpc::Code::NOT_FOUND) => 127,
                    Ok(ttrpc::Code::PERMISSION_DENIED) => 126,
                    _ => return Err(Error::Agent(format!("exec {exec_id}: {}", s.message))),
                };
                Err(Error::NoCommand {
                    status,
                    msg: s.message,
                })
            }
            Err(e) => Err(agent_err(&format!("exec {exec_id}"), e)),
        }
    }

    fn process_ref(container: &str, exec_id: &str) -> agent::ProcessRef {
        let mut r = agent::ProcessRef::new();
        r.container_id = container.into();
        r.exec_id = exec_id.into();
        r
    }

    /// Waits for a process to end (exec_id "" is the container's own).
    pub fn wait(&self, container: &str, exec_id: &str) -> Result<ExitStatus, Error> {
        let r = self
            .client
            .wait_process(ctx(), &Self::process_ref(container, exec_id))
            .map_err(|e| agent_err(&format!("waiting for {container}/{exec_id}"), e))?;
        Ok(ExitStatus {
            status: r.status,
            signal: (r.signal != 0).then_some(r.signal),
        })
    }

    /// Sends `signal` to a process, or with `all` to every process of the
    /// container.
    pub fn signal(
        &self,
        container: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), Error> {
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = container.into();
        req.exec_id = exec_id.into();
        req.signal = u32::try_from(signal).map_err(|_| Error::Usage(format!("signal {signal}")))?;
        req.all = all;
        self.client
            .signal_process(ctx(), &req)
            .map(drop)
            .map_err(|e| agent_err(&format!("signalling {container}/{exec_id}"), e))
    }

    pub fn close_stdin(&self, container: &str, exec_id: &str) -> Result<(), Error> {
        self.client
            .close_stdin(ctx(), &Self::process_ref(container, exec_id))
            .map(drop)
            .map_err(|e| agent_err("closing stdin", e))
    }

    fn container_ref(id: &str) -> agent::ContainerRef {
        let mut r = agent::ContainerRef::new();
        r.container_id = id.into();
        r
    }

    /// Freezes every process of a running container.
    pub fn pause_container(&self, id: &str) -> Result<(), Error> {
        self.client
            .pause_container(ctx(), &Self::container_ref(id))
            .map(drop)
            .map_err(|e| agent_err(&format!("pausing container {id}"), e))
    }

    pub fn resume_container(&self, id: &str) -> Result<(), Error> {
        self.client
            .resume_container(ctx(), &Self::container_ref(id))
            .map(drop)
            .map_err(|e| agent_err(&format!("resuming container {id}"), e))
    }

    /// A running container's cgroup counters.
    pub fn container_stats(&self, id: &str) -> Result<agent::ContainerStats, Error> {
        self.client
            .stats_container(ctx(), &Self::container_ref(id))
            .map_err(|e| agent_err(&format!("stats of container {id}"), e))
    }

    /// Forgets an exec that has ended (refused while it runs).
    pub fn remove_process(&self, container: &str, exec_id: &str) -> Result<(), Error> {
        self.client
            .remove_process(ctx(), &Self::process_ref(container, exec_id))
            .map(drop)
            .map_err(|e| agent_err(&format!("removing {container}/{exec_id}"), e))
    }

    pub fn remove_container(&self, id: &str, force: bool) -> Result<(), Error> {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = id.into();
        req.force = force;
        self.client
            .remove_container(ctx(), &req)
            .map(drop)
            .map_err(|e| agent_err(&format!("removing container {id}"), e))
    }

    pub fn list(&self) -> Result<Vec<ContainerInfo>, Error> {
        let r = self
            .client
            .list_containers(ctx(), &Empty::new())
            .map_err(|e| agent_err("listing containers", e))?;
        Ok(r.containers
            .into_iter()
            .map(|c| ContainerInfo {
                id: c.container_id,
                pid: c.pid,
                status: c.status,
                exec_ids: c.exec_ids,
            })
            .collect())
    }

    /// Asks the guest to power off; the VM then exits with `status`.
    pub fn shutdown(&self, status: u8) -> Result<(), Error> {
        let mut req = agent::ShutdownRequest::new();
        req.status = u32::from(status);
        match self
            .client
            .shutdown(context::with_duration(Duration::from_secs(5)), &req)
        {
            Ok(_) => Ok(()),
            // The guest may go before its answer does.
            Err(ttrpc::Error::RpcStatus(s)) => {
                Err(Error::Agent(format!("shutdown: {}", s.message)))
            }
            Err(_) => Ok(()),
        }
    }

    /// Connects to one stream of a process. Its bytes are the stream's
    /// (stdin: what is written reaches the process; shutting down the
    /// write side is its EOF).
    pub fn attach(
        &self,
        container: &str,
        exec_id: &str,
        stream: Stream,
    ) -> Result<UnixStream, Error> {
        let what = format!("{} of {container}/{exec_id}", stream.name());
        let mut s = vsock_connect(&self.uds, STDIO_PORT)
            .map_err(|e| Error::Agent(format!("attaching {what}: {e}")))?;
        let header = uvm_agent_api::StreamHeader {
            container_id: container.into(),
            exec_id: exec_id.into(),
            stream,
        };
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| s.write_all(header.encode().as_bytes()))
            .map_err(|e| Error::Agent(format!("attaching {what}: {e}")))?;
        let reply =
            read_line(&mut s).map_err(|e| Error::Agent(format!("attaching {what}: {e}")))?;
        match reply.as_str() {
            "OK" => {
                let _ = s.set_read_timeout(None);
                Ok(s)
            }
            r => Err(Error::Agent(format!(
                "attaching {what}: {}",
                r.strip_prefix("ERR ")
                    .unwrap_or(if r.is_empty() { "closed" } else { r })
            ))),
        }
    }
}
