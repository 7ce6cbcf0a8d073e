//! The sandbox's one virtio-fs share and the containers' root folders in
//! it. A share is fixed when the VM boots, and containers come later: so
//! the VM gets one folder (`shared/`), made a mount of its own with shared
//! propagation, and each container's host folder is bind-mounted into it
//! as `shared/ID` (Kata's way). virtiofsd's mount namespace is a slave of
//! that mount, so a bind made after it started reaches the guest.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::Error;

fn mount_err(what: String, e: nix::Error) -> Error {
    Error::Io(what, std::io::Error::from(e))
}

/// Makes `dir` a mount point of its own in a peer group of its own
/// (private first, so it does not join whatever `/run` propagates to).
pub fn prepare(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
    let none: Option<&str> = None;
    mount(Some(dir), dir, none, MsFlags::MS_BIND, none)
        .map_err(|e| mount_err(format!("bind-mounting {}", dir.display()), e))?;
    for flag in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
        mount(none, dir, none, flag, none)
            .map_err(|e| mount_err(format!("setting propagation on {}", dir.display()), e))?;
    }
    Ok(())
}

/// Binds host folder `rootfs` into the share as `ID`; the guest sees it
/// at `<share>/ID`. An `ID` already there is refused.
pub fn add(dir: &Path, id: &str, rootfs: &Path) -> Result<PathBuf, Error> {
    let at = dir.join(id);
    std::fs::create_dir(&at).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Usage(format!("container {id} exists")),
        _ => Error::Io(format!("creating {}", at.display()), e),
    })?;
    let none: Option<&str> = None;
    if let Err(e) = mount(
        Some(rootfs),
        &at,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    ) {
        let _ = std::fs::remove_dir(&at);
        return Err(mount_err(
            format!("bind-mounting {} for container {id}", rootfs.display()),
            e,
        ));
    }
    Ok(at)
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or under `at` (lazily: virtiofsd may still hold
/// files there) and removes the folder.
pub fn remove(at: &Path) {
    for m in mounts_under(at) {
        // A bind stacked twice needs two unmounts.
        while umount2(&m, MntFlags::MNT_DETACH).is_ok() {}
    }
    let _ = std::fs::remove_dir(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_a_folder_come_deepest_first() {
        // The process's own root is always mounted.
        let all = mounts_under(Path::new("/"));
        assert!(all.iter().any(|p| p == Path::new("/")), "{all:?}");
        assert_eq!(all.last().map(PathBuf::as_path), Some(Path::new("/")));
        assert!(mounts_under(Path::new("/nonexistent/uvm-share")).is_empty());
    }
}
