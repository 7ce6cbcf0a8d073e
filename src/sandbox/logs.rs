//! Detached containers' output. Something has to keep reading a detached
//! container's stdout and stderr while no CLI is attached (a pipe that
//! nobody reads stops the container at its next write), and it should be
//! on the host, so the log outlives the VM for `logs` and needs no guest
//! disk: one small process per detached container, `uvm sandbox-log NAME
//! ID`, started before the container, that attaches both streams through
//! the VM's vsock socket and appends them to `logs/ID.log` in the
//! sandbox's folder. It joins the sandbox's cgroup (so removing the
//! sandbox ends it) and holds a lock on `logs/ID.lock` while it runs, so
//! `logs -f` knows when the log is complete, even if the pump was killed.
//! A process rather than a thread of the VMM: the VMM's threads run under
//! seccomp filters that allow no new files, and a pump per container
//! needs no protocol between the CLI and a keeper.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::{Sandbox, Status};
use crate::agent::{AgentClient, Stream};
use crate::error::Error;

/// The hidden subcommand that runs a pump.
pub const LOG_COMMAND: &str = "sandbox-log";
/// What a pump prints once both streams are attached.
const READY: &str = "ready";

pub fn path(sb: &Sandbox, id: &str) -> PathBuf {
    sb.path("logs").join(format!("{id}.log"))
}

fn lock_path(sb: &Sandbox, id: &str) -> PathBuf {
    sb.path("logs").join(format!("{id}.lock"))
}

/// Starts the pump of container `id` (created, not started yet) and waits
/// until it has attached both streams.
pub fn start_pump(sb: &Sandbox, id: &str) -> Result<(), Error> {
    let exe =
        std::env::current_exe().map_err(|e| Error::Io("finding uvm's own binary".into(), e))?;
    // Its complaints go to the sandbox's log, as the VMM's do: it outlives
    // this command, and must not hold its caller's stderr open.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(sb.path("sandbox.log"))
        .map_err(|e| Error::Io(format!("opening {}", sb.path("sandbox.log").display()), e))?;
    let mut cmd = Command::new(&exe);
    cmd.args([LOG_COMMAND, sb.name(), id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    super::detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Io(format!("starting {} {LOG_COMMAND}", exe.display()), e))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() == READY {
        return Ok(());
    }
    let _ = child.kill();
    let status = child.wait().ok();
    Err(Error::Agent(format!(
        "the log pump of container {id} did not start ({}): {}",
        status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
        crate::run::vm::tail(&sb.path("sandbox.log"), 1)
    )))
}

/// `uvm sandbox-log NAME ID`: the pump itself; returns its exit status.
pub fn pump(name: &str, id: &str) -> i32 {
    match run_pump(name, id) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("uvm sandbox: log of {id}: {e}");
            crate::vmm::shutdown::EXIT_UVM_ERROR
        }
    }
}

fn run_pump(name: &str, id: &str) -> Result<(), Error> {
    let sb = Sandbox::open(name)?;
    if let Some(cg) = sb.cgroup() {
        cg.add_pid(0)?;
    }
    let lock = File::create(lock_path(&sb, id))
        .map_err(|e| Error::Io(format!("creating {}", lock_path(&sb, id).display()), e))?;
    let _held = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::Io("locking the log".into(), e.into()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path(&sb, id))
        .map_err(|e| Error::Io(format!("opening {}", path(&sb, id).display()), e))?;
    let a = AgentClient::connect(&sb.path("vsock.sock"), super::AGENT_TIMEOUT)?;
    let streams = [
        a.attach(id, "", Stream::Stdout)?,
        a.attach(id, "", Stream::Stderr)?,
    ];
    drop(a);
    println!("{READY}");
    let _ = std::io::stdout().flush();
    let mut copies = Vec::new();
    for mut s in streams {
        let mut out = log
            .try_clone()
            .map_err(|e| Error::Io("opening the log".into(), e))?;
        copies.push(std::thread::spawn(move || -> std::io::Result<()> {
            // Whole chunks, each one append: the two streams interleave in
            // the log as they came.
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                out.write_all(&buf[..n])?;
            }
        }));
    }
    for c in copies {
        let _ = c.join();
    }
    Ok(())
}

/// Writes container `id`'s log to `out`; with `follow`, goes on until the
/// container's pump has ended (the container and everything holding its
/// output gone).
pub fn show(sb: &Sandbox, id: &str, follow: bool, out: &mut dyn Write) -> Result<(), Error> {
    super::check_name("container", id)?;
    let p = path(sb, id);
    let mut f = match File::open(&p) {
        Ok(f) => f,
        Err(_) if sb.container_meta(id).exists() => {
            return Err(Error::Usage(format!(
                "container {id} has no log: it ran attached (its output went to the terminal)"
            )))
        }
        Err(_) => {
            return Err(Error::Usage(format!(
                "no container {id} in sandbox {}",
                sb.name()
            )))
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::Io(format!("reading {}", p.display()), e))?;
        if n > 0 {
            out.write_all(&buf[..n])
                .and_then(|()| out.flush())
                .map_err(|e| Error::Io("writing the log".into(), e))?;
            continue;
        }
        if !follow || pump_done(sb, id) {
            // Whatever the pump wrote before it let go of the lock.
            let mut rest = Vec::new();
            let _ = f.read_to_end(&mut rest);
            return out
                .write_all(&rest)
                .map_err(|e| Error::Io("writing the log".into(), e));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the pump of `id` is gone: its lock is free (or the sandbox is
/// no longer running).
fn pump_done(sb: &Sandbox, id: &str) -> bool {
    if !matches!(sb.status(), Status::Running(_)) {
        return true;
    }
    let Ok(f) = File::open(lock_path(sb, id)) else {
        return true;
    };
    Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok()
}

/// Removes a container's log.
pub fn remove(sb: &Sandbox, id: &str) {
    let _ = std::fs::remove_file(path(sb, id));
    let _ = std::fs::remove_file(lock_path(sb, id));
}
