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

/// Runs `p` in the VM once its agent answers, in a thread of its own; the
/// VM ends with the process's status (or, if the agent cannot be reached
/// or refuses, with uvm's error, reported through `shutdown`).
pub fn drive(uds: PathBuf, p: ProcessSpec, shutdown: Arc<Shutdown>) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("workload".into())
        .spawn(move || {
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
        })
        .map(drop)
        .map_err(|e| Error::Io("starting the workload thread".into(), e))
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
            eprintln!("uvm: {msg}");
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
