//! Root on a disk: with `root=/dev/...` the init mounts that device and
//! switches into it the way busybox's switch_root does (move the API
//! filesystems over, move the new root onto `/`, chroot), then goes on as
//! PID 1 there. The initramfs stays underneath, unreachable and untouched.
//! Without a root disk the initramfs itself moves into a tmpfs the same way,
//! because containers need a root that pivot_root(2) accepts.
//!
//! Parameters: `root=/dev/...`, `rootfstype=fs[,fs...]` (default: ext4, then
//! the block filesystems of /proc/filesystems), `rootflags=` (mount data),
//! and the words `ro`/`rw` (last wins; default read-write).

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::mount::{mount, MsFlags};

use super::{log, poll_until, InitError};
use uvm_protocol as protocol;

/// Where the root disk is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/newroot";

/// virtio_blk may probe asynchronously after its module is loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(5);

/// Mounts carried into the new root, and whether the switch needs them
/// (a read-only root may lack /run or /tmp, and the workload can live
/// without them; nothing works without /proc, /sys and /dev).
const CARRIED: &[(&str, bool)] = &[
    ("/proc", true),
    ("/sys", true),
    ("/dev", true),
    ("/run", false),
    ("/tmp", false),
];

/// Set once `/` is a disk mounted read-write, so that shutdown leaves the
/// filesystem clean.
static WRITABLE_DISK_ROOT: AtomicBool = AtomicBool::new(false);

/// What the command line asks of the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootConfig {
    pub device: String,
    /// Empty: probe (see [`fs_candidates`]).
    pub fstypes: Vec<String>,
    pub flags: Option<String>,
    pub read_only: bool,
}

/// `Ok(None)` without `root=`; an error for a root the init cannot mount.
pub fn parse_root(cmdline: &str) -> Result<Option<RootConfig>, String> {
    let Some(device) = protocol::param(cmdline, "root") else {
        return Ok(None);
    };
    if device.len() <= "/dev/".len() || !device.starts_with("/dev/") {
        return Err(format!(
            "root={device}: only a device path (/dev/...) is supported"
        ));
    }
    let fstypes = protocol::param(cmdline, "rootfstype")
        .map(|list| {
            list.split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let flags = protocol::param(cmdline, "rootflags")
        .filter(|f| !f.is_empty())
        .map(str::to_string);
    Ok(Some(RootConfig {
        device: device.to_string(),
        fstypes,
        flags,
        read_only: read_only(cmdline),
    }))
}

/// The last of the standalone words `ro` and `rw` (none: read-write).
/// Words after `--` are init's arguments, not the kernel's.
fn read_only(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .filter(|w| *w == "ro" || *w == "rw")
        .last()
        == Some("ro")
}

/// Filesystems to try, in order: those given, or ext4 then every block
/// filesystem (no `nodev`) the kernel lists in `proc_filesystems`.
pub fn fs_candidates(given: &[String], proc_filesystems: &str) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut out = vec!["ext4".to_string()];
    for line in proc_filesystems.lines() {
        let mut words = line.split_whitespace();
        if let (Some(fs), None) = (words.next(), words.next()) {
            if !out.iter().any(|o| o == fs) {
                out.push(fs.to_string());
            }
        }
    }
    out
}

/// Whether `/` (the last mount on it in `proc_mounts`) is the initramfs.
pub fn root_is_initramfs(proc_mounts: &str) -> bool {
    proc_mounts
        .lines()
        .rev()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, target, fstype) = (f.next()?, f.next()?, f.next()?);
            (target == "/").then_some(fstype)
        })
        .is_some_and(|fs| matches!(fs, "rootfs" | "ramfs" | "tmpfs"))
}

/// Mounts the root disk and makes it `/`.
pub fn mount_and_switch(cfg: &RootConfig) -> Result<(), InitError> {
    let fail = |why: String| InitError::Root {
        device: cfg.device.clone(),
        why,
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !root_is_initramfs(&mounts) {
        // The kernel mounted root= itself (no initramfs): already there.
        log(&format!(
            "root {}: / is not the initramfs, staying",
            cfg.device
        ));
        return Ok(());
    }
    poll_until(DEVICE_WAIT, || {
        Path::new(&cfg.device).exists().then_some(())
    })
    .ok_or_else(|| fail(format!("no such device after {} s", DEVICE_WAIT.as_secs())))?;
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| fail(format!("creating {NEW_ROOT}: {e}")))?;
    let read_only = mount_device(cfg).map_err(fail)?;
    carry_mounts().map_err(fail)?;
    enter_new_root().map_err(fail)?;
    WRITABLE_DISK_ROOT.store(!read_only, Ordering::Relaxed);
    Ok(())
}

