//! The jailed VMM's side: its namespaces, the folder as its root, the VM
//! built there, then no privileges left before any guest code runs.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use caps::CapSet;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::SigSet;
use nix::unistd::{Gid, Uid};

use super::{Bind, JailSpec};
use crate::error::Error;
use crate::vmm;
use crate::vmm::console::RawStdin;
use crate::vmm::linux::LinuxVmConfig;
use crate::vmm::shutdown::{Outcome, EXIT_UVM_ERROR};

/// Runs in the forked child: enters the jail, runs the VM, and returns
/// uvm's exit status. `ready` tells the parent the namespaces exist; `go`
/// says it has moved the taps in and the child into its cgroup (and it
/// stays open while the parent lives).
pub(super) fn child(
    spec: &JailSpec,
    root: &Path,
    binds: &[Bind],
    cfg: &LinuxVmConfig,
    ready: OwnedFd,
    go: OwnedFd,
    signals: &SigSet,
) -> i32 {
    let result = (|| {
        // The parent blocked these to wait for them; the VMM handles them.
        signals
            .thread_unblock()
            .map_err(|e| io("unblocking signals", e))?;
        die_with_parent()?;
        let mut flags = CloneFlags::CLONE_NEWNS;
        if spec.netns {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        unshare(flags).map_err(|e| io("making the jail's namespaces", e))?;
        std::fs::File::from(ready)
            .write_all(b"r")
            .map_err(|e| Error::Io("telling uvm the jail's namespaces exist".into(), e))?;
        let mut go = std::fs::File::from(go);
        let mut byte = [0u8; 1];
        if go.read(&mut byte).unwrap_or(0) != 1 {
            // The parent said why, or died.
            std::process::exit(EXIT_UVM_ERROR);
        }
        pivot_into(root, binds)?;
        run_vm(spec, cfg, &go)
    })();
    vmm::shutdown::exit_status(result)
}

fn io(what: &str, e: nix::errno::Errno) -> Error {
    Error::Io(what.into(), e.into())
}

/// The VMM dies with the uvm that jailed it (a killed parent leaves no VM
/// running). Set again after the uid changes, which clears it.
fn die_with_parent() -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| io("setting the parent-death signal", e))
}

/// Binds each file onto its placeholder under `root` and makes `root` the
/// mount namespace's only tree: afterwards nothing of the host's is left
/// mounted.
pub(super) fn pivot_into(root: &Path, binds: &[Bind]) -> Result<(), Error> {
    let none: Option<&str> = None;
    // Nothing done here may reach the host's mount namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| io("making the jail's mounts private", e))?;
    // pivot_root wants the new root to be a mount point.
    mount(Some(root), root, none, MsFlags::MS_BIND, none)
        .map_err(|e| io(&format!("binding the jail {}", root.display()), e))?;
    for b in binds {
        let target = root.join(&b.inside);
        mount(Some(&b.host), &target, none, MsFlags::MS_BIND, none)
            .map_err(|e| io(&format!("binding {} into the jail", b.host.display()), e))?;
        if b.read_only {
            read_only(&target)?;
        }
    }
    // The VMM creates nothing: its root is read-only.
    read_only(root)?;
    std::env::set_current_dir(root)
        .map_err(|e| Error::Io(format!("entering {}", root.display()), e))?;
    // The old root ends up under the new one, and is detached at once.
    nix::unistd::pivot_root(".", ".").map_err(|e| io("pivot_root into the jail", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| io("detaching the host's tree", e))?;
    std::env::set_current_dir("/").map_err(|e| Error::Io("entering /".into(), e))
}

fn read_only(target: &Path) -> Result<(), Error> {
    let none: Option<&str> = None;
    mount(
        none,
        target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        none,
    )
    .map_err(|e| io(&format!("making {} read-only", target.display()), e))
}

/// Builds the VM from the jail's files (as root: /dev/kvm and the tap are
/// opened now), gives up every privilege, and only then starts the vCPUs.
fn run_vm(
    spec: &JailSpec,
    cfg: &LinuxVmConfig,
    lifeline: &std::fs::File,
) -> Result<Outcome, Error> {
    let vm = vmm::linux::build(cfg)?;
    drop_privileges(spec.uid, spec.gid)?;
    die_with_parent()?;
    if parent_gone(lifeline) {
        // It died before the parent-death signal was set again.
        std::process::exit(EXIT_UVM_ERROR);
    }
    vmm::shutdown::hard_deadline(cfg.timeout, cfg.seccomp)?;
    vmm::shutdown::stop_on_signals(vm.shutdown(), cfg.seccomp)?;
    let _raw = RawStdin::enter();
    vm.run(cfg.timeout)
}

/// Whether the parent's end of `lifeline` is closed.
fn parent_gone(lifeline: &std::fs::File) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

/// Empties the bounding, ambient and inheritable capability sets, sets
/// no_new_privs, then becomes `uid`:`gid` with no supplementary groups,
/// which empties the permitted and effective sets; checks they are empty.
/// Runs while the process has one thread, so every thread the VMM starts
/// inherits all of it.
pub(super) fn drop_privileges(uid: u32, gid: u32) -> Result<(), Error> {
    let caps_err = |what: &str| {
        let what = what.to_string();
        move |e: caps::errors::CapsError| {
            Error::Io(
                format!("dropping capabilities: {what}"),
                std::io::Error::other(e.to_string()),
            )
        }
    };
    for cap in caps::runtime::thread_all_supported() {
        caps::drop(None, CapSet::Bounding, cap).map_err(caps_err("bounding set"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| io("setting no_new_privs", e))?;
    nix::unistd::setgroups(&[]).map_err(|e| io("dropping supplementary groups", e))?;
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setresgid(g, g, g).map_err(|e| io(&format!("switching to gid {gid}"), e))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| io(&format!("switching to uid {uid}"), e))?;
    caps::clear(None, CapSet::Effective).map_err(caps_err("effective set"))?;
    caps::clear(None, CapSet::Permitted).map_err(caps_err("permitted set"))?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Bounding] {
        let left = caps::read(None, set).map_err(caps_err("reading them back"))?;
        if !left.is_empty() {
            return Err(Error::Io(
                format!("dropping capabilities: {left:?} still in the {set:?} set"),
                std::io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
    }
    Ok(())
}
