//! uvm's guest agent. uvm-init runs it instead of a command when the
//! kernel command line says `uvm.agent=PORT`; the host then drives the
//! guest over vsock: a ttrpc server on PORT creates, starts, execs into,
//! signals, waits for and removes containers (with uvm's runtime) and
//! processes of the VM itself, and powers the VM off; a second port serves
//! each process's stdin, stdout and stderr as connections of their own.
//! The agent's exit status is the VM's.

pub mod error;
pub mod reaper;
pub mod service;
pub mod stdio;
pub mod storage;

use std::sync::Arc;

use uvm_agent_api::{agent_ttrpc, ttrpc};

pub use error::AgentError;

pub fn log(msg: &str) {
    eprintln!("uvm-agent: {msg}");
}

/// Parses `--port N` (the control port; stdio is the API's STDIO_PORT).
fn control_port(args: &[String]) -> Result<u32, AgentError> {
    match args {
        [] => Ok(uvm_agent_api::AGENT_PORT),
        [flag, v] if flag == "--port" => v
            .parse()
            .ok()
            .filter(|p| *p != uvm_agent_api::STDIO_PORT)
            .ok_or_else(|| AgentError::Usage(format!("--port {v}: expected a vsock port"))),
        _ => Err(AgentError::Usage("usage: uvm-agent [--port N]".into())),
    }
}

fn serve(port: u32) -> Result<std::convert::Infallible, AgentError> {
    uvm_runtime::process::become_subreaper()
        .map_err(|e| AgentError::Setup(format!("subreaper: {e}")))?;
    let agent = Arc::new(service::Agent::new());
    reaper::start(agent.clone());
    stdio::listen(agent.clone(), uvm_agent_api::STDIO_PORT)?;
    let services = agent_ttrpc::create_agent_service(agent.clone());
    let mut server = ttrpc::Server::new()
        .bind(&format!("vsock://-1:{port}"))
        .map_err(|e| AgentError::Setup(format!("listening on vsock port {port}: {e}")))?
        .register_service(services)
        // Each WaitProcess holds a worker until its process exits.
        .set_thread_count_max(256);
    server
        .start()
        .map_err(|e| AgentError::Setup(format!("starting the ttrpc server: {e}")))?;
    log(&format!(
        "listening on vsock ports {port} and {}",
        uvm_agent_api::STDIO_PORT
    ));
    // The main thread stays: the agent's processes are parented to it (a
    // parent-death signal fires when the thread that is the parent ends).
    let status = agent.wait_shutdown();
    Err(AgentError::Shutdown(status))
}

pub fn main() -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match control_port(&args).and_then(serve) {
        Ok(never) => match never {},
        Err(AgentError::Shutdown(status)) => status,
        Err(e) => {
            log(&e.to_string());
            125
        }
    };
    std::process::exit(i32::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(control_port(&[]).unwrap(), uvm_agent_api::AGENT_PORT);
        assert_eq!(
            control_port(&["--port".into(), "2000".into()]).unwrap(),
            2000
        );
        for bad in [
            vec!["--port"],
            vec!["--port", "x"],
            vec!["--port", "1025"],
            vec!["-x", "1"],
        ] {
            let v: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(control_port(&v).is_err(), "{bad:?}");
        }
    }
}
