//! The filesystems every guest process expects.

use std::os::fd::AsRawFd;

use nix::mount::{mount, MsFlags};

use super::InitError;

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// (source, target, fstype, flags, data)
const MOUNTS: &[(&str, &str, &str, MsFlags, &str)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "gid=5,mode=0620,ptmxmode=0666",
    ),
    (
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "",
    ),
];

pub fn mount_basics() -> Result<(), InitError> {
    let mut first_err = None;
    for (src, target, fstype, flags, data) in MOUNTS {
        let _ = std::fs::create_dir_all(target);
        let data = (!data.is_empty()).then_some(*data);
        if let Err(errno) = mount(Some(*src), *target, Some(*fstype), *flags, data) {
            // EBUSY: already mounted (e.g. devtmpfs automount).
            if errno != nix::Error::EBUSY && first_err.is_none() {
                first_err = Some(InitError::Mount {
                    target: target.to_string(),
                    errno,
                });
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The kernel starts init with the console on fds 0-2 only if the
/// initramfs has a /dev/console node; with devtmpfs mounted it always can.
pub fn console_stdio() {
    if nix::fcntl::fcntl(1, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(console.as_raw_fd(), fd);
        }
    }
}

/// Mounts the virtio-fs shares the VMM attached, each at its path (made
/// if missing). The driver binds the devices as its module loads, but
/// give it a moment in case the probe is deferred.
pub fn mount_shares(shares: &[uvm_protocol::Share]) -> Result<(), InitError> {
    for s in shares {
        std::fs::create_dir_all(&s.path)
            .map_err(|e| InitError::Io(format!("mkdir {}", s.path), e))?;
        let flags = if s.read_only {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        let mut last = nix::Error::ENODEV;
        let mounted = super::poll_until(std::time::Duration::from_secs(2), || {
            match mount(
                Some(s.tag.as_str()),
                s.path.as_str(),
                Some("virtiofs"),
                flags,
                None::<&str>,
            ) {
                Ok(()) => Some(()),
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        if mounted.is_none() {
            return Err(InitError::Mount {
                target: format!("virtiofs {} at {}", s.tag, s.path),
                errno: last,
            });
        }
    }
    Ok(())
}
