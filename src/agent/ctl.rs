//! `uvm agent`: drives a running VM's guest agent from the shell, as Kata's
//! agent-ctl does: check, spec, create/start/run, exec, wait, kill, rm, ps,
//! shutdown. Attached runs and execs join the process's stdio to uvm's and
//! exit with its status.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::stdio::Attached;
use super::{AgentClient, ProcessSpec, Storage, Streams};
use crate::error::Error;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The VM's vsock socket (`uvm boot --vsock cid=N,uds=PATH --agent`)
    #[arg(long, value_name = "PATH")]
    pub uds: Option<PathBuf>,
    /// Seconds to wait for the agent to answer (a booting guest's agent
    /// listens a few seconds after the VM starts)
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub wait: f64,
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, clap::Args)]
pub struct CreateFlags {
    /// Container id
    pub id: String,
    /// The OCI runtime spec (config.json)
    #[arg(long, value_name = "FILE")]
    pub spec: PathBuf,
    /// The container's root folder in the guest, instead of the spec's root.path
    #[arg(long, value_name = "GUEST_PATH")]
    pub rootfs: Option<String>,
    /// A writable overlay over the rootfs (many containers, one read-only image)
    #[arg(long)]
    pub overlay: bool,
    /// A filesystem for the agent to mount first: SOURCE:FSTYPE:MOUNT_POINT[:ro]
    /// (e.g. /dev/vda:ext4:/run/image:ro; repeatable)
    #[arg(long = "storage", value_name = "SPEC", value_parser = parse_storage)]
    pub storages: Vec<Storage>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// The agent's version, the guest's kernel release and uptime
    Check,
    /// Print a default OCI spec (config.json) that runs CMD, as `runc spec` does
    Spec {
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create a container from a spec; it runs when started
    Create(CreateFlags),
    /// Start a created container (detached)
    Start { id: String },
    /// Create and start a container; attached (the default), uvm's stdin,
    /// stdout and stderr are its own and uvm exits with its status
    Run {
        #[command(flatten)]
        create: CreateFlags,
        /// Return once it started
        #[arg(short, long)]
        detach: bool,
    },
    /// Run a process in a container, or with no CONTAINER in the VM itself
    Exec {
        container: Option<String>,
        /// The process's id (default: exec-<pid of this uvm>)
        #[arg(long = "exec-id")]
        exec_id: Option<String>,
        /// KEY=VALUE (repeatable)
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long)]
        workdir: Option<String>,
        /// UID[:GID]
        #[arg(short, long)]
        user: Option<String>,
        /// Return once it started
        #[arg(short, long)]
        detach: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Wait for a container (or, with --exec-id, one of its processes) and
    /// exit with its status
    Wait {
        container: String,
        #[arg(long = "exec-id", default_value = "")]
        exec_id: String,
    },
    /// Send a signal (default KILL) to a container's first process, or all of them
    Kill {
        container: String,
        #[arg(long = "exec-id", default_value = "")]
        exec_id: String,
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(long)]
        all: bool,
    },
    /// Remove a container (refused while it runs, unless --force)
    Rm {
        container: String,
        #[arg(short, long)]
        force: bool,
    },
    /// List the containers
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Power the guest off; the VM exits with STATUS
    Shutdown {
        #[arg(default_value_t = 0)]
        status: u8,
    },
}

fn parse_storage(s: &str) -> Result<Storage, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, fs, mp, opts) = match parts.as_slice() {
        [src, fs, mp] => (src, fs, mp, vec![]),
        [src, fs, mp, "ro"] => (src, fs, mp, vec!["ro".to_string()]),
        _ => return Err(format!("{s}: expected SOURCE:FSTYPE:MOUNT_POINT[:ro]")),
    };
    if !src.starts_with('/') || !mp.starts_with('/') || fs.is_empty() {
        return Err(format!(
            "{s}: SOURCE and MOUNT_POINT are absolute paths, FSTYPE a filesystem type"
        ));
    }
    Ok(Storage {
        source: src.to_string(),
        fstype: fs.to_string(),
        options: opts,
        mount_point: mp.to_string(),
    })
}

fn default_spec_json(command: &[String]) -> Result<Vec<u8>, Error> {
    let mut spec = uvm_runtime::spec::default_spec();
    // The agent names the container's host after its id.
    spec.set_hostname(None);
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(command.to_vec()));
        p.set_terminal(Some(false));
    }
    serde_json::to_vec_pretty(&spec).map_err(|e| Error::Agent(format!("spec: {e}")))
}

fn create(a: &AgentClient, f: &CreateFlags, streams: Streams) -> Result<(), Error> {
    let spec = std::fs::read(&f.spec)
        .map_err(|e| Error::Io(format!("reading the spec {}", f.spec.display()), e))?;
    a.create_container(
        &f.id,
        &spec,
        f.rootfs.as_deref(),
        f.overlay,
        &f.storages,
        streams,
    )
}

