//! `--console-socket`: the container's PID 1 makes a terminal inside the
//! container (its /dev/pts), sends the master end to the caller over the
//! socket (SCM_RIGHTS, with the terminal's name as the message, as runc
//! does) and takes the other end as its stdio and controlling terminal.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::fcntl::OFlag;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::error::{Error, Result};

/// In PID 1, after its filesystem is ready.
pub fn attach(console: BorrowedFd) -> Result<()> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("opening /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| Error::sys("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| Error::sys("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| Error::sys("ptsname", e))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("opening {name}"), e))?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        console.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| Error::sys("sending the terminal to --console-socket", e))?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, replaced on purpose.
        if unsafe { libc::dup2(slave, target) } < 0 {
            return Err(Error::io(
                "setting up the terminal",
                std::io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: closing the descriptor opened above, duplicated already.
    unsafe { libc::close(slave) };
    crate::tty::make_controlling()
}
