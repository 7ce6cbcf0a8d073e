//! How the VM ended, decided once, by whichever thread sees it first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use uvm_devices::legacy::GuestEvent;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// uvm's init reported the workload's exit status.
    Status(u8),
    /// The guest powered off (ACPI S5) without a status from uvm's init.
    PowerOff,
    /// The guest reset the CPU; `ready` says whether uvm's init had started.
    Reset { ready: bool },
    /// The guest kernel reported a panic (pvpanic).
    Panic,
    /// Triple fault: the vCPU hit an exception it could not handle.
    TripleFault,
    /// A vCPU halted with no way to wake (no interrupt controller).
    Halted,
    /// KVM could not run the guest any further.
    VcpuError(String),
    /// uvm received this signal.
    Signal(i32),
    /// `--timeout` expired.
    Timeout,
    /// uvm could not run the workload through the guest's agent.
    Workload(String),
}

/// Exit statuses of `uvm boot` that are not the guest command's own.
pub const EXIT_GUEST_CRASHED: i32 = 124;
pub const EXIT_UVM_ERROR: i32 = 125;

impl Outcome {
    /// The process exit status and, for anything but a normal end, a line
    /// that says what happened.
    pub fn exit(&self) -> (i32, Option<String>) {
        match self {
            Outcome::Status(s) => (i32::from(*s), None),
            Outcome::PowerOff => (0, None),
            Outcome::Reset { ready: true } => (0, Some("the guest rebooted; uvm stops the VM on reboot".into())),
            Outcome::Reset { ready: false } => (
                EXIT_GUEST_CRASHED,
                Some("the guest reset before its init started (kernel panic or failed boot; the console above says why)".into()),
            ),
            Outcome::Panic => (EXIT_GUEST_CRASHED, Some("the guest kernel panicked".into())),
            Outcome::TripleFault => (EXIT_GUEST_CRASHED, Some("the guest triple-faulted (CPU shutdown)".into())),
            Outcome::Halted => (EXIT_GUEST_CRASHED, Some("a vCPU halted with interrupts it can never receive".into())),
            Outcome::VcpuError(e) => (EXIT_GUEST_CRASHED, Some(e.clone())),
            Outcome::Signal(n) => (128 + n, Some(format!("stopped by signal {n}"))),
            Outcome::Timeout => (EXIT_GUEST_CRASHED, Some("the guest did not finish within --timeout".into())),
            Outcome::Workload(e) => (EXIT_UVM_ERROR, Some(e.clone())),
        }
    }
}

/// `uvm boot`'s exit status for how the VM ended, or for why it could not
/// run; the line that says so goes to stderr.
pub fn exit_status(result: Result<Outcome, crate::error::Error>) -> i32 {
    let (code, message) = match result {
        Ok(outcome) => outcome.exit(),
        Err(e) => (EXIT_UVM_ERROR, Some(e.to_string())),
    };
    if let Some(m) = message {
        crate::say!("uvm: {m}");
    }
    code
}

/// SIGINT/SIGTERM/SIGHUP end the VM like any other outcome, so the terminal
/// is restored and the threads stopped before exit. The thread that waits
/// for them runs under the control seccomp filter if `seccomp`.
pub fn stop_on_signals(
    shutdown: std::sync::Arc<Shutdown>,
    seccomp: bool,
) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::Io("installing signal handlers".into(), e))?;
    super::seccomp::spawn(
        "signals",
        super::seccomp::Role::Control,
        seccomp,
        move || {
            if let Some(sig) = signals.forever().next() {
                shutdown.report(Outcome::Signal(sig));
            }
        },
    )
    .map(drop)
}

/// How long past `--timeout` uvm may take to stop its VM.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// A last resort behind `--timeout`: should uvm still be running
/// [`STOP_GRACE`] after it (a thread stuck where no timeout reaches), it
/// says in one line where each of its threads is and exits 124, so a
/// bounded run stays bounded. The thread that waits runs under the control
/// seccomp filter if `seccomp`.
pub fn hard_deadline(timeout: Option<Duration>, seccomp: bool) -> Result<(), crate::error::Error> {
    let Some(t) = timeout else {
        return Ok(());
    };
    super::seccomp::spawn(
        "deadline",
        super::seccomp::Role::Control,
        seccomp,
        move || {
            std::thread::sleep(t + STOP_GRACE);
            crate::say!(
                "uvm: still running {} s past --timeout, so stopping hard; its threads: {}",
                STOP_GRACE.as_secs(),
                thread_states()
            );
            std::process::exit(EXIT_GUEST_CRASHED);
        },
    )
    .map(drop)
}

