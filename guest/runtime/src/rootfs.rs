//! The container's filesystem, set up by its first process inside the new
//! mount namespace: overlay (or bind) of the rootfs, the spec's mounts
//! (/proc, /dev, /sys, ...), default devices, bind volumes, `pivot_root`,
//! masked and read-only paths. Mounts live only in the container's mount
//! namespace, so they vanish with it, whatever happens to the runtime.

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use oci_spec::runtime::{Mount, Spec};

use super::cgroups::Cgroup;
use super::error::{Error, Result};
use super::spec::DEFAULT_DEVICES;

/// Resolves `unsafe_path` inside `root` as if `root` were `/`: symlinks are
/// followed but never lead out of `root` (`..` stops at it).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = unsafe_path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(Error::Setup(format!(
                        "too many symlinks resolving {} in the rootfs",
                        unsafe_path.display()
                    )));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| Error::io(format!("reading link {}", candidate.display()), e))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved);
    Ok(out)
}

/// Mount flags and filesystem data from OCI mount options.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOpts {
    pub flags: MsFlags,
    /// Propagation change to apply after mounting (`rprivate`, ...).
    pub propagation: MsFlags,
    /// Filesystem-specific options (`mode=755`, ...).
    pub data: Vec<String>,
}

pub fn parse_options(opts: &[String]) -> MountOpts {
    let mut o = MountOpts {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in opts {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" => {
                o.propagation = MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                o.propagation = MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                o.propagation = MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                o.propagation = MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                o.propagation = MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                o.propagation = MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            "unbindable" => {
                o.propagation = MsFlags::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                o.propagation = MsFlags::MS_UNBINDABLE | MsFlags::MS_REC;
                continue;
            }
            "defaults" | "remount" => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o
}

fn mnt(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(src, dst, fstype, flags, data).map_err(|e| {
        Error::Setup(format!(
            "mounting {} on {} ({}): {e}",
            src.map_or("none".into(), |s| s.display().to_string()),
            dst.display(),
            fstype.unwrap_or("bind/remount")
        ))
    })
}

fn mkdir_all(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| Error::Setup(format!("creating {}: {e}", p.display())))
}

/// Remounts `path` with `flags` added, keeping the flags it already has
/// (remounting a bind mount without them fails where they are locked).
fn remount(path: &Path, flags: MsFlags) -> Result<()> {
    let mut keep = MsFlags::empty();
    if let Ok(st) = statvfs(path) {
        let f = st.flags();
        for (fs_flag, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        ] {
            if f.contains(fs_flag) {
                keep |= ms;
            }
        }
    }
    mnt(
        None,
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | keep | flags,
        None,
    )
}

/// What the container's first process needs to build its filesystem.
#[derive(Clone, Copy)]
pub struct RootfsPlan<'a> {
    pub spec: &'a Spec,
    /// The image directory.
    pub rootfs: &'a Path,
    /// The (empty) directory the root is assembled on.
    pub target: &'a Path,
    /// Overlay upper and work directories; `None` bind-mounts the rootfs.
    pub overlay: Option<(&'a Path, &'a Path)>,
    /// Image layers below `rootfs`, top first (further overlay lower dirs).
    pub lowers: &'a [PathBuf],
    /// The container's cgroup, shown at /sys/fs/cgroup if the spec mounts it.
    pub cgroup: Option<&'a Cgroup>,
    /// Mounted from inside a new user namespace.
    pub userns: bool,
    /// Run once the mounts are made, before `pivot_root` (OCI's
    /// createContainer hooks).
    pub before_pivot: Option<&'a dyn Fn() -> Result<()>>,
}

fn overlay_path_ok(p: &Path) -> Result<String> {
    let s = p.display().to_string();
    if s.contains([',', ':', '\n']) {
        return Err(Error::Setup(format!(
            "overlay path {s} contains ',' or ':', which overlayfs cannot take"
        )));
    }
    Ok(s)
}

/// Mounts the root and everything under it and pivots into it. Runs in the
/// container's mount namespace; [`finish`] completes it.
pub fn setup(plan: &RootfsPlan) -> Result<()> {
    // Nothing we mount may propagate back to the host.
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )?;
    let target = plan.target;
    match plan.overlay {
        Some((upper, work)) => {
            let mut lower = overlay_path_ok(plan.rootfs)?;
            for l in plan.lowers {
                lower.push(':');
                lower.push_str(&overlay_path_ok(l)?);
            }
            let data = format!(
                "lowerdir={lower},upperdir={},workdir={}",
                overlay_path_ok(upper)?,
                overlay_path_ok(work)?
            );
            let overlay = |data: &str| {
                mnt(
                    Some(Path::new("overlay")),
                    target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data),
                )
            };
            // trusted.* xattrs cannot be set from a user namespace: without
            // user.* ones, removing a lower directory fails (EIO). Kernels or
            // upper filesystems without them get the plain mount.
            if !plan.userns || overlay(&format!("{data},userxattr")).is_err() {
                overlay(&data)?;
            }
        }
        None => mnt(
            Some(plan.rootfs),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?,
    }
    mnt(None, target, None, MsFlags::MS_PRIVATE, None)?;

    let mounts = plan.spec.mounts().as_deref().unwrap_or_default();
    for m in mounts {
        mount_one(plan, m)?;
    }
    let dev_mounted = mounts.iter().any(|m| m.destination() == Path::new("/dev"));
    create_devices(target, dev_mounted)?;
    let devices = plan
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_deref());
    for d in devices.unwrap_or_default() {
        create_spec_device(target, d)?;
    }
    if let Some(f) = plan.before_pivot {
        f()?;
    }
    pivot(target)
}

