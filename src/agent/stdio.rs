//! A process's streams joined to this process's own: what an attached
//! `uvm agent run|exec` (and `uvm boot -- CMD` later) does with them.

use std::fs::File;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use uvm_protocol::relay::relay;

use super::{AgentClient, Stream, Streams};
use crate::error::Error;

/// The attached streams of one process.
pub struct Attached {
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
}

/// The copies running; [`Pumps::finish`] waits for the output ones.
pub struct Pumps {
    outputs: Vec<JoinHandle<std::io::Result<u64>>>,
}

impl Attached {
    /// Connects the streams `want` names (before the process can write
    /// much: a pipe holds what it writes until then).
    pub fn connect(
        a: &AgentClient,
        container: &str,
        exec_id: &str,
        want: Streams,
    ) -> Result<Attached, Error> {
        let get = |on: bool, s: Stream| on.then(|| a.attach(container, exec_id, s)).transpose();
        Ok(Attached {
            stdin: get(want.stdin, Stream::Stdin)?,
            stdout: get(want.stdout, Stream::Stdout)?,
            stderr: get(want.stderr, Stream::Stderr)?,
        })
    }

    /// Copies our stdin to the process (its EOF is the process's) and its
    /// stdout and stderr to ours, each in a thread of its own. The outputs
    /// go to copies of our descriptors, never through std's `Stdout` and
    /// `Stderr`: a copy into those holds their process-wide lock while it
    /// waits on the guest, and every other writer (the serial console on
    /// the vCPU thread, uvm's own messages) would wait with it, the guest
    /// frozen behind its console.
    pub fn pump(self) -> Pumps {
        let ours = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().ok().map(File::from);
        self.pump_files(
            ours(std::io::stdin().as_fd()),
            ours(std::io::stdout().as_fd()),
            ours(std::io::stderr().as_fd()),
        )
    }

    /// The same with files of the caller's (containerd's FIFOs, for the
    /// shim): `stdin` is copied to the process until its end, the process's
    /// stdout and stderr to `stdout` and `stderr`, each closed once copied.
    pub fn pump_files(
        self,
        stdin: Option<File>,
        stdout: Option<File>,
        stderr: Option<File>,
    ) -> Pumps {
        if let (Some(mut s), Some(mut from)) = (self.stdin, stdin) {
            // Not joined: a terminal's stdin may never end.
            std::thread::spawn(move || {
                let _ = relay(&mut from, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
        let mut outputs = Vec::new();
        for (stream, to) in [(self.stdout, stdout), (self.stderr, stderr)] {
            let (Some(mut s), Some(mut out)) = (stream, to) else {
                continue;
            };
            outputs.push(std::thread::spawn(move || relay(&mut s, &mut out)));
        }
        Pumps { outputs }
    }
}

impl Pumps {
    /// Waits until the process's stdout and stderr have ended (all their
    /// writers closed them) and everything reached ours.
    pub fn finish(self) -> Result<(), Error> {
        for h in self.outputs {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Ok(Err(e)) => return Err(Error::Io("copying the workload's output".into(), e)),
                Err(_) => return Err(Error::Agent("an output copy panicked".into())),
            }
        }
        Ok(())
    }
}
