//! The process level: the workload as a plain child of uvm, on the host's
//! root, network and hostname. Limits, when asked for, put it in a cgroup
//! of its own before it runs its first instruction, so `--memory` means
//! what it means at the other levels. `-p HOST:CTR` is relayed by uvm
//! ([`super::proxy`]) from the host port to the workload's on 127.0.0.1.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use uvm_runtime::cgroups::{Cgroup, Hierarchy, Resources};
use uvm_runtime::spec::PortMap;

use super::proxy::PortProxy;

use super::{refuse, wait_with_timeout, Isolation, Net, WorkloadSpec};
use crate::error::Error;

const LEVEL: Isolation = Isolation::Process;

fn check(spec: &WorkloadSpec) -> Result<(), Error> {
    if spec.rootfs.is_some() {
        return Err(refuse(
            LEVEL,
            "--rootfs",
            "a plain process runs on the host's own root (use container or vm)",
        ));
    }
    if spec.hostname.is_some() {
        return Err(refuse(
            LEVEL,
            "--hostname",
            "a plain process has the host's hostname (no UTS namespace)",
        ));
    }
    if spec.net != Net::Default {
        return Err(refuse(
            LEVEL,
            "--net",
            "a plain process shares the host's network",
        ));
    }
    if !spec.volumes.is_empty() {
        return Err(refuse(
            LEVEL,
            "-v",
            "a plain process sees the host's folders as they are",
        ));
    }
    Ok(())
}

/// The limits as the runtime's cgroup code takes them.
pub fn resources(spec: &WorkloadSpec) -> Result<Resources, Error> {
    let cpu_quota = spec
        .cpus
        .as_ref()
        .map(|(c, _)| uvm_runtime::limits::parse_cpus(c, uvm_runtime::limits::host_cpus()))
        .transpose()?;
    Ok(Resources {
        memory: spec.memory,
        cpu_quota,
        cpu_period: cpu_quota.map(|_| 100_000),
        pids: spec.pids_limit,
        ..Resources::default()
    })
}

/// The workload's cgroup, removed (with anything left in it) when dropped.
struct RunCgroup(Cgroup);

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.0.destroy();
        // The shared parent goes with its last child (it fails while another
        // run still has its cgroup there).
        for (_, d) in &self.0.dirs {
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

pub fn run(spec: &WorkloadSpec) -> Result<i32, Error> {
    check(spec)?;
    let ports = spec
        .publish
        .iter()
        .map(|p| p.parse::<PortMap>())
        .collect::<Result<Vec<_>, _>>()?;
    let res = resources(spec)?;
    // Before the workload: a port in use fails the run with nothing started.
    let proxy = PortProxy::start(&ports)?;
    let cgroup = if res.limits() {
        let h = Hierarchy::detect()?;
        let rel = PathBuf::from("uvm-run").join(&spec.name);
        Some(RunCgroup(Cgroup::create(&h, &rel, &res)?))
    } else {
        None
    };
    // Opened here, written by the child between fork and exec: it is in
    // its cgroup before the workload's first instruction.
    let procs: Vec<OwnedFd> = cgroup
        .iter()
        .flat_map(|c| c.0.dirs.iter())
        .map(|(_, d)| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .map(OwnedFd::from)
                .map_err(|e| Error::Io(format!("opening {}/cgroup.procs", d.display()), e))
        })
        .collect::<Result<_, _>>()?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    for e in &spec.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    if let Some(w) = &spec.workdir {
        cmd.current_dir(w);
    }
    let fds: Vec<i32> = procs.iter().map(AsRawFd::as_raw_fd).collect();
    let user = spec.user;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only write(2), setgroups(2), setgid(2) and setuid(2), which are
    // async-signal-safe, on descriptors that stay open in the parent until
    // after the spawn; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Into the cgroup first, while still root.
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Here rather than Command::uid, which runs before this closure:
            // the caller's supplementary groups go too, while that is allowed.
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Usage(format!("cannot run {}: {e}", spec.argv[0])))?;
    drop(procs);
    let pid = child.id();
    let code = wait_with_timeout(&mut child, spec.timeout, "workload", move || {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    drop(proxy);
    drop(cgroup);
    code
}