/// Makes `dir` the root without touching any mount (a container without a
/// mount namespace of its own).
pub fn chroot(dir: &Path) -> Result<()> {
    nix::unistd::chdir(dir).map_err(|e| Error::sys(format!("chdir {}", dir.display()), e))?;
    nix::unistd::chroot(".").map_err(|e| Error::sys(format!("chroot {}", dir.display()), e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))
}

/// After `setup` (and the spec's sysctls, which need a writable /proc/sys):
/// masked and read-only paths, read-only root.
pub fn finish(spec: &Spec) -> Result<()> {
    if let Some(linux) = spec.linux() {
        for p in linux.masked_paths().as_deref().unwrap_or_default() {
            mask(Path::new(p))?;
        }
        for p in linux.readonly_paths().as_deref().unwrap_or_default() {
            let p = Path::new(p);
            if fs::symlink_metadata(p).is_err() {
                continue;
            }
            mnt(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            remount(p, MsFlags::MS_RDONLY)?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

fn mount_one(plan: &RootfsPlan, m: &Mount) -> Result<()> {
    let dest = secure_join(plan.target, m.destination())?;
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("none");
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if typ == "bind" || opts.flags.contains(MsFlags::MS_BIND) {
        let src = m.source().as_deref().ok_or_else(|| {
            Error::Setup(format!(
                "bind mount {} has no source",
                m.destination().display()
            ))
        })?;
        let meta = fs::metadata(src)
            .map_err(|e| Error::Setup(format!("bind mount source {}: {e}", src.display())))?;
        if meta.is_dir() {
            mkdir_all(&dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                mkdir_all(parent)?;
            }
            if !dest.exists() {
                fs::File::create(&dest)
                    .map_err(|e| Error::Setup(format!("creating {}: {e}", dest.display())))?;
            }
        }
        let rec = opts.flags & MsFlags::MS_REC;
        mnt(Some(src), &dest, None, MsFlags::MS_BIND | rec, None)?;
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            remount(&dest, extra)?;
        }
        if !opts.propagation.is_empty() {
            mnt(None, &dest, None, opts.propagation, None)?;
        }
        return Ok(());
    }
    mkdir_all(&dest)?;
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(plan, &dest, opts.flags);
    }
    let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    match mnt(Some(&src), &dest, Some(typ), opts.flags, data) {
        // A sysfs in a namespace we may not own (e.g. --net host under a
        // user namespace): bind the host's instead, read-only.
        Err(_) if typ == "sysfs" => {
            mnt(
                Some(Path::new("/sys")),
                &dest,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            remount(&dest, opts.flags & MsFlags::MS_RDONLY)?;
            // The host's submounts (cgroup hierarchies...) came along,
            // writable: read-only too where the kernel can (5.12+).
            if opts.flags.contains(MsFlags::MS_RDONLY) {
                let _ = read_only_tree(&dest);
            }
            Ok(())
        }
        r => r,
    }?;
    if !opts.propagation.is_empty() {
        mnt(None, &dest, None, opts.propagation, None)?;
    }
    Ok(())
}

/// Makes every mount at and below `path` read-only, nosuid, nodev, noexec
/// in one call (mount_setattr with AT_RECURSIVE).
fn read_only_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c` is a NUL-terminated path and `attr` a mount_attr whose
    // size is passed; both outlive the call, which only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// /sys/fs/cgroup inside: the container's own cgroup directories, bound
/// read-only (cgroup2 directly; one directory per v1 hierarchy), so the
/// container sees its limits and usage and nothing of the host's tree.
/// Binding is much cheaper than mounting a cgroup filesystem.
fn mount_cgroup(plan: &RootfsPlan, dest: &Path, flags: MsFlags) -> Result<()> {
    let flags = flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let Some(cg) = plan.cgroup else {
        return Ok(());
    };
    if cg.version == 2 {
        if let Some((_, dir)) = cg.dirs.first() {
            mnt(Some(dir), dest, None, MsFlags::MS_BIND, None)?;
            remount(dest, flags)?;
        }
        return Ok(());
    }
    mnt(
        Some(Path::new("tmpfs")),
        dest,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )?;
    for (ctrls, dir) in &cg.dirs {
        let sub = dest.join(ctrls.join(","));
        mkdir_all(&sub)?;
        mnt(Some(dir), &sub, None, MsFlags::MS_BIND, None)?;
        remount(&sub, flags)?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        remount(dest, MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

fn create_devices(target: &Path, dev_mounted: bool) -> Result<()> {
    let dev = target.join("dev");
    mkdir_all(&dev)?;
    for (path, _, major, minor) in DEFAULT_DEVICES {
        let p = secure_join(target, Path::new(path))?;
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_char_device()) {
            continue;
        }
        let _ = fs::remove_file(&p);
        #[allow(clippy::cast_sign_loss)]
        let devno = makedev(major as u64, minor as u64);
        if mknod(&p, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), devno).is_ok() {
            // mknod's mode went through the umask.
            fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
                .map_err(|e| Error::Setup(format!("chmod {}: {e}", p.display())))?;
        } else {
            // No CAP_MKNOD (user namespace): bind the host's node.
            fs::File::create(&p)
                .map_err(|e| Error::Setup(format!("creating {}: {e}", p.display())))?;
            mnt(Some(Path::new(path)), &p, None, MsFlags::MS_BIND, None)?;
        }
    }
    if dev_mounted {
        for (name, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            let _ = symlink(to, dev.join(name));
        }
        if dev.join("pts/ptmx").exists() {
            let _ = fs::remove_file(dev.join("ptmx"));
            let _ = symlink("pts/ptmx", dev.join("ptmx"));
        }
    }
    Ok(())
}

/// One of the spec's `linux.devices`: a node of the given type, numbers,
/// mode and owner (without CAP_MKNOD, the host's node bound in).
fn create_spec_device(target: &Path, d: &oci_spec::runtime::LinuxDevice) -> Result<()> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let p = secure_join(target, d.path())?;
    if let Some(parent) = p.parent() {
        mkdir_all(parent)?;
    }
    let kind = match d.typ() {
        T::C | T::U => SFlag::S_IFCHR,
        T::B => SFlag::S_IFBLK,
        T::P => SFlag::S_IFIFO,
        T::A => {
            return Err(Error::Setup(format!(
                "linux.devices {}: type \"a\" is not a device type",
                d.path().display()
            )))
        }
    };
    #[allow(clippy::cast_sign_loss)]
    let devno = makedev(d.major() as u64, d.minor() as u64);
    let _ = fs::remove_file(&p);
    let made = mknod(&p, kind, Mode::from_bits_truncate(0o600), devno);
    if made.is_err() {
        fs::File::create(&p).map_err(|e| Error::Setup(format!("creating {}: {e}", p.display())))?;
        return mnt(Some(d.path()), &p, None, MsFlags::MS_BIND, None);
    }
    let mode = d.file_mode().unwrap_or(0o666);
    fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| Error::Setup(format!("chmod {}: {e}", p.display())))?;
    nix::unistd::chown(
        &p,
        Some(nix::unistd::Uid::from_raw(d.uid().unwrap_or(0))),
        Some(nix::unistd::Gid::from_raw(d.gid().unwrap_or(0))),
    )
    .map_err(|e| Error::sys(format!("chown {}", p.display()), e))
}

/// pivot_root into `target` and detach the old root.
fn pivot(target: &Path) -> Result<()> {
    nix::unistd::chdir(target)
        .map_err(|e| Error::Setup(format!("chdir {}: {e}", target.display())))?;
    // With new_root == put_old the old root ends up stacked on "/", and is
    // then detached: no directory for it is needed in the image.
    nix::unistd::pivot_root(".", ".").map_err(|e| Error::Setup(format!("pivot_root: {e}")))?;
    mnt(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| Error::Setup(format!("detaching the old root: {e}")))?;
    nix::unistd::chdir("/").map_err(|e| Error::Setup(format!("chdir /: {e}")))
}

fn mask(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => mnt(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Ok(_) => mnt(
            Some(Path::new("/dev/null")),
            p,
            None,
            MsFlags::MS_BIND,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside() {
        let root = std::env::temp_dir().join(format!("uvm-sj-{}", super::super::state::new_id()));
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        assert_eq!(
            secure_join(&root, Path::new("/abs/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            secure_join(&root, Path::new("/a/b/up/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(&root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(&root, Path::new("/a/rel/c")).unwrap(),
            root.join("a/b/c")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(&root, Path::new("/loop")).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn options() {
        let o = parse_options(&[
            "nosuid".into(),
            "noexec".into(),
            "mode=755".into(),
            "size=65536k".into(),
            "ro".into(),
            "rprivate".into(),
        ]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        let o = parse_options(&["rbind".into(), "ro".into(), "rw".into()]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }
}
