//! The agent is PID 1's child and every container's subreaper: one thread
//! reaps all its children and hands each exit to the process table. The
//! runtime's own waits on its intermediate children then find them gone,
//! which it tolerates.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use uvm_runtime::process::ExitKind;

use crate::service::Agent;

pub fn start(agent: Arc<Agent>) {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    agent.exited(pid.as_raw(), ExitKind::Code(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    agent.exited(pid.as_raw(), ExitKind::Signal(sig as i32))
                }
                Ok(_) | Err(nix::Error::EINTR) => {}
                // No child right now: the next spawn wakes us (or, for an
                // orphan being reparented, the timeout).
                Err(_) => agent.wait_for_children(Duration::from_millis(200)),
            }
        })
        .expect("spawning the reaper thread");
}