/// Asks `child` to stop (SIGTERM), kills it if it has not within `grace`,
/// and reaps it.
pub(crate) fn stop_child(child: &mut std::process::Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Each thread's name, the system call it is in and where it sleeps in
/// the kernel, from /proc.
pub(crate) fn thread_states() -> String {
    thread_states_of("self")
}

/// [`thread_states`] of process `pid` (a number, or `self`).
pub(crate) fn thread_states_of(pid: &str) -> String {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        let read = |f: &str| {
            std::fs::read_to_string(p.join(f))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let syscall = read("syscall");
        let mut words = syscall.split_whitespace();
        let nr = words.next().unwrap_or("?");
        let arg0 = words.next().unwrap_or("");
        let call = match nr {
            "0" => "read",
            "1" => "write",
            "7" => "poll",
            "16" => "ioctl",
            "42" => "connect",
            "43" | "288" => "accept",
            "44" | "46" => "send",
            "45" | "47" => "recv",
            "61" => "wait4",
            "202" => "futex",
            "230" | "35" => "sleep",
            "232" | "281" => "epoll_wait",
            "running" => "(running)",
            other => other,
        };
        // The state letter (R, S, D...) follows the command's closing
        // parenthesis in stat.
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        out.push(format!(
            "{} {state} {call}({arg0}) [{}]",
            read("comm"),
            read("wchan")
        ));
    }
    out.join(", ")
}

#[derive(Default)]
pub struct Shutdown {
    outcome: Mutex<Option<Outcome>>,
    cond: Condvar,
    done: AtomicBool,
    ready: AtomicBool,
    ready_at: Mutex<Option<Instant>>,
}

impl Shutdown {
    /// Records `outcome` unless the VM already ended.
    pub fn report(&self, outcome: Outcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
            self.done.store(true, Ordering::SeqCst);
            self.cond.notify_all();
        }
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    pub fn guest_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn ready_at(&self) -> Option<Instant> {
        *self.ready_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns what a device saw into an outcome (or a note, for readiness).
    pub fn on_guest_event(&self, event: GuestEvent) {
        match event {
            GuestEvent::Ready => {
                *self.ready_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                self.ready.store(true, Ordering::SeqCst);
            }
            GuestEvent::ExitStatus(s) => self.report(Outcome::Status(s)),
            GuestEvent::PowerOff => self.report(Outcome::PowerOff),
            GuestEvent::Reset => self.report(Outcome::Reset {
                ready: self.guest_ready(),
            }),
            GuestEvent::Panic => self.report(Outcome::Panic),
        }
    }

    /// Blocks until the VM ends, or `timeout` passes.
    pub fn wait(&self, timeout: Option<Duration>) -> Outcome {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = slot.as_ref() {
                return o.clone();
            }
            match deadline {
                None => slot = self.cond.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        drop(slot);
                        self.report(Outcome::Timeout);
                        slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
                        continue;
                    }
                    slot = self
                        .cond
                        .wait_timeout(slot, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_outcome_wins() {
        let s = Shutdown::default();
        s.on_guest_event(GuestEvent::ExitStatus(7));
        s.on_guest_event(GuestEvent::PowerOff);
        assert_eq!(s.wait(None), Outcome::Status(7));
        assert_eq!(s.wait(None).exit(), (7, None));
    }

    #[test]
    fn reset_before_init_is_a_crash_after_is_a_reboot() {
        let s = Shutdown::default();
        s.on_guest_event(GuestEvent::Reset);
        assert_eq!(s.wait(None).exit().0, EXIT_GUEST_CRASHED);
        let s = Shutdown::default();
        s.on_guest_event(GuestEvent::Ready);
        s.on_guest_event(GuestEvent::Reset);
        assert_eq!(s.wait(None), Outcome::Reset { ready: true });
        assert_eq!(s.wait(None).exit().0, 0);
    }

    #[test]
    fn wait_wakes_on_report_from_another_thread_and_times_out() {
        let s = Arc::new(Shutdown::default());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait(None));
        std::thread::sleep(Duration::from_millis(20));
        s.report(Outcome::Panic);
        assert_eq!(t.join().unwrap(), Outcome::Panic);
        let s = Shutdown::default();
        assert_eq!(s.wait(Some(Duration::from_millis(10))), Outcome::Timeout);
        assert_eq!(Outcome::Signal(15).exit().0, 143);
    }
}