/// Mounts `cfg.device` on [`NEW_ROOT`]; returns whether it is read-only.
fn mount_device(cfg: &RootConfig) -> Result<bool, String> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let candidates = fs_candidates(&cfg.fstypes, &filesystems);
    let mut first_err = None;
    for fs in &candidates {
        match mount_as(cfg, fs, cfg.read_only) {
            Ok(()) => return Ok(cfg.read_only),
            // As the kernel does for its own root: a write-protected disk
            // is still a root, read-only.
            Err(nix::Error::EACCES | nix::Error::EROFS) if !cfg.read_only => {
                mount_as(cfg, fs, true).map_err(|e| format!("mounting as {fs}: {e}"))?;
                log(&format!(
                    "root {}: write-protected, mounted read-only",
                    cfg.device
                ));
                return Ok(true);
            }
            // Not this filesystem (EINVAL), or not in this kernel (ENODEV).
            Err(e @ (nix::Error::EINVAL | nix::Error::ENODEV)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => return Err(format!("mounting as {fs}: {e}")),
        }
    }
    Err(format!(
        "cannot mount it as {}: {}",
        candidates.join(", "),
        first_err.unwrap_or(nix::Error::ENODEV)
    ))
}

fn mount_as(cfg: &RootConfig, fs: &str, read_only: bool) -> nix::Result<()> {
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(
        Some(cfg.device.as_str()),
        NEW_ROOT,
        Some(fs),
        flags,
        cfg.flags.as_deref(),
    )
}

/// Moves /proc, /sys, /dev (with its submounts), /run and /tmp into the
/// new root, creating the mount points it lacks.
fn carry_mounts() -> Result<(), String> {
    for &(dir, needed) in CARRIED {
        let target = format!("{NEW_ROOT}{dir}");
        let moved = ensure_dir(&target)
            .map_err(|e| format!("creating {target}: {e}"))
            .and_then(|()| {
                mount(
                    Some(dir),
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_MOVE,
                    None::<&str>,
                )
                .map_err(|e| format!("moving {dir} to {target}: {e}"))
            });
        match moved {
            Ok(()) => {}
            Err(e) if needed => return Err(e),
            Err(e) => log(&format!("root: {e}; the new root goes without {dir}")),
        }
    }
    Ok(())
}

fn ensure_dir(path: &str) -> std::io::Result<()> {
    if Path::new(path).is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().mode(0o755).create(path)
}

/// busybox switch_root's sequence: the new root's mount replaces `/` and
/// becomes this process's root directory.
fn enter_new_root() -> Result<(), String> {
    nix::unistd::chdir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {NEW_ROOT} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Without a root disk, `/` is the initramfs, and the kernel refuses
/// pivot_root(2) off it (EINVAL), which the container runtime needs. So the
/// init moves the initramfs into a tmpfs and switches to that: each file is
/// copied, then unlinked from the initramfs, so the memory is not held
/// twice. Mount points of the carried filesystems are only recreated.
pub fn move_initramfs_to_tmpfs() -> Result<(), InitError> {
    let fail = |why: String| InitError::Root {
        device: "tmpfs".into(),
        why,
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !root_is_initramfs(&mounts) {
        return Ok(());
    }
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| fail(format!("creating {NEW_ROOT}: {e}")))?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| fail(format!("mounting a tmpfs on {NEW_ROOT}: {e}")))?;
    let skip: Vec<&Path> = CARRIED
        .iter()
        .map(|(d, _)| Path::new(*d))
        .chain([Path::new(NEW_ROOT)])
        .collect();
    move_tree(Path::new("/"), Path::new(NEW_ROOT), &skip).map_err(fail)?;
    carry_mounts().map_err(fail)?;
    enter_new_root().map_err(fail)
}

