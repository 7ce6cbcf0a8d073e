//! `uvm container run -t`: the container's stdio is a pseudo-terminal the
//! runtime opens with the caller's window size; PID 1 (a session leader)
//! makes it its controlling terminal, so shells get job control. While
//! attached, the caller's terminal is in raw mode (restored after), bytes
//! are relayed both ways, and a SIGWINCH resizes the pty (the kernel then
//! signals the container's foreground process group itself).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::Winsize;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Error, Result};
use crate::process::Stdio;

/// In PID 1, a session leader whose stdin is the terminal: take it as the
/// controlling terminal.
pub fn make_controlling() -> Result<()> {
    // SAFETY: TIOCSCTTY on our stdin with an integer argument (0: do not
    // steal it from another session).
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::io(
            "making the terminal controlling",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn window_size(fd: BorrowedFd) -> Option<Winsize> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a struct winsize into `ws`, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

fn set_window_size(fd: BorrowedFd, ws: &Winsize) {
    // SAFETY: TIOCSWINSZ reads a struct winsize from `ws`, valid for the call.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) };
}

/// A pty for a container, opened on the caller's terminal's size.
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a pty sized as the caller's stdin, which must be a terminal.
    pub fn open() -> Result<Pty> {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_raw_fd()).unwrap_or(false) {
            return Err(Error::invalid(
                "-t",
                "",
                "stdin is not a terminal (run it from one, or leave out -t)",
            ));
        }
        let ws = window_size(stdin.as_fd());
        let p = nix::pty::openpty(ws.as_ref(), None).map_err(|e| Error::sys("openpty", e))?;
        for fd in [&p.master, &p.slave] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| Error::sys("fcntl on the pty", e))?;
        }
        Ok(Pty {
            master: p.master,
            slave: p.slave,
        })
    }

    /// The terminal end as the container's stdin, stdout and stderr.
    pub fn stdio(&self) -> Result<Stdio> {
        let dup = || {
            self.slave
                .try_clone()
                .map_err(|e| Error::io("duplicating the pty", e))
        };
        Ok(Stdio::new(dup()?, dup()?, dup()?))
    }

    /// Puts the caller's terminal in raw mode and relays until the
    /// container side closes (every process holding the terminal ended).
    /// SIGWINCH must be blocked in every thread (the relay reads it from
    /// a signalfd). Drop the container's [`Stdio`] first, or the relay
    /// never sees the end. `stdin`: relay the caller's input too (`-i`).
    pub fn attach(self, stdin: bool) -> Result<Attached> {
        let raw = RawMode::enter()?;
        let mut winch = SigSet::empty();
        winch.add(Signal::SIGWINCH);
        let sfd = SignalFd::with_flags(&winch, SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Error::sys("signalfd", e))?;
        drop(self.slave);
        let master = self.master;
        let relay = std::thread::spawn(move || relay(&master, &sfd, stdin));
        Ok(Attached {
            relay: Some(relay),
            _raw: raw,
        })
    }
}

/// A relay running; [`Attached::finish`] waits for it, then the terminal
/// is restored (also when dropped).
pub struct Attached {
    relay: Option<JoinHandle<()>>,
    _raw: RawMode,
}

impl Attached {
    /// Waits until the container's output is all written.
    pub fn finish(mut self) {
        if let Some(r) = self.relay.take() {
            let _ = r.join();
        }
    }
}

fn write_all(fd: BorrowedFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return false,
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Relays until the container's side closes, or the caller's terminal
/// goes (then the pty is closed too: the container's terminal hangs up,
/// as a terminal does when its window closes).
fn relay(master: &OwnedFd, winch: &SignalFd, input: bool) {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut buf = [0u8; 8192];
    let want_input = match input {
        true => PollFlags::POLLIN,
        false => PollFlags::empty(),
    };
    loop {
        let mut fds = [
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
            PollFd::new(winch.as_fd(), PollFlags::POLLIN),
            PollFd::new(stdin.as_fd(), want_input),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let revents = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        if !revents(1).is_empty() {
            let _ = winch.read_signal();
            if let Some(ws) = window_size(stdin.as_fd()) {
                set_window_size(master.as_fd(), &ws);
            }
        }
        if !revents(0).is_empty() {
            // EIO once the last holder of the terminal end closed it.
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !write_all(stdout.as_fd(), &buf[..n]) {
                        return;
                    }
                }
            }
        }
        let caller = revents(2);
        if caller.contains(PollFlags::POLLIN) {
            // In raw mode a terminal has no end of file: 0 is a hang-up.
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = write_all(master.as_fd(), &buf[..n]);
                }
            }
        } else if caller.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
            return;
        }
    }
}

/// The caller's terminal in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(|e| Error::sys("tcgetattr", e))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)
            .map_err(|e| Error::sys("tcsetattr", e))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}
