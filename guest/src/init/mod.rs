//! uvm's init, PID 1 of the guest: mounts the basics, loads the kernel
//! modules the guest needs, runs the command the VMM passed on the kernel
//! command line (or a shell), reaps orphans, and reports the command's
//! status to the VMM before powering off.

pub mod modules;
pub mod mounts;
pub mod status;

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{sethostname, Pid};

use crate::protocol;

/// What the guest's processes see as their environment.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {target}: {errno}")]
    Mount { target: String, errno: nix::Error },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("module {name}: {why}")]
    Module { name: String, why: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
}

fn log(msg: &str) {
    println!("uvm-init: {msg}");
}

/// Uptime in seconds, from /proc/uptime (0 if unreadable).
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Spawns the workload; `Err` carries the status a shell would give.
fn spawn(argv: &[String]) -> Result<Pid, u8> {
    let mut cmd = if argv.is_empty() {
        // An interactive shell needs the console as its controlling
        // terminal for job control and ^C: busybox setsid -c gives it one.
        let mut c = Command::new("/bin/setsid");
        c.args(["-c", "/bin/sh", "-l"]);
        c
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    cmd.env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("TERM", "linux")
        .current_dir("/");
    match cmd.spawn() {
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(e) => {
            let what = argv.first().map_or("/bin/sh", String::as_str);
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            log(&format!("{what}: {e}"));
            Err(code)
        }
    }
}

/// Reaps every child until `main` exits; returns its status.
fn wait_for(main: Pid) -> u8 {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => {
                return u8::try_from(code & 0xff).unwrap_or(255)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => return 128 + sig as u8,
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                log(&format!("waitpid: {e}"));
                return 255;
            }
        }
    }
}

/// Stops what is left, flushes the filesystems, and tells the VMM.
fn finish(status: u8) -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::Error::ECHILD) => break,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    status::report_exit(status);
    // Not under uvm (no status port): power off the ordinary way.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn main() -> ! {
    if let Err(e) = mounts::mount_basics() {
        log(&format!("{e}"));
    }
    mounts::console_stdio();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let hostname = protocol::param(&cmdline, "uvm.hostname").unwrap_or("uvm");
    if let Err(e) = sethostname(hostname) {
        log(&format!("sethostname: {e}"));
    }
    if let Err(e) = modules::load_listed(std::path::Path::new(modules::LIST)) {
        log(&format!("{e}"));
    }
    let argv = match protocol::decode_command(&cmdline) {
        Ok(a) => a.unwrap_or_default(),
        Err(e) => {
            log(&format!("{}", InitError::Cmdline(e)));
            finish(125);
        }
    };
    status::report_ready();
    log(&format!("ready after {:.3} s", uptime()));
    let status = match spawn(&argv) {
        Ok(pid) => wait_for(pid),
        Err(code) => code,
    };
    finish(status)
}
