//! Seccomp filters on the VMM's threads, one per role.
//!
//! The filters are data: `resources/seccomp/{vcpu,event_loop,control}.json`
//! in seccompiler's JSON format, every rule with a comment saying why it is
//! there. build.rs compiles them to BPF with seccompiler and writes the
//! programs into `OUT_DIR`, included here; at run time a thread installs
//! its role's program on itself ([`apply`]) before it touches anything the
//! guest controls.
//!
//! - [`Role::Vcpu`]: each vCPU thread, before its first KVM_RUN.
//! - [`Role::EventLoop`]: the device worker, before its first epoll wait.
//! - [`Role::Control`]: the thread that set the VM up, once the vCPU and
//!   event-loop threads are running (so they do not inherit it), and the
//!   threads around the VM (signals, deadline, the console's drain, the workload's client and
//!   its stdio copies, which inherit it or install it themselves).
//!
//! A system call no rule allows raises SIGSYS in the calling thread; uvm's
//! handler writes one line naming the thread and the call and ends the
//! process with [`EXIT_SECCOMP`]. `--no-seccomp` runs without filters.

mod names;

use std::sync::OnceLock;
use std::thread::JoinHandle;

use seccompiler::sock_filter;

use crate::error::Error;

/// The BPF programs build.rs compiled from resources/seccomp/*.json.
mod programs {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// uvm's exit status when a seccomp filter stopped it: 128 + SIGSYS, what
/// a shell reports for a process that SIGSYS killed.
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// A thread's role, which picks its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Vcpu,
    EventLoop,
    Control,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Vcpu, Role::EventLoop, Role::Control];

    /// The filter's name, which is also its JSON file's.
    pub fn name(self) -> &'static str {
        match self {
            Role::Vcpu => "vcpu",
            Role::EventLoop => "event_loop",
            Role::Control => "control",
        }
    }

    /// The compiled filter.
    pub fn program(self) -> &'static [sock_filter] {
        match self {
            Role::Vcpu => programs::VCPU,
            Role::EventLoop => programs::EVENT_LOOP,
            Role::Control => programs::CONTROL,
        }
    }
}

/// Puts the calling thread (and the threads it starts from now on) under
/// `role`'s filter; with `enabled` false, does nothing. Filters stack: a
/// thread already under one keeps it, and gets this one too.
pub fn apply(role: Role, enabled: bool) -> Result<(), Error> {
    if !enabled {
        return Ok(());
    }
    install_handler()?;
    if role != Role::Control {
        keep_stop_signals_away(role)?;
    }
    seccompiler::apply_filter(role.program()).map_err(|e| Error::Seccomp(role.name(), e))
}

/// Starts thread `name`, which puts itself under `role`'s filter (if
/// `enabled`) before it runs `f`. Returns once the filter is on; if it
/// could not be put on, the thread ends without running `f` and this
/// returns why.
pub fn spawn<F>(name: &str, role: Role, enabled: bool, f: F) -> Result<JoinHandle<()>, Error>
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let r = apply(role, enabled);
            let ok = r.is_ok();
            let _ = tx.send(r);
            if ok {
                f();
            }
        })
        .map_err(|e| Error::Io(format!("starting the {name} thread"), e))?;
    match rx.recv() {
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        // Ok, or the thread died first (and said so on stderr).
        _ => Ok(thread),
    }
}

/// SIGINT, SIGTERM and SIGHUP are blocked on the vCPU and event-loop
/// threads, so the kernel hands them to a control thread: signal-hook's
/// handler runs on whichever thread takes the signal and writes to a
/// socket, which those two filters do not allow.
fn keep_stop_signals_away(role: Role) -> Result<(), Error> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().map_err(|e| {
        Error::Io(
            format!(
                "blocking SIGINT, SIGTERM and SIGHUP on a {} thread",
                role.name()
            ),
            e.into(),
        )
    })
}

/// Installs the SIGSYS handler, once per process (signal dispositions are
/// the process's, not a thread's).
fn install_handler() -> Result<(), Error> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    DONE.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| e.errno())
    })
    .map_err(|errno| {
        Error::Io(
            "installing the SIGSYS handler".into(),
            std::io::Error::from_raw_os_error(errno),
        )
    })
}

/// The start of a `siginfo_t` as the kernel fills it for SIGSYS
/// (`_sigsys` in the kernel's union, which starts 16 bytes in).
#[repr(C)]
struct SigsysInfo {
    _signo: libc::c_int,
    _errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    _call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    _arch: libc::c_uint,
}

/// `si_code` of a SIGSYS that a seccomp filter raised.
const SYS_SECCOMP: libc::c_int = 1;

/// A line built on the stack: a signal handler must not allocate.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

/// The line for a SIGSYS: which thread, which call, and what to do.
/// `thread` is the thread's name as the kernel keeps it (NUL-padded).
fn sigsys_line(thread: &[u8], main: bool, code: libc::c_int, nr: i64) -> Line {
    let mut line = Line::new();
    if code != SYS_SECCOMP {
        line.push(
            b"uvm: stopped by a SIGSYS that no seccomp filter raised (sent by another process?)\n",
        );
        return line;
    }
    let thread = thread.split(|b| *b == 0).next().unwrap_or_default();
    line.push(b"uvm: seccomp: thread ");
    line.push(thread);
    if main {
        line.push(b" (the main thread)");
    }
    line.push(b" made system call ");
    line.push(names::name(nr).unwrap_or("unknown").as_bytes());
    line.push(b" (");
    line.push_number(nr);
    line.push(b"), which its filter forbids; uvm stops (--no-seccomp runs without filters)\n");
    line
}

/// Writes the line and ends the process: only write(2), prctl(PR_GET_NAME),
/// getpid, gettid and _exit, which every filter allows and which are
/// async-signal-safe.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let (code, nr) = if info.is_null() {
        (0, -1)
    } else {
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid
        // siginfo_t (128 bytes), of which SigsysInfo reads the first 32.
        let si = unsafe { &*info.cast::<SigsysInfo>() };
        (si.code, i64::from(si.syscall))
    };
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) through
    // the pointer, and `thread` has 16.
    unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) };
    let main = nix::unistd::gettid() == nix::unistd::getpid();
    let line = sigsys_line(&thread, main, code, nr);
    let _ = nix::unistd::write(std::io::stderr(), &line.buf[..line.len]);
    // SAFETY: _exit ends the process at once, running nothing of ours:
    // async-signal-safe, unlike std::process::exit.
    unsafe { libc::_exit(EXIT_SECCOMP) }
}

#[cfg(test)]
mod tests;
