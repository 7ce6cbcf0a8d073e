//! uvm's init, PID 1 of the guest: mounts the basics, loads the kernel
//! modules the guest needs, switches to a root disk when `root=` names one,
//! configures the network from `ip=`, runs the command the VMM passed on the
//! kernel command line (or a shell), reaps orphans, and reports the
//! command's status to the VMM before powering off.

pub mod modules;
pub mod mounts;
pub mod net;
pub mod root;
pub mod status;

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{sethostname, Pid};

use uvm_protocol as protocol;

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
    #[error("root {device}: {why}")]
    Root { device: String, why: String },
    #[error("{0}")]
    IpParam(String),
    #[error("network: {0}")]
    Net(#[from] uvm_runtime::netlink::Error),
}

fn log(msg: &str) {
    println!("uvm-init: {msg}");
}

/// How often to look again for a device that a module's (possibly
/// asynchronous) probe has yet to create.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `probe` until it gives a value or `timeout` has passed (at least
/// once, so a device that is already there costs no sleep).
fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `uvm.hostname=` wins over the hostname field of `ip=`.
fn choose_hostname<'a>(cmdline: &'a str, ip: Option<&'a net::IpConfig>) -> &'a str {
    protocol::param(cmdline, "uvm.hostname")
        .or_else(|| ip.and_then(|c| c.hostname.as_deref()))
        .unwrap_or("uvm")
}

/// The static configuration `ip=` asks for, if any; a value the init cannot
/// honour is logged and leaves the network down rather than failing the boot.
fn ip_config(cmdline: &str) -> Option<net::IpConfig> {
    match net::parse_ip_param(protocol::param(cmdline, "ip")?) {
        Ok(cfg) => cfg,
        Err(e) => {
            log(&format!("{}", InitError::IpParam(e)));
            None
        }
    }
}

/// Switches to the root disk `root=` names, if any; the workload cannot run
/// without the root it was promised, so failing here ends the boot.
fn switch_root(cmdline: &str) {
    let result = match root::parse_root(cmdline) {
        Ok(Some(cfg)) => root::mount_and_switch(&cfg),
        Ok(None) => root::move_initramfs_to_tmpfs(),
        Err(e) => Err(InitError::Cmdline(e)),
    };
    if let Err(e) = result {
        log(&format!("{e}"));
        finish(125);
    }
}

/// `lo` always (containers and tests need 127.0.0.1), then `ip=`'s device.
fn network(ip: Option<&net::IpConfig>) {
    if let Err(e) = net::loopback_up() {
        log(&format!("{e}"));
    }
    if let Some(cfg) = ip {
        if let Err(e) = net::configure(cfg, std::path::Path::new(net::RESOLV_CONF)) {
            log(&format!("{e}"));
        }
    }
}

/// Seconds since the kernel's clock started (CLOCK_BOOTTIME, what
/// /proc/uptime shows; it needs no /proc, so it works before the mounts).
fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// What the command line says to run and how.
#[derive(Debug, Default, PartialEq, Eq)]
struct Workload {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<(u32, u32)>,
    /// The device that carries the workload's output (e.g. `/dev/ttyS1`).
    stdio: Option<String>,
}

impl Workload {
    fn from_cmdline(cmdline: &str) -> Result<Workload, String> {
        let stdio = match protocol::param(cmdline, protocol::STDIO_PARAM) {
            Some(d) if d.is_empty() || d.contains('/') || d.contains("..") => {
                return Err(format!(
                    "{}={d}: expected a device name such as ttyS1",
                    protocol::STDIO_PARAM
                ))
            }
            d => d.map(|d| format!("/dev/{d}")),
        };
        let env = protocol::decode_list(cmdline, protocol::ENV_PARAM)?
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
            return Err(format!("{}: {bad:?} is not KEY=VALUE", protocol::ENV_PARAM));
        }
        let argv = protocol::decode_command(cmdline)?.unwrap_or_default();
        let argv = match protocol::param(cmdline, protocol::AGENT_PARAM) {
            None => argv,
            Some(_) if !argv.is_empty() => {
                return Err(format!(
                    "{} and {} both given: the agent receives the command",
                    protocol::AGENT_PARAM,
                    protocol::CMD_PARAM
                ))
            }
            Some(port) if port.parse::<u32>().is_ok() => {
                vec![protocol::AGENT_BIN.into(), "--port".into(), port.into()]
            }
            Some(port) => {
                return Err(format!(
                    "{}={port}: expected a vsock port",
                    protocol::AGENT_PARAM
                ))
            }
        };
        Ok(Workload {
            argv,
            env,
            cwd: protocol::decode_list(cmdline, protocol::CWD_PARAM)?.map(|v| v.join("")),
            user: protocol::param(cmdline, protocol::USER_PARAM)
                .map(protocol::parse_user)
                .transpose()?,
            stdio,
        })
    }
}