/// Moves what is under `from` to `to` (file by file: copy, then unlink),
/// leaving out the `skip` paths, which are mount points.
fn move_tree(from: &Path, to: &Path, skip: &[&Path]) -> Result<(), String> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", from.display()))?;
        let src = entry.path();
        if skip.contains(&src.as_path()) {
            continue;
        }
        let dst = to.join(entry.file_name());
        let meta =
            std::fs::symlink_metadata(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        let ft = meta.file_type();
        let moved = if ft.is_dir() {
            std::fs::create_dir_all(&dst)
                .and_then(|()| std::fs::set_permissions(&dst, meta.permissions()))
                .map_err(|e| format!("{}: {e}", dst.display()))
                .and_then(|()| move_tree(&src, &dst, skip))
        } else if ft.is_symlink() {
            std::fs::read_link(&src)
                .and_then(|target| symlink(target, &dst))
                .map_err(|e| format!("{}: {e}", dst.display()))
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)
                .and_then(|_| {
                    std::fs::set_permissions(
                        &dst,
                        std::fs::Permissions::from_mode(meta.permissions().mode()),
                    )
                })
                .map(|_| ())
                .map_err(|e| format!("{}: {e}", dst.display()))
        } else {
            // Device nodes and fifos do not live in uvm's initramfs.
            Ok(())
        };
        moved?;
        if !ft.is_dir() {
            // Failing to free a file's pages costs memory, not correctness.
            let _ = std::fs::remove_file(&src);
        }
    }
    Ok(())
}

