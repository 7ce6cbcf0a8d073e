//! A VM's one workload carried by its agent: `uvm boot -- CMD` and the vm
//! levels of `uvm run`. The command, its environment and arguments travel
//! over the control channel (no kernel command line limit), its stdin,
//! stdout and stderr as three streams joined to uvm's own, and its status
//! comes back as the VM's: the driver asks the agent to power off with it
//! once the output has all reached uvm.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::stdio::Attached;
use super::{AgentClient, ProcessSpec, Streams};
use crate::error::Error;
use crate::vmm::linux::LinuxVmConfig;
use crate::vmm::shutdown::{Outcome, Shutdown};
use crate::vmm::virtio::VsockSpec;

/// The guest's context id when uvm adds the vsock device itself.
pub const WORKLOAD_CID: u64 = 3;
/// The process's id in the agent.
const EXEC_ID: &str = "workload";
/// How long the agent has to answer once the init said it is ready.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes `cfg` boot into the agent: a vsock device (uvm's own, its socket
/// at `uds`, unless the user gave one) and `uvm.agent=` on the command
/// line. Returns the socket the driver connects to.
pub fn prepare(cfg: &mut LinuxVmConfig, uds: &Path) -> PathBuf {
    let vsock = cfg.vsock.get_or_insert_with(|| VsockSpec {
        cid: WORKLOAD_CID,
        uds: uds.to_path_buf(),
    });
    let uds = vsock.uds.clone();
    // Before the user's fragment, which comes last.
    let at = cfg.cmdline.len().saturating_sub(1);
    cfg.cmdline.insert(
        at,
        format!(
            "{}={}",
            uvm_protocol::AGENT_PARAM,
            uvm_agent_api::AGENT_PORT
        ),
    );
    uds
}