/// Opens the workload's output device in raw mode: no `\r` added, nothing
/// echoed, so what the workload writes is what the host reads.
fn open_stdio(dev: &str) -> Result<std::fs::File, InitError> {
    let f = poll_until(Duration::from_secs(2), || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .ok()
    })
    .ok_or_else(|| {
        InitError::Io(
            dev.to_string(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?;
    let mut t = nix::sys::termios::tcgetattr(&f)
        .map_err(|e| InitError::Io(format!("{dev}: tcgetattr"), e.into()))?;
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&f, nix::sys::termios::SetArg::TCSANOW, &t)
        .map_err(|e| InitError::Io(format!("{dev}: tcsetattr"), e.into()))?;
    Ok(f)
}

/// The agent's executable, opened before the switch to a root disk (which
/// need not hold it): the initramfs stays underneath, reachable through
/// this descriptor.
fn open_agent(cmdline: &str) -> Option<std::fs::File> {
    protocol::param(cmdline, protocol::AGENT_PARAM)?;
    match std::fs::File::open(protocol::AGENT_BIN) {
        Ok(f) => Some(f),
        Err(e) => {
            log(&format!("{}: {e}", protocol::AGENT_BIN));
            None
        }
    }
}

/// The distribution's own init `init=` names, when PID 1 is to be handed
/// over to it: there is a root disk and no uvm workload (a command or the
/// agent), as initramfs-tools and dracut do.
fn handoff_target(cmdline: &str) -> Option<&str> {
    let init = protocol::param(cmdline, "init")?;
    let workload = protocol::param(cmdline, protocol::CMD_PARAM).is_some()
        || protocol::param(cmdline, protocol::AGENT_PARAM).is_some();
    (protocol::param(cmdline, "root").is_some() && !workload && !init.is_empty()).then_some(init)
}

/// Becomes `init`: the root's own PID 1 from here on, with the mounts,
/// modules and network uvm-init set up. Returns only if exec fails.
fn hand_over(init: &str) -> u8 {
    use std::os::unix::process::CommandExt;
    log(&format!("handing PID 1 over to {init}"));
    let e = Command::new(init)
        .env_clear()
        .env("PATH", PATH)
        .env("TERM", "linux")
        .current_dir("/")
        .exec();
    log(&format!("{init}: {e}"));
    match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Spawns the workload; `Err` carries the status a shell would give.
fn spawn(
    w: &Workload,
    stdio: Option<&std::fs::File>,
    agent: Option<&std::fs::File>,
) -> Result<Pid, u8> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let argv = &w.argv;
    let mut cmd = if let Some(exe) =
        agent.filter(|_| argv.first().map(String::as_str) == Some(protocol::AGENT_BIN))
    {
        let mut c = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
        c.arg0("uvm-agent").args(&argv[1..]);
        c
    } else if argv.is_empty() {
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
        .current_dir(w.cwd.as_deref().unwrap_or("/"));
    for e in &w.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    if let Some((uid, gid)) = w.user {
        // PID 1 has no supplementary groups to pass on.
        cmd.uid(uid).gid(gid);
    }
    if let Some(f) = stdio {
        let (Ok(out), Ok(err)) = (f.try_clone(), f.try_clone()) else {
            log("cannot duplicate the workload's output device");
            return Err(126);
        };
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
    }
    match cmd.spawn() {
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(e) => {
            let what = argv.first().map_or("/bin/sh", String::as_str);
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            log(&format!("{what}: {e}"));
            if let Some(mut f) = stdio {
                use std::io::Write;
                let _ = writeln!(f, "uvm-init: {what}: {e}");
            }
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

/// Reaps children until none is left or `limit` has passed.
fn reap_for(limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::Error::ECHILD) => break,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
}

/// Waits (at most 2 s, a UART may be wedged) until what was written to the
/// console has left it: the VM ends at the status report or the power-off,
/// and a line still in the tty's buffer would be lost (seen under QEMU,
/// whose guests print their workload's output there).
fn drain_console() {
    let (done, wait) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new().spawn(move || {
        let _ = nix::sys::termios::tcdrain(std::io::stdout());
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(Duration::from_secs(2));
}

/// Stops what is left, flushes the filesystems, and tells the VMM.
fn finish(status: u8) -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    reap_for(Duration::from_millis(500));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    // Until they are gone they may hold files open for writing, which
    // would keep a disk root from going read-only.
    reap_for(Duration::from_millis(100));
    nix::unistd::sync();
    root::remount_readonly();
    drain_console();
    status::report_exit(status);
    // Not under uvm (no status port): power off the ordinary way.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn main() -> ! {
    // The boot's phases, for `uvm bench boot`: the kernel's share ends here.
    let started = uptime();
    if let Err(e) = mounts::mount_basics() {
        log(&format!("{e}"));
    }
    mounts::console_stdio();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let ip = ip_config(&cmdline);
    if let Err(e) = sethostname(choose_hostname(&cmdline, ip.as_ref())) {
        log(&format!("sethostname: {e}"));
    }
    let modules_from = uptime();
    if let Err(e) = modules::load_listed(std::path::Path::new(modules::LIST)) {
        log(&format!("{e}"));
    }
    let modules = uptime() - modules_from;
    let agent = open_agent(&cmdline);
    switch_root(&cmdline);
    network(ip.as_ref());
    // In the final root: a share is where the workload looks for it.
    if let Err(e) = uvm_protocol::decode_shares(&cmdline)
        .map_err(InitError::Cmdline)
        .and_then(|s| mounts::mount_shares(&s))
    {
        log(&format!("{e}"));
        finish(125);
    }
    let workload = match Workload::from_cmdline(&cmdline) {
        Ok(w) => w,
        Err(e) => {
            log(&format!("{}", InitError::Cmdline(e)));
            finish(125);
        }
    };
    let stdio = match workload.stdio.as_deref().map(open_stdio).transpose() {
        Ok(f) => f,
        Err(e) => {
            log(&format!("{e}"));
            finish(125);
        }
    };
    status::report_ready();
    log(&format!(
        "ready after {:.3} s (init started at {started:.3} s, modules took {modules:.3} s)",
        uptime()
    ));
    if let Some(init) = handoff_target(&cmdline) {
        let code = hand_over(init);
        finish(code);
    }
    let status = match spawn(&workload, stdio.as_ref(), agent.as_ref()) {
        Ok(pid) => wait_for(pid),
        Err(code) => code,
    };
    // What the workload wrote may still sit in the tty's buffer: the VM
    // ends at the status report, so that output must be out first.
    if let Some(f) = &stdio {
        let _ = nix::sys::termios::tcdrain(f);
    }
    finish(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvm_hostname_wins_over_ip_hostname() {
        let ip = net::parse_ip_param("10.0.0.2:::::eth0:off").unwrap();
        assert_eq!(choose_hostname("quiet", ip.as_ref()), "uvm");
        let ip = net::parse_ip_param("10.0.0.2::::box::off").unwrap();
        assert_eq!(choose_hostname("quiet", ip.as_ref()), "box");
        assert_eq!(choose_hostname("uvm.hostname=vm1", ip.as_ref()), "vm1");
        assert_eq!(choose_hostname("uvm.hostname=vm1", None), "vm1");
    }

    #[test]
    fn workload_from_the_command_line() {
        let argv = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        let line = format!(
            "quiet {} {} {} uvm.user=5:6 uvm.stdio=ttyS1",
            protocol::encode_command(&argv),
            protocol::encode_list(protocol::ENV_PARAM, &["A=b c".into()]),
            protocol::encode_list(protocol::CWD_PARAM, &["/tmp".into()]),
        );
        let w = Workload::from_cmdline(&line).unwrap();
        assert_eq!(
            w,
            Workload {
                argv,
                env: vec!["A=b c".into()],
                cwd: Some("/tmp".into()),
                user: Some((5, 6)),
                stdio: Some("/dev/ttyS1".into()),
            }
        );
        assert_eq!(
            Workload::from_cmdline("quiet").unwrap(),
            Workload::default()
        );
        assert_eq!(
            Workload::from_cmdline("uvm.agent=1024").unwrap().argv,
            ["/bin/uvm-agent", "--port", "1024"]
        );
        assert!(Workload::from_cmdline("uvm.agent=x").is_err());
        let both = format!(
            "uvm.agent=1024 {}",
            protocol::encode_command(&["true".into()])
        );
        assert!(Workload::from_cmdline(&both).is_err());
        assert!(Workload::from_cmdline("uvm.stdio=../sda").is_err());
        assert!(Workload::from_cmdline("uvm.user=root").is_err());
        let bad_env = protocol::encode_list(protocol::ENV_PARAM, &["NOEQUALS".into()]);
        assert!(Workload::from_cmdline(&bad_env).is_err());
    }

    #[test]
    fn pid_1_goes_to_init_only_with_a_root_disk_and_no_workload() {
        let root = "root=/dev/vda rw";
        assert_eq!(
            handoff_target(&format!("{root} init=/lib/systemd/systemd")),
            Some("/lib/systemd/systemd")
        );
        assert_eq!(handoff_target("init=/lib/systemd/systemd"), None);
        assert_eq!(handoff_target(root), None);
        assert_eq!(handoff_target(&format!("{root} init=")), None);
        let cmd = protocol::encode_command(&["true".into()]);
        assert_eq!(
            handoff_target(&format!("{root} init=/sbin/init {cmd}")),
            None
        );
        assert_eq!(
            handoff_target(&format!("{root} init=/sbin/init uvm.agent=1024")),
            None
        );
    }

    #[test]
    fn polling_stops_at_the_first_value_or_the_deadline() {
        let mut calls = 0;
        let got = poll_until(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
        let start = Instant::now();
        assert_eq!(poll_until(Duration::from_millis(50), || None::<()>), None);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