/// At shutdown, after sync: a read-write disk root goes read-only so that
/// ext4 is clean. EBUSY (a file still open for writing) is not worth a word.
pub fn remount_readonly() {
    if !WRITABLE_DISK_ROOT.load(Ordering::Relaxed) {
        return;
    }
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    match mount(None::<&str>, "/", None::<&str>, flags, None::<&str>) {
        Ok(()) | Err(nix::Error::EBUSY) => {}
        Err(e) => log(&format!("remounting / read-only: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILESYSTEMS: &str = "nodev\tsysfs\nnodev\ttmpfs\n\text3\n\text2\n\text4\n\
                               nodev\tdevtmpfs\n\tsquashfs\nnodev\toverlay\n\txfs\n";

    #[test]
    fn moving_a_tree_copies_files_links_and_modes_and_skips_mount_points() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("uvm-move-tree-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("bin")).unwrap();
        std::fs::create_dir_all(from.join("proc/self")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("bin/busybox"), b"elf").unwrap();
        std::fs::set_permissions(
            from.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        std::os::unix::fs::symlink("busybox", from.join("bin/sh")).unwrap();
        let proc_dir = from.join("proc");
        move_tree(&from, &to, &[proc_dir.as_path()]).unwrap();
        assert_eq!(std::fs::read(to.join("bin/busybox")).unwrap(), b"elf");
        let mode = std::fs::metadata(to.join("bin/busybox"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o751);
        assert_eq!(
            std::fs::read_link(to.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(!to.join("proc").exists(), "a mount point was copied");
        assert!(
            !from.join("bin/busybox").exists(),
            "the source was not freed"
        );
        assert!(from.join("proc/self").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn no_root_no_switch() {
        assert_eq!(parse_root("console=ttyS0 rootfstype=ext4 ro"), Ok(None));
    }

    #[test]
    fn root_device_with_defaults() {
        let cfg = parse_root("console=ttyS0 root=/dev/vda quiet")
            .unwrap()
            .unwrap();
        assert_eq!(
            cfg,
            RootConfig {
                device: "/dev/vda".into(),
                fstypes: vec![],
                flags: None,
                read_only: false,
            }
        );
    }

    #[test]
    fn fstype_flags_and_ro() {
        let cfg =
            parse_root("root=/dev/vdb1 rootfstype=ext4,xfs rootflags=noatime,data=ordered ro")
                .unwrap()
                .unwrap();
        assert_eq!(cfg.device, "/dev/vdb1");
        assert_eq!(cfg.fstypes, ["ext4", "xfs"]);
        assert_eq!(cfg.flags.as_deref(), Some("noatime,data=ordered"));
        assert!(cfg.read_only);
    }

    #[test]
    fn last_of_ro_rw_wins_and_only_whole_words() {
        let ro = |line: &str| parse_root(line).unwrap().unwrap().read_only;
        assert!(ro("root=/dev/vda ro"));
        assert!(!ro("root=/dev/vda ro rw"));
        assert!(ro("rw root=/dev/vda ro"));
        assert!(!ro("root=/dev/vda rootflags=ro robust=1 ro=1"));
        assert!(!ro("root=/dev/vda -- ro"));
        // The kernel's last root= is the one.
        assert_eq!(
            parse_root("root=/dev/vda root=/dev/vdb")
                .unwrap()
                .unwrap()
                .device,
            "/dev/vdb"
        );
    }

    #[test]
    fn only_dev_paths() {
        for line in [
            "root=LABEL=root",
            "root=UUID=1234",
            "root=/dev/",
            "root=vda",
            "root=",
        ] {
            let e = parse_root(line).unwrap_err();
            assert!(e.contains("only a device path"), "{line}: {e}");
        }
    }

    #[test]
    fn candidates_ext4_first_then_block_filesystems() {
        assert_eq!(
            fs_candidates(&[], FILESYSTEMS),
            ["ext4", "ext3", "ext2", "squashfs", "xfs"]
        );
        assert_eq!(fs_candidates(&[], ""), ["ext4"]);
        assert_eq!(fs_candidates(&["xfs".to_string()], FILESYSTEMS), ["xfs"]);
    }

    #[test]
    fn initramfs_detection() {
        assert!(root_is_initramfs(
            "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n"
        ));
        assert!(!root_is_initramfs(
            "rootfs / rootfs rw 0 0\n/dev/vda / ext4 rw 0 0\n"
        ));
        assert!(!root_is_initramfs("/dev/vda / ext4 rw 0 0\n"));
        assert!(!root_is_initramfs(""));
    }

    /// The switch itself (carry the mounts, move the new root onto `/`,
    /// chroot) in a thread with its own mount namespace and root directory,
    /// both gone with the thread: a scratch tmpfs plays the initramfs and
    /// another the root disk. Needs root (skipped otherwise).
    #[test]
    fn switch_carries_mounts_and_enters_the_new_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let scratch = std::env::temp_dir().join(format!("uvm-init-root-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let inside = scratch.clone();
        let result = std::thread::spawn(move || switch_in_scratch_initramfs(&inside)).join();
        std::fs::remove_dir(&scratch).unwrap();
        assert!(result.is_ok(), "the switch failed in its thread");
    }

    fn switch_in_scratch_initramfs(scratch: &Path) {
        let tmpfs = |target: &str| {
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
        };
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
        mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
        tmpfs(scratch.to_str().unwrap());
        nix::unistd::chroot(scratch).unwrap();
        nix::unistd::chdir("/").unwrap();
        for dir in ["/proc", "/sys", "/dev", "/run", "/tmp", NEW_ROOT] {
            std::fs::create_dir(dir).unwrap();
        }
        let flags = MsFlags::empty();
        mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>).unwrap();
        mount(Some("sysfs"), "/sys", Some("sysfs"), flags, None::<&str>).unwrap();
        tmpfs("/dev");
        std::fs::create_dir("/dev/shm").unwrap();
        tmpfs("/dev/shm");
        std::fs::write("/dev/shm/carried", "").unwrap();
        tmpfs("/run");
        // /tmp left unmounted: moving it fails, which the switch survives.
        tmpfs(NEW_ROOT);
        std::fs::write(format!("{NEW_ROOT}/on-disk"), "").unwrap();
        std::fs::create_dir(format!("{NEW_ROOT}/proc")).unwrap();

        carry_mounts().unwrap();
        enter_new_root().unwrap();

        assert!(Path::new("/on-disk").exists());
        assert!(Path::new("/proc/self/mountinfo").exists());
        assert!(Path::new("/sys/kernel").is_dir());
        assert!(Path::new("/dev/shm/carried").exists());
        assert!(Path::new("/run").is_dir() && Path::new("/tmp").is_dir());
        assert!(!Path::new(NEW_ROOT).exists());
        // /proc/self is the main thread, in the host namespace.
        let mounts = std::fs::read_to_string("/proc/thread-self/mounts").unwrap();
        for target in ["/proc", "/sys", "/dev", "/dev/shm", "/run"] {
            assert!(
                mounts.lines().any(|l| l.split(' ').nth(1) == Some(target)),
                "{target} not mounted in the new root:\n{mounts}"
            );
        }
        assert_eq!(std::env::current_dir().unwrap(), Path::new("/"));
    }
}