/// Runs `p` in the VM once its agent answers, in a thread of its own (under
/// the control seccomp filter if `seccomp`; the threads it starts for the
/// streams inherit it); the VM ends with the process's status (or, if the
/// agent cannot be reached or refuses, with uvm's error, reported through
/// `shutdown`).
pub fn drive(
    uds: PathBuf,
    p: ProcessSpec,
    shutdown: Arc<Shutdown>,
    seccomp: bool,
) -> Result<(), Error> {
    let work = move || {
        if let Err(e) = run(&uds, &p, &shutdown) {
            // The workload may have ended the VM itself (poweroff,
            // reboot, a panic), taking the agent's connection with it:
            // then that is the outcome, not this error.
            for _ in 0..150 {
                if shutdown.is_done() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !shutdown.is_done() {
                shutdown.report(Outcome::Workload(e.to_string()));
            }
        }
    };
    crate::vmm::seccomp::spawn(
        "workload",
        crate::vmm::seccomp::Role::Control,
        seccomp,
        work,
    )
    .map(drop)
}

fn run(uds: &Path, p: &ProcessSpec, shutdown: &Shutdown) -> Result<(), Error> {
    // The agent starts right after the init's readiness report; before it,
    // connections would only be refused.
    while !shutdown.guest_ready() {
        if shutdown.is_done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let a = AgentClient::connect(uds, AGENT_TIMEOUT)?;
    let status = match a.exec("", EXEC_ID, p, Streams::ALL) {
        Ok(()) => {
            let pumps = Attached::connect(&a, "", EXEC_ID, Streams::ALL)?.pump();
            let st = a.wait("", EXEC_ID)?;
            pumps.finish()?;
            st.status
        }
        Err(Error::NoCommand { status, msg }) => {
            crate::say!("uvm: {msg}");
            status
        }
        Err(e) => return Err(e),
    };
    a.shutdown(u8::try_from(status & 0xff).unwrap_or(255))
}

/// The console log's last lines when they explain the VM's end: it
/// crashed, or its init gave up before the workload could start (a bad
/// root disk, say).
pub fn failure_tail(outcome: &Outcome, shutdown: &Shutdown, log: &Path) -> Option<String> {
    let crashed = outcome.exit().0 == crate::vmm::shutdown::EXIT_GUEST_CRASHED
        && *outcome != Outcome::Timeout;
    let gave_up = !shutdown.guest_ready() && matches!(outcome, Outcome::Status(_));
    (crashed || gave_up).then(|| crate::run::vm::tail(log, 15))
}

#[cfg(test)]
mod tests {
    //! The workload's client under the control seccomp filter, against a
    //! guest faked in the same process: a VMM's vsock socket whose port
    //! 1024 leads to a ttrpc agent and whose port 1025 serves the streams.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Command, Stdio};
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::Mutex;

    use uvm_agent_api::agent::{CheckResponse, Empty, ShutdownRequest, WaitProcessResponse};
    use uvm_agent_api::agent_ttrpc::{create_agent_service, AgentService};
    use uvm_agent_api::ttrpc;

    use super::*;
    use crate::vmm::seccomp::EXIT_SECCOMP;

    const CHILD_ENV: &str = "UVM_WORKLOAD_TEST_CHILD";

    /// The agent: runs nothing, answers with the status the stdin it was
    /// sent deserves (3 for "ping"), and passes the status of Shutdown on.
    struct FakeAgent {
        stdin: Mutex<Receiver<Vec<u8>>>,
        shutdown: Mutex<Sender<u32>>,
    }

    impl AgentService for FakeAgent {
        fn check(&self, _: &ttrpc::TtrpcContext, _: Empty) -> ttrpc::Result<CheckResponse> {
            Ok(CheckResponse::new())
        }
        fn exec_process(
            &self,
            _: &ttrpc::TtrpcContext,
            _: uvm_agent_api::agent::ExecProcessRequest,
        ) -> ttrpc::Result<Empty> {
            Ok(Empty::new())
        }
        fn wait_process(
            &self,
            _: &ttrpc::TtrpcContext,
            _: uvm_agent_api::agent::ProcessRef,
        ) -> ttrpc::Result<WaitProcessResponse> {
            let got = self
                .stdin
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_default();
            let mut r = WaitProcessResponse::new();
            r.status = if got == b"ping" { 3 } else { 4 };
            Ok(r)
        }
        fn shutdown(&self, _: &ttrpc::TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
            let _ = self.shutdown.lock().unwrap().send(req.status);
            Ok(Empty::new())
        }
    }

    /// Copies `from` into `to` until the end, then ends `to`'s writing.
    fn pipe(mut from: UnixStream, mut to: UnixStream) {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }

    /// One connection to the fake VMM's socket: the CONNECT handshake, then
    /// the agent (port 1024) or a stream (1025).
    fn serve(mut conn: UnixStream, agent: &Path, stdin: &Sender<Vec<u8>>) {
        let mut line = String::new();
        let mut r = BufReader::with_capacity(1, conn.try_clone().unwrap());
        r.read_line(&mut line).unwrap();
        conn.write_all(b"OK 7\n").unwrap();
        if line.trim() == format!("CONNECT {}", uvm_agent_api::AGENT_PORT) {
            let agent = UnixStream::connect(agent).unwrap();
            pipe(conn.try_clone().unwrap(), agent.try_clone().unwrap());
            pipe(agent, conn);
            return;
        }
        line.clear();
        r.read_line(&mut line).unwrap();
        conn.write_all(b"OK\n").unwrap();
        match line.trim().rsplit(' ').next() {
            Some("stdout") => conn.write_all(b"to stdout\n").unwrap(),
            Some("stderr") => conn.write_all(b"to stderr\n").unwrap(),
            _ => {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got);
                let _ = stdin.send(got);
            }
        }
    }

    /// In the child: the fake guest, then [`drive`] under the filter; exits
    /// with the status the workload's client asked the guest to stop with.
    fn child() -> ! {
        let dir = std::env::temp_dir().join(format!("uvm-workload-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (agent_sock, uds) = (dir.join("agent.sock"), dir.join("vsock.sock"));
        let (stdin_tx, stdin_rx) = channel();
        let (shutdown_tx, shutdown_rx) = channel();
        let agent = FakeAgent {
            stdin: Mutex::new(stdin_rx),
            shutdown: Mutex::new(shutdown_tx),
        };
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", agent_sock.display()))
            .unwrap()
            .register_service(create_agent_service(Arc::new(agent)));
        server.start().unwrap();
        let listener = UnixListener::bind(&uds).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (agent_sock, stdin_tx) = (agent_sock.clone(), stdin_tx.clone());
                std::thread::spawn(move || serve(conn, &agent_sock, &stdin_tx));
            }
        });
        let shutdown = Arc::new(Shutdown::default());
        shutdown.on_guest_event(uvm_devices::legacy::GuestEvent::Ready);
        drive(
            uds,
            ProcessSpec::new(vec!["x".into()]),
            shutdown.clone(),
            true,
        )
        .unwrap();
        let status = shutdown_rx.recv_timeout(Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&dir);
        match status {
            Ok(s) => std::process::exit(i32::try_from(s).unwrap_or(99)),
            Err(_) => {
                crate::say!(
                    "no Shutdown request; the VM's outcome: {:?}",
                    shutdown.wait(Some(Duration::ZERO))
                );
                std::process::exit(99)
            }
        }
    }

    /// What `uvm boot -- CMD` does with the workload, under the control
    /// filter: connect, exec, copy the three streams (stdin from a pipe,
    /// so std's copy splices), wait, ask for the shutdown.
    #[test]
    fn the_workload_client_runs_under_the_control_filter() {
        if std::env::var_os(CHILD_ENV).is_some() {
            child();
        }
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "agent::workload::tests::the_workload_client_runs_under_the_control_filter",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"ping").unwrap();
        let out = c.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_ne!(out.status.code(), Some(EXIT_SECCOMP), "{stderr}");
        assert_eq!(
            out.status.code(),
            Some(3),
            "stdout: {stdout}\nstderr: {stderr}"
        );
        assert!(stdout.contains("to stdout\n"), "{stdout}");
        assert!(stderr.contains("to stderr\n"), "{stderr}");
    }
}