/// Runs `uvm agent`; returns uvm's exit status.
pub fn main(args: &AgentArgs) -> Result<i32, Error> {
    if let AgentCommand::Spec { command } = &args.command {
        let json = default_spec_json(command)?;
        println!("{}", String::from_utf8_lossy(&json));
        return Ok(0);
    }
    let uds = args.uds.as_ref().ok_or_else(|| {
        Error::Usage("uvm agent: --uds PATH (the VM's vsock socket) is needed".into())
    })?;
    if !(args.wait > 0.0 && args.wait.is_finite()) {
        return Err(Error::Usage(format!(
            "--wait {}: a positive number of seconds",
            args.wait
        )));
    }
    let a = AgentClient::connect(uds, Duration::from_secs_f64(args.wait))?;
    match &args.command {
        AgentCommand::Spec { .. } => unreachable!("handled above"),
        AgentCommand::Check => {
            let (version, kernel, uptime) = a.check()?;
            println!("agent {version}, guest kernel {kernel}, up {uptime:.2} s");
            Ok(0)
        }
        AgentCommand::Create(f) => create(&a, f, Streams::default()).map(|()| 0),
        AgentCommand::Start { id } => a.start_container(id).map(|()| 0),
        AgentCommand::Run { create: f, detach } => {
            let streams = if *detach {
                Streams::default()
            } else {
                Streams::ALL
            };
            create(&a, f, streams)?;
            if *detach {
                a.start_container(&f.id)?;
                return Ok(0);
            }
            let attached = Attached::connect(&a, &f.id, "", streams)?;
            a.start_container(&f.id)?;
            let pumps = attached.pump();
            let status = a.wait(&f.id, "")?;
            pumps.finish()?;
            Ok(status.status)
        }
        AgentCommand::Exec {
            container,
            exec_id,
            env,
            workdir,
            user,
            detach,
            command,
        } => {
            let container = container.as_deref().unwrap_or("");
            let exec_id = exec_id
                .clone()
                .unwrap_or_else(|| format!("exec-{}", std::process::id()));
            let user = user
                .as_deref()
                .map(uvm_protocol::parse_user)
                .transpose()
                .map_err(Error::Usage)?;
            let p = ProcessSpec {
                args: command.clone(),
                env: env.clone(),
                cwd: workdir.clone(),
                user,
            };
            let streams = if *detach {
                Streams::default()
            } else {
                Streams::ALL
            };
            match a.exec(container, &exec_id, &p, streams) {
                Ok(()) => {}
                // As a shell says it, with its status.
                Err(Error::NoCommand { status, msg }) => {
                    eprintln!("uvm agent: {msg}");
                    return Ok(status);
                }
                Err(e) => return Err(e),
            }
            if *detach {
                println!("{exec_id}");
                return Ok(0);
            }
            let pumps = Attached::connect(&a, container, &exec_id, streams)?.pump();
            let status = a.wait(container, &exec_id)?;
            pumps.finish()?;
            Ok(status.status)
        }
        AgentCommand::Wait { container, exec_id } => a.wait(container, exec_id).map(|s| s.status),
        AgentCommand::Kill {
            container,
            exec_id,
            signal,
            all,
        } => {
            let sig = uvm_runtime::cli::parse_signal(signal)?;
            a.signal(container, exec_id, sig as i32, *all).map(|()| 0)
        }
        AgentCommand::Rm { container, force } => a.remove_container(container, *force).map(|()| 0),
        AgentCommand::Ps { json } => {
            let list = a.list()?;
            if *json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "id": c.id, "pid": c.pid, "status": c.status, "exec_ids": c.exec_ids,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:<24} {:<8} {:>7}  EXECS", "ID", "STATUS", "PID");
                for c in list {
                    println!(
                        "{:<24} {:<8} {:>7}  {}",
                        c.id,
                        c.status,
                        c.pid,
                        c.exec_ids.join(",")
                    );
                }
            }
            Ok(0)
        }
        AgentCommand::Shutdown { status } => a.shutdown(*status).map(|()| 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storages_parse_or_say_why_not() {
        let s = parse_storage("/dev/vda:ext4:/run/img:ro").unwrap();
        assert_eq!(
            (s.source.as_str(), s.fstype.as_str(), s.mount_point.as_str()),
            ("/dev/vda", "ext4", "/run/img")
        );
        assert_eq!(s.options, ["ro"]);
        assert!(parse_storage("/dev/vda:ext4:/run/img")
            .unwrap()
            .options
            .is_empty());
        for bad in [
            "",
            "/dev/vda",
            "/dev/vda:ext4",
            "vda:ext4:/x",
            "/dev/vda::/x",
            "/d:e:/x:rw:more",
            "/d:e:/x:bogus",
        ] {
            assert!(parse_storage(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn default_spec_runs_the_command() {
        let json = default_spec_json(&["sh".into(), "-c".into(), "exit 3".into()]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["sh", "-c", "exit 3"])
        );
        assert!(v["linux"]["namespaces"]
            .as_array()
            .is_some_and(|n| n.len() >= 4));
        assert!(v.get("hostname").is_none_or(|h| h.is_null()));
    }
}
